//! The durable record of the gateway: declared resources, sealed Secrets, Credentials (as
//! hashes), Sessions, usage, limit counters and certificates.
//!
//! [`StoreBackend`] is the interface; SQLite (one file, the default) and PostgreSQL (shared by
//! several gateways) implement it. The request hot path never reads the store: it reads the
//! in-memory state, and [`feed`] tells a gateway what other gateways changed.

mod certs;
pub mod dump;
pub mod feed;
mod limits;
pub mod location;
pub mod migrate;
pub mod postgres;
mod records;
mod schema;
mod sqlite;
mod sqlite_backend;
#[cfg(test)]
mod tests;
mod tunnel;
pub mod usage;

pub use certs::StoredCertificate;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::limits::counters::CounterRow;
use crate::limits::window::Window;
use postern_common::resources::{CredentialInfo, Kind, Resource, SecretInfo, SessionInfo};
use std::path::PathBuf;

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
    /// The database cannot be reached (connection refused or lost, timed out). Reads of the
    /// in-memory state go on; changes are refused until it is back.
    #[error("the store ({backend}) is unreachable: {reason}; changes are refused until it answers again (check the database server and the network to it)")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    /// PostgreSQL refused a statement.
    #[error("PostgreSQL error: {0}; check the server log and the role's privileges")]
    Postgres(String),
    /// `--store` names no store this posternd can open.
    #[error(
        "{0}; use `sqlite` or postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=verify-full"
    )]
    BadLocation(String),
    /// `import` into a store that already holds data, without `replace`.
    #[error("the target store is not empty ({what}); pass --force to replace what it holds, or point at an empty database")]
    NotEmpty { what: String },
}

impl StoreError {
    /// The database could not be reached: the caller should answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
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

/// The store interface: everything the gateway keeps durably, whichever database holds it.
///
/// Two backends implement it: [`SqliteStore`] (the default, one file in the data directory)
/// and `PgStore` (PostgreSQL, shared by several gateways). The API is synchronous: callers on
/// tokio use `spawn_blocking`, or call directly for rare admin writes. The request hot path
/// never calls it; it reads the in-memory state, which [`StoreBackend::subscribe`] keeps in
/// step with writes made by other gateways.
pub trait StoreBackend: Send + Sync {
    /// `sqlite` or `postgres`, for logs, `/healthz` and errors.
    fn backend_name(&self) -> &'static str;

    /// Whether other gateways may write the same store (so changes arrive through
    /// [`StoreBackend::subscribe`] and limits must be shared).
    fn is_shared(&self) -> bool {
        false
    }

    /// Checks that the database answers (for `/healthz`); `Unavailable` when it does not.
    fn ping(&self) -> Result<(), StoreError>;

    /// The changes other gateways write, as they commit; `None` for a store no one else
    /// writes. Called once, at startup, from within the tokio runtime.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<feed::FeedEvent>> {
        None
    }

    // Declared resources and Secrets.

    /// Every declared resource (Service, User, Group, Policy, ...), ordered by kind then name.
    fn list_resources(&self) -> Result<Vec<Resource>, StoreError>;
    /// Upserts all of `resources` in one transaction (all or nothing) and returns them as
    /// stored. `created_at` of existing rows is kept; `updated_at` is set to now (RFC 3339
    /// UTC) unless the resource is unchanged apart from those server-set fields.
    fn upsert_resources(&self, resources: &[Resource]) -> Result<Vec<Resource>, StoreError>;
    /// Deletes one declared resource; `NotFound` if absent. Deleting a User deletes its
    /// Credentials and Sessions in the same transaction.
    fn delete_resource(&self, kind: Kind, name: &str) -> Result<(), StoreError>;
    /// Stores a Secret's ciphertext. `AlreadyExists` if the name is taken, unless
    /// `overwrite`, which replaces the value and keeps `created_at`.
    fn put_secret(&self, name: &str, ciphertext: &[u8], overwrite: bool) -> Result<(), StoreError>;
    /// Every Secret with its ciphertext, ordered by name.
    fn list_secrets(&self) -> Result<Vec<(SecretInfo, Vec<u8>)>, StoreError>;
    /// Deletes a Secret; `NotFound` if absent.
    fn delete_secret(&self, name: &str) -> Result<(), StoreError>;

