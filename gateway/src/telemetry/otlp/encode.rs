//! Access records as OTLP messages: one LogRecord and one SERVER Span per request, with
//! attributes named after the OpenTelemetry semantic conventions (HTTP, URL, server, GenAI)
//! plus `postern.*` for what only the gateway knows.

use crate::telemetry::access_log::AccessRecord;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

/// The instrumentation scope every record is reported under.
const SCOPE: &str = "postern-gateway";

/// What is the same for every record this gateway exports.
#[derive(Debug, Clone)]
pub struct EncodeContext {
    /// `service.name` of the resource.
    pub service_name: String,
    /// The gateway's domain: Service `svc` is served at `svc.<domain>` (`server.address`).
    pub domain: Option<String>,
}

/// One request ready to export: the record and the ids its span and log share.
#[derive(Debug, Clone)]
pub struct Item {
    /// The finished request.
    pub record: AccessRecord,
    /// The caller's trace id when it sent a `traceparent`, else 16 random bytes (never all
    /// zero).
    pub trace_id: [u8; 16],
    /// The span id the upstream got as its parent, else 8 random bytes (never all zero).
    pub span_id: [u8; 8],
}

impl Item {
    /// Wraps `record` with the ids of the trace it continues, or fresh random ones.
    pub fn new(record: AccessRecord) -> Self {
        let (trace_id, span_id) = match &record.trace {
            Some(t) => (t.trace_id, t.span_id),
            None => (nonzero(rand::random()), nonzero(rand::random())),
        };
        Item {
            record,
            trace_id,
            span_id,
        }
    }
}

/// OTLP `SpanFlags`: whether the parent is known to be remote, and that it is.
const PARENT_IS_REMOTE: u32 = 0x100 | 0x200;

fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id.iter().all(|b| *b == 0) {
        id[N - 1] = 1;
    }
    id
}

/// The protobuf body for `POST /v1/logs`.
pub fn logs_body(ctx: &EncodeContext, items: &[Item]) -> Vec<u8> {
    logs_request(ctx, items).encode_to_vec()
}

/// The protobuf body for `POST /v1/traces`.
pub fn traces_body(ctx: &EncodeContext, items: &[Item]) -> Vec<u8> {
    traces_request(ctx, items).encode_to_vec()
}

/// `items` as one ExportLogsServiceRequest.
pub fn logs_request(ctx: &EncodeContext, items: &[Item]) -> ExportLogsServiceRequest {
    let observed = now_nanos();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(ctx)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: items.iter().map(|i| log_record(ctx, i, observed)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `items` as one ExportTraceServiceRequest.
pub fn traces_request(ctx: &EncodeContext, items: &[Item]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(ctx)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans: items.iter().map(|i| span(ctx, i)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn resource(ctx: &EncodeContext) -> Resource {
    Resource {
        attributes: vec![
            kv_str("service.name", &ctx.service_name),
            kv_str("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

fn log_record(ctx: &EncodeContext, item: &Item, observed: u64) -> LogRecord {
    let r = &item.record;
    let (severity, text) = match r.status {
        500.. => (SeverityNumber::Error, "ERROR"),
        400..=499 => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    let body = serde_json::to_string(r).unwrap_or_default();
    LogRecord {
        time_unix_nano: start_nanos(r),
        observed_time_unix_nano: observed,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(str_value(body)),
        attributes: attributes(ctx, r),
        trace_id: item.trace_id.to_vec(),
        span_id: item.span_id.to_vec(),
        flags: r.trace.as_ref().map_or(0, |t| t.flags.into()),
        event_name: "postern.access".into(),
        ..Default::default()
    }
}

fn span(ctx: &EncodeContext, item: &Item) -> Span {
    let r = &item.record;
    let start = start_nanos(r);
    let latency = (r.latency_ms.max(0.0) * 1_000_000.0) as u64;
    let name = match &r.service {
        Some(s) => format!("{} {s}", r.method),
        None => r.method.clone(),
    };
    let status = (r.status >= 500).then(|| Status {
        code: StatusCode::Error as i32,
        message: r.error.clone().unwrap_or_default(),
    });
    let (parent_span_id, trace_state, flags) = match &r.trace {
        Some(t) => (
            t.parent_id.to_vec(),
            t.state.as_deref().unwrap_or_default().to_string(),
            u32::from(t.flags) | PARENT_IS_REMOTE,
        ),
        None => (Vec::new(), String::new(), 0),
    };
    Span {
        trace_id: item.trace_id.to_vec(),
        span_id: item.span_id.to_vec(),
        parent_span_id,
        trace_state,
        flags,
        name,
        kind: SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(latency),
        attributes: attributes(ctx, r),
        status,
        ..Default::default()
    }
}

/// The attributes shared by a request's log record and span.
fn attributes(ctx: &EncodeContext, r: &AccessRecord) -> Vec<KeyValue> {
    let mut a = vec![
        kv_str("http.request.method", &r.method),
        kv_int("http.response.status_code", r.status.into()),
        kv_str("url.path", &r.path),
        kv_int("http.request.body.size", clamp(r.bytes_in)),
        kv_int("http.response.body.size", clamp(r.bytes_out)),
        kv_str("postern.request_id", &r.request_id),
        kv_str("postern.via", &r.via),
    ];
    if r.status >= 500 {
        a.push(kv_str("error.type", &r.status.to_string()));
    }
    let opt = |a: &mut Vec<KeyValue>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            a.push(kv_str(k, v));
        }
    };
    if let (Some(svc), Some(domain)) = (&r.service, &ctx.domain) {
        a.push(kv_str("server.address", &format!("{svc}.{domain}")));
    }
    if let Some(gateway) = &r.gateway {
        a.push(kv_str("postern.gateway", gateway));
    }
    opt(&mut a, "postern.user", &r.user);
    opt(&mut a, "postern.session", &r.session);
    opt(&mut a, "postern.service", &r.service);
    opt(&mut a, "postern.config", &r.config);
    if let Some(d) = r.decision {
        a.push(kv_str("postern.decision", d.as_str()));
    }
    opt(&mut a, "postern.reason", &r.reason);
    opt(&mut a, "postern.error", &r.error);
    if r.model.is_some() || r.usage.is_some() {
        opt(
            &mut a,
            "gen_ai.system",
            &r.config.clone().or(r.service.clone()),
        );
        if let Some(op) = operation(&r.path) {
            a.push(kv_str("gen_ai.operation.name", op));
        }
        opt(&mut a, "gen_ai.request.model", &r.model);
        opt(&mut a, "gen_ai.response.model", &r.model);
    }
    if let Some(u) = &r.usage {
        a.push(kv_int("gen_ai.usage.input_tokens", clamp(u.prompt_tokens)));
        a.push(kv_int(
            "gen_ai.usage.output_tokens",
            clamp(u.completion_tokens),
        ));
    }
    a
}

/// `gen_ai.operation.name` from an OpenAI-shaped path.
fn operation(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    if path.ends_with("/chat/completions") {
        Some("chat")
    } else if path.ends_with("/completions") {
        Some("text_completion")
    } else if path.ends_with("/embeddings") {
        Some("embeddings")
    } else {
        None
    }
}

fn start_nanos(r: &AccessRecord) -> u64 {
    chrono::DateTime::parse_from_rfc3339(&r.time)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or_else(now_nanos)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn str_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(str_value(value.into())),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
