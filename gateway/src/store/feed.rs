//! What one gateway tells the others when it writes a shared store: a [`Notice`] per change,
//! carried by PostgreSQL `NOTIFY` on [`CHANNEL`] in the writing transaction, so it arrives
//! exactly when the change is visible. Encoding and decoding are here, apart from I/O.
//!
//! Any role that may connect to the database may also `NOTIFY` on any channel: a forged
//! notice could make every gateway reload at will, or (were a Session body trusted) bring
//! back a revoked token. So every payload is sealed
//! ([`NoticeSealer`], an AEAD under a key derived from `secret.key`, which the database never
//! sees): a notice that does not open is ignored, never acted on.

use base64::Engine;
use postern_common::resources::SessionInfo;
use serde::{Deserialize, Serialize};

/// The PostgreSQL notification channel every gateway listens on.
pub const CHANNEL: &str = "postern_changes";

/// Which part of the state a change touched, so a gateway reloads only that part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Topic {
    /// Declared resources (a User deleted also deletes Credentials and Sessions: the writer
    /// sends those topics too).
    Resources,
    Secrets,
    Credentials,
    /// With a `name`, one Session was added or removed; without, any number were.
    Sessions,
    /// ACME certificates and accounts.
    Certificates,
    /// Tunnel address claims.
    TunnelAddresses,
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// The writing gateway's store identity; a gateway skips its own notices.
    #[serde(rename = "o")]
    pub origin: String,
    #[serde(rename = "t")]
    pub topic: Topic,
    /// The one object changed, when the writer knows it (a Session's name).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A Session just stored, whole. Readers treat it as a name to read from the store: a
    /// sealed notice says who wrote it, not when, so a replayed one must not be trusted.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Box<SessionInfo>>,
}

/// Seals and opens notice payloads (authenticated encryption with a key all gateways of a
/// store share and the database does not hold).
pub trait NoticeSealer: Send + Sync {
    /// Encrypts and authenticates `plain`.
    fn seal(&self, plain: &[u8]) -> Vec<u8>;
    /// The plaintext of `sealed`, or `None` when it was not sealed with this key.
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>>;
}

impl NoticeSealer for crate::identity::SecretBox {
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        crate::identity::SecretBox::seal(self, plain)
    }
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        crate::identity::SecretBox::open(self, sealed).ok()
    }
}

/// Largest payload PostgreSQL carries (8000 bytes by default). A longer notice leaves out
/// the Session body (the reader fetches it by name), then the name (the reader reloads the
/// whole topic).
const MAX_PAYLOAD: usize = 7900;

impl Notice {
    /// The `NOTIFY` payload: the notice as JSON, sealed, in base64.
    pub fn seal(&self, sealer: &dyn NoticeSealer) -> String {
        let sealed = |n: &Notice| {
            let json = serde_json::to_vec(n).expect("notices always serialize");
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sealer.seal(&json))
        };
        let text = sealed(self);
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        let without_body = Notice {
            session: None,
            ..self.clone()
        };
        let text = sealed(&without_body);
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        sealed(&Notice {
            name: None,
            ..without_body
        })
    }

    /// A payload back into a notice; `None` when it does not open with this key (forged, or
    /// sealed by a gateway with another `secret.key`) or is not a notice this version knows.
    pub fn open(payload: &str, sealer: &dyn NoticeSealer) -> Option<Notice> {
        let sealed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(payload.trim())
            .ok()?;
        serde_json::from_slice(&sealer.open(&sealed)?).ok()
    }
}

/// What the change listener hands the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// Another gateway committed a change.
    Notice(Notice),
    /// Notices may have been missed (the listener connected for the first time since it was
    /// lost, or a payload could not be read): reload everything from the store.
    Resync,
    /// The listener lost its connection; changes are not heard until the next `Resync`.
    Lost(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretBox;

    fn key(k: u8) -> SecretBox {
        SecretBox::from_key(&[k; 32])
    }

    #[test]
    fn notices_round_trip_sealed() {
        let n = Notice {
            origin: "gw-a".into(),
            topic: Topic::Sessions,
            name: Some("s-1".into()),
            session: None,
        };
        let payload = n.seal(&key(1));
        assert!(!payload.contains("gw-a"), "{payload}");
        assert_eq!(Notice::open(&payload, &key(1)), Some(n));
    }

    #[test]
    fn forged_or_foreign_notices_do_not_open() {
        let n = Notice {
            origin: "gw-a".into(),
            topic: Topic::Resources,
            name: None,
            session: None,
        };
        assert_eq!(Notice::open(&n.seal(&key(1)), &key(2)), None);
        // What a role that can only NOTIFY would send: a plain notice.
        let forged = serde_json::to_string(&n).unwrap();
        assert_eq!(Notice::open(&forged, &key(1)), None);
        assert_eq!(Notice::open("not base64 !", &key(1)), None);
    }

    #[test]
    fn an_overlong_name_becomes_a_whole_topic_notice() {
        let n = Notice {
            origin: "gw".into(),
            topic: Topic::Sessions,
            name: Some("x".repeat(10_000)),
            session: None,
        };
        let payload = n.seal(&key(1));
        assert!(payload.len() <= MAX_PAYLOAD);
        let opened = Notice::open(&payload, &key(1)).unwrap();
        assert_eq!(opened.name, None);
        assert_eq!(opened.topic, Topic::Sessions);
    }
}
