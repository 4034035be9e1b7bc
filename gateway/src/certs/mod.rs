//! The certificates the public front door serves: the operator's files (reloaded when they
//! change or on `SIGHUP`), certificates obtained by ACME, and the internal CA's certificate
//! that `posternd init` made, chosen per handshake by the name the client sent (SNI).
//!
//! The live table is swapped whole, so a reload never disturbs a handshake in progress or an
//! open connection. ACME challenges (TLS-ALPN-01 certificates, HTTP-01 key authorizations)
//! are kept here too, because the listeners that answer them read this state.

pub mod acme;
pub mod args;
pub mod files;
pub mod pem;
pub mod table;
pub mod watch;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use files::{FileError, FilePair, FileSources};
pub use table::{CertTable, Coverage, Entry, Source};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How often the files are checked for a change.
pub const FILE_POLL: Duration = Duration::from_secs(2);

/// Names remembered for the "served with the internal CA" warning: a stranger can send any
/// SNI, so the set is bounded.
const WARNED_NAMES_MAX: usize = 1024;

/// Why the certificates could not be set up at startup.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Files(#[from] FileError),
    #[error("{path}: {source}")]
    Internal {
        path: PathBuf,
        source: Box<FileError>,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What a reload of the files did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The files had not changed.
    Unchanged,
    /// Every file was read again; this many certificates now.
    Reloaded(usize),
    /// A file was bad: the previous certificates stay.
    Failed(FileError),
}

/// The front door's certificates and ACME challenge state.
pub struct Certificates {
    domain: String,
    table: ArcSwap<CertTable>,
    files: FileSources,
    /// The fingerprint of the files as last loaded, and one seen since but not yet stable.
    watch: Mutex<(files::Fingerprint, Option<files::Fingerprint>)>,
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    http01: RwLock<HashMap<String, String>>,
    acme_enabled: AtomicBool,
    warned_internal: Mutex<HashSet<String>>,
    reload_failures: AtomicU64,
}

