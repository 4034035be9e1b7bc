//! The state of one sign-in between `/login` and `/callback`, kept in the browser as a
//! sealed cookie (XChaCha20-Poly1305 under a key of its own) so that it is bound to that
//! browser, survives a gateway restart, and needs no server memory a stranger could fill.

use super::agent::AgentRequest;
use crate::identity::SecretBox;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// How long a person has to finish signing in at the IdentityProvider.
pub const FLOW_TTL_SECS: i64 = 600;
/// The purpose the cookie key is derived for.
pub const COOKIE_KEY_PURPOSE: &str = "postern sign-in flow cookie v1";
/// Prefix of the flow cookie's name; the rest comes from the state, so sign-ins in
/// several tabs do not overwrite each other.
pub const COOKIE_PREFIX: &str = "postern_signin_";

/// One sign-in in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInFlow {
    /// The IdentityProvider's name.
    pub idp: String,
    /// Sent to the IdP and checked when it comes back.
    pub state: String,
    /// Bound into the ID token by the IdP.
    pub nonce: String,
    /// The PKCE verifier of the code request.
    pub verifier: String,
    /// Where the browser goes afterwards (checked when the flow started).
    pub return_to: String,
    /// Unix time after which the flow is refused.
    pub expires: i64,
    /// Set when the `postern` agent started this sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRequest>,
}

/// Why the flow cookie did not match the IdP's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("the sign-in began in another browser or its cookie was lost; start again")]
    Missing,
    #[error("the sign-in cookie was altered")]
    Tampered,
    #[error("the sign-in took longer than 10 minutes; start again")]
    Expired,
    #[error("the state returned by the identity provider does not match this browser's sign-in")]
    StateMismatch,
}

impl SignInFlow {
    /// The cookie's name for this flow.
    pub fn cookie_name(&self) -> String {
        cookie_name_for_state(&self.state)
    }

    /// The cookie's value: the sealed flow, base64url.
    pub fn seal(&self, keys: &SecretBox) -> String {
        let json = serde_json::to_vec(self).expect("serializes");
        URL_SAFE_NO_PAD.encode(keys.seal(&json))
    }

    /// Opens a cookie value and checks it against the `state` the IdP sent back and `now`.
    pub fn open(
        cookie: Option<&str>,
        state: &str,
        keys: &SecretBox,
        now: i64,
    ) -> Result<SignInFlow, FlowError> {
        let raw = cookie.ok_or(FlowError::Missing)?;
        let sealed = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| FlowError::Tampered)?;
        let plain = keys.open(&sealed).map_err(|_| FlowError::Tampered)?;
        let flow: SignInFlow = serde_json::from_slice(&plain).map_err(|_| FlowError::Tampered)?;
        if !bool::from(flow.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(FlowError::StateMismatch);
        }
        if flow.expires <= now {
            return Err(FlowError::Expired);
        }
        Ok(flow)
    }
}

/// `postern_signin_<first 12 characters of the state>`. The gateway's states are random
/// base64url, whose characters are all valid in a cookie name; any other character (a state
/// a stranger sent to `/callback`) is left out, so the name is always header-safe.
pub fn cookie_name_for_state(state: &str) -> String {
    let short: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(12)
        .collect();
    format!("{COOKIE_PREFIX}{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> SignInFlow {
        SignInFlow {
            idp: "corp".into(),
            state: "abcdefghijklmnopqrstuvwxyz".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            return_to: "https://svc.example.test/".into(),
            expires: 1000,
            agent: None,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let keys = SecretBox::from_key(&[1; 32]).derive(COOKIE_KEY_PURPOSE);
        let sealed = flow().seal(&keys);
        let state = flow().state;
        assert_eq!(
            SignInFlow::open(Some(&sealed), &state, &keys, 999),
            Ok(flow())
        );
        assert_eq!(
            SignInFlow::open(Some(&sealed), &state, &keys, 1000),
            Err(FlowError::Expired)
        );
        assert_eq!(
            SignInFlow::open(Some(&sealed), "other", &keys, 0),
            Err(FlowError::StateMismatch)
        );
        assert_eq!(
            SignInFlow::open(None, &state, &keys, 0),
            Err(FlowError::Missing)
        );
        let other = SecretBox::from_key(&[2; 32]).derive(COOKIE_KEY_PURPOSE);
        assert_eq!(
            SignInFlow::open(Some(&sealed), &state, &other, 0),
            Err(FlowError::Tampered)
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            SignInFlow::open(Some(&URL_SAFE_NO_PAD.encode(bytes)), &state, &keys, 0),
            Err(FlowError::Tampered)
        );
        assert_eq!(flow().cookie_name(), "postern_signin_abcdefghijkl");
    }

    #[test]
    fn cookie_names_keep_base64url_and_drop_anything_else() {
        assert_eq!(
            cookie_name_for_state("b1g4tmcKE-rCzc5t_7kbpu9G"),
            "postern_signin_b1g4tmcKE-rC"
        );
        assert_eq!(cookie_name_for_state("a_b-c"), "postern_signin_a_b-c");
        let hostile = cookie_name_for_state("x;\r\n Set-Cookie: evil=1\u{0}é");
        assert_eq!(hostile, "postern_signin_xSet-Cookiee");
        assert!(crate::frontdoor::cookies::clear(&hostile, None)
            .to_str()
            .is_ok());
    }
}
