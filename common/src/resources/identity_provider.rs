//! IdentityProviders: the company OpenID Connect providers people sign in with, in
//! Octelium's shape (`spec.displayName`, `spec.oidc.issuerURL`, `clientID`, ...).

use super::service::FromSecret;
use serde::{Deserialize, Serialize};

/// The scopes asked for when `spec.oidc.scopes` is empty.
pub const DEFAULT_OIDC_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// `spec` of an IdentityProvider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityProviderSpec {
    /// The name people see on the sign-in page; `metadata.name` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// An OpenID Connect provider (the only protocol today).
    pub oidc: OidcSpec,
}

/// `spec.oidc` of an IdentityProvider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcSpec {
    /// The issuer, exactly as the provider's discovery document states it.
    #[serde(rename = "issuerURL")]
    pub issuer_url: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The client secret, kept in a Secret; absent for a public client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<FromSecret>,
    /// Scopes to ask for; `openid email profile` when empty (`openid` is always added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Accept ID tokens with no `email_verified` claim (Entra ID sends none). Tokens that
    /// say `email_verified: false` are refused regardless.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_missing_email_verified: bool,
}

impl OidcSpec {
    /// The scopes to request: the configured ones (or the defaults), `openid` first.
    pub fn effective_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = if self.scopes.is_empty() {
            DEFAULT_OIDC_SCOPES.iter().map(|s| s.to_string()).collect()
        } else {
            self.scopes.clone()
        };
        scopes.retain(|s| s != "openid");
        scopes.insert(0, "openid".into());
        scopes.dedup();
        scopes
    }
}

/// Whether `host` (from a URL, IPv6 without brackets) is a loopback address or `localhost`:
/// the only places a plain-`http` issuer is allowed.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// Checks an issuer URL: `https://`, or `http://` on a loopback host; no query or fragment.
pub fn check_issuer_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("an issuer has no query or fragment".into());
    }
    let host = parsed.host_str().unwrap_or("");
    match parsed.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => Err(format!(
            "plain http is allowed only on a loopback address, not {host:?}; use the https:// issuer"
        )),
        s => Err(format!("scheme {s:?} is not an issuer; use https://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_urls() {
        assert!(check_issuer_url("https://accounts.google.com").is_ok());
        assert!(check_issuer_url("http://127.0.0.1:9000").is_ok());
        assert!(check_issuer_url("http://[::1]:9000/realms/x").is_ok());
        assert!(check_issuer_url("http://localhost:8080").is_ok());
        assert!(check_issuer_url("http://idp.example.com").is_err());
        assert!(check_issuer_url("http://127.0.0.1.evil.com").is_err());
        assert!(check_issuer_url("ftp://idp.example.com").is_err());
        assert!(check_issuer_url("https://idp.example.com/?a=b").is_err());
        assert!(check_issuer_url("idp.example.com").is_err());
    }

    #[test]
    fn scopes_always_start_with_openid() {
        let mut spec = OidcSpec {
            issuer_url: "https://x".into(),
            client_id: "c".into(),
            client_secret: None,
            scopes: vec![],
            allow_missing_email_verified: false,
        };
        assert_eq!(spec.effective_scopes(), ["openid", "email", "profile"]);
        spec.scopes = vec!["email".into(), "openid".into(), "groups".into()];
        assert_eq!(spec.effective_scopes(), ["openid", "email", "groups"]);
    }
}
