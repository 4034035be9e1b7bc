//! The `postern` agent's part of a browser sign-in (RFC 8252): its loopback redirect, its
//! PKCE challenge, and the one-time codes that carry the sign-in from the browser back to it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use url::{Host, Url};

/// How long a one-time code waits for the agent to redeem it.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Codes waiting at once; past this the oldest requests are refused until some expire.
pub const MAX_PENDING_CODES: usize = 10_000;

/// What the agent asked for when it sent the person to `/login`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRequest {
    /// Its loopback redirect, exactly as given (the token request must repeat it).
    pub redirect: String,
    /// Its `state`, echoed back so it can tell its own sign-in from another.
    pub state: String,
    /// Base64url SHA-256 of its PKCE verifier.
    pub challenge: String,
}

/// Why an agent's sign-in request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRequestError {
    #[error("cli_redirect must be http://127.0.0.1:PORT/..., http://[::1]:PORT/... or http://localhost:PORT/...")]
    NotLoopback,
    #[error("cli_state must be 8 to 256 URL-safe characters")]
    BadState,
    #[error(
        "cli_challenge must be the 43-character base64url SHA-256 of the PKCE verifier (S256)"
    )]
    BadChallenge,
}

impl AgentRequest {
    /// Checks the three query parameters the agent sends.
    pub fn new(redirect: &str, state: &str, challenge: &str) -> Result<Self, AgentRequestError> {
        let url = Url::parse(redirect).map_err(|_| AgentRequestError::NotLoopback)?;
        let loopback = match url.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if url.scheme() != "http"
            || !loopback
            || url.port().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
            || url.fragment().is_some()
            || redirect.len() > 512
        {
            return Err(AgentRequestError::NotLoopback);
        }
        let url_safe = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        };
        if !(8..=256).contains(&state.len()) || !url_safe(state) {
            return Err(AgentRequestError::BadState);
        }
        if challenge.len() != 43
            || URL_SAFE_NO_PAD
                .decode(challenge)
                .map_or(true, |b| b.len() != 32)
        {
            return Err(AgentRequestError::BadChallenge);
        }
        Ok(AgentRequest {
            redirect: redirect.to_string(),
            state: state.to_string(),
            challenge: challenge.to_string(),
        })
    }

    /// The agent's redirect with `params` added to its query.
    pub fn redirect_with(&self, params: &[(&str, &str)]) -> String {
        let mut url = Url::parse(&self.redirect).expect("checked in new");
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            q.append_pair("state", &self.state);
        }
        url.to_string()
    }
}

/// A person signed in for an agent, waiting for the agent to redeem the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInPerson {
    pub user: String,
    pub identity_provider: String,
    pub claims: serde_json::Value,
}

struct Pending {
    request: AgentRequest,
    person: SignedInPerson,
    expires: Instant,
}

/// Why a code was not redeemed. The agent sees `invalid_grant` with this as the description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    #[error("the code is unknown, used or expired; sign in again")]
    Unknown,
    #[error("redirect_uri differs from the one the sign-in started with")]
    RedirectMismatch,
    #[error("code_verifier does not match the code_challenge")]
    VerifierMismatch,
}

/// One-time codes, in memory: a code lives 60 s and is gone after one redemption attempt,
/// right or wrong.
#[derive(Default)]
pub struct AgentCodes {
    pending: HashMap<String, Pending>,
}

impl AgentCodes {
    /// Stores a new code for `person`; `None` when too many are waiting.
    pub fn issue(
        &mut self,
        request: AgentRequest,
        person: SignedInPerson,
        now: Instant,
    ) -> Option<String> {
        self.pending.retain(|_, p| p.expires > now);
        if self.pending.len() >= MAX_PENDING_CODES {
            return None;
        }
        let code = crate::identity::random_id("pcode");
        self.pending.insert(
            code.clone(),
            Pending {
                request,
                person,
                expires: now + CODE_TTL,
            },
        );
        Some(code)
    }

