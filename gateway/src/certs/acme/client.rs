//! The ACME protocol through instant-acme: our own HTTP client for it (bounded in time and
//! size, trusting the webpki roots plus `--acme-ca`, remembering the CA's `Retry-After`),
//! the account, and one order from new-order to the issued chain, with its challenges
//! installed in the live certificate table (or DNS) and always removed afterwards.

use super::args::AcmeOptions;
use super::challenge::{self, ChallengeError, ChallengeKind};
use super::rfc2136::Rfc2136;
use crate::certs::Certificates;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse,
    ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

/// Longest wait for one request to the CA, response body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read from the CA (a certificate chain is a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// How long the order may take to become ready, and then to be issued.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Why talking to the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{}", with_causes(.0))]
    Acme(#[from] instant_acme::Error),
    #[error("the ACME client's TLS settings were refused: {0}")]
    Tls(String),
    #[error("the stored ACME account cannot be read ({0}); a new account is made")]
    Credentials(serde_json::Error),
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error("the CA offers no {kind} challenge for {name}; choose another with --acme-challenge")]
    NoChallenge { name: String, kind: ChallengeKind },
    #[error("authorization for {name} is {status}")]
    Authorization { name: String, status: String },
    #[error("DNS update for {record} failed: {why}")]
    Dns { record: String, why: String },
    #[error("DNS-01 needs --acme-dns-rfc2136")]
    NoDns,
    #[error("the order became {status}: {detail}")]
    NotReady { status: String, detail: String },
}

/// An error with its causes, `outer: inner: innermost` (hyper's own text leaves out why a
/// connection failed).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl AcmeError {
    /// The CA no longer knows the account (deactivated, or a test CA that restarted): the
    /// stored credentials are useless and a new account is needed.
    pub fn account_gone(&self) -> bool {
        matches!(
            self,
            AcmeError::Acme(instant_acme::Error::Api(p))
                if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
        )
    }
}

/// The CA's last `Retry-After` on a 429 or 503, as Unix seconds.
#[derive(Debug, Default, Clone)]
pub struct RetryAfter(Arc<Mutex<Option<i64>>>);

impl RetryAfter {
    /// Takes (and clears) the last recorded value.
    pub fn take(&self) -> Option<i64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn record(&self, at: i64) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(slot.map_or(at, |old| old.max(at)));
    }
}

/// `Retry-After` as Unix seconds: delay-seconds or an HTTP date (RFC 9110 section 10.2.3).
pub fn parse_retry_after(value: &str, now: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)));
    }
    chrono::DateTime::parse_from_rfc2822(value)
        .ok()
        .map(|t| t.timestamp())
}

/// instant-acme's HTTP, on hyper-util's pooled client over rustls (ring).
pub struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: RetryAfter,
}

impl AcmeHttp {
    /// Trusts the webpki roots and the certificates in `extra_ca_pem`; HTTPS only.
    pub fn new(extra_ca_pem: Option<&[u8]>, retry_after: RetryAfter) -> Result<Self, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| AcmeError::Tls(format!("--acme-ca: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| AcmeError::Tls(format!("--acme-ca: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
            retry_after,
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let exchange = async {
                let resp = sent
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| {
                        instant_acme::Error::Other(
                            format!("reading the CA's response (at most {MAX_BODY} bytes): {e}")
                                .into(),
                        )
                    })?
                    .to_bytes();
                Ok::<_, instant_acme::Error>((parts, body))
            };
            let (parts, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| {
                    instant_acme::Error::Other(
                        format!(
                            "the CA did not answer within {}s",
                            REQUEST_TIMEOUT.as_secs()
                        )
                        .into(),
                    )
                })??;
            if matches!(parts.status.as_u16(), 429 | 503) {
                if let Some(at) = parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, crate::state::now_unix()))
                {
                    retry_after.record(at);
                }
            }
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

/// A certificate the CA issued.
pub struct Issued {
    /// The full chain, leaf first (PEM).
    pub chain_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: Zeroizing<String>,
}

/// Where challenge answers go: the live table (TLS-ALPN-01, HTTP-01) or DNS (DNS-01).
pub struct Installer {
    pub certs: Arc<Certificates>,
    pub dns: Option<Arc<Rfc2136>>,
}

enum Installed {
    Alpn(String),
    Http(String),
    Dns { record: String, value: String },
}

impl Installer {
    async fn remove(&self, what: Installed) {
        match what {
            Installed::Alpn(name) => self.certs.remove_alpn_challenge(&name),
            Installed::Http(token) => self.certs.remove_http01(&token),
            Installed::Dns { record, value } => {
                if let Some(dns) = &self.dns {
                    if let Err(e) = dns.remove_txt(&record, &value).await {
                        tracing::warn!(
                            "ACME: removing the DNS-01 record {record} failed: {e}; delete it by hand"
                        );
                    }
                }
            }
        }
    }
}

/// An ACME account at one directory.
pub struct AcmeClient {
    account: Account,
    retry_after: RetryAfter,
}

