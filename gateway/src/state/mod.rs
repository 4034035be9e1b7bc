//! The gateway's shared runtime state: the compiled [`Snapshot`] of declared resources
//! (swapped atomically on every change), the live Sessions, and the handles to the store
//! and keys. The hot path reads memory only; every change goes to the store first.

mod certs;
mod changes;
pub mod people;
mod sessions;
pub mod snapshot;
pub mod sync;

pub use certs::{IssuedCertificate, SealedError, StoredCertificates};
pub use changes::{ChangeError, LoginOutcome};
pub use sessions::{AuthError, Principal, SessionEntry};
pub use snapshot::{
    BuildError, IdentityProviderEntry, ServiceEntry, Snapshot, UpstreamConfig, UserEntry,
};

use crate::identity::{SecretBox, TokenSigner};
use crate::limits::Limiter;
use crate::proxy::upstream::UpstreamClient;
use crate::store::Store;
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// Tunables of a running gateway, from `posternd serve` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of OAuth2 access tokens (and of the Session each grant makes).
    pub token_ttl: Duration,
    /// Lifetime of Sessions made by `postern login`.
    pub login_ttl: Duration,
    /// Largest request body buffered for a policy that reads `bodyMap`.
    pub max_body_bytes: usize,
    /// Tokens a token limit reserves for a request that sets no `max_tokens`.
    pub limit_default_completion_tokens: u64,
    /// Connection, head, body-time and overload bounds of every HTTP listener.
    pub client_limits: crate::frontdoor::limits::Limits,
    /// Extra CA certificates (PEM) trusted for identity providers (`--idp-ca`).
    pub idp_extra_ca_pem: Option<Vec<u8>>,
    /// `Strict-Transport-Security` sent on every front-door response (`--hsts`); off unless
    /// the operator sets it, since a browser then refuses the domain's plain-HTTP names for
    /// as long as it says.
    pub hsts: Option<http::HeaderValue>,
    /// This gateway's name among those sharing a store (`--gateway-name`): in access
    /// records, usage rows, tunnel address claims and `/healthz`.
    pub gateway_name: String,
    /// How many gateways share the store (`--limit-gateways`): while the store is
    /// unreachable each admits up to limit / this of a window on its own.
    pub limit_gateways: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_ttl: Duration::from_secs(3600),
            login_ttl: Duration::from_secs(24 * 3600),
            max_body_bytes: 8 << 20,
            limit_default_completion_tokens: crate::limits::DEFAULT_COMPLETION_TOKENS,
            client_limits: crate::frontdoor::limits::Limits::default(),
            idp_extra_ca_pem: None,
            hsts: None,
            gateway_name: "gateway".into(),
            limit_gateways: 2,
        }
    }
}

/// The one shared object behind every listener.
pub struct Gateway {
    pub domain: String,
    pub settings: Settings,
    snapshot: ArcSwap<Snapshot>,
    sessions: RwLock<HashMap<String, Arc<SessionEntry>>>,
    store: Store,
    secretbox: SecretBox,
    signer: TokenSigner,
    /// Tokens whose signature was already checked (see `identity::verified`).
    verified: crate::identity::VerifiedTokens,
    /// Serialises changes so each builds on the one before.
    write_lock: Mutex<()>,
    pub upstream: UpstreamClient,
    pub telemetry: Telemetry,
    /// Rate-limit and budget counters (in memory; see [`Gateway::flush_limits`]).
    pub limits: Arc<Limiter>,
    /// The WireGuard tunnel, when `--wg-listen` started one; set once at startup.
    pub tunnel: OnceLock<Arc<crate::tunnel::Tunnel>>,
    /// Round-robin positions, retry budgets and in-flight counts per Service config, kept
    /// across snapshot rebuilds.
    upstream_states: crate::proxy::upstream_state::UpstreamStates,
    /// Requests in flight against `--max-inflight-requests`, and what overload turned away.
    pub shedder: Arc<crate::frontdoor::shed::Shedder>,
    /// IdentityProvider clients, the agent's one-time codes and the sign-in cookie key.
    pub signin: crate::frontdoor::signin::SignInState,
    /// The front door's certificates, set once at startup (`posternd serve`).
    pub certs: OnceLock<Arc<crate::certs::Certificates>>,
    /// Bumped after each snapshot rebuild, so background tasks (ACME) see applied changes.
    changes: tokio::sync::watch::Sender<u64>,
    /// Whether the store answers and whether other gateways' changes are being heard.
    pub store_health: sync::StoreHealth,
    /// Sessions looked up in the store and not found there, briefly, so a revoked token
    /// presented again and again costs one store read per second at most.
    missing_sessions: Mutex<HashMap<String, std::time::Instant>>,
    /// When a request last made the snapshot catch up with a shared store.
    last_catch_up: Mutex<Option<std::time::Instant>>,
}

