//! The pooled HTTP client that carries requests to upstreams.

use super::BoxBody;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

type PooledClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, BoxBody>;

/// Per-config overrides of the client's timeouts (`config.upstream.timeout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a connection; `None` keeps the gateway's flag.
    pub connect: Option<Duration>,
    /// Longest wait for the response headers; `None` keeps the gateway's flag.
    pub response_header: Option<Duration>,
}

/// How a request to an upstream failed, and so which status the caller answers with and
/// whether the request may have reached the upstream ([`UpstreamError::not_sent`]).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS): nothing was sent.
    #[error("could not connect to the upstream ({0}); check config.upstream.url and that the upstream is up")]
    Connect(String),
    /// A connection was made but the request was provably not sent on it: hyper handed it
    /// back unsent (the connection closed first), or HTTP/2 `REFUSED_STREAM`.
    #[error("the upstream connection closed before the request was sent ({0}); check the upstream's connection limits and logs")]
    Unsent(String),
    /// No connection within the connect timeout: nothing was sent.
    #[error("could not connect to the upstream in time; check that it is up or raise upstream.timeout.connect")]
    ConnectTimeout,
    /// No response headers within the response-header timeout: the request may be running.
    #[error("the upstream did not answer in time; check its health or raise the gateway's upstream timeouts")]
    Timeout,
    /// TLS setup or the handshake failed (bad certificate, unknown CA, bad CA file).
    #[error("TLS with the upstream failed ({0}); if it uses a private CA, give the gateway that CA's PEM file")]
    Tls(String),
    /// The upstream broke HTTP after the request was (maybe partly) written: closed or reset
    /// before or during the response headers, or a malformed reply.
    #[error("the upstream broke the HTTP exchange ({0}); check the upstream's logs")]
    Protocol(String),
}

impl UpstreamError {
    /// The status the gateway answers the caller with: 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout | UpstreamError::ConnectTimeout => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// True when no byte of the request can have reached the upstream, so sending it again
    /// cannot make the upstream act twice, whatever the method.
    pub fn not_sent(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::Unsent(_)
            | UpstreamError::ConnectTimeout
            | UpstreamError::Tls(_) => true,
            UpstreamError::Timeout | UpstreamError::Protocol(_) => false,
        }
    }
}

/// Settings for [`UpstreamClient::new`].
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Extra trusted CA certificates, each a PEM file's contents (may hold several certificates),
    /// added to the Mozilla roots for upstreams with private certificates.
    pub extra_ca_pem: Vec<Vec<u8>>,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait from sending a request to receiving the response headers (the body then
    /// streams without a deadline, as LLM streams can be long).
    pub response_header_timeout: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            extra_ca_pem: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(60),
        }
    }
}

/// The pooled client for all upstreams.
///
/// Exists so connections (and TLS sessions) to providers are reused across requests: HTTP/2 or
/// HTTP/1.1 chosen by ALPN for `https` upstreams, HTTP/1.1 for `http` upstreams. Cheap to clone.
///
/// Each thread keeps its own pool: a connection's task runs on the runtime that opened it, so
/// a front-door thread ([`crate::frontdoor::workers`]) that used another thread's connection
/// would wake that thread for every read and write.
#[derive(Clone)]
pub struct UpstreamClient {
    /// Tells this client's pools apart from another client's in the thread-local cache.
    id: u64,
    /// Lives as long as a clone of this client does: pools of dropped clients are let go.
    alive: Arc<()>,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    response_header_timeout: Duration,
    tokens: Arc<super::upstream_oauth::TokenCache>,
}

