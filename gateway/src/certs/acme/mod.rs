//! The ACME manager (`posternd serve --acme`): obtains and renews publicly trusted
//! certificates by itself (RFC 8555, through the instant-acme crate).
//!
//! How it fits together:
//! - [`args`] checks the flags into [`AcmeOptions`]; [`launch`] is the one call `serve`
//!   makes: it binds `--http-listen` ([`http01`]) and starts the manager task.
//! - At start the task installs every certificate in the store into the live table
//!   ([`Certificates::set_acme`]), so a restart serves at once and orders nothing still valid.
//! - Then it loops: [`plan::plan`] compares the wanted names (DOMAIN and each public
//!   Service's SVC.DOMAIN, or DOMAIN + *.DOMAIN with DNS-01) with the certificates held,
//!   the failures so far and the clock, and answers what to order, renew (two thirds into
//!   the lifetime) and drop; the task carries that out one order at a time, then sleeps
//!   until the next renewal or retry, or until a Service is applied or deleted
//!   (`Gateway::changes`).
//! - An order ([`client`]) answers the challenge of every name: TLS-ALPN-01 installs a
//!   validation certificate that the HTTPS listener offers only for ALPN `acme-tls/1`,
//!   HTTP-01 a token that [`http01`] serves, DNS-01 a TXT record sent by RFC 2136 UPDATE
//!   ([`rfc2136`]). The answers are removed whatever the outcome. The key is ours (ECDSA
//!   P-256, CSR by rcgen) and is stored sealed, like the account's credentials.
//! - A failure is retried after 10 s, doubling up to an hour, or later if the CA said
//!   `Retry-After`; the previous certificate (if any) keeps being served meanwhile.
//! - Several gateways on one store: each re-reads the store before planning and installs a
//!   certificate another one stored, so a fresh certificate is ordered once.

pub mod args;
pub mod challenge;
pub mod client;
pub mod http01;
pub mod plan;
pub mod rfc2136;

pub use args::{AcmeArgs, AcmeConfigError, AcmeOptions};

use crate::certs::{pem, Certificates};
use crate::state::{now_unix, Gateway, IssuedCertificate, SealedError};
use crate::store::StoredCertificate;
use client::{AcmeClient, Installer, RetryAfter};
use plan::{Backoff, Held};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use zeroize::Zeroize;

/// Longest sleep between two plans, so a changed system clock is noticed within the hour.
const MAX_SLEEP: i64 = 3600;

/// The lease gateways sharing a store take before ordering, so one orders and the others
/// install what it stores (a Certificates notice wakes them).
const ORDER_LEASE: &str = "acme-orders";
/// How long the lease holds without being renewed (each order renews it); a gateway that
/// died holding it blocks the others this long at most.
const ORDER_LEASE_SECS: i64 = 600;
/// How soon a gateway that found the lease taken looks again (a notice may wake it sooner).
const LEASE_RECHECK_SECS: u64 = 60;

/// Why `serve` cannot start the ACME parts.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Config(#[from] AcmeConfigError),
    #[error("binding --http-listen {addr}: {source}; choose a free address (port 80 needs root or CAP_NET_BIND_SERVICE)")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The one call `serve` makes: checks the flags, binds `--http-listen` (with or without
/// ACME), installs the stored certificates and starts the manager when `--acme` is on.
pub async fn launch(
    args: AcmeArgs,
    gw: Arc<Gateway>,
    certs: Arc<Certificates>,
    https_port: u16,
) -> Result<Option<JoinHandle<()>>, LaunchError> {
    let http_listen = args.http_listen;
    let opts = args.into_options()?;
    if let Some(addr) = http_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LaunchError::Bind { addr, source })?;
        tracing::info!(
            "plain HTTP on {}: ACME HTTP-01 challenges, everything else redirected to https",
            listener.local_addr().unwrap_or(addr)
        );
        let redirect = http01::Redirect {
            domain: gw.domain.to_ascii_lowercase(),
            https_port,
        };
        let max = gw.settings.client_limits.max_connections;
        tokio::spawn(http01::serve(certs.clone(), listener, redirect, max));
    }
    if let Some(opts) = &opts {
        if gw.store().is_shared() && !opts.wildcard() {
            tracing::warn!(
                "ACME {} on a store several gateways share: the CA may check the challenge \
                 on another gateway than the one ordering and fail; use DNS-01 \
                 (--acme-dns-rfc2136) or certificate files (docs/tls.md)",
                opts.challenge
            );
        }
    }
    Ok(opts.map(|opts| start(gw, certs, opts)))
}

