//! Why a request is allowed or denied: every rule of a [`RuleSet`] evaluated in decision
//! order, with the one that decided marked. Used by `posternctl policy explain|test`; the
//! decision is the same as [`RuleSet::decide`]'s, by construction (same order, first match).

use postern_common::resources::Effect;
use serde::Serialize;

use crate::{Decision, EvalContext, Reason, RuleSet};

/// One rule of an [`Explanation`], in decision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleOutcome {
    /// 1-based position in decision order.
    pub position: usize,
    /// Policy the rule comes from (`<resource>/inline-<i>` for inline policies).
    pub policy: String,
    /// Rule name (`rule-<i>` when unnamed).
    pub rule: String,
    /// What the rule decides when it matches.
    pub effect: Effect,
    /// Ordering key: lower first.
    pub priority: i32,
    /// Whether the condition matched (an evaluation error counts as not matched).
    pub matched: bool,
    /// True for the first matching rule, the one that decided.
    pub decisive: bool,
    /// Expressions that could not be evaluated, with why (`expr: no such key: model`): the
    /// usual reason a rule one expected to match did not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RuleOutcome {
    /// `<policy>/<rule>`, how case files name a rule.
    pub fn id(&self) -> String {
        format!("{}/{}", self.policy, self.rule)
    }
}

/// The final decision of an [`Explanation`], flattened for JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionSummary {
    /// ALLOW or DENY.
    pub effect: Effect,
    /// Policy of the deciding rule; `None` when no rule matched (deny by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Name of the deciding rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Priority of the deciding rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// `<policy>/<rule>` of the deciding rule, or `none` for deny by default.
    pub decided_by: String,
}

impl From<&Decision> for DecisionSummary {
    fn from(d: &Decision) -> Self {
        match &d.reason {
            Reason::Rule {
                policy,
                rule,
                priority,
            } => DecisionSummary {
                effect: d.effect,
                policy: Some(policy.clone()),
                rule: Some(rule.clone()),
                priority: Some(*priority),
                decided_by: format!("{policy}/{rule}"),
            },
            Reason::NoMatch => DecisionSummary {
                effect: d.effect,
                policy: None,
                rule: None,
                priority: None,
                decided_by: NO_MATCH.to_owned(),
            },
        }
    }
}

/// How case files and `explain` name "no rule matched".
pub const NO_MATCH: &str = "none";

/// Every rule evaluated for one request, and the decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// All rules, in decision order, each evaluated (also those after the decision).
    pub rules: Vec<RuleOutcome>,
    /// The decision, identical to what [`RuleSet::decide`] returns.
    #[serde(serialize_with = "serialize_decision")]
    pub decision: Decision,
}

fn serialize_decision<S: serde::Serializer>(d: &Decision, s: S) -> Result<S::Ok, S::Error> {
    DecisionSummary::from(d).serialize(s)
}

impl Explanation {
    /// The deciding rule, if any rule matched.
    pub fn deciding_rule(&self) -> Option<&RuleOutcome> {
        self.rules.iter().find(|r| r.decisive)
    }

    /// One sentence: `ALLOW by policy X rule Y (priority P)` or
    /// `DENY (no rule matched: deny by default)`.
    pub fn decision_text(&self) -> String {
        match &self.decision.reason {
            Reason::Rule {
                policy,
                rule,
                priority,
            } => format!(
                "{} by policy {policy} rule {rule} (priority {priority})",
                self.decision.effect.as_str()
            ),
            Reason::NoMatch => format!(
                "{} (no rule matched: deny by default)",
                self.decision.effect.as_str()
            ),
        }
    }
}

impl RuleSet {
    /// Evaluates every rule in decision order (unlike [`RuleSet::decide`], which stops at the
    /// first match) and records which matched and which decided.
    pub fn explain(&self, ctx: &EvalContext) -> Explanation {
        let mut decided = false;
        let rules: Vec<RuleOutcome> = self
            .rules()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut notes = Vec::new();
                let matched = r.condition.evaluate_with_notes(ctx, &mut notes);
                let decisive = matched && !decided;
                decided |= matched;
                RuleOutcome {
                    position: i + 1,
                    policy: r.policy.clone(),
                    rule: r.rule.clone(),
                    effect: r.effect,
                    priority: r.priority,
                    matched,
                    decisive,
                    notes,
                }
            })
            .collect();
        let decision = match rules.iter().find(|r| r.decisive) {
            Some(r) => Decision {
                effect: r.effect,
                reason: Reason::Rule {
                    policy: r.policy.clone(),
                    rule: r.rule.clone(),
                    priority: r.priority,
                },
            },
            None => Decision {
                effect: Effect::Deny,
                reason: Reason::NoMatch,
            },
        };
        Explanation { rules, decision }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompiledPolicy, RequestFacts};
    use postern_common::resources::{parse_documents, Resource};

    fn rules(yaml_rules: &str) -> RuleSet {
        let yaml = format!("kind: Policy\nmetadata: {{name: p}}\nspec:\n  rules:\n{yaml_rules}");
        let docs = parse_documents("t.yaml", &yaml).unwrap();
        let Resource::Policy { spec, .. } = &docs[0].resource else {
            panic!("not a policy")
        };
        let p = CompiledPolicy::compile("p", spec, "spec").unwrap();
        RuleSet::from_policies([&p])
    }

    fn ctx(method: &str) -> EvalContext {
        let headers = http::HeaderMap::new();
        let facts = RequestFacts {
            method,
            path: "/",
            host: "h",
            scheme: "https",
            headers: &headers,
            query: None,
            body: None,
            size: 0,
            client_ip: None,
            now: None,
        };
        let empty = crate::CelValue::empty_map();
        EvalContext::new(
            &empty,
            &empty,
            &crate::CelValue::empty_list(),
            &empty,
            &facts,
        )
    }

    const RULES: &str =
        "    - {name: late-allow, effect: ALLOW, priority: 5, condition: {matchAny: true}}
    - {name: get-allow, effect: ALLOW, condition: {match: 'ctx.request.http.method == \"GET\"'}}
    - {name: get-deny, effect: DENY, condition: {match: 'ctx.request.http.method == \"GET\"'}}
    - {name: never, effect: ALLOW, priority: -3, condition: {match: 'ctx.user.nope == 1'}}
