//! What the certificate subsystem needs from the gateway's state: the names it must serve,
//! notice of applied changes, and the sealed ACME account and certificates in the store.
//! Sealing uses a key derived for this purpose only, so a stored certificate key cannot be
//! opened as a Secret or the other way round.

use super::Gateway;
use crate::identity::SecretBox;
use crate::store::{StoreError, StoredCertificate};

/// The derivation purpose of the ACME sealing key.
const ACME_PURPOSE: &str = "acme";

/// Why a sealed ACME record could not be opened: the data directory's `secret.key` is not the
/// one that sealed it.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored {what} cannot be opened with this gateway's secret.key ({reason}); restore the matching secret.key, or delete the row to order again")]
    Open { what: String, reason: String },
}

/// The stored ACME certificates: those this gateway can open, and why the others cannot.
#[derive(Default)]
pub struct StoredCertificates {
    pub readable: Vec<IssuedCertificate>,
    pub unreadable: Vec<SealedError>,
}

/// An issued certificate as the ACME manager hands it over and gets it back: the key in clear.
pub struct IssuedCertificate {
    pub stored: StoredCertificate,
    /// The private key, PEM. Never logged.
    pub key_pem: Vec<u8>,
}

impl Gateway {
    fn acme_box(&self) -> SecretBox {
        self.secretbox.derive(ACME_PURPOSE)
    }

    /// `<svc>.<domain>` of every public Service, sorted.
    pub fn public_service_hosts(&self) -> Vec<(String, String)> {
        let snap = self.snapshot();
        let mut out: Vec<_> = snap
            .services
            .values()
            .filter(|s| s.spec.is_public)
            .map(|s| (s.name.clone(), format!("{}.{}", s.name, self.domain)))
            .collect();
        out.sort();
        out
    }

    /// A receiver that changes after every apply or delete.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The ACME account credentials (JSON) kept for `directory`.
    pub fn acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, SealedError> {
        let Some(sealed) = self.store.get_acme_account(directory)? else {
            return Ok(None);
        };
        self.acme_box()
            .open(&sealed)
            .map(Some)
            .map_err(|e| SealedError::Open {
                what: format!("ACME account for {directory}"),
                reason: e.to_string(),
            })
    }

    /// Keeps the ACME account credentials (JSON) for `directory`, sealed.
    pub fn save_acme_account(&self, directory: &str, credentials: &[u8]) -> Result<(), StoreError> {
        self.store
            .put_acme_account(directory, &self.acme_box().seal(credentials))
    }

    /// Every stored ACME certificate with its key opened. A row that cannot be opened (another
    /// `secret.key` sealed it) is listed apart, so the others are still served and the
    /// manager can order that name again, overwriting the row.
    pub fn acme_certificates(&self) -> Result<StoredCertificates, StoreError> {
        let boxed = self.acme_box();
        let mut out = StoredCertificates::default();
        for stored in self.store.list_certificates()? {
            match boxed.open(&stored.key_sealed) {
                Ok(key_pem) => out.readable.push(IssuedCertificate { stored, key_pem }),
                Err(e) => out.unreadable.push(SealedError::Open {
                    what: format!("certificate key for {}", stored.name),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Keeps an issued certificate, its key sealed (`stored.key_sealed` is ignored).
    pub fn save_acme_certificate(&self, issued: &IssuedCertificate) -> Result<(), StoreError> {
        let mut stored = issued.stored.clone();
        stored.key_sealed = self.acme_box().seal(&issued.key_pem);
        self.store.put_certificate(&stored)
    }

    /// Forgets the certificate stored as `name`.
    pub fn delete_acme_certificate(&self, name: &str) -> Result<(), StoreError> {
        self.store.delete_certificate(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TokenSigner;
    use crate::proxy::upstream::{UpstreamClient, UpstreamOptions};
    use crate::state::{GatewayParts, Settings};
    use crate::store::Store;
    use crate::telemetry::{access_log::AccessLog, Telemetry};
    use std::sync::Arc;

    fn gateway(store: Store, secretbox: SecretBox) -> Arc<Gateway> {
        Gateway::open(GatewayParts {
            domain: "p.test".into(),
            settings: Settings::default(),
            store,
            secretbox,
            signer: TokenSigner::from_key(&[1u8; 32]),
            upstream: UpstreamClient::new(UpstreamOptions {
                extra_ca_pem: Vec::new(),
                connect_timeout: std::time::Duration::from_secs(1),
                response_header_timeout: std::time::Duration::from_secs(1),
            })
            .unwrap(),
            telemetry: Telemetry::new(AccessLog::disabled()),
        })
        .unwrap()
    }

    const KEY_PEM: &[u8] =
        b"-----BEGIN PRIVATE KEY-----\nsecret-key-bytes\n-----END PRIVATE KEY-----\n";

    #[test]
    fn keys_and_accounts_are_sealed_at_rest_and_open_only_with_the_same_secret_key() {
        let dir = std::env::temp_dir().join(format!("postern-state-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("postern.db");
        let key = [7u8; 32];
        let gw = gateway(Store::open(&db).unwrap(), SecretBox::from_key(&key));
        gw.save_acme_account("https://ca/dir", b"{\"account\":\"creds\"}")
            .unwrap();
        gw.save_acme_certificate(&IssuedCertificate {
            stored: StoredCertificate {
                name: "p.test".into(),
                identifiers: vec!["p.test".into()],
                chain_pem: "chain".into(),
                key_sealed: Vec::new(),
                not_before: 1,
                not_after: 2,
                directory: "https://ca/dir".into(),
            },
            key_pem: KEY_PEM.to_vec(),
        })
        .unwrap();

        // Neither the key nor the account is in the database file in clear.
        drop(gw);
        let raw = std::fs::read(&db).unwrap();
        let wal = std::fs::read(dir.join("postern.db-wal")).unwrap_or_default();
        for bytes in [&raw, &wal] {
            let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            assert!(!found(b"secret-key-bytes"));
            assert!(!found(b"account\":\"creds"));
        }

        let gw = gateway(Store::open(&db).unwrap(), SecretBox::from_key(&key));
        let certs = gw.acme_certificates().unwrap();
        assert_eq!(certs.readable[0].key_pem, KEY_PEM);
        assert!(certs.unreadable.is_empty());
        assert_eq!(
            gw.acme_account("https://ca/dir").unwrap().unwrap(),
            b"{\"account\":\"creds\"}"
        );
        drop(gw);

        // Another secret.key (or a Secret's key) cannot open them.
        let other = gateway(Store::open(&db).unwrap(), SecretBox::from_key(&[8u8; 32]));
        let certs = other.acme_certificates().unwrap();
        assert!(certs.readable.is_empty());
        assert!(matches!(certs.unreadable[..], [SealedError::Open { .. }]));
        assert!(other.acme_account("https://ca/dir").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
