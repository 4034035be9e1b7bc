//! Limits on what a client can hold or send before (and while) it is served: connections,
//! time to send the request head and body, head size, streams, idle time, in-flight
//! requests. One [`Limits`] value, built from `posternd serve` flags, configures both the
//! public front door and the tunnel's HTTP server, so a stranger meets the same bounds at
//! every door.

use crate::proxy::buffer::BodyTimeouts;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::time::Duration;

/// Largest OAuth2 token request form.
pub const MAX_TOKEN_FORM: usize = 16 * 1024;

/// How often an idle HTTP/2 connection is pinged to learn that its peer is gone.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// The bounds every listener applies; the defaults are those documented in
/// `docs/operations.md` ("Limits and overload").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to finish the TLS handshake.
    pub tls_handshake: Duration,
    /// Time to send a request head: from the start of a connection to its first request,
    /// and (HTTP/1.1) from the end of one response to the end of the next request head.
    pub header_read: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle: Duration,
    /// Largest request head (HTTP/1.1 buffer) and HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// Streams a client may open and reset before the server accepts them, per HTTP/2
    /// connection, before it gets GOAWAY (the "rapid reset" attack, CVE-2023-44487).
    pub max_h2_pending_resets: usize,
    /// Streams the server may reset for a client's protocol errors, per HTTP/2 connection,
    /// before it gets GOAWAY (the "made you reset" attack, CVE-2025-8671).
    pub max_h2_error_resets: usize,
    /// Open connections per listener; a connection past it is closed as soon as accepted.
    pub max_connections: usize,
    /// Requests in flight in the gateway (until their response body ends); past it a
    /// request gets 503 with `Retry-After` at once.
    pub max_inflight: usize,
    /// What `Retry-After` says on a shed request.
    pub retry_after: Duration,
    /// Time to send a request body, extended by its size at a minimum rate.
    pub body: BodyTimeouts,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(15),
            idle: Duration::from_secs(120),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_h2_streams: 256,
            max_h2_pending_resets: 20,
            max_h2_error_resets: 1024,
            max_connections: 10_000,
            max_inflight: 4096,
            retry_after: Duration::from_secs(1),
            body: BodyTimeouts::default(),
        }
    }
}

impl Limits {
    /// The HTTP/1.1 and HTTP/2 server settings of the public front door.
    pub fn server_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read)
            .max_buf_size(self.h1_buf_size())
            .max_headers(self.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.max_h2_streams)
            .max_pending_accept_reset_streams(self.max_h2_pending_resets)
            .max_local_error_reset_streams(self.max_h2_error_resets)
            .keep_alive_interval(Some(H2_KEEPALIVE));
        builder
    }

    /// The HTTP/1.1 server settings of the tunnel's Service listeners.
    pub fn http1_builder(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read)
            .max_buf_size(self.h1_buf_size())
            .max_headers(self.max_headers);
        builder
    }

    /// hyper refuses a read buffer under 8 KiB.
    fn h1_buf_size(&self) -> usize {
        self.max_header_bytes.max(8192)
    }

    /// True when a request carries more header fields than allowed. HTTP/1.1 heads are
    /// checked by hyper while parsing; HTTP/2 header lists only by size, so this covers them.
    pub fn too_many_headers(&self, headers: &http::HeaderMap) -> bool {
        headers.len() > self.max_headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_count_is_bounded() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let mut h = http::HeaderMap::new();
        for i in 0..3 {
            h.append(
                http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                http::HeaderValue::from_static("v"),
            );
        }
        assert!(!limits.too_many_headers(&h));
        h.append("x-0", http::HeaderValue::from_static("again"));
        assert!(limits.too_many_headers(&h));
    }

    #[test]
    fn small_header_limits_keep_a_usable_h1_buffer() {
        let limits = Limits {
            max_header_bytes: 1024,
            ..Limits::default()
        };
        assert_eq!(limits.h1_buf_size(), 8192);
    }
}
