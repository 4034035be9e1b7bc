//! [`NetStack`]: the interface, its poll loop, and the constructors of sockets.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress};
use tokio::sync::{mpsc, Notify};

use super::config::NetConfig;
use super::device::ChannelDevice;
use super::error::NetError;
use super::state::{listen_endpoint, Core, ListenerState, Shared, SharedRef};
use super::tcp::{TcpListener, TcpStream};
use super::udp::UdpSocket;

/// Packets taken from the tunnel channel per poll, so one busy peer cannot starve
/// the handles and the queue in front of smoltcp stays bounded.
const RX_BATCH: usize = 64;

/// Egress passes per wakeup. smoltcp sends at most one segment per socket per pass, so a
/// single pass per wakeup held a sending socket to one segment per ACK or timer tick (and
/// tokio's timer has millisecond resolution): the stack could not fill its own window.
const EGRESS_PASSES: usize = 64;

/// A TCP/IP stack terminating the tunnel's traffic in this process.
///
/// It exists because neither the gateway nor the rootless agent has a kernel
/// interface for the tunnel: IP packets arrive on a channel, and the Services'
/// connections must come out as ordinary async streams. Dropping the stack (or
/// closing the incoming channel) resets every connection.
pub struct NetStack {
    shared: SharedRef,
}

impl NetStack {
    /// Starts a stack on the current tokio runtime, reading IP packets from
    /// `packets_in` and writing the ones it sends to `packets_out` (bounded: when
    /// it is full the stack waits, so its capacity is the link's queue). The stack
    /// stops when `packets_in` closes or `packets_out`'s receiver is dropped.
    ///
    /// `packets_in` carries anything that turns into the packet's bytes, so the WireGuard
    /// endpoint's channel of decrypted packets can feed the stack directly: a task in between
    /// only copying from one channel to the other cost a wakeup per packet.
    pub fn new<P: Into<Vec<u8>> + Send + 'static>(
        config: NetConfig,
        packets_in: mpsc::Receiver<P>,
        packets_out: mpsc::Sender<Vec<u8>>,
    ) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        if config.mtu < 80 {
            return Err(NetError::MtuTooSmall(config.mtu));
        }
        let mut device = ChannelDevice::new(packets_out, config.mtu);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = RandomState::new().hash_one(std::time::SystemTime::now());
        let mut iface = Interface::new(iface_config, &mut device, Instant::now());
        set_addresses(&mut iface, &config)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Core::new(iface, config)),
            notify: Notify::new(),
        });
        let poller = runtime.spawn(poll_loop(shared.clone(), device, packets_in));
        runtime.spawn(watch_poller(poller, shared.clone()));
        Ok(Self { shared })
    }

    /// Listens for TCP connections to `addr`; an unspecified IP (`0.0.0.0` or `::`)
    /// means every address, which with `any_ip` includes every Service address.
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener, NetError> {
        let endpoint = listen_endpoint(addr);
        if endpoint.port == 0 {
            return Err(NetError::Unaddressable(addr));
        }
        let mut core = self.shared.lock();
        core.check_open()?;
        if core.listeners.values().any(|l| l.endpoint == endpoint) {
            return Err(NetError::AddrInUse(addr));
        }
        let id = core.next_listener;
        core.next_listener += 1;
        core.listeners.insert(
            id,
            ListenerState {
                endpoint,
                ..ListenerState::default()
            },
        );
        core.maintain_listeners();
        if core
            .listeners
            .get(&id)
            .is_some_and(|l| l.listening.is_empty())
        {
            core.listeners.remove(&id);
            return Err(NetError::TooManyTcpSockets(core.config.max_tcp_sockets));
        }
        drop(core);
        Ok(TcpListener::new(self.shared.clone(), id, addr))
    }

    /// Opens a TCP connection to `remote` from one of the stack's own addresses.
    pub async fn connect(&self, remote: SocketAddr) -> Result<TcpStream, NetError> {
        let (stream, timeout) = {
            let mut core = self.shared.lock();
            core.check_open()?;
            let mut socket = core.new_tcp()?;
            let port = core.alloc_port()?;
            if socket.connect(core.iface.context(), remote, port).is_err() {
                core.used_ports.remove(&port);
                return Err(NetError::Unaddressable(remote));
            }
            let local = socket
                .local_endpoint()
                .map(super::state::socket_addr)
                .ok_or(NetError::Unaddressable(remote))?;
            let h = core.add_tcp(socket);
            core.client_ports.insert(h, port);
            let stream = TcpStream::new(self.shared.clone(), h, local, remote);
            (stream, core.config.connect_timeout)
        };
        self.shared.kick();
        match tokio::time::timeout(timeout, stream.established()).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NetError::ConnectTimeout(remote)),
        }
    }

    /// Binds a UDP socket (for the tunnel's DNS server, say); an unspecified IP
    /// receives datagrams to every address.
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<UdpSocket, NetError> {
        let endpoint = listen_endpoint(addr);
        if endpoint.port == 0 {
            return Err(NetError::Unaddressable(addr));
        }
        let mut core = self.shared.lock();
        core.check_open()?;
        if core.udp_bound.len() >= core.config.max_udp_sockets {
            return Err(NetError::TooManyUdpSockets(core.config.max_udp_sockets));
        }
        if core.udp_bound.values().any(|e| *e == endpoint) {
            return Err(NetError::AddrInUse(addr));
        }
        let buffer = |c: &NetConfig| {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; c.udp_packets],
                vec![0; c.udp_buffer],
            )
        };
        let mut socket = udp::Socket::new(buffer(&core.config), buffer(&core.config));
        socket
            .bind(endpoint)
            .map_err(|_| NetError::Unaddressable(addr))?;
        let h = core.sockets.add(socket);
        core.udp_bound.insert(h, endpoint);
        let max = core.config.udp_buffer;
        drop(core);
        Ok(UdpSocket::new(self.shared.clone(), h, addr, max))
    }

    /// Resets every connection (the resets go out if the link has room) and stops
    /// the poll loop; handles then fail with [`NetError::StackClosed`].
    pub fn shutdown(&self) {
        self.shared.lock().shut_down();
        self.shared.kick();
    }

    /// Resets (RST) every TCP connection from or to `ips`, at once: the gateway cuts a
    /// revoked Session's connections this way instead of letting them stall. Their readers
    /// see the end of the stream and their writers an error. Returns how many were reset.
    pub fn reset_connections(&self, ips: &[IpAddr]) -> usize {
        let n = self.shared.lock().reset_from(ips);
        if n > 0 {
            self.shared.kick();
        }
        n
    }

    /// Waits (at most `limit`) until the RSTs of [`NetStack::reset_connections`] for `ips`
    /// have been handed to the link; true when they all were.
    pub async fn resets_sent(&self, ips: &[IpAddr], limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.shared.lock().resets_unsent(ips) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.shared.kick();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Number of TCP sockets alive (listening, open or closing), for metrics.
    pub fn tcp_socket_count(&self) -> usize {
        self.shared.lock().tcp_count
    }
}