impl UpstreamClient {
    /// Builds the client; fails with [`UpstreamError::Tls`] when an extra CA cannot be used.
    pub fn new(opts: UpstreamOptions) -> Result<Self, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for (i, pem) in opts.extra_ca_pem.iter().enumerate() {
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.map_err(|e| UpstreamError::Tls(format!("CA PEM #{}: {e}", i + 1)))?;
                roots
                    .add(cert)
                    .map_err(|e| UpstreamError::Tls(format!("CA PEM #{}: {e}", i + 1)))?;
                n += 1;
            }
            if n == 0 {
                return Err(UpstreamError::Tls(format!(
                    "CA PEM #{} holds no CERTIFICATE block",
                    i + 1
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();

        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::default(),
            tls,
            connect_timeout: opts.connect_timeout,
            response_header_timeout: opts.response_header_timeout,
            tokens: Arc::default(),
        })
    }

    /// The cache of upstream OAuth2 tokens (`http.auth.oauth2ClientCredentials`).
    pub fn tokens(&self) -> &super::upstream_oauth::TokenCache {
        &self.tokens
    }

    /// This thread's pool for connections that time out after `connect` (a config's own
    /// timeout, else the gateway's).
    fn client_for(&self, connect: Option<Duration>) -> PooledClient {
        let connect = connect.unwrap_or(self.connect_timeout);
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if let Some((client, _)) = pools.get(&(self.id, connect)) {
                return client.clone();
            }
            pools.retain(|_, (_, alive)| alive.strong_count() > 0);
            let client = build_client(self.tls.clone(), connect);
            pools.insert(
                (self.id, connect),
                (client.clone(), Arc::downgrade(&self.alive)),
            );
            client
        })
    }

    /// Sends a request whose URI is absolute (see `rewrite::upstream_request`) and returns the
    /// response as soon as its headers arrive; the body streams from `Incoming`. The request's
    /// HTTP version is ignored: the upstream connection's protocol is chosen by ALPN.
    pub async fn send(
        &self,
        req: http::Request<BoxBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        self.send_with(req, Timeouts::default()).await
    }

    /// [`send`](Self::send) with a config's own timeouts.
    pub async fn send_with(
        &self,
        mut req: http::Request<BoxBody>,
        timeouts: Timeouts,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        // The caller's HTTP version says nothing about the upstream connection: ALPN decides, and
        // hyper refuses an HTTP/2-tagged request on an HTTP/1.1 connection.
        *req.version_mut() = http::Version::HTTP_11;
        let client = self.client_for(timeouts.connect);
        let wait = timeouts
            .response_header
            .unwrap_or(self.response_header_timeout);
        match tokio::time::timeout(wait, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// One thread's pools, by client id and connect timeout, each with its client's liveness.
type ThreadPools = HashMap<(u64, Duration), (PooledClient, Weak<()>)>;

thread_local! {
    static POOLS: RefCell<ThreadPools> = RefCell::default();
}

/// A pooled client whose connections time out after `connect_timeout`.
fn build_client(tls: rustls::ClientConfig, connect_timeout: Duration) -> PooledClient {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(https)
}

/// What the causes of a client error show.
#[derive(Debug, Default, PartialEq, Eq)]
struct Causes {
    timed_out: bool,
    tls: bool,
    /// hyper handed the request back unsent (`hyper::Error::is_canceled`).
    canceled: bool,
    /// The HTTP/2 peer refused the stream before processing it (RFC 9113 section 8.7).
    refused_stream: bool,
}

/// Walks the causes of `e`, collecting their messages and what they show.
fn causes(e: &(dyn StdError + 'static)) -> (Causes, String) {
    let mut parts = Vec::new();
    let mut found = Causes::default();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        parts.push(err.to_string());
        if err.downcast_ref::<rustls::Error>().is_some() {
            found.tls = true;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            found.canceled |= h.is_canceled();
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            found.refused_stream |= h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        let mut next = err.source();
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            found.timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            // io::Error::source skips its own payload, so look at the payload directly.
            if let Some(inner) = io.get_ref() {
                if inner.downcast_ref::<rustls::Error>().is_some() {
                    found.tls = true;
                }
                next = Some(inner as &(dyn StdError + 'static));
            }
        }
        cur = next;
    }
    parts.dedup();
    (found, parts.join(": "))
}

/// Sorts a client error by when it happened: while connecting (timeout, TLS, refused: nothing
/// sent), on a connection that never took the request (nothing sent), or after the request
/// was written (maybe delivered). Only the first two may be sent again for any method.
fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let (c, msg) = causes(e);
    if e.is_connect() {
        if c.timed_out {
            UpstreamError::ConnectTimeout
        } else if c.tls {
            UpstreamError::Tls(msg)
        } else {
            UpstreamError::Connect(msg)
        }
    } else if c.canceled || c.refused_stream {
        UpstreamError::Unsent(msg)
    } else if c.timed_out {
        UpstreamError::Timeout
    } else {
        UpstreamError::Protocol(msg)
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
