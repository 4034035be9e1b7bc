//! The WireGuard protocol state of many peers behind one UDP socket, without any I/O.
//!
//! The table is a pure state machine (in the spirit of `quinn-proto`): callers feed it
//! datagrams, outgoing IP packets and clock ticks, and it answers with [`Action`]s to
//! perform. That keeps the cryptokey routing rules (who may use which tunnel address)
//! testable in memory and lets the gateway and the agent drive it with any I/O.
//!
//! A peer's protocol state is a boringtun [`Tunn`], which is large (about 11 KB: eight inline
//! session slots with their AEAD keys) whether or not it holds a session. Peers the gateway
//! only answers (no configured endpoint or keepalive: every client session) get one lazily, on
//! their first handshake initiation, and give it back after [`STATE_IDLE_DROP`] without traffic,
//! when none of its sessions can be used any more; a registered but idle peer is then only its
//! key, addresses and counters. Peers we initiate to (the agent's gateway) keep theirs.
//!
//! boringtun encodes our 24-bit peer index in the
//! upper bits of every session index it hands out (`index << 8`, the low byte rotates per
//! session), so the receiver index of a response, cookie reply or data packet leads
//! straight back to the peer. Handshake initiations carry no receiver index: the
//! initiator's static key is decrypted with [`parse_handshake_anon`] and looked up.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};

pub use super::allowed::AllowedIp;
use super::keys::{KeyPair, PublicKey};
pub use super::types::{
    Action, PeerError, PeerId, PeerStats, SendError, TableCounters, TableStats,
};

/// Largest datagram we build or accept: an IP packet up to 65535 bytes plus WireGuard's overhead.
const BUF_SIZE: usize = 65535 + 32;
/// Peer indices are 24 bits: boringtun keeps the low 8 bits of a session index for itself.
const MAX_INDEX: u32 = (1 << 24) - 1;
/// Handshake messages per second, over all peers, before cookie replies are demanded.
pub const DEFAULT_HANDSHAKE_RATE_LIMIT: u64 = 100;
/// WireGuard message type of a cookie reply (first byte, little-endian u32).
const COOKIE_REPLY: u8 = 3;
/// How long a lazily created peer state lives without a datagram either way before it is
/// dropped. WireGuard rejects every session older than 180 s (`REJECT_AFTER_TIME`), and any
/// session alive was made by a handshake that counted as traffic, so nothing usable is lost.
pub const STATE_IDLE_DROP: Duration = Duration::from_secs(180);

struct Peer {
    public_key: PublicKey,
    /// boringtun's state; `None` while a lazy peer is idle (see the module documentation).
    tunn: Option<Box<Tunn>>,
    /// Whether `tunn` is created with the peer and kept: peers we initiate to.
    eager: bool,
    keepalive: Option<u16>,
    /// When `tunn` was last created, so a fresh state is not dropped before it is used.
    state_since: Instant,
    allowed: Vec<AllowedIp>,
    endpoint: Option<SocketAddr>,
    added: Instant,
    last_handshake: Option<Instant>,
    last_rx: Option<Instant>,
    last_tx: Option<Instant>,
    rx_bytes: u64,
    tx_bytes: u64,
    spoofed_dropped: u64,
}

impl Peer {
    /// Creates the boringtun state now if there is none.
    fn ensure_state(
        &mut self,
        keys: &KeyPair,
        limiter: &Arc<RateLimiter>,
        id: PeerId,
        now: Instant,
    ) -> &mut Tunn {
        if self.tunn.is_none() {
            self.state_since = now;
        }
        self.tunn.get_or_insert_with(|| {
            Box::new(Tunn::new(
                keys.private.secret().clone(),
                self.public_key.to_dalek(),
                None,
                self.keepalive,
                id.0,
                Some(limiter.clone()),
            ))
        })
    }

    /// Whether a lazy peer's state has seen no datagram either way for [`STATE_IDLE_DROP`].
    fn state_idle(&self, now: Instant) -> bool {
        let last = [self.last_rx, self.last_tx]
            .into_iter()
            .flatten()
            .fold(self.state_since, Instant::max);
        !self.eager && now.saturating_duration_since(last) >= STATE_IDLE_DROP
    }

    fn source_allowed(&self, src: IpAddr) -> bool {
        self.allowed.iter().any(|a| a.contains(src))
    }

    fn stats(&self, id: PeerId) -> PeerStats {
        PeerStats {
            id,
            public_key: self.public_key,
            endpoint: self.endpoint,
            last_handshake: self.last_handshake,
            last_rx: self.last_rx,
            last_tx: self.last_tx,
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            spoofed_dropped: self.spoofed_dropped,
        }
    }
}

