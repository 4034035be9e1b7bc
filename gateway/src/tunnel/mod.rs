//! The gateway side of the WireGuard tunnel: one UDP port (userspace WireGuard), a userspace
//! TCP/IP stack answering for every Service address, DNS for Service names, and the
//! identity rule of the tunnel: a connection from a tunnel address is the Session that owns
//! that address, so no token travels inside the tunnel.
//!
//! ```text
//! UDP --wireguard::Endpoint--> Delivered packets --> NetStack (any_ip) --> accept()
//!     <--send_packet-------------------------------- NetStack out        |
//!  local address -> Service (addresses), remote address -> Session (registry)
//!  HTTP Services -> pipeline::handle_tunnel ; TCP Services -> tcp::serve ; DNS -> dns_server
//! ```

pub mod addresses;
pub mod claims;
pub mod dns;
mod dns_server;
pub mod keyfile;
mod listeners;
#[cfg(test)]
mod loopback_limits_tests;
#[cfg(test)]
mod loopback_tests;
pub mod registry;
pub mod revoke;
#[cfg(test)]
mod shared_tests;
mod tcp;

use crate::state::{AuthError, Gateway, Principal, ServiceEntry, Snapshot};
use addresses::{gateway_addresses, ServiceMap};
use postern_common::api::{TunnelConnectResponse, TunnelService};
use postern_common::netstack::{IpAddress, IpCidr, NetConfig, NetError, NetStack};
use postern_common::resources::ServiceMode;
use postern_common::wireguard::{
    AllowedIp, Endpoint, EndpointConfig, EndpointHandle, KeyError, PeerError, PublicKey,
};
use registry::{Registry, RegistryError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often idle peers are looked for.
pub const IDLE_CHECK: Duration = Duration::from_secs(30);
/// Port HTTP Services listen on inside the tunnel when `spec.port` is not set.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// Settings from `posternd serve --wg-*` flags.
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// The UDP address WireGuard listens on.
    pub listen: SocketAddr,
    /// `host:port` agents are told to send to (`--wg-endpoint`, or `<domain>:<port>`).
    pub public_endpoint: String,
    /// The gateway's key file (`<data dir>/wg.key`).
    pub key_path: PathBuf,
    /// Peers silent this long are removed and their addresses freed.
    pub idle_timeout: Duration,
    /// Persistent keepalive agents are asked to use, in seconds.
    pub keepalive: u16,
}

