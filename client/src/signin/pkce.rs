//! PKCE (RFC 7636) and the `state` value of a browser sign-in: the secrets that tie the
//! code arriving on the loopback redirect to this very `postern login`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Random bytes behind a verifier or a state: 256 bits, 43 base64url characters.
const SECRET_BYTES: usize = 32;

/// A PKCE pair: the verifier stays here until the code exchange, the challenge goes into the
/// sign-in URL. Whoever steals the code without the verifier cannot redeem it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkce {
    /// 43 base64url characters from the OS random source (RFC 7636 section 4.1).
    pub verifier: String,
    /// `BASE64URL(SHA256(verifier))`, the `S256` method.
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair from the operating system's random source.
    pub fn generate() -> Pkce {
        Pkce::from_verifier(random_token())
    }

    /// The pair for a given verifier (tests use RFC 7636's example).
    pub fn from_verifier(verifier: String) -> Pkce {
        let challenge = s256_challenge(&verifier);
        Pkce {
            verifier,
            challenge,
        }
    }
}

/// The `S256` code challenge of `verifier`.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A fresh `state`: the loopback accepts only a callback that carries it back.
pub fn random_state() -> String {
    random_token()
}

fn random_token() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_the_rfc_7636_example() {
        let p = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifiers_are_long_unreserved_and_fresh() {
        let a = Pkce::generate();
        let b = Pkce::generate();
        assert_ne!(a.verifier, b.verifier);
        assert_ne!(random_state(), random_state());
        for v in [&a.verifier, &b.verifier] {
            assert!((43..=128).contains(&v.len()), "{v}");
            assert!(
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)),
                "{v}"
            );
        }
        assert_eq!(a.challenge.len(), 43);
        assert_eq!(a.challenge, s256_challenge(&a.verifier));
    }
}
