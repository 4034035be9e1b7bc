//! The ACME flags of `posternd serve` and their checks, so a mistake stops the gateway at
//! start with a message naming the flag, instead of failing at the first order.

use super::challenge::ChallengeKind;
use super::rfc2136::Rfc2136;
use base64::Engine;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Let's Encrypt's production directory (`--acme-directory letsencrypt`).
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--acme-directory letsencrypt-staging`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The flags, flattened into `posternd serve`.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Certificates (ACME)")]
pub struct AcmeArgs {
    /// Obtain and renew certificates for DOMAIN and each public Service's SVC.DOMAIN from an
    /// ACME CA (Let's Encrypt unless --acme-directory says otherwise).
    #[arg(long)]
    pub acme: bool,
    /// The CA's ACME directory: an https:// URL, or letsencrypt, or letsencrypt-staging
    /// [default: letsencrypt].
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,
    /// Contact address given to the CA (expiry notices, policy changes).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// A CA certificate (PEM) trusted for the ACME directory's own HTTPS, besides the
    /// standard roots (Pebble, a private CA).
    #[arg(long, value_name = "FILE")]
    pub acme_ca: Option<PathBuf>,
    /// External account binding: the key id the CA gave you.
    #[arg(long, value_name = "KID")]
    pub acme_eab_kid: Option<String>,
    /// External account binding: a file holding the HMAC key (base64url) the CA gave you.
    #[arg(long, value_name = "FILE")]
    pub acme_eab_hmac_key: Option<PathBuf>,
    /// The challenge to answer: http-01 (needs --http-listen) or tls-alpn-01 (on the HTTPS
    /// listener) [default: http-01 with --http-listen, else tls-alpn-01].
    #[arg(long, value_name = "TYPE", value_parser = ["http-01", "tls-alpn-01"])]
    pub acme_challenge: Option<String>,
    /// DNS-01 through RFC 2136 updates: one certificate for DOMAIN and *.DOMAIN. SERVER is
    /// host[:port] (53), KEY_FILE is tsig-keygen's output.
    #[arg(long, value_name = "SERVER,KEY_NAME,KEY_FILE")]
    pub acme_dns_rfc2136: Option<String>,
    /// Plain HTTP listener (e.g. 0.0.0.0:80): answers HTTP-01 challenges and redirects every
    /// other request to https (works without --acme).
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
}

/// External account binding, as the CA issued it.
#[derive(Clone)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab").field("kid", &self.kid).finish()
    }
}

/// The checked ACME settings the manager runs with.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// Directory URL.
    pub directory: String,
    /// `mailto:` contacts for the account (none or one).
    pub contact: Vec<String>,
    /// Extra trusted CA certificates (PEM) for the directory's HTTPS.
    pub extra_ca_pem: Option<Vec<u8>>,
    pub eab: Option<Eab>,
    pub challenge: ChallengeKind,
    /// The DNS UPDATE client, in DNS-01 mode.
    pub dns: Option<Arc<Rfc2136>>,
}

impl AcmeOptions {
    /// DNS-01 mode orders one wildcard certificate instead of one per Service.
    pub fn wildcard(&self) -> bool {
        self.challenge == ChallengeKind::Dns01
    }
}

/// A flag is wrong; the message names it and says what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum AcmeConfigError {
    #[error("{flag} needs --acme: add --acme to obtain certificates, or drop {flag}")]
    NeedsAcme { flag: &'static str },
    #[error("--acme-directory {0:?}: give the https:// URL of an ACME directory, or letsencrypt, or letsencrypt-staging")]
    Directory(String),
    #[error("--acme-email {0:?}: give one email address, like ops@example.com")]
    Email(String),
    #[error("--acme-ca {path}: {why}; give a PEM file with the CA certificate that signed the ACME directory's HTTPS certificate")]
    Ca { path: PathBuf, why: String },
    #[error("--acme-eab-kid and --acme-eab-hmac-key go together: give both (from your CA's account page) or neither")]
    EabPair,
    #[error("--acme-eab-hmac-key {path}: {why}; the file must hold the base64url HMAC key your CA gave you")]
    EabKey { path: PathBuf, why: String },
    #[error("--acme-challenge http-01 needs --http-listen (e.g. --http-listen 0.0.0.0:80): the CA fetches the token over plain HTTP on port 80")]
    Http01NeedsListener,
    #[error("--acme-challenge and --acme-dns-rfc2136 both choose a challenge: with --acme-dns-rfc2136 DNS-01 is used; drop --acme-challenge")]
    ChallengeConflict,
    #[error("--acme-dns-rfc2136: {0}")]
    Dns(String),
}

impl AcmeArgs {
    /// The checked settings, or `None` without `--acme`. Reads the files it names.
    pub fn into_options(self) -> Result<Option<AcmeOptions>, AcmeConfigError> {
        if !self.acme {
            let given = [
                ("--acme-directory", self.acme_directory.is_some()),
                ("--acme-email", self.acme_email.is_some()),
                ("--acme-ca", self.acme_ca.is_some()),
                ("--acme-eab-kid", self.acme_eab_kid.is_some()),
                ("--acme-eab-hmac-key", self.acme_eab_hmac_key.is_some()),
                ("--acme-challenge", self.acme_challenge.is_some()),
                ("--acme-dns-rfc2136", self.acme_dns_rfc2136.is_some()),
            ];
            return match given.iter().find(|(_, set)| *set) {
                Some((flag, _)) => Err(AcmeConfigError::NeedsAcme { flag }),
                None => Ok(None),
            };
        }
        let directory = directory_url(self.acme_directory.as_deref().unwrap_or("letsencrypt"))?;
        let contact = match &self.acme_email {
            Some(e) => vec![format!("mailto:{}", email(e)?)],
            None => Vec::new(),
        };
        let extra_ca_pem = self.acme_ca.as_deref().map(read_ca).transpose()?;
        let eab = match (self.acme_eab_kid, self.acme_eab_hmac_key) {
            (Some(kid), Some(path)) if !kid.trim().is_empty() => Some(Eab {
                kid: kid.trim().to_string(),
                hmac_key: read_eab_key(&path)?,
            }),
            (None, None) => None,
            _ => return Err(AcmeConfigError::EabPair),
        };
        let (challenge, dns) = match (&self.acme_dns_rfc2136, self.acme_challenge.as_deref()) {
            (Some(_), Some(_)) => return Err(AcmeConfigError::ChallengeConflict),
            (Some(spec), None) => {
                let dns =
                    Rfc2136::from_flag(spec).map_err(|e| AcmeConfigError::Dns(e.to_string()))?;
                (ChallengeKind::Dns01, Some(Arc::new(dns)))
            }
            (None, Some("http-01")) if self.http_listen.is_none() => {
                return Err(AcmeConfigError::Http01NeedsListener)
            }
            (None, Some("http-01")) => (ChallengeKind::Http01, None),
            (None, Some(_)) => (ChallengeKind::TlsAlpn01, None),
            (None, None) if self.http_listen.is_some() => (ChallengeKind::Http01, None),
            (None, None) => (ChallengeKind::TlsAlpn01, None),
        };
        Ok(Some(AcmeOptions {
            directory,
            contact,
            extra_ca_pem,
            eab,
            challenge,
            dns,
        }))
    }
}

/// `letsencrypt`, `letsencrypt-staging`, or an https URL.
pub fn directory_url(v: &str) -> Result<String, AcmeConfigError> {
    match v.trim() {
        "letsencrypt" => return Ok(LETSENCRYPT.into()),
        "letsencrypt-staging" => return Ok(LETSENCRYPT_STAGING.into()),
        _ => {}
    }
    match url::Url::parse(v.trim()) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() && u.username().is_empty() => {
            Ok(u.to_string())
        }
        _ => Err(AcmeConfigError::Directory(v.into())),
    }
}

/// A plausible single address: what a `mailto:` contact can carry without escaping.
pub fn email(v: &str) -> Result<&str, AcmeConfigError> {
    let v = v.trim();
    // Beyond a plausible address: nothing a `mailto:` URI would need to escape.
    let ok = postern_common::resources::validate::is_plausible_email(v)
        && v.len() <= 254
        && v.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, ',' | '?' | '&' | '<' | '>' | '"' | '\\')
        });
    if ok {
        Ok(v)
    } else {
        Err(AcmeConfigError::Email(v.into()))
    }
}

fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, AcmeConfigError> {
    let err = |why: String| AcmeConfigError::Ca {
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("it holds no certificate".into()));
    }
    Ok(pem)
}

fn read_eab_key(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, AcmeConfigError> {
    let err = |why: String| AcmeConfigError::EabKey {
        path: path.to_path_buf(),
        why,
    };
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?,
    );
    decode_eab_key(&text).ok_or_else(|| err("not base64url".into()))
}

/// The HMAC key from its base64url text (padding and surrounding whitespace allowed).
pub fn decode_eab_key(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let t = text.trim().trim_end_matches('=');
    if t.is_empty() {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
