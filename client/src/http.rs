//! The control-API client: HTTPS only (rustls; the system roots, the webpki roots and an
//! optional extra CA), a bearer token when logged in, and errors mapped to [`ClientError`].

use crate::domain::Domain;
use crate::error::{ClientError, Result};
use crate::signin::callback::for_terminal;
use postern_common::api::{ErrorBody, OAuthError, API_PREFIX};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// When set to `ip:port`, TCP connects there while SNI, `Host` and certificate checks still
/// use the domain. For gateways that are not (yet) in DNS, and for tests.
pub const GATEWAY_ADDRESS_ENV: &str = "POSTERN_GATEWAY_ADDRESS";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const OVERALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for one gateway's `/api/v1`.
pub struct ApiClient {
    agent: ureq::Agent,
    /// Like `agent` but without the overall timeout, for responses that stream.
    stream_agent: ureq::Agent,
    domain: Domain,
    /// Where TCP actually goes, for error messages.
    address: String,
    token: Option<String>,
}

impl ApiClient {
    /// Builds a client for `domain`, trusting what [`tls_config`] trusts, and honouring
    /// [`GATEWAY_ADDRESS_ENV`].
    pub fn new(domain: Domain, ca_file: Option<&Path>, token: Option<String>) -> Result<Self> {
        let tls = Arc::new(tls_config(ca_file)?);
        let mut address = format!("{}:{}", domain.host(), domain.port());
        let mut resolve_to = None;
        if let Some(raw) = std::env::var_os(GATEWAY_ADDRESS_ENV) {
            let raw = raw.to_string_lossy().into_owned();
            let addr: SocketAddr = raw
                .trim()
                .parse()
                .map_err(|_| ClientError::InvalidGatewayAddress { input: raw.clone() })?;
            address = format!("{addr} (from {GATEWAY_ADDRESS_ENV}, for {domain})");
            resolve_to = Some(addr);
        }
        Ok(ApiClient {
            agent: agent(tls.clone(), resolve_to, Some(OVERALL_TIMEOUT)),
            stream_agent: agent(tls, resolve_to, None),
            domain,
            address,
            token,
        })
    }

    /// The gateway this client talks to.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// `GET /api/v1/<segments...>`.
    pub fn get<R: DeserializeOwned>(&self, segments: &[&str]) -> Result<R> {
        self.send("GET", segments, None::<&()>)
    }

    /// `POST /api/v1/<segments...>` with a JSON body.
    pub fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<R> {
        self.send("POST", segments, Some(body))
    }

    /// `DELETE /api/v1/<segments...>`.
    pub fn delete<R: DeserializeOwned>(&self, segments: &[&str]) -> Result<R> {
        self.send("DELETE", segments, None::<&()>)
    }

    /// `GET /api/v1/<segments...>?<query>`.
    pub fn get_query<R: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<R> {
        self.send_url("GET", self.url_with_query(segments, query), None::<&()>)
    }

