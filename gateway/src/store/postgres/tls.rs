//! TLS to PostgreSQL through rustls (ring), with libpq's `sslmode` meanings: `require` and
//! `prefer` encrypt without checking the certificate (they stop passive eavesdroppers, not
//! an active man in the middle), `verify-ca` checks the chain only, `verify-full` the chain
//! and the host name. Roots: the `sslrootcert` file when given (only it, as libpq), else the
//! built-in web roots plus the system store.

use super::config::{Settings, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read sslrootcert {path}: {reason}; point it at a PEM file of CA certificates")]
    RootCert { path: String, reason: String },
    #[error("no trusted CA certificate for sslmode={0}; pass sslrootcert=FILE")]
    NoRoots(&'static str),
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

/// The connector for `settings` (also used, unused, when `sslmode=disable`).
pub fn connector(settings: &Settings) -> Result<MakeRustlsConnect, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match settings.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(EncryptOnly(provider.clone()))
        }
        mode @ (SslMode::VerifyCa | SslMode::VerifyFull) => {
            let roots = Arc::new(roots(settings, mode)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn roots(settings: &Settings, mode: SslMode) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    if let Some(path) = &settings.sslrootcert {
        let err = |reason: String| TlsError::RootCert {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(err("it holds no usable certificate".into()));
        }
        return Ok(store);
    }
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(native.certs);
    if store.is_empty() {
        return Err(TlsError::NoRoots(if mode == SslMode::VerifyCa {
            "verify-ca"
        } else {
            "verify-full"
        }));
    }
    Ok(store)
}

/// `verify-ca`: the full check, except that a certificate naming another host is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`/`prefer`: any certificate, but the handshake must still be signed by its key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(query: &str) -> Settings {
        Settings::parse(&format!("postgres://db/postern?{query}"), "u").unwrap()
    }

    fn temp(name: &str, body: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("postern-tls-{}-{name}", std::process::id()));
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn every_mode_builds_with_the_built_in_roots() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            connector(&settings(&format!("sslmode={mode}"))).unwrap();
        }
    }

    #[test]
    fn a_root_file_must_exist_and_hold_a_certificate() {
        let err = connector(&settings(
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ))
        .err()
        .unwrap();
        assert!(matches!(err, TlsError::RootCert { .. }), "{err}");
        let empty = temp("empty.pem", "not a certificate\n");
        let err = connector(&settings(&format!(
            "sslmode=verify-full&sslrootcert={}",
            empty.display()
        )))
        .err()
        .unwrap();
        assert!(err.to_string().contains("no usable certificate"), "{err}");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let good = temp("ca.pem", &ca.pem());
        connector(&settings(&format!(
            "sslmode=verify-ca&sslrootcert={}",
            good.display()
        )))
        .unwrap();
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(good);
    }
}
