//! TCP handles: [`TcpListener`] and [`TcpStream`].

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{RecvError, State};
use smoltcp::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::NetError;
use super::state::{socket_addr, SharedRef};

/// Accepts TCP connections arriving through the tunnel on one address and port.
///
/// With `any_ip` and an unspecified address it accepts connections to every
/// destination address, and reports which one was dialled: the gateway needs it
/// to know the Service, and the source address to know the Session.
/// Dropping the listener resets connections not yet accepted.
pub struct TcpListener {
    shared: SharedRef,
    id: u64,
    addr: SocketAddr,
}

impl TcpListener {
    pub(crate) fn new(shared: SharedRef, id: u64, addr: SocketAddr) -> Self {
        Self { shared, id, addr }
    }

    /// The address this listener was created for.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the next established connection; returns it with the local
    /// (destination) and remote (source) addresses of the connection.
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr, SocketAddr), NetError> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(TcpStream, SocketAddr, SocketAddr), NetError>> {
        let mut core = self.shared.lock();
        core.check_open()?;
        let Some(l) = core.listeners.get_mut(&self.id) else {
            return Poll::Ready(Err(NetError::StackClosed));
        };
        let Some(h) = l.ready.pop_front() else {
            if !l.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                l.wakers.push(cx.waker().clone());
            }
            return Poll::Pending;
        };
        let s = core.tcp(h);
        let (Some(local), Some(remote)) = (s.local_endpoint(), s.remote_endpoint()) else {
            // Reset between the handshake and now: let the loop reap it.
            core.orphans.push((h, Instant::now()));
            drop(core);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let (local, remote) = (socket_addr(local), socket_addr(remote));
        drop(core);
        // The accept queue has room again: refill the backlog.
        self.shared.kick();
        Poll::Ready(Ok((
            TcpStream::new(self.shared.clone(), h, local, remote),
            local,
            remote,
        )))
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        let Some(l) = core.listeners.remove(&self.id) else {
            return;
        };
        for h in l.listening {
            core.remove_tcp(h);
        }
        let now = Instant::now();
        for h in l.embryonic.into_iter().chain(l.ready) {
            core.tcp(h).abort();
            core.orphans.push((h, now));
        }
        drop(core);
        self.shared.kick();
    }
}

/// A TCP connection through the tunnel, usable wherever tokio's `TcpStream` is
/// (`AsyncRead` + `AsyncWrite`).
///
/// Reads and writes go through the socket's bounded buffers, so a slow reader
/// slows the sender (the window closes) instead of growing memory. `shutdown`
/// sends FIN; dropping closes the connection (or resets it when unread data
/// remains), and the stack finishes the close in the background.
pub struct TcpStream {
    shared: SharedRef,
    handle: SocketHandle,
    local: SocketAddr,
    remote: SocketAddr,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl TcpStream {
    pub(crate) fn new(
        shared: SharedRef,
        handle: SocketHandle,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        Self {
            shared,
            handle,
            local,
            remote,
        }
    }

    /// The stack-side address (for an accepted stream: the destination dialled).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's address (for an accepted stream: the tunnel client's).
    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Resolves once the handshake of an outgoing connection finished.
    pub(crate) async fn established(&self) -> Result<(), NetError> {
        poll_fn(|cx| {
            let mut core = self.shared.lock();
            core.check_open()?;
            let s = core.tcp(self.handle);
            match s.state() {
                State::SynSent | State::SynReceived => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                State::Closed | State::Listen => {
                    Poll::Ready(Err(NetError::ConnectionRefused(self.remote)))
                }
                _ => Poll::Ready(Ok(())),
            }
        })
        .await
    }
}

fn closed_err() -> io::Error {
    NetError::StackClosed.into()
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut core = self.shared.lock();
        if core.closed {
            return Poll::Ready(Err(closed_err()));
        }
        let s = core.tcp(self.handle);
        if s.can_recv() {
            let mut copied = 0;
            // The ring buffer may wrap: two contiguous pieces at most.
            for _ in 0..2 {
                let n = s
                    .recv(|data| {
                        let n = data.len().min(buf.remaining());
                        buf.put_slice(&data[..n]);
                        (n, n)
                    })
                    .unwrap_or(0);
                copied += n;
                if n == 0 || buf.remaining() == 0 {
                    break;
                }
            }
            drop(core);
            if copied > 0 {
                // Reading opened the window: let the loop advertise it.
                self.shared.kick();
            }
            return Poll::Ready(Ok(()));
        }
        if !s.may_recv() && s.state() != State::SynSent && s.state() != State::SynReceived {
            // After the peer's FIN: end of stream. Reset (by the peer, or here by an abort or
            // a timeout): an error, as a kernel socket says, so a pipe can pass the reset on.
            return match s.recv(|_| (0, ())) {
                Err(RecvError::InvalidState) => {
                    Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
                }
                _ => Poll::Ready(Ok(())),
            };
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut core = self.shared.lock();
        if core.closed {
            return Poll::Ready(Err(closed_err()));
        }
        let s = core.tcp(self.handle);
        if !s.may_send() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !s.can_send() {
            s.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        let n = s
            .send_slice(data)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe));
        drop(core);
        self.shared.kick();
        Poll::Ready(n)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data handed to the socket is the stack's to deliver, as with a kernel socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut core = self.shared.lock();
        if core.closed {
            return Poll::Ready(Err(closed_err()));
        }
        core.tcp(self.handle).close();
        drop(core);
        self.shared.kick();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        if core.closed {
            core.remove_tcp(self.handle);
            return;
        }
        core.orphan(self.handle, Instant::now());
        drop(core);
        self.shared.kick();
    }
}