    // Credentials and Sessions.

    /// Stores a new credential. `AlreadyExists` if the name is taken; `DuplicateLookupId` if
    /// its lookup id is.
    fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError>;
    /// Every credential, ordered by name.
    fn list_credentials(&self) -> Result<Vec<CredentialRecord>, StoreError>;
    /// The credential with this lookup id (client id or auth-token id).
    fn get_credential_by_lookup_id(
        &self,
        lookup_id: &str,
    ) -> Result<Option<CredentialRecord>, StoreError>;
    /// Deletes a credential and the Sessions it made, in one transaction; `NotFound` if absent.
    fn delete_credential(&self, name: &str) -> Result<(), StoreError>;
    /// Deletes every credential of `user`; returns how many.
    fn delete_credentials_of_user(&self, user: &str) -> Result<usize, StoreError>;
    /// Stores a new Session; `AlreadyExists` if the name is taken.
    fn insert_session(&self, s: &SessionInfo) -> Result<(), StoreError>;
    /// Every Session, ordered by name.
    fn list_sessions(&self) -> Result<Vec<SessionInfo>, StoreError>;
    /// One Session by name, for a gateway that has not heard of it yet.
    fn get_session(&self, name: &str) -> Result<Option<SessionInfo>, StoreError>;
    /// Deletes one Session; `NotFound` if absent.
    fn delete_session(&self, name: &str) -> Result<(), StoreError>;
    /// Deletes Sessions that expired at or before `now_rfc3339`; returns how many.
    fn delete_expired_sessions(&self, now_rfc3339: &str) -> Result<usize, StoreError>;
    /// Deletes every Session of `user`; returns how many.
    fn delete_sessions_of_user(&self, user: &str) -> Result<usize, StoreError>;
    /// Deletes every Session signed in through IdentityProvider `idp`; returns how many.
    fn delete_sessions_of_identity_provider(&self, idp: &str) -> Result<usize, StoreError>;
    /// Deletes the Sessions of `user` signed in through any IdentityProvider.
    fn delete_signed_in_sessions_of_user(&self, user: &str) -> Result<usize, StoreError>;
    /// Deletes every Session made with `credential`; returns how many.
    fn delete_sessions_of_credential(&self, credential: &str) -> Result<usize, StoreError>;

    // Usage and limit counters.

    /// Inserts usage rows in one transaction.
    fn insert_usage(&self, rows: &[usage::UsageRow]) -> Result<(), StoreError>;
    /// Totals per `by` over the rows at or after `since`, largest total first.
    fn usage_totals(
        &self,
        by: usage::UsageKey,
        since: &str,
    ) -> Result<Vec<usage::UsageTotals>, StoreError>;
    /// Total tokens per (UTC day, model) at or after `since`, of one `user` or everyone.
    fn usage_daily(
        &self,
        user: Option<&str>,
        since: &str,
    ) -> Result<Vec<(String, String, u64)>, StoreError>;
    /// Every usage row, oldest first (for `posternd migrate`).
    fn list_usage(&self) -> Result<Vec<usage::UsageRow>, StoreError>;
    /// Upserts limit counters and prunes those whose window ended at or before `now`.
    fn save_limit_counters(&self, rows: &[CounterRow], now: i64) -> Result<(), StoreError>;
    /// Limit counters whose window is still open at `now`.
    fn load_limit_counters(&self, now: i64) -> Result<Vec<CounterRow>, StoreError>;

    // Limits shared by gateways (see `limits::shared`): each gateway spends a counter from
    // grants of the window's allowance taken here, so their sum never passes the limit.

