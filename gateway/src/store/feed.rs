//! What one gateway tells the others when it writes a shared store: a [`Notice`] per change,
//! carried by PostgreSQL `NOTIFY` on [`CHANNEL`] in the writing transaction, so it arrives
//! exactly when the change is visible. Encoding and decoding are here, apart from I/O.

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
    /// A Session just stored, whole, so other gateways accept its tokens without a read.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Box<SessionInfo>>,
}

/// Largest payload PostgreSQL carries (8000 bytes by default). A longer notice leaves out
/// the Session body (the reader fetches it by name), then the name (the reader reloads the
/// whole topic).
const MAX_PAYLOAD: usize = 7900;

impl Notice {
    /// The `NOTIFY` payload.
    pub fn encode(&self) -> String {
        let text = serde_json::to_string(self).expect("notices always serialize");
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        let without_body = Notice {
            session: None,
            ..self.clone()
        };
        let text = serde_json::to_string(&without_body).expect("notices always serialize");
        if text.len() <= MAX_PAYLOAD {
            return text;
        }
        serde_json::to_string(&Notice {
            name: None,
            ..without_body
        })
        .expect("notices always serialize")
    }

    /// A payload back into a notice; `None` for one this version does not understand (a
    /// newer gateway's topic), which the listener treats as "resync everything".
    pub fn decode(payload: &str) -> Option<Notice> {
        serde_json::from_str(payload).ok()
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

    #[test]
    fn notices_round_trip() {
        let n = Notice {
            origin: "gw-a".into(),
            topic: Topic::Sessions,
            name: Some("s-1".into()),
            session: None,
        };
        assert_eq!(n.encode(), r#"{"o":"gw-a","t":"sessions","n":"s-1"}"#);
        assert_eq!(Notice::decode(&n.encode()), Some(n));
        let whole = Notice {
            origin: "gw-a".into(),
            topic: Topic::Resources,
            name: None,
            session: None,
        };
        assert_eq!(Notice::decode(&whole.encode()), Some(whole));
    }

    #[test]
    fn an_overlong_name_becomes_a_whole_topic_notice() {
        let n = Notice {
            origin: "gw".into(),
            topic: Topic::Sessions,
            name: Some("x".repeat(10_000)),
            session: None,
        };
        let decoded = Notice::decode(&n.encode()).unwrap();
        assert_eq!(decoded.name, None);
        assert_eq!(decoded.topic, Topic::Sessions);
    }

    #[test]
    fn unknown_payloads_are_not_guessed_at() {
        assert_eq!(Notice::decode(r#"{"o":"gw","t":"somethingNew"}"#), None);
        assert_eq!(Notice::decode("not json"), None);
    }
}