impl Drop for NetStack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Gives the interface its addresses and default routes via them. With medium IP
/// there are no neighbours: a route only has to exist for smoltcp to send, and
/// with `any_ip` a route through an own address is what makes it accept packets
/// to foreign destinations.
fn set_addresses(iface: &mut Interface, config: &NetConfig) -> Result<(), NetError> {
    let max = 2;
    if config.addresses.len() > max {
        return Err(NetError::TooManyAddresses { max });
    }
    let mut overflow = false;
    iface.update_ip_addrs(|addrs| {
        for a in &config.addresses {
            overflow |= addrs.push(*a).is_err();
        }
    });
    if overflow {
        return Err(NetError::TooManyAddresses { max });
    }
    for a in &config.addresses {
        // Both fail only when the (two-entry) route table is full.
        let full = match a.address() {
            IpAddress::Ipv4(v4) => iface.routes_mut().add_default_ipv4_route(v4).is_err(),
            IpAddress::Ipv6(v6) => iface.routes_mut().add_default_ipv6_route(v6).is_err(),
        };
        if full {
            return Err(NetError::TooManyAddresses { max });
        }
    }
    iface.set_any_ip(config.any_ip);
    Ok(())
}

/// Waits for the poll loop to end; if it panicked (a bug in smoltcp or here), says so loudly
/// and resets every connection, so callers get errors instead of waiting forever on a stack
/// that no longer runs.
async fn watch_poller(poller: tokio::task::JoinHandle<()>, shared: SharedRef) {
    if let Err(e) = poller.await {
        if e.is_panic() {
            tracing::error!(
                "the userspace TCP/IP stack stopped after a panic; its connections are reset and \
                 new ones fail until the process restarts"
            );
            shared.lock().shut_down();
        }
    }
}

