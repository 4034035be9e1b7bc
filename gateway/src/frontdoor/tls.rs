//! The gateway's own CA and certificate, made by `init`. What the front door serves, and how
//! it is chosen per handshake, is `crate::certs`.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

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
