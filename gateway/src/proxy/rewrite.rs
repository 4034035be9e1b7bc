//! Turning the caller's request into the upstream's request: path, hop-by-hop and
//! identity headers, forwarding headers, operator header edits and injected credentials.
//!
//! Everything here is pure (no I/O) so the rules are unit-tested directly.

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use postern_common::resources::{HttpConfig, KeyValue};
use std::net::IpAddr;

/// Why a request could not be rewritten for its upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RewriteError {
    /// The Secret named by `auth.*.fromSecret` does not exist. The caller answers 502 without
    /// the name and logs the name for the operator.
    #[error("secret {0:?} is missing: create it with `posternctl create secret {0}`")]
    MissingSecret(String),
    /// The Secret exists but cannot be sent in an HTTP header (newline, control characters).
    #[error("secret {0:?} holds characters not allowed in an HTTP header: store it again without newlines or control characters")]
    InvalidSecretValue(String),
    /// A header name or value in the Service's `http.header` or `http.auth.custom` is not valid HTTP.
    #[error("header {name:?} in the Service config is not valid HTTP ({reason}): fix the Service and apply it again")]
    InvalidHeader { name: String, reason: String },
    /// `config.upstream.url` is not an `http`/`https` URL with a host.
    #[error("upstream URL {0:?} must be http:// or https:// with a host: fix config.upstream.url")]
    BadUpstream(String),
    /// The request path is unsafe or malformed; the caller answers 400.
    #[error("request path rejected: {0}")]
    BadPath(&'static str),
    /// The rewritten URI could not be built (should not happen after the checks above).
    #[error("could not build the upstream URI: {0}")]
    InvalidUri(String),
}

/// Headers meaningful only for one connection (RFC 9110 §7.6.1); never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers through which a caller could claim another client address, scheme,
/// host, path or method than the gateway saw; see [`drop_client_forwarding`].
const CLIENT_CLAIMS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Removes what a caller could send to pose as another client address or scheme
/// (`Forwarded`, every `X-Forwarded-*`, `X-Real-IP` and its kin) or to make an upstream
/// serve another path or method than the one policy decided on (`X-Original-URL`,
/// `X-Rewrite-URL`, `X-HTTP-Method-Override` and its kin).
///
/// Exists because the gateway is the edge: nothing in front of it vouches for these, so
/// policy must not see them (the client address is `ctx.request.ip`, the socket's peer) and
/// the upstream gets only the gateway's own `X-Forwarded-For/Proto/Host` (set by
/// [`upstream_request`]).
pub fn drop_client_forwarding(headers: &mut HeaderMap) {
    // One pass over the names the request has (usually none of these) rather than a
    // lookup per listed name.
    remove_where(headers, |n| {
        n.starts_with("x-forwarded-") || CLIENT_CLAIMS.contains(&n)
    });
}

/// Removes every header whose name satisfies `doomed`.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| doomed(k.as_str()))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

// Names used on every request, made once (a `&str` key is copied into a new name each time).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Rewrites `parts` in place into the request sent to `upstream`.
///
/// Exists so the whole forwarding transformation (and its security rules: the caller's
/// `Authorization`, `Proxy-Authorization` and `Cookie` never reach the upstream) is in one
/// place. The path is normalized again here, so a caller that forgot [`normalize_path`] still
/// cannot climb above `/`. The caller's forwarding claims are replaced by the gateway's view:
/// `X-Forwarded-For` is `client_ip` alone, `X-Forwarded-Proto` is `https`,
/// `X-Forwarded-Host` is `original_host`.
pub fn upstream_request(
    parts: &mut http::request::Parts,
    upstream: &url::Url,
    http: Option<&HttpConfig>,
    secret: &dyn Fn(&str) -> Option<String>,
    client_ip: Option<IpAddr>,
    original_host: &str,
) -> Result<(), RewriteError> {
    let (scheme, authority) = upstream_authority(upstream)?;
    let path = normalize_path(parts.uri.path())?;
    let path_cfg = http.and_then(|h| h.path.as_ref());
    let stripped = match path_cfg.and_then(|p| p.remove_prefix.as_deref()) {
        Some(prefix) => strip_prefix(&path, prefix),
        None => path.as_str(),
    };
    let add = path_cfg.and_then(|p| p.add_prefix.as_deref()).unwrap_or("");
    let mut new_path = join_paths(&[upstream.path(), add, stripped]);
    if let Some(q) = parts.uri.query() {
        new_path.push('?');
        new_path.push_str(q);
    }
    parts.uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(new_path)
        .build()
        .map_err(|e| RewriteError::InvalidUri(e.to_string()))?;

    // The upstream connection's protocol is chosen by ALPN, not by how the caller arrived.
    parts.version = http::Version::HTTP_11;

    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::COOKIE);
    headers.insert(header::HOST, value(&authority, "host")?);
    drop_client_forwarding(headers);
    if let Some(ip) = client_ip {
        headers.insert(X_FORWARDED_FOR, value(&ip.to_string(), "x-forwarded-for")?);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Ok(v) = HeaderValue::from_str(original_host) {
        headers.insert(X_FORWARDED_HOST, v);
    }

    if let Some(hc) = http.and_then(|h| h.header.as_ref()) {
        edit_headers(headers, &hc.remove_request_headers, &hc.add_request_headers)?;
    }
    if let Some(auth) = http.and_then(|h| h.auth.as_ref()) {
        if let Some(b) = &auth.bearer {
            let v = fetch(secret, &b.from_secret)?;
            headers.insert(
                header::AUTHORIZATION,
                sensitive(&format!("Bearer {v}"), &b.from_secret)?,
            );
        }
        if let Some(b) = &auth.basic {
            let pw = fetch(secret, &b.password.from_secret)?;
            let enc =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{pw}", b.username));
            headers.insert(
                header::AUTHORIZATION,
                sensitive(&format!("Basic {enc}"), &b.password.from_secret)?,
            );
        }
        if let Some(c) = &auth.custom {
            let name = name(&c.header)?;
            let v = fetch(secret, &c.value.from_secret)?;
            headers.insert(name, sensitive(&v, &c.value.from_secret)?);
        }
    }
    Ok(())
}

