use super::*;
use crate::telemetry::usage::Usage;
use postern_common::resources::Effect;

fn ctx() -> EncodeContext {
    EncodeContext {
        service_name: "posternd-test".into(),
        domain: Some("example.test".into()),
    }
}

fn completion() -> AccessRecord {
    let mut r = AccessRecord::new("req-1", "POST", "/v1/chat/completions");
    r.time = "2026-01-02T03:04:05.678Z".into();
    r.user = Some("alice".into());
    r.gateway = Some("gw-a".into());
    r.session = Some("sess-1".into());
    r.service = Some("total-ai".into());
    r.config = Some("openai".into());
    r.decision = Some(Effect::Allow);
    r.reason = Some("policy total-ai/inline-0 rule rule-0 priority 0".into());
    r.status = 200;
    r.bytes_in = 120;
    r.bytes_out = 456;
    r.latency_ms = 12.5;
    r.model = Some("gpt-4o-mini".into());
    r.usage = Some(Usage {
        prompt_tokens: 11,
        completion_tokens: 7,
        total_tokens: 18,
    });
    r
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn s(attrs: &[KeyValue], key: &str) -> String {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(v)) => v.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn i(attrs: &[KeyValue], key: &str) -> i64 {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn logs_round_trip_through_protobuf() {
    let item = Item::new(completion());
    let bytes = logs_body(&ctx(), std::slice::from_ref(&item));
    let req = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
    let [rl] = req.resource_logs.as_slice() else {
        panic!("one resource")
    };
    let res = rl.resource.as_ref().unwrap();
    assert_eq!(s(&res.attributes, "service.name"), "posternd-test");
    let [sl] = rl.scope_logs.as_slice() else {
        panic!("one scope")
    };
    assert_eq!(sl.scope.as_ref().unwrap().name, "postern-gateway");
    let [log] = sl.log_records.as_slice() else {
        panic!("one log")
    };
    assert_eq!(log.severity_number, SeverityNumber::Info as i32);
    assert_eq!(log.time_unix_nano, 1_767_323_045_678_000_000);
    assert_eq!(log.trace_id, item.trace_id.to_vec());
    assert_eq!(log.span_id, item.span_id.to_vec());
    let Some(any_value::Value::StringValue(body)) = log.body.as_ref().unwrap().value.as_ref()
    else {
        panic!("string body")
    };
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["requestId"], "req-1");
    assert_eq!(json["usage"]["total_tokens"], 18);

    let a = &log.attributes;
    assert_eq!(s(a, "http.request.method"), "POST");
    assert_eq!(i(a, "http.response.status_code"), 200);
    assert_eq!(s(a, "url.path"), "/v1/chat/completions");
    assert_eq!(s(a, "server.address"), "total-ai.example.test");
    assert_eq!(s(a, "postern.user"), "alice");
    assert_eq!(s(a, "postern.gateway"), "gw-a");
    assert_eq!(s(a, "postern.session"), "sess-1");
    assert_eq!(s(a, "postern.service"), "total-ai");
    assert_eq!(s(a, "postern.config"), "openai");
    assert_eq!(s(a, "postern.decision"), "ALLOW");
    assert!(s(a, "postern.reason").starts_with("policy total-ai/"));
    assert_eq!(s(a, "gen_ai.system"), "openai");
    assert_eq!(s(a, "gen_ai.operation.name"), "chat");
    assert_eq!(s(a, "gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(s(a, "gen_ai.response.model"), "gpt-4o-mini");
    assert_eq!(i(a, "gen_ai.usage.input_tokens"), 11);
    assert_eq!(i(a, "gen_ai.usage.output_tokens"), 7);
    assert_eq!(i(a, "http.response.body.size"), 456);
    assert!(attr(a, "error.type").is_none());
}

#[test]
fn spans_round_trip_through_protobuf() {
    let item = Item::new(completion());
    let bytes = traces_body(&ctx(), std::slice::from_ref(&item));
    let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    let rs = &req.resource_spans[0];
    assert_eq!(
        s(&rs.resource.as_ref().unwrap().attributes, "service.name"),
        "posternd-test"
    );
    let span = &rs.scope_spans[0].spans[0];
    assert_eq!(span.name, "POST total-ai");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.span_id.len(), 8);
    assert_eq!(span.start_time_unix_nano, 1_767_323_045_678_000_000);
    assert_eq!(
        span.end_time_unix_nano - span.start_time_unix_nano,
        12_500_000
    );
    assert!(span.status.is_none(), "2xx leaves the status unset");
    assert_eq!(i(&span.attributes, "gen_ai.usage.input_tokens"), 11);
    assert_eq!(s(&span.attributes, "postern.user"), "alice");
}

#[test]
fn server_errors_mark_span_and_log() {
    let mut r = AccessRecord::new("req-2", "GET", "/models");
    r.service = Some("gemini".into());
    r.status = 502;
    r.error = Some("upstream refused the connection".into());
    let item = Item::new(r);
    let span = &traces_request(&ctx(), std::slice::from_ref(&item)).resource_spans[0].scope_spans
        [0]
    .spans[0];
    let st = span.status.as_ref().unwrap();
    assert_eq!(st.code, StatusCode::Error as i32);
    assert_eq!(st.message, "upstream refused the connection");
    assert_eq!(s(&span.attributes, "error.type"), "502");
    assert!(attr(&span.attributes, "gen_ai.system").is_none());
    assert!(attr(&span.attributes, "postern.user").is_none());
    let logs = logs_request(&ctx(), std::slice::from_ref(&item));
    let log = &logs.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(log.severity_number, SeverityNumber::Error as i32);
    assert_eq!(log.severity_text, "ERROR");
}

#[test]
fn denials_are_warnings_and_ids_differ() {
    let mut r = AccessRecord::new("req-3", "POST", "/v1/chat/completions");
    r.status = 403;
    r.decision = Some(Effect::Deny);
    let a = Item::new(r.clone());
    let b = Item::new(r);
    assert_ne!(a.trace_id, b.trace_id);
    assert_ne!(a.trace_id, [0; 16]);
    let logs = logs_request(&ctx(), &[a, b]);
    let recs = &logs.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].severity_number, SeverityNumber::Warn as i32);
    assert_eq!(s(&recs[0].attributes, "postern.decision"), "DENY");
}