    /// Takes up to `want` units of `key`'s allowance in `window` (whose limit is `limit`)
    /// and returns how many were granted: `min(want, limit - granted so far)`. A row of an
    /// older window starts over at 0; a request for a window older than the row's gets 0.
    fn grant_limit(
        &self,
        key: &str,
        window: Window,
        limit: u64,
        want: u64,
    ) -> Result<u64, StoreError>;
    /// Gives back `amount` unspent units granted in the window starting at `window_start`.
    fn return_limit(&self, key: &str, window_start: i64, amount: u64) -> Result<(), StoreError>;
    /// Adds `amount` to what `window` has granted, without a check: use beyond the grants
    /// (tokens above a reservation; admissions while the store was unreachable).
    fn charge_limit(&self, key: &str, window: Window, amount: u64) -> Result<(), StoreError>;
    /// Deletes the grants of windows that ended at or before `now`.
    fn prune_limit_grants(&self, now: i64) -> Result<usize, StoreError>;

    // Named values the gateways share (the sealed join bundle of `posternd join-token`).

    /// Stores (or replaces) setting `name`.
    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Setting `name`, if stored.
    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    // Leases: one gateway at a time does a job (ordering certificates).

    /// Takes (or extends) lease `name` for `holder` until `expires` (Unix seconds) when it
    /// is free, expired at `now`, or already `holder`'s; returns whether `holder` holds it.
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        expires: i64,
    ) -> Result<bool, StoreError>;
    /// Gives lease `name` up if `holder` holds it.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    // Tunnel client addresses, unique across the gateways sharing the store.

    /// Claims client address `index` for `session` on `gateway`: `true` when the session
    /// now holds it (or already did), `false` when another Session holds it.
    fn claim_tunnel_address(
        &self,
        index: u16,
        session: &str,
        gateway: &str,
    ) -> Result<bool, StoreError>;
    /// The client address index `session` holds, if any.
    fn tunnel_address_of(&self, session: &str) -> Result<Option<u16>, StoreError>;
    /// Gives back the address `session` holds (none is fine).
    fn release_tunnel_address(&self, session: &str) -> Result<(), StoreError>;
    /// Gives back every address `gateway` holds (at its start: it holds no peers yet).
    fn release_tunnel_addresses_of_gateway(&self, gateway: &str) -> Result<usize, StoreError>;
    /// Every claimed index, ascending.
    fn claimed_tunnel_addresses(&self) -> Result<Vec<u16>, StoreError>;

    // Certificates.

    /// Saves (or replaces) the sealed credentials of the ACME account at `directory`.
    fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<(), StoreError>;
    /// The sealed credentials of the ACME account at `directory`.
    fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every ACME account: directory, sealed credentials, creation (Unix seconds).
    fn list_acme_accounts(&self) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError>;
    /// Saves (or replaces by name) a certificate ACME issued.
    fn put_certificate(&self, c: &StoredCertificate) -> Result<(), StoreError>;
    /// Every stored certificate.
    fn list_certificates(&self) -> Result<Vec<StoredCertificate>, StoreError>;
    /// Deletes a stored certificate (absent is fine).
    fn delete_certificate(&self, name: &str) -> Result<(), StoreError>;

    // Moving an install.

    /// Writes every row of `dump` into this store in one transaction, keeping timestamps.
    /// Refuses (`NotEmpty`) unless the store holds nothing or `replace` is set, in which
    /// case everything it held is deleted first.
    fn import(&self, dump: &dump::Dump, replace: bool) -> Result<(), StoreError>;
}

/// The gateway's store: one backend behind the [`StoreBackend`] interface.
pub struct Store {
    backend: Box<dyn StoreBackend>,
}

impl Store {
    /// Opens (creating with mode 0600 if absent) the SQLite database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        Ok(Store::from_backend(SqliteStore::open(path)?))
    }

    /// A private in-memory SQLite database, for tests and dry runs.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Ok(Store::from_backend(SqliteStore::open_in_memory()?))
    }

    /// Wraps any backend.
    pub fn from_backend(backend: impl StoreBackend + 'static) -> Store {
        Store {
            backend: Box::new(backend),
        }
    }

    /// Every row of the store, for `posternd migrate` and its count check.
    pub fn export(&self) -> Result<dump::Dump, StoreError> {
        dump::Dump::read(self.backend.as_ref())
    }
}

impl std::ops::Deref for Store {
    type Target = dyn StoreBackend;
    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend.backend_name())
    }
}
