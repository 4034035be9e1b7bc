//! Ed25519-signed access tokens, verified from the key alone (no store read), so the hot
//! path can authenticate a request from memory. Revocation is the in-memory state's job:
//! a token names its session, and a deleted session no longer resolves.
//!
//! Format: `pst.` + base64url(JSON claims) + `.` + base64url(signature), no padding. The
//! signature covers [`SIGNING_CONTEXT`] followed by the exact payload bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The prefix of every access token, so they are recognisable to people and scanners.
pub const TOKEN_PREFIX: &str = "pst.";
/// Domain separation: a signature made for tokens is useless for anything else the key signs.
pub const SIGNING_CONTEXT: &[u8] = b"postern access token v1\0";
/// Tokens longer than this are rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What an access token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The Session's name; the token is only as valid as that session.
    pub sid: String,
    /// A random token id, so a single token can be told apart in logs.
    pub tid: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds (exclusive).
    pub exp: i64,
}

/// Why a presented token was refused. Messages are safe to return to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a Postern access token (wrong prefix, bad encoding, too long, bad claims).
    #[error("malformed access token; obtain a new one with `postern login` or the OAuth2 token endpoint")]
    Malformed,
    /// The signature does not match: forged, altered, or signed by another gateway key.
    #[error("access token signature is invalid; obtain a new token")]
    BadSignature,
    /// The token was genuine but its lifetime is over.
    #[error("access token has expired; obtain a new one")]
    Expired,
}

/// Why the signing key file could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// `create` found a key already there; refusing keeps issued tokens valid.
    #[error("token signing key file {path} already exists; refusing to overwrite it (delete it to invalidate all issued tokens)")]
    AlreadyExists { path: PathBuf },
    /// The key file could not be read or written.
    #[error("cannot access token signing key file {path}: {source}; re-run `posternd init` or restore the key file from backup")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold a 32-byte key.
    #[error("token signing key file {path} is not a 32-byte key; restore it from backup or re-run `posternd init`")]
    BadKeyFile { path: PathBuf },
}

/// Issues and verifies access tokens with the gateway's Ed25519 key.
pub struct TokenSigner {
    signing: SigningKey,
    verifying: VerifyingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("public_key", &hex::encode(self.verifying.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Generates a new signing key, writes it to `path` with mode 0600 and returns the signer;
    /// fails if the file exists.
    pub fn create(path: &Path) -> Result<TokenSigner, SigningKeyError> {
        let signing = SigningKey::generate(&mut OsRng);
        super::write_new_key_file(path, signing.as_bytes()).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                SigningKeyError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                SigningKeyError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(TokenSigner::from_key(&signing.to_bytes()))
    }

    /// Reads the key written by [`TokenSigner::create`].
    pub fn load(path: &Path) -> Result<TokenSigner, SigningKeyError> {
        let key = super::read_key_file(path).map_err(|e| match e {
            Some(source) => SigningKeyError::Io {
                path: path.to_path_buf(),
                source,
            },
            None => SigningKeyError::BadKeyFile {
                path: path.to_path_buf(),
            },
        })?;
        Ok(TokenSigner::from_key(&key))
    }

    /// Builds a signer from a raw 32-byte Ed25519 seed (for callers managing keys, and tests).
    pub fn from_key(seed: &[u8; 32]) -> TokenSigner {
        let signing = SigningKey::from_bytes(seed);
        let verifying = signing.verifying_key();
        TokenSigner { signing, verifying }
    }

    /// Signs `claims` into a `pst.` token.
    pub fn issue(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims always serialize");
        let signature = self.signing.sign(&signed_message(&payload));
        format!(
            "{TOKEN_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// Checks the token's form, signature (strict Ed25519) and expiry at `now_unix`.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let (payload_b64, sig_b64) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let sig_bytes = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| TokenError::Malformed)?;
        let signature = Signature::from_slice(&sig_bytes).map_err(|_| TokenError::Malformed)?;
        self.verifying
            .verify_strict(&signed_message(&payload), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if now_unix >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + payload.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(payload);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_util::temp_path;

    fn claims() -> Claims {
        Claims {
            sid: "sess-1".into(),
            tid: "tok-1".into(),
            iat: 1_000,
            exp: 2_000,
        }
    }

    fn signer() -> TokenSigner {
        TokenSigner::from_key(&[1u8; 32])
    }

    #[test]
    fn round_trip() {
        let s = signer();
        let token = s.issue(&claims());
        assert!(token.starts_with("pst."));
        assert_eq!(s.verify(&token, 1_500).unwrap(), claims());
    }

    #[test]
    fn tampered_payload_fails() {
        let s = signer();
        let token = s.issue(&claims());
        let (_, sig) = token.rsplit_once('.').unwrap();
        let mut forged = claims();
        forged.exp = 9_999;
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("pst.{payload}.{sig}");
        assert_eq!(s.verify(&tampered, 1_500), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_signature_fails() {
        let s = signer();
        let token = s.issue(&claims());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        bytes[10] ^= 0x01;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(s.verify(&tampered, 1_500), Err(TokenError::BadSignature));
    }

    #[test]
    fn other_key_fails() {
        let token = signer().issue(&claims());
        let other = TokenSigner::from_key(&[2u8; 32]);
        assert_eq!(other.verify(&token, 1_500), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_fails() {
        let s = signer();
        let token = s.issue(&claims());
        assert_eq!(s.verify(&token, 2_000), Err(TokenError::Expired));
        assert_eq!(s.verify(&token, 5_000), Err(TokenError::Expired));
        assert!(s.verify(&token, 1_999).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        let s = signer();
        for bad in [
            "",
            "pst.",
            "pst..",
            "Bearer x",
            "pst.!!!.###",
            "pst.e30",
            "pst.e30.AAAA",
            "pat_abc_def",
        ] {
            assert_eq!(s.verify(bad, 1_500), Err(TokenError::Malformed), "{bad:?}");
        }
        // Correctly signed but not claims JSON.
        let payload = b"{\"hello\":1}";
        let sig = s.signing.sign(&signed_message(payload));
        let token = format!(
            "pst.{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        );
        assert_eq!(s.verify(&token, 1_500), Err(TokenError::Malformed));
    }

    #[test]
    fn signature_without_domain_separation_fails() {
        let s = signer();
        let payload = serde_json::to_vec(&claims()).unwrap();
        let sig = s.signing.sign(&payload);
        let token = format!(
            "pst.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        );
        assert_eq!(s.verify(&token, 1_500), Err(TokenError::BadSignature));
    }

    #[test]
    fn oversized_is_rejected() {
        let s = signer();
        let mut big = claims();
        big.sid = "a".repeat(4_000);
        let token = s.issue(&big);
        assert!(token.len() > MAX_TOKEN_LEN);
        assert_eq!(s.verify(&token, 1_500), Err(TokenError::Malformed));
    }

    #[test]
    fn create_then_load_and_refuse_overwrite() {
        let path = temp_path("tokenkey");
        let created = TokenSigner::create(&path).unwrap();
        let loaded = TokenSigner::load(&path).unwrap();
        assert_eq!(
            loaded.verify(&created.issue(&claims()), 1_500).unwrap(),
            claims()
        );
        assert!(matches!(
            TokenSigner::create(&path),
            Err(SigningKeyError::AlreadyExists { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            TokenSigner::load(&path),
            Err(SigningKeyError::Io { .. })
        ));
    }
}