";

    #[test]
    fn rules_in_decision_order_with_the_first_match_deciding() {
        let set = rules(RULES);
        let e = set.explain(&ctx("GET"));
        let order: Vec<_> = e.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(order, ["never", "get-deny", "get-allow", "late-allow"]);
        let matched: Vec<_> = e.rules.iter().map(|r| r.matched).collect();
        assert_eq!(
            matched,
            [false, true, true, true],
            "later rules still evaluated"
        );
        let decisive: Vec<_> = e.rules.iter().map(|r| r.decisive).collect();
        assert_eq!(decisive, [false, true, false, false]);
        assert_eq!(e.decision, set.decide(&ctx("GET")));
        assert_eq!(e.decision.effect, Effect::Deny);
        assert_eq!(e.deciding_rule().unwrap().id(), "p/get-deny");
        assert_eq!(
            e.decision_text(),
            "DENY by policy p rule get-deny (priority 0)"
        );
        assert_eq!(e.rules[0].position, 1);
    }

    #[test]
    fn later_rule_decides_when_earlier_do_not_match() {
        let set = rules(RULES);
        let e = set.explain(&ctx("POST"));
        assert_eq!(e.deciding_rule().unwrap().rule, "late-allow");
        assert_eq!(e.decision.effect, Effect::Allow);
        assert_eq!(e.decision, set.decide(&ctx("POST")));
    }

    #[test]
    fn no_match_denies_by_default() {
        let set = rules("    - {effect: ALLOW, condition: {match: 'false'}}\n");
        let e = set.explain(&ctx("GET"));
        assert_eq!(e.rules.len(), 1);
        assert!(!e.rules[0].matched);
        assert_eq!(e.rules[0].rule, "rule-0");
        assert!(e.deciding_rule().is_none());
        assert_eq!(e.decision.reason, Reason::NoMatch);
        assert_eq!(e.decision.effect, Effect::Deny);
        assert_eq!(e.decision_text(), "DENY (no rule matched: deny by default)");
        let empty = RuleSet::default().explain(&ctx("GET"));
        assert!(empty.rules.is_empty());
        assert_eq!(empty.decision.reason, Reason::NoMatch);
    }

    #[test]
    fn serializes_rules_and_decision() {
        let e = rules(RULES).explain(&ctx("POST"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["rules"][3]["decisive"], true);
        assert_eq!(v["rules"][0]["effect"], "ALLOW");
        assert_eq!(v["decision"]["effect"], "ALLOW");
        assert_eq!(v["decision"]["decidedBy"], "p/late-allow");
        assert_eq!(v["decision"]["priority"], 5);
        let none =
            rules("    - {effect: ALLOW, condition: {match: 'false'}}\n").explain(&ctx("GET"));
        let v = serde_json::to_value(&none).unwrap();
        assert_eq!(v["decision"]["decidedBy"], "none");
        assert!(v["decision"].get("policy").is_none());
    }

    #[test]
    fn a_missing_field_is_noted_on_the_rule_it_kept_from_matching() {
        let set = rules(RULES);
        let e = set.explain(&ctx("GET"));
        let never = e.rules.iter().find(|r| r.rule == "never").unwrap();
        assert!(!never.matched);
        assert_eq!(never.notes.len(), 1, "{:?}", never.notes);
        assert!(
            never.notes[0].starts_with("ctx.user.nope == 1: "),
            "{:?}",
            never.notes
        );
        let get = e.rules.iter().find(|r| r.rule == "get-deny").unwrap();
        assert!(get.notes.is_empty(), "a rule that evaluated has no notes");
        // A plain false (no error) is not noted either.
        let post = set.explain(&ctx("POST"));
        assert!(post
            .rules
            .iter()
            .find(|r| r.rule == "get-deny")
            .unwrap()
            .notes
            .is_empty());
    }
}