    /// `GET /api/v1/<segments...>?<query>` read as it arrives, line by line, with no overall
    /// time limit (for `posternctl logs -f`).
    pub fn get_lines(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Box<dyn std::io::BufRead + Send>> {
        let url = self.url_with_query(segments, query);
        let mut req = self
            .stream_agent
            .get(&url)
            .set("Accept", "application/x-ndjson");
        if let Some(token) = &self.token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        match req.call() {
            Ok(r) => Ok(Box::new(std::io::BufReader::new(r.into_reader()))),
            Err(ureq::Error::Status(status, r)) => Err(self.status_error(status, r)),
            Err(ureq::Error::Transport(t)) => Err(self.transport_error(&t)),
        }
    }

    /// An access token from `https://<domain>/oauth2/token` (client credentials grant,
    /// `client_secret_post`): how a workload agent logs in with an OAuth2 credential.
    pub fn oauth2_token(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<postern_common::api::TokenResponse> {
        let url = format!(
            "{}/oauth2/token",
            self.domain.base_url().trim_end_matches('/')
        );
        let result = self
            .agent
            .post(&url)
            .set("Accept", "application/json")
            .send_form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
            ]);
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => return Err(self.status_error(status, r)),
            Err(ureq::Error::Transport(t)) => return Err(self.transport_error(&t)),
        };
        response.into_json().map_err(|e| ClientError::BadResponse {
            url,
            detail: e.to_string(),
        })
    }

    /// Redeems the one-time code of a browser sign-in at `https://<domain>/oauth2/token`
    /// (authorization code grant with PKCE, public client `postern-cli`). Refusals are
    /// [`ClientError::TokenRefused`] with the gateway's `error` and `error_description`.
    pub fn oauth2_code_token(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
    ) -> Result<postern_common::api::CodeTokenResponse> {
        let url = format!(
            "{}/oauth2/token",
            self.domain.base_url().trim_end_matches('/')
        );
        let result = self
            .agent
            .post(&url)
            .set("Accept", "application/json")
            .send_form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", code_verifier),
                ("redirect_uri", redirect_uri),
                ("client_id", crate::signin::urls::CLIENT_ID),
            ]);
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                let url = r.get_url().to_string();
                let text = r.into_string().unwrap_or_default();
                return Err(match serde_json::from_str::<OAuthError>(&text) {
                    Ok(e) => ClientError::TokenRefused {
                        domain: self.domain.to_string(),
                        error: for_terminal(&e.error),
                        description: e.error_description.as_deref().map(for_terminal),
                    },
                    Err(_) => {
                        let snippet: String = text.trim().chars().take(200).collect();
                        ClientError::Api {
                            status,
                            message: for_terminal(&format!("HTTP {status} from {url}: {snippet}")),
                        }
                    }
                });
            }
            Err(ureq::Error::Transport(t)) => return Err(self.transport_error(&t)),
        };
        response.into_json().map_err(|e| ClientError::BadResponse {
            url,
            detail: e.to_string(),
        })
    }

    /// [`ApiClient::url`] with `query` appended (empty values are left out).
    pub fn url_with_query(&self, segments: &[&str], query: &[(&str, String)]) -> String {
        let mut url = url::Url::parse(&self.url(segments)).expect("url() builds valid URLs");
        let pairs: Vec<_> = query.iter().filter(|(_, v)| !v.is_empty()).collect();
        if !pairs.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in pairs {
                q.append_pair(k, v);
            }
        }
        url.to_string()
    }

    /// The URL of an API path; each segment is percent-encoded.
    pub fn url(&self, segments: &[&str]) -> String {
        let mut url =
            url::Url::parse(&self.domain.base_url()).expect("a parsed domain is a valid URL");
        {
            let mut path = url.path_segments_mut().expect("https URLs have a path");
            path.clear();
            path.extend(API_PREFIX.trim_start_matches('/').split('/'));
            path.extend(segments);
        }
        url.to_string()
    }

    fn send<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        segments: &[&str],
        body: Option<&B>,
    ) -> Result<R> {
        self.send_url(method, self.url(segments), body)
    }

    fn send_url<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        url: String,
        body: Option<&B>,
    ) -> Result<R> {
        let mut req = self
            .agent
            .request(method, &url)
            .set("Accept", "application/json");
        if let Some(token) = &self.token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => return Err(self.status_error(status, r)),
            Err(ureq::Error::Transport(t)) => return Err(self.transport_error(&t)),
        };
        let text = response
            .into_string()
            .map_err(|e| ClientError::BadResponse {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text).map_err(|e| ClientError::BadResponse {
            url,
            detail: e.to_string(),
        })
    }

    fn status_error(&self, status: u16, response: ureq::Response) -> ClientError {
        let url = response.get_url().to_string();
        let text = response.into_string().unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error.message,
            Err(_) => {
                let snippet: String = text.trim().chars().take(200).collect();
                if snippet.is_empty() {
                    format!("HTTP {status} from {url}")
                } else {
                    format!("HTTP {status} from {url}: {snippet}")
                }
            }
        };
        if status == 401 {
            ClientError::Unauthorized {
                message,
                domain: self.domain.to_string(),
            }
        } else {
            ClientError::Api { status, message }
        }
    }

    fn transport_error(&self, t: &ureq::Transport) -> ClientError {
        let mut detail = t.message().map(str::to_string).unwrap_or_default();
        let mut source = std::error::Error::source(t);
        while let Some(s) = source {
            let text = s.to_string();
            if !detail.contains(&text) {
                if !detail.is_empty() {
                    detail.push_str(": ");
                }
                detail.push_str(&text);
            }
            source = s.source();
        }
        if detail.is_empty() {
            detail = t.kind().to_string();
        }
        let hint = if detail.to_ascii_lowercase().contains("certificate") {
            "the gateway's certificate was refused; this client trusts the system CA store \
             (or SSL_CERT_FILE / SSL_CERT_DIR), the bundled public roots and the --ca-file \
             saved at login: if the gateway uses a private CA, run `postern login --ca-file \
             FILE` with that CA's certificate, or point SSL_CERT_FILE at a bundle that holds it"
        } else {
            "check --domain and that posternd is running"
        };
        ClientError::Connect {
            address: self.address.clone(),
            detail,
            hint,
        }
    }
}

