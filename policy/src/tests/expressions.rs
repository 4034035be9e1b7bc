//! Seed expressions from the examples, custom functions and request facts.

use serde_json::json;

use super::{alice, bob, chat_body, compile, ctx_for, ctx_reading, m, not, robot};
use crate::Reads;

fn eval_match(expr: &str, ctx: &super::EvalContext) -> bool {
    compile(&m(expr)).evaluate(ctx)
}

#[test]
fn seed_expressions_against_sample_contexts() {
    let good = Some(chat_body("gpt-4o-mini", 3, json!(0.5)));
    let gpt4 = Some(chat_body("gpt-4-turbo", 5, json!(0.9)));
    let int_temp = Some(chat_body("gpt-3.5-turbo", 1, json!(1)));
    // (expression, user, body, expected)
    let cases = [
        (
            r#"ctx.user.spec.groups.hasAll("dev", "ops")"#,
            alice(),
            None,
            true,
        ),
        (
            r#"ctx.user.spec.groups.hasAll("dev", "ops")"#,
            bob(),
            None,
            false,
        ),
        (
            r#"ctx.user.spec.groups.hasAll("dev", "ops")"#,
            robot(),
            None,
            false,
        ),
        (
            "ctx.request.http.bodyMap.messages.size() < 4",
            alice(),
            good.clone(),
            true,
        ),
        (
            "ctx.request.http.bodyMap.messages.size() < 4",
            alice(),
            gpt4.clone(),
            false,
        ),
        (
            "ctx.request.http.bodyMap.messages.size() < 4",
            alice(),
            None,
            false,
        ),
        (
            r#"ctx.request.http.bodyMap.model in ["gpt-3.5-turbo", "gpt-4o-mini"]"#,
            alice(),
            good.clone(),
            true,
        ),
        (
            r#"ctx.request.http.bodyMap.model in ["gpt-3.5-turbo", "gpt-4o-mini"]"#,
            alice(),
            gpt4.clone(),
            false,
        ),
        (
            "ctx.request.http.bodyMap.temperature < 0.7",
            alice(),
            good.clone(),
            true,
        ),
        (
            "ctx.request.http.bodyMap.temperature < 0.7",
            alice(),
            gpt4.clone(),
            false,
        ),
        (
            "ctx.request.http.bodyMap.temperature < 0.7",
            alice(),
            int_temp.clone(),
            false,
        ),
        (
            r#"ctx.request.http.bodyMap.model.startsWith("gpt-4")"#,
            alice(),
            gpt4.clone(),
            true,
        ),
        (
            r#"ctx.request.http.bodyMap.model.startsWith("gpt-4")"#,
            alice(),
            int_temp.clone(),
            false,
        ),
        (r#""dev" in ctx.user.spec.groups"#, bob(), None, true),
        (r#""ops" in ctx.user.spec.groups"#, bob(), None, false),
        (r#""dev" in ctx.user.spec.groups"#, robot(), None, false),
        (
            r#"ctx.user.spec.groups.hasAny(["ops"])"#,
            alice(),
            None,
            true,
        ),
        (
            r#"ctx.user.spec.groups.hasAny(["ops"])"#,
            bob(),
            None,
            false,
        ),
        (
            r#"ctx.user.spec.groups.hasAny(["ops"])"#,
            robot(),
            None,
            false,
        ),
        (
            r#"ctx.request.http.bodyMap.model == "gpt-4o-mini""#,
            alice(),
            good.clone(),
            true,
        ),
        (
            r#"ctx.request.http.bodyMap.model == "deepseek-chat""#,
            alice(),
            good.clone(),
            false,
        ),
    ];
    for (expr, user, body, want) in cases {
        let ctx = ctx_for(user.clone(), body.clone());
        assert_eq!(
            eval_match(expr, &ctx),
            want,
            "{expr} for {user} with body {body:?}"
        );
    }
}

#[test]
fn has_all_and_has_any_accept_a_list_or_several_arguments() {
    let ctx = ctx_for(alice(), None);
    let cases = [
        (r#"ctx.user.spec.groups.hasAll("dev", "ops")"#, true),
        (r#"ctx.user.spec.groups.hasAll(["dev", "ops"])"#, true),
        (r#"ctx.user.spec.groups.hasAll("dev", "admin")"#, false),
        (r#"ctx.user.spec.groups.hasAll(["dev", "admin"])"#, false),
        (r#"ctx.user.spec.groups.hasAll("dev")"#, true),
        (r#"ctx.user.spec.groups.hasAll([])"#, true),
        (r#"ctx.user.spec.groups.hasAny("admin", "ops")"#, true),
        (r#"ctx.user.spec.groups.hasAny(["admin", "ops"])"#, true),
        (r#"ctx.user.spec.groups.hasAny("admin", "root")"#, false),
        (r#"ctx.user.spec.groups.hasAny(["admin"])"#, false),
        (r#"ctx.user.spec.groups.hasAny([])"#, false),
        (r#"hasAll(ctx.user.spec.groups, "dev", "ops")"#, true),
        (r#"hasAny(ctx.user.spec.groups, ["root"])"#, false),
        // A non-list receiver is an evaluation error, hence not matched.
        (r#"ctx.user.spec.type.hasAny(["HUMAN"])"#, false),
        // No argument at all is an error too.
        ("ctx.user.spec.groups.hasAll()", false),
    ];
    for (expr, want) in cases {
        assert_eq!(eval_match(expr, &ctx), want, "{expr}");
    }
}

#[test]
fn string_functions_and_request_facts() {
    let ctx = ctx_for(alice(), None);
    let cases = [
        (
            r#"ctx.user.spec.email.lowerAscii() == "alice@example.com""#,
            true,
        ),
        (
            r#"ctx.user.spec.email.lower() == "alice@example.com""#,
            true,
        ),
        (r#"ctx.user.spec.email == "alice@example.com""#, false),
        (r#"ctx.request.http.method == "POST""#, true),
        (r#"ctx.request.http.path.startsWith("/v1/")"#, true),
        (r#"ctx.request.http.host == "api.example.com""#, true),
        (r#"ctx.request.http.scheme == "https""#, true),
        (r#"ctx.request.http.headers["x-tag"] == "one, two""#, true),
        (
            r#"ctx.request.http.headers["content-type"] == "application/json""#,
            true,
        ),
        (r#"ctx.request.http.queryParams.a == "1""#, true),
        (r#"ctx.request.http.queryParams.b == "x y""#, true),
        ("ctx.request.http.size == 123", true),
        (r#"ctx.request.ip == "10.0.0.7""#, true),
        ("ctx.request.http.bodyMap.size() == 0", true),
        (r#"ctx.session.spec.type == "CLIENT""#, true),
        (
            r#"ctx.service.metadata.name == "my-api" && ctx.service.spec.port == 8080"#,
            true,
        ),
        (r#"ctx.groups.exists(g, g.spec.attrs.tier == "gold")"#, true),
        (r#"ctx.groups.exists(g, g.metadata.name == "ops")"#, false),
        ("has(ctx.user.spec.groups)", true),
        ("has(ctx.user.spec.nickname)", false),
    ];
    for (expr, want) in cases {
        assert_eq!(eval_match(expr, &ctx), want, "{expr}");
    }
}

#[test]
fn missing_fields_and_non_boolean_results_are_not_matched() {
    let ctx = ctx_for(robot(), None);
    let cases = [
        "ctx.user.spec.groups.size() > 0",
        "ctx.user.spec.nickname == \"x\"",
        "ctx.nothing.here",
        "ctx.request.http.bodyMap.model.startsWith(\"gpt\")",
        // Type error: string compared with int.
        "ctx.user.spec.type < 3",
        // Not a boolean.
        "ctx.user.spec.type",
        "1 + 1",
    ];
    for expr in cases {
        assert!(!eval_match(expr, &ctx), "{expr} should not match");
    }
    // The context itself is fine: defined, boolean expressions on it do match.
    assert!(eval_match("!has(ctx.user.spec.groups)", &ctx));
    assert!(eval_match(r#"ctx.user.spec.type == "WORKLOAD""#, &ctx));
}

#[test]
fn not_matches_only_on_false_and_errors_are_not_matched() {
    let with_groups = ctx_for(bob(), None);
    let without_groups = ctx_for(robot(), None);
    let c = compile(&not(r#""ops" in ctx.user.spec.groups"#));
    assert!(c.evaluate(&with_groups), "bob is not in ops: not matches");
    assert!(
        !c.evaluate(&ctx_for(alice(), None)),
        "alice is in ops: not does not match"
    );
    // Documented choice: an evaluation error inside `not` is "not matched", never a grant.
    assert!(!c.evaluate(&without_groups));
    // A non-boolean inside `not` is not matched either.
    assert!(!compile(&not("ctx.user.spec.type")).evaluate(&with_groups));
}

#[test]
fn reads_body_follows_the_ast() {
    let cases = [
        ("ctx.request.http.bodyMap.model == \"x\"", true),
        ("ctx.request.http[\"bodyMap\"].model == \"x\"", true),
        ("has(ctx.request.http.bodyMap.model)", true),
        ("ctx.request.http.exists(k, k == \"x\")", true),
        (
            "ctx.request.http.bodyMap.messages.exists(m, m.role == \"system\")",
            true,
        ),
        ("size(ctx) > 0", true),
        ("ctx.user.spec.groups.hasAll(\"dev\")", false),
        ("ctx.request.http.method == \"POST\"", false),
        (
            "ctx.request.http.headers[\"x-body-map\"] == \"bodyMapx\"",
            false,
        ),
        ("ctx.groups.exists(g, g.metadata.name == \"dev\")", false),
    ];
    for (expr, want) in cases {
        assert_eq!(compile(&m(expr)).reads_body(), want, "{expr}");
    }
}

#[test]
fn reads_names_the_headers_and_query_a_condition_can_see() {
    let cases = [
        (
            "ctx.request.http.headers[\"x-tag\"] == \"one\"",
            (false, true, false),
        ),
        (
            "\"x-tag\" in ctx.request.http.headers",
            (false, true, false),
        ),
        (
            "ctx.request.http.queryParams.a == \"1\"",
            (false, false, true),
        ),
        // Indexing `http` uses it as a whole value: conservatively, everything.
        (
            "ctx.request.http[\"queryParams\"].a == \"1\"",
            (true, true, true),
        ),
        ("ctx.request.http.method == \"POST\"", (false, false, false)),
        ("ctx.request.ip == \"10.0.0.7\"", (false, false, false)),
        ("size(ctx.request.http) > 0", (true, true, true)),
        ("ctx.request.exists(k, k == \"http\")", (true, true, true)),
        (
            "[ctx.request][0].http.headers.size() > 0",
            (true, true, true),
        ),
        (
            "ctx.user.spec.groups.exists(g, g == \"headers\")",
            (false, true, false),
        ),
    ];
    for (expr, (body, headers, query)) in cases {
        let want = Reads {
            body,
            headers,
            query,
        };
        assert_eq!(compile(&m(expr)).reads(), want, "{expr}");
    }
}

/// The lazy context (only what the condition reads) must decide every condition exactly
/// as the full one: a read the analysis missed would turn into a different answer here.
#[test]
fn a_context_built_for_what_is_read_decides_as_the_full_one() {
    let body = Some(chat_body("gpt-4o", 2, json!(0.2)));
    let exprs = [
        "ctx.request.http.headers[\"x-tag\"] == \"one, two\"",
        "has(ctx.request.http.headers.x_missing)",
        "ctx.request.http.queryParams.a == \"1\" && ctx.request.http.queryParams.b == \"x y\"",
        "ctx.request.http.bodyMap.model == \"gpt-4o\"",
        "size(ctx.request.http.bodyMap.messages) == 2",
        "size(ctx.request.http.headers) == 2",
        "size(ctx.request.http.queryParams) == 0",
        "ctx.request.http.exists(k, k == \"headers\")",
        "size(ctx.request.http) == 8",
        "ctx.request.http.method == \"POST\" && ctx.request.http.size == 123",
        "ctx.request.http.headers.exists(h, h == \"content-type\")",
    ];
    for expr in exprs {
        let c = compile(&m(expr));
        let full = c.evaluate(&ctx_for(alice(), body.clone()));
        let lazy = c.evaluate(&ctx_reading(alice(), body.clone(), c.reads()));
        assert_eq!(lazy, full, "{expr} (reads {:?})", c.reads());
    }
    // And the lazy context really leaves out what is not read.
    let method_only = compile(&m("size(ctx.request.http.headers) == 0"));
    assert!(method_only.evaluate(&ctx_reading(alice(), None, Reads::default())));
    assert!(!method_only.evaluate(&ctx_for(alice(), None)));
}
