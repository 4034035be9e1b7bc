//! The gateway's data directory: what `posternd init` creates and `posternd serve` reads.
//!
//! ```text
//! D/gateway.json   domain and TLS file paths
//! D/postern.db     the SQLite store
//! D/secret.key     encrypts Secrets at rest (kept apart from the database)
//! D/signing.key    signs access tokens
//! D/ca.pem, ca.key the gateway's own CA (unless --tls-cert/--tls-key were given)
//! D/tls.pem, tls.key  certificate for the domain and *.domain, signed by that CA
//! D/wg.key         the WireGuard key of the tunnel
//! ```
//! With `--store postgres://…` there is no `postern.db`; [`join`] makes the directory of a
//! further gateway of that store.
//! `init` builds everything in a temporary sibling directory and renames it into place, so
//! a failed or repeated init changes nothing.

pub mod join;

use crate::identity::{secrets, SecretBox, TokenSigner};
use crate::store::location::StoreLocation;
use crate::store::CredentialRecord;
use postern_common::resources::{
    CredentialInfo, CredentialType, GroupSpec, Metadata, Resource, UserSpec, UserType,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The group whose members may use the admin API.
pub const ADMINS_GROUP: &str = "admins";
/// The user `init` creates.
pub const ADMIN_USER: &str = "admin";

/// What `gateway.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    pub domain: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// The PostgreSQL URL `init --store` was given, so a copy of this directory joins the
    /// same database; absent for the directory's own SQLite file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// Errors of `init` and of reading a data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{0} is already initialised (it has gateway.json or postern.db); nothing was changed. Use another --data-dir, or remove it to start over")]
    AlreadyInitialised(PathBuf),
    #[error("{0} exists and is not an empty directory; nothing was changed. Use a new or empty --data-dir")]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a Postern data directory (no gateway.json); run `posternd init --data-dir {0} --domain DOMAIN` first")]
    NotInitialised(PathBuf),
    #[error("{path}: invalid gateway config: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error("--domain {0:?} is not a valid DNS name; use something like example.com")]
    BadDomain(String),
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("cannot make the WireGuard key: {0}")]
    WireGuardKey(String),
    #[error("that is not a join token (they start with pjt_); run `posternd join-token` on a gateway of the store and pass what it printed")]
    BadJoinToken,
    #[error("the join token does not open the store's join bundle (a newer `posternd join-token` replaced it, or it belongs to another store); make a new one with `posternd join-token`")]
    WrongJoinToken,
    #[error("{0} holds no join bundle; run `posternd join-token --data-dir DIR` on a gateway of this store first")]
    NoJoinBundle(String),
    #[error("--join needs --store with the PostgreSQL URL the other gateways use")]
    JoinNeedsSharedStore,
    #[error("both --tls-cert and --tls-key are needed, or neither")]
    TlsPair,
    #[error("{0} already holds a Postern install; nothing was changed. To add a gateway to it, run `posternd join-token` on one of its gateways and `posternd init --join` here, or copy a gateway's data directory (docs/operations.md, \"High availability\"); to start over, use an empty database")]
    StoreInUse(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    SecretKey(#[from] crate::identity::SecretBoxError),
    #[error(transparent)]
    SigningKey(#[from] crate::identity::SigningKeyError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("gateway.json")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("postern.db")
    }
    pub fn secret_key(&self) -> PathBuf {
        self.root.join("secret.key")
    }
    pub fn signing_key(&self) -> PathBuf {
        self.root.join("signing.key")
    }

    /// Reads `gateway.json`.
    pub fn load_config(&self) -> Result<GatewayConfig, DataDirError> {
        let path = self.config();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataDirError::NotInitialised(self.root.clone()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| DataDirError::BadConfig {
            path,
            message: e.to_string(),
        })
    }
}

/// What `init` was asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub domain: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--store`: `None` or `sqlite` for the directory's own file, else a PostgreSQL URL.
    pub store: Option<String>,
}

/// What `init` reports once: the admin token is never shown again.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitOutcome {
    pub domain: String,
    pub ca_cert: Option<PathBuf>,
    pub admin_token: String,
}

/// Is `d` a DNS name we can serve `d` and `*.d` for?
pub fn check_domain(d: &str) -> Result<(), DataDirError> {
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok && d == d.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(DataDirError::BadDomain(d.to_string()))
    }
}

/// Creates a data directory at `dir`, refusing (and changing nothing) when one is there.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<InitOutcome, DataDirError> {
    check_domain(&opts.domain)?;
    if opts.tls_cert.is_some() != opts.tls_key.is_some() {
        return Err(DataDirError::TlsPair);
    }
    make_dir(dir, |staging| build(staging, dir, opts))
}

