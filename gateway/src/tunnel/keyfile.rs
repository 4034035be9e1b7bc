//! The gateway's WireGuard key pair, kept in the data directory as `wg.key` (the private
//! key in base64, as `wg genkey` prints it; mode 0600), created on first use.

use postern_common::wireguard::{KeyError, KeyPair, PrivateKey};
use std::path::{Path, PathBuf};

/// The file name inside the data directory.
pub const FILE_NAME: &str = "wg.key";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a WireGuard private key: {source}")]
    Invalid { path: PathBuf, source: KeyError },
}

/// Reads `path`, or creates it with a fresh key when it does not exist.
pub fn load_or_create(path: &Path) -> Result<KeyPair, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let private =
                PrivateKey::from_base64(text.trim()).map_err(|source| KeyFileError::Invalid {
                    path: path.to_path_buf(),
                    source,
                })?;
            Ok(KeyPair::from_private(private))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pair = KeyPair::generate();
            let text = format!("{}\n", pair.private.to_base64());
            // Atomic, so a gateway killed here never finds an empty wg.key on its next start.
            match crate::datadir::create_file_atomically(path, text.as_bytes(), 0o600) {
                Ok(()) => Ok(pair),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_0600_then_reused() {
        let dir = std::env::temp_dir().join(format!("wgkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        let _ = std::fs::remove_file(&path);
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public, b.public);
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Invalid { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
