//! TLS for the front door: the gateway's own CA and certificate (made by `init`), and the
//! rustls server configuration (TLS 1.2 and 1.3; HTTP/2 and HTTP/1.1 by ALPN).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::path::Path;
use std::sync::Arc;

/// Errors loading or making TLS material; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// PEM texts of a freshly made CA and a certificate for `domain` and `*.domain`.
pub struct GeneratedTls {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_chain_pem: String,
    pub key_pem: String,
}

/// Makes a CA (valid ten years) and a server certificate for `domain` and `*.domain`
/// (valid about two years) signed by it.
pub fn generate_ca_and_cert(domain: &str) -> Result<GeneratedTls, TlsError> {
    let now = time_now();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, format!("Postern CA for {domain}"));
    ca.distinguished_name
        .push(DnType::OrganizationName, "Postern");
    ca.not_before = now;
    ca.not_after = add_days(ca.not_before, 3650);
    let not_before = ca.not_before;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(vec![domain.to_string(), format!("*.{domain}")])?;
    leaf.distinguished_name.push(DnType::CommonName, domain);
    leaf.not_before = not_before;
    leaf.not_after = add_days(not_before, 825);
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;
    Ok(GeneratedTls {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        cert_chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key_pem: leaf_key.serialize_pem(),
    })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::hours(1)
}

fn add_days(t: time::OffsetDateTime, days: i64) -> time::OffsetDateTime {
    t + time::Duration::days(days)
}

/// The rustls server config the front door listens with.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let file_err = |p: &Path, m: String| TlsError::File {
        path: p.display().to_string(),
        message: m,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| file_err(cert, e.to_string()))?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file".into()));
    }
    let key_pem = std::fs::read(key).map_err(|e| file_err(key, e.to_string()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| file_err(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| file_err(key, "no private key in the file".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order (AES-256-GCM first) decides, not a client's, so a client cannot steer
    // the choice; every suite offered is an AEAD with forward secrecy either way.
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}