/// Why the tunnel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("WireGuard key: {0}")]
    Key(#[from] keyfile::KeyFileError),
    #[error("binding WireGuard UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tunnel network stack: {0}")]
    Stack(#[from] NetError),
    #[error("the tunnel was already started")]
    AlreadyStarted,
}

/// Why a connect was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("publicKey is not a WireGuard public key: {0}")]
    BadKey(#[from] KeyError),
    #[error("publicKey is the gateway's own key")]
    OwnKey,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Claim(#[from] claims::ClaimError),
    #[error("registering the peer: {0}")]
    Peer(#[from] PeerError),
    #[error("the session ended while connecting")]
    SessionGone,
}

/// The running tunnel; reached from the control API through [`Gateway::tunnel`].
pub struct Tunnel {
    endpoint: Endpoint,
    stack: NetStack,
    registry: Mutex<Registry>,
    /// Held while an address is claimed in the store and registered, and while a claim is
    /// released, so a release never removes the claim of a Session connecting again. Store
    /// I/O happens under it, never under `registry`. Locked before `registry`.
    claiming: Mutex<()>,
    /// Sessions whose address claim must be released in the store (see [`release_claims`]).
    releases: mpsc::UnboundedSender<Arc<str>>,
    /// Per connected Session, the signal its connections' tasks wait on to stop (their
    /// upstream side goes with them). Locked after `registry`, never before.
    cuts: Mutex<HashMap<Arc<str>, watch::Sender<bool>>>,
    runtime: tokio::runtime::Handle,
    services: Mutex<(Weak<Snapshot>, Arc<ServiceMap>)>,
    options: TunnelOptions,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The tunnel port of a Service: `spec.port`, else 80 for HTTP; TCP Services without a
/// port are not served in the tunnel.
pub fn service_port(service: &ServiceEntry) -> Option<u16> {
    match service.spec.mode {
        ServiceMode::Http => Some(service.spec.port.unwrap_or(DEFAULT_HTTP_PORT)),
        ServiceMode::Tcp => service.spec.port,
    }
}

/// Whether `principal` may see `service` in the tunnel (connect response, DNS): it has a
/// tunnel port and the combined rule set for this pair (the Service's, the User's and its
/// Groups', global Policies) is not empty, so some policy could allow it. This is a listing
/// rule only; every request and connection is still decided by the policies.
pub fn visible(snap: &Snapshot, service: &ServiceEntry, principal: &Principal) -> bool {
    service_port(service).is_some()
        && !postern_policy::Catalog::combine(
            &service.rules,
            &principal.user.rules,
            &snap.global_rules,
        )
        .rules()
        .is_empty()
}

impl Tunnel {
    /// Binds the WireGuard port, starts the stack, DNS, listeners and idle expiry, and
    /// attaches the tunnel to `gw`.
    pub async fn start(
        gw: Arc<Gateway>,
        options: TunnelOptions,
    ) -> Result<Arc<Tunnel>, StartError> {
        let keys = keyfile::load_or_create(&options.key_path)?;
        let (endpoint, delivered) = Endpoint::bind(
            keys,
            EndpointConfig {
                bind: options.listen,
                ..EndpointConfig::default()
            },
        )
        .await
        .map_err(|source| StartError::Bind {
            addr: options.listen,
            source,
        })?;
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1024);
        let own = gateway_addresses();
        let stack = NetStack::new(
            NetConfig {
                addresses: vec![
                    IpCidr::new(IpAddress::from(IpAddr::V4(own.v4)), 16),
                    IpCidr::new(IpAddress::from(IpAddr::V6(own.v6)), 64),
                ],
                any_ip: true,
                ..NetConfig::default()
            },
            // Decrypted packets go straight to the stack; identity comes from their source
            // address (the registry), not from the endpoint's peer id.
            delivered,
            out_tx,
        )?;
        let handle = endpoint.handle();
        tokio::spawn(async move {
            while let Some(packet) = out_rx.recv().await {
                if let Err(e) = handle.send_packet(&packet).await {
                    tracing::trace!(error = %e, "tunnel packet not sent");
                }
            }
        });
        let released = {
            let gw = gw.clone();
            tokio::task::spawn_blocking(move || claims::release_stale(&**gw.store(), gw.name()))
                .await
        };
        match released {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                "released {n} tunnel addresses this gateway ({}) held when it stopped",
                gw.name()
            ),
            Ok(Err(e)) => tracing::warn!(
                "could not release the tunnel addresses this gateway ({}) held when it stopped: \
                 {e}; they stay taken until its next start",
                gw.name()
            ),
            Err(e) => tracing::warn!("releasing stale tunnel addresses: {e}"),
        }
        let (releases, release_rx) = mpsc::unbounded_channel();
        let tunnel = Arc::new(Tunnel {
            endpoint,
            stack,
            registry: Mutex::new(Registry::default()),
            claiming: Mutex::new(()),
            releases,
            cuts: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            services: Mutex::new((Weak::new(), Arc::new(ServiceMap::default()))),
            options,
        });
        gw.tunnel
            .set(tunnel.clone())
            .map_err(|_| StartError::AlreadyStarted)?;
        dns_server::start(gw.clone(), tunnel.clone())?;
        tokio::spawn(listeners::run(gw.clone(), tunnel.clone()));
        tokio::spawn(expire_idle(tunnel.clone()));
        tokio::spawn(sweep(gw.clone(), tunnel.clone()));
        tokio::spawn(release_claims(gw.clone(), tunnel.clone(), release_rx));
        tracing::info!(
            "WireGuard tunnel on udp {} (public key {}), agents use {}",
            tunnel
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            tunnel.public_key(),
            tunnel.options.public_endpoint
        );
        Ok(tunnel)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claiming(&self) -> MutexGuard<'_, ()> {
        self.claiming.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cuts(&self) -> MutexGuard<'_, HashMap<Arc<str>, watch::Sender<bool>>> {
        self.cuts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For a connection from tunnel address `ip`: a signal that turns true when the Session
    /// owning it is revoked (`None` when no Session owns it). Taken before the connection is
    /// authorised, so a revocation in between is never missed.
    pub(crate) fn cut_signal(&self, ip: IpAddr) -> Option<watch::Receiver<bool>> {
        let reg = self.registry();
        let session = reg.owner_at(ip)?;
        let rx = self
            .cuts()
            .entry(session)
            .or_insert_with(|| watch::channel(false).0)
            .subscribe();
        Some(rx)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The gateway's WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.endpoint.public_key()
    }

    /// The WireGuard endpoint, for statistics.
    pub fn endpoint(&self) -> EndpointHandle {
        self.endpoint.handle()
    }

    pub(crate) fn stack(&self) -> &NetStack {
        &self.stack
    }

    /// The Service addresses for `snap`, rebuilt when the snapshot changed.
    pub fn services(&self, snap: &Arc<Snapshot>) -> Arc<ServiceMap> {
        let mut cache = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if !std::ptr::eq(cache.0.as_ptr(), Arc::as_ptr(snap)) {
            let map = ServiceMap::build(snap.services.keys().map(String::as_str));
            *cache = (Arc::downgrade(snap), Arc::new(map));
        }
        cache.1.clone()
    }

    /// The caller behind tunnel address `ip`: the Session that owns it, checked now.
    pub fn principal_at(&self, gw: &Gateway, ip: IpAddr) -> Result<Principal, AuthError> {
        let session = self
            .registry()
            .session_at(ip)
            .map(str::to_string)
            .ok_or_else(|| AuthError::SessionGone(format!("(no session at {ip})")))?;
        gw.session_principal(&session)
    }

    /// Registers `public_key` for `principal`'s Session and says how to reach the gateway.
    pub fn connect(
        self: &Arc<Self>,
        gw: &Gateway,
        principal: &Principal,
        public_key: &str,
    ) -> Result<TunnelConnectResponse, ConnectError> {
        let key = PublicKey::from_base64(public_key.trim())?;
        if key == self.public_key() {
            return Err(ConnectError::OwnKey);
        }
        let sid = principal.session.info.name.clone();
        // The agent's previous Session may own the key still: it expired a moment ago and the
        // sweep has not run yet, and the agent logged in again at once. Only an owner that is
        // no longer valid gives it up; a live one keeps it (409).
        let owner = self.registry().session_of_key(&key);
        if let Some(owner) = owner.filter(|o| **o != *sid) {
            if let Err(why) = gw.session_principal(&owner) {
                self.revoke(&owner, &why.to_string());
            }
        }
        let (entry, new_peer) = {
            let _claiming = self.claiming();
            // A connected Session keeps its address with no store round trip (an agent
            // checking in works while the store is unreachable); a new one claims one.
            let known = self.registry().get(&sid).map(|e| e.addresses);
            let claimed = match known {
                Some(pair) => claims::Claimed { pair, new: false },
                None => {
                    let busy = self.registry().busy();
                    claims::claim(&**gw.store(), gw.name(), &sid, &busy)?
                }
            };
            let mut reg = self.registry();
            let previous = reg.get(&sid).map(|e| e.key);
            let connected =
                match reg.connect(&sid, key, principal.session.expires_unix, claimed.pair) {
                    Ok(c) => c,
                    Err(e) => {
                        drop(reg);
                        if claimed.new {
                            self.release_claim_now(gw, &sid);
                        }
                        return Err(e.into());
                    }
                };
            // The same key again (the agent checking in) keeps the peer and its WireGuard
            // session as they are.
            let new_peer = previous != Some(key);
            if new_peer {
                if let Some(old) = previous {
                    self.endpoint.remove_peer(&old);
                }
                let a = connected.entry.addresses;
                let allowed = [
                    AllowedIp::host(IpAddr::V4(a.v4)),
                    AllowedIp::host(IpAddr::V6(a.v6)),
                ];
                let mut added = self.endpoint.add_peer(key, &allowed, None, None);
                if let Err(PeerError::DuplicatePeer(_)) = added {
                    // Only a revoked peer still draining its resets can hold a key the
                    // registry just gave this Session: it goes now.
                    self.endpoint.remove_peer(&key);
                    added = self.endpoint.add_peer(key, &allowed, None, None);
                }
                if let Err(e) = added {
                    reg.disconnect(&sid);
                    drop(reg);
                    if claimed.new {
                        self.release_claim_now(gw, &sid);
                    }
                    return Err(e.into());
                }
            }
            (connected.entry, new_peer)
        };
        // A deletion that raced with this connect has already run its hook: undo.
        if gw.session_principal(&sid).is_err() {
            self.sessions_removed(std::slice::from_ref(&sid));
            return Err(ConnectError::SessionGone);
        }
        if new_peer {
            tracing::info!(session = %sid, user = %principal.user.name, address = %entry.addresses.v4, "tunnel peer connected");
        }
        let mut response = self.response(gw, principal, &entry.addresses);
        response.new_peer = new_peer;
        Ok(response)
    }

    /// Releases the claim a failed connect made (the claiming lock is held).
    fn release_claim_now(&self, gw: &Gateway, session: &str) {
        if let Err(e) = gw.store().release_tunnel_address(session) {
            tracing::warn!(
                session,
                "releasing the tunnel address of a failed connect: {e}"
            );
            let _ = self.releases.send(Arc::from(session));
        }
    }

    /// Releases the claims of `sessions` that are not connected here (again); returns those
    /// the store did not take, to retry. Runs off the async threads (store I/O).
    fn release_claims_now(&self, gw: &Gateway, sessions: Vec<Arc<str>>) -> Vec<Arc<str>> {
        let _claiming = self.claiming();
        for (i, session) in sessions.iter().enumerate() {
            if self.registry().get(session).is_some() {
                continue;
            }
            if let Err(e) = gw.store().release_tunnel_address(session) {
                tracing::warn!("releasing tunnel address claims: {e}; retrying");
                return sessions[i..].to_vec();
            }
        }
        Vec::new()
    }

    fn response(
        &self,
        gw: &Gateway,
        principal: &Principal,
        a: &addresses::AddressPair,
    ) -> TunnelConnectResponse {
        let snap = gw.snapshot();
        let map = self.services(&snap);
        let mut services: Vec<TunnelService> = snap
            .services
            .values()
            .filter(|s| visible(&snap, s, principal))
            .filter_map(|s| {
                Some(TunnelService {
                    name: s.name.clone(),
                    address: map.get(&s.name)?.v4.to_string(),
                    port: service_port(s)?,
                    mode: match s.spec.mode {
                        ServiceMode::Http => "HTTP".into(),
                        ServiceMode::Tcp => "TCP".into(),
                    },
                })
            })
            .collect();
        services.sort_by(|x, y| x.name.cmp(&y.name));
        let (_, _, range, range6) = addresses::range_text();
        TunnelConnectResponse {
            address: format!("{}/32", a.v4),
            address6: format!("{}/128", a.v6),
            gateway_public_key: self.public_key().to_base64(),
            endpoint: self.options.public_endpoint.clone(),
            service_range: range,
            service_range6: range6,
            dns: addresses::dns_addresses().v4.to_string(),
            dns_domain: "local".into(),
            keepalive_seconds: self.options.keepalive,
            services,
            new_peer: false,
        }
    }

    /// Removes the peer of `session` (the agent disconnects); true when there was one.
    pub fn disconnect(self: &Arc<Self>, session: &str) -> bool {
        self.revoke(session, "disconnected by the agent")
    }

    /// Called by the state when Sessions are deleted or expire: their peers go at once.
    pub fn sessions_removed(self: &Arc<Self>, sessions: &[String]) {
        for s in sessions {
            self.revoke(s, "session removed");
        }
    }

    /// Cuts `session` off: its address is nobody's from now on, its open connections are
    /// reset (RST to the agent, their tasks and upstream connections stopped), and once the
    /// resets have left, its WireGuard peer is removed and its address freed. True when it
    /// was connected.
    pub fn revoke(self: &Arc<Self>, session: &str, reason: &str) -> bool {
        let (entry, cut) = {
            let mut reg = self.registry();
            let Some(entry) = reg.begin_revoke(session) else {
                return false;
            };
            let cut = self.cuts().remove(session);
            (entry, cut)
        };
        // Other gateways may use the address at once (resets from here never reach them);
        // this gateway keeps it busy until the resets have left.
        let _ = self.releases.send(entry.session.clone());
        let a = entry.addresses;
        let ips = [IpAddr::V4(a.v4), IpAddr::V6(a.v6)];
        // Resets first: a task stopped before would close its stream with a FIN instead.
        let reset = self.stack.reset_connections(&ips);
        if let Some(cut) = cut {
            let _ = cut.send(true);
        }
        tracing::info!(session, reason, connections_reset = reset, address = %a.v4, "tunnel peer revoked");
        let tunnel = self.clone();
        self.runtime.spawn(async move {
            if reset > 0 {
                tunnel.stack.resets_sent(&ips, revoke::RESET_DRAIN).await;
                tokio::time::sleep(revoke::RESET_GRACE).await;
            }
            let mut reg = tunnel.registry();
            if !reg.key_in_use(&entry.key) {
                tunnel.endpoint.remove_peer(&entry.key);
            }
            reg.release(entry.addresses);
        });
        true
    }

    /// Number of connected Sessions.
    pub fn peer_count(&self) -> usize {
        self.registry().len()
    }
}

/// Releases the address claims of revoked peers in the store, in batches, off the paths that
/// revoke (a Session deletion must not wait on the store). While the store is unreachable
/// the releases wait and are retried with backoff; a release for a Session that connected
/// here again meanwhile is skipped (it holds its claim anew).
async fn release_claims(
    gw: Arc<Gateway>,
    tunnel: Arc<Tunnel>,
    mut rx: mpsc::UnboundedReceiver<Arc<str>>,
) {
    let mut pending: Vec<Arc<str>> = Vec::new();
    let mut backoff = RELEASE_RETRY_MIN;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(s) => pending.push(s),
                None => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            pending.push(s);
        }
        pending.sort_unstable();
        pending.dedup();
        let (g, t, batch) = (gw.clone(), tunnel.clone(), std::mem::take(&mut pending));
        pending = tokio::task::spawn_blocking(move || t.release_claims_now(&g, batch))
            .await
            .unwrap_or_default();
        if pending.is_empty() {
            backoff = RELEASE_RETRY_MIN;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RELEASE_RETRY_MAX);
        }
    }
}

