//! Upstream OAuth2 client credentials (`http.auth.oauth2ClientCredentials`): the gateway gets
//! a token from the provider's token endpoint, caches it per (tokenURL, clientID, scopes,
//! secret), refreshes it at 80% of its lifetime, and lets concurrent requests wait on one
//! refresh (single flight) instead of each fetching its own.

use super::buffer::read_limited;
use super::upstream::{Timeouts, UpstreamClient};
use super::BoxBody;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use postern_common::resources::{OAuth2ClientCredentials, TokenAuthMethod};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Share of a token's lifetime after which it is refreshed.
const REFRESH_AT: f64 = 0.8;
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// Why no upstream token could be had; the caller answers 502 and logs this.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The Secret holding the client secret does not exist.
    #[error("secret {0:?} (oauth2ClientCredentials.clientSecret) is missing")]
    MissingSecret(String),
    /// The token endpoint could not be reached or broke HTTP.
    #[error("token endpoint {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The token endpoint refused (4xx/5xx).
    #[error("token endpoint {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    /// The answer was not a JSON object with `access_token`.
    #[error("token endpoint {url} gave an unusable answer: {reason}")]
    BadResponse { url: String, reason: String },
}

/// A token as the endpoint returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedToken {
    pub access_token: String,
    pub expires_in: Duration,
}

#[derive(Debug, Clone)]
struct Cached {
    value: String,
    refresh_at: Instant,
    expires_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Tokens by (tokenURL, clientID, scopes, hash of the client secret).
#[derive(Debug, Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl TokenCache {
    fn slot(&self, key: &str) -> Slot {
        let mut m = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.to_string()).or_default().clone()
    }

    /// The cached token under `key`, or a new one from `fetch` when there is none or it is due
    /// for refresh at `now`. Concurrent callers of one key wait for a single fetch. A failed
    /// refresh still returns the old token while it has not expired.
    pub async fn get_with<F, Fut>(
        &self,
        key: &str,
        now: Instant,
        fetch: F,
    ) -> Result<String, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedToken, TokenError>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| now < c.refresh_at) {
            return Ok(c.value.clone());
        }
        match fetch().await {
            Ok(t) => {
                let now = Instant::now().max(now);
                *guard = Some(Cached {
                    value: t.access_token.clone(),
                    refresh_at: now + t.expires_in.mul_f64(REFRESH_AT),
                    expires_at: now + t.expires_in,
                });
                Ok(t.access_token)
            }
            Err(e) => match guard.as_ref().filter(|c| now < c.expires_at) {
                Some(c) => {
                    tracing::warn!(error = %e, "upstream token refresh failed; using the current token until it expires");
                    Ok(c.value.clone())
                }
                None => Err(e),
            },
        }
    }

    /// A bearer token for `cfg`, fetched through `client` when needed; `client_secret` is the
    /// value of the Secret `cfg.clientSecret` names (`None` when it does not exist).
    pub async fn bearer(
        &self,
        client: &UpstreamClient,
        cfg: &OAuth2ClientCredentials,
        client_secret: Option<String>,
    ) -> Result<String, TokenError> {
        let name = &cfg.client_secret.from_secret;
        let client_secret =
            client_secret.ok_or_else(|| TokenError::MissingSecret(name.to_string()))?;
        let key = cache_key(cfg, &client_secret);
        self.get_with(&key, Instant::now(), || {
            fetch_token(client, cfg, client_secret.clone())
        })
        .await
    }
}

fn cache_key(cfg: &OAuth2ClientCredentials, client_secret: &str) -> String {
    let digest = Sha256::digest(client_secret.as_bytes());
    format!(
        "{}\n{}\n{}\n{}",
        cfg.token_url,
        cfg.client_id,
        cfg.scopes.join(" "),
        hex::encode(&digest[..8])
    )
}

/// The form body and headers of a client-credentials token request.
pub fn token_request(
    cfg: &OAuth2ClientCredentials,
    client_secret: &str,
) -> Result<http::Request<BoxBody>, http::Error> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !cfg.scopes.is_empty() {
        form.append_pair("scope", &cfg.scopes.join(" "));
    }
    let mut req = http::Request::post(&cfg.token_url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    match cfg.auth_method {
        TokenAuthMethod::ClientSecretPost => {
            form.append_pair("client_id", &cfg.client_id);
            form.append_pair("client_secret", client_secret);
        }
        TokenAuthMethod::ClientSecretBasic => {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&cfg.client_id), enc(client_secret));
            let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
            req = req.header(http::header::AUTHORIZATION, format!("Basic {b64}"));
        }
    }
    let body = Full::new(Bytes::from(form.finish()))
        .map_err(|e| match e {})
        .boxed_unsync();
    req.body(body)
}

/// Reads `access_token` and `expires_in` (number or numeric string) from a token response.
pub fn parse_token(url: &str, body: &[u8]) -> Result<FetchedToken, TokenError> {
    let bad = |reason: &str| TokenError::BadResponse {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let access_token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?
        .to_string();
    if access_token.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad("access_token holds control characters"));
    }
    let expires_in = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|s| s.is_finite() && *s >= 0.0)
    .map(Duration::from_secs_f64)
    .unwrap_or(DEFAULT_LIFETIME);
    Ok(FetchedToken {
        access_token,
        expires_in,
    })
}

async fn fetch_token(
    client: &UpstreamClient,
    cfg: &OAuth2ClientCredentials,
    client_secret: String,
) -> Result<FetchedToken, TokenError> {
    let url = cfg.token_url.clone();
    let unreachable = |reason: String| TokenError::Unreachable {
        url: url.clone(),
        reason,
    };
    let req = token_request(cfg, &client_secret).map_err(|e| unreachable(e.to_string()))?;
    let resp = client
        .send_with(
            req,
            Timeouts {
                connect: None,
                response_header: Some(Duration::from_secs(15)),
            },
        )
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let body = read_limited(resp.into_body(), MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !status.is_success() {
        return Err(TokenError::Refused {
            url,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        });
    }
    parse_token(&cfg.token_url, &body)
}

#[cfg(test)]
#[path = "upstream_oauth_tests.rs"]
mod tests;
