//! Sending an authorized request to its upstream: rewriting it for the chosen config
//! (path, headers, injected credentials) and sending it through the pooled client. This is
//! the one place that talks to upstreams, so resilience (retries, fallback, load balancing)
//! belongs here.

use super::{rewrite, BoxBody};
use crate::state::Gateway;
use crate::state::{Snapshot, UpstreamConfig};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::IpAddr;

/// Why a request could not be forwarded: what the caller sees and what the log records.
#[derive(Debug)]
pub struct ForwardError {
    pub status: StatusCode,
    /// Safe to show the caller: names no upstream address or secret.
    pub public: &'static str,
    /// For the access log.
    pub detail: String,
}

/// Where the request came from, for `X-Forwarded-*`.
pub struct Origin<'a> {
    pub client_ip: Option<IpAddr>,
    /// The host the client addressed (`svc.domain`).
    pub host: &'a str,
}

/// Rewrites `parts` for `config` and sends the request upstream.
pub async fn forward(
    gw: &Gateway,
    snap: &Snapshot,
    config: &UpstreamConfig,
    mut parts: http::request::Parts,
    body: BoxBody,
    origin: &Origin<'_>,
) -> Result<Response<Incoming>, ForwardError> {
    let secret = |n: &str| snap.secret(n);
    rewrite::upstream_request(
        &mut parts,
        &config.url,
        config.http.as_ref(),
        &secret,
        origin.client_ip,
        origin.host,
    )
    .map_err(|e| ForwardError {
        status: StatusCode::BAD_GATEWAY,
        public: "the gateway could not prepare the upstream request",
        detail: e.to_string(),
    })?;
    parts.version = http::Version::HTTP_11;
    gw.upstream
        .send(Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            let status = e.status();
            ForwardError {
                status,
                public: if status == StatusCode::GATEWAY_TIMEOUT {
                    "the upstream did not answer in time"
                } else {
                    "the upstream could not be reached"
                },
                detail: e.to_string(),
            }
        })
}
