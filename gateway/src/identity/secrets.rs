//! Generation and constant-time checking of credential secrets.
//!
//! Secrets are 256-bit random values, so a single SHA-256 is an adequate stored form: there
//! is nothing to brute-force that a slow password hash would protect.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of OAuth2 client ids, so a leaked id is recognisable in logs and scanners.
pub const CLIENT_ID_PREFIX: &str = "pcid_";
/// Prefix of auth tokens exchanged by `postern login`, recognisable by secret scanners.
pub const AUTH_TOKEN_PREFIX: &str = "pat_";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

fn new_secret() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A fresh OAuth2 client: `(client_id, client_secret, hash of the secret)`.
///
/// The id (`pcid_` + 32 hex digits) is public and is the credential's lookup id; the secret
/// (32 random bytes, base64url) is shown once and only its hash is stored.
pub fn new_client_credentials() -> (String, String, [u8; 32]) {
    let client_id = format!("{CLIENT_ID_PREFIX}{}", hex::encode(random_bytes::<16>()));
    let secret = new_secret();
    let hash = hash_secret(&secret);
    (client_id, secret, hash)
}

/// A fresh auth token: `(token, lookup_id, hash of the secret part)`.
///
/// The token is `pat_<lookup_id>_<secret>`, so login can find the row by `lookup_id` and
/// then compare the hash of the secret part in constant time.
pub fn new_auth_token() -> (String, String, [u8; 32]) {
    let lookup_id = hex::encode(random_bytes::<16>());
    let secret = new_secret();
    let hash = hash_secret(&secret);
    (
        format!("{AUTH_TOKEN_PREFIX}{lookup_id}_{secret}"),
        lookup_id,
        hash,
    )
}

/// Splits an auth token into `(lookup_id, secret)`; `None` if it is not shaped like one made
/// by [`new_auth_token`] (so login can reject it before any store read).
pub fn parse_auth_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(AUTH_TOKEN_PREFIX)?;
    // The lookup id is hex, so the first '_' ends it; the secret may itself contain '_'.
    let (lookup_id, secret) = rest.split_once('_')?;
    let id_ok = lookup_id.len() == 32 && lookup_id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = !secret.is_empty()
        && secret.len() <= 128
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((lookup_id, secret))
}

/// The stored form of a credential secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Does `presented` hash to `stored`? The comparison is constant-time.
pub fn verify_secret(presented: &str, stored: &[u8; 32]) -> bool {
    hash_secret(presented).ct_eq(stored).into()
}

/// A random identifier `<prefix>-<32 hex digits>` for session names and token ids; it is a
/// valid resource name whenever `prefix` is (lowercase letters, digits, '-').
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(random_bytes::<16>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_shape_and_hash() {
        let (id, secret, hash) = new_client_credentials();
        assert!(id.starts_with("pcid_"));
        assert_eq!(id.len(), 5 + 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&secret).unwrap().len(), 32);
        assert_eq!(hash, hash_secret(&secret));
        assert!(verify_secret(&secret, &hash));
        let (id2, secret2, _) = new_client_credentials();
        assert_ne!(id, id2);
        assert_ne!(secret, secret2);
    }

    #[test]
    fn auth_token_parses_back() {
        for _ in 0..50 {
            let (token, lookup_id, hash) = new_auth_token();
            let (id, secret) = parse_auth_token(&token).expect("own tokens parse");
            assert_eq!(id, lookup_id);
            assert!(verify_secret(secret, &hash));
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(parse_auth_token(&format!("pat_{id}_abc_-d")).is_some());
        for bad in [
            "",
            "pat_",
            "pat__secret",
            &format!("pat_{id}"),
            &format!("pat_{id}_"),
            &format!("pcid_{id}_abc"),
            "pat_0123_abc",
            "pat_0123456789abcdef0123456789abcdeg_abc",
            &format!("pat_{id}_a b"),
            &format!("pat_{id}_{}", "a".repeat(200)),
        ] {
            assert!(parse_auth_token(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            hex::encode(hash_secret("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn wrong_secret_of_equal_length_fails() {
        let (_, secret, hash) = new_client_credentials();
        let mut wrong = secret.clone().into_bytes();
        wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(wrong.len(), secret.len());
        assert!(!verify_secret(&wrong, &hash));
        assert!(!verify_secret("", &hash));
    }

    #[test]
    fn secret_comparison_is_subtle_based() {
        // A differing last byte fails like a differing first byte: the whole hash is compared.
        let (_, secret, hash) = new_client_credentials();
        let mut last = hash;
        last[31] ^= 1;
        assert!(!verify_secret(&secret, &last));
        // The comparison is `subtle`'s constant-time equality, never `==` on secret bytes...
        let src = include_str!("secrets.rs");
        let body = src
            .split("pub fn verify_secret")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .expect("verify_secret is defined here");
        assert!(body.contains(".ct_eq(stored)"), "{body}");
        assert!(!body.contains("=="), "{body}");
        // ...and the one place credentials are checked goes through it, with a dummy hash
        // for unknown ids so timing does not tell ids apart.
        let changes = include_str!("../state/changes.rs");
        assert!(changes.contains("secrets::verify_secret(secret, &hash)"));
        assert!(changes.contains("unwrap_or([0u8; 32])"));
        for bad in [
            "secret_hash ==",
            "== c.secret_hash",
            "hash_secret(secret) ==",
        ] {
            assert!(!changes.contains(bad), "{bad}");
        }
    }

    #[test]
    fn random_ids_are_valid_names_and_distinct() {
        let a = random_id("sess");
        let b = random_id("sess");
        assert_ne!(a, b);
        assert!(a.starts_with("sess-"));
        assert!(postern_common::resources::validate::check_name(&a).is_ok());
    }
}
