//! The two URLs of a browser sign-in: the loopback redirect the gateway sends the browser
//! back to, and the gateway's sign-in address the person opens.

use crate::domain::Domain;
use std::net::SocketAddr;

/// The path the loopback listener answers on; anything else is a 404.
pub const CALLBACK_PATH: &str = "/callback";

/// The client id the gateway knows `postern login` by at `/oauth2/token`.
pub const CLIENT_ID: &str = "postern-cli";

/// `http://127.0.0.1:<port>/callback` (or `http://[::1]:<port>/callback`) for the listener
/// bound at `addr`: a literal loopback address, never `localhost`, as RFC 8252 section 8.3
/// recommends.
pub fn redirect_uri(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("http://{}:{}{CALLBACK_PATH}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("http://[{}]:{}{CALLBACK_PATH}", a.ip(), a.port()),
    }
}

/// `https://<domain>/login?cli_redirect=..&cli_state=..&cli_challenge=..[&idp=..]`, each value
/// percent-encoded.
pub fn sign_in_url(
    domain: &Domain,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
    idp: Option<&str>,
) -> String {
    let mut url = url::Url::parse(&domain.base_url()).expect("a parsed domain is a valid URL");
    url.set_path("/login");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("cli_redirect", redirect_uri);
        q.append_pair("cli_state", state);
        q.append_pair("cli_challenge", challenge);
        if let Some(name) = idp {
            q.append_pair("idp", name);
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_use_literal_loopback_addresses() {
        assert_eq!(
            redirect_uri("127.0.0.1:53117".parse().unwrap()),
            "http://127.0.0.1:53117/callback"
        );
        assert_eq!(
            redirect_uri("[::1]:8080".parse().unwrap()),
            "http://[::1]:8080/callback"
        );
    }

    #[test]
    fn sign_in_url_encodes_every_value() {
        let d = Domain::parse("gw.example.com:8443").unwrap();
        let url = sign_in_url(
            &d,
            "http://127.0.0.1:5000/callback",
            "st-1",
            "ch_2",
            Some("corp sso&x=1"),
        );
        assert_eq!(
            url,
            "https://gw.example.com:8443/login?cli_redirect=http%3A%2F%2F127.0.0.1%3A5000%2Fcallback\
             &cli_state=st-1&cli_challenge=ch_2&idp=corp+sso%26x%3D1"
        );
        let parsed = url::Url::parse(&url).unwrap();
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(pairs[0].1, "http://127.0.0.1:5000/callback");
        assert_eq!(pairs[3].1, "corp sso&x=1");
    }

    #[test]
    fn default_port_and_no_idp() {
        let d = Domain::parse("example.com").unwrap();
        let url = sign_in_url(&d, "http://[::1]:1/callback", "s", "c", None);
        assert_eq!(
            url,
            "https://example.com/login?cli_redirect=http%3A%2F%2F%5B%3A%3A1%5D%3A1%2Fcallback\
             &cli_state=s&cli_challenge=c"
        );
    }
}
