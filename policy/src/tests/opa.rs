//! OPA/Rego conditions: compile errors, decisions, equivalence with CEL, body detection.

use std::sync::Arc;

use http::HeaderMap;
use postern_common::resources::{Condition, Effect, OpaCondition, PolicySpec, Rule};
use serde_json::{json, Value as Json};

use super::{alice, bob, chat_body, compile, ctx_for, m, robot};
use crate::{
    CelValue, CompiledCondition, CompiledPolicy, EvalContext, Reason, RequestFacts, RuleSet,
    MAX_MODULE_BYTES,
};

/// The module of `/work/shared/examples/identities.yaml`.
const IDENTITIES: &str = r#"package postern.condition
import rego.v1
match if {
  input.ctx.user.spec.type == "HUMAN"
  input.ctx.request.http.method in {"GET", "POST"}
}
"#;

fn opa(module: &str) -> Condition {
    Condition {
        opa: Some(OpaCondition {
            inline: module.to_owned(),
        }),
        ..Condition::default()
    }
}

/// A module `package <package>` with `import rego.v1` and the given body lines.
fn module(package: &str, body: &str) -> String {
    format!("package {package}\nimport rego.v1\n{body}\n")
}

/// A context like [`ctx_for`] but with the given method and no query, headers or IP.
fn ctx_with(user: Json, method: &str, body: Option<Json>) -> EvalContext {
    let headers = HeaderMap::new();
    let facts = RequestFacts {
        method,
        path: "/v1/chat",
        host: "api.example.com",
        scheme: "https",
        headers: &headers,
        query: None,
        body: body.as_ref(),
        size: 10,
        client_ip: None,
        now: None,
    };
    EvalContext::new(
        &CelValue::from_json(&user),
        &CelValue::empty_map(),
        &CelValue::empty_list(),
        &CelValue::empty_map(),
        &facts,
    )
}

fn eval(module: &str, ctx: &EvalContext) -> bool {
    compile(&opa(module)).evaluate(ctx)
}

#[test]
fn identities_module_matches_a_human_post_and_not_a_workload() {
    assert!(eval(IDENTITIES, &ctx_for(alice(), None)));
    assert!(eval(IDENTITIES, &ctx_with(bob(), "GET", None)));
    assert!(!eval(IDENTITIES, &ctx_for(robot(), None)));
    assert!(!eval(IDENTITIES, &ctx_with(alice(), "DELETE", None)));
}

#[test]
fn package_name_is_read_from_the_module() {
    let body = r#"match if input.ctx.user.spec.type == "HUMAN""#;
    for package in [
        "octelium.condition",
        "postern.condition",
        "acme.rules.v2",
        "custom",
    ] {
        let src = module(package, body);
        assert!(eval(&src, &ctx_for(alice(), None)), "{package}");
        assert!(!eval(&src, &ctx_for(robot(), None)), "{package}");
    }
}

#[test]
fn undefined_match_is_not_matched() {
    let ctx = ctx_for(alice(), None);
    for body in [
        r#"match if input.ctx.user.spec.type == "NOBODY""#,
        "match if input.ctx.no.such.field",
        "match := input.ctx.user.spec.missing",
        // A partial set rule named `match` that stays empty is still not `true`.
        "match if { false }",
    ] {
        assert!(!eval(&module("postern.condition", body), &ctx), "{body}");
    }
}

#[test]
fn false_and_non_boolean_results_are_not_matched() {
    let ctx = ctx_for(alice(), None);
    for body in [
        "match := false",
        r#"match := "yes""#,
        "match := 1",
        r#"match := {"a": true}"#,
        "match := [true]",
        "match := input.ctx.user",
    ] {
        assert!(!eval(&module("postern.condition", body), &ctx), "{body}");
    }
    assert!(eval(&module("postern.condition", "match := true"), &ctx));
}

#[test]
fn evaluation_error_is_not_matched() {
    // Conflicting values for a complete rule are an evaluation error in Rego.
    let src = module(
        "postern.condition",
        "match := true if input.ctx.user.spec.type == \"HUMAN\"\nmatch := false if input.ctx.request.http.method == \"POST\"",
    );
    assert!(!eval(&src, &ctx_for(alice(), None)));
}

