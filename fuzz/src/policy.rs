//! Policy conditions as an administrator writes them: CEL (`match`, `not`) and Rego
//! (`opa.inline`) compiled under the size limits and evaluated against a request under the
//! run-time budgets.
//!
//! Properties: compiling never panics, ends within seconds, and an error names the
//! condition's field; an evaluation ends within its budget (CEL loop cost, Rego wall clock) with a slack for
//! instrumented code; a CEL decision is the same when repeated.

use http::{HeaderMap, HeaderValue};
use postern_common::resources::{Condition, OpaCondition};
use postern_policy::{CelValue, CompiledCondition, EvalContext, RequestFacts, EVAL_TIME_LIMIT};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const FIELD: &str = "spec.rules[0].condition";
/// An evaluation's ceiling here: far above the budgets, far below libFuzzer's timeout.
const SLACK: Duration = Duration::from_secs(2);

fn context() -> EvalContext {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.append("x-tag", HeaderValue::from_static("one"));
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                      "temperature": 0.2});
    let facts = RequestFacts {
        method: "POST",
        path: "/v1/chat/completions",
        host: "api.example.com",
        scheme: "https",
        headers: &headers,
        query: Some("a=1&b=x%20y"),
        body: Some(&body),
        size: 123,
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
        now: Some(chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")),
    };
    let user = CelValue::from_json(&json!({"metadata": {"name": "alice"},
        "spec": {"type": "HUMAN", "groups": ["dev"], "attrs": {"tier": "gold"}}}));
    let groups = CelValue::from_json(&json!([{"metadata": {"name": "dev"}, "spec": {}}]));
    let session = CelValue::from_json(&json!({"metadata": {"name": "s1"}}));
    let service =
        CelValue::from_json(&json!({"metadata": {"name": "api"}, "spec": {"port": 8080}}));
    EvalContext::new(&user, &session, &groups, &service, &facts)
}

/// The CEL parser panics on some malformed input; `compile` runs it on a thread named
/// `cel-parse` and turns the panic into a compile error. libFuzzer's panic hook aborts on
/// any panic, so that thread's panics are passed over here, as the gateway passes them.
fn tolerate_parser_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some("cel-parse") {
                fuzzer_hook(info);
            }
        }));
    });
}

pub fn run(data: &[u8]) {
    tolerate_parser_panics();
    let Some((&selector, source)) = data.split_first() else {
        return;
    };
    let source = String::from_utf8_lossy(source).into_owned();
    let condition = match selector % 3 {
        0 => Condition {
            match_: Some(source),
            ..Condition::default()
        },
        1 => Condition {
            not: Some(source),
            ..Condition::default()
        },
        _ => Condition {
            opa: Some(OpaCondition { inline: source }),
            ..Condition::default()
        },
    };
    let started = Instant::now();
    let compiled = CompiledCondition::compile(&condition, FIELD);
    let took = started.elapsed();
    assert!(took <= SLACK, "compiling took {took:?}");
    let compiled = match compiled {
        Ok(c) => c,
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(e.field.starts_with(FIELD), "{e}");
            }
            return;
        }
    };
    let ctx = context();
    let started = Instant::now();
    let first = compiled.evaluate(&ctx);
    let took = started.elapsed();
    let budget = if condition.opa.is_some() {
        EVAL_TIME_LIMIT + SLACK
    } else {
        SLACK
    };
    assert!(took <= budget, "evaluation took {took:?}");
    if condition.opa.is_none() {
        assert_eq!(compiled.evaluate(&ctx), first, "CEL decision changed");
    }
}
