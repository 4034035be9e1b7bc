//! Sending an authorized request to its upstream: rewriting it for the chosen config
//! (path, headers, injected credentials) and sending it through the pooled client. This is
//! the one place that talks to upstreams, so resilience lives here:
//!
//! * each config picks an endpoint ([`balance`](super::balance)) and retries failed tries
//!   ([`retry`](super::retry)) on the next endpoint, within the retry budget;
//! * a dynamicConfig rule's `configNames` are tried in order when a config fails before
//!   anything reached the client (connect error, timeout, 429 or 5xx; that response is dropped);
//! * a try that may have reached the upstream is sent again only for an idempotent method or
//!   with `retry.allowNonIdempotent` ([`retry::decide`](super::retry::decide));
//! * bodies are buffered for replay when a second try is possible ([`replay`](super::replay)).

use super::balance::InFlight;
use super::buffer::declared_too_large;
use super::replay::{Replay, RequestBody};
use super::retry::{decide, Cause, Failure, Next, Options};
use super::upstream::UpstreamError;
use super::{rewrite, BoxBody, BoxError};
use crate::state::Gateway;
use crate::state::{Snapshot, UpstreamConfig};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::IpAddr;
use std::sync::Arc;

/// Why a request could not be forwarded: what the caller sees and what the log records.
#[derive(Debug)]
pub struct ForwardError {
    pub status: StatusCode,
    /// Safe to show the caller: names no upstream address or secret.
    pub public: &'static str,
    /// For the access log.
    pub detail: String,
    /// Every try, as `config:outcome` (`openai:502`, `gemini:connect`), when there were several.
    pub attempts: Vec<String>,
    /// The dynamicConfig name of the last config tried (`None` for `spec.config`).
    pub config: Option<String>,
}

/// The response that is sent back, and how it was obtained.
pub struct Forwarded {
    /// Headers as the upstream sent them; the body holds the endpoint's in-flight count until
    /// it ends or is dropped.
    pub response: Response<BoxBody>,
    /// The config that answered.
    pub config: Arc<UpstreamConfig>,
    /// Every try, as `config:outcome` (`openai:502`, `gemini:200`), when there were several.
    pub attempts: Vec<String>,
}

/// Where the request came from, for `X-Forwarded-*`.
pub struct Origin<'a> {
    pub client_ip: Option<IpAddr>,
    /// The host the client addressed (`svc.domain`).
    pub host: &'a str,
}

/// The parts of the caller's request each try starts from.
struct Template {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Template {
    fn parts(&self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.headers = self.headers.clone();
        parts
    }
}

/// One failed try.
struct TryFailed {
    failure: Failure,
    error: ForwardError,
}

/// What one try produced: a response (possibly a failing status) or a failure.
enum TryOutcome {
    Answered(Response<BoxBody>),
    Failed(TryFailed),
}

fn error(status: StatusCode, public: &'static str, detail: String) -> ForwardError {
    ForwardError {
        status,
        public,
        detail,
        attempts: Vec::new(),
        config: None,
    }
}

/// Sends the request to `configs[0]`, retrying and falling back to the next configs as each
/// config's `upstream.retry` and the list allow. `max_body` bounds the buffering for replay.
pub async fn forward(
    gw: &Gateway,
    snap: &Snapshot,
    configs: &[Arc<UpstreamConfig>],
    parts: http::request::Parts,
    body: RequestBody,
    origin: &Origin<'_>,
) -> Result<Forwarded, ForwardError> {
    let limit = gw.settings.max_body_bytes;
    // A body declared larger than the limit is not read into memory at all: it streams once.
    let may_retry = (configs.len() > 1 || configs.iter().any(|c| c.retry.attempts > 1))
        && !declared_too_large(&parts.headers, limit);
    let mut body = Replay::prepare(body, may_retry, limit).await.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
            e.to_string(),
        )
    })?;
    let template = Template {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    };
    let mut attempts = Vec::new();
    let mut last: Option<ForwardError> = None;
    let mut last_config = None;
    'configs: for (ci, config) in configs.iter().enumerate() {
        last_config = config.name.clone();
        config.retry.note_request();
        let mut tried: Vec<usize> = Vec::new();
        for n in 0..config.retry.attempts {
            if n > 0 {
                tokio::time::sleep(config.retry.backoff(n, rand::random::<f64>())).await;
            }
            let Some(b) = body.take() else { break };
            let ep = config.balancer.pick(&tried);
            tried.push(ep);
            let label = || try_label(config, ep);
            let opts = Options {
                replayable: body.replayable(),
                tries_left: n + 1 < config.retry.attempts,
                fallback_left: ci + 1 < configs.len(),
            };
            // Takes from the budget only when a retry would otherwise happen.
            let budget = || {
                let ok = config.retry.allow_retry();
                if !ok {
                    tracing::debug!(config = config.label(), "retry budget spent");
                }
                ok
            };
            let (failure, answer, mut err) =
                match try_once(gw, snap, config, ep, &template, b, origin).await {
                    TryOutcome::Answered(resp) => {
                        let status = resp.status();
                        attempts.push((config.clone(), ep, Tried::Status(status.as_u16())));
                        let Some(failure) = Failure::from_status(status) else {
                            return Ok(Forwarded {
                                response: resp,
                                config: config.clone(),
                                attempts: attempt_list(attempts),
                            });
                        };
                        let err = error(
                            StatusCode::BAD_GATEWAY,
                            "the upstream could not be reached",
                            format!("{} answered {status}", label()),
                        );
                        (failure, Some(resp), err)
                    }
                    TryOutcome::Failed(t) => {
                        attempts.push((config.clone(), ep, Tried::Failed(t.failure.outcome())));
                        (t.failure, None, t.error)
                    }
                };
            match decide(&template.method, failure, &config.retry, opts, budget) {
                // Nothing was sent to the client yet: an answer is dropped.
                Next::Retry => last = Some(err),
                Next::FallBack => {
                    last = Some(err);
                    continue 'configs;
                }
                next @ (Next::GiveUp | Next::Unsafe) => {
                    if let Some(resp) = answer {
                        return Ok(Forwarded {
                            response: resp,
                            config: config.clone(),
                            attempts: attempt_list(attempts),
                        });
                    }
                    if next == Next::Unsafe {
                        err.detail = format!(
                            "{}; not sent again: a {} may already have reached the upstream \
                             (set upstream.retry.allowNonIdempotent to allow it)",
                            err.detail, template.method
                        );
                    }
                    last = Some(err);
                    break 'configs;
                }
            }
        }
        if !body.replayable() {
            break;
        }
    }
    let mut e = last.unwrap_or_else(|| {
        error(
            StatusCode::BAD_GATEWAY,
            "the upstream could not be reached",
            "no upstream try could be made".into(),
        )
    });
    let attempts = attempt_list(attempts);
    if !attempts.is_empty() {
        e.detail = format!("{} (tries: {})", e.detail, attempts.join(", "));
    }
    e.attempts = attempts;
    e.config = last_config;
    Err(e)
}

