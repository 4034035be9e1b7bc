//! The gateway's domain as given to `--domain`: `example.com` or `example.com:8443`.

use crate::error::{ClientError, Result};
use std::fmt;

/// A gateway domain with an optional port; the API lives at `https://<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    host: String,
    port: Option<u16>,
}

impl Domain {
    /// Parses `host` or `host:port`. A leading `https://` and a trailing `/` are tolerated;
    /// any other scheme, a path, a query or user info is rejected.
    pub fn parse(input: &str) -> Result<Domain> {
        let invalid = |reason: &str| ClientError::InvalidDomain {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        let bare = trimmed.strip_prefix("https://").unwrap_or(trimmed);
        let bare = bare.strip_suffix('/').unwrap_or(bare);
        if bare.is_empty() {
            return Err(invalid("it is empty"));
        }
        if bare.contains("://") {
            return Err(invalid("only https is supported and the scheme is implied"));
        }
        if bare.contains(['/', '?', '#', '@']) || bare.contains(char::is_whitespace) {
            return Err(invalid("it must not contain a path, query or user name"));
        }
        let url =
            url::Url::parse(&format!("https://{bare}/")).map_err(|e| invalid(&e.to_string()))?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(invalid("it has no host name")),
        };
        // `Url` drops the default port 443; keep what the user wrote so the Host header and
        // the saved session look like the input.
        let port = match bare.rsplit_once(':') {
            Some((_, p)) if !bare.ends_with(']') => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
            ),
            _ => None,
        };
        Ok(Domain { host, port })
    }

    /// The host name (or bracketed IPv6 address), used for SNI and certificate checks.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to: the one given, or 443.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(443)
    }

    /// `https://<host>[:<port>]`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("https://{self}")
    }
}

impl fmt::Display for Domain {
    /// `host` or `host:port`, as the user wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host() {
        let d = Domain::parse("example.com").unwrap();
        assert_eq!(d.host(), "example.com");
        assert_eq!(d.port(), 443);
        assert_eq!(d.base_url(), "https://example.com");
        assert_eq!(d.to_string(), "example.com");
    }

    #[test]
    fn host_and_port() {
        let d = Domain::parse("gw.example.com:8443").unwrap();
        assert_eq!(d.host(), "gw.example.com");
        assert_eq!(d.port(), 8443);
        assert_eq!(d.base_url(), "https://gw.example.com:8443");
    }

    #[test]
    fn explicit_default_port_is_kept() {
        let d = Domain::parse("example.com:443").unwrap();
        assert_eq!(d.port(), 443);
        assert_eq!(d.to_string(), "example.com:443");
    }

    #[test]
    fn tolerates_https_prefix_and_trailing_slash() {
        let d = Domain::parse("https://Example.COM:8443/").unwrap();
        assert_eq!(d.to_string(), "example.com:8443");
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(Domain::parse("127.0.0.1:9000").unwrap().port(), 9000);
        let v6 = Domain::parse("[::1]:8443").unwrap();
        assert_eq!(v6.host(), "[::1]");
        assert_eq!(v6.port(), 8443);
        assert_eq!(Domain::parse("[::1]").unwrap().port(), 443);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "http://example.com",
            "example.com/path",
            "example.com:0",
            "example.com:99999",
            "example.com:abc",
            "user@example.com",
            "exa mple.com",
        ] {
            let err = Domain::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("example.com:8443"), "{err}");
        }
    }
}
