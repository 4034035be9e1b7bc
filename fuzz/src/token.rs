//! Access tokens: parsing and Ed25519 verification, directly and through the verified-token
//! cache the hot path uses.
//!
//! Properties: a genuine token verifies to its claims until it expires; any other string
//! (a mutation of a genuine token, claims re-signed by another key, claims swapped under a
//! genuine signature, or arbitrary text) never verifies, whether or not the genuine token
//! is already in the cache.

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use postern_gateway::identity::{Claims, TokenError, TokenSigner, VerifiedTokens};

const KEY: [u8; 32] = [7; 32];
const OTHER_KEY: [u8; 32] = [9; 32];
const NOW: i64 = 1_800_000_000;

#[derive(Debug, Arbitrary)]
enum Mutation {
    Flip {
        at: u16,
        bit: u8,
    },
    Replace {
        at: u16,
        byte: u8,
    },
    Insert {
        at: u16,
        byte: u8,
    },
    Remove {
        at: u16,
    },
    Truncate {
        len: u16,
    },
    Append(String),
    /// Other claims under the genuine signature.
    SwapClaims {
        sid: String,
        exp: i64,
    },
    /// The same claims signed by another gateway's key.
    OtherKey,
    /// Arbitrary text in place of the token.
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    sid: String,
    tid: String,
    iat: i64,
    lifetime: u32,
    mutations: Vec<Mutation>,
}

fn mutate(token: &str, claims: &Claims, m: &Mutation) -> Option<String> {
    let mut bytes = token.as_bytes().to_vec();
    let at = |i: u16, len: usize| usize::from(i) % len.max(1);
    match m {
        Mutation::Flip { at: i, bit } => {
            let i = at(*i, bytes.len());
            bytes[i] ^= 1 << (bit % 8);
        }
        Mutation::Replace { at: i, byte } => {
            let i = at(*i, bytes.len());
            bytes[i] = *byte;
        }
        Mutation::Insert { at: i, byte } => {
            let i = at(*i, bytes.len() + 1);
            bytes.insert(i, *byte);
        }
        Mutation::Remove { at: i } => {
            let i = at(*i, bytes.len());
            bytes.remove(i);
        }
        Mutation::Truncate { len } => bytes.truncate(usize::from(*len) % bytes.len()),
        Mutation::Append(s) => bytes.extend_from_slice(s.as_bytes()),
        Mutation::SwapClaims { sid, exp } => {
            let forged = Claims {
                sid: sid.clone(),
                exp: *exp,
                ..claims.clone()
            };
            let payload = serde_json::to_vec(&forged).ok()?;
            let sig = token.rsplit_once('.')?.1;
            return Some(format!("pst.{}.{sig}", URL_SAFE_NO_PAD.encode(payload)));
        }
        Mutation::OtherKey => return Some(TokenSigner::from_key(&OTHER_KEY).issue(claims)),
        Mutation::Text(s) => return Some(s.clone()),
    }
    String::from_utf8(bytes).ok()
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let signer = TokenSigner::from_key(&KEY);
    let claims = Claims {
        sid: input.sid,
        tid: input.tid,
        iat: input.iat,
        exp: NOW
            .saturating_add(i64::from(input.lifetime))
            .saturating_add(1),
    };
    let token = signer.issue(&claims);
    let cache = VerifiedTokens::with_capacity(4);
    if token.len() <= postern_gateway::identity::token::MAX_TOKEN_LEN {
        assert_eq!(signer.verify(&token, NOW), Ok(claims.clone()));
        assert_eq!(cache.verify(&signer, &token, NOW), Ok(claims.clone()));
    } else {
        assert_eq!(signer.verify(&token, NOW), Err(TokenError::Malformed));
    }
    for m in input.mutations.iter().take(16) {
        let Some(forged) = mutate(&token, &claims, m) else {
            continue;
        };
        if forged == token {
            continue;
        }
        let direct = signer.verify(&forged, NOW);
        assert!(
            direct.is_err(),
            "accepted {forged:?} ({m:?}) from {token:?}"
        );
        let cached = cache.verify(&signer, &forged, NOW);
        assert!(cached.is_err(), "cache accepted {forged:?} ({m:?})");
    }
    if token.len() <= postern_gateway::identity::token::MAX_TOKEN_LEN {
        assert_eq!(
            cache.verify(&signer, &token, claims.exp),
            Err(TokenError::Expired)
        );
        assert_eq!(signer.verify(&token, claims.exp), Err(TokenError::Expired));
    }
}
