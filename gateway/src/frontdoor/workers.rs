//! The front door's threads: one single-threaded runtime per core, each accepting on its own
//! `SO_REUSEPORT` listener. A connection's TLS, HTTP, policy and upstream exchange then all
//! run on the thread that accepted it (upstream connections are pooled per thread, see
//! `proxy::upstream`), so a request crosses no thread: no work stealing, no cross-thread
//! wakeups. The kernel spreads new connections over the listeners.

use super::limits::Limits;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

use crate::state::Gateway;

/// How many accept threads `--workers 0` (the default) means: one per CPU this process
/// may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds `n` listeners on `addr` with `SO_REUSEPORT`, so each accept thread has its own
/// queue. With port 0 the first listener picks the port and the others share it.
///
/// A port that anything already listens on is refused (`AddrInUse`), even another
/// gateway's `SO_REUSEPORT` listeners: a second `posternd` started on the same port by
/// mistake must fail, not silently take half of the connections.
pub fn bind(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // Without SO_REUSEPORT this bind fails while any socket holds the port.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut listeners = Vec::with_capacity(n.max(1));
    let mut at = addr;
    for _ in 0..n.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if at.is_ipv6() {
            socket.set_only_v6(false).ok();
        }
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        at = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The running accept threads; [`Workers::stop`] ends them gracefully.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    closing: watch::Sender<bool>,
}

/// What every accept thread shares: the connection cap and the drain time.
#[derive(Clone)]
pub(super) struct Shared {
    /// Connections open across every thread, bounded by `--max-connections`.
    pub permits: Arc<Semaphore>,
    /// How long in-flight requests may take to finish at shutdown.
    pub grace: Duration,
    /// The main runtime, where control-plane requests run: they write to the store and
    /// recompile configuration, which may block, and must not stall a front-door thread.
    pub control: tokio::runtime::Handle,
}

impl Workers {
    /// Starts one thread per listener, each serving the front door on its own runtime.
    /// Called from the main runtime, which keeps the control plane.
    pub fn start(
        gw: Arc<Gateway>,
        listeners: Vec<std::net::TcpListener>,
        tls: Arc<rustls::ServerConfig>,
        grace: Duration,
    ) -> io::Result<Workers> {
        let limits: &Limits = &gw.settings.client_limits;
        let shared = Shared {
            permits: Arc::new(Semaphore::new(
                limits.max_connections.min(u32::MAX as usize),
            )),
            grace,
            control: tokio::runtime::Handle::current(),
        };
        let (closing, closing_rx) = watch::channel(false);
        let mut threads = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (gw, tls, shared) = (gw.clone(), tls.clone(), shared.clone());
            let rx = closing_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("postern-door-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => {
                                super::accept_loop(gw, l, tls, shared, super::conn::closing(rx))
                                    .await
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "front door thread {i} could not start")
                            }
                        }
                    });
                })?;
            threads.push(thread);
        }
        Ok(Workers { threads, closing })
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace time), and waits
    /// for every thread to end.
    pub async fn stop(self) {
        let _ = self.closing.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        tracing::info!("front door closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port_even_when_asked_for_any() {
        let ls = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(ls.len(), 3);
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn a_second_gateway_on_the_same_port_is_refused() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let err = bind(first[0].local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_port_another_socket_holds_without_reuseport_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
