//! The request pipeline every Service request goes through, whichever door it came in by:
//! authenticate -> authorize (policies) -> pick a config (dynamicConfig rules) -> rewrite
//! (path, headers, CORS, upstream credentials) -> forward -> stream back, logging once.

use super::buffer::{declared_too_large, read_limited, BufferError, TimedBody};
use super::forward::{forward, Origin};
use super::inbound::ClientRequest;
use super::replay::RequestBody;
use super::{cors, rewrite, BoxBody};
use crate::frontdoor::respond::{error, full, not_found};
use crate::frontdoor::{cookies, signin};
use crate::state::{AuthError, Gateway, Principal, ServiceEntry, Snapshot, UpstreamConfig};
use crate::telemetry::access_log::AccessRecord;
use crate::telemetry::body::{BodyOutcome, ObservedBody};
use crate::telemetry::trace_context::{self, TraceContext};
use crate::telemetry::usage::{self, UsageParser};
use http::{header, Method, Response, StatusCode};
use postern_common::resources::Effect;
use postern_policy::{Catalog, Decision, EvalContext, Reason, RequestFacts, RuleSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The header naming a request in the access log (made once, not per request).
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What a client that sent its body too slowly is told.
const BODY_TOO_SLOW: &str = "the request body did not arrive in time";

/// What the access log line needs, filled in as the request moves along.
struct Trace {
    started: Instant,
    record: AccessRecord,
}

impl Trace {
    fn new(service: &str, req: &ClientRequest, span_exported: bool) -> Self {
        Trace {
            started: Instant::now(),
            record: AccessRecord {
                service: Some(service.to_string()),
                trace: TraceContext::from_headers(req.headers(), span_exported),
                ..AccessRecord::new(
                    AccessRecord::new_request_id(),
                    req.method().as_str(),
                    req.uri().path(),
                )
            },
        }
    }

    fn finish(mut self, gw: &Gateway, status: StatusCode, bytes_out: u64) {
        self.record.status = status.as_u16();
        self.record.bytes_out = bytes_out;
        self.record.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        gw.telemetry.record(self.record);
    }

    /// Ends the request here with an error response.
    fn fail(
        mut self,
        gw: &Gateway,
        status: StatusCode,
        public: &str,
        detail: String,
    ) -> Response<BoxBody> {
        let with_id = status == StatusCode::FORBIDDEN || status.is_server_error();
        let resp = error(
            status,
            public,
            with_id.then_some(self.record.request_id.as_str()),
        );
        self.record.error = Some(detail);
        self.finish(gw, status, 0);
        resp
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Which front door a request came in by: what the access log's `via` and the policy
/// context's `scheme` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `https://<svc>.<domain>`, authenticated by access token.
    Public,
    /// A tunnel address, authenticated by the WireGuard peer that owns it.
    Tunnel,
}

impl Door {
    fn via(self) -> &'static str {
        match self {
            Door::Public => "public",
            Door::Tunnel => "tunnel",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Door::Public => "https",
            Door::Tunnel => "http",
        }
    }
}

/// Starts a request: its access record, normalised path and CORS preflight.
fn begin(
    gw: &Gateway,
    service: &ServiceEntry,
    req: &ClientRequest,
    door: Door,
) -> Result<(Trace, String), Box<Response<BoxBody>>> {
    let mut trace = Trace::new(&service.name, req, gw.telemetry.otlp.is_some());
    trace.record.via = door.via().into();
    let path = match rewrite::normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("invalid path: {e}");
            return Err(Box::new(trace.fail(
                gw,
                StatusCode::BAD_REQUEST,
                &msg,
                msg.clone(),
            )));
        }
    };
    trace.record.path = path.clone();
    if let Some(resp) = preflight(service, req) {
        trace.finish(gw, resp.status(), 0);
        return Err(Box::new(resp));
    }
    Ok((trace, path))
}

/// Ends a browser's request that has no valid Session with a redirect to sign in.
fn send_to_sign_in(mut trace: Trace, gw: &Gateway, e: &AuthError, url: &str) -> Response<BoxBody> {
    trace.record.decision = Some(Effect::Deny);
    trace.record.reason = Some(format!("not authenticated ({e}): sent to sign in"));
    let resp = signin::redirect(url);
    trace.finish(gw, resp.status(), 0);
    resp
}

