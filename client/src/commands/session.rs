//! `postern login`, `logout` and `whoami`: the saved session.

use super::{client_for, writeln_out, Context};
use crate::config::{self, Session};
use crate::domain::Domain;
use crate::duration::format_duration;
use crate::error::{ClientError, Result};
use crate::http::ApiClient;
use chrono::Utc;
use postern_common::api::{LoginRequest, LoginResponse};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `postern login`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// The gateway's domain, `example.com` or `example.com:8443` (the API is at https://<domain>).
    #[arg(long, env = "POSTERN_DOMAIN")]
    pub domain: String,
    /// An auth-token credential, made with `posternctl create credential NAME --type auth-token`.
    /// Without one, you sign in with your identity provider in a browser.
    #[arg(long, env = "POSTERN_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// A PEM file with an extra CA certificate to trust for this gateway (remembered for
    /// later commands). The system's CA store (or SSL_CERT_FILE / SSL_CERT_DIR) and the
    /// public web roots are always trusted too.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Browser sign-in: the IdentityProvider to use, by name; without it the gateway shows a
    /// choice when it has several.
    #[arg(long, value_name = "NAME")]
    pub idp: Option<String>,
    /// Browser sign-in: only print the sign-in address, do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Browser sign-in: how long to wait for it to finish [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

/// Trades the auth token for a session and saves it; without a token, signs in through the
/// browser.
pub fn login(ctx: &Context, args: &LoginArgs, out: &mut dyn Write) -> Result<()> {
    let domain = Domain::parse(&args.domain)?;
    let ca_file = match &args.ca_file {
        Some(path) => Some(
            std::fs::canonicalize(path).map_err(|e| ClientError::CaFile {
                path: path.clone(),
                detail: e.to_string(),
            })?,
        ),
        None => None,
    };
    let Some(token) = args.auth_token.as_deref() else {
        return super::browser_login::login(ctx, domain, ca_file, args, out);
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(ClientError::Invalid(
            "the auth token is empty (--auth-token or POSTERN_AUTH_TOKEN); pass a token, or \
             unset POSTERN_AUTH_TOKEN and leave out --auth-token to sign in with a browser"
                .to_string(),
        ));
    }
    if args.idp.is_some() || args.no_browser || args.timeout.is_some() {
        return Err(ClientError::Invalid(
            "--idp, --no-browser and --timeout are for signing in with a browser, but an auth \
             token was given (--auth-token or POSTERN_AUTH_TOKEN); drop one or the other"
                .to_string(),
        ));
    }
    let client = ApiClient::new(domain.clone(), ca_file.as_deref(), None)?;
    let started = Utc::now();
    let response: LoginResponse = client.post(
        &["login"],
        &LoginRequest {
            auth_token: token.to_string(),
        },
    )?;
    let session = save_session(
        ctx,
        &domain,
        ca_file,
        started,
        Issued {
            access_token: response.access_token,
            expires_in: response.expires_in,
            session: response.session,
            user: response.user,
        },
    )?;
    report_login(&session, out)
}

/// What the gateway hands out for a login, whichever way it was made.
pub(super) struct Issued {
    pub(super) access_token: String,
    /// Seconds from the request until the token stops working.
    pub(super) expires_in: u64,
    pub(super) session: String,
    pub(super) user: String,
}

/// Saves a session that the gateway issued at `started`: the one file every later command
/// (`status`, `connect`, `posternctl`) reads.
pub(super) fn save_session(
    ctx: &Context,
    domain: &Domain,
    ca_file: Option<PathBuf>,
    started: chrono::DateTime<Utc>,
    issued: Issued,
) -> Result<Session> {
    let expires_in = i64::try_from(issued.expires_in).unwrap_or(i64::MAX / 1000);
    let session = Session {
        domain: domain.to_string(),
        access_token: issued.access_token,
        session: issued.session,
        user: issued.user,
        expires_at: started + chrono::Duration::seconds(expires_in.min(100 * 365 * 86_400)),
        ca_file,
    };
    config::save(&ctx.home, &session)?;
    Ok(session)
}

/// The line both login modes print on success.
pub(super) fn report_login(session: &Session, out: &mut dyn Write) -> Result<()> {
    writeln_out(
        out,
        format_args!(
            "Logged in to {} as {} (session {})",
            session.domain, session.user, session.session
        ),
    )
}

/// Ends the session on the gateway (when it is still valid) and deletes the saved file.
/// The file is removed even when the gateway cannot be reached; the error is still reported.
pub fn logout(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let session = match config::load(&ctx.home) {
        Ok(s) => s,
        Err(ClientError::NotLoggedIn { .. }) => {
            return writeln_out(out, format_args!("Not logged in"))
        }
        Err(e) => return Err(e),
    };
    let revoked = if session.is_expired(Utc::now()) {
        Ok(())
    } else {
        client_for(&session, Some(session.access_token.clone())).and_then(|client| {
            match client.post::<_, serde_json::Value>(&["logout"], &serde_json::json!({})) {
                // Already gone on the gateway: logging out is done either way.
                Ok(_) | Err(ClientError::Unauthorized { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    };
    config::remove(&ctx.home)?;
    match revoked {
        Ok(()) => writeln_out(
            out,
            format_args!(
                "Logged out of {} (session {})",
                session.domain, session.session
            ),
        ),
        Err(e) => Err(ClientError::Invalid(format!(
            "removed the local session, but the gateway did not end session {}: {e}; \
             an admin can run `posternctl delete session {}`",
            session.session, session.session
        ))),
    }
}

/// Shows the saved session without contacting the gateway. Fails (after printing) when the
/// session has expired, so scripts can run `postern whoami || postern login ...`.
pub fn whoami(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let session = config::load(&ctx.home)?;
    let now = Utc::now();
    let remaining = (session.expires_at - now).num_seconds();
    let state = if remaining > 0 {
        format!("in {}", format_duration(remaining as u64))
    } else {
        "expired".to_string()
    };
    let mut text = format!(
        "User:    {}\nSession: {}\nDomain:  {}\nExpires: {} ({state})\n",
        session.user,
        session.session,
        session.domain,
        session
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    if let Some(ca) = &session.ca_file {
        text.push_str(&format!("CA file: {}\n", ca.display()));
    }
    out.write_all(text.as_bytes())
        .map_err(|e| ClientError::io("cannot write to", "stdout", e))?;
    session.ensure_valid(now)
}
