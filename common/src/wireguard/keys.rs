//! Curve25519 keys as WireGuard uses them, with the base64 text form `wg` prints.
//!
//! Keys cross process boundaries as text (agent enrolment, the control API, `wg`
//! configurations in interop tests), so parsing reports exactly what was wrong.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use x25519_dalek::StaticSecret;

/// Why a textual key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard (padded) base64.
    #[error("key is not valid base64: {0}")]
    Base64(String),
    /// The text decodes, but not to the 32 bytes a Curve25519 key has.
    #[error("key must decode to 32 bytes, got {0}")]
    Length(usize),
}

fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| KeyError::Base64(e.to_string()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// A peer's public key: the identity WireGuard authenticates, and the key of the peer table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes (for example from a handshake or a database row).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the base64 form `wg pubkey` prints.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(PublicKey)
    }

    /// The base64 form `wg` prints and accepts.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn to_dalek(self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

/// A private key. Its `Debug` output never shows the secret, so it can sit in logged structs.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Self {
        PrivateKey(StaticSecret::random_from_rng(rand::rngs::OsRng))
    }

    /// Wraps raw key bytes (clamping happens inside the Diffie-Hellman as the spec says).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PrivateKey(StaticSecret::from(bytes))
    }

    /// Parses the base64 form `wg genkey` prints.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self::from_bytes)
    }

    /// The base64 form `wg` accepts in `private-key` files.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    /// The matching public key, to hand to the other side.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

/// A private key with its public key, so the public half is computed once.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The secret half; stays on this host.
    pub private: PrivateKey,
    /// The half peers configure to recognise us.
    pub public: PublicKey,
}

impl KeyPair {
    /// A fresh random key pair (what `wg genkey | wg pubkey` does).
    pub fn generate() -> Self {
        Self::from_private(PrivateKey::generate())
    }

    /// Completes a stored private key with its public key.
    pub fn from_private(private: PrivateKey) -> Self {
        let public = private.public_key();
        KeyPair { private, public }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_known_vector() {
        let pair = KeyPair::generate();
        let text = pair.public.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(PublicKey::from_base64(&text).unwrap(), pair.public);
        let private = PrivateKey::from_base64(&pair.private.to_base64()).unwrap();
        assert_eq!(private.public_key(), pair.public);
        // RFC 7748 section 6.1: Alice's private key and public key.
        let alice = PrivateKey::from_bytes(
            <[u8; 32]>::try_from(
                hex_bytes("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                    .as_slice(),
            )
            .unwrap(),
        );
        assert_eq!(
            alice.public_key().as_bytes().to_vec(),
            hex_bytes("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn clear_errors() {
        assert!(matches!(
            PublicKey::from_base64("not base64!"),
            Err(KeyError::Base64(_))
        ));
        assert_eq!(
            PublicKey::from_base64("AAAA").unwrap_err(),
            KeyError::Length(3)
        );
        assert!(format!("{:?}", PrivateKey::generate()).contains("redacted"));
    }
}
