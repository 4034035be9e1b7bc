//! The durable record of the gateway: declared resources, sealed Secrets, Credentials (as
//! hashes) and Sessions, in one SQLite file.
//!
//! The API is synchronous. Callers on tokio use `spawn_blocking` (or call directly for rare
//! admin writes); the request hot path never reads the store, it reads the in-memory state.

mod certs;
mod limits;
mod records;
mod schema;
mod sqlite;
#[cfg(test)]
mod tests;
pub mod usage;

pub use certs::StoredCertificate;

use postern_common::resources::{CredentialInfo, Kind};
use std::path::PathBuf;
use std::sync::Mutex;

/// Why a store operation failed. Messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{kind} {name:?} not found; list existing ones with `posternctl get {}`", kind.plural())]
    NotFound { kind: Kind, name: String },
    /// An object with this name exists and the operation does not overwrite.
    #[error("{kind} {name:?} already exists; choose another name or delete it first")]
    AlreadyExists { kind: Kind, name: String },
    /// The same resource appears twice in one upsert batch.
    #[error("{kind} {name:?} appears more than once in the same apply; keep only one of them")]
    DuplicateInBatch { kind: Kind, name: String },
    /// A credential's lookup id (client id or token id) collides with an existing one.
    #[error("credential lookup id {lookup_id:?} is already in use; generate a new credential")]
    DuplicateLookupId { lookup_id: String },
    /// A timestamp handed to the store is not RFC 3339.
    #[error("{field} {value:?} is not an RFC 3339 timestamp (e.g. 2026-01-02T03:04:05Z); fix the caller")]
    InvalidTimestamp { field: &'static str, value: String },
    /// A row could not be decoded: the file was edited by hand or damaged.
    #[error(
        "stored {what} is corrupt ({reason}); restore the database from backup or delete that row"
    )]
    Corrupt { what: String, reason: String },
    /// The database was written by a newer `posternd`.
    #[error("database schema version {found} is newer than this posternd supports ({supported}); upgrade posternd or restore an older backup")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The database file could not be created.
    #[error("cannot create database file {path}: {source}; check that the data directory exists and is writable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite reported an error.
    #[error("database error: {0}; check disk space and file permissions of the data directory")]
    Database(#[from] rusqlite::Error),
}

/// A credential as stored: its public info plus the hash of its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRecord {
    /// What `posternctl get credentials` shows.
    pub info: CredentialInfo,
    /// The public identifier used to find the credential: the OAuth2 client id, or the id
    /// part of an auth token. Unique across all credentials.
    pub lookup_id: String,
    /// SHA-256 of the secret (see `identity::hash_secret`); the secret itself is never stored.
    pub secret_hash: [u8; 32],
}

/// The SQLite-backed store. One connection behind a mutex: writes are rare and short, and
/// SQLite serialises writers anyway.
pub struct Store {
    conn: Mutex<rusqlite::Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store(sqlite)")
    }
}