#[test]
fn parse_error_reports_field_line_and_column() {
    let src = "package postern.condition\nimport rego.v1\nmatch if {\n  input.ctx.user.spec.type == \n}\n";
    let errs =
        CompiledCondition::compile(&opa(src), "spec.rules[2].condition.all.of[0]").unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0].field,
        "spec.rules[2].condition.all.of[0].opa.inline"
    );
    assert!(
        errs[0].message.starts_with("invalid Rego module at line "),
        "{errs:?}"
    );
    assert!(errs[0].message.contains(" column "), "{errs:?}");

    // A precise position: the stray `)` is at line 3, column 10.
    let src = "package p\nimport rego.v1\nmatch if )\n";
    let errs = CompiledCondition::compile(&opa(src), "c").unwrap_err();
    assert_eq!(errs[0].field, "c.opa.inline");
    assert!(
        errs[0]
            .message
            .starts_with("invalid Rego module at line 3 column 10: "),
        "{errs:?}"
    );
    assert!(
        errs[0]
            .to_string()
            .starts_with("c.opa.inline: invalid Rego module"),
        "{errs:?}"
    );
}

#[test]
fn module_errors_at_compile_time() {
    let cases = [
        (
            module("postern.condition", "allow if true"),
            "Rego module has no `match` rule (the decision is data.postern.condition.match)",
        ),
        (
            "import rego.v1\nmatch if true\n".to_owned(),
            "invalid Rego module",
        ),
        (
            module("postern.condition", "match if x == 1"),
            "invalid Rego module",
        ),
    ];
    for (src, want) in cases {
        let errs = CompiledCondition::compile(&opa(&src), "c").unwrap_err();
        assert_eq!(errs.len(), 1, "{src}: {errs:?}");
        assert_eq!(errs[0].field, "c.opa.inline", "{src}");
        assert!(errs[0].message.starts_with(want), "{src}: {errs:?}");
    }
}

#[test]
fn oversized_module_is_rejected() {
    let padding = "# padding\n".repeat(MAX_MODULE_BYTES / 10 + 1);
    let src = module("postern.condition", &format!("{padding}match if true"));
    assert!(src.len() > MAX_MODULE_BYTES);
    let errs = CompiledCondition::compile(&opa(&src), "c").unwrap_err();
    assert_eq!(errs[0].field, "c.opa.inline");
    assert!(errs[0].message.contains("more than the limit"), "{errs:?}");
    // Just under the limit compiles.
    let src = module("postern.condition", "match if true");
    assert!(CompiledCondition::compile(&opa(&src), "c").is_ok());
}

#[test]
fn runaway_policy_is_stopped_by_the_time_limit() {
    let src = module(
        "postern.condition",
        "match if {\n  some i in numbers.range(1, 20000)\n  some j in numbers.range(1, 20000)\n  i + j < 0\n}",
    );
    let cond = compile(&opa(&src));
    let started = std::time::Instant::now();
    assert!(!cond.evaluate(&ctx_for(alice(), None)));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Would be true given enough time (9 million iterations): the limit makes it false.
    let src = module(
        "postern.condition",
        "match if count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000)]) > 0",
    );
    let cond = compile(&opa(&src));
    let started = std::time::Instant::now();
    assert!(!cond.evaluate(&ctx_for(alice(), None)));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A small version of the same module completes and matches.
    let src = src.replace("3000", "30");
    assert!(compile(&opa(&src)).evaluate(&ctx_for(alice(), None)));
}

