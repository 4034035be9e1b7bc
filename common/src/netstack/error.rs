//! Errors of the network stack.

use std::io;
use std::net::SocketAddr;

/// Why a [`NetStack`](super::NetStack) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The stack was shut down, or its tunnel went away.
    #[error("the network stack has shut down")]
    StackClosed,
    /// The stack's poll loop needs a tokio runtime to run on.
    #[error("NetStack::new must be called within a tokio runtime")]
    NoRuntime,
    /// smoltcp keeps at most one IPv4 and one IPv6 address.
    #[error("too many interface addresses (at most {max})")]
    TooManyAddresses {
        /// The limit.
        max: usize,
    },
    /// The MTU cannot carry an IP header and a minimal TCP segment.
    #[error("MTU {0} is too small")]
    MtuTooSmall(usize),
    /// The configured TCP socket limit is reached.
    #[error("too many TCP sockets (limit {0})")]
    TooManyTcpSockets(usize),
    /// The configured UDP socket limit is reached.
    #[error("too many UDP sockets (limit {0})")]
    TooManyUdpSockets(usize),
    /// Another listener or UDP socket already holds this address.
    #[error("address {0} is already in use")]
    AddrInUse(SocketAddr),
    /// Every ephemeral port is taken by an outgoing connection.
    #[error("no free local port")]
    NoFreePort,
    /// The address cannot be used (port 0, no own address of that family, ...).
    #[error("address {0} cannot be used")]
    Unaddressable(SocketAddr),
    /// The peer refused or reset the connection during the handshake.
    #[error("connection to {0} refused")]
    ConnectionRefused(SocketAddr),
    /// The handshake did not finish within the connect timeout.
    #[error("connection to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The datagram does not fit the socket buffer (or the caller's buffer).
    #[error("datagram of {0} bytes does not fit")]
    DatagramTooLarge(usize),
}

impl From<NetError> for io::Error {
    fn from(e: NetError) -> Self {
        let kind = match &e {
            NetError::StackClosed => io::ErrorKind::NotConnected,
            NetError::AddrInUse(_) => io::ErrorKind::AddrInUse,
            NetError::Unaddressable(_) => io::ErrorKind::AddrNotAvailable,
            NetError::ConnectionRefused(_) => io::ErrorKind::ConnectionRefused,
            NetError::ConnectTimeout(_) => io::ErrorKind::TimedOut,
            NetError::DatagramTooLarge(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
