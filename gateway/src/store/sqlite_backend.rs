//! [`SqliteStore`] as a [`StoreBackend`]: the interface forwards to the inherent methods in
//! `sqlite.rs`, `records.rs`, `usage.rs`, `limits.rs` and `certs.rs`, plus the whole-store
//! import of `posternd migrate`.

use super::dump::Dump;
use super::usage::{UsageKey, UsageRow, UsageTotals};
use super::{CredentialRecord, SqliteStore, StoreBackend, StoreError, StoredCertificate};
use crate::limits::counters::CounterRow;
use crate::limits::window::Window;
use postern_common::resources::{Kind, Resource, SecretInfo, SessionInfo};
use rusqlite::{params, TransactionBehavior};

impl StoreBackend for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
    fn list_resources(&self) -> Result<Vec<Resource>, StoreError> {
        SqliteStore::list_resources(self)
    }
    fn upsert_resources(&self, resources: &[Resource]) -> Result<Vec<Resource>, StoreError> {
        SqliteStore::upsert_resources(self, resources)
    }
    fn delete_resource(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        SqliteStore::delete_resource(self, kind, name)
    }
    fn put_secret(&self, name: &str, ciphertext: &[u8], overwrite: bool) -> Result<(), StoreError> {
        SqliteStore::put_secret(self, name, ciphertext, overwrite)
    }
    fn list_secrets(&self) -> Result<Vec<(SecretInfo, Vec<u8>)>, StoreError> {
        SqliteStore::list_secrets(self)
    }
    fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        SqliteStore::delete_secret(self, name)
    }
    fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError> {
        SqliteStore::insert_credential(self, c)
    }
    fn list_credentials(&self) -> Result<Vec<CredentialRecord>, StoreError> {
        SqliteStore::list_credentials(self)
    }
    fn get_credential_by_lookup_id(
        &self,
        lookup_id: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        SqliteStore::get_credential_by_lookup_id(self, lookup_id)
    }
    fn delete_credential(&self, name: &str) -> Result<(), StoreError> {
        SqliteStore::delete_credential(self, name)
    }
    fn delete_credentials_of_user(&self, user: &str) -> Result<usize, StoreError> {
        SqliteStore::delete_credentials_of_user(self, user)
    }
    fn insert_session(&self, s: &SessionInfo) -> Result<(), StoreError> {
        SqliteStore::insert_session(self, s)
    }
    fn list_sessions(&self) -> Result<Vec<SessionInfo>, StoreError> {
        SqliteStore::list_sessions(self)
    }
    fn get_session(&self, name: &str) -> Result<Option<SessionInfo>, StoreError> {
        SqliteStore::get_session(self, name)
    }
    fn delete_session(&self, name: &str) -> Result<(), StoreError> {
        SqliteStore::delete_session(self, name)
    }
    fn delete_expired_sessions(&self, now_rfc3339: &str) -> Result<usize, StoreError> {
        SqliteStore::delete_expired_sessions(self, now_rfc3339)
    }
    fn delete_sessions_of_user(&self, user: &str) -> Result<usize, StoreError> {
        SqliteStore::delete_sessions_of_user(self, user)
    }
    fn delete_sessions_of_identity_provider(&self, idp: &str) -> Result<usize, StoreError> {
        SqliteStore::delete_sessions_of_identity_provider(self, idp)
    }
    fn delete_signed_in_sessions_of_user(&self, user: &str) -> Result<usize, StoreError> {
        SqliteStore::delete_signed_in_sessions_of_user(self, user)
    }
    fn delete_sessions_of_credential(&self, credential: &str) -> Result<usize, StoreError> {
        SqliteStore::delete_sessions_of_credential(self, credential)
    }
    fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        SqliteStore::insert_usage(self, rows)
    }
    fn usage_totals(&self, by: UsageKey, since: &str) -> Result<Vec<UsageTotals>, StoreError> {
        SqliteStore::usage_totals(self, by, since)
    }
    fn usage_daily(
        &self,
        user: Option<&str>,
        since: &str,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        SqliteStore::usage_daily(self, user, since)
    }
    fn list_usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        SqliteStore::list_usage(self)
    }
    fn save_limit_counters(&self, rows: &[CounterRow], now: i64) -> Result<(), StoreError> {
        SqliteStore::save_limit_counters(self, rows, now)
    }
    fn load_limit_counters(&self, now: i64) -> Result<Vec<CounterRow>, StoreError> {
        SqliteStore::load_limit_counters(self, now)
    }
    fn grant_limit(
        &self,
        key: &str,
        window: Window,
        limit: u64,
        want: u64,
    ) -> Result<u64, StoreError> {
        SqliteStore::grant_limit(self, key, window, limit, want)
    }
    fn return_limit(&self, key: &str, window_start: i64, amount: u64) -> Result<(), StoreError> {
        SqliteStore::return_limit(self, key, window_start, amount)
    }
    fn charge_limit(&self, key: &str, window: Window, amount: u64) -> Result<(), StoreError> {
        SqliteStore::charge_limit(self, key, window, amount)
    }
    fn prune_limit_grants(&self, now: i64) -> Result<usize, StoreError> {
        SqliteStore::prune_limit_grants(self, now)
    }
    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        SqliteStore::put_setting(self, name, value)
    }
    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        SqliteStore::get_setting(self, name)
    }
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        expires: i64,
    ) -> Result<bool, StoreError> {
        SqliteStore::acquire_lease(self, name, holder, now, expires)
    }
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        SqliteStore::release_lease(self, name, holder)
    }
    fn claim_tunnel_address(
        &self,
        index: u16,
        session: &str,
        gateway: &str,
    ) -> Result<bool, StoreError> {
        SqliteStore::claim_tunnel_address(self, index, session, gateway)
    }
    fn tunnel_address_of(&self, session: &str) -> Result<Option<u16>, StoreError> {
        SqliteStore::tunnel_address_of(self, session)
    }
    fn release_tunnel_address(&self, session: &str) -> Result<(), StoreError> {
        SqliteStore::release_tunnel_address(self, session)
    }
    fn release_tunnel_addresses_of_gateway(&self, gateway: &str) -> Result<usize, StoreError> {
        SqliteStore::release_tunnel_addresses_of_gateway(self, gateway)
    }
    fn claimed_tunnel_addresses(&self) -> Result<Vec<u16>, StoreError> {
        SqliteStore::claimed_tunnel_addresses(self)
    }
    fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<(), StoreError> {
        SqliteStore::put_acme_account(self, directory, sealed)
    }
    fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        SqliteStore::get_acme_account(self, directory)
    }
    fn list_acme_accounts(&self) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        SqliteStore::list_acme_accounts(self)
    }
    fn put_certificate(&self, c: &StoredCertificate) -> Result<(), StoreError> {
        SqliteStore::put_certificate(self, c)
    }
    fn list_certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        SqliteStore::list_certificates(self)
    }
    fn delete_certificate(&self, name: &str) -> Result<(), StoreError> {
        SqliteStore::delete_certificate(self, name)
    }
    fn import(&self, dump: &Dump, replace: bool) -> Result<(), StoreError> {
        self.import_dump(dump, replace)
    }
}

