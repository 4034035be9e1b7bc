//! The loopback listener of RFC 8252 section 7.3: a tiny HTTP server on 127.0.0.1 (or
//! [::1]) with a port the OS picks, alive only while `postern login` waits. Each connection
//! gets its own thread with a read deadline, so a browser's idle preconnect or a stalled
//! stranger cannot hold up the real redirect; the number of connections at once is capped.

use super::callback::{self, Callback, Handled, Head};
use super::urls;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long one connection may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 32;
/// How often the accept loop looks at the clock and the results.
const POLL: Duration = Duration::from_millis(20);

/// A bound loopback listener waiting for one sign-in callback.
pub struct Loopback {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The browser's connection that delivered the callback: answered once the login is over,
/// so the page tells the truth about the outcome.
pub struct Pending {
    stream: TcpStream,
}

impl Pending {
    /// Sends `response` and closes the connection; a browser that went away is no error.
    pub fn answer(mut self, response: &[u8]) {
        let _ = self.stream.write_all(response);
        let _ = self.stream.flush();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Loopback {
    /// Binds 127.0.0.1 on a port chosen by the OS, or [::1] when IPv4 loopback is missing.
    pub fn bind() -> io::Result<Loopback> {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).or_else(|_| TcpListener::bind(("::1", 0)))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        Ok(Loopback { listener, addr })
    }

    /// The redirect URI the gateway must send the browser to.
    pub fn redirect_uri(&self) -> String {
        urls::redirect_uri(self.addr)
    }

    /// Serves requests until the callback with `state` arrives (`Some`) or `timeout` passes
    /// (`None`). Requests that are not the callback are answered and otherwise ignored.
    pub fn wait(&self, state: &str, timeout: Duration) -> io::Result<Option<(Callback, Pending)>> {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = mpsc::channel::<(Callback, TcpStream)>();
        let active = Arc::new(AtomicUsize::new(0));
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        drop(stream);
                        continue;
                    }
                    active.fetch_add(1, Ordering::SeqCst);
                    let (tx, active, state) = (tx.clone(), active.clone(), state.to_string());
                    std::thread::spawn(move || {
                        serve(stream, &state, &tx);
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection that died before accept() completed; keep serving.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            match rx.recv_timeout(POLL.min(deadline - now)) {
                Ok((cb, stream)) => return Ok(Some((cb, Pending { stream }))),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("tx is held here"),
            }
        }
    }
}

/// Reads one request head (bounded in size and time) and answers it, or hands the
/// connection over when it is the callback.
fn serve(mut stream: TcpStream, state: &str, tx: &mpsc::Sender<(Callback, TcpStream)>) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_len = loop {
        match callback::find_head(&buf) {
            Head::Complete(n) => break n,
            Head::TooLarge => {
                let _ = stream.write_all(&super::pages::failed(431, "The request is too large."));
                drain_and_close(stream);
                return;
            }
            Head::Incomplete => {}
        }
        let left = READ_TIMEOUT.saturating_sub(started.elapsed());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    match callback::handle(&buf[..head_len], state) {
        Handled::Ignore(response) => {
            let _ = stream.write_all(&response);
            drain_and_close(stream);
        }
        Handled::Callback(cb) => {
            let _ = tx.send((cb, stream));
        }
    }
}

/// Closes after an early answer without resetting it away: with unread input still queued,
/// closing would send a TCP reset that can destroy the answer before the client reads it. So
/// stop writing, then discard what is still coming (at most 64 KiB, at most a second).
fn drain_and_close(mut stream: TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    while left > 0 && started.elapsed() < Duration::from_secs(1) {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}