/// Installs the stored certificates now, then runs the manager task.
pub fn start(gw: Arc<Gateway>, certs: Arc<Certificates>, opts: AcmeOptions) -> JoinHandle<()> {
    METRICS.enabled.store(true, Ordering::Relaxed);
    certs.set_acme_enabled();
    let mut manager = Manager {
        gw,
        certs,
        opts,
        held: BTreeMap::new(),
        backoff: BTreeMap::new(),
        client: None,
        new_account: false,
        retry_after: RetryAfter::default(),
        unreadable_warned: Default::default(),
        lease_waiting: false,
    };
    manager.sync_from_store();
    tokio::spawn(manager.run())
}

/// A certificate the manager holds, with the chain it installed.
struct HeldCert {
    held: Held,
    chain_pem: String,
}

struct Manager {
    gw: Arc<Gateway>,
    certs: Arc<Certificates>,
    opts: AcmeOptions,
    held: BTreeMap<String, HeldCert>,
    backoff: BTreeMap<String, Backoff>,
    client: Option<AcmeClient>,
    /// The stored account was refused: make a new one instead of reading it.
    new_account: bool,
    retry_after: RetryAfter,
    /// Stored rows this gateway cannot open, already logged (once each).
    unreadable_warned: std::collections::BTreeSet<String>,
    /// Another gateway holds the order lease, already logged.
    lease_waiting: bool,
}

