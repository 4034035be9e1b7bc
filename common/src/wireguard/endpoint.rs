//! Drives a [`PeerTable`] with one tokio UDP socket: the gateway's WireGuard listener and the
//! agent's rootless tunnel both use it.
//!
//! One task receives datagrams, one ticks the timers; both lock the table only to compute
//! actions and release it before any `.await`. Decrypted packets go to an mpsc channel.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::keys::{KeyPair, PublicKey};
use super::peers::{
    Action, AllowedIp, PeerError, PeerId, PeerStats, PeerTable, SendError, TableStats,
};

/// Settings of an [`Endpoint`].
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// UDP address to bind (port 0 picks one).
    pub bind: SocketAddr,
    /// How often peer timers run; WireGuard's timers have 1 s granularity, so 100-250 ms is plenty.
    pub tick_interval: Duration,
    /// Decrypted packets buffered for the consumer before new ones are dropped.
    pub channel_capacity: usize,
    /// Handshake messages per second over all peers before cookies are demanded.
    pub handshake_rate_limit: u64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            tick_interval: Duration::from_millis(200),
            channel_capacity: 1024,
            handshake_rate_limit: super::peers::DEFAULT_HANDSHAKE_RATE_LIMIT,
        }
    }
}

/// A decrypted IP packet and the peer it authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The table's id of the sender.
    pub peer: PeerId,
    /// The sender's public key, which maps to its Session.
    pub public_key: PublicKey,
    /// The IPv4 or IPv6 packet.
    pub packet: Vec<u8>,
}

/// The packet alone, for consumers that route by address (a network stack).
impl From<Delivered> for Vec<u8> {
    fn from(d: Delivered) -> Vec<u8> {
        d.packet
    }
}

struct Shared {
    socket: UdpSocket,
    table: Mutex<PeerTable>,
    deliver: mpsc::Sender<Delivered>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, PeerTable> {
        // A panic while holding the lock leaves the table consistent enough to keep serving.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Performs actions computed under the lock; never called with the lock held.
    async fn perform(&self, actions: Vec<(Action, Option<PublicKey>)>) {
        for (action, key) in actions {
            match action {
                Action::SendDatagram { to, bytes } => {
                    if let Err(e) = self.socket.send_to(&bytes, to).await {
                        tracing::debug!(%to, error = %e, "WireGuard send failed");
                    }
                }
                Action::DeliverPacket { peer, packet } => {
                    let Some(public_key) = key else { continue };
                    let item = Delivered {
                        peer,
                        public_key,
                        packet,
                    };
                    if self.deliver.try_send(item).is_err() {
                        tracing::debug!(
                            peer = peer.0,
                            "tunnel consumer slow or gone; packet dropped"
                        );
                    }
                }
            }
        }
    }
}

fn with_keys(table: &PeerTable, actions: Vec<Action>) -> Vec<(Action, Option<PublicKey>)> {
    actions
        .into_iter()
        .map(|a| {
            let key = match &a {
                Action::DeliverPacket { peer, .. } => table.peer_key(*peer),
                Action::SendDatagram { .. } => None,
            };
            (a, key)
        })
        .collect()
}

/// A running WireGuard endpoint. Dropping it stops its tasks; clones of its handle then fail sends.
pub struct Endpoint {
    handle: EndpointHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.handle.local_addr().ok())
            .finish()
    }
}

impl Endpoint {
    /// Binds the socket and starts the receive and timer tasks; decrypted packets arrive on
    /// the returned receiver.
    pub async fn bind(
        keys: KeyPair,
        config: EndpointConfig,
    ) -> io::Result<(Endpoint, mpsc::Receiver<Delivered>)> {
        let socket = UdpSocket::bind(config.bind).await?;
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let shared = Arc::new(Shared {
            socket,
            table: Mutex::new(PeerTable::with_rate_limit(
                keys,
                config.handshake_rate_limit,
            )),
            deliver: tx,
        });
        let recv = tokio::spawn(receive_loop(shared.clone()));
        let timer = tokio::spawn(timer_loop(shared.clone(), config.tick_interval));
        Ok((
            Endpoint {
                handle: EndpointHandle { shared },
                tasks: vec![recv, timer],
            },
            rx,
        ))
    }

    /// A cloneable handle for adding peers and sending packets from other tasks.
    pub fn handle(&self) -> EndpointHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for Endpoint {
    type Target = EndpointHandle;
    fn deref(&self) -> &EndpointHandle {
        &self.handle
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn receive_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable from a vanished peer surfaces here on some systems.
                tracing::debug!(error = %e, "WireGuard receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let actions = {
            let mut table = shared.table();
            let actions = table.handle_datagram(from, &buf[..n], Instant::now());
            with_keys(&table, actions)
        };
        shared.perform(actions).await;
    }
}

async fn timer_loop(shared: Arc<Shared>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let actions = {
            let mut table = shared.table();
            let actions = table.tick(Instant::now());
            with_keys(&table, actions)
        };
        shared.perform(actions).await;
    }
}

/// Controls a running [`Endpoint`]: peers come and go with sessions, packets go out.
#[derive(Clone)]
pub struct EndpointHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EndpointHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointHandle")
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

impl EndpointHandle {
    /// The bound UDP address (to print, or to give peers as their endpoint).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// This interface's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.table().public_key()
    }

    /// Adds a peer; see [`PeerTable::add_peer`].
    pub fn add_peer(
        &self,
        public_key: PublicKey,
        allowed_ips: &[AllowedIp],
        endpoint: Option<SocketAddr>,
        keepalive: Option<u16>,
    ) -> Result<PeerId, PeerError> {
        self.shared
            .table()
            .add_peer(public_key, allowed_ips, endpoint, keepalive, Instant::now())
    }

    /// Removes a peer at once (its session was deleted).
    pub fn remove_peer(&self, public_key: &PublicKey) -> Option<PeerId> {
        self.shared.table().remove_peer(public_key)
    }

    /// Removes peers silent for `max_idle` and returns their keys, so sessions can be closed.
    pub fn expire_idle(&self, max_idle: Duration) -> Vec<PublicKey> {
        self.shared.table().expire_idle(Instant::now(), max_idle)
    }

    /// The peer owning `dst`, if any.
    pub fn route(&self, dst: IpAddr) -> Option<PeerId> {
        self.shared.table().route(dst)
    }

    /// Encrypts an IP packet to the peer owning its destination and sends it.
    pub async fn send_packet(&self, packet: &[u8]) -> Result<(), SendError> {
        let action = self.shared.table().send_packet(packet, Instant::now())?;
        if let Some(Action::SendDatagram { to, bytes }) = action {
            if let Err(e) = self.shared.socket.send_to(&bytes, to).await {
                tracing::debug!(%to, error = %e, "WireGuard send failed");
            }
        }
        Ok(())
    }

    /// Counters and per-peer statistics.
    pub fn stats(&self) -> TableStats {
        self.shared.table().stats()
    }

    /// Statistics of one peer.
    pub fn peer_stats(&self, public_key: &PublicKey) -> Option<PeerStats> {
        self.shared.table().peer_stats(public_key)
    }
}
