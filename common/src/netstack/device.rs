//! A smoltcp device whose wire is a pair of packet channels.
//!
//! The stack knows nothing of WireGuard: whatever feeds decrypted IP packets into a
//! channel and drains another one (the WireGuard endpoint, or a test cable) is a link.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};
use tokio::sync::mpsc;

/// An IP-medium [`phy::Device`] fed from a queue and transmitting into a bounded
/// tokio channel.
///
/// When the outgoing channel is full, `transmit` declines, so smoltcp keeps the data
/// in its socket buffers (backpressure instead of loss); the poll loop then waits for
/// capacity.
#[derive(Debug)]
pub struct ChannelDevice {
    rx: VecDeque<Vec<u8>>,
    tx: mpsc::Sender<Vec<u8>>,
    mtu: usize,
    tx_blocked: bool,
}

impl ChannelDevice {
    /// A device sending into `tx`, with packets of at most `mtu` bytes.
    pub fn new(tx: mpsc::Sender<Vec<u8>>, mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx,
            mtu,
            tx_blocked: false,
        }
    }

    /// Queues a packet received from the tunnel for the next poll.
    pub fn push_rx(&mut self, packet: Vec<u8>) {
        self.rx.push_back(packet);
    }

    /// Packets queued and not yet processed.
    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// Whether the next queued packet opens a TCP connection (SYN without ACK):
    /// listeners must have a fresh socket listening before the following one.
    pub fn next_is_syn(&self) -> bool {
        self.rx.front().is_some_and(|p| is_tcp_syn(p))
    }

    /// Whether a transmission was declined for lack of channel capacity since the
    /// last call (and resets the flag).
    pub fn take_tx_blocked(&mut self) -> bool {
        std::mem::take(&mut self.tx_blocked)
    }

    /// The outgoing channel, to wait for capacity on.
    pub fn sender(&self) -> &mpsc::Sender<Vec<u8>> {
        &self.tx
    }
}

fn is_tcp_syn(packet: &[u8]) -> bool {
    let (protocol, payload) = match packet.first().map(|b| b >> 4) {
        Some(4) => match Ipv4Packet::new_checked(packet) {
            Ok(ip) => (ip.next_header(), &packet[usize::from(ip.header_len())..]),
            Err(_) => return false,
        },
        Some(6) => match Ipv6Packet::new_checked(packet) {
            // Extension headers before TCP are rare on the tunnel; such SYNs just
            // wait for the per-poll backlog refill.
            Ok(ip) => (ip.next_header(), &packet[ip.header_len()..]),
            Err(_) => return false,
        },
        _ => return false,
    };
    protocol == IpProtocol::Tcp
        && TcpPacket::new_checked(payload).is_ok_and(|tcp| tcp.syn() && !tcp.ack())
}

/// A received packet handed to smoltcp.
pub struct RxToken(Vec<u8>);

/// Permission to send one packet into the channel.
pub struct TxToken<'a>(&'a mpsc::Sender<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        // Replies generated while receiving may find the channel full: IP may drop them.
        let _ = self.0.try_send(packet);
        r
    }
}

impl phy::Device for ChannelDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.capacity() == 0 {
            self.tx_blocked = true;
            return None;
        }
        Some(TxToken(&self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}
