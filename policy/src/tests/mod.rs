//! Unit tests of the policy module, with shared sample contexts.

mod compile_errors;
mod expressions;
mod functions;
mod opa;
mod rules;

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderValue};
use postern_common::resources::Condition;
use serde_json::{json, Value as Json};

use super::{CelValue, CompiledCondition, EvalContext, RequestFacts};

/// A user in groups `dev` and `ops`.
fn alice() -> Json {
    json!({
        "kind": "User",
        "metadata": {"name": "alice"},
        "spec": {"type": "HUMAN", "email": "Alice@Example.COM", "groups": ["dev", "ops"]}
    })
}

/// A user in group `dev` only.
fn bob() -> Json {
    json!({
        "kind": "User",
        "metadata": {"name": "bob"},
        "spec": {"type": "HUMAN", "groups": ["dev"]}
    })
}

/// A workload user without any `groups` field (lookups of it are missing fields).
fn robot() -> Json {
    json!({"kind": "User", "metadata": {"name": "robot"}, "spec": {"type": "WORKLOAD"}})
}

/// A chat completion request body.
fn chat_body(model: &str, messages: usize, temperature: Json) -> Json {
    let msgs: Vec<Json> = (0..messages)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    json!({"model": model, "messages": msgs, "temperature": temperature})
}

/// Builds a context for `user` with an optional JSON body and fixed request facts:
/// `POST https://api.example.com/v1/chat?a=1&b=x%20y&a=2`, two `x-tag` headers, IP 10.0.0.7.
fn ctx_for(user: Json, body: Option<Json>) -> EvalContext {
    ctx_reading(user, body, crate::Reads::ALL)
}

/// [`ctx_for`], building only what `reads` names of `ctx.request.http`.
fn ctx_reading(user: Json, body: Option<Json>, reads: crate::Reads) -> EvalContext {
    let mut headers = HeaderMap::new();
    headers.append("X-Tag", HeaderValue::from_static("one"));
    headers.append("x-tag", HeaderValue::from_static("two"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let facts = RequestFacts {
        method: "POST",
        path: "/v1/chat",
        host: "api.example.com",
        scheme: "https",
        headers: &headers,
        query: Some("a=1&b=x%20y&a=2"),
        body: body.as_ref(),
        size: 123,
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
        now: None,
    };
    let groups = CelValue::from_json(&json!([
        {"kind": "Group", "metadata": {"name": "dev"}, "spec": {"attrs": {"tier": "gold"}}}
    ]));
    let session =
        CelValue::from_json(&json!({"metadata": {"name": "s1"}, "spec": {"type": "CLIENT"}}));
    let service =
        CelValue::from_json(&json!({"metadata": {"name": "my-api"}, "spec": {"port": 8080}}));
    EvalContext::reading(
        &CelValue::from_json(&user),
        &session,
        &groups,
        &service,
        &facts,
        reads,
    )
}

/// A `match:` condition.
fn m(expr: &str) -> Condition {
    Condition {
        match_: Some(expr.to_owned()),
        ..Condition::default()
    }
}

/// A `not:` condition.
fn not(expr: &str) -> Condition {
    Condition {
        not: Some(expr.to_owned()),
        ..Condition::default()
    }
}

/// Compiles a condition at path `spec.rules[0].condition`, panicking with the errors.
fn compile(c: &Condition) -> CompiledCondition {
    CompiledCondition::compile(c, "spec.rules[0].condition")
        .unwrap_or_else(|e| panic!("compile failed: {e:?}"))
}
