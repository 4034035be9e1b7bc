//! Adding a gateway to a shared store without copying key files by hand.
//!
//! `posternd join-token` seals what every gateway of the store must share (the keys, the CA
//! and certificate `init` made, `gateway.json`) into the store, under a key derived from a
//! fresh random token that is printed once and kept nowhere. `posternd init --join` on the
//! new machine reads the bundle with that token and writes a data directory. Someone who can
//! read the database but does not have the token learns nothing; a new token replaces the
//! bundle, so earlier tokens stop working.

use super::{create_private_dir, io, make_dir, write_file, DataDir, DataDirError, GatewayConfig};
use crate::identity::SecretBox;
use crate::store::location::StoreLocation;
use crate::store::Store;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The store setting holding the sealed bundle.
pub const BUNDLE_SETTING: &str = "join-bundle";

/// What a join token starts with, so it is recognisable in a secret scanner.
const TOKEN_PREFIX: &str = "pjt_";

/// The files a joining gateway gets, with their modes; absent ones are skipped (`ca.*` when
/// the operator brought certificate files).
const FILES: &[(&str, u32)] = &[
    ("secret.key", 0o600),
    ("signing.key", 0o600),
    ("wg.key", 0o600),
    ("ca.pem", 0o644),
    ("ca.key", 0o600),
    ("tls.pem", 0o644),
    ("tls.key", 0o600),
];

/// What the store holds, sealed.
#[derive(Serialize, Deserialize)]
struct Bundle {
    /// The source data directory, so paths inside it are moved to the new one.
    root: PathBuf,
    config: GatewayConfig,
    /// File name to base64 content.
    files: BTreeMap<String, String>,
}

/// What `init --join` made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinOutcome {
    pub domain: String,
    /// The files written into the new data directory.
    pub files: Vec<String>,
}

/// The sealing key of `token`; refuses anything that is not a join token.
fn sealer(token: &str) -> Result<SecretBox, DataDirError> {
    let raw = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
        })
        .filter(|b| b.len() == 32)
        .ok_or(DataDirError::BadJoinToken)?;
    let mut h = Sha256::new();
    h.update(b"postern join bundle v1\0");
    h.update(&raw);
    Ok(SecretBox::from_key(&h.finalize().into()))
}

/// Seals the keys of data directory `dd` into `store` under a fresh token and returns the
/// token (shown once by `posternd join-token`).
pub fn make_token(dd: &DataDir, store: &Store) -> Result<String, DataDirError> {
    let config = dd.load_config()?;
    let mut files = BTreeMap::new();
    for (name, _) in FILES {
        let path = dd.root.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert(
                    name.to_string(),
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    let bundle = Bundle {
        root: std::path::absolute(&dd.root).map_err(io(&dd.root))?,
        config,
        files,
    };
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let json = serde_json::to_vec(&bundle).expect("bundles serialize");
    store.put_setting(BUNDLE_SETTING, &sealer(&token)?.seal(&json))?;
    Ok(token)
}

/// Writes data directory `dir` for a gateway joining the store at `store_url`, from the
/// bundle sealed under `token`. Refuses, changing nothing, when `dir` is already in use,
/// the store holds no bundle, or the token does not open it.
pub fn join(dir: &Path, store_url: &str, token: &str) -> Result<JoinOutcome, DataDirError> {
    let sealer = sealer(token)?;
    let location = StoreLocation::parse(store_url, &dir.join("postern.db"))?;
    if !matches!(location, StoreLocation::Postgres(_)) {
        return Err(DataDirError::JoinNeedsSharedStore);
    }
    // This process only reads: its notices (none) need no shared key.
    let store = location.open("join", crate::store::location::throwaway_sealer())?;
    let sealed = store
        .get_setting(BUNDLE_SETTING)?
        .ok_or_else(|| DataDirError::NoJoinBundle(location.describe()))?;
    let plain = sealer
        .open(&sealed)
        .map_err(|_| DataDirError::WrongJoinToken)?;
    let bundle: Bundle = serde_json::from_slice(&plain).map_err(|e| DataDirError::BadConfig {
        path: PathBuf::from(BUNDLE_SETTING),
        message: e.to_string(),
    })?;
    let final_dir = std::path::absolute(dir).map_err(io(dir))?;
    make_dir(dir, |staging| {
        create_private_dir(staging)?;
        let mut written = Vec::new();
        for (name, mode) in FILES {
            if let Some(b64) = bundle.files.get(*name) {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| DataDirError::BadConfig {
                        path: PathBuf::from(BUNDLE_SETTING),
                        message: format!("{name}: {e}"),
                    })?;
                write_file(&staging.join(name), &bytes, *mode)?;
                written.push(name.to_string());
            }
        }
        let moved = |p: &Path| match p.strip_prefix(&bundle.root) {
            Ok(rest) => final_dir.join(rest),
            Err(_) => p.to_path_buf(),
        };
        let config = GatewayConfig {
            domain: bundle.config.domain.clone(),
            tls_cert: moved(&bundle.config.tls_cert),
            tls_key: moved(&bundle.config.tls_key),
            ca_cert: bundle.config.ca_cert.as_deref().map(moved),
            store: Some(store_url.to_string()),
        };
        let json = serde_json::to_string_pretty(&config).expect("config serializes");
        write_file(&staging.join("gateway.json"), json.as_bytes(), 0o600)?;
        written.push("gateway.json".into());
        Ok(JoinOutcome {
            domain: config.domain,
            files: written,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_before_anything_is_read() {
        assert!(matches!(sealer("hunter2"), Err(DataDirError::BadJoinToken)));
        assert!(matches!(
            sealer("pjt_AAAA"),
            Err(DataDirError::BadJoinToken)
        ));
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32])
        );
        let sealed = sealer(&token).unwrap().seal(b"keys");
        assert_eq!(sealer(&token).unwrap().open(&sealed).unwrap(), b"keys");
        let other = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([8u8; 32])
        );
        assert!(sealer(&other).unwrap().open(&sealed).is_err());
    }

    #[test]
    fn joining_needs_a_shared_store() {
        let dir = std::env::temp_dir().join(format!("postern-join-{}", std::process::id()));
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 32])
        );
        let err = join(&dir, "sqlite", &token).unwrap_err();
        assert!(matches!(err, DataDirError::JoinNeedsSharedStore), "{err}");
        assert!(!dir.exists());
    }
}
