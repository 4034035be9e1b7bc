//! The WireGuard protocol state of many peers behind one UDP socket, without any I/O.
//!
//! The table is a pure state machine (in the spirit of `quinn-proto`): callers feed it
//! datagrams, outgoing IP packets and clock ticks, and it answers with [`Action`]s to
//! perform. That keeps the cryptokey routing rules (who may use which tunnel address)
//! testable in memory and lets the gateway and the agent drive it with any I/O.
//!
//! Each peer owns a boringtun [`Tunn`]; boringtun encodes our 24-bit peer index in the
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

use super::keys::{KeyPair, PublicKey};

/// Largest datagram we build or accept: an IP packet up to 65535 bytes plus WireGuard's overhead.
const BUF_SIZE: usize = 65535 + 32;
/// Peer indices are 24 bits: boringtun keeps the low 8 bits of a session index for itself.
const MAX_INDEX: u32 = (1 << 24) - 1;
/// Handshake messages per second, over all peers, before cookie replies are demanded.
pub const DEFAULT_HANDSHAKE_RATE_LIMIT: u64 = 100;
/// WireGuard message type of a cookie reply (first byte, little-endian u32).
const COOKIE_REPLY: u8 = 3;

/// Identifies a peer inside one table; it is also the 24-bit index in its session indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// An address range a peer may use as inner source and that routes to it (cryptokey routing).
///
/// The gateway gives each session a /32 and a /128; the agent gives the gateway whole ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowedIp {
    addr: IpAddr,
    prefix_len: u8,
}

impl AllowedIp {
    /// A range; host bits of `addr` are cleared so equal ranges compare equal.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, PeerError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(PeerError::PrefixLength { addr, prefix_len });
        }
        Ok(AllowedIp {
            addr: mask(addr, prefix_len),
            prefix_len,
        })
    }

    /// A single address (/32 or /128), the usual allowance for a client session.
    pub fn host(addr: IpAddr) -> Self {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        AllowedIp { addr, prefix_len }
    }

    /// Whether `ip` falls in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }

    fn is_host(&self) -> bool {
        self.prefix_len == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix_len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix_len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix_len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl From<IpAddr> for AllowedIp {
    fn from(addr: IpAddr) -> Self {
        AllowedIp::host(addr)
    }
}

impl std::fmt::Display for AllowedIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What the caller must do after feeding the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes as one UDP datagram.
    SendDatagram {
        /// The peer's current endpoint (or the source of the datagram being answered).
        to: SocketAddr,
        /// A complete WireGuard message.
        bytes: Vec<u8>,
    },
    /// A decrypted IP packet whose inner source belongs to `peer`: hand it to the network stack.
    DeliverPacket {
        /// The authenticated sender; identity in the tunnel comes from here.
        peer: PeerId,
        /// The IPv4 or IPv6 packet, trimmed to its header's length.
        packet: Vec<u8>,
    },
}

/// Why the table refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Each public key is one peer; replace by removing first.
    #[error("peer {0} is already configured")]
    DuplicatePeer(PublicKey),
    /// Two peers cannot own the same range: routing and source checks would be ambiguous.
    #[error("allowed address {0} already belongs to another peer")]
    AddressInUse(AllowedIp),
    /// A prefix longer than the address family allows.
    #[error("prefix length {prefix_len} is too long for {addr}")]
    PrefixLength {
        /// The address given.
        addr: IpAddr,
        /// The prefix length given.
        prefix_len: u8,
    },
    /// All 2^24 - 1 peer indices are in use.
    #[error("no free peer index")]
    IndicesExhausted,
}

/// Why an outgoing IP packet could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The bytes are not an IPv4 or IPv6 packet with a complete header.
    #[error("not an IP packet")]
    NotIp,
    /// No peer's allowed addresses contain the destination.
    #[error("no peer routes {0}")]
    NoRoute(IpAddr),
    /// The peer exists but has never been heard from and has no configured endpoint.
    #[error("peer {0:?} has no known endpoint yet")]
    NoEndpoint(PeerId),
    /// boringtun refused to encrypt (for example the packet is too large for the buffer).
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// Counters and times for one peer, for the control API and idle expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    /// The table's handle for the peer.
    pub id: PeerId,
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Where its last authenticated datagram came from (or the configured endpoint).
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed, as far as this table saw.
    pub last_handshake: Option<Instant>,
    /// Last authenticated datagram from the peer.
    pub last_rx: Option<Instant>,
    /// Last datagram sent to the peer.
    pub last_tx: Option<Instant>,
    /// Bytes of authenticated WireGuard datagrams received.
    pub rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent.
    pub tx_bytes: u64,
    /// Decrypted packets dropped because their inner source was not the peer's.
    pub spoofed_dropped: u64,
}

