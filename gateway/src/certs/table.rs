//! Which certificate answers a TLS handshake for a name: a plain table with no I/O, rebuilt
//! whole and swapped in when files are reloaded or ACME issues a certificate.
//!
//! Order of preference for a server name (SNI):
//! 1. the operator's files (`--tls-cert`, `--tls-dir`): an exact name, then a wildcard;
//! 2. certificates issued by ACME: an exact name, then a wildcard;
//! 3. the internal CA's certificate that `posternd init` made, when it covers the name.
//!
//! Files win over ACME because naming a file is the operator's explicit choice. With no SNI,
//! or a name nothing covers, the first file's certificate is served, else the internal one:
//! the client then reports a name mismatch, which is the truthful answer.

use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a certificate in the table came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A PEM pair the operator named; the path of its certificate file.
    File(PathBuf),
    /// Issued by the ACME CA and kept in the store.
    Acme,
    /// Made by `posternd init` and signed by the gateway's own CA.
    Internal,
}

/// What covers a host name: reported by `posternctl get services` and at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// An operator's certificate file covers it.
    File { path: PathBuf },
    /// An ACME certificate covers it.
    Acme,
    /// Only the internal CA's certificate covers it: clients need `--ca-file`.
    Internal,
    /// Nothing covers it: clients see a name mismatch.
    None,
}

impl Coverage {
    /// The short word shown in `posternctl get services` and in `status.tls.source`.
    pub fn label(&self) -> &'static str {
        match self {
            Coverage::File { .. } => "file",
            Coverage::Acme => "acme",
            Coverage::Internal => "internal-ca",
            Coverage::None => "none",
        }
    }
}

/// One certificate the table can serve.
#[derive(Clone, Debug)]
pub struct Entry {
    pub certified: Arc<CertifiedKey>,
    /// DNS names of its subjectAltName, lowercase; wildcards as `*.parent`.
    pub names: Vec<String>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    pub source: Source,
}

/// The certificates of one source tier, indexed by exact name and by wildcard parent.
#[derive(Clone, Default)]
struct Tier {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    entries: Vec<Entry>,
}

impl Tier {
    fn new(entries: Vec<Entry>) -> Tier {
        let mut tier = Tier::default();
        for (i, e) in entries.iter().enumerate() {
            for name in &e.names {
                match name.strip_prefix("*.") {
                    Some(parent) => {
                        tier.wildcard.entry(parent.to_string()).or_insert(i);
                    }
                    None => {
                        tier.exact.entry(name.clone()).or_insert(i);
                    }
                }
            }
        }
        tier.entries = entries;
        tier
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        if let Some(&i) = self.exact.get(name) {
            return Some(&self.entries[i]);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).map(|&i| &self.entries[i])
    }
}

/// Everything the front door can serve, by tier.
#[derive(Clone, Default)]
pub struct CertTable {
    files: Tier,
    acme: Tier,
    internal: Option<Entry>,
}

impl CertTable {
    /// A table of the operator's files (in the order given) and the internal certificate.
    pub fn new(files: Vec<Entry>, internal: Option<Entry>) -> CertTable {
        CertTable {
            files: Tier::new(files),
            acme: Tier::default(),
            internal,
        }
    }

    /// The same table with `files` replacing the file tier.
    pub fn with_files(&self, files: Vec<Entry>) -> CertTable {
        CertTable {
            files: Tier::new(files),
            ..self.clone()
        }
    }

    /// The same table with the ACME certificate `key` (its primary name) set or removed.
    pub fn with_acme(&self, key: &str, entry: Option<Entry>) -> CertTable {
        let mut entries: Vec<Entry> = self
            .acme
            .entries
            .iter()
            .filter(|e| e.names.first().map(String::as_str) != Some(key))
            .cloned()
            .collect();
        entries.extend(entry);
        CertTable {
            acme: Tier::new(entries),
            ..self.clone()
        }
    }

    /// The certificate for a handshake naming `sni` (already lowercase, no trailing dot).
    pub fn select(&self, sni: Option<&str>) -> Option<&Entry> {
        if let Some(name) = sni {
            if let Some(e) = self.files.find(name).or_else(|| self.acme.find(name)) {
                return Some(e);
            }
            if let Some(e) = self
                .internal
                .as_ref()
                .filter(|e| names_cover(&e.names, name))
            {
                return Some(e);
            }
        }
        self.files.entries.first().or(self.internal.as_ref())
    }

    /// What covers `host`.
    pub fn coverage(&self, host: &str) -> Coverage {
        if let Some(e) = self.files.find(host) {
            if let Source::File(path) = &e.source {
                return Coverage::File { path: path.clone() };
            }
        }
        if self.acme.find(host).is_some() {
            return Coverage::Acme;
        }
        match &self.internal {
            Some(e) if names_cover(&e.names, host) => Coverage::Internal,
            _ => Coverage::None,
        }
    }

    /// Every certificate served, for the expiry metric.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.files
            .entries
            .iter()
            .chain(self.acme.entries.iter())
            .chain(self.internal.iter())
    }

    /// The number of file certificates loaded.
    pub fn file_count(&self) -> usize {
        self.files.entries.len()
    }
}

/// Does a certificate with these SAN names cover `host`? A wildcard covers exactly one label.
pub fn names_cover(names: &[String], host: &str) -> bool {
    names.iter().any(|n| match n.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => n == host,
    })
}

/// The name a TLS client sent, normalised as the table keys it: lowercase, no trailing dot.
pub fn normalise_sni(sni: &str) -> String {
    sni.trim_end_matches('.').to_ascii_lowercase()
}