#[test]
fn operation_names_follow_paths() {
    assert_eq!(operation("/v1/chat/completions"), Some("chat"));
    assert_eq!(operation("/v1/completions?x=1"), Some("text_completion"));
    assert_eq!(operation("/v1beta/openai/embeddings"), Some("embeddings"));
    assert_eq!(operation("/v1/models"), None);
}

#[test]
fn a_continued_trace_keeps_its_id_and_names_the_callers_span_as_parent() {
    use crate::telemetry::trace_context::TraceContext;
    let mut r = completion();
    r.trace = Some(TraceContext {
        trace_id: [7; 16],
        parent_id: [8; 8],
        span_id: [9; 8],
        flags: 1,
        state: Some("congo=t61rcWkgMzE".into()),
    });
    let item = Item::new(r);
    assert_eq!((item.trace_id, item.span_id), ([7; 16], [9; 8]));
    let req = traces_request(&ctx(), std::slice::from_ref(&item));
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.trace_id, [7; 16]);
    assert_eq!(span.span_id, [9; 8]);
    assert_eq!(span.parent_span_id, [8; 8]);
    assert_eq!(span.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(span.flags, 0x301, "sampled, parent known to be remote");
    let logs = logs_request(&ctx(), std::slice::from_ref(&item));
    let log = &logs.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(
        (log.trace_id.as_slice(), log.span_id.as_slice()),
        (&[7u8; 16][..], &[9u8; 8][..])
    );
    assert_eq!(log.flags, 1);

    let root = traces_request(&ctx(), &[Item::new(completion())]);
    let span = &root.resource_spans[0].scope_spans[0].spans[0];
    assert!(span.parent_span_id.is_empty() && span.trace_state.is_empty());
}
