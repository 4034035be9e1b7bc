//! The typed errors of the client library. Every message says what went wrong and what to
//! do next; the binaries print them as `error: <message>` and exit with status 1.

use std::path::PathBuf;

/// The hint appended to every "you need a (new) session" message.
pub const LOGIN_HINT: &str =
    "run `postern login --domain <domain>` (add `--auth-token <token>` to log in with a token)";

/// Everything that can go wrong in `postern` and `posternctl`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No `session.json` in the Postern home directory.
    #[error("not logged in (no session at {}); {LOGIN_HINT}", path.display())]
    NotLoggedIn { path: PathBuf },

    /// The saved access token is past its expiry.
    #[error("the session for {domain} expired at {expires_at}; {LOGIN_HINT}")]
    SessionExpired { domain: String, expires_at: String },

    /// `session.json` exists but cannot be read as a session.
    #[error("cannot read the session file {}: {detail}; delete it and {LOGIN_HINT}", path.display())]
    BadSessionFile { path: PathBuf, detail: String },

    /// The gateway answered 401: the token is missing, wrong, expired or revoked.
    #[error("{message}; run `postern login --domain {domain}` (add `--auth-token <token>` to log in with a token)")]
    Unauthorized { message: String, domain: String },

    /// The gateway answered with an error body (or an unexpected status).
    #[error("{message}")]
    Api { status: u16, message: String },

    /// The gateway could not be reached (DNS, TCP or TLS).
    #[error("cannot reach the gateway at {address}: {detail}; {hint}")]
    Connect {
        address: String,
        detail: String,
        hint: &'static str,
    },

    /// The gateway's answer was not the JSON this client expects.
    #[error("unexpected response from {url}: {detail}; check that the client and posternd versions match")]
    BadResponse { url: String, detail: String },

    /// `/oauth2/token` refused the sign-in code (RFC 6749 section 5.2).
    #[error("the gateway refused the sign-in code: {error}{}; run `postern login --domain {domain}` again", described(.description))]
    TokenRefused {
        domain: String,
        error: String,
        description: Option<String>,
    },

    /// The browser came back from signing in with an error instead of a code.
    #[error("the sign-in was refused: {error}{}; run `postern login --domain {domain}` to try again", described(.description))]
    SignInRefused {
        domain: String,
        error: String,
        description: Option<String>,
    },

    /// No sign-in reached the loopback redirect in time.
    #[error("no sign-in arrived within {waited}; run `postern login --domain {domain}` again and finish signing in in the browser (or allow longer with --timeout)")]
    SignInTimedOut { domain: String, waited: String },

    /// `--domain` is not `host` or `host:port`.
    #[error("invalid domain {input:?}: {reason}; pass it as `example.com` or `example.com:8443`")]
    InvalidDomain { input: String, reason: String },

    /// `POSTERN_GATEWAY_ADDRESS` is not `ip:port`.
    #[error("invalid POSTERN_GATEWAY_ADDRESS {input:?}: expected ip:port such as 127.0.0.1:8443")]
    InvalidGatewayAddress { input: String },

    /// A duration such as `--ttl` could not be parsed.
    #[error("invalid duration {input:?}: {reason}; use a number with s, m, h or d, such as 30m, 24h or 7d")]
    InvalidDuration { input: String, reason: String },

    /// The `--ca-file` PEM could not be read or holds no certificate.
    #[error("cannot use CA file {}: {detail}; pass a PEM file with the gateway's CA certificate", path.display())]
    CaFile { path: PathBuf, detail: String },

    /// Bad input that clap cannot catch (an unknown kind, an empty secret, ...).
    #[error("{0}")]
    Invalid(String),

    /// `posternctl policy test`: some cases did not get the expected decision.
    #[error("{failed} of {total} policy test cases failed")]
    PolicyTestsFailed { failed: usize, total: usize },

    /// The tunnel (`postern connect`) failed.
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::TunnelError),

    /// Reading or writing a local file failed.
    #[error("{action} {}: {err}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

impl ClientError {
    /// Wraps an I/O error with what was being done and to which file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        ClientError::Io {
            action,
            path: path.into(),
            err,
        }
    }
}

/// `: <description>` when there is one.
fn described(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// The library's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
