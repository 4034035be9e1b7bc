//! What the peer table gives back: actions to perform, errors, and statistics.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::allowed::AllowedIp;
use super::keys::PublicKey;

/// Identifies a peer inside one table; it is also the 24-bit index in its session indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

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
