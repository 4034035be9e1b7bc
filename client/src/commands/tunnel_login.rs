//! How `postern connect` gets (and gets again) a Session: the saved one, else a login with
//! what the agent was given. An auth token (`POSTERN_AUTH_TOKEN`) or an OAuth2 client
//! credential (`POSTERN_CLIENT_ID` / `POSTERN_CLIENT_SECRET`) lets the agent log in again by
//! itself when its Session expires or is revoked; a Session saved by `postern login` alone
//! does not, and the agent then says so (and picks up a new `postern login` when one comes).

use super::session;
use super::tunnel::ConnectArgs;
use super::{client_for, Context};
use crate::config::{self, Session};
use crate::domain::Domain;
use crate::error::{ClientError, Result};
use crate::http::ApiClient;
use crate::tunnel::{CheckIn, ControlPlane};
use chrono::{DateTime, Utc};
use postern_common::api::{TunnelConnectRequest, TunnelConnectResponse};
use std::path::PathBuf;

/// What the agent can log in with.
#[derive(Debug, Clone)]
pub(super) enum Relogin {
    AuthToken {
        domain: String,
        token: String,
    },
    OAuth2 {
        domain: String,
        id: String,
        secret: String,
    },
    Nothing,
}

impl Relogin {
    /// From `--domain` with `--auth-token`, or with `--client-id` and `--client-secret`.
    pub(super) fn from_args(args: &ConnectArgs) -> Self {
        match (
            &args.domain,
            &args.auth_token,
            &args.client_id,
            &args.client_secret,
        ) {
            (Some(d), Some(t), _, _) if !t.trim().is_empty() => Relogin::AuthToken {
                domain: d.clone(),
                token: t.clone(),
            },
            (Some(d), _, Some(id), Some(secret)) => Relogin::OAuth2 {
                domain: d.clone(),
                id: id.clone(),
                secret: secret.clone(),
            },
            _ => Relogin::Nothing,
        }
    }
}

/// Logs in with `how` and saves the Session.
pub(super) fn log_in(
    ctx: &Context,
    how: &Relogin,
    ca_file: Option<&PathBuf>,
    out: &mut dyn std::io::Write,
) -> Result<Session> {
    match how {
        Relogin::AuthToken { domain, token } => {
            let login = session::LoginArgs {
                domain: domain.clone(),
                auth_token: Some(token.clone()),
                ca_file: ca_file.cloned(),
                idp: None,
                no_browser: false,
                timeout: None,
            };
            session::login(ctx, &login, out)?;
            config::load(&ctx.home)
        }
        Relogin::OAuth2 { domain, id, secret } => {
            let domain = Domain::parse(domain)?;
            let ca = match ca_file {
                Some(p) => Some(std::fs::canonicalize(p).map_err(|e| ClientError::CaFile {
                    path: p.clone(),
                    detail: e.to_string(),
                })?),
                None => None,
            };
            let client = ApiClient::new(domain.clone(), ca.as_deref(), None)?;
            let started = Utc::now();
            let token = client.oauth2_token(id, secret)?;
            let secs = i64::try_from(token.expires_in).unwrap_or(i64::MAX / 1000);
            let session = Session {
                domain: domain.to_string(),
                access_token: token.access_token,
                session: String::new(),
                user: format!("(OAuth2 client {id})"),
                expires_at: started + chrono::Duration::seconds(secs.min(100 * 365 * 86_400)),
                ca_file: ca,
            };
            config::save(&ctx.home, &session)?;
            writeln!(
                out,
                "Logged in to {} with OAuth2 client {id}",
                session.domain
            )
            .map_err(|e| ClientError::io("cannot write to", "stdout", e))?;
            Ok(session)
        }
        Relogin::Nothing => Err(ClientError::Invalid(cannot_log_in_hint())),
    }
}

fn cannot_log_in_hint() -> String {
    "this agent has nothing to log in again with: run `postern login` (the running agent picks \
     the new session up), or start it with POSTERN_DOMAIN and POSTERN_AUTH_TOKEN, or with \
     POSTERN_CLIENT_ID and POSTERN_CLIENT_SECRET for an OAuth2 credential"
        .to_string()
}

/// The running agent's [`ControlPlane`]: checks in with `tunnel/connect`, logging in again
/// when the saved Session expired or the gateway refused it.
pub(super) struct Control {
    pub(super) ctx: Context,
    pub(super) relogin: Relogin,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) request: TunnelConnectRequest,
    /// The client of the last check-in and its token: kept so check-ins reuse one TLS
    /// connection instead of a handshake each.
    pub(super) client: std::sync::Mutex<Option<(String, std::sync::Arc<ApiClient>)>>,
}

