//! Combining rules: ordering, first match, deny by default, disabled policies.

use std::sync::Arc;

use postern_common::resources::{Condition, ConditionList, Effect, PolicySpec, Rule};
use serde_json::json;

use super::{alice, bob, chat_body, ctx_for, m, not, robot};
use crate::{CompiledPolicy, CompiledRule, Decision, Reason, RuleSet};

fn rule(name: Option<&str>, effect: Effect, priority: i32, condition: Condition) -> Rule {
    Rule {
        name: name.map(str::to_owned),
        effect,
        priority,
        condition,
    }
}

fn match_any() -> Condition {
    Condition {
        match_any: Some(true),
        ..Condition::default()
    }
}

fn list(of: Vec<Condition>) -> Option<ConditionList> {
    Some(ConditionList { of })
}

fn policy(name: &str, rules: Vec<Rule>) -> CompiledPolicy {
    let spec = PolicySpec {
        rules,
        ..PolicySpec::default()
    };
    CompiledPolicy::compile(name, &spec, "spec").expect("policy compiles")
}

fn decided_by(d: &Decision) -> (Effect, &str) {
    match &d.reason {
        Reason::Rule { rule, .. } => (d.effect, rule.as_str()),
        Reason::NoMatch => (d.effect, "<none>"),
    }
}

#[test]
fn priority_order_and_deny_before_allow() {
    let ops = r#""ops" in ctx.user.spec.groups"#;
    let dev = r#""dev" in ctx.user.spec.groups"#;
    // (what, rules, user, expected (effect, deciding rule))
    type Case<'a> = (&'a str, Vec<Rule>, &'a str, (Effect, &'a str));
    let cases: Vec<Case> = vec![
        (
            "DENY wins at equal priority, whatever the spec order",
            vec![
                rule(Some("allow-dev"), Effect::Allow, 0, m(dev)),
                rule(Some("deny-ops"), Effect::Deny, 0, m(ops)),
            ],
            "alice",
            (Effect::Deny, "deny-ops"),
        ),
        (
            "ALLOW at -1 beats DENY at 0",
            vec![
                rule(Some("deny-ops"), Effect::Deny, 0, m(ops)),
                rule(Some("allow-dev"), Effect::Allow, -1, m(dev)),
            ],
            "alice",
            (Effect::Allow, "allow-dev"),
        ),
        (
            "DENY at 1 loses to ALLOW at 0",
            vec![
                rule(Some("deny-all"), Effect::Deny, 1, match_any()),
                rule(Some("allow-dev"), Effect::Allow, 0, m(dev)),
            ],
            "bob",
            (Effect::Allow, "allow-dev"),
        ),
        (
            "a non-matching DENY is skipped",
            vec![
                rule(Some("deny-ops"), Effect::Deny, 0, m(ops)),
                rule(Some("allow-dev"), Effect::Allow, 0, m(dev)),
            ],
            "bob",
            (Effect::Allow, "allow-dev"),
        ),
        (
            "no match denies",
            vec![rule(Some("allow-ops"), Effect::Allow, 0, m(ops))],
            "bob",
            (Effect::Deny, "<none>"),
        ),
        (
            "a missing field is false, so the rule does not match",
            vec![
                rule(Some("deny-no-dev"), Effect::Deny, -4, not(dev)),
                rule(Some("allow-everyone"), Effect::Allow, 4, match_any()),
            ],
            "robot",
            (Effect::Allow, "allow-everyone"),
        ),
        (
            "unnamed rules are named by index",
            vec![
                rule(None, Effect::Allow, 0, m(ops)),
                rule(None, Effect::Allow, 0, m(dev)),
            ],
            "bob",
            (Effect::Allow, "rule-1"),
        ),
    ];
    for (what, rules, user, want) in cases {
        let user = match user {
            "alice" => alice(),
            "bob" => bob(),
            _ => robot(),
        };
        let set = RuleSet::new(policy("p", rules).active_rules());
        let decision = set.decide(&ctx_for(user, None));
        assert_eq!(decided_by(&decision), want, "{what}");
    }
}

#[test]
fn decision_names_policy_rule_and_priority() {
    let p = policy(
        "team",
        vec![rule(Some("r"), Effect::Allow, -2, match_any())],
    );
    let d = RuleSet::from_policies([&p]).decide(&ctx_for(bob(), None));
    assert_eq!(
        d,
        Decision {
            effect: Effect::Allow,
            reason: Reason::Rule {
                policy: "team".into(),
                rule: "r".into(),
                priority: -2
            }
        }
    );
    let empty = RuleSet::default().decide(&ctx_for(bob(), None));
    assert_eq!(empty.effect, Effect::Deny);
    assert_eq!(empty.reason, Reason::NoMatch);
}

