//! The public front door: one TLS listener (HTTP/1.1 and HTTP/2 by ALPN) that sends the
//! bare domain to the control plane (OAuth2, control API, health) and `<svc>.<domain>` to
//! the request pipeline.

pub mod control;
pub mod host;
pub mod metrics;
pub mod oauth2;
pub mod observe;
pub mod respond;
pub mod tls;

use crate::proxy::inbound::{self, ClientRequest};
use crate::proxy::pipeline;
use crate::proxy::BoxBody;
use crate::state::Gateway;
use http::{Method, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Limits on what a stranger can send before being authenticated.
pub mod limits {
    use std::time::Duration;
    /// Time to finish the TLS handshake.
    pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
    /// Time to send the request head (HTTP/1.1).
    pub const HEADER_READ: Duration = Duration::from_secs(15);
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    /// Concurrent streams per HTTP/2 connection.
    pub const MAX_H2_STREAMS: u32 = 256;
    /// Open connections at once; more wait in the kernel's accept queue.
    pub const MAX_CONNECTIONS: usize = 20_000;
    /// Largest OAuth2 token request form.
    pub const MAX_TOKEN_FORM: usize = 16 * 1024;
}

/// Accepts connections on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (up to `grace`).
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ)
        .max_buf_size(limits::MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits::MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(limits::MAX_H2_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits::MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let gw = gw.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(limits::TLS_HANDSHAKE, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move {
                    let (req, leftover) = inbound::wrap(req);
                    let resp = route(gw, req, peer).await;
                    leftover.drain_in_background();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
}

async fn route(gw: Arc<Gateway>, req: ClientRequest, peer: SocketAddr) -> Response<BoxBody> {
    let host = match host::request_host(
        req.uri().authority(),
        req.headers().get_all(http::header::HOST),
    ) {
        Ok(h) => h,
        Err(e) => return respond::error(StatusCode::BAD_REQUEST, e.to_string(), None),
    };
    if host == gw.domain {
        return control_plane(&gw, req).await;
    }
    match host
        .strip_suffix(gw.domain.as_str())
        .and_then(|h| h.strip_suffix('.'))
    {
        Some(label) if !label.is_empty() && !label.contains('.') => {
            let label = label.to_string();
            pipeline::handle(gw, &label, req, peer).await
        }
        _ => respond::not_found(),
    }
}

async fn control_plane(gw: &Gateway, req: ClientRequest) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => respond::json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "sessions": gw.session_count()}),
        ),
        (Method::GET, "/.well-known/oauth-authorization-server") => {
            oauth2::metadata(&issuer(gw, &req))
        }
        (Method::POST, "/oauth2/token") => {
            let headers = req.headers().clone();
            match crate::proxy::buffer::read_limited(req.into_body(), limits::MAX_TOKEN_FORM).await
            {
                Ok(body) => oauth2::token(gw, &headers, &body),
                Err(e) => respond::error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string(), None),
            }
        }
        (_, "/oauth2/token") => respond::error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None),
        (_, p)
            if p == postern_common::api::API_PREFIX
                || p.starts_with(&format!("{}/", postern_common::api::API_PREFIX)) =>
        {
            control::handle(gw, req).await
        }
        _ => respond::not_found(),
    }
}

/// `https://<domain>[:port]` as the client addressed us, for OAuth2 metadata.
fn issuer(gw: &Gateway, req: &ClientRequest) -> String {
    let port = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .and_then(|h| h.rsplit_once(':').map(|(_, p)| p.to_string()))
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && p != "443");
    match port {
        Some(p) => format!("https://{}:{p}", gw.domain),
        None => format!("https://{}", gw.domain),
    }
}