/// The same condition in CEL and Rego must decide alike over a table of contexts.
#[test]
fn rego_and_cel_agree() {
    let pairs = [
        (
            r#""dev" in ctx.user.spec.groups && ctx.request.http.method in ["GET", "POST"]"#,
            "match if {\n  \"dev\" in input.ctx.user.spec.groups\n  input.ctx.request.http.method in {\"GET\", \"POST\"}\n}",
        ),
        (
            r#"ctx.user.spec.groups.hasAll("dev", "ops")"#,
            "match if {\n  groups := input.ctx.user.spec.groups\n  every g in [\"dev\", \"ops\"] { g in groups }\n}",
        ),
        (
            r#"ctx.request.http.bodyMap.model.startsWith("gpt-4")"#,
            "match if startswith(input.ctx.request.http.bodyMap.model, \"gpt-4\")",
        ),
        (
            "ctx.request.http.bodyMap.messages.size() < 4",
            "match if count(input.ctx.request.http.bodyMap.messages) < 4",
        ),
        (
            "ctx.request.http.bodyMap.temperature < 0.7",
            "match if input.ctx.request.http.bodyMap.temperature < 0.7",
        ),
        (
            r#"ctx.user.spec.type == "HUMAN" || ctx.request.http.method == "GET""#,
            "match if input.ctx.user.spec.type == \"HUMAN\"\nmatch if input.ctx.request.http.method == \"GET\"",
        ),
        (
            r#"ctx.request.http.path.startsWith("/v1/") && ctx.request.http.size > 5"#,
            "match if {\n  startswith(input.ctx.request.http.path, \"/v1/\")\n  input.ctx.request.http.size > 5\n}",
        ),
    ];
    let users = [alice(), bob(), robot()];
    let methods = ["GET", "POST", "DELETE"];
    let bodies = [
        None,
        Some(chat_body("gpt-4o-mini", 3, json!(0.5))),
        Some(chat_body("gpt-4-turbo", 5, json!(0.9))),
        Some(chat_body("gpt-3.5-turbo", 1, json!(0.1))),
    ];
    let mut matched = 0;
    let mut total = 0;
    for (cel, rego) in pairs {
        let cel_cond = compile(&m(cel));
        let rego_cond = compile(&opa(&module("postern.condition", rego)));
        assert_eq!(cel_cond.reads_body(), rego_cond.reads_body(), "{cel}");
        for user in &users {
            for method in methods {
                for body in &bodies {
                    let ctx = ctx_with(user.clone(), method, body.clone());
                    let want = cel_cond.evaluate(&ctx);
                    assert_eq!(
                        rego_cond.evaluate(&ctx),
                        want,
                        "{cel} vs {rego}: user {} {method} body {body:?}",
                        user["metadata"]["name"]
                    );
                    matched += usize::from(want);
                    total += 1;
                }
            }
        }
    }
    // The table exercises both outcomes.
    assert!(matched > 0 && matched < total, "{matched}/{total}");
}

#[test]
fn rego_sees_the_same_request_facts_as_cel() {
    // Headers, query parameters, IP, service, session and groups from `ctx_for`.
    let ctx = ctx_for(alice(), Some(chat_body("gpt-4o-mini", 2, json!(0.5))));
    let src = module(
        "postern.condition",
        r#"match if {
  input.ctx.request.http.headers["x-tag"] == "one, two"
  input.ctx.request.http.queryParams.a == "1"
  input.ctx.request.http.queryParams.b == "x y"
  input.ctx.request.ip == "10.0.0.7"
  input.ctx.request.http.host == "api.example.com"
  input.ctx.request.http.scheme == "https"
  input.ctx.request.http.size == 123
  input.ctx.service.spec.port == 8080
  input.ctx.session.spec.type == "CLIENT"
  input.ctx.groups[0].spec.attrs.tier == "gold"
  input.ctx.request.http.bodyMap.temperature == 0.5
  input.attrs == {}
}"#,
    );
    assert!(eval(&src, &ctx));
    let json = ctx.ctx_json();
    assert_eq!(json["user"], alice());
    assert_eq!(json["request"]["http"]["bodyMap"]["model"], "gpt-4o-mini");
    assert_eq!(json["request"]["http"]["method"], "POST");
}

#[test]
fn policy_attrs_are_input_attrs() {
    let spec = PolicySpec {
        rules: vec![Rule {
            name: Some("tier".into()),
            effect: Effect::Allow,
            priority: 0,
            condition: opa(&module(
                "postern.condition",
                "match if input.ctx.user.spec.type in input.attrs.types",
            )),
        }],
        attrs: Some(json!({"types": ["HUMAN"]})),
        ..PolicySpec::default()
    };
    let policy = CompiledPolicy::compile("p", &spec, "spec").unwrap();
    let set = RuleSet::from_policies([&policy]);
    assert_eq!(set.decide(&ctx_for(alice(), None)).effect, Effect::Allow);
    assert_eq!(set.decide(&ctx_for(robot(), None)).effect, Effect::Deny);
    // Without a policy, attrs is `{}`.
    let alone = compile(&spec.rules[0].condition);
    assert!(!alone.evaluate(&ctx_for(alice(), None)));
}

