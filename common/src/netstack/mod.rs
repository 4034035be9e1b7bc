//! A userspace TCP/IP stack for the tunnel: smoltcp behind tokio sockets.
//!
//! The gateway runs WireGuard in userspace and must terminate the tunnel's TCP and
//! UDP itself (no TUN device, no root); the agent's rootless mode needs the same to
//! publish Services on local ports. This module turns a pair of packet channels
//! (decrypted IP packets in, IP packets to encrypt out) into [`TcpListener`],
//! [`TcpStream`] and [`UdpSocket`] handles that behave like tokio's.
//!
//! One task, the poll loop, owns the smoltcp interface. Handles reach it through a
//! mutex held only for short, non-async sections, and wake it with a notification.

mod config;
mod device;
mod error;
mod stack;
mod state;
mod tcp;
mod udp;

pub use config::NetConfig;
pub use device::ChannelDevice;
pub use error::NetError;
pub use smoltcp::wire::{IpAddress, IpCidr};
pub use stack::NetStack;
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
