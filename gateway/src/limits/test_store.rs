//! A SQLite store that says it is shared by gateways and can be switched off, so two
//! `Limiter`s on one database file behave as two gateways on one PostgreSQL, and an outage
//! can be staged without a server.

use crate::limits::counters::CounterRow;
use crate::limits::window::Window;
use crate::store::dump::Dump;
use crate::store::usage::{UsageKey, UsageRow, UsageTotals};
use crate::store::{CredentialRecord, SqliteStore, StoreBackend, StoreError, StoredCertificate};
use postern_common::resources::{Kind, Resource, SecretInfo, SessionInfo};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// One gateway's connection to the shared database file.
pub struct SharedSqlite {
    inner: SqliteStore,
    /// While set, every call fails with `Unavailable`, as when PostgreSQL is down.
    pub down: Arc<AtomicBool>,
    /// Grant round trips made, to show which admissions waited for the store.
    pub grants: Arc<AtomicUsize>,
    /// Milliseconds each grant takes, as over a slow network.
    pub grant_delay_ms: Arc<AtomicU64>,
}

impl SharedSqlite {
    pub fn open(path: &std::path::Path) -> SharedSqlite {
        SharedSqlite {
            inner: SqliteStore::open(path).unwrap(),
            down: Arc::default(),
            grants: Arc::default(),
            grant_delay_ms: Arc::default(),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                backend: "postgres",
                reason: "connection refused (test)".into(),
            });
        }
        Ok(())
    }
}

macro_rules! forward {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.check()?;
                StoreBackend::$name(&self.inner $(, $arg)*)
            }
        )*
    };
}

impl StoreBackend for SharedSqlite {
    fn backend_name(&self) -> &'static str {
        "shared-sqlite-test"
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn grant_limit(
        &self,
        key: &str,
        window: Window,
        limit: u64,
        want: u64,
    ) -> Result<u64, StoreError> {
        self.grants.fetch_add(1, Ordering::SeqCst);
        let delay = self.grant_delay_ms.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        self.check()?;
        StoreBackend::grant_limit(&self.inner, key, window, limit, want)
    }
    forward! {
        fn ping(&self) -> Result<(), StoreError>;
        fn list_resources(&self) -> Result<Vec<Resource>, StoreError>;
        fn upsert_resources(&self, resources: &[Resource]) -> Result<Vec<Resource>, StoreError>;
        fn delete_resource(&self, kind: Kind, name: &str) -> Result<(), StoreError>;
        fn put_secret(&self, name: &str, ciphertext: &[u8], overwrite: bool) -> Result<(), StoreError>;
        fn list_secrets(&self) -> Result<Vec<(SecretInfo, Vec<u8>)>, StoreError>;
        fn delete_secret(&self, name: &str) -> Result<(), StoreError>;
        fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError>;
        fn list_credentials(&self) -> Result<Vec<CredentialRecord>, StoreError>;
        fn get_credential_by_lookup_id(&self, lookup_id: &str) -> Result<Option<CredentialRecord>, StoreError>;
        fn delete_credential(&self, name: &str) -> Result<(), StoreError>;
        fn delete_credentials_of_user(&self, user: &str) -> Result<usize, StoreError>;
        fn insert_session(&self, s: &SessionInfo) -> Result<(), StoreError>;
        fn list_sessions(&self) -> Result<Vec<SessionInfo>, StoreError>;
        fn get_session(&self, name: &str) -> Result<Option<SessionInfo>, StoreError>;
        fn delete_session(&self, name: &str) -> Result<(), StoreError>;
        fn delete_expired_sessions(&self, now_rfc3339: &str) -> Result<usize, StoreError>;
        fn delete_sessions_of_user(&self, user: &str) -> Result<usize, StoreError>;
        fn delete_sessions_of_identity_provider(&self, idp: &str) -> Result<usize, StoreError>;
        fn delete_signed_in_sessions_of_user(&self, user: &str) -> Result<usize, StoreError>;
        fn delete_sessions_of_credential(&self, credential: &str) -> Result<usize, StoreError>;
        fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError>;
        fn usage_totals(&self, by: UsageKey, since: &str) -> Result<Vec<UsageTotals>, StoreError>;
        fn usage_daily(&self, user: Option<&str>, since: &str) -> Result<Vec<(String, String, u64)>, StoreError>;
        fn list_usage(&self) -> Result<Vec<UsageRow>, StoreError>;
        fn save_limit_counters(&self, rows: &[CounterRow], now: i64) -> Result<(), StoreError>;
        fn load_limit_counters(&self, now: i64) -> Result<Vec<CounterRow>, StoreError>;
        fn return_limit(&self, key: &str, window_start: i64, amount: u64) -> Result<(), StoreError>;
        fn charge_limit(&self, key: &str, window: Window, amount: u64) -> Result<(), StoreError>;
        fn prune_limit_grants(&self, now: i64) -> Result<usize, StoreError>;
        fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
        fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
        fn acquire_lease(&self, name: &str, holder: &str, now: i64, expires: i64) -> Result<bool, StoreError>;
        fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
        fn claim_tunnel_address(&self, index: u16, session: &str, gateway: &str) -> Result<bool, StoreError>;
        fn tunnel_address_of(&self, session: &str) -> Result<Option<u16>, StoreError>;
        fn release_tunnel_address(&self, session: &str) -> Result<(), StoreError>;
        fn release_tunnel_addresses_of_gateway(&self, gateway: &str) -> Result<usize, StoreError>;
        fn claimed_tunnel_addresses(&self) -> Result<Vec<u16>, StoreError>;
        fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<(), StoreError>;
        fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError>;
        fn list_acme_accounts(&self) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError>;
        fn put_certificate(&self, c: &StoredCertificate) -> Result<(), StoreError>;
        fn list_certificates(&self) -> Result<Vec<StoredCertificate>, StoreError>;
        fn delete_certificate(&self, name: &str) -> Result<(), StoreError>;
        fn import(&self, dump: &Dump, replace: bool) -> Result<(), StoreError>;
    }
}