/// Makes data directory `dir` all or nothing: `fill` writes a staging directory beside it,
/// which is renamed into place only when `fill` succeeded. Refuses (changing nothing) when
/// `dir` is already a data directory or a non-empty directory.
fn make_dir<T>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<T, DataDirError>,
) -> Result<T, DataDirError> {
    if dir.join("gateway.json").exists() || dir.join("postern.db").exists() {
        return Err(DataDirError::AlreadyInitialised(dir.to_path_buf()));
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(DataDirError::NotEmpty(dir.to_path_buf()));
        }
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = parent.join(format!(
        ".{}.init-{}",
        dir.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("postern"),
        std::process::id()
    ));
    let result = fill(&staging);
    match result {
        Ok(outcome) => {
            if dir.exists() {
                std::fs::remove_dir(dir).map_err(io(dir))?;
            }
            sync_dir(&staging).map_err(io(&staging))?;
            std::fs::rename(&staging, dir).map_err(io(dir))?;
            sync_dir(parent).map_err(io(parent))?;
            Ok(outcome)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn build(
    staging: &Path,
    final_dir: &Path,
    opts: &InitOptions,
) -> Result<InitOutcome, DataDirError> {
    create_private_dir(staging)?;
    let dd = DataDir::new(staging);
    let final_abs = absolute(final_dir)?;
    let secretbox = SecretBox::create(&dd.secret_key())?;
    TokenSigner::create(&dd.signing_key())?;
    // Made now rather than by the first `serve --wg-listen`, so every copy of the directory
    // (the other gateways sharing a store) has the one key agents know.
    crate::tunnel::keyfile::load_or_create(&staging.join(crate::tunnel::keyfile::FILE_NAME))
        .map_err(|e| DataDirError::WireGuardKey(e.to_string()))?;

    let (tls_cert, tls_key, ca_cert) = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => (absolute(c)?, absolute(k)?, None),
        _ => {
            let files = crate::frontdoor::tls::generate_ca_and_cert(&opts.domain)
                .map_err(|e| DataDirError::Certificate(e.to_string()))?;
            write_file(&staging.join("ca.pem"), files.ca_cert_pem.as_bytes(), 0o644)?;
            write_file(&staging.join("ca.key"), files.ca_key_pem.as_bytes(), 0o600)?;
            write_file(
                &staging.join("tls.pem"),
                files.cert_chain_pem.as_bytes(),
                0o644,
            )?;
            write_file(&staging.join("tls.key"), files.key_pem.as_bytes(), 0o600)?;
            (
                final_abs.join("tls.pem"),
                final_abs.join("tls.key"),
                Some(final_abs.join("ca.pem")),
            )
        }
    };
    let location = StoreLocation::resolve(opts.store.as_deref(), None, &dd.database())?;
    let config = GatewayConfig {
        domain: opts.domain.clone(),
        tls_cert,
        tls_key,
        ca_cert: ca_cert.clone(),
        store: location.to_record(),
    };
    let json = serde_json::to_string_pretty(&config).expect("config serializes");
    write_file(&dd.config(), json.as_bytes(), 0o600)?;

    let store = location.open("init", crate::store::location::notice_sealer(&secretbox))?;
    if !store.list_resources()?.is_empty() {
        return Err(DataDirError::StoreInUse(location.describe()));
    }
    let meta = |name: &str| Metadata {
        name: name.to_string(),
        ..Default::default()
    };
    store.upsert_resources(&[
        Resource::Group {
            metadata: meta(ADMINS_GROUP),
            spec: GroupSpec::default(),
        },
        Resource::User {
            metadata: meta(ADMIN_USER),
            spec: UserSpec {
                user_type: UserType::Human,
                groups: vec![ADMINS_GROUP.to_string()],
                ..Default::default()
            },
        },
    ])?;
    let (token, lookup_id, secret_hash) = secrets::new_auth_token();
    store.insert_credential(&CredentialRecord {
        info: CredentialInfo {
            name: "admin-init".into(),
            user: ADMIN_USER.into(),
            credential_type: CredentialType::AuthToken,
            client_id: None,
            created_at: crate::state::now_rfc3339(),
            expires_at: None,
        },
        lookup_id,
        secret_hash,
    })?;
    Ok(InitOutcome {
        domain: opts.domain.clone(),
        ca_cert,
        admin_token: token,
    })
}

fn absolute(p: &Path) -> Result<PathBuf, DataDirError> {
    std::path::absolute(p).map_err(io(p))
}

fn create_private_dir(p: &Path) -> Result<(), DataDirError> {
    std::fs::create_dir(p).map_err(io(p))?;
    set_mode(p, 0o700)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
}

fn write_file(p: &Path, data: &[u8], mode: u32) -> Result<(), DataDirError> {
    create_file_atomically(p, data, mode).map_err(io(p))
}

/// Creates `path` holding exactly `data` (mode `mode`), or fails with `AlreadyExists` and
/// leaves an existing file alone. A process killed at any moment leaves either no file or
/// the whole file, never a short one (a truncated key would stop the next start): the bytes
/// go to a temporary sibling, are synced, then hard-linked into place (which, unlike a
/// rename, never replaces), and the directory is synced so the new name survives power loss.
pub fn create_file_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", secrets::random_id("w")));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    sync_dir(dir)
}

/// Makes the entries of directory `dir` (a create, link or rename in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_check() {
        assert!(check_domain("example.com").is_ok());
        assert!(check_domain("postern.test").is_ok());
        assert!(check_domain("Example.com").is_err());
        assert!(check_domain("a..b").is_err());
        assert!(check_domain("-a.b").is_err());
        assert!(check_domain("a b").is_err());
    }

    #[test]
    fn atomic_create_never_replaces_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("postern-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("k.key");
        create_file_atomically(&path, b"first", 0o600).unwrap();
        let err = create_file_atomically(&path, b"second", 0o600).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k.key"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn init_twice_refuses_and_changes_nothing() {
        let tmp = std::env::temp_dir().join(format!("postern-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let opts = InitOptions {
            domain: "postern.test".into(),
            tls_cert: None,
            tls_key: None,
            store: None,
        };
        let out = init(&tmp, &opts).unwrap();
        assert!(out.admin_token.starts_with("pat_"));
        let before = std::fs::read(tmp.join("gateway.json")).unwrap();
        let err = init(&tmp, &opts).unwrap_err();
        assert!(matches!(err, DataDirError::AlreadyInitialised(_)), "{err}");
        assert_eq!(std::fs::read(tmp.join("gateway.json")).unwrap(), before);
        let cfg = DataDir::new(&tmp).load_config().unwrap();
        assert_eq!(cfg.domain, "postern.test");
        assert!(cfg.tls_cert.is_absolute());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
