//! The plain-HTTP listener (`--http-listen`): answers HTTP-01 challenges and sends every
//! other request to https. It redirects only the gateway's own names (DOMAIN and
//! SVC.DOMAIN), so it cannot be used as an open redirector, and it never reads a body.

use crate::certs::Certificates;
use crate::frontdoor::host::request_host;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Time to send the request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection may live (one request, then closed).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (hyper's read buffer; 8 KiB is its minimum).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Longest challenge token accepted in a path (Let's Encrypt's are 43 characters).
const MAX_TOKEN: usize = 256;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// Where redirects go.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// The gateway's domain (lowercase).
    pub domain: String,
    /// `--https-listen`'s port; left out of the URL when 443.
    pub https_port: u16,
}

/// Serves `listener` until the task is dropped, at most `max_connections` at a time (past
/// it a new connection is closed at once, as on the HTTPS listener).
pub async fn serve(
    certs: Arc<Certificates>,
    listener: TcpListener,
    redirect: Redirect,
    max_connections: usize,
) {
    let redirect = Arc::new(redirect);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "--http-listen accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let certs = certs.clone();
        let redirect = redirect.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let resp =
                        respond(req.method(), req.uri(), req.headers(), &redirect, |token| {
                            certs.http01(token)
                        });
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), svc);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "http connection ended with an error")
                }
                Err(_) => tracing::debug!(%peer, "http connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// The answer to one request: the key authorization for a known token, a 308 to https for
/// the gateway's names, else 404 (400 for an unusable Host).
pub fn respond(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    redirect: &Redirect,
    key_authorization: impl Fn(&str) -> Option<String>,
) -> Response<Full<Bytes>> {
    let path = uri.path();
    if let Some(token) = path.strip_prefix(PREFIX) {
        let answer = (matches!(*method, Method::GET | Method::HEAD) && valid_token(token))
            .then(|| key_authorization(token))
            .flatten();
        return match answer {
            Some(ka) => text(StatusCode::OK, ka),
            None => text(
                StatusCode::NOT_FOUND,
                "no such ACME challenge token\n".into(),
            ),
        };
    }
    let host = match request_host(uri.authority(), headers.get_all(header::HOST)) {
        Ok(h) => h,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if !ours(&host, &redirect.domain) || !path.starts_with('/') {
        return text(
            StatusCode::NOT_FOUND,
            "not found: this gateway serves its own names only, over https\n".into(),
        );
    }
    let port = match redirect.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let target = uri.path_and_query().map_or(path, |pq| pq.as_str());
    let location = format!("https://{host}{port}{target}");
    let Ok(location) = HeaderValue::from_str(&location) else {
        return text(StatusCode::BAD_REQUEST, "unusable request target\n".into());
    };
    let mut resp = text(StatusCode::PERMANENT_REDIRECT, "use https\n".into());
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// DOMAIN itself or one label under it.
fn ours(host: &str, domain: &str) -> bool {
    host == domain || crate::frontdoor::host::service_label(host, domain).is_some()
}

/// A token is base64url (RFC 8555 section 8.3).
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
#[path = "http01_tests.rs"]
mod tests;