impl Control {
    fn connect(&self, s: &Session) -> Result<TunnelConnectResponse> {
        let client = {
            let mut cached = self.client.lock().unwrap_or_else(|e| e.into_inner());
            match &*cached {
                Some((token, c)) if *token == s.access_token => c.clone(),
                _ => {
                    let c = std::sync::Arc::new(client_for(s, Some(s.access_token.clone()))?);
                    *cached = Some((s.access_token.clone(), c.clone()));
                    c
                }
            }
        };
        client.post(&["tunnel", "connect"], &self.request)
    }

    /// A new Session, or why there is none.
    fn relog(&self, why: &str) -> std::result::Result<Session, CheckIn> {
        if matches!(self.relogin, Relogin::Nothing) {
            return Err(CheckIn::CannotLogIn(format!(
                "{why}; {}",
                cannot_log_in_hint()
            )));
        }
        let mut said = Vec::new();
        match log_in(&self.ctx, &self.relogin, self.ca_file.as_ref(), &mut said) {
            Ok(s) => {
                crate::tunnel::run::log(&format!(
                    "{why}; {}",
                    String::from_utf8_lossy(&said).trim()
                ));
                Ok(s)
            }
            Err(e @ (ClientError::Unauthorized { .. } | ClientError::Api { .. })) => Err(
                CheckIn::CannotLogIn(format!("{why}; logging in again was refused: {e}")),
            ),
            Err(e) => Err(CheckIn::Unreachable(format!(
                "{why}; logging in again failed: {e}"
            ))),
        }
    }
}

impl ControlPlane for Control {
    fn check_in(&self) -> CheckIn {
        // Read each time: a `postern login` meanwhile is picked up.
        let saved = config::load(&self.ctx.home);
        let session = match saved {
            Ok(s) if !s.is_expired(Utc::now()) => s,
            Ok(s) => {
                let why = format!(
                    "the session expired at {}",
                    s.expires_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                match self.relog(&why) {
                    Ok(s) => s,
                    Err(c) => return c,
                }
            }
            Err(e) => match self.relog(&format!("no saved session ({e})")) {
                Ok(s) => s,
                Err(c) => return c,
            },
        };
        let refused = match self.connect(&session) {
            Ok(r) => return CheckIn::Connected(Box::new(r)),
            Err(ClientError::Unauthorized { message, .. }) => message,
            Err(e) => return CheckIn::Unreachable(e.to_string()),
        };
        let why = format!("the gateway no longer accepts the session ({refused})");
        match self.relog(&why) {
            Ok(s) => match self.connect(&s) {
                Ok(r) => CheckIn::Connected(Box::new(r)),
                Err(e) => CheckIn::Unreachable(e.to_string()),
            },
            Err(c) => c,
        }
    }

    fn session_expires(&self) -> Option<DateTime<Utc>> {
        config::load(&self.ctx.home).ok().map(|s| s.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(domain: bool, token: bool, oauth: bool) -> ConnectArgs {
        ConnectArgs {
            userspace: false,
            publish: vec![],
            socks5: None,
            interface: "postern0".into(),
            domain: domain.then(|| "gw.example.com".into()),
            auth_token: token.then(|| "pat_x".into()),
            ca_file: None,
            client_id: oauth.then(|| "cid".into()),
            client_secret: oauth.then(|| "secret".into()),
            check_interval: "30s".into(),
        }
    }

    #[test]
    fn what_the_agent_can_log_in_again_with() {
        assert!(matches!(
            Relogin::from_args(&args(true, true, true)),
            Relogin::AuthToken { .. }
        ));
        assert!(matches!(
            Relogin::from_args(&args(true, false, true)),
            Relogin::OAuth2 { .. }
        ));
        assert!(matches!(
            Relogin::from_args(&args(false, true, true)),
            Relogin::Nothing
        ));
        assert!(matches!(
            Relogin::from_args(&args(true, false, false)),
            Relogin::Nothing
        ));
    }

    #[test]
    fn without_a_credential_the_agent_says_what_to_do() {
        let c = Control {
            ctx: Context {
                home: std::env::temp_dir().join(format!("postern-relog-{}", std::process::id())),
            },
            relogin: Relogin::Nothing,
            ca_file: None,
            request: TunnelConnectRequest {
                public_key: "k".into(),
            },
            client: Default::default(),
        };
        match c.check_in() {
            CheckIn::CannotLogIn(m) => {
                assert!(m.contains("no saved session"), "{m}");
                assert!(m.contains("postern login"), "{m}");
                assert!(m.contains("POSTERN_CLIENT_ID"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
