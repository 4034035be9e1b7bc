//! A cache of access tokens whose signature has already been checked.
//!
//! Ed25519 verification costs tens of microseconds, the largest part of a proxied request's
//! CPU when every request pays it. A token's claims cannot change, so once its exact bytes
//! verified, later requests only look it up; expiry is still checked on every use, and
//! revocation never depended on the signature (the Session must still be live in memory).
//! The cache is bounded: when full it is emptied, so a flood of distinct valid tokens costs
//! at most the verification they would have cost anyway.

use super::{Claims, TokenError, TokenSigner};
use std::collections::HashMap;
use std::sync::RwLock;

/// Most tokens remembered at once (each entry is a token of a few hundred bytes).
pub const MAX_VERIFIED_TOKENS: usize = 65_536;

/// Verified tokens and their claims.
pub struct VerifiedTokens {
    entries: RwLock<HashMap<Box<str>, Claims>>,
    capacity: usize,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens::with_capacity(MAX_VERIFIED_TOKENS)
    }
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens.
    pub fn with_capacity(capacity: usize) -> Self {
        VerifiedTokens {
            entries: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The claims of `token`: from the cache when its signature was checked before, else
    /// verified with `signer` (and remembered when valid). Expiry is checked either way.
    pub fn verify(
        &self,
        signer: &TokenSigner,
        token: &str,
        now_unix: i64,
    ) -> Result<Claims, TokenError> {
        let cached = self
            .entries
            .read()
            .expect("token cache lock")
            .get(token)
            .cloned();
        if let Some(claims) = cached {
            if now_unix >= claims.exp {
                self.entries
                    .write()
                    .expect("token cache lock")
                    .remove(token);
                return Err(TokenError::Expired);
            }
            return Ok(claims);
        }
        let claims = signer.verify(token, now_unix)?;
        let mut entries = self.entries.write().expect("token cache lock");
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.entries.read().expect("token cache lock").len()
    }

    /// True when no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sid: "s".into(),
            tid: "t".into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn remembers_valid_tokens_only_and_still_checks_expiry() {
        let signer = TokenSigner::from_key(&[7u8; 32]);
        let cache = VerifiedTokens::default();
        let token = signer.issue(&claims(100));
        assert_eq!(cache.verify(&signer, &token, 10).unwrap().sid, "s");
        assert_eq!(cache.len(), 1);
        // A hit: even a signer with another key is not consulted.
        let other = TokenSigner::from_key(&[8u8; 32]);
        assert!(cache.verify(&other, &token, 11).is_ok());
        // Expiry applies to cached tokens too, and drops them.
        assert_eq!(cache.verify(&signer, &token, 100), Err(TokenError::Expired));
        assert!(cache.is_empty());
        // Forgeries are never remembered.
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(cache.verify(&signer, &forged, 10).is_err());
        assert!(cache.is_empty());
        assert_eq!(
            cache.verify(&signer, "pst.garbage", 10),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn stays_bounded() {
        let signer = TokenSigner::from_key(&[7u8; 32]);
        let cache = VerifiedTokens::with_capacity(8);
        for i in 0..20 {
            let mut c = claims(100);
            c.tid = i.to_string();
            cache.verify(&signer, &signer.issue(&c), 10).unwrap();
        }
        assert!(cache.len() <= 8 && !cache.is_empty());
    }
}
