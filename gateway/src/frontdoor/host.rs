//! Which host a request names, from the request target's authority (HTTP/2 `:authority`, an
//! HTTP/1.1 absolute-form target) and the `Host` header.
//!
//! Routing and authorization key on this name, so it must be one name: when the two sources
//! disagree, or `Host` is repeated or malformed, the request is refused instead of picking
//! one (a proxy in front of the gateway, or the upstream, might pick the other). RFC 9113
//! section 8.3.1 makes a disagreeing `Host` malformed in HTTP/2; for an HTTP/1.1
//! absolute-form target RFC 9112 section 3.2.2 lets a server ignore `Host`, and the gateway
//! refuses the disagreement instead.

use http::header::{GetAll, HeaderValue};
use http::uri::Authority;

/// Why the request's host could not be determined; each answers 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// Neither an authority nor a `Host` header.
    #[error("missing Host: send a Host header naming the Service, e.g. Host: <service>.<domain>")]
    Missing,
    /// More than one `Host` header.
    #[error("more than one Host header: send exactly one")]
    Repeated,
    /// A `Host` that is not `host[:port]`.
    #[error("the Host header is not a valid host[:port]: send the Service's host name")]
    Invalid,
    /// `Host` names another host than the request target's authority.
    #[error("the Host header names another host than the request target: send the same host in both, or leave Host out")]
    Mismatch,
}

/// The Service label a host names under `domain` (`gemini` for `gemini.example.com`): exactly
/// one non-empty label, else `None` (the domain itself, deeper names, other domains).
pub fn service_label<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    host.strip_suffix(domain)
        .and_then(|h| h.strip_suffix('.'))
        .filter(|label| !label.is_empty() && !label.contains('.'))
}

/// The request's host name: lowercase, without port, userinfo or trailing dot.
pub fn request_host(
    authority: Option<&Authority>,
    host_headers: GetAll<'_, HeaderValue>,
) -> Result<String, HostError> {
    let mut headers = host_headers.iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err(HostError::Repeated);
    }
    let from_header = header.map(host_of_header).transpose()?;
    let from_target = authority.map(|a| canonical(a.host()));
    match (from_target, from_header) {
        (Some(t), Some(h)) if t != h => Err(HostError::Mismatch),
        (Some(t), _) => Ok(t),
        (None, Some(h)) => Ok(h),
        (None, None) => Err(HostError::Missing),
    }
}

fn host_of_header(v: &HeaderValue) -> Result<String, HostError> {
    let s = v.to_str().map_err(|_| HostError::Invalid)?;
    if s.is_empty() || s.contains('@') {
        return Err(HostError::Invalid);
    }
    let a: Authority = s.parse().map_err(|_| HostError::Invalid)?;
    Ok(canonical(a.host()))
}

fn canonical(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn a_service_label_is_exactly_one_label_under_the_domain() {
        assert_eq!(service_label("gemini.p.test", "p.test"), Some("gemini"));
        assert_eq!(service_label("p.test", "p.test"), None);
        assert_eq!(service_label(".p.test", "p.test"), None);
        assert_eq!(service_label("a.b.p.test", "p.test"), None);
        assert_eq!(service_label("gemini.xp.test", "p.test"), None);
        assert_eq!(service_label("geminip.test", "p.test"), None);
    }

    fn run(authority: Option<&str>, hosts: &[&str]) -> Result<String, HostError> {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(http::header::HOST, HeaderValue::from_str(v).unwrap());
        }
        let a = authority.map(|a| a.parse::<Authority>().unwrap());
        request_host(a.as_ref(), h.get_all(http::header::HOST))
    }

    #[test]
    fn one_source_gives_the_canonical_host() {
        assert_eq!(run(None, &["Svc.Example.:8443"]).unwrap(), "svc.example");
        assert_eq!(run(Some("svc.example:443"), &[]).unwrap(), "svc.example");
        assert_eq!(run(None, &["[::1]:8443"]).unwrap(), "[::1]");
    }

    #[test]
    fn agreeing_sources_pass_whatever_the_port_or_case() {
        assert_eq!(
            run(Some("svc.example:8443"), &["SVC.example"]).unwrap(),
            "svc.example"
        );
    }

    #[test]
    fn disagreeing_repeated_or_bad_hosts_are_refused() {
        assert_eq!(
            run(Some("a.example"), &["b.example"]),
            Err(HostError::Mismatch)
        );
        assert_eq!(
            run(Some("127.0.0.1:9000"), &["a.example"]),
            Err(HostError::Mismatch)
        );
        assert_eq!(
            run(None, &["a.example", "b.example"]),
            Err(HostError::Repeated)
        );
        assert_eq!(
            run(None, &["a.example", "a.example"]),
            Err(HostError::Repeated)
        );
        for bad in ["", "user@a.example", "a.example/x", "a b"] {
            assert_eq!(run(None, &[bad]), Err(HostError::Invalid), "{bad:?}");
        }
        assert_eq!(run(None, &[]), Err(HostError::Missing));
    }
}