/// Ends a request whose caller could not be identified with a 401.
fn unauthenticated(mut trace: Trace, gw: &Gateway, e: &AuthError) -> Response<BoxBody> {
    trace.record.decision = Some(Effect::Deny);
    trace.record.reason = Some(format!("not authenticated: {e}"));
    trace.fail(
        gw,
        StatusCode::UNAUTHORIZED,
        "missing or invalid access token; get one from /oauth2/token",
        e.to_string(),
    )
}

/// Serves one request to public Service `name` at the public door. The caller is a bearer
/// token, else the browser's Session cookie; a browser (it asks for HTML) with neither valid
/// is sent to sign in, back to the exact URL.
pub async fn handle(
    gw: Arc<Gateway>,
    name: &str,
    req: ClientRequest,
    peer: SocketAddr,
) -> Response<BoxBody> {
    let snap = gw.snapshot();
    let Some(service) = snap
        .services
        .get(name)
        .filter(|s| s.spec.is_public)
        .cloned()
    else {
        return not_found();
    };
    let (trace, path) = match begin(&gw, &service, &req, Door::Public) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let bearer = bearer_token(req.headers());
    let principal = match bearer
        .or_else(|| cookies::get(req.headers(), cookies::SESSION_COOKIE))
        .ok_or(AuthError::Missing)
        .and_then(|t| gw.authenticate(t))
    {
        Ok(p) => p,
        Err(e) if bearer.is_none() && signin::wants_html(req.headers()) => {
            let url = signin::sign_in_redirect_for(&gw.domain, req.headers(), req.uri());
            return send_to_sign_in(trace, &gw, &e, &url);
        }
        Err(e) => return unauthenticated(trace, &gw, &e),
    };
    serve(
        gw,
        snap,
        service,
        trace,
        path,
        req,
        principal,
        peer,
        Door::Public,
    )
    .await
}

/// Serves one request that came through the tunnel to Service `name` (public or not). The
/// caller is the Session owning the tunnel source address, already looked up.
pub async fn handle_tunnel(
    gw: Arc<Gateway>,
    name: &str,
    req: ClientRequest,
    peer: SocketAddr,
    principal: Result<Principal, AuthError>,
) -> Response<BoxBody> {
    let snap = gw.snapshot();
    let Some(service) = snap.services.get(name).cloned() else {
        return not_found();
    };
    let (trace, path) = match begin(&gw, &service, &req, Door::Tunnel) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    match principal {
        Ok(p) => serve(gw, snap, service, trace, path, req, p, peer, Door::Tunnel).await,
        Err(e) => unauthenticated(trace, &gw, &e),
    }
}

