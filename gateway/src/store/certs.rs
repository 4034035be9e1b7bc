//! ACME accounts and the certificates ACME issued. The store holds the sealed bytes only; the
//! Gateway seals and opens them (`state::certs`), so this file never sees a private key.

use super::{SqliteStore, StoreError};
use rusqlite::{params, OptionalExtension};

/// A certificate ACME issued, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    /// The first name of the order: the key it is stored, replaced and dropped by.
    pub name: String,
    /// Every name the certificate covers, in order (`name` first).
    pub identifiers: Vec<String>,
    /// The full chain, PEM, leaf first.
    pub chain_pem: String,
    /// The private key (PEM), sealed.
    pub key_sealed: Vec<u8>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The ACME directory URL that issued it.
    pub directory: String,
}

impl SqliteStore {
    /// Saves (or replaces) the sealed credentials of the account at `directory`.
    pub fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO acme_accounts (directory, sealed, created) VALUES (?1, ?2, unixepoch())
             ON CONFLICT (directory) DO UPDATE SET sealed = excluded.sealed",
            params![directory, sealed],
        )?;
        Ok(())
    }

    /// The sealed credentials of the account at `directory`, if one was made.
    pub fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT sealed FROM acme_accounts WHERE directory = ?1",
                params![directory],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every ACME account: directory, sealed credentials, creation (Unix seconds).
    pub fn list_acme_accounts(&self) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT directory, sealed, created FROM acme_accounts ORDER BY directory")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Saves (or replaces, by name) an issued certificate.
    pub fn put_certificate(&self, c: &StoredCertificate) -> Result<(), StoreError> {
        let identifiers = serde_json::to_string(&c.identifiers).expect("strings serialize");
        self.lock().execute(
            "INSERT INTO certificates
                (name, identifiers, chain_pem, key_sealed, not_before, not_after, directory)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (name) DO UPDATE SET identifiers = excluded.identifiers,
                chain_pem = excluded.chain_pem, key_sealed = excluded.key_sealed,
                not_before = excluded.not_before, not_after = excluded.not_after,
                directory = excluded.directory",
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
        Ok(())
    }

    /// Every stored certificate, by name.
    pub fn list_certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, identifiers, chain_pem, key_sealed, not_before, not_after, directory
             FROM certificates ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                StoredCertificate {
                    name: String::new(),
                    identifiers: Vec::new(),
                    chain_pem: r.get(2)?,
                    key_sealed: r.get(3)?,
                    not_before: r.get(4)?,
                    not_after: r.get(5)?,
                    directory: r.get(6)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, identifiers, mut c) = row?;
            c.identifiers =
                serde_json::from_str(&identifiers).map_err(|e| StoreError::Corrupt {
                    what: format!("certificate {name:?}"),
                    reason: e.to_string(),
                })?;
            c.name = name;
            out.push(c);
        }
        Ok(out)
    }

    /// Forgets the certificate stored as `name`; absent is not an error.
    pub fn delete_certificate(&self, name: &str) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM certificates WHERE name = ?1", params![name])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, not_after: i64) -> StoredCertificate {
        StoredCertificate {
            name: name.into(),
            identifiers: vec![name.into(), format!("*.{name}")],
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_sealed: vec![1, 2, 3],
            not_before: 10,
            not_after,
            directory: "https://acme.test/dir".into(),
        }
    }

    #[test]
    fn certificates_are_replaced_by_name_listed_and_deleted() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.put_certificate(&cert("b.test", 100)).unwrap();
        s.put_certificate(&cert("a.test", 100)).unwrap();
        s.put_certificate(&cert("a.test", 200)).unwrap();
        let all = s.list_certificates().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], cert("a.test", 200));
        s.delete_certificate("a.test").unwrap();
        s.delete_certificate("missing.test").unwrap();
        assert_eq!(s.list_certificates().unwrap(), vec![cert("b.test", 100)]);
    }

    #[test]
    fn accounts_are_kept_per_directory() {
        let s = SqliteStore::open_in_memory().unwrap();
        assert_eq!(s.get_acme_account("https://a/dir").unwrap(), None);
        s.put_acme_account("https://a/dir", b"one").unwrap();
        s.put_acme_account("https://a/dir", b"two").unwrap();
        s.put_acme_account("https://b/dir", b"three").unwrap();
        assert_eq!(
            s.get_acme_account("https://a/dir").unwrap(),
            Some(b"two".to_vec())
        );
    }
}
