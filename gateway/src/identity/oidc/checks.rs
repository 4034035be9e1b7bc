//! The relying party's decisions that need no I/O: which URLs may be fetched, which client
//! authentication to use, which scopes to ask for, the `azp` and `iat` rules and which
//! ID-token claims reach policies.

use serde_json::{Map, Value};
use std::net::IpAddr;

/// Clock difference tolerated between the gateway and the IdP for `iat` in the future.
pub const MAX_IAT_SKEW_SECS: i64 = 300;
/// Oldest `iat` accepted: the ID token comes straight from the token endpoint, so an old one
/// means a wrong clock or a replayed response.
pub const MAX_IAT_AGE_SECS: i64 = 24 * 3600;

/// Scopes asked for when the IdentityProvider names none.
pub const DEFAULT_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// Claims that only serve the sign-in itself and would mislead a policy.
const FLOW_ONLY_CLAIMS: [&str; 3] = ["nonce", "at_hash", "c_hash"];

/// True for a loopback host: `localhost`, 127.0.0.0/8 or ::1 (brackets allowed). Used to allow
/// `http://` only for an IdP on this machine (tests, a local Keycloak).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a URL may not be used to talk to an IdP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlProblem {
    /// Not a URL at all.
    Unparseable(String),
    /// A scheme other than http or https.
    Scheme(String),
    /// `http://` on a host that is not loopback.
    Cleartext,
    /// User info, a query or a fragment where none belongs (an issuer).
    Extra(&'static str),
}

/// Checks that `url` may carry IdP traffic: `https`, or `http` on a loopback host.
pub fn check_idp_url(url: &str) -> Result<url::Url, UrlProblem> {
    let parsed = url::Url::parse(url).map_err(|e| UrlProblem::Unparseable(e.to_string()))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if parsed.host_str().is_some_and(is_loopback_host) => Ok(parsed),
        "http" => Err(UrlProblem::Cleartext),
        other => Err(UrlProblem::Scheme(other.to_string())),
    }
}

/// [`check_idp_url`] plus the issuer rules of OpenID Connect Discovery: no user info, query or
/// fragment.
pub fn check_issuer_url(issuer: &str) -> Result<url::Url, UrlProblem> {
    let parsed = check_idp_url(issuer)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlProblem::Extra("user info"));
    }
    if parsed.query().is_some() {
        return Err(UrlProblem::Extra("a query"));
    }
    if parsed.fragment().is_some() {
        return Err(UrlProblem::Extra("a fragment"));
    }
    Ok(parsed)
}

/// Where the discovery document of `issuer` lives (the path is appended, so an issuer with a
/// path such as Keycloak's `/realms/x` keeps it).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// How the gateway authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No secret (public client): `client_id` in the body, PKCE protects the code.
    None,
    /// `client_secret_basic` (HTTP Basic).
    Basic,
    /// `client_secret_post` (secret in the form body).
    Post,
}

/// Picks the client authentication: none without a secret; otherwise `client_secret_basic`
/// unless discovery advertises methods without it and with `client_secret_post`. An absent
/// list means basic (OpenID Connect Discovery's default). `Err` holds the advertised methods
/// when neither secret method is offered.
pub fn choose_client_auth(
    has_secret: bool,
    advertised: Option<&[String]>,
) -> Result<ClientAuth, Vec<String>> {
    if !has_secret {
        return Ok(ClientAuth::None);
    }
    let Some(methods) = advertised else {
        return Ok(ClientAuth::Basic);
    };
    if methods.iter().any(|m| m == "client_secret_basic") {
        Ok(ClientAuth::Basic)
    } else if methods.iter().any(|m| m == "client_secret_post") {
        Ok(ClientAuth::Post)
    } else {
        Err(methods.to_vec())
    }
}

