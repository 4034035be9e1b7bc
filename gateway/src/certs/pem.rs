//! A PEM certificate chain and private key turned into what rustls serves, with the names and
//! validity read from the leaf, so a pair that cannot work is refused before it is served.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate chain and key cannot be served. Each says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PemError {
    #[error("not a PEM certificate chain ({0}); give the full chain, leaf first, as PEM")]
    BadChain(String),
    #[error("no certificate in the file; give the full chain, leaf first, as PEM")]
    NoCertificate,
    #[error("not a PEM private key ({0}); give the key as PEM (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    BadKey(String),
    #[error("no private key in the file; give the key as PEM (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    NoKey,
    #[error("unsupported private key ({0}); use RSA, ECDSA P-256/P-384 or Ed25519")]
    UnsupportedKey(String),
    #[error("the private key does not belong to the certificate; give the matching pair")]
    KeyMismatch,
    #[error("the leaf certificate cannot be parsed ({0})")]
    BadLeaf(String),
    #[error("the leaf certificate names no DNS name in subjectAltName; it cannot match any host")]
    NoNames,
}

/// A chain and key ready to serve.
pub struct Loaded {
    pub certified: Arc<CertifiedKey>,
    /// subjectAltName DNS names of the leaf, lowercase (wildcards as `*.parent`).
    pub names: Vec<String>,
    /// Validity of the leaf, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses `chain_pem` (leaf first) and `key_pem`, and checks that the key is the leaf's.
pub fn load(chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, PemError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &chain_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| PemError::BadChain(e.to_string()))?;
    let leaf = chain.first().ok_or(PemError::NoCertificate)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| PemError::BadKey(e.to_string()))?
        .ok_or(PemError::NoKey)?;
    let (names, not_before, not_after) = leaf_facts(leaf)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| PemError::UnsupportedKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // A key type whose public half rustls cannot extract is checked by a handshake only.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(PemError::KeyMismatch),
    }
    Ok(Loaded {
        certified: Arc::new(certified),
        names,
        not_before,
        not_after,
    })
}

/// The leaf's DNS names and validity.
pub fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), PemError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| PemError::BadLeaf(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if !names.contains(&d) {
                    names.push(d);
                }
            }
        }
    }
    if names.is_empty() {
        return Err(PemError::NoNames);
    }
    let validity = cert.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn pair(alg: &'static rcgen::SignatureAlgorithm, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_ecdsa_and_ed25519_pairs_with_their_names() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let (c, k) = pair(alg, &["Example.COM", "*.example.com"]);
            let l = load(c.as_bytes(), k.as_bytes()).unwrap();
            assert_eq!(l.names, ["example.com", "*.example.com"]);
            assert!(l.not_after > l.not_before);
        }
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (c, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256, &["a.test"]);
        let (_, k) = pair(&rcgen::PKCS_ECDSA_P256_SHA256, &["a.test"]);
        assert_eq!(
            load(c.as_bytes(), k.as_bytes()).err(),
            Some(PemError::KeyMismatch)
        );
    }

    #[test]
    fn refuses_empty_and_garbage_files() {
        let (c, k) = pair(&rcgen::PKCS_ECDSA_P256_SHA256, &["a.test"]);
        assert_eq!(load(b"", k.as_bytes()).err(), Some(PemError::NoCertificate));
        assert_eq!(load(c.as_bytes(), b"junk").err(), Some(PemError::NoKey));
        assert!(load(
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
            k.as_bytes()
        )
        .is_err());
    }

    #[test]
    fn refuses_a_certificate_without_dns_names() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            load(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).err(),
            Some(PemError::NoNames)
        );
    }
}