impl Certificates {
    /// Loads the operator's `files` (an error names the file) and the internal certificate
    /// pair `internal` (made by `init`).
    pub fn new(
        domain: String,
        files: FileSources,
        internal: Option<FilePair>,
    ) -> Result<Arc<Certificates>, CertError> {
        let file_entries = files.load()?;
        let internal = match internal {
            Some(pair) => {
                let mut e = FileSources::new(vec![pair.clone()], vec![])
                    .load()
                    .map_err(|source| CertError::Internal {
                        path: pair.cert.clone(),
                        source: Box::new(source),
                    })?;
                let mut e = e.remove(0);
                e.source = Source::Internal;
                Some(e)
            }
            None => None,
        };
        let fingerprint = files.fingerprint();
        Ok(Arc::new(Certificates {
            domain,
            table: ArcSwap::from_pointee(CertTable::new(file_entries, internal)),
            files,
            watch: Mutex::new((fingerprint, None)),
            alpn_challenges: RwLock::new(HashMap::new()),
            http01: RwLock::new(HashMap::new()),
            acme_enabled: AtomicBool::new(false),
            warned_internal: Mutex::new(HashSet::new()),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// The domain the certificates are for.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The rustls configuration of the front door: TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by
    /// ALPN, `acme-tls/1` last (only a client offering nothing else gets it), and this table
    /// choosing the certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        // The server's order (AES-256-GCM first) decides, not a client's, so a client cannot
        // steer the choice; every suite offered is an AEAD with forward secrecy either way.
        cfg.ignore_client_order = true;
        // Stateless session tickets (keys rotated every 6 hours, kept in memory only): a
        // returning client resumes without the certificate signature and key exchange
        // however many clients there are; the default server-side cache holds 256.
        cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Arc::new(cfg))
    }

    /// Re-reads the files when `force` (SIGHUP) or when they changed and have stayed the same
    /// for one poll (a renewal tool writing the chain and the key one after the other is
    /// read once, complete). A bad file keeps every previous certificate.
    pub fn reload_files(&self, force: bool) -> ReloadOutcome {
        if self.files.is_empty() {
            return ReloadOutcome::Unchanged;
        }
        let now = self.files.fingerprint();
        {
            let mut watch = self.watch.lock().expect("cert watch lock");
            if !force {
                if now == watch.0 {
                    watch.1 = None;
                    return ReloadOutcome::Unchanged;
                }
                if watch.1.as_ref() != Some(&now) {
                    watch.1 = Some(now);
                    return ReloadOutcome::Unchanged;
                }
            }
            watch.0 = now;
            watch.1 = None;
        }
        match self.files.load() {
            Ok(entries) => {
                let n = entries.len();
                self.table.rcu(|t| t.with_files(entries.clone()));
                ReloadOutcome::Reloaded(n)
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                ReloadOutcome::Failed(e)
            }
        }
    }

    /// Reload attempts that kept the previous certificates (`postern_tls_reload_failures_total`).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Installs (or with `None` removes) the ACME certificate whose first name is `key`.
    pub fn set_acme(&self, key: &str, loaded: Option<pem::Loaded>) {
        let entry = loaded.map(|l| Entry {
            certified: l.certified,
            names: l.names,
            not_after: l.not_after,
            source: Source::Acme,
        });
        self.table.rcu(|t| t.with_acme(key, entry.clone()));
        if let Ok(mut warned) = self.warned_internal.lock() {
            warned.clear();
        }
    }

    /// ACME runs: names still on the internal certificate are logged once each.
    pub fn set_acme_enabled(&self) {
        self.acme_enabled.store(true, Ordering::Relaxed);
    }

    /// What covers `host`.
    pub fn coverage(&self, host: &str) -> Coverage {
        self.table.load().coverage(host)
    }

    /// The table now (for metrics and reports).
    pub fn table(&self) -> Arc<CertTable> {
        self.table.load_full()
    }

    /// Serves `cert` to a TLS-ALPN-01 validation of `name`.
    pub fn put_alpn_challenge(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.alpn_challenges
            .write()
            .expect("challenge lock")
            .insert(table::normalise_sni(name), cert);
    }

    /// Ends the TLS-ALPN-01 challenge of `name`.
    pub fn remove_alpn_challenge(&self, name: &str) {
        self.alpn_challenges
            .write()
            .expect("challenge lock")
            .remove(&table::normalise_sni(name));
    }

    /// Answers `GET /.well-known/acme-challenge/<token>` with `key_authorization`.
    pub fn put_http01(&self, token: &str, key_authorization: String) {
        self.http01
            .write()
            .expect("http01 lock")
            .insert(token.to_string(), key_authorization);
    }

    /// Ends the HTTP-01 challenge of `token`.
    pub fn remove_http01(&self, token: &str) {
        self.http01.write().expect("http01 lock").remove(token);
    }

    /// The key authorization for an HTTP-01 `token`, if one is pending.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.read().expect("http01 lock").get(token).cloned()
    }

    fn warn_internal(&self, name: &str) {
        let Ok(mut warned) = self.warned_internal.lock() else {
            return;
        };
        if warned.len() >= WARNED_NAMES_MAX || !warned.insert(name.to_string()) {
            return;
        }
        let why = if self.acme_enabled.load(Ordering::Relaxed) {
            "no ACME certificate has been issued for it yet (see the ACME log lines)"
        } else {
            "no --tls-cert or --tls-dir certificate covers it"
        };
        tracing::warn!("serving {name} with the internal CA's certificate: {why}");
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(table::normalise_sni);
        let mut alpn = hello.alpn().into_iter().flatten();
        let acme_only = alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none();
        if acme_only {
            let name = sni?;
            return self
                .alpn_challenges
                .read()
                .expect("challenge lock")
                .get(&name)
                .cloned();
        }
        let table = self.table.load();
        let entry = table.select(sni.as_deref())?;
        if entry.source == Source::Internal
            && (self.acme_enabled.load(Ordering::Relaxed) || table.file_count() > 0)
        {
            if let Some(name) = sni.as_deref() {
                if table::names_cover(&entry.names, name) {
                    self.warn_internal(name);
                }
            }
        }
        Some(entry.certified.clone())
    }
}

/// Whether a connection negotiated TLS-ALPN-01: it carries no HTTP and is closed at once.
pub fn is_acme_challenge(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ACME_TLS_ALPN)
}

#[cfg(test)]
mod tests;