/// Table-wide counters: what was dropped and why, so abuse is visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableCounters {
    /// Datagrams that failed parsing, MACs or decryption.
    pub invalid_dropped: u64,
    /// Handshake initiations from keys not in the table, or indices of no peer.
    pub unknown_peer_dropped: u64,
    /// Decrypted packets whose inner source did not belong to the sending peer.
    pub spoofed_dropped: u64,
    /// Cookie replies sent because handshakes arrived faster than the rate limit.
    pub cookie_replies: u64,
}

/// A snapshot of the table's counters and peers.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStats {
    /// Table-wide drop and cookie counters.
    pub counters: TableCounters,
    /// One entry per peer, ordered by id.
    pub peers: Vec<PeerStats>,
}

struct Peer {
    public_key: PublicKey,
    tunn: Tunn,
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
        let tunn = Tunn::new(
            self.keys.private.secret().clone(),
            public_key.to_dalek(),
            None,
            keepalive.filter(|k| *k > 0),
            id.0,
            Some(self.rate_limiter.clone()),
        );
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
        self.peers.insert(
            id,
            Peer {
                public_key,
                tunn,
                allowed: allowed_ips.to_vec(),
                endpoint,
                added: now,
                last_handshake: None,
                last_rx: None,
                last_tx: None,
                rx_bytes: 0,
                tx_bytes: 0,
                spoofed_dropped: 0,
            },
        );
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

