//! A userspace WireGuard endpoint: many peers over one UDP socket, no root, no kernel module.
//!
//! [`peers`] holds the protocol state (boringtun's `Tunn` per peer, cryptokey routing,
//! roaming, timers) without I/O; [`endpoint`] drives it with a tokio UDP socket; [`keys`]
//! reads and writes keys as `wg` does.

mod allowed;
pub mod endpoint;
pub mod keys;
pub mod peers;
mod types;

pub use endpoint::{Delivered, Endpoint, EndpointConfig, EndpointHandle};
pub use keys::{KeyError, KeyPair, PrivateKey, PublicKey};
pub use peers::{
    Action, AllowedIp, PeerError, PeerId, PeerStats, PeerTable, SendError, TableCounters,
    TableStats,
};