#[test]
fn sort_is_stable_and_merges_policies() {
    let a = policy(
        "a",
        vec![
            rule(Some("a-allow-0"), Effect::Allow, 0, match_any()),
            rule(Some("a-deny-2"), Effect::Deny, 2, match_any()),
        ],
    );
    let b = policy(
        "b",
        vec![
            rule(Some("b-allow-0"), Effect::Allow, 0, match_any()),
            rule(Some("b-deny-0"), Effect::Deny, 0, match_any()),
            rule(Some("b-allow-neg"), Effect::Allow, -3, match_any()),
        ],
    );
    let set = RuleSet::from_policies([&a, &b]);
    let order: Vec<&str> = set.rules().iter().map(|r| r.rule.as_str()).collect();
    assert_eq!(
        order,
        [
            "b-allow-neg",
            "b-deny-0",
            "a-allow-0",
            "b-allow-0",
            "a-deny-2"
        ]
    );
}

#[test]
fn disabled_policies_contribute_no_rules() {
    let spec = PolicySpec {
        rules: vec![rule(Some("allow"), Effect::Allow, 0, match_any())],
        is_disabled: true,
        ..PolicySpec::default()
    };
    let disabled = CompiledPolicy::compile("off", &spec, "spec").expect("compiles");
    assert!(disabled.disabled);
    assert_eq!(disabled.rules.len(), 1);
    assert_eq!(disabled.active_rules().count(), 0);
    let d = RuleSet::from_policies([&disabled]).decide(&ctx_for(alice(), None));
    assert_eq!(d.reason, Reason::NoMatch);
}

#[test]
fn all_any_none_combinators() {
    let dev = m(r#""dev" in ctx.user.spec.groups"#);
    let ops = m(r#""ops" in ctx.user.spec.groups"#);
    let all = Condition {
        all: list(vec![dev.clone(), ops.clone()]),
        ..Condition::default()
    };
    let any = Condition {
        any: list(vec![ops.clone(), dev.clone()]),
        ..Condition::default()
    };
    let none = Condition {
        none: list(vec![ops.clone()]),
        ..Condition::default()
    };
    // (condition, user, expected)
    let cases = [
        (&all, alice(), true),
        (&all, bob(), false),
        (&any, bob(), true),
        (&any, robot(), false),
        (&none, bob(), true),
        (&none, alice(), false),
        // A missing field inside `none` is "not matched", so `none` matches.
        (&none, robot(), true),
    ];
    for (c, user, want) in cases {
        let compiled = super::compile(c);
        assert_eq!(
            compiled.evaluate(&ctx_for(user.clone(), None)),
            want,
            "{c:?} for {user}"
        );
    }
}

#[test]
fn example_my_api_rule_and_reads_body() {
    let cond = Condition {
        all: list(vec![
            m(r#"ctx.user.spec.groups.hasAll("dev", "ops")"#),
            m("ctx.request.http.bodyMap.messages.size() < 4"),
            m(r#"ctx.request.http.bodyMap.model in ["gpt-3.5-turbo", "gpt-4o-mini"]"#),
            m("ctx.request.http.bodyMap.temperature < 0.7"),
        ]),
        ..Condition::default()
    };
    let body_policy = policy("my-api", vec![rule(Some("llm"), Effect::Allow, 0, cond)]);
    let plain_policy = policy(
        "plain",
        vec![rule(
            None,
            Effect::Allow,
            0,
            m(r#""dev" in ctx.user.spec.groups"#),
        )],
    );
    assert!(body_policy.reads_body());
    assert!(!plain_policy.reads_body());
    assert!(RuleSet::from_policies([&plain_policy, &body_policy]).reads_body());
    assert!(!RuleSet::from_policies([&plain_policy]).reads_body());

    let set = RuleSet::from_policies([&body_policy]);
    let ok = set.decide(&ctx_for(
        alice(),
        Some(chat_body("gpt-4o-mini", 2, json!(0.2))),
    ));
    assert_eq!(ok.effect, Effect::Allow);
    let hot = set.decide(&ctx_for(
        alice(),
        Some(chat_body("gpt-4o-mini", 2, json!(0.9))),
    ));
    assert_eq!(hot.effect, Effect::Deny);
    let no_body = set.decide(&ctx_for(alice(), None));
    assert_eq!(no_body.reason, Reason::NoMatch);
    let bob_ok_body = set.decide(&ctx_for(
        bob(),
        Some(chat_body("gpt-4o-mini", 2, json!(0.2))),
    ));
    assert_eq!(bob_ok_body.effect, Effect::Deny);
}

#[test]
fn compiled_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<crate::CompiledCondition>();
    assert_send_sync::<CompiledRule>();
    assert_send_sync::<CompiledPolicy>();
    assert_send_sync::<RuleSet>();
    assert_send_sync::<Arc<CompiledRule>>();
    assert_send_sync::<crate::CelValue>();
}