/// The scopes to request: the configured ones (or the defaults when none), `openid` always
/// first, duplicates and blanks dropped.
pub fn effective_scopes(configured: &[String]) -> Vec<String> {
    let mut out = vec!["openid".to_string()];
    let source: Vec<&str> = if configured.iter().all(|s| s.trim().is_empty()) {
        DEFAULT_SCOPES.to_vec()
    } else {
        configured.iter().map(String::as_str).collect()
    };
    for s in source.iter().flat_map(|s| s.split_whitespace()) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// A PKCE code verifier as RFC 7636 4.1 defines it: 43 to 128 unreserved characters.
pub fn is_valid_pkce_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The `azp` rule of OpenID Connect Core 3.1.3.7 (steps 4 and 5): with several audiences an
/// `azp` must be present, and when present it must be this client.
pub fn check_authorized_party(
    audiences: &[String],
    azp: Option<&str>,
    client_id: &str,
) -> Result<(), String> {
    match azp {
        Some(azp) if azp != client_id => Err(format!(
            "the ID token's azp is `{azp}`, not this client `{client_id}`"
        )),
        None if audiences.len() > 1 => Err(format!(
            "the ID token names {} audiences but no azp",
            audiences.len()
        )),
        _ => Ok(()),
    }
}

/// The `iat` sanity rule: not further in the future than the tolerated skew, not older than a
/// day. Times are Unix seconds.
pub fn check_issue_time(iat: i64, now: i64) -> Result<(), String> {
    if iat > now + MAX_IAT_SKEW_SECS {
        Err(format!(
            "the ID token was issued {} s in the future; check the clocks of the gateway and the IdP",
            iat - now
        ))
    } else if now - iat > MAX_IAT_AGE_SECS {
        Err(format!(
            "the ID token was issued {} s ago; check the clocks of the gateway and the IdP",
            now - iat
        ))
    } else {
        Ok(())
    }
}

/// The claims a policy sees: every ID-token claim except the flow-only ones.
pub fn policy_claims(mut claims: Map<String, Value>) -> Map<String, Value> {
    for name in FLOW_ONLY_CLAIMS {
        claims.remove(name);
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.1",
            "128.0.0.1",
            "idp.example.com",
            "localhost.example.com",
            "[::2]",
            "0.0.0.0",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn idp_urls() {
        assert!(check_idp_url("https://idp.example.com/x").is_ok());
        assert!(check_idp_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_idp_url("http://[::1]:8080/").is_ok());
        assert!(check_idp_url("http://localhost/").is_ok());
        assert_eq!(
            check_idp_url("http://idp.example.com/"),
            Err(UrlProblem::Cleartext)
        );
        assert_eq!(
            check_idp_url("http://127.0.0.1.nip.io/"),
            Err(UrlProblem::Cleartext)
        );
        assert_eq!(
            check_idp_url("ftp://idp.example.com/"),
            Err(UrlProblem::Scheme("ftp".into()))
        );
        assert!(matches!(
            check_idp_url("not a url"),
            Err(UrlProblem::Unparseable(_))
        ));
    }

    #[test]
    fn issuer_urls() {
        assert!(check_issuer_url("https://idp.example.com/realms/corp").is_ok());
        assert_eq!(
            check_issuer_url("https://idp.example.com/?a=b"),
            Err(UrlProblem::Extra("a query"))
        );
        assert_eq!(
            check_issuer_url("https://idp.example.com/#x"),
            Err(UrlProblem::Extra("a fragment"))
        );
        assert_eq!(
            check_issuer_url("https://u:p@idp.example.com/"),
            Err(UrlProblem::Extra("user info"))
        );
    }

    #[test]
    fn discovery_url_keeps_the_issuer_path() {
        assert_eq!(
            discovery_url("https://kc.example.com/realms/corp"),
            "https://kc.example.com/realms/corp/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://idp.example.com/"),
            "https://idp.example.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn client_auth_choice() {
        let v = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(choose_client_auth(false, None), Ok(ClientAuth::None));
        assert_eq!(
            choose_client_auth(false, Some(&v(&["private_key_jwt"]))),
            Ok(ClientAuth::None)
        );
        assert_eq!(choose_client_auth(true, None), Ok(ClientAuth::Basic));
        assert_eq!(
            choose_client_auth(
                true,
                Some(&v(&["client_secret_post", "client_secret_basic"]))
            ),
            Ok(ClientAuth::Basic)
        );
        assert_eq!(
            choose_client_auth(true, Some(&v(&["client_secret_post"]))),
            Ok(ClientAuth::Post)
        );
        assert_eq!(
            choose_client_auth(true, Some(&v(&["private_key_jwt"]))),
            Err(v(&["private_key_jwt"]))
        );
    }

    #[test]
    fn scopes_always_include_openid_once() {
        assert_eq!(effective_scopes(&[]), ["openid", "email", "profile"]);
        assert_eq!(
            effective_scopes(&["email".into(), "groups".into()]),
            ["openid", "email", "groups"]
        );
        assert_eq!(
            effective_scopes(&["groups openid".into(), "groups".into(), " ".into()]),
            ["openid", "groups"]
        );
    }

    #[test]
    fn pkce_verifiers() {
        assert!(is_valid_pkce_verifier(&"a".repeat(43)));
        assert!(is_valid_pkce_verifier(&"-._~Az09".repeat(16)));
        assert!(!is_valid_pkce_verifier(&"a".repeat(42)));
        assert!(!is_valid_pkce_verifier(&"a".repeat(129)));
        assert!(!is_valid_pkce_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn authorized_party() {
        let one = vec!["postern".to_string()];
        let two = vec!["postern".to_string(), "other".to_string()];
        assert!(check_authorized_party(&one, None, "postern").is_ok());
        assert!(check_authorized_party(&one, Some("postern"), "postern").is_ok());
        assert!(check_authorized_party(&one, Some("other"), "postern").is_err());
        assert!(check_authorized_party(&two, None, "postern").is_err());
        assert!(check_authorized_party(&two, Some("postern"), "postern").is_ok());
        assert!(check_authorized_party(&two, Some("other"), "postern").is_err());
    }

    #[test]
    fn issue_time() {
        let now = 1_800_000_000;
        assert!(check_issue_time(now, now).is_ok());
        assert!(check_issue_time(now + MAX_IAT_SKEW_SECS, now).is_ok());
        assert!(check_issue_time(now + MAX_IAT_SKEW_SECS + 1, now).is_err());
        assert!(check_issue_time(now - MAX_IAT_AGE_SECS, now).is_ok());
        assert!(check_issue_time(now - MAX_IAT_AGE_SECS - 1, now).is_err());
    }

    #[test]
    fn claims_lose_only_flow_claims() {
        let claims = json!({"sub": "u1", "email": "a@b", "groups": ["eng"], "nonce": "n",
            "at_hash": "x", "c_hash": "y", "iss": "https://i"});
        let Value::Object(map) = claims else {
            unreachable!()
        };
        let out = policy_claims(map);
        assert_eq!(
            Value::Object(out),
            json!({"sub": "u1", "email": "a@b", "groups": ["eng"], "iss": "https://i"})
        );
    }
}
