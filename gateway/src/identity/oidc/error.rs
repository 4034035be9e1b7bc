//! What can go wrong between the gateway and an IdP, each case saying what to do next.
//! No variant ever holds the client secret, an authorization code or a token.

use super::http::HttpError;
use openidconnect::{ClaimsVerificationError, SignatureVerificationError};

/// Why discovery, the code exchange or the ID token failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The configured issuer URL is not a usable URL.
    #[error("the issuer URL `{issuer}` is not usable ({reason}); set spec.oidc.issuerURL to the IdP's issuer, e.g. https://idp.example.com")]
    BadIssuerUrl {
        /// The configured issuer.
        issuer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `http://` on a host that is not loopback.
    #[error("the issuer `{issuer}` uses http:// on a host that is not loopback; use https:// (plain http is accepted only on 127.0.0.0/8, ::1 and localhost)")]
    InsecureIssuer {
        /// The configured issuer.
        issuer: String,
    },
    /// The extra root CA given for the IdP is unusable.
    #[error("the extra root CA for the IdP cannot be used ({0}); give a PEM file with the CA's CERTIFICATE block")]
    RootCa(String),
    /// Talking to the IdP failed (unreachable, TLS, timeout, oversized answer).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The discovery URL answered with a status other than 200.
    #[error("the IdP answered discovery at {url} with HTTP {status}; check spec.oidc.issuerURL (the gateway reads <issuerURL>/.well-known/openid-configuration)")]
    DiscoveryStatus {
        /// The discovery URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The discovery document is not OpenID Connect provider metadata.
    #[error("the discovery document at {url} is not valid OpenID Connect metadata ({reason}); check that spec.oidc.issuerURL is an OpenID Connect issuer")]
    DiscoveryDocument {
        /// The discovery URL.
        url: String,
        /// What could not be read.
        reason: String,
    },
    /// The discovery document names another issuer than the configured one.
    #[error("the IdP at {url} answered discovery with issuer `{advertised}`; set spec.oidc.issuerURL to exactly `{advertised}`")]
    IssuerMismatch {
        /// The discovery URL.
        url: String,
        /// The issuer the document names.
        advertised: String,
    },
    /// An endpoint from discovery may not be used (cleartext to a remote host, bad URL).
    #[error("the IdP's discovery document gives {field} `{url}`, which the gateway will not use ({reason}); fix the IdP's configuration so it advertises https:// endpoints")]
    InsecureEndpoint {
        /// The metadata field.
        field: &'static str,
        /// The URL without query.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Discovery lacks the token endpoint the code flow needs.
    #[error("the IdP's discovery document has no token_endpoint; Postern needs an IdP that supports the authorization code flow")]
    NoTokenEndpoint,
    /// No ID-token signing algorithm the gateway accepts.
    #[error("the IdP signs ID tokens only with {0}; configure it to sign with RS256, ES256 or another asymmetric algorithm")]
    NoUsableAlgorithm(String),
    /// The token endpoint accepts no client authentication the gateway can do.
    #[error("the IdP's token endpoint accepts only {0}; configure the client at the IdP for client_secret_basic or client_secret_post, or as a public client without spec.oidc.clientSecret")]
    UnsupportedClientAuth(String),
    /// The JWKS could not be fetched or read.
    #[error(
        "the IdP's signing keys at {url} could not be read ({reason}); check the IdP's jwks_uri"
    )]
    Jwks {
        /// The JWKS URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The redirect URI given for the code exchange is not a URL.
    #[error("the redirect URI `{0}` is not a URL; it must be https://<domain>[:port]/callback as registered at the IdP")]
    BadRedirectUri(String),
    /// The PKCE verifier handed to `exchange` is not one RFC 7636 allows.
    #[error(
        "the PKCE verifier is not 43-128 unreserved characters; create it with new_pkce_verifier()"
    )]
    BadPkceVerifier,
    /// The token endpoint refused the code (RFC 6749 error response).
    #[error("the IdP refused the sign-in code ({error}{description}); sign in again (a code works once and only for a short time); if it repeats, check spec.oidc.clientID, the client secret and the redirect URI registered at the IdP")]
    TokenRefused {
        /// The OAuth2 error code.
        error: String,
        /// `: ` and the IdP's description, or empty.
        description: String,
    },
    /// The token endpoint answered with something that is not a token response.
    #[error("the IdP's token endpoint answered unexpectedly ({0}); check the IdP's logs")]
    TokenResponse(String),
    /// The token response holds no ID token.
    #[error("the IdP's token response holds no ID token; make sure the client is an OpenID Connect client allowed the openid scope")]
    NoIdToken,
    /// The ID token failed verification.
    #[error("the IdP's ID token was refused: {0}")]
    IdToken(#[from] IdTokenError),
}

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// `iss` is not the configured issuer.
    #[error("it comes from another issuer ({0}); check spec.oidc.issuerURL")]
    Issuer(String),
    /// `aud` does not name this client.
    #[error("it was issued for another client ({0}); check spec.oidc.clientID")]
    Audience(String),
    /// `azp` missing with several audiences, or naming another client.
    #[error("{0}; check spec.oidc.clientID")]
    AuthorizedParty(String),
    /// `exp` has passed.
    #[error("it has expired ({0}); sign in again, and check the gateway's clock if this repeats")]
    Expired(String),
    /// `iat` is implausible.
    #[error("{0}")]
    IssueTime(String),
    /// `nonce` missing or not this sign-in's.
    #[error("its nonce does not belong to this sign-in ({0}); start the sign-in again in the same browser")]
    Nonce(String),
    /// `alg: none`.
    #[error("it is not signed (alg none); the IdP must sign ID tokens")]
    Unsigned,
    /// An algorithm the gateway does not accept for this IdP.
    #[error("its signature algorithm is not accepted ({0}); configure the IdP to sign with an algorithm its discovery document advertises")]
    Algorithm(String),
    /// No key in the JWKS matches the token, even after fetching the JWKS again (or a fetch
    /// was not allowed yet).
    #[error("it is signed with a key the IdP's JWKS does not hold; if the IdP has just rotated its keys, sign in again in 10 seconds")]
    UnknownKey,
    /// The signature does not verify.
    #[error(
        "its signature does not verify ({0}); the token was not issued by this IdP or was altered"
    )]
    Signature(String),
    /// Unparseable or using unsupported JOSE features.
    #[error("it is malformed or uses unsupported features ({0})")]
    Malformed(String),
}

