//! Where a browser may be sent after signing in: only back to this gateway's own origins
//! (`https://<domain>` and `https://<label>.<domain>` on the port the browser used), so the
//! sign-in page is never an open redirect.

use url::{Host, Url};

/// Why a return address was refused; shown on the error page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReturnUrlError {
    #[error("the return address is not an absolute URL")]
    NotAbsolute,
    #[error("the return address must use https")]
    NotHttps,
    #[error("the return address carries a user name or password")]
    HasUserinfo,
    #[error("{0:?} is not this gateway or one of its Services")]
    ForeignHost(String),
    #[error("the return address is on port {got}, not this gateway's port {want}")]
    WrongPort { got: u16, want: u16 },
}

/// Checks `raw` against the gateway's `domain` and the HTTPS `port` the browser reached it on,
/// and returns the URL to redirect to (normalised by the URL parser).
pub fn check_return_url(raw: &str, domain: &str, port: u16) -> Result<Url, ReturnUrlError> {
    // Control characters and backslashes are refused before parsing: browsers and URL
    // parsers disagree about them, which is how open redirects slip through.
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Err(ReturnUrlError::NotAbsolute);
    }
    let url = Url::parse(raw).map_err(|_| ReturnUrlError::NotAbsolute)?;
    if url.scheme() != "https" {
        return Err(ReturnUrlError::NotHttps);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ReturnUrlError::HasUserinfo);
    }
    let host = match url.host() {
        Some(Host::Domain(h)) => h.to_ascii_lowercase(),
        Some(other) => return Err(ReturnUrlError::ForeignHost(other.to_string())),
        None => return Err(ReturnUrlError::NotAbsolute),
    };
    let domain = domain.to_ascii_lowercase();
    let ours = host == domain
        || host
            .strip_suffix(domain.as_str())
            .and_then(|l| l.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'));
    if !ours {
        return Err(ReturnUrlError::ForeignHost(host));
    }
    let got = url.port_or_known_default().unwrap_or(443);
    if got != port {
        return Err(ReturnUrlError::WrongPort { got, want: port });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> bool {
        check_return_url(raw, "example.test", 8443).is_ok()
    }

    #[test]
    fn own_origins_pass() {
        assert!(ok("https://example.test:8443/"));
        assert!(ok("https://svc.example.test:8443/a/b?q=1#frag"));
        assert!(ok("https://SVC.Example.Test:8443/x"));
        assert!(check_return_url("https://svc.example.test/", "example.test", 443).is_ok());
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "https://evil.com/",
            "https://evil.com\\@example.test:8443/",
            "https://example.test.evil.com:8443/",
            "https://evilexample.test:8443/",
            "https://a.b.example.test:8443/",
            "https://user:pw@example.test:8443/",
            "https://example.test@evil.com:8443/",
            "//evil.com/",
            "/relative",
            "javascript:alert(1)",
            "http://example.test:8443/",
            "https://example.test:9443/",
            "https://example.test/",
            "https://127.0.0.1:8443/",
            "https://example.test:8443/\n",
            "data:text/html,hi",
            "",
        ] {
            assert!(!ok(bad), "{bad:?} was accepted");
        }
    }
}
