//! [`PgStore`] as a [`StoreBackend`]: each method clones its arguments into a future that
//! runs on the store runtime (see `mod.rs`) and waits for it.

use super::super::dump::Dump;
use super::super::feed::{FeedEvent, Topic};
use super::super::usage::{UsageKey, UsageRow, UsageTotals};
use super::super::{CredentialRecord, StoreBackend, StoreError, StoredCertificate};
use super::{certs, import, leases, limits, listen, records, resources, tunnel, usage, PgStore};
use crate::limits::counters::CounterRow;
use crate::limits::window::Window;
use postern_common::resources::{Kind, Resource, SecretInfo, SessionInfo};

impl StoreBackend for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.run(|db| async move {
            db.client().await?.simple_query("SELECT 1").await?;
            Ok(())
        })
    }
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<FeedEvent>> {
        Some(listen::spawn(
            self.bridge.handle(),
            self.settings.clone(),
            self.tls.clone(),
            self.db.origin.clone(),
            self.db.sealer.clone(),
        ))
    }
    fn list_resources(&self) -> Result<Vec<Resource>, StoreError> {
        self.run(resources::list)
    }
    fn upsert_resources(&self, rs: &[Resource]) -> Result<Vec<Resource>, StoreError> {
        let rs = rs.to_vec();
        self.run(|db| resources::upsert(db, rs))
    }
    fn delete_resource(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.run(|db| resources::delete(db, kind, name))
    }
    fn put_secret(&self, name: &str, ciphertext: &[u8], overwrite: bool) -> Result<(), StoreError> {
        let (name, ciphertext) = (name.to_string(), ciphertext.to_vec());
        self.run(|db| resources::put_secret(db, name, ciphertext, overwrite))
    }
    fn list_secrets(&self) -> Result<Vec<(SecretInfo, Vec<u8>)>, StoreError> {
        self.run(resources::list_secrets)
    }
    fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.run(|db| resources::delete_secret(db, name))
    }
    fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError> {
        let c = c.clone();
        self.run(|db| records::insert_credential(db, c))
    }
    fn list_credentials(&self) -> Result<Vec<CredentialRecord>, StoreError> {
        self.run(records::list_credentials)
    }
    fn get_credential_by_lookup_id(
        &self,
        lookup_id: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let lookup_id = lookup_id.to_string();
        self.run(|db| records::credential_by_lookup_id(db, lookup_id))
    }
    fn delete_credential(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.run(|db| records::delete_credential(db, name))
    }
    fn delete_credentials_of_user(&self, user: &str) -> Result<usize, StoreError> {
        let user = user.to_string();
        self.run(|db| {
            records::delete_where(
                db,
                "DELETE FROM credentials WHERE user_name = $1",
                user,
                Topic::Credentials,
            )
        })
    }
    fn insert_session(&self, s: &SessionInfo) -> Result<(), StoreError> {
        let s = s.clone();
        self.run(|db| records::insert_session(db, s))
    }
    fn list_sessions(&self) -> Result<Vec<SessionInfo>, StoreError> {
        self.run(records::list_sessions)
    }
    fn get_session(&self, name: &str) -> Result<Option<SessionInfo>, StoreError> {
        let name = name.to_string();
        self.run(|db| records::get_session(db, name))
    }
    fn delete_session(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.run(|db| records::delete_session(db, name))
    }
    fn delete_expired_sessions(&self, now_rfc3339: &str) -> Result<usize, StoreError> {
        let now = now_rfc3339.to_string();
        self.run(|db| records::delete_expired_sessions(db, now))
    }
    fn delete_sessions_of_user(&self, user: &str) -> Result<usize, StoreError> {
        let user = user.to_string();
        self.run(|db| {
            records::delete_where(
                db,
                "DELETE FROM sessions WHERE user_name = $1",
                user,
                Topic::Sessions,
            )
        })
    }
    fn delete_sessions_of_identity_provider(&self, idp: &str) -> Result<usize, StoreError> {
        let idp = idp.to_string();
        self.run(|db| {
            records::delete_where(
                db,
                "DELETE FROM sessions WHERE identity_provider = $1",
                idp,
                Topic::Sessions,
            )
        })
    }
    fn delete_signed_in_sessions_of_user(&self, user: &str) -> Result<usize, StoreError> {
        let user = user.to_string();
        self.run(|db| {
            records::delete_where(
                db,
                "DELETE FROM sessions WHERE user_name = $1 AND identity_provider IS NOT NULL",
                user,
                Topic::Sessions,
            )
        })
    }
    fn delete_sessions_of_credential(&self, credential: &str) -> Result<usize, StoreError> {
        let credential = credential.to_string();
        self.run(|db| {
            records::delete_where(
                db,
                "DELETE FROM sessions WHERE credential = $1",
                credential,
                Topic::Sessions,
            )
        })
    }
    fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.run(|db| usage::insert(db, rows))
    }
    fn usage_totals(&self, by: UsageKey, since: &str) -> Result<Vec<UsageTotals>, StoreError> {
        let since = since.to_string();
        self.run(|db| usage::totals(db, by, since))
    }
    fn usage_daily(
        &self,
        user: Option<&str>,
        since: &str,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let (user, since) = (user.map(str::to_string), since.to_string());
        self.run(|db| usage::daily(db, user, since))
    }
    fn list_usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        self.run(usage::list)
    }
    fn save_limit_counters(&self, rows: &[CounterRow], now: i64) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.run(|db| limits::save_counters(db, rows, now))
    }
    fn load_limit_counters(&self, now: i64) -> Result<Vec<CounterRow>, StoreError> {
        self.run(|db| limits::load_counters(db, now))
    }
    fn grant_limit(
        &self,
        key: &str,
        window: Window,
        limit: u64,
        want: u64,
    ) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.run(|db| limits::grant(db, key, window, limit, want))
    }
    fn return_limit(&self, key: &str, window_start: i64, amount: u64) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run(|db| limits::give_back(db, key, window_start, amount))
    }
    fn charge_limit(&self, key: &str, window: Window, amount: u64) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run(|db| limits::charge(db, key, window, amount))
    }
    fn prune_limit_grants(&self, now: i64) -> Result<usize, StoreError> {
        self.run(|db| limits::prune_grants(db, now))
    }
    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let (name, value) = (name.to_string(), value.to_vec());
        self.run(|db| leases::put_setting(db, name, value))
    }
    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_string();
        self.run(|db| leases::get_setting(db, name))
    }
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        expires: i64,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.run(|db| leases::acquire(db, name, holder, now, expires))
    }
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.run(|db| leases::release(db, name, holder))
    }
    fn claim_tunnel_address(
        &self,
        index: u16,
        session: &str,
        gateway: &str,
    ) -> Result<bool, StoreError> {
        let (session, gateway) = (session.to_string(), gateway.to_string());
        self.run(|db| tunnel::claim(db, index, session, gateway))
    }
    fn tunnel_address_of(&self, session: &str) -> Result<Option<u16>, StoreError> {
        let session = session.to_string();
        self.run(|db| tunnel::address_of(db, session))
    }
    fn release_tunnel_address(&self, session: &str) -> Result<(), StoreError> {
        let session = session.to_string();
        self.run(|db| async move {
            tunnel::release(
                db,
                "DELETE FROM tunnel_addresses WHERE session = $1",
                session,
            )
            .await
            .map(drop)
        })
    }
    fn release_tunnel_addresses_of_gateway(&self, gateway: &str) -> Result<usize, StoreError> {
        let gateway = gateway.to_string();
        self.run(|db| {
            tunnel::release(
                db,
                "DELETE FROM tunnel_addresses WHERE gateway = $1",
                gateway,
            )
        })
    }
    fn claimed_tunnel_addresses(&self) -> Result<Vec<u16>, StoreError> {
        self.run(tunnel::claimed)
    }
    fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let (directory, sealed) = (directory.to_string(), sealed.to_vec());
        self.run(|db| certs::put_account(db, directory, sealed))
    }
    fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let directory = directory.to_string();
        self.run(|db| certs::get_account(db, directory))
    }
    fn list_acme_accounts(&self) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        self.run(certs::list_accounts)
    }
    fn put_certificate(&self, c: &StoredCertificate) -> Result<(), StoreError> {
        let c = c.clone();
        self.run(|db| certs::put_certificate(db, c))
    }
    fn list_certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        self.run(certs::list_certificates)
    }
    fn delete_certificate(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.run(|db| certs::delete_certificate(db, name))
    }
    fn import(&self, dump: &Dump, replace: bool) -> Result<(), StoreError> {
        let dump = dump.clone();
        // One transaction however large: the usual ceiling, plus a second per 20,000 rows
        // (batched inserts write well over that on a slow disk).
        let rows = dump.usage.len() + dump.resources.len() + dump.sessions.len();
        let ceiling = super::CEILING + std::time::Duration::from_secs(rows as u64 / 20_000);
        self.run_within(ceiling, |db| import::import(db, dump, replace))
    }
}
