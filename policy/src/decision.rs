//! Rules, policies and the decision: ordering and "first match decides, deny by default".

use std::sync::Arc;

use postern_common::resources::{Effect, PolicySpec};

use super::{CompileError, CompiledCondition, EvalContext, Reads};

/// One compiled rule with the names needed to log why a request was allowed or denied.
#[derive(Debug)]
pub struct CompiledRule {
    /// Name of the policy the rule comes from.
    pub policy: String,
    /// Name of the rule (`rule-<index>` when the spec leaves it unnamed).
    pub rule: String,
    /// What the rule decides when its condition matches.
    pub effect: Effect,
    /// Ordering key: lower first.
    pub priority: i32,
    /// The compiled condition.
    pub condition: CompiledCondition,
}

/// A compiled policy: its rules, shared by `Arc` so rule sets of many requests and
/// services can reference them without copying.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// Policy name, used as the `policy` of each rule.
    pub name: String,
    /// The rules, in spec order (sorting happens in [`RuleSet::new`]).
    pub rules: Vec<Arc<CompiledRule>>,
    /// A disabled policy contributes no rules (see [`CompiledPolicy::active_rules`]).
    pub disabled: bool,
}

impl CompiledPolicy {
    /// Compiles every rule of `spec`; `field` is the path prefix of the spec ("spec" for a
    /// Policy resource, "spec.authorization.inlinePolicies[0].spec" for inline); unnamed
    /// rules get "rule-<index>". All errors of all rules are returned together. OPA
    /// conditions see the spec's `attrs` as `input.attrs`.
    pub fn compile(name: &str, spec: &PolicySpec, field: &str) -> Result<Self, Vec<CompileError>> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        let mut errors = Vec::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let path = format!("{field}.rules[{i}].condition");
            match CompiledCondition::compile_with_attrs(&rule.condition, &path, spec.attrs.as_ref())
            {
                Ok(condition) => rules.push(Arc::new(CompiledRule {
                    policy: name.to_owned(),
                    rule: rule.name.clone().unwrap_or_else(|| format!("rule-{i}")),
                    effect: rule.effect,
                    priority: rule.priority,
                    condition,
                })),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CompiledPolicy {
            name: name.to_owned(),
            rules,
            disabled: spec.is_disabled,
        })
    }

    /// True if any rule may read the request body.
    pub fn reads_body(&self) -> bool {
        self.rules.iter().any(|r| r.condition.reads_body())
    }

    /// The rules this policy contributes to a [`RuleSet`]: none when disabled.
    pub fn active_rules(&self) -> impl Iterator<Item = Arc<CompiledRule>> + '_ {
        let rules: &[Arc<CompiledRule>] = if self.disabled { &[] } else { &self.rules };
        rules.iter().cloned()
    }
}

/// The rules that apply to one request, already in decision order, so deciding is a
/// linear scan.
#[derive(Clone, Default, Debug)]
pub struct RuleSet {
    rules: Vec<Arc<CompiledRule>>,
    reads: Reads,
}

impl RuleSet {
    /// Stable sort: priority ascending, DENY before ALLOW at equal priority; otherwise the
    /// given order is kept.
    pub fn new(rules: impl IntoIterator<Item = Arc<CompiledRule>>) -> Self {
        let mut rules: Vec<_> = rules.into_iter().collect();
        rules.sort_by_key(|r| (r.priority, effect_rank(r.effect)));
        let reads = rules
            .iter()
            .fold(Reads::default(), |acc, r| acc.union(r.condition.reads()));
        RuleSet { rules, reads }
    }

    /// The active rules of several policies (disabled ones contribute nothing), sorted.
    pub fn from_policies<'a>(policies: impl IntoIterator<Item = &'a CompiledPolicy>) -> Self {
        RuleSet::new(policies.into_iter().flat_map(CompiledPolicy::active_rules))
    }

    /// True if any rule may read the request body (the proxy must buffer it).
    pub fn reads_body(&self) -> bool {
        self.reads.body
    }

    /// What any rule may read of `ctx.request.http`.
    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// The rules in decision order.
    pub fn rules(&self) -> &[Arc<CompiledRule>] {
        &self.rules
    }

    /// First matching rule decides; none => Deny with [`Reason::NoMatch`].
    pub fn decide(&self, ctx: &EvalContext) -> Decision {
        self.rules
            .iter()
            .find(|r| r.condition.evaluate(ctx))
            .map(|r| Decision {
                effect: r.effect,
                reason: Reason::Rule {
                    policy: r.policy.clone(),
                    rule: r.rule.clone(),
                    priority: r.priority,
                },
            })
            .unwrap_or(Decision {
                effect: Effect::Deny,
                reason: Reason::NoMatch,
            })
    }
}

fn effect_rank(e: Effect) -> u8 {
    match e {
        Effect::Deny => 0,
        Effect::Allow => 1,
    }
}

/// The outcome of [`RuleSet::decide`], with the reason to log and audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Allow or deny.
    pub effect: Effect,
    /// Which rule decided, or that none matched.
    pub reason: Reason,
}

/// Why a [`Decision`] was made.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// This rule matched first.
    Rule {
        /// Policy name.
        policy: String,
        /// Rule name.
        rule: String,
        /// Rule priority.
        priority: i32,
    },
    /// No rule matched: denied by default.
    NoMatch,
}
