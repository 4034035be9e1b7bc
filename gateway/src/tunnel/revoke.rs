//! Which connected Sessions lose their tunnel, decided without I/O.
//!
//! A Session is cut when it is deleted (the state calls the tunnel at once), or when a check
//! finds it no longer valid: expired, its User deleted or disabled, its Credential deleted.
//! Nothing has to arrive for that: the tunnel's sweep runs [`due`] every [`SWEEP`] and, when
//! it says so, [`revoked`] over the connected Sessions. The [`Tunnel`](super::Tunnel) then
//! resets their connections and removes their peers.

use crate::state::AuthError;
use std::sync::Arc;
use std::time::Duration;

/// How often the sweep looks; a Session is cut at most this long after it stops being
/// valid (plus the time for the resets to reach the agent).
pub const SWEEP: Duration = Duration::from_millis(200);

/// Longest wait for a revoked peer's resets to leave the network stack before its
/// WireGuard peer is removed (after that, nothing could reach it).
pub const RESET_DRAIN: Duration = Duration::from_millis(500);

/// Extra time after the resets left the stack, for them to be encrypted and sent.
pub const RESET_GRACE: Duration = Duration::from_millis(100);

/// Whether the connected Sessions must be checked now: the configuration changed (a User
/// disabled, a Credential or Policy changed), or the earliest expiry among them has passed.
pub fn due(config_changed: bool, earliest_expiry: Option<i64>, now_unix: i64) -> bool {
    config_changed || earliest_expiry.is_some_and(|e| e <= now_unix)
}

/// The Sessions among `connected` that must go, each with the reason `check` gave.
pub fn revoked<'a>(
    connected: impl IntoIterator<Item = &'a Arc<str>>,
    check: impl Fn(&str) -> Result<(), AuthError>,
) -> Vec<(Arc<str>, AuthError)> {
    connected
        .into_iter()
        .filter_map(|s| check(s).err().map(|e| (s.clone(), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_on_config_change_or_expiry() {
        assert!(!due(false, None, 100));
        assert!(!due(false, Some(101), 100));
        assert!(
            due(false, Some(100), 100),
            "expiry is inclusive, as for tokens"
        );
        assert!(due(false, Some(5), 100));
        assert!(due(true, None, 100));
        assert!(due(true, Some(1000), 100));
    }

    #[test]
    fn revoked_keeps_the_valid_and_names_why_the_others_go() {
        let sessions: Vec<Arc<str>> = ["ok", "expired", "disabled", "no-cred"]
            .into_iter()
            .map(Arc::from)
            .collect();
        let check = |s: &str| match s {
            "ok" => Ok(()),
            "expired" => Err(AuthError::Expired),
            "disabled" => Err(AuthError::UserGone("bob".into())),
            _ => Err(AuthError::CredentialGone("c".into())),
        };
        let out = revoked(&sessions, check);
        let names: Vec<&str> = out.iter().map(|(s, _)| &**s).collect();
        assert_eq!(names, ["expired", "disabled", "no-cred"]);
        assert_eq!(out[0].1, AuthError::Expired);
        assert_eq!(out[1].1, AuthError::UserGone("bob".into()));
        assert!(revoked(&sessions[..1], check).is_empty());
    }
}
