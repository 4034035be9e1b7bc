//! The SQLite backend (the default): opening the file, and the declarative resources and
//! sealed Secrets. Credentials and Sessions are in `records.rs`, usage in `usage.rs`, limit
//! counters in `limits.rs` and certificates in `certs.rs`, all on [`SqliteStore`].

use super::schema::MIGRATIONS;
use super::StoreError;
use postern_common::resources::{Kind, Resource, SecretInfo};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a writer waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA synchronous` of every write unless it says otherwise. In WAL mode `FULL` syncs the
/// WAL at each commit, so a change acknowledged to its client survives power loss as well as
/// a killed process (`NORMAL` survives only the latter: it syncs at checkpoints, and a power
/// cut could undo a revocation). Measured cost: docs/operations.md, "Durability".
const SYNCHRONOUS: &str = "FULL";

/// `PRAGMA synchronous` of the writes whose loss in a power cut fails safe (see
/// [`SqliteStore::lock_relaxed`]). Still nothing is lost when only the process dies.
const SYNCHRONOUS_RELAXED: &str = "NORMAL";

/// The SQLite-backed store. One connection behind a mutex: writes are rare and short, and
/// SQLite serialises writers anyway.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating with mode 0600 if absent) the database at `path`, switches it to WAL
    /// and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        create_private_file(path)?;
        let conn = Connection::open(path)?;
        // In WAL mode SQLite gives the -wal and -shm files the database file's permissions.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        SqliteStore::init(conn)
    }

    /// A private in-memory database, for tests and dry runs.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", SYNCHRONOUS)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// The connection; a panic in another caller leaves no open transaction (rusqlite rolls
    /// back on drop), so a poisoned lock is safe to reuse.
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection for writes that may skip the per-commit sync: a new Session (lost, its
    /// token is refused and the client fetches another), usage rows, limit counters and the
    /// sweep of expired Sessions. Any later `FULL` commit syncs them too; the guard puts the
    /// connection back to `FULL` when dropped. Costs one fsync less per token grant.
    pub(super) fn lock_relaxed(&self) -> Relaxed<'_> {
        let conn = self.lock();
        let _ = conn.pragma_update(None, "synchronous", SYNCHRONOUS_RELAXED);
        Relaxed(conn)
    }

    /// Every declared resource (Service, User, Group, Policy), ordered by kind then name.
    pub fn list_resources(&self) -> Result<Vec<Resource>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT kind, name, body FROM resources ORDER BY kind, name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (kind, name, body) = row?;
            decode_resource(&kind, &name, &body)
        })
        .collect()
    }

    /// Upserts all of `resources` in one transaction (all or nothing) and returns them as
    /// stored. `created_at` of existing rows is kept; `updated_at` is set to now (RFC 3339
    /// UTC) unless the resource is unchanged apart from those server-set fields.
    pub fn upsert_resources(&self, resources: &[Resource]) -> Result<Vec<Resource>, StoreError> {
        let mut seen = HashSet::new();
        for r in resources {
            if !seen.insert((r.kind(), r.name())) {
                return Err(StoreError::DuplicateInBatch {
                    kind: r.kind(),
                    name: r.name().to_string(),
                });
            }
        }
        let now = now_rfc3339();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut stored = Vec::with_capacity(resources.len());
        {
            let mut select = tx.prepare(
                "SELECT body, created_at, updated_at FROM resources WHERE kind = ?1 AND name = ?2",
            )?;
            let mut upsert = tx.prepare(
                "INSERT INTO resources (kind, name, body, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, name) DO UPDATE
                 SET body = excluded.body, updated_at = excluded.updated_at",
            )?;
            for r in resources {
                let kind = r.kind().as_str();
                let existing: Option<(String, String, String)> = select
                    .query_row(params![kind, r.name()], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()?;
                let mut r = r.without_server_fields();
                let (created_at, updated_at) = match existing {
                    None => (now.clone(), now.clone()),
                    Some((body, created_at, updated_at)) => {
                        let unchanged = serde_json::from_str::<Resource>(&body)
                            .is_ok_and(|old| old.without_server_fields() == r);
                        (created_at, if unchanged { updated_at } else { now.clone() })
                    }
                };
                let meta = r.metadata_mut();
                meta.created_at = Some(created_at.clone());
                meta.updated_at = Some(updated_at.clone());
                let body = serde_json::to_string(&r).expect("resources always serialize");
                upsert.execute(params![kind, r.name(), body, created_at, updated_at])?;
                stored.push(r);
            }
        }
        tx.commit()?;
        Ok(stored)
    }

    /// Deletes one declared resource; `NotFound` if there is none of that kind and name.
    /// Deleting a User deletes its Credentials and Sessions in the same transaction: were
    /// they left behind by a crash, they would come back to life if a User of that name were
    /// applied again.
    pub fn delete_resource(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
            params![kind.as_str(), name],
        )?;
        expect_one(n, kind, name)?;
        if kind == Kind::User {
            tx.execute("DELETE FROM sessions WHERE user = ?1", params![name])?;
            tx.execute("DELETE FROM credentials WHERE user = ?1", params![name])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores a Secret's ciphertext (the store never sees plaintext). `AlreadyExists` if the
    /// name is taken, unless `overwrite`, which replaces the value and keeps `created_at`.
    pub fn put_secret(
        &self,
        name: &str,
        ciphertext: &[u8],
        overwrite: bool,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let conn = self.lock();
        let sql = if overwrite {
            "INSERT INTO secrets (name, ciphertext, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (name) DO UPDATE
             SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at"
        } else {
            "INSERT INTO secrets (name, ciphertext, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)"
        };
        conn.execute(sql, params![name, ciphertext, now])
            .map_err(|e| {
                if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) {
                    StoreError::AlreadyExists {
                        kind: Kind::Secret,
                        name: name.to_string(),
                    }
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    /// Every Secret with its ciphertext, ordered by name, for building the in-memory state.
    pub fn list_secrets(&self) -> Result<Vec<(SecretInfo, Vec<u8>)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, created_at, updated_at, ciphertext FROM secrets ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                SecretInfo {
                    name: r.get(0)?,
                    created_at: r.get(1)?,
                    updated_at: r.get(2)?,
                },
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a Secret; `NotFound` if absent.
    pub fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM secrets WHERE name = ?1", params![name])?;
        expect_one(n, Kind::Secret, name)
    }
}

/// The connection with `synchronous = NORMAL` until dropped (see [`SqliteStore::lock_relaxed`]).
pub(super) struct Relaxed<'a>(MutexGuard<'a, Connection>);

impl std::ops::Deref for Relaxed<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for Relaxed<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

impl Drop for Relaxed<'_> {
    fn drop(&mut self) {
        // Only fails on a closed connection, which no later write can use either.
        let _ = self.0.pragma_update(None, "synchronous", SYNCHRONOUS);
    }
}

/// Creates the database file with mode 0600 if it does not exist yet, so SQLite (and the WAL
/// files, which copy its mode) never make it readable by others.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for migration in &MIGRATIONS[found.max(0) as usize..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

fn decode_resource(kind: &str, name: &str, body: &str) -> Result<Resource, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("{kind} {name:?}"),
        reason,
    };
    let r: Resource = serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
    if r.kind().as_str() != kind || r.name() != name {
        return Err(corrupt(format!(
            "row holds {} {:?}",
            r.kind().as_str(),
            r.name()
        )));
    }
    Ok(r)
}

/// The current time as RFC 3339 UTC with second precision, the form every stored timestamp
/// set by the store takes.
pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Is `e` the SQLite constraint failure with this extended code?
pub(super) fn is_constraint(e: &rusqlite::Error, extended_code: std::os::raw::c_int) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == extended_code)
}

/// Turns "rows affected" of a single-row delete into `NotFound` when it is zero.
pub(super) fn expect_one(n: usize, kind: Kind, name: &str) -> Result<(), StoreError> {
    if n == 0 {
        Err(StoreError::NotFound {
            kind,
            name: name.to_string(),
        })
    } else {
        Ok(())
    }
}
