//! The HTTP client the relying party talks to the IdP with: the gateway's own hyper-util +
//! rustls stack, bounded so an IdP (or whoever answers in its name) cannot hold the gateway
//! up or fill its memory.

use super::checks::{check_idp_url, UrlProblem};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use openidconnect::{HttpRequest, HttpResponse};
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

/// Largest IdP response body read (discovery, JWKS, token response).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest wait for a whole IdP exchange: connect, TLS, request and the full response body.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why an exchange with the IdP failed. Never holds a request body (it carries the code and
/// maybe the client secret), only the URL without its query.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not one the gateway sends IdP traffic to.
    #[error("refused to contact {url}: {why}")]
    Refused {
        /// The URL without query.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// No complete answer within [`TIMEOUT`].
    #[error("no complete answer from {url} within {} s; check that the IdP is up and reachable from the gateway", TIMEOUT.as_secs())]
    Timeout {
        /// The URL without query.
        url: String,
    },
    /// The answer's body is larger than [`MAX_BODY_BYTES`].
    #[error("the answer from {url} is larger than {} KiB; check that the URL is the IdP's", MAX_BODY_BYTES / 1024)]
    TooLarge {
        /// The URL without query.
        url: String,
    },
    /// Connecting, TLS or HTTP failed.
    #[error("could not talk to {url} ({detail}); check that the gateway can reach the IdP and trusts its certificate (give a private CA's PEM if it uses one)")]
    Transport {
        /// The URL without query.
        url: String,
        /// The error chain.
        detail: String,
    },
}

/// A pooled client for one IdentityProvider. Cheap to clone.
#[derive(Clone)]
pub struct IdpHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl IdpHttp {
    /// Builds the client trusting the Mozilla roots plus `extra_root_ca_pem` (a PEM file's
    /// contents, one or more certificates). `Err` says what is wrong with the PEM.
    pub fn new(extra_root_ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(mut pem) = extra_root_ca_pem {
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem) {
                let cert = cert.map_err(|e| e.to_string())?;
                roots.add(cert).map_err(|e| e.to_string())?;
                n += 1;
            }
            if n == 0 {
                return Err("the PEM holds no CERTIFICATE block".into());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(4)
            .build(https);
        Ok(Self { client })
    }

    /// Sends one request and reads the whole answer, within [`TIMEOUT`] and
    /// [`MAX_BODY_BYTES`]. Redirects are returned as they are, never followed; an `http://`
    /// URL to a host that is not loopback is refused before anything is sent.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let url = display_url(&req.uri().to_string());
        if let Err(p) = check_idp_url(&req.uri().to_string()) {
            return Err(HttpError::Refused {
                url,
                why: match p {
                    UrlProblem::Cleartext => {
                        "http:// is allowed only on a loopback host; use https://".into()
                    }
                    UrlProblem::Scheme(s) => format!("scheme `{s}` is not http(s)"),
                    UrlProblem::Unparseable(e) => e,
                    UrlProblem::Extra(what) => format!("it has {what}"),
                },
            });
        }
        let (mut parts, body) = req.into_parts();
        parts.version = http::Version::HTTP_11;
        let req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        match tokio::time::timeout(TIMEOUT, self.exchange(req, &url)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout { url }),
        }
    }

    /// A GET of `url` through [`send`](Self::send).
    pub async fn get(&self, url: &str) -> Result<HttpResponse, HttpError> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| HttpError::Refused {
                url: display_url(url),
                why: e.to_string(),
            })?;
        self.send(req).await
    }

    async fn exchange(
        &self,
        req: http::Request<Full<Bytes>>,
        url: &str,
    ) -> Result<HttpResponse, HttpError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| HttpError::Transport {
                url: url.to_string(),
                detail: error_chain(&e),
            })?;
        let too_large = || HttpError::TooLarge {
            url: url.to_string(),
        };
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let (parts, body) = resp.into_parts();
        let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) => {
                return Err(HttpError::Transport {
                    url: url.to_string(),
                    detail: error_chain(e.as_ref()),
                })
            }
        };
        Ok(http::Response::from_parts(parts, bytes.to_vec()))
    }
}

/// The URL as shown in errors: without query or fragment.
fn display_url(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_string()
}

/// The messages of `e` and its sources, joined.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_errors_lose_their_query() {
        assert_eq!(
            display_url("https://idp/token?code=secret#x"),
            "https://idp/token"
        );
        assert_eq!(display_url("https://idp/jwks"), "https://idp/jwks");
    }

    #[test]
    fn a_pem_without_certificates_is_refused() {
        let err = IdpHttp::new(Some(b"not a pem".as_slice()))
            .err()
            .expect("refused");
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw server answering every connection with `head` then `chunks` chunks of 64 KiB
    /// (chunked encoding), or never answering when `head` is empty.
    async fn raw_server(head: &'static str, chunks: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/x",
            listener.local_addr().unwrap().port()
        );
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    if head.is_empty() {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let _ = s.write_all(head.as_bytes()).await;
                    let chunk = vec![b'x'; 64 * 1024];
                    for _ in 0..chunks {
                        let _ = s
                            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await;
                        let _ = s.write_all(&chunk).await;
                        let _ = s.write_all(b"\r\n").await;
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        url
    }

    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_cut_off() {
        let http = IdpHttp::new(None).unwrap();
        let small = raw_server(CHUNKED, 2).await;
        assert_eq!(http.get(&small).await.unwrap().body().len(), 128 * 1024);
        let big = raw_server(CHUNKED, MAX_BODY_BYTES / (64 * 1024) + 1).await;
        let err = http.get(&big).await.unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_idp_times_out() {
        let http = IdpHttp::new(None).unwrap();
        let url = raw_server("", 0).await;
        let err = http.get(&url).await.unwrap_err();
        assert!(matches!(err, HttpError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn cleartext_to_a_remote_host_is_refused_before_sending() {
        let http = IdpHttp::new(None).unwrap();
        let err = http.get("http://idp.example.com/jwks").await.unwrap_err();
        assert!(matches!(err, HttpError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("use https://"), "{err}");
    }
}