/// Every table `import` fills, in an order that deletes cleanly.
const TABLES: &[&str] = &[
    "tunnel_addresses",
    "limit_grants",
    "leases",
    "settings",
    "sessions",
    "credentials",
    "secrets",
    "resources",
    "usage",
    "limit_counters",
    "acme_accounts",
    "certificates",
];

impl SqliteStore {
    fn import_dump(&self, dump: &Dump, replace: bool) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut held = Vec::new();
        for table in TABLES {
            let n: i64 =
                tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
            if n > 0 {
                held.push(format!("{n} rows in {table}"));
            }
        }
        if !held.is_empty() {
            if !replace {
                return Err(StoreError::NotEmpty {
                    what: held.join(", "),
                });
            }
            for table in TABLES {
                tx.execute(&format!("DELETE FROM {table}"), [])?;
            }
        }
        for r in &dump.resources {
            let meta = r.metadata();
            let now = super::sqlite::now_rfc3339();
            let created = meta.created_at.clone().unwrap_or_else(|| now.clone());
            let updated = meta.updated_at.clone().unwrap_or(now);
            let body = serde_json::to_string(r).expect("resources always serialize");
            tx.execute(
                "INSERT INTO resources (kind, name, body, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.kind().as_str(), r.name(), body, created, updated],
            )?;
        }
        for (info, ciphertext) in &dump.secrets {
            tx.execute(
                "INSERT INTO secrets (name, ciphertext, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![info.name, ciphertext, info.created_at, info.updated_at],
            )?;
        }
        for c in &dump.credentials {
            super::records::insert_credential_row(&tx, c)?;
        }
        for s in &dump.sessions {
            super::records::insert_session_row(&tx, s)?;
        }
        for u in &dump.usage {
            let groups = serde_json::to_string(&u.groups).expect("strings serialize");
            tx.execute(
                "INSERT INTO usage (time, user, groups, service, config, model, prompt,
                                    completion, total, estimated, gateway)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    u.time,
                    u.user,
                    groups,
                    u.service,
                    u.config,
                    u.model,
                    clamp(u.prompt),
                    clamp(u.completion),
                    clamp(u.total),
                    u.estimated,
                    u.gateway
                ],
            )?;
        }
        for c in &dump.limit_counters {
            tx.execute(
                "INSERT INTO limit_counters (key, window_start, window_end, used)
                 VALUES (?1, ?2, ?3, ?4)",
                params![c.key, c.window.start, c.window.end, clamp(c.used)],
            )?;
        }
        for (directory, sealed, created) in &dump.acme_accounts {
            tx.execute(
                "INSERT INTO acme_accounts (directory, sealed, created) VALUES (?1, ?2, ?3)",
                params![directory, sealed, created],
            )?;
        }
        for c in &dump.certificates {
            let identifiers = serde_json::to_string(&c.identifiers).expect("strings serialize");
            tx.execute(
                "INSERT INTO certificates (name, identifiers, chain_pem, key_sealed, not_before,
                                           not_after, directory)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    c.name,
                    identifiers,
                    c.chain_pem,
                    c.key_sealed,
                    c.not_before,
                    c.not_after,
                    c.directory
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
