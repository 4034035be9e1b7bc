//! Every row of a store at once, for `posternd migrate`: read through the [`StoreBackend`]
//! interface from one backend, written by [`StoreBackend::import`] into another, and counted
//! on both sides to prove nothing was lost.

use super::usage::UsageRow;
use super::{CredentialRecord, StoreBackend, StoreError, StoredCertificate};
use crate::limits::counters::CounterRow;
use postern_common::resources::{Resource, SecretInfo, SessionInfo};
use std::fmt;

/// The whole content of a store.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dump {
    /// With their server-set timestamps.
    pub resources: Vec<Resource>,
    /// Ciphertexts: a dump never holds a Secret's plaintext.
    pub secrets: Vec<(SecretInfo, Vec<u8>)>,
    pub credentials: Vec<CredentialRecord>,
    pub sessions: Vec<SessionInfo>,
    pub usage: Vec<UsageRow>,
    pub limit_counters: Vec<CounterRow>,
    /// Directory, sealed credentials, creation (Unix seconds).
    pub acme_accounts: Vec<(String, Vec<u8>, i64)>,
    pub certificates: Vec<StoredCertificate>,
}

impl Dump {
    /// Reads everything from `store`.
    pub fn read(store: &dyn StoreBackend) -> Result<Dump, StoreError> {
        Ok(Dump {
            resources: store.list_resources()?,
            secrets: store.list_secrets()?,
            credentials: store.list_credentials()?,
            sessions: store.list_sessions()?,
            usage: store.list_usage()?,
            limit_counters: store.load_limit_counters(i64::MIN)?,
            acme_accounts: store.list_acme_accounts()?,
            certificates: store.list_certificates()?,
        })
    }

    /// How many rows of each table.
    pub fn counts(&self) -> Counts {
        Counts {
            resources: self.resources.len(),
            secrets: self.secrets.len(),
            credentials: self.credentials.len(),
            sessions: self.sessions.len(),
            usage: self.usage.len(),
            limit_counters: self.limit_counters.len(),
            acme_accounts: self.acme_accounts.len(),
            certificates: self.certificates.len(),
        }
    }
}

/// Row counts per table, compared after a migration.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub resources: usize,
    pub secrets: usize,
    pub credentials: usize,
    pub sessions: usize,
    pub usage: usize,
    pub limit_counters: usize,
    pub acme_accounts: usize,
    pub certificates: usize,
}

impl Counts {
    /// Whether every table is empty.
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    /// `(table, count)` pairs in a fixed order, for messages.
    pub fn tables(&self) -> [(&'static str, usize); 8] {
        [
            ("resources", self.resources),
            ("secrets", self.secrets),
            ("credentials", self.credentials),
            ("sessions", self.sessions),
            ("usage", self.usage),
            ("limit counters", self.limit_counters),
            ("ACME accounts", self.acme_accounts),
            ("certificates", self.certificates),
        ]
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .tables()
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}