impl Manager {
    async fn run(mut self) {
        let mut changes = self.gw.changes();
        tracing::info!(
            "ACME: on, directory {}, challenge {}",
            self.opts.directory,
            self.opts.challenge
        );
        loop {
            self.sync_from_store();
            let services: Vec<String> = self
                .gw
                .public_service_hosts()
                .into_iter()
                .map(|(name, _host)| name)
                .collect();
            let mut wanted = plan::wanted(&self.gw.domain, &services, self.opts.wildcard());
            // A name the operator's files cover is served from them (files win), so ordering
            // it would only spend the CA's rate limits.
            wanted.retain(|w| {
                !w.identifiers.iter().all(|name| {
                    matches!(
                        self.certs.coverage(name),
                        crate::certs::Coverage::File { .. }
                    )
                })
            });
            let held: Vec<Held> = self.held.values().map(|h| h.held.clone()).collect();
            let now = now_unix();
            let p = plan::plan(&wanted, &held, &self.backoff, &self.opts.directory, now);
            for name in &p.drop {
                self.drop_name(name);
            }
            self.backoff
                .retain(|n, _| wanted.iter().any(|w| &w.name == n));
            if !p.due.is_empty() {
                if !self.take_lease().await {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(LEASE_RECHECK_SECS)) => {}
                        _ = changes.changed() => {}
                    }
                    continue;
                }
                for due in p.due {
                    if !self.take_lease().await {
                        break;
                    }
                    self.order(&due.wanted).await;
                }
                self.give_lease_back().await;
                continue;
            }
            let wait = p
                .next_wake
                .map_or(MAX_SLEEP, |t| (t - now).clamp(1, MAX_SLEEP));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait as u64)) => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The gateway is going away; nothing will change again.
                        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
                    }
                }
            }
        }
    }

    /// Takes (or renews) the order lease; `false` when another gateway holds it, or the
    /// store cannot say (ordering then would only repeat the other's work).
    async fn take_lease(&mut self) -> bool {
        let gw = self.gw.clone();
        let now = now_unix();
        let outcome = tokio::task::spawn_blocking(move || {
            let holder = gw.name().to_string();
            gw.store()
                .acquire_lease(ORDER_LEASE, &holder, now, now + ORDER_LEASE_SECS)
        })
        .await;
        match outcome {
            Ok(Ok(true)) => {
                self.lease_waiting = false;
                true
            }
            Ok(Ok(false)) => {
                if !self.lease_waiting {
                    tracing::info!("ACME: another gateway on this store is ordering; waiting for the certificates it stores");
                    self.lease_waiting = true;
                }
                false
            }
            Ok(Err(e)) => {
                tracing::warn!("ACME: cannot take the order lease ({e}); trying again later");
                false
            }
            Err(e) => {
                tracing::warn!("ACME: cannot take the order lease ({e}); trying again later");
                false
            }
        }
    }

    /// Gives the order lease back after a round of orders, so another gateway may renew.
    async fn give_lease_back(&self) {
        let gw = self.gw.clone();
        let done = tokio::task::spawn_blocking(move || {
            let holder = gw.name().to_string();
            gw.store().release_lease(ORDER_LEASE, &holder)
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(
                "ACME: giving the order lease back failed ({e}); it expires in {ORDER_LEASE_SECS}s"
            );
        }
    }

    /// Installs what the store holds and the table does not (at start, and what another
    /// gateway on the same store ordered).
    fn sync_from_store(&mut self) {
        let stored = match self.gw.acme_certificates() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ACME: reading the stored certificates failed: {e}");
                return;
            }
        };
        for e in &stored.unreadable {
            let text = e.to_string();
            if self.unreadable_warned.insert(text.clone()) {
                tracing::warn!("ACME: {text}");
            }
        }
        for IssuedCertificate { stored, key_pem } in stored.readable {
            if self
                .held
                .get(&stored.name)
                .is_some_and(|h| h.chain_pem == stored.chain_pem)
            {
                continue;
            }
            match pem::load(stored.chain_pem.as_bytes(), &key_pem) {
                Ok(loaded) => {
                    self.certs.set_acme(&stored.name, Some(loaded));
                    tracing::info!(
                        "ACME: serving the stored certificate for {}, expires {}",
                        stored.identifiers.join(", "),
                        rfc3339(stored.not_after)
                    );
                    self.held.insert(
                        stored.name.clone(),
                        HeldCert {
                            held: Held {
                                name: stored.name,
                                identifiers: stored.identifiers,
                                not_before: stored.not_before,
                                not_after: stored.not_after,
                                directory: stored.directory,
                            },
                            chain_pem: stored.chain_pem,
                        },
                    );
                }
                Err(e) => tracing::warn!(
                    "ACME: the stored certificate for {} cannot be used ({e}); ordering a new one",
                    stored.name
                ),
            }
        }
    }

    fn drop_name(&mut self, name: &str) {
        self.certs.set_acme(name, None);
        if let Err(e) = self.gw.delete_acme_certificate(name) {
            tracing::warn!("ACME: deleting the stored certificate for {name} failed: {e}");
        }
        self.held.remove(name);
        self.backoff.remove(name);
        tracing::info!("ACME: {name} no longer served; certificate dropped");
    }

    async fn order(&mut self, wanted: &plan::Wanted) {
        let names = wanted.identifiers.join(", ");
        tracing::info!(
            "ACME: ordering a certificate for {names} ({})",
            self.opts.challenge
        );
        self.retry_after.take();
        let outcome = self.try_order(wanted).await;
        let now = now_unix();
        match outcome {
            Ok(cert) => {
                METRICS.issued.fetch_add(1, Ordering::Relaxed);
                self.backoff.remove(&wanted.name);
                tracing::info!(
                    "ACME: certificate for {names} issued, expires {}, renews at {}",
                    rfc3339(cert.held.not_after),
                    rfc3339(cert.held.renew_at())
                );
                self.held.insert(wanted.name.clone(), cert);
            }
            Err(reason) => {
                METRICS.failed.fetch_add(1, Ordering::Relaxed);
                let b = self
                    .backoff
                    .get(&wanted.name)
                    .copied()
                    .unwrap_or_default()
                    .failed(now, self.retry_after.take());
                self.backoff.insert(wanted.name.clone(), b);
                tracing::warn!(
                    "ACME: order for {names} failed: {reason}; retrying in {}",
                    human(b.next_try - now)
                );
            }
        }
    }

    async fn try_order(&mut self, wanted: &plan::Wanted) -> Result<HeldCert, String> {
        let installer = Installer {
            certs: self.certs.clone(),
            dns: self.opts.dns.clone(),
        };
        let kind = self.opts.challenge;
        let ordered = self
            .client()
            .await?
            .order(&wanted.identifiers, kind, &installer)
            .await;
        let issued = match ordered {
            Ok(issued) => issued,
            Err(e) => {
                if e.account_gone() {
                    tracing::warn!(
                        "ACME: the CA no longer knows the stored account; making a new one"
                    );
                    self.client = None;
                    self.new_account = true;
                }
                return Err(client::with_causes(&e));
            }
        };
        let loaded = pem::load(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .map_err(|e| format!("the CA's certificate cannot be used: {e}"))?;
        let stored = StoredCertificate {
            name: wanted.name.clone(),
            identifiers: wanted.identifiers.clone(),
            chain_pem: issued.chain_pem.clone(),
            key_sealed: Vec::new(),
            not_before: loaded.not_before,
            not_after: loaded.not_after,
            directory: self.opts.directory.clone(),
        };
        let issued_cert = IssuedCertificate {
            stored,
            key_pem: issued.key_pem.as_bytes().to_vec(),
        };
        let saved = self.gw.save_acme_certificate(&issued_cert);
        let IssuedCertificate {
            stored,
            mut key_pem,
        } = issued_cert;
        key_pem.zeroize();
        if let Err(e) = saved {
            tracing::warn!(
                "ACME: storing the certificate for {} failed ({e}); it is served until the next restart",
                wanted.name
            );
        }
        let held = Held {
            name: stored.name,
            identifiers: stored.identifiers,
            not_before: loaded.not_before,
            not_after: loaded.not_after,
            directory: stored.directory,
        };
        self.certs.set_acme(&wanted.name, Some(loaded));
        Ok(HeldCert {
            held,
            chain_pem: issued.chain_pem,
        })
    }

    /// The account, connected (and created and stored on first use) when first needed.
    async fn client(&mut self) -> Result<&AcmeClient, String> {
        if self.client.is_none() {
            let dir = &self.opts.directory;
            let stored = match self.new_account {
                true => None,
                false => match self.gw.acme_account(dir) {
                    Ok(stored) => stored,
                    Err(e @ SealedError::Open { .. }) => {
                        tracing::warn!("ACME: {e}; making a new account instead");
                        None
                    }
                    Err(e) => return Err(format!("ACME account at {dir}: {e}")),
                },
            };
            let (client, new_creds) =
                AcmeClient::connect(&self.opts, stored.as_deref(), self.retry_after.clone())
                    .await
                    .map_err(|e| format!("ACME account at {dir}: {}", client::with_causes(&e)))?;
            if let Some(creds) = new_creds {
                tracing::info!("ACME: account created at {dir}");
                if let Err(e) = self.gw.save_acme_account(dir, &creds) {
                    tracing::warn!(
                        "ACME: storing the account failed ({e}); a restart makes a new one"
                    );
                }
            }
            self.client = Some(client);
            self.new_account = false;
        }
        Ok(self.client.as_ref().expect("set above"))
    }
}

