//! Settings of a [`NetStack`](super::NetStack).

use std::time::Duration;

use smoltcp::wire::IpCidr;

/// How a [`NetStack`](super::NetStack) is addressed and bounded.
///
/// Every limit exists so that a peer on the tunnel cannot make the stack grow
/// without bound: sockets, buffers and queues are all capped.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The stack's own addresses (at most one IPv4 and one IPv6: smoltcp's limit).
    /// They are the source of outgoing connections and the gateway of the default routes.
    pub addresses: Vec<IpCidr>,
    /// Accept traffic to any destination address, not only `addresses`: the gateway
    /// answers for every Service address in the tunnel. Every destination is
    /// accepted; which ones are Services is the caller's decision, made on the
    /// local address `accept()` reports.
    pub any_ip: bool,
    /// The largest IP packet the tunnel carries (1420 for WireGuard over a 1500 MTU).
    pub mtu: usize,
    /// The most TCP sockets alive at once (listening, connecting, open, closing).
    pub max_tcp_sockets: usize,
    /// The most UDP sockets bound at once.
    pub max_udp_sockets: usize,
    /// Sockets kept listening per [`TcpListener`](super::TcpListener), so that
    /// concurrent connection attempts are not refused.
    pub listen_backlog: usize,
    /// Connections accepted by the stack but not yet taken by `accept()`, per listener.
    pub accept_queue: usize,
    /// Receive and transmit buffer of each TCP socket: the window, and the backpressure.
    pub tcp_buffer: usize,
    /// Receive and transmit buffer of each UDP socket, in payload bytes.
    pub udp_buffer: usize,
    /// Datagrams queued per UDP socket and direction.
    pub udp_packets: usize,
    /// Interval of TCP keep-alive probes on idle connections.
    pub tcp_keepalive: Option<Duration>,
    /// A connection whose peer is silent this long (with data or keep-alives
    /// outstanding, or while connecting) is reset.
    pub tcp_timeout: Duration,
    /// How long `connect()` waits for the handshake.
    pub connect_timeout: Duration,
    /// How long a dropped stream may take to finish its close before it is reset.
    pub close_linger: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            any_ip: false,
            mtu: 1420,
            max_tcp_sockets: 4096,
            max_udp_sockets: 256,
            listen_backlog: 16,
            accept_queue: 128,
            tcp_buffer: 64 * 1024,
            udp_buffer: 64 * 1024,
            udp_packets: 64,
            tcp_keepalive: Some(Duration::from_secs(30)),
            tcp_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(30),
        }
    }
}
