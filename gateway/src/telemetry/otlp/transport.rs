//! OTLP/HTTP: POST protobuf bodies to `<endpoint>/v1/logs` and `<endpoint>/v1/traces`.

use super::OtlpError;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Which OTLP signal a body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `ExportLogsServiceRequest` to `/v1/logs`.
    Logs,
    /// `ExportTraceServiceRequest` to `/v1/traces`.
    Traces,
}

impl Signal {
    /// The path appended to the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Logs => "/v1/logs",
            Signal::Traces => "/v1/traces",
        }
    }
}

/// A boxed future returned by [`Transport::post`].
pub type PostFuture<'a> = Pin<Box<dyn Future<Output = Result<(), OtlpError>> + Send + 'a>>;

/// Delivers one encoded export request. A trait so the batching loop can be tested without
/// a network.
pub trait Transport: Send + Sync + 'static {
    /// Sends `body` for `signal`; `Ok` once the collector answered 2xx.
    fn post(&self, signal: Signal, body: Vec<u8>) -> PostFuture<'_>;
}

/// The real transport: hyper's pooled client, `http` or `https` (Mozilla roots).
pub struct HttpTransport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl HttpTransport {
    /// A client for `endpoint` (already validated, no trailing slash), sending `headers` on
    /// every request and giving up on one after `timeout`.
    pub fn new(
        endpoint: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
    ) -> Result<Self, OtlpError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| OtlpError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(https);
        Ok(Self {
            client,
            endpoint,
            headers,
            timeout,
        })
    }

    async fn send(&self, signal: Signal, body: Vec<u8>) -> Result<(), OtlpError> {
        let mut req = http::Request::post(format!("{}{}", self.endpoint, signal.path()))
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| OtlpError::Request(e.to_string()))?;
        for (k, v) in &self.headers {
            req.headers_mut().append(k.clone(), v.clone());
        }
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| OtlpError::Request(with_sources(&e)))?;
            let status = resp.status();
            // Read the (small) answer so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(OtlpError::Status(status.as_u16()))
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| OtlpError::Timeout(self.timeout))?
    }
}

impl Transport for HttpTransport {
    fn post(&self, signal: Signal, body: Vec<u8>) -> PostFuture<'_> {
        Box::pin(self.send(signal, body))
    }
}

/// `e` and its causes, `: `-separated (hyper's own message is terse: "client error (Connect)").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