/// First and longest pause before releasing address claims is tried again.
const RELEASE_RETRY_MIN: Duration = Duration::from_millis(200);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(5);

async fn expire_idle(tunnel: Arc<Tunnel>) {
    let mut tick = tokio::time::interval(IDLE_CHECK);
    loop {
        tick.tick().await;
        for key in tunnel.endpoint.expire_idle(tunnel.options.idle_timeout) {
            let session = tunnel.registry().session_of_key(&key);
            if let Some(s) = session {
                tunnel.revoke(&s, "idle");
            }
        }
    }
}

/// Cuts connected Sessions that stopped being valid with nothing arriving to notice it:
/// expired, User disabled or deleted, Credential deleted (see [`revoke`]).
async fn sweep(gw: Arc<Gateway>, tunnel: Arc<Tunnel>) {
    let mut tick = tokio::time::interval(revoke::SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Weak<Snapshot> = Weak::new();
    loop {
        tick.tick().await;
        let snap = gw.snapshot();
        let changed = !std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&snap));
        seen = Arc::downgrade(&snap);
        drop(snap);
        let connected: Vec<Arc<str>> = {
            let reg = tunnel.registry();
            if !revoke::due(changed, reg.earliest_expiry(), crate::state::now_unix()) {
                continue;
            }
            reg.sessions().cloned().collect()
        };
        let gone = revoke::revoked(&connected, |s| gw.session_principal(s).map(|_| ()));
        let mut expired = false;
        for (session, why) in gone {
            expired |= why == AuthError::Expired;
            tunnel.revoke(&session, &why.to_string());
        }
        if expired {
            // Also out of the store and `get sessions` now, not at the next 30 s expiry run.
            let gw = gw.clone();
            let done = tokio::task::spawn_blocking(move || gw.expire_sessions()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "expiring sessions failed");
            }
        }
    }
}