/// An agent for the gateway: HTTPS only, no redirects, connecting to `resolve_to` when
/// set, and giving up after `overall` when set (reads still time out after
/// [`OVERALL_TIMEOUT`] of silence).
fn agent(
    tls: Arc<rustls::ClientConfig>,
    resolve_to: Option<SocketAddr>,
    overall: Option<Duration>,
) -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new()
        .tls_config(tls)
        .https_only(true)
        .redirects(0)
        .timeout_connect(CONNECT_TIMEOUT)
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")));
    builder = match overall {
        Some(t) => builder.timeout(t),
        None => builder.timeout_read(OVERALL_TIMEOUT),
    };
    if let Some(addr) = resolve_to {
        builder = builder.resolver(move |_: &str| Ok(vec![addr]));
    }
    builder.build()
}

/// The rustls client configuration: the system's roots, the bundled webpki roots and the
/// certificates in `ca_file`, so a gateway moved from its own CA to a publicly trusted (or
/// company) certificate keeps working for clients that logged in with `--ca-file`.
/// Verification is never turned off.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = base_roots().clone();
    if let Some(path) = ca_file {
        let ca_err = |detail: String| ClientError::CaFile {
            path: path.to_path_buf(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ca_err(format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ca_err("it holds no CERTIFICATE block".to_string()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The roots trusted before any `--ca-file`: the system store (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set, else the distribution's bundle) and the bundled webpki roots, for
/// containers that have no system store. Read once per process: the system store is many
/// files, and a tunnel builds a client on every re-login.
fn base_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let system = rustls_native_certs::load_native_certs();
        for error in &system.errors {
            tracing::debug!(%error, "skipping part of the system certificate store");
        }
        with_system_roots(system.certs)
    })
}

/// The webpki roots plus every parsable certificate of `system`. Entries that do not parse
/// as trust anchors are skipped: a broken system store must not lock the client out.
fn with_system_roots(system: Vec<CertificateDer<'static>>) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let (added, skipped) = roots.add_parsable_certificates(system);
    tracing::debug!(added, skipped, "system root certificates");
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_under_the_api_prefix() {
        let c = ApiClient::new(Domain::parse("gw.example.com:8443").unwrap(), None, None).unwrap();
        assert_eq!(
            c.url(&["services", "a b/c"]),
            "https://gw.example.com:8443/api/v1/services/a%20b%2Fc"
        );
        assert_eq!(
            c.url_with_query(
                &["usage"],
                &[("by", "user".into()), ("since", String::new())]
            ),
            "https://gw.example.com:8443/api/v1/usage?by=user"
        );
        assert_eq!(
            c.url(&["login"]),
            "https://gw.example.com:8443/api/v1/login"
        );
    }

    #[test]
    fn ca_file_errors_are_explained() {
        let err = tls_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            err.to_string().contains("--ca-file") || err.to_string().contains("PEM"),
            "{err}"
        );
        let empty =
            std::env::temp_dir().join(format!("postern-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a cert\n").unwrap();
        let err = tls_config(Some(&empty)).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        std::fs::remove_file(empty).unwrap();
    }

    fn ca_der() -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn system_roots_are_added_to_the_webpki_roots() {
        let webpki = webpki_roots::TLS_SERVER_ROOTS.len();
        let roots = with_system_roots(vec![ca_der(), ca_der()]);
        assert_eq!(roots.len(), webpki + 2);
    }

    #[test]
    fn unparsable_system_roots_are_skipped() {
        let webpki = webpki_roots::TLS_SERVER_ROOTS.len();
        let garbage = CertificateDer::from(b"not a certificate".to_vec());
        let roots = with_system_roots(vec![garbage, ca_der()]);
        assert_eq!(roots.len(), webpki + 1);
        assert_eq!(with_system_roots(Vec::new()).len(), webpki);
    }
}
