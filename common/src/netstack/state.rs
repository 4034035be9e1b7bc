//! The state shared between the poll loop and the socket handles.
//!
//! Everything here is touched under one `std::sync::Mutex`, never across an await:
//! a handle locks, reads or writes its socket, registers its waker, unlocks, and
//! notifies the poll loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::socket::udp;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use tokio::sync::Notify;

use super::config::NetConfig;
use super::error::NetError;

/// What the handles hold: the locked state and the loop's doorbell.
pub(crate) struct Shared {
    pub(crate) state: Mutex<Core>,
    pub(crate) notify: Notify,
}

impl Shared {
    /// Locks the state; a poisoned lock (a panic elsewhere) still yields the data,
    /// which smoltcp keeps consistent between calls.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the poll loop to run soon (data to send, window to open, socket to reap).
    pub(crate) fn kick(&self) {
        self.notify.notify_one();
    }
}

/// A listener's sockets: some listening, some mid-handshake, some ready to accept.
#[derive(Default)]
pub(crate) struct ListenerState {
    pub(crate) endpoint: IpListenEndpoint,
    pub(crate) listening: Vec<SocketHandle>,
    pub(crate) embryonic: Vec<SocketHandle>,
    pub(crate) ready: VecDeque<SocketHandle>,
    pub(crate) wakers: Vec<Waker>,
}

/// The interface, its sockets and the bookkeeping of which handle owns which socket.
pub(crate) struct Core {
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) config: NetConfig,
    pub(crate) closed: bool,
    pub(crate) listeners: HashMap<u64, ListenerState>,
    pub(crate) next_listener: u64,
    /// Dropped streams finishing their close, with the time they get reset.
    pub(crate) orphans: Vec<(SocketHandle, Instant)>,
    pub(crate) tcp_count: usize,
    pub(crate) udp_bound: HashMap<SocketHandle, IpListenEndpoint>,
    /// Dropped UDP sockets with datagrams still queued for sending.
    pub(crate) udp_orphans: Vec<SocketHandle>,
    /// Local ports of outgoing connections, per socket.
    pub(crate) client_ports: HashMap<SocketHandle, u16>,
    pub(crate) used_ports: HashSet<u16>,
    pub(crate) next_port: u16,
}

const EPHEMERAL_FIRST: u16 = 49152;

pub(crate) type SharedRef = Arc<Shared>;

pub(crate) fn smol_duration(d: std::time::Duration) -> SmolDuration {
    SmolDuration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// smoltcp's endpoint as a std socket address.
pub(crate) fn socket_addr(ep: IpEndpoint) -> SocketAddr {
    SocketAddr::new(ip_addr(ep.addr), ep.port)
}

pub(crate) fn ip_addr(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4(a) => IpAddr::V4(a),
        IpAddress::Ipv6(a) => IpAddr::V6(a),
    }
}

/// Whether a socket's remote endpoint is one of `ips` (a listening socket has none).
pub(crate) fn remote_in(remote: Option<IpEndpoint>, ips: &[IpAddr]) -> bool {
    remote.is_some_and(|ep| ips.contains(&ip_addr(ep.addr)))
}

/// A listen endpoint where the unspecified address means every address.
pub(crate) fn listen_endpoint(addr: SocketAddr) -> IpListenEndpoint {
    IpListenEndpoint {
        addr: (!addr.ip().is_unspecified()).then(|| addr.ip().into()),
        port: addr.port(),
    }
}