/// The one task that drives smoltcp: it feeds packets in, lets sockets send, keeps
/// listeners' backlogs full, reaps closed sockets, and sleeps until a packet, a
/// handle's notification, smoltcp's next timer, or channel capacity.
async fn poll_loop<P: Into<Vec<u8>>>(
    shared: SharedRef,
    mut device: ChannelDevice,
    mut packets_in: mpsc::Receiver<P>,
) {
    loop {
        let (delay, closed, sent) = {
            let mut guard = shared.lock();
            let core = &mut *guard;
            let now = Instant::now();
            while device.rx_len() > 0 {
                let syn = device.next_is_syn();
                core.iface
                    .poll_ingress_single(now, &mut device, &mut core.sockets);
                if syn {
                    core.maintain_listeners();
                }
            }
            let mut sent = false;
            for _ in 0..EGRESS_PASSES {
                if core.iface.poll_egress(now, &mut device, &mut core.sockets) == PollResult::None {
                    break;
                }
                sent = true;
            }
            core.maintain_listeners();
            core.reap_orphans(now);
            core.reap_udp();
            let delay = core.iface.poll_delay(now, &core.sockets);
            (delay, core.closed, sent)
        };
        if closed {
            return;
        }
        if device.sender().is_closed() {
            shared.lock().shut_down();
            return;
        }
        let tx_blocked = device.take_tx_blocked();
        let sleep = delay.map_or(Duration::from_secs(3600), |d| {
            Duration::from_micros(d.total_micros())
        });
        if sleep.is_zero() && sent && !tx_blocked {
            // More to send right away (the passes ran out): let other tasks run, take what
            // arrived meanwhile, and go on without a timer round trip.
            tokio::task::yield_now().await;
            while device.rx_len() < RX_BATCH {
                match packets_in.try_recv() {
                    Ok(p) => device.push_rx(p.into()),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        shared.lock().shut_down();
                        return;
                    }
                }
            }
            continue;
        }
        let sender = tx_blocked.then(|| device.sender().clone());
        tokio::select! {
            packet = packets_in.recv() => match packet {
                Some(p) => {
                    device.push_rx(p.into());
                    while device.rx_len() < RX_BATCH {
                        match packets_in.try_recv() {
                            Ok(p) => device.push_rx(p.into()),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    shared.lock().shut_down();
                    return;
                }
            },
            () = shared.notify.notified() => {}
            () = tokio::time::sleep(sleep), if !tx_blocked => {}
            permit = reserve(sender.as_ref()), if tx_blocked => {
                if !permit {
                    shared.lock().shut_down();
                    return;
                }
            }
        }
    }
}

/// Waits until the tunnel channel has room again; false when it is closed.
async fn reserve(sender: Option<&mpsc::Sender<Vec<u8>>>) -> bool {
    match sender {
        Some(s) => s.reserve().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::IpCidr;

    #[tokio::test]
    async fn a_panicked_poll_loop_closes_the_stack_instead_of_leaving_it_hanging() {
        let (_to_stack, packets_in) = mpsc::channel::<Vec<u8>>(8);
        let (packets_out, _from_stack) = mpsc::channel(8);
        let config = NetConfig {
            addresses: vec![IpCidr::new(IpAddress::v4(10, 100, 0, 1), 16)],
            any_ip: true,
            ..NetConfig::default()
        };
        let stack = NetStack::new(config, packets_in, packets_out).unwrap();
        let listener = stack.listen("0.0.0.0:80".parse().unwrap());
        assert!(listener.is_ok(), "a running stack listens");

        let crashed = tokio::spawn(async { panic!("injected: a bug in the poll loop") });
        watch_poller(crashed, stack.shared.clone()).await;

        assert!(
            stack.listen("0.0.0.0:81".parse().unwrap()).is_err(),
            "after the poll loop panicked, the stack refuses new work"
        );
    }
}