/// Everything [`Gateway::open`] needs.
pub struct GatewayParts {
    pub domain: String,
    pub settings: Settings,
    pub store: Store,
    pub secretbox: SecretBox,
    pub signer: TokenSigner,
    pub upstream: UpstreamClient,
    pub telemetry: Telemetry,
}

impl Gateway {
    /// Loads every resource, secret, credential and session from the store.
    pub fn open(parts: GatewayParts) -> Result<Arc<Gateway>, ChangeError> {
        let signin = crate::frontdoor::signin::SignInState::new(&parts.secretbox);
        let gw = Gateway {
            signin,
            domain: parts.domain,
            settings: parts.settings.clone(),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            sessions: RwLock::new(HashMap::new()),
            store: parts.store,
            secretbox: parts.secretbox,
            signer: parts.signer,
            verified: Default::default(),
            write_lock: Mutex::new(()),
            upstream: parts.upstream,
            telemetry: parts.telemetry,
            limits: Arc::new(
                Limiter::new(parts.settings.limit_default_completion_tokens)
                    .with_gateways(parts.settings.limit_gateways),
            ),
            tunnel: OnceLock::new(),
            certs: OnceLock::new(),
            changes: tokio::sync::watch::channel(0).0,
            store_health: Default::default(),
            missing_sessions: Mutex::new(HashMap::new()),
            last_catch_up: Mutex::new(None),
            upstream_states: Default::default(),
            shedder: crate::frontdoor::shed::Shedder::new(
                parts.settings.client_limits.max_inflight,
                parts.settings.client_limits.retry_after,
            ),
        };
        gw.limits.load(&gw.store, now_unix())?;
        gw.reload()?;
        gw.reload_sessions()?;
        Ok(Arc::new(gw))
    }

    /// This gateway's name (`--gateway-name`).
    pub fn name(&self) -> &str {
        &self.settings.gateway_name
    }

    /// The store, for background tasks that write it (tunnel address claims, limits).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The current compiled view; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Persists the limit counters changed since the last call (every second); returns how
    /// many were written.
    pub fn flush_limits(&self) -> Result<usize, crate::store::StoreError> {
        self.limits.flush(&self.store, now_unix())
    }

    /// The last flush, at shutdown: on a shared store it also gives unspent grants back, so
    /// the other gateways may spend them in this window.
    pub fn close_limits(&self) -> Result<usize, crate::store::StoreError> {
        self.limits.close(&self.store, now_unix())
    }
}

/// Checks a `--gateway-name`: 1 to 63 of `A-Z a-z 0-9 . _ -`, so it is safe in logs, metric
/// labels and store rows.
pub fn check_gateway_name(name: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{name:?} is not a gateway name: use 1 to 63 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// The default `--gateway-name`: the host name when it is a valid name, else `gateway`.
pub fn default_gateway_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| check_gateway_name(h.trim()).ok())
        .unwrap_or_else(|| "gateway".into())
}

/// Now, as stored in records.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Now, as in token claims.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}