impl AcmeClient {
    /// The account from `stored` credentials (JSON, as [`AcmeClient::connect`] returned
    /// them), or a new one; the second value is the credentials to store when new. The CA's
    /// `Retry-After` answers are recorded in `retry_after`.
    pub async fn connect(
        opts: &AcmeOptions,
        stored: Option<&[u8]>,
        retry_after: RetryAfter,
    ) -> Result<(AcmeClient, Option<Zeroizing<Vec<u8>>>), AcmeError> {
        let http = || -> Result<Box<dyn HttpClient>, AcmeError> {
            Ok(Box::new(AcmeHttp::new(
                opts.extra_ca_pem.as_deref(),
                retry_after.clone(),
            )?))
        };
        if let Some(stored) = stored {
            match serde_json::from_slice::<AccountCredentials>(stored) {
                Ok(creds) => {
                    let account = Account::builder_with_http(http()?)
                        .from_credentials(creds)
                        .await?;
                    return Ok((
                        AcmeClient {
                            account,
                            retry_after,
                        },
                        None,
                    ));
                }
                Err(e) => tracing::warn!("{}", AcmeError::Credentials(e)),
            }
        }
        let contact: Vec<&str> = opts.contact.iter().map(String::as_str).collect();
        let eab = opts
            .eab
            .as_ref()
            .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
        let (account, creds) = Account::builder_with_http(http()?)
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                opts.directory.clone(),
                eab.as_ref(),
            )
            .await?;
        let json =
            Zeroizing::new(serde_json::to_vec(&creds).map_err(|e| AcmeError::Acme(e.into()))?);
        Ok((
            AcmeClient {
                account,
                retry_after,
            },
            Some(json),
        ))
    }

    /// The CA's last `Retry-After` (Unix seconds), cleared by reading it.
    pub fn take_retry_after(&self) -> Option<i64> {
        self.retry_after.take()
    }

    /// Orders one certificate for `names`, proving each by `kind`. Whatever happens, every
    /// challenge answer installed is removed before this returns.
    pub async fn order(
        &self,
        names: &[String],
        kind: ChallengeKind,
        installer: &Installer,
    ) -> Result<Issued, AcmeError> {
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = self.account.new_order(&NewOrder::new(&ids)).await?;
        let mut installed = Vec::new();
        let result = drive(&mut order, names, kind, installer, &mut installed).await;
        for what in installed {
            installer.remove(what).await;
        }
        result
    }
}

async fn drive(
    order: &mut Order,
    names: &[String],
    kind: ChallengeKind,
    installer: &Installer,
    installed: &mut Vec<Installed>,
) -> Result<Issued, AcmeError> {
    // Every answer is in place before the CA is told to look: a wildcard and its base
    // share one DNS name, and the CA may check at once.
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Authorization {
                    name,
                    status: format!("{other:?}").to_lowercase(),
                })
            }
        }
        let challenge =
            authz
                .challenge(kind.acme_type())
                .ok_or_else(|| AcmeError::NoChallenge {
                    name: name.clone(),
                    kind,
                })?;
        let key_auth = challenge.key_authorization();
        match kind {
            ChallengeKind::TlsAlpn01 => {
                let cert = challenge::alpn_certificate(&name, key_auth.digest().as_ref())?;
                installer.certs.put_alpn_challenge(&name, cert);
                installed.push(Installed::Alpn(name));
            }
            ChallengeKind::Http01 => {
                let token = challenge.token.clone();
                installer
                    .certs
                    .put_http01(&token, key_auth.as_str().to_string());
                installed.push(Installed::Http(token));
            }
            ChallengeKind::Dns01 => {
                let dns = installer.dns.as_ref().ok_or(AcmeError::NoDns)?;
                let record = challenge::dns01_record(&name);
                let value = key_auth.dns_value();
                dns.add_txt(&record, &value)
                    .await
                    .map_err(|e| AcmeError::Dns {
                        record: record.clone(),
                        why: e.to_string(),
                    })?;
                installed.push(Installed::Dns { record, value });
            }
        }
    }
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(kind.acme_type())
            .ok_or(AcmeError::NoChallenge { name, kind })?;
        challenge.set_ready().await?;
    }
    let status = match order.poll_ready(&POLL).await {
        Ok(status) => status,
        Err(instant_acme::Error::Api(problem)) => {
            return Err(AcmeError::NotReady {
                status: "invalid".into(),
                detail: why_invalid(order, Some(problem.to_string())).await,
            })
        }
        Err(e) => return Err(e.into()),
    };
    if status != OrderStatus::Ready {
        return Err(AcmeError::NotReady {
            status: format!("{status:?}").to_lowercase(),
            detail: why_invalid(order, None).await,
        });
    }
    let request = challenge::certificate_request(names)?;
    order.finalize_csr(&request.csr_der).await?;
    let chain_pem = order.poll_certificate(&POLL).await?;
    Ok(Issued {
        chain_pem,
        key_pem: request.key_pem,
    })
}

/// The CA's reasons, for the log: each failed challenge with its name, else the order's
/// own problem.
async fn why_invalid(order: &mut Order, order_problem: Option<String>) -> String {
    let mut reasons: Vec<String> = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(mut authz)) = authzs.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        let name = state.identifier().to_string();
        for c in &state.challenges {
            if let Some(e) = &c.error {
                reasons.push(format!("{name}: {e}"));
            }
        }
    }
    match (reasons.is_empty(), order_problem) {
        (false, _) => reasons.join("; "),
        (true, Some(problem)) => problem,
        (true, None) => "the CA gave no reason".into(),
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
