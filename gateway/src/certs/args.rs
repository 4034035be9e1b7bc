//! The `posternd serve` flags for the front door's certificate files and HSTS, and the one
//! rule that relates them to what `posternd init` recorded in `gateway.json`.

use super::files::{FilePair, FileSources};
use crate::datadir::GatewayConfig;
use std::path::PathBuf;

/// Certificate files and HSTS (see docs/tls.md).
#[derive(clap::Args, Debug, Default)]
#[command(next_help_heading = "Certificates")]
pub struct TlsArgs {
    /// A certificate chain (PEM, leaf first) to serve; repeatable, each with a --tls-key in
    /// the same order. Read where your renewal tool writes it, and re-read when it changes
    /// or on SIGHUP. Given here, it replaces the pair recorded by `posternd init`.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Vec<PathBuf>,
    /// The private key (PEM: RSA, ECDSA or Ed25519) of the --tls-cert at the same position.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Vec<PathBuf>,
    /// A directory of certificates: NAME.pem or NAME.crt beside NAME.key, and subdirectories
    /// holding fullchain.pem and privkey.pem (certbot's live/ layout); repeatable.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Vec<PathBuf>,
    /// Send `Strict-Transport-Security: VALUE` on every response, e.g. 'max-age=31536000'.
    /// Off by default: browsers remember it and then refuse plain HTTP for that long.
    #[arg(long, value_name = "VALUE", value_parser = parse_hsts)]
    pub hsts: Option<http::HeaderValue>,
}

/// A flag combination that cannot work; says which flag to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsArgsError {
    #[error("{certs} --tls-cert but {keys} --tls-key: give one --tls-key after each --tls-cert")]
    Unpaired { certs: usize, keys: usize },
}

/// What the front door serves from files.
#[derive(Debug)]
pub struct FileSetup {
    /// The operator's files, re-read when they change.
    pub files: FileSources,
    /// The certificate `init` made with the gateway's own CA, served where nothing else is.
    pub internal: Option<FilePair>,
}

impl TlsArgs {
    /// The one rule: `serve`'s --tls-cert/--tls-dir, when given, are the operator's files;
    /// otherwise the pair in `gateway.json` is (files `init --tls-cert` recorded by path).
    /// The certificate `init` made from its own CA is the fallback in every case.
    pub fn file_setup(&self, config: &GatewayConfig) -> Result<FileSetup, TlsArgsError> {
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(TlsArgsError::Unpaired {
                certs: self.tls_cert.len(),
                keys: self.tls_key.len(),
            });
        }
        let recorded = FilePair {
            cert: config.tls_cert.clone(),
            key: config.tls_key.clone(),
        };
        let made_by_init = config.ca_cert.is_some();
        let files = if self.tls_cert.is_empty() && self.tls_dir.is_empty() {
            let pairs = if made_by_init {
                vec![]
            } else {
                vec![recorded.clone()]
            };
            FileSources::new(pairs, vec![])
        } else {
            let pairs = self
                .tls_cert
                .iter()
                .zip(&self.tls_key)
                .map(|(cert, key)| FilePair {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect();
            FileSources::new(pairs, self.tls_dir.clone())
        };
        Ok(FileSetup {
            files,
            internal: made_by_init.then_some(recorded),
        })
    }
}

fn parse_hsts(s: &str) -> Result<http::HeaderValue, String> {
    let v = s.trim();
    let age = v
        .strip_prefix("max-age=")
        .map(|rest| rest.split(';').next().unwrap_or("").trim());
    match age {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            http::HeaderValue::from_str(v).map_err(|e| format!("{s:?}: {e}"))
        }
        _ => Err(format!(
            "{s:?}: start with max-age=SECONDS, e.g. 'max-age=31536000; includeSubDomains'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(made_by_init: bool) -> GatewayConfig {
        GatewayConfig {
            domain: "p.test".into(),
            tls_cert: "/d/tls.pem".into(),
            tls_key: "/d/tls.key".into(),
            ca_cert: made_by_init.then(|| "/d/ca.pem".into()),
            store: None,
        }
    }

    #[test]
    fn serve_flags_replace_the_recorded_pair_and_init_s_own_stays_the_fallback() {
        let none = TlsArgs::default();
        let s = none.file_setup(&config(true)).unwrap();
        assert!(s.files.is_empty());
        assert_eq!(s.internal.unwrap().cert, PathBuf::from("/d/tls.pem"));

        let s = none.file_setup(&config(false)).unwrap();
        assert_eq!(
            s.files.expand().unwrap()[0].cert,
            PathBuf::from("/d/tls.pem")
        );
        assert!(s.internal.is_none());

        let given = TlsArgs {
            tls_cert: vec!["/etc/a.pem".into()],
            tls_key: vec!["/etc/a.key".into()],
            ..Default::default()
        };
        let s = given.file_setup(&config(false)).unwrap();
        assert_eq!(
            s.files.expand().unwrap()[0].cert,
            PathBuf::from("/etc/a.pem")
        );
        assert_eq!(s.files.expand().unwrap().len(), 1);
    }

    #[test]
    fn unpaired_flags_are_refused() {
        let a = TlsArgs {
            tls_cert: vec!["/a.pem".into(), "/b.pem".into()],
            tls_key: vec!["/a.key".into()],
            ..Default::default()
        };
        assert_eq!(
            a.file_setup(&config(true)).unwrap_err(),
            TlsArgsError::Unpaired { certs: 2, keys: 1 }
        );
    }

    #[test]
    fn hsts_needs_a_max_age() {
        assert!(parse_hsts("max-age=31536000; includeSubDomains").is_ok());
        assert!(parse_hsts("max-age=0").is_ok());
        assert!(parse_hsts("includeSubDomains").is_err());
        assert!(parse_hsts("max-age=abc").is_err());
        assert!(parse_hsts("max-age=1\r\nX: y").is_err());
    }
}
