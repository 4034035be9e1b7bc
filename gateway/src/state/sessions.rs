//! Live Sessions and the token check every request makes: signature and expiry from the
//! token itself, then a memory lookup so a deleted session, credential or user stops
//! working at once.

use super::{now_unix, Gateway, UserEntry};
use postern_common::resources::{AuthMethod, Authentication, SessionInfo};
use postern_policy::CelValue;
use std::sync::Arc;

/// A Session in memory, with its `ctx.session` value precomputed.
pub struct SessionEntry {
    pub info: SessionInfo,
    pub value: CelValue,
    pub expires_unix: i64,
}

impl SessionEntry {
    pub fn new(info: SessionInfo) -> Self {
        let expires_unix = expires_unix(&info);
        let value = postern_policy::values::session_value(&info);
        SessionEntry {
            info,
            value,
            expires_unix,
        }
    }
}

/// When `info` expires, Unix seconds; an unreadable time counts as long past.
pub(super) fn expires_unix(info: &SessionInfo) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&info.expires_at)
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

/// How long a Session the store did not have is remembered as missing.
const MISSING_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Least time between two rebuilds a request asks for (see `Gateway::catch_up`).
const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a Session deleted through this gateway is kept from coming back by a late
/// notice of its creation.
const DELETED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Most Sessions remembered as missing; past it the memory is emptied.
const MAX_MISSING: usize = 10_000;

/// Who is calling: a live Session and its User.
#[derive(Clone)]
pub struct Principal {
    pub session: Arc<SessionEntry>,
    pub user: Arc<UserEntry>,
}

/// Why a token was refused. The caller always sees the same 401; the reason is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token rejected: {0}")]
    BadToken(String),
    #[error("session {0} no longer exists")]
    SessionGone(String),
    #[error("session expired")]
    Expired,
    #[error("user {0} no longer exists or is disabled")]
    UserGone(String),
    #[error("credential {0} no longer exists")]
    CredentialGone(String),
    #[error("identity provider {0:?} no longer exists")]
    IdentityProviderGone(String),
}

