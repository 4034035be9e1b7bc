//! [`UdpSocket`]: datagrams through the tunnel.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::task::Poll;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::{RecvError, SendError, UdpMetadata};
use smoltcp::wire::IpEndpoint;

use super::error::NetError;
use super::state::{ip_addr, socket_addr, SharedRef};

/// A UDP socket on the tunnel, chiefly for the DNS server that answers the
/// Services' names inside it.
///
/// Bound to an unspecified address with `any_ip`, it receives datagrams sent to
/// any address; [`recv_from_to`](Self::recv_from_to) tells which, and
/// [`send_from_to`](Self::send_from_to) answers from it. Queues are bounded: a
/// full receive queue drops datagrams, as UDP may.
pub struct UdpSocket {
    shared: SharedRef,
    handle: SocketHandle,
    addr: SocketAddr,
    max_datagram: usize,
}

impl UdpSocket {
    pub(crate) fn new(
        shared: SharedRef,
        handle: SocketHandle,
        addr: SocketAddr,
        max_datagram: usize,
    ) -> Self {
        Self {
            shared,
            handle,
            addr,
            max_datagram,
        }
    }

    /// The address this socket was bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Receives one datagram into `buf`; returns its length and sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), NetError> {
        let (n, from, _) = self.recv_from_to(buf).await?;
        Ok((n, from))
    }

    /// Receives one datagram; returns its length, sender and destination address.
    /// A datagram larger than `buf` is dropped with [`NetError::DatagramTooLarge`].
    pub async fn recv_from_to(
        &self,
        buf: &mut [u8],
    ) -> Result<(usize, SocketAddr, IpAddr), NetError> {
        poll_fn(|cx| {
            let mut core = self.shared.lock();
            core.check_open()?;
            let s = core.udp(self.handle);
            match s.recv_slice(buf) {
                Ok((n, meta)) => {
                    let local = meta.local_address.map_or(self.addr.ip(), ip_addr);
                    Poll::Ready(Ok((n, socket_addr(meta.endpoint), local)))
                }
                Err(RecvError::Truncated) => {
                    let len = s.peek().map_or(0, |(d, _)| d.len());
                    let _ = s.recv();
                    Poll::Ready(Err(NetError::DatagramTooLarge(len)))
                }
                Err(RecvError::Exhausted) => {
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Sends one datagram to `to`, from the bound address or the stack's own.
    pub async fn send_to(&self, data: &[u8], to: SocketAddr) -> Result<(), NetError> {
        self.send(data, to, None).await
    }

    /// Sends one datagram to `to` from `from`, typically the address a request was
    /// sent to (a Service address under `any_ip`).
    pub async fn send_from_to(
        &self,
        data: &[u8],
        to: SocketAddr,
        from: IpAddr,
    ) -> Result<(), NetError> {
        self.send(data, to, Some(from)).await
    }

    async fn send(
        &self,
        data: &[u8],
        to: SocketAddr,
        from: Option<IpAddr>,
    ) -> Result<(), NetError> {
        if data.len() > self.max_datagram {
            return Err(NetError::DatagramTooLarge(data.len()));
        }
        poll_fn(|cx| {
            let mut core = self.shared.lock();
            core.check_open()?;
            let s = core.udp(self.handle);
            let meta = UdpMetadata {
                endpoint: IpEndpoint::from(to),
                local_address: from.map(Into::into),
                meta: Default::default(),
            };
            match s.send_slice(data, meta) {
                Ok(()) => {
                    drop(core);
                    self.shared.kick();
                    Poll::Ready(Ok(()))
                }
                Err(SendError::BufferFull) => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                Err(SendError::Unaddressable) => Poll::Ready(Err(NetError::Unaddressable(to))),
            }
        })
        .await
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        core.udp_bound.remove(&self.handle);
        if core.closed || core.udp(self.handle).send_queue() == 0 {
            core.sockets.remove(self.handle);
        } else {
            // Datagrams already "sent" must still leave: the loop removes it after.
            core.udp_orphans.push(self.handle);
        }
    }
}
