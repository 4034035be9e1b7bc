//! What each challenge type asks of us, without I/O: the TLS-ALPN-01 validation certificate
//! (RFC 8737), the DNS-01 record name (RFC 8555 section 8.4), and the key and CSR of an
//! ordered certificate.

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token at `http://NAME/.well-known/acme-challenge/` (`--http-listen`).
    Http01,
    /// A special certificate on the HTTPS listener, offered only for ALPN `acme-tls/1`.
    TlsAlpn01,
    /// A TXT record `_acme-challenge.NAME`, written by RFC 2136 UPDATE; the only one that
    /// can prove a wildcard.
    Dns01,
}

impl ChallengeKind {
    /// The type in instant-acme's terms.
    pub fn acme_type(self) -> instant_acme::ChallengeType {
        match self {
            ChallengeKind::Http01 => instant_acme::ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
            ChallengeKind::Dns01 => instant_acme::ChallengeType::Dns01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        })
    }
}

/// Making a key, a certificate or a CSR failed (rcgen or rustls refused the input).
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    #[error("cannot make a certificate for {name:?}: {source}")]
    Rcgen {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("rustls cannot use the generated key: {0}")]
    Key(#[from] rustls::Error),
    #[error("the key authorization digest has {0} bytes instead of 32 (SHA-256)")]
    DigestLength(usize),
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for `name`: its only
/// SAN is `name` and it carries the critical acmeIdentifier extension with `digest`, the
/// SHA-256 of the key authorization. A fresh P-256 key each time.
pub fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, ChallengeError> {
    let rc = |source| ChallengeError::Rcgen {
        name: name.to_string(),
        source,
    };
    if digest.len() != 32 {
        return Err(ChallengeError::DigestLength(digest.len()));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(rc)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(rc)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// The DNS name whose TXT record answers a DNS-01 challenge for `identifier`: a wildcard
/// `*.example.com` is proved at `_acme-challenge.example.com`, like the name itself.
pub fn dns01_record(identifier: &str) -> String {
    let base = identifier.strip_prefix("*.").unwrap_or(identifier);
    format!("_acme-challenge.{}", base.trim_end_matches('.'))
}

/// The key and CSR of a certificate we order.
pub struct Request {
    /// DER of the PKCS#10 request: SANs = the names, empty subject.
    pub csr_der: Vec<u8>,
    /// The new private key (PKCS#8 PEM); never logged, stored sealed.
    pub key_pem: Zeroizing<String>,
}

/// A fresh ECDSA P-256 key and a CSR for `names`.
pub fn certificate_request(names: &[String]) -> Result<Request, ChallengeError> {
    let rc = |source| ChallengeError::Rcgen {
        name: names.join(","),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(rc)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(rc)?;
    Ok(Request {
        csr_der: csr.der().to_vec(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

#[cfg(test)]
#[path = "challenge_tests.rs"]
mod tests;