/// Authorize -> config -> forward -> log, for an identified caller.
#[allow(clippy::too_many_arguments)]
async fn serve(
    gw: Arc<Gateway>,
    snap: Arc<Snapshot>,
    service: Arc<ServiceEntry>,
    mut trace: Trace,
    path: String,
    req: ClientRequest,
    principal: Principal,
    peer: SocketAddr,
    door: Door,
) -> Response<BoxBody> {
    let name = service.name.as_str();
    trace.record.user = Some(principal.user.name.clone());
    trace.record.session = Some(principal.session.info.name.clone());
    trace.record.groups = principal.user.spec.groups.clone();
    trace.record.credential = Some(principal.session.info.credential.clone());

    let rules = super::rule_cache::rules_for(&snap, &service, &principal.user);
    let limit_plan = gw.limits.plan(&snap, &service, &principal);
    let needs_body = rules.reads_body() || service.dynamic_reads.body || limit_plan.needs_body();

    let (mut parts, body) = req.into_parts();
    rewrite::drop_client_forwarding(&mut parts.headers);
    let (body, body_timed_out) = TimedBody::watched(body, gw.settings.client_limits.body);
    let limit = gw.settings.max_body_bytes;
    let (buffered, body_json, streamed) = if needs_body {
        if declared_too_large(&parts.headers, limit) {
            let msg = format!("request body is larger than the {limit}-byte limit");
            return trace.fail(&gw, StatusCode::PAYLOAD_TOO_LARGE, &msg, msg.clone());
        }
        match read_limited(body, limit).await {
            Ok(bytes) => {
                let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                (Some(bytes), json, None)
            }
            Err(BufferError::TooLarge(_)) => {
                let msg = format!("request body is larger than the {limit}-byte limit");
                return trace.fail(&gw, StatusCode::PAYLOAD_TOO_LARGE, &msg, msg.clone());
            }
            Err(e @ BufferError::TimedOut(_)) => {
                return trace.fail(
                    &gw,
                    StatusCode::REQUEST_TIMEOUT,
                    BODY_TOO_SLOW,
                    e.to_string(),
                )
            }
            Err(e) => {
                return trace.fail(
                    &gw,
                    StatusCode::BAD_REQUEST,
                    "could not read the request body",
                    e.to_string(),
                )
            }
        }
    } else {
        (None, None, Some(body))
    };
    trace.record.model = body_json
        .as_ref()
        .and_then(|b| b.get("model"))
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let prompt_chars = body_json.as_ref().map(usage::prompt_chars).unwrap_or(0);
    let host = format!("{name}.{}", gw.domain);
    let size = buffered
        .as_ref()
        .map(|b| b.len() as u64)
        .or_else(|| {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);

    let (decision, config) = {
        let facts = RequestFacts {
            method: parts.method.as_str(),
            path: &path,
            host: &host,
            scheme: door.scheme(),
            headers: &parts.headers,
            query: parts.uri.query(),
            body: body_json.as_ref(),
            size,
            client_ip: Some(peer.ip()),
            now: None,
        };
        decide(&snap, &service, &principal, &rules, &facts)
    };
    trace.record.decision = Some(decision.effect);
    trace.record.reason = Some(reason_text(&decision.reason));
    if decision.effect != Effect::Allow {
        return trace.fail(
            &gw,
            StatusCode::FORBIDDEN,
            "access denied by policy",
            "denied".into(),
        );
    }
    if config.is_empty() {
        return trace.fail(
            &gw,
            StatusCode::BAD_GATEWAY,
            "no upstream is configured for this request",
            "no dynamicConfig rule matched and the Service has no spec.config".into(),
        );
    }
    trace.record.config = config[0].name.clone();
    let admission = match gw
        .limits
        .admit_async(
            limit_plan,
            body_json.as_ref(),
            crate::state::now_unix(),
            &gw,
        )
        .await
    {
        Ok(a) => a,
        Err(refused) => return refuse(trace, &gw, &refused),
    };

    let original_path_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    parts.uri = match original_path_query.parse() {
        Ok(u) => u,
        Err(_) => {
            return trace.fail(
                &gw,
                StatusCode::BAD_REQUEST,
                "invalid request URI",
                "uri".into(),
            )
        }
    };
    let origin = parts.headers.get(header::ORIGIN).cloned();

    let bytes_in = Arc::new(AtomicU64::new(0));
    let upstream_body = match (buffered, streamed) {
        (Some(b), _) => {
            bytes_in.store(b.len() as u64, Ordering::Relaxed);
            RequestBody::Buffered(b)
        }
        (None, None) => RequestBody::Buffered(bytes::Bytes::new()),
        (None, Some(body)) => {
            let counter = bytes_in.clone();
            RequestBody::Streamed(
                ObservedBody::counting(
                    body,
                    Box::new(move |o: BodyOutcome| {
                        counter.store(o.bytes, Ordering::Relaxed);
                    }),
                )
                .boxed(),
            )
        }
    };
    trace_context::set_upstream_headers(&mut parts.headers, trace.record.trace.as_ref());
    let from = Origin {
        client_ip: Some(peer.ip()),
        host: &host,
    };
    let (resp, config) = match forward(&gw, &snap, &config, parts, upstream_body, &from).await {
        Ok(f) => {
            trace.record.config = f.config.name.clone();
            if !f.attempts.is_empty() {
                trace.record.attempts = f.attempts;
            }
            (f.response, f.config)
        }
        Err(e) => {
            trace.record.bytes_in = bytes_in.load(Ordering::Relaxed);
            trace.record.upstream_error = Some(usage::failure_kind(e.status));
            trace.record.config = e.config;
            if !e.attempts.is_empty() {
                trace.record.attempts = e.attempts;
            }
            if body_timed_out.load(Ordering::Relaxed) {
                return trace.fail(&gw, StatusCode::REQUEST_TIMEOUT, BODY_TOO_SLOW, e.detail);
            }
            return trace.fail(&gw, e.status, e.public, e.detail);
        }
    };

    let (mut rparts, rbody) = resp.into_parts();
    rewrite::response_headers(&mut rparts.headers, config.http.as_ref());
    if let Some(c) = config.http.as_ref().and_then(|h| h.cors.as_ref()) {
        cors::apply_cors(c, origin.as_ref(), &mut rparts.headers);
    }
    rparts.headers.insert(
        X_REQUEST_ID,
        http::HeaderValue::from_str(&trace.record.request_id).expect("ids are ASCII"),
    );
    let content_type = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parser = content_type
        .filter(|ct| ct.starts_with("application/json") || ct.starts_with("text/event-stream"))
        .map(|ct| UsageParser::new(Some(ct)));
    let status = rparts.status;
    let gw2 = gw.clone();
    let body = ObservedBody::new(
        rbody,
        parser,
        Box::new(move |o: BodyOutcome| {
            trace.record.bytes_in = bytes_in.load(Ordering::Relaxed);
            let model_seen = o.model.is_some();
            if model_seen {
                trace.record.model = o.model;
            }
            admission.settle(o.usage.as_ref().map(|u| u.total_tokens));
            (trace.record.usage, trace.record.usage_estimated) =
                usage::account(o.usage, model_seen, o.completion_chars, prompt_chars);
            if !o.completed {
                trace.record.upstream_error = Some("incomplete");
                trace.record.error = Some("response body did not complete".into());
            }
            trace.finish(&gw2, status, o.bytes);
        }),
    );
    Response::from_parts(rparts, body.boxed())
}

/// Ends the request with a limit's 429; the access log names the limit.
fn refuse(mut trace: Trace, gw: &Gateway, refused: &crate::limits::Refusal) -> Response<BoxBody> {
    let resp = refused.response(&trace.record.request_id);
    trace.record.decision = Some(Effect::Deny);
    trace.record.reason = Some(refused.reason());
    trace.record.error = Some(refused.to_string());
    trace.finish(gw, resp.status(), 0);
    resp
}

/// Answers a CORS preflight for a Service whose default config declares CORS.
fn preflight(service: &ServiceEntry, req: &ClientRequest) -> Option<Response<BoxBody>> {
    if req.method() != Method::OPTIONS || !req.headers().contains_key(header::ORIGIN) {
        return None;
    }
    let cors = service
        .default_config
        .as_ref()?
        .http
        .as_ref()?
        .cors
        .as_ref()?;
    let resp = cors::preflight_response(cors, req.headers())?;
    let (parts, ()) = resp.into_parts();
    Some(Response::from_parts(parts, full(bytes::Bytes::new())))
}

/// The connection-level decision for a `mode: TCP` Service reached through the tunnel: the
/// rules see a request with method `CONNECT`, path `/` and no body. Returns the decision,
/// its reason as logged, and when allowed the configs to connect with.
pub fn decide_connection(
    gw: &Gateway,
    snap: &Snapshot,
    service: &ServiceEntry,
    principal: &Principal,
    peer: SocketAddr,
) -> (Decision, String, Vec<Arc<UpstreamConfig>>) {
    let rules = Catalog::combine(&service.rules, &principal.user.rules, &snap.global_rules);
    let headers = http::HeaderMap::new();
    let host = format!("{}.{}", service.name, gw.domain);
    let facts = RequestFacts {
        method: "CONNECT",
        path: "/",
        host: &host,
        scheme: "tcp",
        headers: &headers,
        query: None,
        body: None,
        size: 0,
        client_ip: Some(peer.ip()),
        now: None,
    };
    let (decision, configs) = decide(snap, service, principal, &rules, &facts);
    let reason = reason_text(&decision.reason);
    (decision, reason, configs)
}

/// The policy decision and, when allowed, the configs to forward with (fallbacks after the first).
fn decide(
    _snap: &Snapshot,
    service: &ServiceEntry,
    principal: &Principal,
    rules: &RuleSet,
    facts: &RequestFacts<'_>,
) -> (Decision, Vec<Arc<UpstreamConfig>>) {
    if rules.rules().is_empty() {
        return (
            Decision {
                effect: Effect::Deny,
                reason: Reason::NoMatch,
            },
            Vec::new(),
        );
    }
    let ctx = EvalContext::reading(
        &principal.user.value,
        &principal.session.value,
        &principal.user.groups_value,
        &service.value,
        facts,
        rules.reads().union(service.dynamic_reads),
    );
    let decision = rules.decide(&ctx);
    if decision.effect != Effect::Allow {
        return (decision, Vec::new());
    }
    let config = service
        .dynamic_rules
        .iter()
        .find(|(cond, _)| cond.evaluate(&ctx))
        .map(|(_, cfgs)| cfgs.clone())
        .or_else(|| service.default_config.clone().map(|c| vec![c]))
        .unwrap_or_default();
    (decision, config)
}

/// The decision's reason as the access log shows it.
pub fn reason_text(r: &Reason) -> String {
    match r {
        Reason::Rule {
            policy,
            rule,
            priority,
        } => {
            format!("policy {policy} rule {rule} priority {priority}")
        }
        Reason::NoMatch => "no matching rule (deny by default)".into(),
    }
}