#[test]
fn rego_and_cel_rules_in_one_rule_set() {
    let spec = PolicySpec {
        rules: vec![
            Rule {
                name: Some("deny-gpt4".into()),
                effect: Effect::Deny,
                priority: -1,
                condition: m(r#"ctx.request.http.bodyMap.model.startsWith("gpt-4")"#),
            },
            Rule {
                name: Some("opa-humans".into()),
                effect: Effect::Allow,
                priority: 0,
                condition: opa(IDENTITIES),
            },
        ],
        ..PolicySpec::default()
    };
    let policy = CompiledPolicy::compile("identities", &spec, "spec").unwrap();
    assert!(policy.reads_body());
    let set = RuleSet::from_policies([&policy]);
    let allowed = set.decide(&ctx_for(alice(), Some(chat_body("o1", 1, json!(0)))));
    assert_eq!(allowed.effect, Effect::Allow);
    assert_eq!(
        allowed.reason,
        Reason::Rule {
            policy: "identities".into(),
            rule: "opa-humans".into(),
            priority: 0
        }
    );
    let gpt4 = set.decide(&ctx_for(alice(), Some(chat_body("gpt-4", 1, json!(0)))));
    assert_eq!(gpt4.effect, Effect::Deny);
    assert_eq!(set.decide(&ctx_for(robot(), None)).reason, Reason::NoMatch);
}

#[test]
fn reads_body_is_conservative() {
    let reads = [
        "match if input.ctx.request.http.bodyMap.model == \"x\"",
        "match if input.ctx.request.http[\"bodyMap\"].model == \"x\"",
        "match if { x := input.ctx; x.user.spec.type == \"HUMAN\" }",
        "match if { r := input.ctx.request; r.ip == \"1.2.3.4\" }",
        "match if { h := input.ctx.request.http; h.method == \"GET\" }",
        "match if { some k, _ in input.ctx.request.http[k] }",
        "match if { walk(input, [_, _]) }",
        "match if { h := input[\"ctx\"][\"request\"].http; h.method == \"GET\" }",
        "# mentions bodyMap in a comment\nmatch if true",
    ];
    for body in reads {
        let c = compile(&opa(&module("postern.condition", body)));
        assert!(c.reads_body(), "{body}");
    }
    let does_not = [
        IDENTITIES.to_owned(),
        module(
            "postern.condition",
            "match if input.ctx.user.spec.type == \"HUMAN\"",
        ),
        module(
            "postern.condition",
            "match if { input.ctx.request.http.headers[\"x\"] == \"y\"; input.attrs.a == 1 }",
        ),
        module(
            "postern.condition",
            "match if { my_input := 1; my_input == 1 }",
        ),
        module(
            "postern.condition",
            "match if input.ctx.request.ip == \"1.2.3.4\"",
        ),
    ];
    for src in does_not {
        assert!(!compile(&opa(&src)).reads_body(), "{src}");
    }
}

#[test]
fn compiled_rego_condition_is_send_and_sync_and_shareable() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let cond = Arc::new(compile(&opa(IDENTITIES)));
    assert_send_sync(&cond);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let cond = cond.clone();
            std::thread::spawn(move || {
                let user = if i % 2 == 0 { alice() } else { robot() };
                (i, cond.evaluate(&ctx_for(user, None)))
            })
        })
        .collect();
    for h in handles {
        let (i, matched) = h.join().unwrap();
        assert_eq!(matched, i % 2 == 0);
    }
}

#[test]
fn ctx_json_is_lazy_and_cached() {
    let ctx = ctx_with(bob(), "GET", None);
    let first: *const Json = ctx.ctx_json();
    let second: *const Json = ctx.ctx_json();
    assert_eq!(first, second);
    assert_eq!(ctx.ctx_json()["request"]["http"]["bodyMap"], json!({}));
    assert_eq!(ctx.ctx_json()["session"], json!({}));
    assert_eq!(ctx.ctx_json()["groups"], json!([]));
}

#[test]
fn deeply_nested_brackets_are_refused_before_parsing() {
    // Found by `scripts/fuzz policy`: regorus' parser takes time exponential in the depth of
    // unclosed `[` and `{` (a 127-byte module took 8 s; each further bracket doubles the time).
    let module =
        |open: &str| format!("package p\nimport rego.v1\nmatch if p.im{open}Zhes('^/a')\n");
    let started = std::time::Instant::now();
    let errs = CompiledCondition::compile(&opa(&module(&"[".repeat(22))), "c").unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(errs[0].field, "c.opa.inline");
    assert!(
        errs[0].message.contains("nests brackets 23 deep"),
        "{errs:?}"
    );
    let errs = CompiledCondition::compile(&opa(&module(&"[{(".repeat(6))), "c").unwrap_err();
    assert!(errs[0].message.contains("over the limit of 16"), "{errs:?}");
    // Brackets in strings, raw strings and comments do not count.
    let quiet = format!(
        "package p\nimport rego.v1\n# {b}\nmatch if {{\n  x := \"{b}\"\n  y := `{b}`\n  x != y\n}}\n",
        b = "[".repeat(40)
    );
    assert!(CompiledCondition::compile(&opa(&quiet), "c").is_ok());
}