impl Core {
    pub(crate) fn new(iface: Interface, config: NetConfig) -> Self {
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            config,
            closed: false,
            listeners: HashMap::new(),
            next_listener: 0,
            orphans: Vec::new(),
            tcp_count: 0,
            udp_bound: HashMap::new(),
            udp_orphans: Vec::new(),
            client_ports: HashMap::new(),
            used_ports: HashSet::new(),
            next_port: EPHEMERAL_FIRST,
        }
    }

    pub(crate) fn check_open(&self) -> Result<(), NetError> {
        if self.closed {
            Err(NetError::StackClosed)
        } else {
            Ok(())
        }
    }

    /// A fresh TCP socket with this stack's buffers, keep-alive and timeout.
    pub(crate) fn new_tcp(&mut self) -> Result<tcp::Socket<'static>, NetError> {
        if self.tcp_count >= self.config.max_tcp_sockets {
            return Err(NetError::TooManyTcpSockets(self.config.max_tcp_sockets));
        }
        let size = self.config.tcp_buffer;
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; size]),
            tcp::SocketBuffer::new(vec![0; size]),
        );
        s.set_keep_alive(self.config.tcp_keepalive.map(smol_duration));
        s.set_timeout(Some(smol_duration(self.config.tcp_timeout)));
        s.set_nagle_enabled(false);
        Ok(s)
    }

    pub(crate) fn add_tcp(&mut self, s: tcp::Socket<'static>) -> SocketHandle {
        self.tcp_count += 1;
        self.sockets.add(s)
    }

    pub(crate) fn remove_tcp(&mut self, h: SocketHandle) {
        self.sockets.remove(h);
        self.tcp_count -= 1;
        if let Some(port) = self.client_ports.remove(&h) {
            self.used_ports.remove(&port);
        }
    }

    pub(crate) fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    pub(crate) fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    /// An unused ephemeral port for an outgoing connection.
    pub(crate) fn alloc_port(&mut self) -> Result<u16, NetError> {
        let span = usize::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            if !self.used_ports.contains(&port) {
                self.used_ports.insert(port);
                return Ok(port);
            }
        }
        Err(NetError::NoFreePort)
    }

    /// Hands a dropped stream's socket to the loop: a graceful close, or a reset when
    /// unread data would otherwise be silently lost (as kernels do).
    pub(crate) fn orphan(&mut self, h: SocketHandle, now: Instant) {
        let linger = smol_duration(self.config.close_linger);
        let s = self.tcp(h);
        if s.recv_queue() > 0 {
            s.abort();
        } else {
            s.close();
        }
        self.orphans.push((h, now + linger));
    }

    /// Keeps every listener's backlog full and moves finished handshakes to the
    /// accept queue. Runs after each ingress packet, so a burst of SYNs finds sockets.
    pub(crate) fn maintain_listeners(&mut self) {
        let ids: Vec<u64> = self.listeners.keys().copied().collect();
        for id in ids {
            self.maintain_listener(id);
        }
    }

    fn maintain_listener(&mut self, id: u64) {
        let Some(mut l) = self.listeners.remove(&id) else {
            return;
        };
        let mut woke = false;
        let mut i = 0;
        while i < l.listening.len() {
            let h = l.listening[i];
            if self.tcp(h).state() == State::Listen {
                i += 1;
            } else {
                l.listening.swap_remove(i);
                l.embryonic.push(h);
            }
        }
        let mut i = 0;
        while i < l.embryonic.len() {
            let h = l.embryonic[i];
            match self.tcp(h).state() {
                State::Listen | State::SynReceived => i += 1,
                State::Closed => {
                    l.embryonic.swap_remove(i);
                    self.remove_tcp(h);
                }
                _ => {
                    l.embryonic.swap_remove(i);
                    l.ready.push_back(h);
                    woke = true;
                }
            }
        }
        let backlog = self.config.listen_backlog;
        while l.listening.len() < backlog
            && l.ready.len() + l.embryonic.len() < self.config.accept_queue
        {
            let Ok(mut s) = self.new_tcp() else { break };
            if s.listen(l.endpoint).is_err() {
                break;
            }
            let h = self.add_tcp(s);
            l.listening.push(h);
        }
        if woke {
            l.wakers.drain(..).for_each(Waker::wake);
        }
        self.listeners.insert(id, l);
    }

    /// Removes orphaned sockets that finished closing, and resets those past linger.
    pub(crate) fn reap_orphans(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.orphans.len() {
            let (h, deadline) = self.orphans[i];
            let s = self.tcp(h);
            let state = s.state();
            // An aborted socket keeps its remote endpoint until its RST has gone out: keep it
            // until then (or its deadline), or a revoked peer's reset could be lost.
            let rst_pending = state == State::Closed && s.remote_endpoint().is_some();
            if matches!(state, State::Closed | State::TimeWait) && (!rst_pending || now >= deadline)
            {
                self.orphans.swap_remove(i);
                self.remove_tcp(h);
            } else if now >= deadline {
                self.tcp(h).abort();
                i += 1;
            } else {
                i += 1;
            }
        }
    }

    /// Removes dropped UDP sockets whose queued datagrams have left.
    pub(crate) fn reap_udp(&mut self) {
        let mut i = 0;
        while i < self.udp_orphans.len() {
            let h = self.udp_orphans[i];
            if self.closed || self.udp(h).send_queue() == 0 {
                self.udp_orphans.swap_remove(i);
                self.sockets.remove(h);
            } else {
                i += 1;
            }
        }
    }

    /// Aborts every TCP connection whose remote address is one of `ips` (an RST goes out on
    /// the next poll) and wakes its readers and writers; returns how many.
    pub(crate) fn reset_from(&mut self, ips: &[IpAddr]) -> usize {
        let mut n = 0;
        for (_, socket) in self.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(s) = socket {
                if !matches!(s.state(), State::Closed | State::TimeWait)
                    && remote_in(s.remote_endpoint(), ips)
                {
                    s.abort();
                    n += 1;
                }
            }
        }
        n
    }

    /// Aborted connections to `ips` whose RST has not been handed to the link yet.
    pub(crate) fn resets_unsent(&mut self, ips: &[IpAddr]) -> usize {
        self.sockets
            .iter()
            .filter(|(_, socket)| match socket {
                smoltcp::socket::Socket::Tcp(s) => {
                    s.state() == State::Closed && remote_in(s.remote_endpoint(), ips)
                }
                _ => false,
            })
            .count()
    }

    /// Resets every connection and wakes every waiter: the stack is going away.
    pub(crate) fn shut_down(&mut self) {
        self.closed = true;
        for (_, socket) in self.sockets.iter_mut() {
            match socket {
                smoltcp::socket::Socket::Tcp(s) => s.abort(),
                smoltcp::socket::Socket::Udp(s) => s.close(),
            }
        }
        for l in self.listeners.values_mut() {
            l.wakers.drain(..).for_each(Waker::wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_in_matches_only_the_given_addresses() {
        let peer: IpAddr = "100.64.0.2".parse().unwrap();
        let peer6: IpAddr = "fd70:7374::2".parse().unwrap();
        let other: IpAddr = "100.64.0.3".parse().unwrap();
        let ep = |ip: IpAddr| Some(IpEndpoint::new(ip.into(), 40000));
        assert!(remote_in(ep(peer), &[peer, peer6]));
        assert!(remote_in(ep(peer6), &[peer, peer6]));
        assert!(!remote_in(ep(other), &[peer, peer6]));
        assert!(
            !remote_in(None, &[peer]),
            "a listening socket belongs to nobody"
        );
        assert!(!remote_in(ep(peer), &[]));
    }
}
