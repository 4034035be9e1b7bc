//! What gateways sharing a store must agree on: tunnel client addresses claimed by Sessions
//! (never the same address for two agents), leases (one gateway at a time does a job) and
//! shared settings.

use super::{SqliteStore, StoreError};
use rusqlite::{params, OptionalExtension};

impl SqliteStore {
    /// See [`super::StoreBackend::claim_tunnel_address`].
    pub fn claim_tunnel_address(
        &self,
        index: u16,
        session: &str,
        gateway: &str,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO tunnel_addresses (idx, session, gateway, claimed_at)
             VALUES (?1, ?2, ?3, unixepoch())
             ON CONFLICT DO NOTHING",
            params![index, session, gateway],
        )?;
        let holder: Option<String> = conn
            .query_row(
                "SELECT session FROM tunnel_addresses WHERE idx = ?1",
                params![index],
                |r| r.get(0),
            )
            .optional()?;
        Ok(holder.as_deref() == Some(session))
    }

    /// See [`super::StoreBackend::tunnel_address_of`].
    pub fn tunnel_address_of(&self, session: &str) -> Result<Option<u16>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT idx FROM tunnel_addresses WHERE session = ?1",
                params![session],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// See [`super::StoreBackend::release_tunnel_address`].
    pub fn release_tunnel_address(&self, session: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "DELETE FROM tunnel_addresses WHERE session = ?1",
            params![session],
        )?;
        Ok(())
    }

    /// See [`super::StoreBackend::release_tunnel_addresses_of_gateway`].
    pub fn release_tunnel_addresses_of_gateway(&self, gateway: &str) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM tunnel_addresses WHERE gateway = ?1",
            params![gateway],
        )?)
    }

    /// See [`super::StoreBackend::claimed_tunnel_addresses`].
    pub fn claimed_tunnel_addresses(&self) -> Result<Vec<u16>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT idx FROM tunnel_addresses ORDER BY idx")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl SqliteStore {
    /// See [`super::StoreBackend::put_setting`].
    pub fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO settings (name, value, updated) VALUES (?1, ?2, unixepoch())
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            params![name, value],
        )?;
        Ok(())
    }

    /// See [`super::StoreBackend::get_setting`].
    pub fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT value FROM settings WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// See [`super::StoreBackend::acquire_lease`].
    pub fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        expires: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO leases (name, holder, expires) VALUES (?1, ?2, ?4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
             WHERE leases.expires <= ?3 OR leases.holder = excluded.holder",
            params![name, holder, now, expires],
        )?;
        let current: Option<String> = conn
            .query_row(
                "SELECT holder FROM leases WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        Ok(current.as_deref() == Some(holder))
    }

    /// See [`super::StoreBackend::release_lease`].
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
            params![name, holder],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_has_one_holder_until_released() {
        let s = SqliteStore::open_in_memory().unwrap();
        assert!(s.claim_tunnel_address(2, "s1", "gw-a").unwrap());
        assert!(s.claim_tunnel_address(2, "s1", "gw-a").unwrap());
        assert!(!s.claim_tunnel_address(2, "s2", "gw-b").unwrap());
        assert!(s.claim_tunnel_address(3, "s2", "gw-b").unwrap());
        // One address per Session.
        assert!(!s.claim_tunnel_address(4, "s2", "gw-b").unwrap());
        assert_eq!(s.tunnel_address_of("s2").unwrap(), Some(3));
        assert_eq!(s.claimed_tunnel_addresses().unwrap(), vec![2, 3]);
        s.release_tunnel_address("s1").unwrap();
        assert!(s.claim_tunnel_address(2, "s3", "gw-b").unwrap());
        assert_eq!(s.release_tunnel_addresses_of_gateway("gw-b").unwrap(), 2);
        assert_eq!(s.claimed_tunnel_addresses().unwrap(), Vec::<u16>::new());
    }

    #[test]
    fn a_lease_has_one_holder_until_it_expires_or_is_released() {
        let s = SqliteStore::open_in_memory().unwrap();
        assert!(s.acquire_lease("acme", "a", 100, 700).unwrap());
        assert!(!s.acquire_lease("acme", "b", 200, 800).unwrap());
        assert!(s.acquire_lease("acme", "a", 300, 900).unwrap());
        assert!(!s.acquire_lease("acme", "b", 899, 1500).unwrap());
        assert!(s.acquire_lease("acme", "b", 900, 1500).unwrap());
        s.release_lease("acme", "a").unwrap();
        assert!(!s.acquire_lease("acme", "a", 901, 1600).unwrap());
        s.release_lease("acme", "b").unwrap();
        assert!(s.acquire_lease("acme", "a", 902, 1600).unwrap());
    }
}
