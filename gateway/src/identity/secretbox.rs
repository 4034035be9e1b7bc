//! Encryption of Secrets at rest with a key kept in its own file, apart from the database,
//! so a copy of the database alone reveals no secret value.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use std::path::{Path, PathBuf};

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a key file could not be used or a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretBoxError {
    /// `create` found a key already there; refusing protects the secrets sealed with it.
    #[error("secret key file {path} already exists; refusing to overwrite it (remove it only if no stored secret needs it)")]
    AlreadyExists { path: PathBuf },
    /// The key file could not be read or written.
    #[error("cannot access secret key file {path}: {source}; re-run `posternd init` or restore the key file from backup")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold a 32-byte key.
    #[error("secret key file {path} is not a 32-byte key; restore the key file from backup or re-run `posternd init`")]
    BadKeyFile { path: PathBuf },
    /// The data is shorter than a nonce and tag, so it was never produced by `seal`.
    #[error("sealed secret is truncated; re-create the secret")]
    Truncated,
    /// Authentication failed: the data was altered or sealed with a different key.
    #[error("sealed secret failed authentication (tampered, or sealed with another key); check that the secret key file matches this database")]
    Decrypt,
}

/// XChaCha20-Poly1305 with a 32-byte key: seals Secret values before they reach the store.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    /// SHA-256 of the key, the root of [`SecretBox::derive`]d keys (the key itself is only
    /// in the cipher).
    derive_root: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Generates a fresh random key, writes it to `path` with mode 0600 and returns the box;
    /// fails if the file exists, so an existing key is never replaced.
    pub fn create(path: &Path) -> Result<SecretBox, SecretBoxError> {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        super::write_new_key_file(path, &key).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                SecretBoxError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                SecretBoxError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(SecretBox::from_key(&key))
    }

    /// Reads the key written by [`SecretBox::create`].
    pub fn load(path: &Path) -> Result<SecretBox, SecretBoxError> {
        let key = super::read_key_file(path).map_err(|e| match e {
            Some(source) => SecretBoxError::Io {
                path: path.to_path_buf(),
                source,
            },
            None => SecretBoxError::BadKeyFile {
                path: path.to_path_buf(),
            },
        })?;
        Ok(SecretBox::from_key(&key))
    }

    /// Builds a box from raw key bytes, for callers that manage the key themselves (and tests).
    pub fn from_key(key: &[u8; 32]) -> SecretBox {
        use sha2::Digest;
        SecretBox {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
            derive_root: sha2::Sha256::new()
                .chain_update(b"postern secretbox derive root v1\0")
                .chain_update(key)
                .finalize()
                .into(),
        }
    }

    /// A box with a key of its own for `purpose` (e.g. sign-in cookies), so data sealed for
    /// one use never opens as another; the same key and purpose always give the same box.
    pub fn derive(&self, purpose: &str) -> SecretBox {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::new()
            .chain_update(self.derive_root)
            .chain_update((purpose.len() as u64).to_be_bytes())
            .chain_update(purpose.as_bytes())
            .finalize()
            .into();
        SecretBox::from_key(&key)
    }

    /// Encrypts `plaintext` under a fresh random nonce; the output is `nonce || ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts what [`SecretBox::seal`] produced, failing if it was altered or sealed with
    /// another key.
    pub fn open(&self, data: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretBoxError::Truncated);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretBoxError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_boxes_are_separate_and_stable() {
        let root = SecretBox::from_key(&[7u8; 32]);
        let a = root.derive("signin");
        let sealed = a.seal(b"flow");
        assert_eq!(root.derive("signin").open(&sealed).unwrap(), b"flow");
        assert!(root.open(&sealed).is_err());
        assert!(root.derive("signin2").open(&sealed).is_err());
        assert!(SecretBox::from_key(&[8u8; 32])
            .derive("signin")
            .open(&sealed)
            .is_err());
    }
    use crate::identity::test_util::temp_path;

    #[test]
    fn round_trip() {
        let b = SecretBox::from_key(&[7u8; 32]);
        let sealed = b.seal(b"hunter2");
        assert_ne!(&sealed[NONCE_LEN..], b"hunter2");
        assert_eq!(b.open(&sealed).unwrap(), b"hunter2");
        // Fresh nonce each time.
        assert_ne!(b.seal(b"hunter2"), sealed);
        assert_eq!(b.open(&b.seal(b"")).unwrap(), b"");
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let b = SecretBox::from_key(&[7u8; 32]);
        let mut sealed = b.seal(b"hunter2");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(b.open(&sealed), Err(SecretBoxError::Decrypt)));
        let mut sealed = b.seal(b"hunter2");
        sealed[0] ^= 1;
        assert!(matches!(b.open(&sealed), Err(SecretBoxError::Decrypt)));
        assert!(matches!(b.open(&[0u8; 10]), Err(SecretBoxError::Truncated)));
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = SecretBox::from_key(&[7u8; 32]).seal(b"hunter2");
        let other = SecretBox::from_key(&[8u8; 32]);
        assert!(matches!(other.open(&sealed), Err(SecretBoxError::Decrypt)));
    }

    #[test]
    fn create_then_load_and_refuse_overwrite() {
        let path = temp_path("secretbox");
        let created = SecretBox::create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = SecretBox::load(&path).unwrap();
        assert_eq!(loaded.open(&created.seal(b"x")).unwrap(), b"x");
        assert!(matches!(
            SecretBox::create(&path),
            Err(SecretBoxError::AlreadyExists { .. })
        ));
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SecretBox::load(&path),
            Err(SecretBoxError::BadKeyFile { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        let err = SecretBox::load(&path).unwrap_err().to_string();
        assert!(err.contains("posternd init"), "{err}");
    }
}