        let mut handshake_done = is_handshake;
        match peer
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut self.buf)
        {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::trace!(peer = id.0, error = ?e, "dropped WireGuard datagram");
                self.counters.invalid_dropped += 1;
                return actions;
            }
            TunnResult::WriteToNetwork(bytes) if bytes.first() == Some(&COOKIE_REPLY) => {
                // boringtun's own limiter check (the second one) tipped into "under load":
                // the sender is not authenticated yet, so it must not move the endpoint.
                self.counters.cookie_replies += 1;
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
                    peer.tunn.decapsulate(None, &[], &mut self.buf)
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
        // Authenticated: the peer is where this datagram came from (roaming).
        peer.endpoint = Some(from);
        peer.last_rx = Some(now);
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
        match peer.tunn.encapsulate(packet, &mut self.buf) {
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
            match peer.tunn.update_timers(&mut self.buf) {
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
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A minimal IPv4/UDP packet; boringtun only reads version, length and addresses.
    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&2000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload.len()];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = 59; // no next header
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p[40..].copy_from_slice(payload);
        p
    }

    const GW: usize = 0;
    const C1: usize = 1;
    const C2: usize = 2;
    const C1_V4: [u8; 4] = [10, 0, 0, 2];
    const C2_V4: [u8; 4] = [10, 0, 0, 3];
    const SVC_V4: [u8; 4] = [10, 1, 0, 5];

    fn c1_v6() -> Ipv6Addr {
        "fd00::2".parse().unwrap()
    }
    fn svc_v6() -> Ipv6Addr {
        "fd00:1::5".parse().unwrap()
    }

    /// Tables wired together in memory: datagrams to a node's address reach its table.
    struct Net {
        nodes: Vec<(SocketAddr, PeerTable)>,
        delivered: Vec<Vec<(PeerId, Vec<u8>)>>,
        /// Every datagram sent, as (from node, to address).
        sent: Vec<(usize, SocketAddr)>,
        lost: usize,
    }

    impl Net {
        /// A gateway with peers C1 and C2, and both clients configured for the gateway.
        fn new(client_keepalive: Option<u16>) -> Net {
            let now = Instant::now();
            let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
            let keys: Vec<KeyPair> = (0..3).map(|_| KeyPair::generate()).collect();
            let mut gw = PeerTable::new(keys[GW].clone());
            gw.add_peer(
                keys[C1].public,
                &[IpAddr::from(C1_V4).into(), IpAddr::V6(c1_v6()).into()],
                None,
                None,
                now,
            )
            .unwrap();
            gw.add_peer(
                keys[C2].public,
                &[IpAddr::from(C2_V4).into()],
                None,
                None,
                now,
            )
            .unwrap();
            let mut nodes = vec![(addr(51820), gw)];
            for (i, key) in keys.iter().enumerate().skip(1) {
                let mut client = PeerTable::new(key.clone());
                client
                    .add_peer(
                        keys[GW].public,
                        &[
                            AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap(),
                            AllowedIp::new(IpAddr::V6("fd00:1::".parse().unwrap()), 64).unwrap(),
                        ],
                        Some(addr(51820)),
                        client_keepalive,
                        now,
                    )
                    .unwrap();
                nodes.push((addr(40000 + i as u16), client));
            }
            Net {
                delivered: vec![Vec::new(); nodes.len()],
                nodes,
                sent: Vec::new(),
                lost: 0,
            }
        }

        fn t(&self, node: usize) -> &PeerTable {
            &self.nodes[node].1
        }

        fn table(&mut self, node: usize) -> &mut PeerTable {
            &mut self.nodes[node].1
        }

        /// Performs `actions` produced by `node`, and everything they cause, until quiet.
        fn run(&mut self, node: usize, actions: Vec<Action>) {
            let mut queue: Vec<(usize, Action)> = actions.into_iter().map(|a| (node, a)).collect();
            while !queue.is_empty() {
                let (from_node, action) = queue.remove(0);
                match action {
                    Action::DeliverPacket { peer, packet } => {
                        self.delivered[from_node].push((peer, packet))
                    }
                    Action::SendDatagram { to, bytes } => {
                        self.sent.push((from_node, to));
                        let from = self.nodes[from_node].0;
                        let Some(target) = self.nodes.iter().position(|(a, _)| *a == to) else {
                            self.lost += 1;
                            continue;
                        };
                        let out =
                            self.nodes[target]
                                .1
                                .handle_datagram(from, &bytes, Instant::now());
                        queue.extend(out.into_iter().map(|a| (target, a)));
                    }
                }
            }
        }

        fn send(&mut self, node: usize, packet: &[u8]) {
            let action = self
                .table(node)
                .send_packet(packet, Instant::now())
                .unwrap();
            self.run(node, action.into_iter().collect());
        }

        fn take_delivered(&mut self, node: usize) -> Vec<(PeerId, Vec<u8>)> {
            std::mem::take(&mut self.delivered[node])
        }

        fn key(&self, node: usize) -> PublicKey {
            self.nodes[node].1.public_key()
        }
    }

    #[test]
    fn handshake_then_data_both_ways_for_two_peers() {
        let mut net = Net::new(None);
        let c1_id = net.t(GW).peer_id(&net.key(C1)).unwrap();
        let c2_id = net.t(GW).peer_id(&net.key(C2)).unwrap();
        assert_ne!(c1_id, c2_id);

        // The first packet starts the handshake and is sent once it completes.
        let up = ipv4(C1_V4, SVC_V4, b"hello");
        net.send(C1, &up);
        assert_eq!(net.take_delivered(GW), vec![(c1_id, up)]);
        let stats = net.t(GW).peer_stats(&net.key(C1)).unwrap();
        assert!(stats.last_handshake.is_some());
        assert_eq!(stats.endpoint, Some(net.nodes[C1].0));

        // The gateway answers by destination address, to the endpoint it learnt.
        let down = ipv4(SVC_V4, C1_V4, b"world");
        net.send(GW, &down);
        let gw_peer_at_c1 = net.t(C1).peer_id(&net.key(GW)).unwrap();
        assert_eq!(net.take_delivered(C1), vec![(gw_peer_at_c1, down)]);

        // IPv6 inside the same session.
        let up6 = ipv6(c1_v6(), svc_v6(), b"six");
        net.send(C1, &up6);
        assert_eq!(net.take_delivered(GW), vec![(c1_id, up6)]);

        // The second peer gets its own session on the same gateway table.
        let up2 = ipv4(C2_V4, SVC_V4, b"second");
        net.send(C2, &up2);
        assert_eq!(net.take_delivered(GW), vec![(c2_id, up2)]);
        let down2 = ipv4(SVC_V4, C2_V4, b"back");
        net.send(GW, &down2);
        assert_eq!(net.take_delivered(C2).len(), 1);
        assert!(net.take_delivered(C1).is_empty());
        assert_eq!(net.lost, 0);

        let stats = net.table(GW).stats();
        assert_eq!(stats.peers.len(), 2);
        assert!(stats.peers.iter().all(|p| p.rx_bytes > 0 && p.tx_bytes > 0));
        assert_eq!(stats.counters, TableCounters::default());
    }

    #[test]
    fn spoofed_inner_source_is_dropped() {
        let mut net = Net::new(None);
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"ok"));
        assert_eq!(net.take_delivered(GW).len(), 1);
        // C1 claims C2's address, then an address nobody owns.
        net.send(C1, &ipv4(C2_V4, SVC_V4, b"spoof"));
        net.send(C1, &ipv4([192, 168, 1, 1], SVC_V4, b"spoof"));
        assert!(net.take_delivered(GW).is_empty());
        let stats = net.table(GW).stats();
        assert_eq!(stats.counters.spoofed_dropped, 2);
        let c1 = net.t(GW).peer_stats(&net.key(C1)).unwrap();
        assert_eq!(c1.spoofed_dropped, 2);
    }

    #[test]
    fn roaming_client_keeps_working_and_replies_follow() {
        let mut net = Net::new(None);
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"before"));
        assert_eq!(net.take_delivered(GW).len(), 1);

        let new_addr = SocketAddr::from(([127, 0, 0, 9], 40999));
        net.nodes[C1].0 = new_addr;
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"after"));
        assert_eq!(net.take_delivered(GW).len(), 1);
        assert_eq!(
            net.t(GW).peer_stats(&net.key(C1)).unwrap().endpoint,
            Some(new_addr)
        );

        net.sent.clear();
        net.send(GW, &ipv4(SVC_V4, C1_V4, b"reply"));
        assert_eq!(net.sent, vec![(GW, new_addr)]);
        assert_eq!(net.take_delivered(C1).len(), 1);
    }

    #[test]
    fn removed_peer_gets_nothing_delivered() {
        let mut net = Net::new(None);
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"one"));
        assert_eq!(net.take_delivered(GW).len(), 1);

        let key = net.key(C1);
        assert!(net.table(GW).remove_peer(&key).is_some());
        assert!(net.table(GW).remove_peer(&key).is_none());
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"two"));
        assert!(net.take_delivered(GW).is_empty());
        assert_eq!(net.table(GW).stats().counters.unknown_peer_dropped, 1);
        assert_eq!(
            net.table(GW)
                .send_packet(&ipv4(SVC_V4, C1_V4, b"x"), Instant::now()),
            Err(SendError::NoRoute(IpAddr::from(C1_V4)))
        );
        // Its address is free for the next session.
        let again = KeyPair::generate().public;
        net.table(GW)
            .add_peer(
                again,
                &[IpAddr::from(C1_V4).into()],
                None,
                None,
                Instant::now(),
            )
            .unwrap();
    }

    #[test]
    fn persistent_keepalive_comes_from_tick() {
        let mut net = Net::new(Some(1));
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"x"));
        assert_eq!(net.take_delivered(GW).len(), 1);
        let before = net.t(GW).peer_stats(&net.key(C1)).unwrap().rx_bytes;
        // Nothing to send right away.
        assert!(net.table(C2).tick(Instant::now()).len() <= 1);
        std::thread::sleep(Duration::from_millis(1100));
        let actions = net.table(C1).tick(Instant::now());
        assert_eq!(actions.len(), 1, "{actions:?}");
        let Action::SendDatagram { to, bytes } = &actions[0] else {
            panic!("expected a datagram")
        };
        assert_eq!(*to, net.nodes[GW].0);
        assert_eq!(bytes.len(), 32, "an empty data packet is a keepalive");
        net.run(C1, actions);
        assert!(net.take_delivered(GW).is_empty());
        let after = net.t(GW).peer_stats(&net.key(C1)).unwrap().rx_bytes;
        assert_eq!(after, before + 32);
        // The gateway peer has no keepalive configured: its tick stays quiet.
        assert!(net.table(GW).tick(Instant::now()).is_empty());
    }

    #[test]
    fn tampered_datagram_is_dropped_and_does_not_move_the_endpoint() {
        let mut net = Net::new(None);
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"x"));
        assert_eq!(net.take_delivered(GW).len(), 1);
        let Some(Action::SendDatagram { mut bytes, .. }) = net
            .table(C1)
            .send_packet(&ipv4(C1_V4, SVC_V4, b"payload"), Instant::now())
            .unwrap()
        else {
            panic!("expected a datagram")
        };
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let attacker = SocketAddr::from(([127, 0, 0, 66], 666));
        let out = net
            .table(GW)
            .handle_datagram(attacker, &bytes, Instant::now());
        assert!(out.is_empty());
        assert_eq!(net.table(GW).stats().counters.invalid_dropped, 1);
        assert_eq!(
            net.t(GW).peer_stats(&net.key(C1)).unwrap().endpoint,
            Some(net.nodes[C1].0)
        );
        // Garbage is dropped too.
        assert!(net
            .table(GW)
            .handle_datagram(attacker, b"\x04junk", Instant::now())
            .is_empty());
        assert_eq!(net.table(GW).stats().counters.invalid_dropped, 2);
    }

    #[test]
    fn initiation_from_unknown_key_is_ignored() {
        let mut net = Net::new(None);
        let stranger = KeyPair::generate();
        let mut table = PeerTable::new(stranger);
        table
            .add_peer(
                net.key(GW),
                &[AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap()],
                Some(net.nodes[GW].0),
                None,
                Instant::now(),
            )
            .unwrap();
        let init = table
            .send_packet(&ipv4([10, 0, 0, 7], SVC_V4, b"x"), Instant::now())
            .unwrap()
            .unwrap();
        let Action::SendDatagram { bytes, .. } = init else {
            panic!()
        };
        let from = SocketAddr::from(([127, 0, 0, 7], 7));
        assert!(net
            .table(GW)
            .handle_datagram(from, &bytes, Instant::now())
            .is_empty());
        assert_eq!(net.table(GW).stats().counters.unknown_peer_dropped, 1);
    }

    #[test]
    fn cookie_reply_under_load() {
        let keys = KeyPair::generate();
        let client_keys = KeyPair::generate();
        let now = Instant::now();
        let mut gw = PeerTable::with_rate_limit(keys.clone(), 1);
        gw.add_peer(
            client_keys.public,
            &[IpAddr::from(C1_V4).into()],
            None,
            None,
            now,
        )
        .unwrap();
        let gw_addr = SocketAddr::from(([127, 0, 0, 1], 51820));
        let mut client = PeerTable::new(client_keys);
        client
            .add_peer(
                keys.public,
                &[IpAddr::from(SVC_V4).into()],
                Some(gw_addr),
                None,
                now,
            )
            .unwrap();
        let Some(Action::SendDatagram { bytes: init, .. }) =
            client.send_packet(&ipv4(C1_V4, SVC_V4, b"x"), now).unwrap()
        else {
            panic!()
        };
        let from = SocketAddr::from(([127, 0, 0, 2], 40000));
        // Within the limit: answered with a handshake response.
        let first = gw.handle_datagram(from, &init, now);
        assert!(matches!(&first[..], [Action::SendDatagram { bytes, .. }] if bytes.len() == 92));
        // Over the limit: a cookie reply (64 bytes), before any Diffie-Hellman.
        let second = gw.handle_datagram(from, &init, now);
        let [Action::SendDatagram { to, bytes: cookie }] = &second[..] else {
            panic!("{second:?}")
        };
        assert_eq!(*to, from);
        assert_eq!(cookie.len(), 64);
        assert_eq!(gw.stats().counters.cookie_replies, 1);
        // The initiator accepts the cookie (it will add MAC2 to its next initiation).
        assert!(client.handle_datagram(gw_addr, cookie, now).is_empty());
        assert_eq!(client.stats().counters, TableCounters::default());
    }

    #[test]
    fn cookie_from_second_limiter_check_does_not_move_endpoint() {
        let keys = KeyPair::generate();
        let client_keys = KeyPair::generate();
        let now = Instant::now();
        let mut gw = PeerTable::with_rate_limit(keys.clone(), 1);
        let configured = SocketAddr::from(([192, 0, 2, 1], 51820));
        gw.add_peer(
            client_keys.public,
            &[IpAddr::from(C1_V4).into()],
            Some(configured),
            None,
            now,
        )
        .unwrap();
        let init = |k: KeyPair| {
            let mut t = PeerTable::new(k);
            t.add_peer(
                keys.public,
                &[IpAddr::from(SVC_V4).into()],
                Some(configured),
                None,
                now,
            )
            .unwrap();
            match t.send_packet(&ipv4(C1_V4, SVC_V4, b"x"), now).unwrap() {
                Some(Action::SendDatagram { bytes, .. }) => bytes,
                other => panic!("{other:?}"),
            }
        };
        let from = SocketAddr::from(([127, 0, 0, 2], 40000));
        // A stranger's initiation uses up the pre-check's budget...
        assert!(gw
            .handle_datagram(from, &init(KeyPair::generate()), now)
            .is_empty());
        // ...so this one passes our check but boringtun's own check answers with a cookie.
        let out = gw.handle_datagram(from, &init(client_keys.clone()), now);
        assert!(matches!(&out[..], [Action::SendDatagram { bytes, .. }] if bytes.len() == 64));
        let stats = gw.peer_stats(&client_keys.public).unwrap();
        assert_eq!(stats.endpoint, Some(configured));
        assert_eq!(stats.last_rx, None);
    }

    #[test]
    fn idle_peers_expire() {
        let mut net = Net::new(None);
        net.send(C1, &ipv4(C1_V4, SVC_V4, b"x"));
        let later = Instant::now() + Duration::from_secs(120);
        // C2 never spoke, C1 spoke just now: with 60 s both are idle two minutes later.
        let mut expired = net.table(GW).expire_idle(later, Duration::from_secs(60));
        expired.sort();
        let mut expected = vec![net.key(C1), net.key(C2)];
        expected.sort();
        assert_eq!(expired, expected);
        assert!(net.table(GW).is_empty());
        // A fresh peer is not idle yet.
        let k = KeyPair::generate().public;
        net.table(GW)
            .add_peer(k, &[], None, None, Instant::now())
            .unwrap();
        assert!(net
            .table(GW)
            .expire_idle(Instant::now(), Duration::from_secs(60))
            .is_empty());
    }

    #[test]
    fn allowed_ips_and_routing() {
        let a = AllowedIp::new(IpAddr::from([10, 1, 2, 3]), 16).unwrap();
        assert_eq!(a.to_string(), "10.1.0.0/16");
        assert!(a.contains(IpAddr::from([10, 1, 255, 1])));
        assert!(!a.contains(IpAddr::from([10, 2, 0, 1])));
        assert!(!a.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(AllowedIp::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
            .unwrap()
            .contains(IpAddr::from([8, 8, 8, 8])));
        assert!(matches!(
            AllowedIp::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 33),
            Err(PeerError::PrefixLength { .. })
        ));

        let now = Instant::now();
        let mut t = PeerTable::new(KeyPair::generate());
        let wide = t
            .add_peer(
                KeyPair::generate().public,
                &[AllowedIp::new(IpAddr::from([10, 0, 0, 0]), 8).unwrap()],
                None,
                None,
                now,
            )
            .unwrap();
        let narrow = t
            .add_peer(
                KeyPair::generate().public,
                &[AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap()],
                None,
                None,
                now,
            )
            .unwrap();
        let host_key = KeyPair::generate().public;
        let host = t
            .add_peer(
                host_key,
                &[IpAddr::from([10, 1, 0, 1]).into()],
                None,
                None,
                now,
            )
            .unwrap();
        assert!(wide.0 <= MAX_INDEX && narrow.0 <= MAX_INDEX && host.0 <= MAX_INDEX);
        assert_eq!(t.route(IpAddr::from([10, 1, 0, 1])), Some(host));
        assert_eq!(t.route(IpAddr::from([10, 1, 0, 2])), Some(narrow));
        assert_eq!(t.route(IpAddr::from([10, 2, 0, 2])), Some(wide));
        assert_eq!(t.route(IpAddr::from([11, 0, 0, 1])), None);
        assert_eq!(
            t.add_peer(host_key, &[], None, None, now),
            Err(PeerError::DuplicatePeer(host_key))
        );
        assert_eq!(
            t.add_peer(
                KeyPair::generate().public,
                &[IpAddr::from([10, 1, 0, 1]).into()],
                None,
                None,
                now
            ),
            Err(PeerError::AddressInUse(IpAddr::from([10, 1, 0, 1]).into()))
        );
        // No endpoint yet: the packet waits in boringtun, the caller learns why nothing went out.
        assert_eq!(
            t.send_packet(&ipv4([10, 0, 0, 1], [10, 1, 0, 1], b""), now),
            Err(SendError::NoEndpoint(host))
        );
        assert_eq!(t.send_packet(b"\x45", now), Err(SendError::NotIp));
    }
}