/// `2026-01-02T03:04:05Z`.
fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix.to_string())
}

/// `45s`, `3m20s`, `1h`, `2d3h`.
fn human(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// ACME's Prometheus series, rendered by the `/metrics` listener. (The expiry of every
/// served certificate, ACME ones included, comes from the live table: `certs::watch`.)
pub struct AcmeMetrics {
    enabled: AtomicBool,
    issued: AtomicU64,
    failed: AtomicU64,
}

/// The process's ACME metrics (one manager per process).
pub static METRICS: AcmeMetrics = AcmeMetrics {
    enabled: AtomicBool::new(false),
    issued: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

impl AcmeMetrics {
    /// Appends `postern_acme_orders_total` (nothing without `--acme`).
    pub fn render(&self, out: &mut String) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP postern_acme_orders_total ACME orders by outcome.\n\
             # TYPE postern_acme_orders_total counter\n\
             postern_acme_orders_total{{result=\"issued\"}} {}\n\
             postern_acme_orders_total{{result=\"failed\"}} {}",
            self.issued.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(10), "10s");
        assert_eq!(human(200), "3m20s");
        assert_eq!(human(3600), "1h");
        assert_eq!(human(7 * 86400 + 3600), "7d1h");
        assert_eq!(human(-3), "0s");
    }

    #[test]
    fn metrics_render_counters() {
        let m = AcmeMetrics {
            enabled: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.is_empty(), "nothing without --acme");
        m.enabled.store(true, Ordering::Relaxed);
        m.issued.fetch_add(2, Ordering::Relaxed);
        m.failed.fetch_add(1, Ordering::Relaxed);
        m.render(&mut out);
        assert!(out.contains("# TYPE postern_acme_orders_total counter\n"));
        assert!(out.contains("postern_acme_orders_total{result=\"issued\"} 2\n"));
        assert!(out.contains("postern_acme_orders_total{result=\"failed\"} 1\n"));
    }
}
