//! What a policy decision costs on the hot path: building the request's context once and
//! deciding over a typical rule set (five rules, two reading `bodyMap`), in CEL and in Rego.
//! `cargo bench -p postern-policy`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use postern_common::resources::parse_documents;
use postern_policy::{Catalog, CelValue, EvalContext, RequestFacts};
use serde_json::json;

const CEL_RULES: &str = r#"
kind: Policy
metadata: {name: typical}
spec:
  rules:
    - name: deny-blocked-users
      effect: DENY
      priority: -2
      condition: {match: 'ctx.user.metadata.name in ["mallory", "eve"]'}
    - name: deny-gpt4-for-dev
      effect: DENY
      priority: -1
      condition:
        all:
          of:
            - match: '"dev" in ctx.user.spec.groups'
            - match: ctx.request.http.bodyMap.model.startsWith("gpt-4")
    - name: deny-hot-temperature
      effect: DENY
      condition: {match: ctx.request.http.bodyMap.temperature > 1.5}
    - name: allow-ops-posts
      effect: ALLOW
      condition: {match: 'ctx.user.spec.groups.hasAny(["ops"]) && ctx.request.http.method == "POST"'}
    - name: allow-path
      effect: ALLOW
      priority: 1
      condition: {match: ctx.request.http.path.startsWith("/v1/")}
"#;

const REGO_RULES: &str = r#"
kind: Policy
metadata: {name: typical}
spec:
  rules:
    - name: deny-blocked-users
      effect: DENY
      priority: -2
      condition:
        opa:
          inline: |
            package postern.condition
            import rego.v1
            match if input.ctx.user.metadata.name in {"mallory", "eve"}
    - name: deny-gpt4-for-dev
      effect: DENY
      priority: -1
      condition:
        opa:
          inline: |
            package postern.condition
            import rego.v1
            match if {
              "dev" in input.ctx.user.spec.groups
              startswith(input.ctx.request.http.bodyMap.model, "gpt-4")
            }
    - name: deny-hot-temperature
      effect: DENY
      condition:
        opa:
          inline: |
            package postern.condition
            import rego.v1
            match if input.ctx.request.http.bodyMap.temperature > 1.5
    - name: allow-ops-posts
      effect: ALLOW
      condition:
        opa:
          inline: |
            package postern.condition
            import rego.v1
            match if {
              "ops" in input.ctx.user.spec.groups
              input.ctx.request.http.method == "POST"
            }
    - name: allow-path
      effect: ALLOW
      priority: 1
      condition:
        opa:
          inline: |
            package postern.condition
            import rego.v1
            match if startswith(input.ctx.request.http.path, "/v1/")
"#;

const SERVICE_USER: &str = r#"
kind: Service
metadata: {name: ai}
spec:
  config: {upstream: {url: 'https://api.example.com'}}
  authorization: {policies: [typical]}
---
kind: User
metadata: {name: alice}
spec:
  groups: [dev, ops]
"#;

fn bench_rules(c: &mut Criterion, label: &str, policy_yaml: &str) {
    let text = format!("{policy_yaml}---{SERVICE_USER}");
    let docs = parse_documents("bench.yaml", &text).expect("bench resources parse");
    let resources: Vec<_> = docs.into_iter().map(|d| d.resource).collect();
    let (catalog, errors) = Catalog::build(&resources);
    assert!(errors.is_empty(), "{errors:?}");
    let user = CelValue::from_json(
        &resources
            .iter()
            .find(|r| r.name() == "alice")
            .unwrap()
            .to_json(),
    );
    let service = CelValue::from_json(
        &resources
            .iter()
            .find(|r| r.name() == "ai")
            .unwrap()
            .to_json(),
    );
    let session =
        CelValue::from_json(&json!({"metadata": {"name": "s"}, "spec": {"type": "CLIENTLESS"}}));
    let groups = CelValue::from_json(&json!([{"kind": "Group", "metadata": {"name": "dev"}}]));
    let body = json!({"model": "gpt-4o-mini", "temperature": 0.2,
                      "messages": [{"role": "user", "content": "hello"}]});
    let headers = HeaderMap::new();
    let rules = catalog.rule_set("alice", "ai");
    assert!(rules.reads_body());

    c.bench_function(
        &format!("{label}: context + decision (5 rules, 2 read bodyMap)"),
        |b| {
            b.iter(|| {
                let facts = RequestFacts {
                    method: "POST",
                    path: "/v1/chat/completions",
                    host: "ai.example.com",
                    scheme: "https",
                    headers: &headers,
                    query: None,
                    body: Some(&body),
                    size: 120,
                    client_ip: None,
                    now: None,
                };
                let ctx = EvalContext::new(&user, &session, &groups, &service, &facts);
                black_box(rules.decide(&ctx))
            })
        },
    );
    c.bench_function(&format!("{label}: rule set for (user, service)"), |b| {
        b.iter(|| black_box(catalog.rule_set("alice", "ai")))
    });
}

fn cel(c: &mut Criterion) {
    bench_rules(c, "cel", CEL_RULES);
}

fn rego(c: &mut Criterion) {
    bench_rules(c, "rego", REGO_RULES);
}

criterion_group!(benches, cel, rego);
criterion_main!(benches);