impl Gateway {
    /// Checks an access token: signature (once per token, then remembered) and expiry, then
    /// that its session, user and credential still exist. No store read.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let now = now_unix();
        let claims = self
            .verified
            .verify(&self.signer, token, now)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        let started = std::time::Instant::now();
        let mut result = self.session_principal(&claims.sid);
        if matches!(&result, Err(AuthError::SessionGone(_))) && self.fetch_session(&claims.sid) {
            result = self.session_principal(&claims.sid);
        }
        if self.owner_unknown(&result) && self.catch_up(started) {
            result = self.session_principal(&claims.sid);
        }
        result
    }

    /// Whether `result` failed because the Session's credential or User is absent from the
    /// snapshot (not disabled): on a shared store, another gateway may have created them a
    /// moment ago, before its notice was applied here. (A deleted credential or User takes
    /// its Sessions with it, so a live Session with an absent owner is that race.)
    fn owner_unknown(&self, result: &Result<Principal, AuthError>) -> bool {
        match result {
            Err(AuthError::CredentialGone(_)) => true,
            Err(AuthError::UserGone(user)) => !self.snapshot().users.contains_key(user),
            _ => false,
        }
    }

    /// Rebuilds the snapshot from a shared store now, unless that happened since `since`
    /// (then the caller simply looks again). At most one such rebuild per
    /// [`CATCH_UP_EVERY`], so nothing a caller sends can make the gateway rebuild in a loop.
    /// Returns whether the caller should look again.
    fn catch_up(&self, since: std::time::Instant) -> bool {
        if !self.store.is_shared() || !self.store_health.reachable() {
            return false;
        }
        let mut last = self.last_catch_up.lock().expect("catch-up lock");
        if last.is_some_and(|t| t >= since) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < CATCH_UP_EVERY) {
            return false;
        }
        let _guard = self.write_lock.lock().expect("write lock");
        match self.reload() {
            Ok(()) => {
                *last = Some(std::time::Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!("catching up with the store failed: {e}");
                false
            }
        }
    }

    /// On a shared store, a validly signed token may name a Session another gateway stored
    /// a moment ago, before its notice arrived: read it once. Sessions the store does not
    /// have are remembered for [`MISSING_FOR`], so a revoked token costs at most one read a
    /// second. Returns whether the Session is now in memory.
    fn fetch_session(&self, sid: &str) -> bool {
        // An unreachable store would hold the request up for nothing.
        if !self.store.is_shared() || !self.store_health.reachable() {
            return false;
        }
        let now = std::time::Instant::now();
        {
            let mut missing = self.missing_sessions.lock().expect("missing sessions lock");
            if missing
                .get(sid)
                .is_some_and(|since| now.duration_since(*since) < MISSING_FOR)
            {
                return false;
            }
            if missing.len() >= MAX_MISSING {
                missing.clear();
            }
            missing.insert(sid.to_string(), now);
        }
        match self.store.get_session(sid) {
            Ok(Some(info)) if expires_unix(&info) > now_unix() => {
                self.forget_missing_session(sid);
                self.insert_session_entry(info);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!("reading session {sid} from the store failed: {e}");
                false
            }
        }
    }

    /// Remembers that Session `sid` was deleted through this gateway, so a notice of its
    /// creation that arrives late (another gateway stored it a moment before) cannot bring
    /// it back into memory. Deleting a User, Credential or IdentityProvider needs no such
    /// memory: a Session whose owner is gone is refused anyway.
    pub(super) fn session_deleted_here(&self, sid: &str) {
        let mut missing = self.missing_sessions.lock().expect("missing sessions lock");
        if missing.len() >= MAX_MISSING {
            missing.clear();
        }
        missing.insert(sid.to_string(), std::time::Instant::now());
    }

    /// Whether Session `sid` was deleted through this gateway (or looked for in vain)
    /// within [`DELETED_FOR`].
    pub(super) fn recently_deleted(&self, sid: &str) -> bool {
        self.missing_sessions
            .lock()
            .expect("missing sessions lock")
            .get(sid)
            .is_some_and(|since| since.elapsed() < DELETED_FOR)
    }

    /// Clears a Session from the missing memory (it was just stored or changed).
    pub(super) fn forget_missing_session(&self, sid: &str) {
        self.missing_sessions
            .lock()
            .expect("missing sessions lock")
            .remove(sid);
    }

    /// The live Session `sid` and its User, checked as [`Gateway::authenticate`] checks a
    /// token's: the tunnel's identity (the Session owning a tunnel address) goes through here.
    pub fn session_principal(&self, sid: &str) -> Result<Principal, AuthError> {
        let now = now_unix();
        let session = self
            .sessions
            .read()
            .expect("sessions lock")
            .get(sid)
            .cloned()
            .ok_or_else(|| AuthError::SessionGone(sid.to_string()))?;
        if session.expires_unix <= now {
            return Err(AuthError::Expired);
        }
        let snap = self.snapshot();
        let user = snap
            .users
            .get(&session.info.user)
            .filter(|u| !u.spec.is_disabled)
            .cloned()
            .ok_or_else(|| AuthError::UserGone(session.info.user.clone()))?;
        match &session.info.authentication {
            Authentication {
                method: AuthMethod::Oidc,
                identity_provider: Some(idp),
                ..
            } => {
                if !snap.identity_providers.contains_key(idp) {
                    return Err(AuthError::IdentityProviderGone(idp.clone()));
                }
            }
            Authentication {
                method: AuthMethod::Oidc,
                identity_provider: None,
                ..
            } => return Err(AuthError::IdentityProviderGone(String::new())),
            _ => {
                if !snap.credentials.contains_key(&session.info.credential) {
                    return Err(AuthError::CredentialGone(session.info.credential.clone()));
                }
            }
        }
        Ok(Principal { session, user })
    }

    pub(super) fn insert_session_entry(&self, info: SessionInfo) {
        let entry = Arc::new(SessionEntry::new(info));
        self.sessions
            .write()
            .expect("sessions lock")
            .insert(entry.info.name.clone(), entry);
    }

    /// Drops matching sessions from memory; their tunnel peers (if any) go at once.
    pub(super) fn remove_sessions_where(&self, pred: impl Fn(&SessionInfo) -> bool) {
        let mut removed = Vec::new();
        self.sessions
            .write()
            .expect("sessions lock")
            .retain(|name, s| {
                let drop = pred(&s.info);
                if drop {
                    removed.push(name.clone());
                }
                !drop
            });
        if let Some(tunnel) = self.tunnel.get() {
            tunnel.sessions_removed(&removed);
        }
    }

    /// Every live session, for `get sessions`.
    pub fn list_sessions(&self) -> Vec<SessionInfo> {
        let mut v: Vec<_> = self
            .sessions
            .read()
            .expect("sessions lock")
            .values()
            .map(|s| s.info.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Number of live sessions (for health and metrics).
    pub fn session_count(&self) -> usize {
        self.sessions.read().expect("sessions lock").len()
    }
}
