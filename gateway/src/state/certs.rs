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

    /// Every stored ACME certificate with its key opened.
    pub fn acme_certificates(&self) -> Result<Vec<IssuedCertificate>, SealedError> {
        let boxed = self.acme_box();
        self.store
            .list_certificates()?
            .into_iter()
            .map(|stored| {
                let key_pem = boxed
                    .open(&stored.key_sealed)
                    .map_err(|e| SealedError::Open {
                        what: format!("certificate key for {}", stored.name),
                        reason: e.to_string(),
                    })?;
                Ok(IssuedCertificate { stored, key_pem })
            })
            .collect()
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
