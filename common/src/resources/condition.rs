//! Policies, rules and conditions: the shape users write; evaluation lives in the gateway.

use serde::{Deserialize, Serialize};

/// What a matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "ALLOW",
            Effect::Deny => "DENY",
        }
    }
}

/// `spec` of a `Policy`, and of each `authorization.inlinePolicies[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Free-form attributes exposed to conditions as `attrs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_disabled: bool,
    /// A global Policy's rules apply to every request, whatever the Service or User.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
}

/// One rule: if `condition` matches, `effect` decides (ordered by `priority`, lower first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub effect: Effect,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    pub condition: Condition,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// A condition; exactly one of its fields is set (checked by validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// A CEL expression that must evaluate to `true`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<String>,
    /// `matchAny: true` matches every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_any: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<ConditionList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<ConditionList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<ConditionList>,
    /// A CEL expression that must evaluate to `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opa: Option<OpaCondition>,
}

/// The `of` list of `all`, `any` and `none`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionList {
    #[serde(default)]
    pub of: Vec<Condition>,
}

/// An OPA/Rego condition; the decision is the module's `match` rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpaCondition {
    pub inline: String,
}

impl Condition {
    /// Names of the fields that are set, for "exactly one" validation messages.
    pub fn set_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.match_.is_some() {
            v.push("match");
        }
        if self.match_any.is_some() {
            v.push("matchAny");
        }
        if self.all.is_some() {
            v.push("all");
        }
        if self.any.is_some() {
            v.push("any");
        }
        if self.none.is_some() {
            v.push("none");
        }
        if self.not.is_some() {
            v.push("not");
        }
        if self.opa.is_some() {
            v.push("opa");
        }
        v
    }
}