/// Cleans an upstream response's headers before they go back to the caller: hop-by-hop headers
/// go, then the Service's `removeResponseHeaders` and `addResponseHeaders` apply.
///
/// Exists so response handling mirrors [`upstream_request`]. Invalid operator headers are
/// skipped (and logged) rather than failing a response that already arrived.
pub fn response_headers(headers: &mut HeaderMap, http: Option<&HttpConfig>) {
    remove_hop_by_hop(headers);
    if let Some(hc) = http.and_then(|h| h.header.as_ref()) {
        if let Err(e) = edit_headers(
            headers,
            &hc.remove_response_headers,
            &hc.add_response_headers,
        ) {
            tracing::warn!(error = %e, "skipping invalid response header edit");
        }
    }
}

/// Canonical form of a request path, used before policy so rules see exactly the path the
/// upstream will get: [`postern_common::path::normalize`] (shared with `posternctl policy
/// explain` and `policy test`, so they evaluate what the gateway would), as a rewrite error.
pub fn normalize_path(path: &str) -> Result<String, RewriteError> {
    postern_common::path::normalize(path).map_err(|e| RewriteError::BadPath(e.0))
}

fn upstream_authority(upstream: &url::Url) -> Result<(&str, String), RewriteError> {
    let scheme = upstream.scheme();
    if !matches!(scheme, "http" | "https") || upstream.host_str().is_none() {
        return Err(RewriteError::BadUpstream(upstream.to_string()));
    }
    let authority = upstream[url::Position::BeforeHost..url::Position::AfterPort].to_string();
    Ok((scheme, authority))
}

/// Strips `prefix` at a segment boundary (`/api` strips `/api/x` and `/api`, not `/apix`).
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> &'a str {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path;
    }
    match path.strip_prefix(prefix) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

/// Joins path pieces with exactly one `/` between non-empty pieces, keeping the last piece's
/// trailing slash.
fn join_paths(pieces: &[&str]) -> String {
    let mut s = String::new();
    for p in pieces {
        let t = p.trim_matches('/');
        if !t.is_empty() {
            s.push('/');
            s.push_str(t);
        }
    }
    let last_has_slash = pieces.last().is_some_and(|l| l.ends_with('/'));
    if s.is_empty() || (last_has_slash && !s.ends_with('/')) {
        s.push('/');
    }
    s
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    remove_where(headers, |n| {
        HOP_BY_HOP.contains(&n) || n.starts_with("proxy-")
    });
}

fn edit_headers(
    headers: &mut HeaderMap,
    remove: &[String],
    add: &[KeyValue],
) -> Result<(), RewriteError> {
    for r in remove {
        headers.remove(name(r)?);
    }
    for kv in add {
        headers.insert(name(&kv.key)?, value(&kv.value, &kv.key)?);
    }
    Ok(())
}

fn fetch(secret: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<String, RewriteError> {
    secret(name).ok_or_else(|| RewriteError::MissingSecret(name.to_string()))
}

fn name(n: &str) -> Result<HeaderName, RewriteError> {
    HeaderName::from_bytes(n.trim().as_bytes()).map_err(|e| RewriteError::InvalidHeader {
        name: n.to_string(),
        reason: e.to_string(),
    })
}

fn value(v: &str, header_name: &str) -> Result<HeaderValue, RewriteError> {
    HeaderValue::from_str(v).map_err(|e| RewriteError::InvalidHeader {
        name: header_name.to_string(),
        reason: e.to_string(),
    })
}

/// A credential header value, marked sensitive so it is never printed by `Debug` or indexed by HPACK.
fn sensitive(v: &str, secret_name: &str) -> Result<HeaderValue, RewriteError> {
    let mut hv = HeaderValue::from_str(v)
        .map_err(|_| RewriteError::InvalidSecretValue(secret_name.to_string()))?;
    hv.set_sensitive(true);
    Ok(hv)
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
