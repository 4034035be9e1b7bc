//! Upstream resilience fields of a Service config: load balancing, retries, timeouts and
//! upstream OAuth2 client credentials, with their structural checks.

use super::{FromSecret, HttpAuth, Upstream};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The most tries `retry.attempts` may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 5;

/// `upstream.loadBalance`: several endpoints serving the same API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalance {
    pub endpoints: Vec<LbEndpoint>,
    #[serde(default)]
    pub policy: LbPolicy,
}

/// One endpoint of a load-balanced upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LbEndpoint {
    /// `http://` or `https://` base URL.
    pub url: String,
    /// This endpoint's own credentials (same shape as `http.auth`), replacing `http.auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
}

/// How an endpoint is chosen for each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    /// Each request goes to the next endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastBusy,
}

/// `upstream.retry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Total tries, the first included (1 = no retry, at most 5).
    #[serde(default = "one")]
    pub attempts: u32,
    /// Which failures are retried.
    #[serde(default = "default_on")]
    pub on: Vec<RetryOn>,
    /// First backoff (`"100ms"`); doubles each retry, with jitter, capped at `maxBackoff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Cap on one backoff (default 10 × `backoff`, at most `"10s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    /// Limit on retries relative to traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    /// Also send a request again (retry, or fallback to the next config) when it may already
    /// have reached the upstream and its method is not idempotent (POST, PATCH, ...). Off by
    /// default, because a chat completion sent twice is charged twice; turn it on only for an
    /// upstream that deduplicates or whose non-idempotent calls are harmless to repeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_idempotent: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 1,
            on: default_on(),
            backoff: None,
            max_backoff: None,
            budget: None,
            allow_non_idempotent: false,
        }
    }
}

fn one() -> u32 {
    1
}

fn default_on() -> Vec<RetryOn> {
    vec![RetryOn::Connect, RetryOn::Status5xx]
}

/// A failure kind `retry.on` may list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// No connection, or the connection closed before a response. A close after the request
    /// was written is retried only for idempotent methods (or with `allowNonIdempotent`).
    #[serde(rename = "CONNECT")]
    Connect,
    /// No connection or no response headers in time. Waiting for the headers means the
    /// request was sent, so that case is retried only for idempotent methods (or with
    /// `allowNonIdempotent`).
    #[serde(rename = "TIMEOUT")]
    Timeout,
    /// `429 Too Many Requests`.
    #[serde(rename = "STATUS_429")]
    Status429,
    /// Any `5xx` status.
    #[serde(rename = "STATUS_5XX")]
    Status5xx,
}

/// `retry.budget`: retries may add at most `percent` % to the requests of the last `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per 100 requests (default 20).
    #[serde(default = "twenty")]
    pub percent: u32,
    /// Sliding window (default `"10s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Retries always allowed per window, so a quiet service can still retry (default 3).
    #[serde(default = "three")]
    pub min_retries: u32,
}

fn twenty() -> u32 {
    20
}

fn three() -> u32 {
    3
}

/// `upstream.timeout`: overrides the gateway's `--upstream-*-timeout` flags for this config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTimeout {
    /// Longest wait for a TCP (and TLS) connection, e.g. `"5s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Longest wait from sending the request to the response headers, e.g. `"60s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header: Option<String>,
}

/// `http.auth.oauth2ClientCredentials`: the gateway gets a token from `tokenURL` and sends it
/// upstream as `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2ClientCredentials {
    #[serde(rename = "tokenURL")]
    pub token_url: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub client_secret: FromSecret,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub auth_method: TokenAuthMethod,
}

/// Client authentication at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenAuthMethod {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    ClientSecretPost,
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"100ms\" or \"5s\""))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    }
}