impl From<ClaimsVerificationError> for IdTokenError {
    fn from(e: ClaimsVerificationError) -> Self {
        use ClaimsVerificationError as C;
        use SignatureVerificationError as S;
        match e {
            C::InvalidIssuer(m) => IdTokenError::Issuer(m),
            C::InvalidAudience(m) => IdTokenError::Audience(m),
            C::Expired(m) if m.starts_with("ID token expired") => IdTokenError::Expired(m),
            C::Expired(m) => IdTokenError::IssueTime(m),
            C::InvalidNonce(m) => IdTokenError::Nonce(m),
            C::SignatureVerification(S::NoSignature) => IdTokenError::Unsigned,
            C::SignatureVerification(S::NoMatchingKey) => IdTokenError::UnknownKey,
            C::SignatureVerification(S::DisallowedAlg(m) | S::UnsupportedAlg(m)) => {
                IdTokenError::Algorithm(m)
            }
            C::SignatureVerification(S::CryptoError(m)) => IdTokenError::Signature(m),
            C::SignatureVerification(other) => IdTokenError::Signature(other.to_string()),
            other => IdTokenError::Malformed(other.to_string()),
        }
    }
}

/// Removes every occurrence of the secrets from text the IdP sent back (an error
/// description could echo the code).
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, "[redacted]");
    }
    out.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_secrets_and_bounds_length() {
        let out = scrub(
            "bad code abc123 for client s3cret",
            &["abc123", "s3cret", ""],
        );
        assert_eq!(out, "bad code [redacted] for client [redacted]");
        assert_eq!(scrub(&"x".repeat(1000), &[]).len(), 300);
    }

    #[test]
    fn issue_time_and_expiry_are_told_apart() {
        let exp = IdTokenError::from(ClaimsVerificationError::Expired(
            "ID token expired at 1 (current time is 2)".into(),
        ));
        assert!(matches!(exp, IdTokenError::Expired(_)));
        let iat = IdTokenError::from(ClaimsVerificationError::Expired(
            "the ID token was issued 900 s in the future".into(),
        ));
        assert!(matches!(iat, IdTokenError::IssueTime(_)));
    }
}