/// How one try ended, for the access log's `attempts`.
enum Tried {
    /// The upstream answered with this status.
    Status(u16),
    /// No answer: `connect`, `timeout` or `error`.
    Failed(&'static str),
}

/// A config's label, with the endpoint's index when it balances over several.
fn try_label(config: &UpstreamConfig, ep: usize) -> String {
    if config.balancer.len() > 1 {
        format!("{}[{ep}]", config.label())
    } else {
        config.label().to_string()
    }
}

/// The tries as the access log shows them (`label:outcome`), only when there were several:
/// a request answered at the first try, the common case, formats nothing.
fn attempt_list(tries: Vec<(Arc<UpstreamConfig>, usize, Tried)>) -> Vec<String> {
    if tries.len() < 2 {
        return Vec::new();
    }
    tries
        .iter()
        .map(|(config, ep, tried)| match tried {
            Tried::Status(s) => format!("{}:{s}", try_label(config, *ep)),
            Tried::Failed(f) => format!("{}:{f}", try_label(config, *ep)),
        })
        .collect()
}

/// One try: rewrite for endpoint `ep` of `config`, add an OAuth2 token if configured, send.
async fn try_once(
    gw: &Gateway,
    snap: &Snapshot,
    config: &UpstreamConfig,
    ep: usize,
    template: &Template,
    body: BoxBody,
    origin: &Origin<'_>,
) -> TryOutcome {
    let failed = |failure, status, public, detail: String| {
        TryOutcome::Failed(TryFailed {
            failure,
            error: error(status, public, detail),
        })
    };
    let endpoint = config.balancer.get(ep).clone();
    let secret = |n: &str| snap.secret(n);
    let mut parts = template.parts();
    if let Err(e) = rewrite::upstream_request(
        &mut parts,
        &endpoint.url,
        endpoint.http.as_ref(),
        &secret,
        origin.client_ip,
        origin.host,
    ) {
        return failed(
            Failure::not_sent(Cause::Other),
            StatusCode::BAD_GATEWAY,
            "the gateway could not prepare the upstream request",
            e.to_string(),
        );
    }
    let oauth = endpoint
        .http
        .as_ref()
        .and_then(|h| h.auth.as_ref())
        .and_then(|a| a.oauth2_client_credentials.as_ref());
    if let Some(cc) = oauth {
        let client_secret = snap.secret(&cc.client_secret.from_secret);
        match gw
            .upstream
            .tokens()
            .bearer(&gw.upstream, cc, client_secret)
            .await
        {
            Ok(token) => match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    parts.headers.insert(http::header::AUTHORIZATION, v);
                }
                Err(_) => {
                    return failed(
                        Failure::not_sent(Cause::Other),
                        StatusCode::BAD_GATEWAY,
                        "the gateway could not get a token for the upstream",
                        "the upstream token is not a valid header value".into(),
                    )
                }
            },
            Err(e) => {
                return failed(
                    Failure::not_sent(Cause::Other),
                    StatusCode::BAD_GATEWAY,
                    "the gateway could not get a token for the upstream",
                    e.to_string(),
                )
            }
        }
    }
    parts.version = http::Version::HTTP_11;
    let guard = InFlight::start(endpoint);
    match gw
        .upstream
        .send_with(Request::from_parts(parts, body), config.timeouts)
        .await
    {
        Ok(resp) => TryOutcome::Answered(resp.map(|b| {
            // The closure owns the guard, so the endpoint counts as busy until the body is
            // dropped (finished, failed or abandoned by the client).
            b.map_err(move |e| {
                let _busy = &guard;
                BoxError::from(e)
            })
            .boxed_unsync()
        })),
        Err(e) => {
            let cause = match e {
                UpstreamError::Connect(_)
                | UpstreamError::Unsent(_)
                | UpstreamError::Protocol(_) => Cause::Connect,
                UpstreamError::Timeout | UpstreamError::ConnectTimeout => Cause::Timeout,
                UpstreamError::Tls(_) => Cause::Other,
            };
            let failure = if e.not_sent() {
                Failure::not_sent(cause)
            } else {
                Failure::maybe_sent(cause)
            };
            let status = e.status();
            failed(
                failure,
                status,
                if status == StatusCode::GATEWAY_TIMEOUT {
                    "the upstream did not answer in time"
                } else {
                    "the upstream could not be reached"
                },
                e.to_string(),
            )
        }
    }
}