fn is_http_url(u: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .find_map(|p| u.strip_prefix(p))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// Checks the resilience fields of `u` (at field path `at`, e.g. `spec.config.upstream`);
/// `url` itself is checked by the caller when `loadBalance` is absent.
pub fn check_upstream(at: &str, u: &Upstream, push: &mut impl FnMut(String, String)) {
    if let Some(lb) = &u.load_balance {
        if !u.url.is_empty() {
            push(
                format!("{at}.url"),
                "set either url or loadBalance, not both".into(),
            );
        }
        if lb.endpoints.is_empty() {
            push(
                format!("{at}.loadBalance.endpoints"),
                "must list at least one endpoint".into(),
            );
        }
        for (i, e) in lb.endpoints.iter().enumerate() {
            if !is_http_url(&e.url) {
                push(
                    format!("{at}.loadBalance.endpoints[{i}].url"),
                    format!("{:?} must start with http:// or https:// and a host", e.url),
                );
            }
            if let Some(a) = &e.auth {
                check_auth(&format!("{at}.loadBalance.endpoints[{i}].auth"), a, push);
            }
        }
    }
    if let Some(r) = &u.retry {
        if r.attempts == 0 || r.attempts > MAX_RETRY_ATTEMPTS {
            push(
                format!("{at}.retry.attempts"),
                format!("must be 1 to {MAX_RETRY_ATTEMPTS} (total tries, the first included)"),
            );
        }
        for (f, v) in [("backoff", &r.backoff), ("maxBackoff", &r.max_backoff)] {
            if let Some(Err(m)) = v.as_deref().map(parse_duration) {
                push(format!("{at}.retry.{f}"), m);
            }
        }
        if let Some(b) = &r.budget {
            if b.percent > 100 {
                push(
                    format!("{at}.retry.budget.percent"),
                    "must be 0 to 100".into(),
                );
            }
            match b.window.as_deref().map(parse_duration) {
                Some(Err(m)) => push(format!("{at}.retry.budget.window"), m),
                Some(Ok(d)) if d.is_zero() => {
                    push(format!("{at}.retry.budget.window"), "must be > 0".into())
                }
                _ => {}
            }
        }
    }
    if let Some(t) = &u.timeout {
        for (f, v) in [
            ("connect", &t.connect),
            ("responseHeader", &t.response_header),
        ] {
            match v.as_deref().map(parse_duration) {
                Some(Err(m)) => push(format!("{at}.timeout.{f}"), m),
                Some(Ok(d)) if d.is_zero() => {
                    push(format!("{at}.timeout.{f}"), "must be > 0".into())
                }
                _ => {}
            }
        }
    }
}

/// Checks `http.auth` (or an endpoint's `auth`): one method, valid fields.
pub fn check_auth(at: &str, auth: &HttpAuth, push: &mut impl FnMut(String, String)) {
    let set = [
        auth.bearer.is_some(),
        auth.basic.is_some(),
        auth.custom.is_some(),
        auth.oauth2_client_credentials.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        push(
            at.to_string(),
            "set only one of bearer, basic, custom, oauth2ClientCredentials".into(),
        );
    }
    if let Some(o) = &auth.oauth2_client_credentials {
        let at = format!("{at}.oauth2ClientCredentials");
        if !is_http_url(&o.token_url) {
            push(
                format!("{at}.tokenURL"),
                format!(
                    "{:?} must start with http:// or https:// and a host",
                    o.token_url
                ),
            );
        }
        if o.client_id.is_empty() {
            push(format!("{at}.clientID"), "must not be empty".into());
        }
        if o.client_secret.from_secret.is_empty() {
            push(
                format!("{at}.clientSecret.fromSecret"),
                "must name a Secret".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("x5s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn allow_non_idempotent_is_off_unless_set_and_round_trips() {
        let off: Retry = serde_yaml::from_str("{attempts: 2}").unwrap();
        assert!(!off.allow_non_idempotent);
        assert!(!serde_yaml::to_string(&off)
            .unwrap()
            .contains("allowNonIdempotent"));
        let on: Retry = serde_yaml::from_str("{attempts: 2, allowNonIdempotent: true}").unwrap();
        assert!(on.allow_non_idempotent);
        let back: Retry = serde_yaml::from_str(&serde_yaml::to_string(&on).unwrap()).unwrap();
        assert_eq!(back, on);
        assert!(serde_yaml::from_str::<Retry>("{allowNonIdempotents: true}").is_err());
    }

    #[test]
    fn upstream_checks_name_fields() {
        let u = Upstream {
            url: "http://a".into(),
            load_balance: Some(LoadBalance {
                endpoints: vec![LbEndpoint {
                    url: "ftp://x".into(),
                    auth: None,
                }],
                policy: LbPolicy::LeastBusy,
            }),
            retry: Some(Retry {
                attempts: 9,
                backoff: Some("fast".into()),
                ..Retry::default()
            }),
            timeout: Some(UpstreamTimeout {
                connect: Some("0s".into()),
                response_header: None,
            }),
        };
        let mut errs = Vec::new();
        check_upstream("spec.config.upstream", &u, &mut |f, _| errs.push(f));
        assert_eq!(
            errs,
            [
                "spec.config.upstream.url",
                "spec.config.upstream.loadBalance.endpoints[0].url",
                "spec.config.upstream.retry.attempts",
                "spec.config.upstream.retry.backoff",
                "spec.config.upstream.timeout.connect",
            ]
        );
    }
}
