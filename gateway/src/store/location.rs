//! Where a gateway's store lives: the data directory's SQLite file (the default) or a
//! PostgreSQL database several gateways share, chosen by `--store` / `POSTERN_STORE`, or by
//! the URL `posternd init --store` recorded in `gateway.json`.

use super::feed::NoticeSealer;
use super::{PgStore, SqliteStore, Store, StoreError};
use crate::identity::SecretBox;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key that seals change notices, derived from `secret.key` for that purpose only, so
/// all gateways of a store share it and the database never sees it.
pub fn notice_sealer(secretbox: &SecretBox) -> Arc<dyn NoticeSealer> {
    Arc::new(secretbox.derive("store change notices"))
}

/// A sealer for a process that writes no notices others must read (`init --join`, which
/// only reads): a random key.
pub fn throwaway_sealer() -> Arc<dyn NoticeSealer> {
    Arc::new(SecretBox::from_key(&rand::random::<[u8; 32]>()))
}

/// The `--store` flag of `posternd init`, `serve` and `migrate`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// Where the store lives: `sqlite` (the data directory's postern.db, the default) or a
    /// PostgreSQL URL shared by several gateways, e.g.
    /// postgres://postern:PASSWORD@db.internal/postern?sslmode=verify-full
    #[arg(long = "store", env = "POSTERN_STORE", value_name = "sqlite|URL")]
    pub store: Option<String>,
}

/// A resolved store location.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The SQLite file at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (holds the password: never print it, use
    /// [`StoreLocation::describe`]).
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreLocation {
    /// The location `value` names (`sqlite`, or a `postgres://` / `postgresql://` URL);
    /// `sqlite_path` is the data directory's database file.
    pub fn parse(value: &str, sqlite_path: &Path) -> Result<StoreLocation, StoreError> {
        let v = value.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("sqlite") {
            return Ok(StoreLocation::Sqlite(sqlite_path.to_path_buf()));
        }
        let lower = v.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(v.to_string()));
        }
        Err(StoreError::BadLocation(format!(
            "--store {:?} is neither `sqlite` nor a postgres:// URL",
            super::postgres::config::redact(v)
        )))
    }

    /// The flag's value if given, else what `gateway.json` recorded, else SQLite.
    pub fn resolve(
        flag: Option<&str>,
        recorded: Option<&str>,
        sqlite_path: &Path,
    ) -> Result<StoreLocation, StoreError> {
        StoreLocation::parse(flag.or(recorded).unwrap_or("sqlite"), sqlite_path)
    }

    /// Opens the store. `origin` identifies this process in change notices (unique per
    /// process, so a gateway skips only its own); `sealer` seals and opens them (every
    /// gateway of a store derives it from the same `secret.key`: [`notice_sealer`]).
    pub fn open(&self, origin: &str, sealer: Arc<dyn NoticeSealer>) -> Result<Store, StoreError> {
        Ok(match self {
            StoreLocation::Sqlite(path) => Store::from_backend(SqliteStore::open(path)?),
            StoreLocation::Postgres(url) => {
                Store::from_backend(PgStore::connect(url, origin, sealer)?)
            }
        })
    }

    /// Opens the store, waiting (with backoff, logging each try) for a PostgreSQL that does
    /// not answer yet: a gateway started before its database, or during an outage, comes up
    /// when the database does. Other errors return at once.
    pub async fn open_waiting(
        &self,
        origin: &str,
        sealer: Arc<dyn NoticeSealer>,
    ) -> Result<Store, StoreError> {
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            let (location, o, s) = (self.clone(), origin.to_string(), sealer.clone());
            let opened = tokio::task::spawn_blocking(move || location.open(&o, s))
                .await
                .map_err(|e| StoreError::Unavailable {
                    backend: "store",
                    reason: e.to_string(),
                })?;
            match opened {
                Err(e) if e.is_unavailable() => {
                    tracing::warn!("waiting for the store: {e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    /// For messages: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => format!("SQLite {}", path.display()),
            StoreLocation::Postgres(url) => {
                format!("PostgreSQL {}", super::postgres::config::redact(url))
            }
        }
    }

    /// What `posternd init` records in `gateway.json`: the URL of a PostgreSQL store.
    pub fn to_record(&self) -> Option<String> {
        match self {
            StoreLocation::Sqlite(_) => None,
            StoreLocation::Postgres(url) => Some(url.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_the_flag_wins_over_the_record() {
        let db = Path::new("/d/postern.db");
        assert_eq!(
            StoreLocation::resolve(None, None, db).unwrap(),
            StoreLocation::Sqlite(db.into())
        );
        assert_eq!(
            StoreLocation::resolve(Some("SQLite"), Some("postgres://h/db"), db).unwrap(),
            StoreLocation::Sqlite(db.into())
        );
        assert_eq!(
            StoreLocation::resolve(None, Some("postgresql://h/db"), db).unwrap(),
            StoreLocation::Postgres("postgresql://h/db".into())
        );
        let err = StoreLocation::parse("mysql://u:hunter2@h/db", db).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn descriptions_never_show_the_password() {
        let l = StoreLocation::Postgres("postgres://postern:hunter2@db:5432/postern".into());
        assert!(!l.describe().contains("hunter2"), "{}", l.describe());
        assert!(!format!("{l:?}").contains("hunter2"));
        assert!(l.describe().contains("db"));
    }
}