    /// Redeems `code` once: the redirect must equal the original and SHA-256(verifier) the
    /// challenge (compared in constant time).
    pub fn redeem(
        &mut self,
        code: &str,
        verifier: &str,
        redirect: &str,
        now: Instant,
    ) -> Result<SignedInPerson, RedeemError> {
        let p = self.pending.remove(code).ok_or(RedeemError::Unknown)?;
        if p.expires <= now {
            return Err(RedeemError::Unknown);
        }
        if p.request.redirect != redirect {
            return Err(RedeemError::RedirectMismatch);
        }
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if !bool::from(computed.as_bytes().ct_eq(p.request.challenge.as_bytes())) {
            return Err(RedeemError::VerifierMismatch);
        }
        Ok(p.person)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn request() -> AgentRequest {
        AgentRequest::new("http://127.0.0.1:4711/callback", "st4te-abc", CHALLENGE).unwrap()
    }

    fn person() -> SignedInPerson {
        SignedInPerson {
            user: "alice".into(),
            identity_provider: "corp".into(),
            claims: serde_json::json!({}),
        }
    }

    #[test]
    fn only_loopback_redirects() {
        for ok in [
            "http://127.0.0.1:1/cb",
            "http://[::1]:5000/",
            "http://localhost:8080/x?y=1",
        ] {
            assert!(
                AgentRequest::new(ok, "st4te-abc", CHALLENGE).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "https://127.0.0.1:1/cb",
            "http://127.0.0.1/cb",
            "http://10.0.0.1:80/",
            "http://evil.com:80/",
            "http://localhost.evil.com:80/",
            "http://a@127.0.0.1:80/",
            "http://127.0.0.1:80/#x",
            "file:///etc/passwd",
        ] {
            assert_eq!(
                AgentRequest::new(bad, "st4te-abc", CHALLENGE),
                Err(AgentRequestError::NotLoopback),
                "{bad}"
            );
        }
        assert_eq!(
            AgentRequest::new("http://127.0.0.1:1/", "short", CHALLENGE),
            Err(AgentRequestError::BadState)
        );
        assert_eq!(
            AgentRequest::new("http://127.0.0.1:1/", "st4te-abc", "plain"),
            Err(AgentRequestError::BadChallenge)
        );
    }

    #[test]
    fn a_code_is_redeemed_once_with_the_right_verifier() {
        let now = Instant::now();
        let mut codes = AgentCodes::default();
        let code = codes.issue(request(), person(), now).unwrap();
        assert_eq!(
            codes.redeem(&code, VERIFIER, "http://127.0.0.1:4711/callback", now),
            Ok(person())
        );
        assert_eq!(
            codes.redeem(&code, VERIFIER, "http://127.0.0.1:4711/callback", now),
            Err(RedeemError::Unknown)
        );
    }

    #[test]
    fn wrong_verifier_redirect_or_age_burns_the_code() {
        let now = Instant::now();
        let mut codes = AgentCodes::default();
        let code = codes.issue(request(), person(), now).unwrap();
        assert_eq!(
            codes.redeem(
                &code,
                "x".repeat(43).as_str(),
                "http://127.0.0.1:4711/callback",
                now
            ),
            Err(RedeemError::VerifierMismatch)
        );
        assert_eq!(
            codes.redeem(&code, VERIFIER, "http://127.0.0.1:4711/callback", now),
            Err(RedeemError::Unknown)
        );
        let code = codes.issue(request(), person(), now).unwrap();
        assert_eq!(
            codes.redeem(&code, VERIFIER, "http://127.0.0.1:4712/callback", now),
            Err(RedeemError::RedirectMismatch)
        );
        let code = codes.issue(request(), person(), now).unwrap();
        assert_eq!(
            codes.redeem(
                &code,
                VERIFIER,
                "http://127.0.0.1:4711/callback",
                now + CODE_TTL
            ),
            Err(RedeemError::Unknown)
        );
    }

    #[test]
    fn redirect_carries_the_agent_state() {
        let url = request().redirect_with(&[("code", "c1")]);
        assert_eq!(
            url,
            "http://127.0.0.1:4711/callback?code=c1&state=st4te-abc"
        );
    }
}
