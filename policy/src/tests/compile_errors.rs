//! Compile errors: field paths, CEL positions, structural checks.

use postern_common::resources::{Condition, ConditionList, Effect, OpaCondition, PolicySpec, Rule};

use super::{m, not};
use crate::{CompileError, CompiledCondition, CompiledPolicy};

fn all(of: Vec<Condition>) -> Condition {
    Condition {
        all: Some(ConditionList { of }),
        ..Condition::default()
    }
}

#[test]
fn bad_expression_reports_field_path_and_position() {
    let c = all(vec![
        m(r#""dev" in ctx.user.spec.groups"#),
        m("ctx.user.spec.groups.hasAll("),
    ]);
    let errs = CompiledCondition::compile(&c, "spec.rules[0].condition").unwrap_err();
    assert!(!errs.is_empty());
    for e in &errs {
        assert_eq!(e.field, "spec.rules[0].condition.all.of[1].match", "{e}");
        assert!(e.message.contains("at line 1 column "), "{e}");
    }
    // The position points past the open parenthesis (end of input at column 29).
    assert!(
        errs.iter().any(|e| e.message.contains("line 1 column 29")),
        "{errs:?}"
    );
    let shown = errs[0].to_string();
    assert!(
        shown.starts_with("spec.rules[0].condition.all.of[1].match: "),
        "{shown}"
    );
}

#[test]
fn every_error_of_a_policy_is_collected() {
    let spec = PolicySpec {
        rules: vec![
            Rule {
                name: Some("ok".into()),
                effect: Effect::Allow,
                priority: 0,
                condition: m("true"),
            },
            Rule {
                name: None,
                effect: Effect::Deny,
                priority: 0,
                condition: not("ctx.user.spec.groups.hasAll("),
            },
            Rule {
                name: None,
                effect: Effect::Allow,
                priority: 0,
                condition: all(vec![m("1 +"), m("ctx.x.isAdmin()")]),
            },
        ],
        ..PolicySpec::default()
    };
    let prefix = "spec.authorization.inlinePolicies[0].spec";
    let errs = CompiledPolicy::compile("inline", &spec, prefix).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    let want = [
        format!("{prefix}.rules[1].condition.not"),
        format!("{prefix}.rules[2].condition.all.of[0].match"),
        format!("{prefix}.rules[2].condition.all.of[1].match"),
    ];
    for w in &want {
        assert!(fields.contains(&w.as_str()), "missing {w} in {fields:?}");
    }
    assert!(!fields.iter().any(|f| f.contains("rules[0]")), "{fields:?}");
    assert!(
        errs.iter()
            .any(|e| e.message == "unknown function 'isAdmin'"),
        "{errs:?}"
    );
}

#[test]
fn structural_errors() {
    let two = Condition {
        match_: Some("true".into()),
        not: Some("false".into()),
        ..Condition::default()
    };
    let cases: Vec<(Condition, CompileError)> = vec![
        (
            Condition::default(),
            CompileError {
                field: "c".into(),
                message: "no condition set: exactly one of match, matchAny, all, any, none, not, opa is required".into(),
            },
        ),
        (
            two,
            CompileError {
                field: "c".into(),
                message: "exactly one of match, matchAny, all, any, none, not, opa may be set, found match, not".into(),
            },
        ),
        (
            all(vec![]),
            CompileError {
                field: "c.all.of".into(),
                message: "must contain at least one condition".into(),
            },
        ),
        (
            Condition {
                match_any: Some(false),
                ..Condition::default()
            },
            CompileError {
                field: "c.matchAny".into(),
                message: "matchAny must be true when set".into(),
            },
        ),
        (
            Condition {
                opa: Some(OpaCondition {
                    inline: "package x".into(),
                }),
                ..Condition::default()
            },
            CompileError {
                field: "c.opa.inline".into(),
                message: "Rego module has no `match` rule (the decision is data.x.match)".into(),
            },
        ),
    ];
    for (c, want) in cases {
        assert_eq!(CompiledCondition::compile(&c, "c").unwrap_err(), vec![want]);
    }
}

#[test]
fn valid_expressions_compile() {
    for expr in [
        "true",
        r#"ctx.user.spec.groups.hasAll("dev", "ops")"#,
        r#"ctx.user.spec.email.lowerAscii().endsWith("@example.com")"#,
        r#"ctx.request.http.path.matches("^/v1/")"#,
        "ctx.groups.all(g, has(g.spec))",
    ] {
        assert!(CompiledCondition::compile(&m(expr), "c").is_ok(), "{expr}");
    }
}

#[test]
fn parser_panic_becomes_a_compile_error() {
    // cel-parser 0.10 panics on `1 +`; compile must turn that into an error on the field.
    let errs = CompiledCondition::compile(&m("ctx.request.http.size > 1 +"), "c").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "c.match");
    assert!(
        errs[0].message.starts_with("invalid CEL expression"),
        "{errs:?}"
    );
}

#[test]
fn parser_panic_in_the_tree_visitor_becomes_a_compile_error() {
    // Found by `scripts/fuzz policy`: a member access on a run of invalid characters makes
    // cel-parser's tree visitor reach an `unreachable!()`.
    let mut bytes = b"ctx.".to_vec();
    bytes.extend([0xff; 10]);
    bytes.extend([0x9f; 9]);
    bytes.extend([0xff; 24]);
    bytes.extend_from_slice(
        b"bodyMap\x0b.http.path.matches('^/admin') || size(ctx.request.http.headers['x-tag']) > =0",
    );
    let source = String::from_utf8_lossy(&bytes);
    let errs = CompiledCondition::compile(&not(&source), "c").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "c.not");
}
