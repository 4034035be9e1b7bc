//! Identity: the gateway's own keys, credential secrets and signed access tokens.
//!
//! Everything here is pure computation over keys held in memory, so the hot path can
//! verify a token without touching the store; the exception is [`oidc`], which talks to the
//! people's identity providers, and only when someone signs in.

pub mod oidc;
pub mod secretbox;
pub mod secrets;
pub mod token;
pub mod verified;

pub use secretbox::{SecretBox, SecretBoxError};
pub use secrets::{
    hash_secret, new_auth_token, new_client_credentials, parse_auth_token, random_id, verify_secret,
};
pub use token::{Claims, SigningKeyError, TokenError, TokenSigner};
pub use verified::VerifiedTokens;

use std::io;
use std::path::Path;

/// Writes a new key file readable only by its owner; fails if the file already exists so an
/// existing key (and everything sealed or signed with it) is never silently replaced. A
/// crash leaves no key file or the whole one.
fn write_new_key_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::datadir::create_file_atomically(path, bytes, 0o600)
}

/// Reads a key file that must hold exactly 32 bytes; `Err(None)` means the length was wrong.
fn read_key_file(path: &Path) -> Result<[u8; 32], Option<io::Error>> {
    let bytes = std::fs::read(path).map_err(Some)?;
    bytes.try_into().map_err(|_| None)
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// A fresh path in the system temp dir that does not exist yet; the caller removes it.
    pub fn temp_path(label: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "postern-test-{label}-{}-{}",
            std::process::id(),
            super::random_id("t")
        ))
    }
}