/// Every peer of one WireGuard interface, keyed by public key, by index and by address.
pub struct PeerTable {
    keys: KeyPair,
    rate_limiter: Arc<RateLimiter>,
    peers: HashMap<PeerId, Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    /// Single-address allowances (every client session): an exact lookup.
    hosts: HashMap<IpAddr, PeerId>,
    /// Wider ranges (the agent's route to the gateway): longest prefix wins.
    ranges: Vec<(AllowedIp, PeerId)>,
    next_index: u32,
    counters: TableCounters,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("public_key", &self.keys.public)
            .field("peers", &self.peers.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl PeerTable {
    /// A table for the interface with `keys`, with the default handshake rate limit.
    pub fn new(keys: KeyPair) -> Self {
        Self::with_rate_limit(keys, DEFAULT_HANDSHAKE_RATE_LIMIT)
    }

    /// A table whose peers share one rate limiter: past `handshakes_per_second` handshake
    /// messages (all peers together), initiators must prove their address with a cookie.
    pub fn with_rate_limit(keys: KeyPair, handshakes_per_second: u64) -> Self {
        // A handshake message passes the limiter twice (our pre-check before the costly
        // Diffie-Hellman, then boringtun's own check inside decapsulate), so count double.
        let limiter = RateLimiter::new(&keys.public.to_dalek(), handshakes_per_second * 2);
        PeerTable {
            keys,
            rate_limiter: Arc::new(limiter),
            peers: HashMap::new(),
            by_key: HashMap::new(),
            hosts: HashMap::new(),
            ranges: Vec::new(),
            next_index: 1 + rand::random::<u32>() % MAX_INDEX,
            counters: TableCounters::default(),
            buf: vec![0; BUF_SIZE],
        }
    }

    /// This interface's public key, which peers configure.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public
    }

    /// Number of configured peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is configured.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peer with this public key, if configured.
    pub fn peer_id(&self, public_key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(public_key).copied()
    }

    /// The public key of a peer, to map a delivered packet to its session.
    pub fn peer_key(&self, id: PeerId) -> Option<PublicKey> {
        self.peers.get(&id).map(|p| p.public_key)
    }

    /// Adds a peer that may use `allowed_ips` as inner source and receives packets for them.
    ///
    /// `endpoint` is where to send before the peer has spoken (the agent knows the gateway's
    /// address; the gateway learns clients' addresses from their handshakes).
    /// `keepalive` is WireGuard's persistent keepalive in seconds, for peers behind NAT.
    pub fn add_peer(
        &mut self,
        public_key: PublicKey,
        allowed_ips: &[AllowedIp],
        endpoint: Option<SocketAddr>,
        keepalive: Option<u16>,
        now: Instant,
    ) -> Result<PeerId, PeerError> {
        if self.by_key.contains_key(&public_key) {
            return Err(PeerError::DuplicatePeer(public_key));
        }
        for a in allowed_ips {
            let taken = if a.is_host() {
                self.hosts.contains_key(&a.addr)
            } else {
                self.ranges.iter().any(|(r, _)| r == a)
            };
            if taken {
                return Err(PeerError::AddressInUse(*a));
            }
        }
        let id = self.allocate_index()?;
        let keepalive = keepalive.filter(|k| *k > 0);
        let mut peer = Peer {
            public_key,
            tunn: None,
            eager: endpoint.is_some() || keepalive.is_some(),
            keepalive,
            state_since: now,
            allowed: allowed_ips.to_vec(),
            endpoint,
            added: now,
            last_handshake: None,
            last_rx: None,
            last_tx: None,
            rx_bytes: 0,
            tx_bytes: 0,
            spoofed_dropped: 0,
        };
        if peer.eager {
            peer.ensure_state(&self.keys, &self.rate_limiter, id, now);
        }
        for a in allowed_ips {
            if a.is_host() {
                self.hosts.insert(a.addr, id);
            } else {
                self.ranges.push((*a, id));
            }
        }
        self.ranges
            .sort_by_key(|(r, _)| std::cmp::Reverse(r.prefix_len));
        self.by_key.insert(public_key, id);
        self.peers.insert(id, peer);
        Ok(id)
    }

    fn allocate_index(&mut self) -> Result<PeerId, PeerError> {
        if self.peers.len() >= MAX_INDEX as usize {
            return Err(PeerError::IndicesExhausted);
        }
        // Walk forward from a random start so a removed peer's index is not reused at once
        // (late datagrams for it would only fail decryption, but this keeps logs clear).
        loop {
            let candidate = self.next_index;
            self.next_index = if candidate >= MAX_INDEX {
                1
            } else {
                candidate + 1
            };
            if !self.peers.contains_key(&PeerId(candidate)) {
                return Ok(PeerId(candidate));
            }
        }
    }

    /// Removes a peer at once: its sessions, routes and source allowances go with it.
    pub fn remove_peer(&mut self, public_key: &PublicKey) -> Option<PeerId> {
        let id = self.by_key.remove(public_key)?;
        self.peers.remove(&id);
        self.hosts.retain(|_, p| *p != id);
        self.ranges.retain(|(_, p)| *p != id);
        Some(id)
    }

    /// Removes peers with no authenticated datagram for `max_idle` (counting from when they
    /// were added if never heard from), so abandoned sessions free their addresses.
    pub fn expire_idle(&mut self, now: Instant, max_idle: Duration) -> Vec<PublicKey> {
        let idle: Vec<PublicKey> = self
            .peers
            .values()
            .filter(|p| now.saturating_duration_since(p.last_rx.unwrap_or(p.added)) >= max_idle)
            .map(|p| p.public_key)
            .collect();
        for key in &idle {
            self.remove_peer(key);
        }
        idle
    }

    /// The peer whose allowed addresses contain `dst` (exact host first, then longest prefix).
    pub fn route(&self, dst: IpAddr) -> Option<PeerId> {
        if let Some(id) = self.hosts.get(&dst) {
            return Some(*id);
        }
        self.ranges
            .iter()
            .find(|(r, _)| r.contains(dst))
            .map(|(_, id)| *id)
    }

    /// Processes one UDP datagram received from `from`.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.counters.invalid_dropped += 1;
                return actions;
            }
        };
        let is_handshake = matches!(
            packet,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        );
        if is_handshake {
            // MAC1 check and, under load, the cookie demand, before any Diffie-Hellman.
            match self
                .rate_limiter
                .verify_packet(Some(from.ip()), datagram, &mut self.buf)
            {
                Ok(_) => {}
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    self.counters.cookie_replies += 1;
                    actions.push(Action::SendDatagram {
                        to: from,
                        bytes: cookie.to_vec(),
                    });
                    return actions;
                }
                Err(_) => {
                    self.counters.invalid_dropped += 1;
                    return actions;
                }
            }
        }
        let id = match &packet {
            Packet::HandshakeInit(init) => {
                let half = match parse_handshake_anon(
                    self.keys.private.secret(),
                    &self.keys.public.to_dalek(),
                    init,
                ) {
                    Ok(h) => h,
                    Err(_) => {
                        self.counters.invalid_dropped += 1;
                        return actions;
                    }
                };
                match self
                    .by_key
                    .get(&PublicKey::from_bytes(half.peer_static_public))
                {
                    Some(id) => *id,
                    None => {
                        self.counters.unknown_peer_dropped += 1;
                        return actions;
                    }
                }
            }
            Packet::HandshakeResponse(p) => PeerId(p.receiver_idx >> 8),
            Packet::PacketCookieReply(p) => PeerId(p.receiver_idx >> 8),
            Packet::PacketData(p) => PeerId(p.receiver_idx >> 8),
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            self.counters.unknown_peer_dropped += 1;
            return actions;
        };
        // A peer without state can only start over with a handshake initiation; anything
        // else belongs to a session that no longer exists.
        let fresh = peer.tunn.is_none();
        if fresh && !matches!(packet, Packet::HandshakeInit(_)) {
            self.counters.invalid_dropped += 1;
            return actions;
        }
        let tunn = peer.ensure_state(&self.keys, &self.rate_limiter, id, now);

        let mut handshake_done = is_handshake;
        match tunn.decapsulate(Some(from.ip()), datagram, &mut self.buf) {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::trace!(peer = id.0, error = ?e, "dropped WireGuard datagram");
                self.counters.invalid_dropped += 1;
                if fresh {
                    peer.tunn = None;
                }
                return actions;
            }
            TunnResult::WriteToNetwork(bytes) if bytes.first() == Some(&COOKIE_REPLY) => {
                // boringtun's own limiter check (the second one) tipped into "under load":
                // the sender is not authenticated yet, so it must not move the endpoint.
                self.counters.cookie_replies += 1;
                if fresh {
                    peer.tunn = None;
                }
                actions.push(Action::SendDatagram {
                    to: from,
                    bytes: bytes.to_vec(),
                });
                return actions;
            }
            TunnResult::WriteToNetwork(bytes) => {
                actions.push(Action::SendDatagram {
                    to: from,
                    bytes: bytes.to_vec(),
                });
                // Packets queued while the handshake ran go out now.
                while let TunnResult::WriteToNetwork(bytes) =
                    tunn.decapsulate(None, &[], &mut self.buf)
                {
                    actions.push(Action::SendDatagram {
                        to: from,
                        bytes: bytes.to_vec(),
                    });
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                handshake_done = false;
                deliver(
                    peer,
                    id,
                    IpAddr::V4(src),
                    packet,
                    &mut self.counters,
                    &mut actions,
                );
            }
            TunnResult::WriteToTunnelV6(packet, src) => {
                handshake_done = false;
                deliver(
                    peer,
                    id,
                    IpAddr::V6(src),
                    packet,
                    &mut self.counters,
                    &mut actions,
                );
            }
        }
        // Authenticated: the peer is where this datagram came from (roaming). Except an
        // initiation to a fresh state: with no earlier timestamp to compare, it may be a replay,
        // so the endpoint and the idle clock wait for the key-confirmation data packet.
        if !(fresh && is_handshake) {
            peer.endpoint = Some(from);
            peer.last_rx = Some(now);
        }
        peer.rx_bytes += datagram.len() as u64;
        if handshake_done {
            peer.last_handshake = Some(now);
        }
        for a in &actions {
            if let Action::SendDatagram { bytes, .. } = a {
                peer.last_tx = Some(now);
                peer.tx_bytes += bytes.len() as u64;
            }
        }
        actions
    }

    /// Encrypts an outgoing IP packet for the peer owning its destination address.
    ///
    /// Nothing queues here: before a session exists boringtun keeps the packet and this
    /// returns the handshake initiation to send instead (or nothing if one is in flight).
    pub fn send_packet(
        &mut self,
        packet: &[u8],
        now: Instant,
    ) -> Result<Option<Action>, SendError> {
        let dst = Tunn::dst_address(packet).ok_or(SendError::NotIp)?;
        let id = self.route(dst).ok_or(SendError::NoRoute(dst))?;
        let peer = self.peers.get_mut(&id).ok_or(SendError::NoRoute(dst))?;
        let to = peer.endpoint;
        if peer.tunn.is_none() && to.is_none() {
            // Never heard from: nowhere to start a handshake, and nothing to queue it in.
            return Err(SendError::NoEndpoint(id));
        }
        let tunn = peer.ensure_state(&self.keys, &self.rate_limiter, id, now);
        match tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(bytes) => {
                let to = to.ok_or(SendError::NoEndpoint(id))?;
                peer.last_tx = Some(now);
                peer.tx_bytes += bytes.len() as u64;
                Ok(Some(Action::SendDatagram {
                    to,
                    bytes: bytes.to_vec(),
                }))
            }
            TunnResult::Err(e) => Err(SendError::Encrypt(format!("{e:?}"))),
            _ => Ok(None),
        }
    }

    /// Runs every peer's timers: handshake retries, rekeys and keepalives. Call every 100-250 ms.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        self.rate_limiter.reset_count();
        let mut actions = Vec::new();
        for peer in self.peers.values_mut() {
            if peer.state_idle(now) {
                peer.tunn = None;
            }
            let Some(tunn) = peer.tunn.as_mut() else {
                continue;
            };
            match tunn.update_timers(&mut self.buf) {
                TunnResult::WriteToNetwork(bytes) => {
                    if let Some(to) = peer.endpoint {
                        peer.last_tx = Some(now);
                        peer.tx_bytes += bytes.len() as u64;
                        actions.push(Action::SendDatagram {
                            to,
                            bytes: bytes.to_vec(),
                        });
                    }
                }
                // Expired sessions stay quiet until new traffic starts a handshake.
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => {
                    tracing::debug!(peer = ?peer.public_key, error = ?e, "WireGuard timer error")
                }
                _ => {}
            }
        }
        actions
    }

    /// Counters and per-peer statistics.
    pub fn stats(&self) -> TableStats {
        let mut peers: Vec<PeerStats> = self.peers.iter().map(|(id, p)| p.stats(*id)).collect();
        peers.sort_by_key(|p| p.id);
        TableStats {
            counters: self.counters.clone(),
            peers,
        }
    }

    /// Number of peers holding protocol state (a boringtun `Tunn`): those that handshook in
    /// the last [`STATE_IDLE_DROP`], plus the peers we initiate to. The rest cost only their
    /// keys, addresses and counters.
    pub fn peers_with_state(&self) -> usize {
        self.peers.values().filter(|p| p.tunn.is_some()).count()
    }

    /// Statistics of one peer.
    pub fn peer_stats(&self, public_key: &PublicKey) -> Option<PeerStats> {
        let id = self.peer_id(public_key)?;
        self.peers.get(&id).map(|p| p.stats(id))
    }
}

fn deliver(
    peer: &mut Peer,
    id: PeerId,
    src: IpAddr,
    packet: &[u8],
    counters: &mut TableCounters,
    actions: &mut Vec<Action>,
) {
    if peer.source_allowed(src) {
        actions.push(Action::DeliverPacket {
            peer: id,
            packet: packet.to_vec(),
        });
    } else {
        tracing::debug!(peer = ?peer.public_key, %src, "dropped packet with spoofed inner source");
        peer.spoofed_dropped += 1;
        counters.spoofed_dropped += 1;
    }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
