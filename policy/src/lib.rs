//! Postern's policy engine: compiles `Policy` specs (CEL and OPA/Rego conditions) once, when configuration
//! changes, and decides each request against an [`EvalContext`] built once per request.
//!
//! Semantics (deny by default):
//! - rules are ordered by `priority` (lower first), DENY before ALLOW at equal priority;
//! - the first rule whose condition matches decides; no match denies ([`Reason::NoMatch`]);
//! - a CEL evaluation error (a missing field is `NoSuchKey`, a type mismatch, an unknown
//!   method on a value) means "not matched", never an error, and is logged at debug;
//! - `not: expr` matches only when `expr` evaluates to exactly `false`: an evaluation error
//!   inside `not` is also "not matched" (Octelium's choice: an error never grants anything,
//!   even through negation);
//! - `all.of` / `any.of` / `none.of` combine sub-conditions; `matchAny: true` always matches;
//! - `opa.inline` is a Rego module whose `data.<package>.match` decides, with input
//!   `{"ctx": ..., "attrs": ...}`: undefined or `false` is "not matched", a non-boolean is an
//!   error, treated as not matched, and an evaluation error is "not matched" (see `opa`).
//!
//! CEL conditions may call the functions listed in `FUNCTIONS.md` (`net.isIPInRange`,
//! `now().getHours("Europe/Berlin")`, `json.parse`, `matches`, ...) and are held to the
//! size limits [`MAX_EXPRESSION_BYTES`], [`MAX_NESTING`], [`MAX_AST_NODES`] and
//! [`MAX_REGEX_BYTES`], checked at compile time; list macros draw on the evaluation budget
//! [`MAX_LOOP_COST`], past which the condition does not match.
//!
//! The module is pure: no I/O, no global state. Compiled types are `Send + Sync` so that a
//! configuration snapshot can be shared across tasks behind an `Arc`.

mod ast;
mod catalog;
mod compile;
mod context;
mod decision;
mod explain;
mod functions;
mod limits;
mod opa;
mod reads;
pub mod testcases;
pub mod values;

#[cfg(test)]
mod tests;

pub use catalog::{BuildError, Catalog};
pub use compile::CompiledCondition;
pub use context::{CelValue, EvalContext, RequestFacts};
pub use decision::{CompiledPolicy, CompiledRule, Decision, Reason, RuleSet};
pub use explain::{DecisionSummary, Explanation, RuleOutcome, NO_MATCH};
pub use limits::{
    MAX_AST_NODES, MAX_EXPRESSION_BYTES, MAX_LOOP_COST, MAX_NESTING, MAX_REGEX_BYTES,
};
pub use opa::{EVAL_TIME_LIMIT, MAX_MODULE_BYTES, MAX_REGO_NESTING};
pub use reads::Reads;

/// A compile problem, named by field path (e.g. `spec.rules[0].condition.all.of[1].match`)
/// with the CEL position in the message, so that `apply` can point at the exact mistake.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CompileError {
    /// Path of the offending field inside the resource.
    pub field: String,
    /// What is wrong, with `line L column C` for CEL syntax errors.
    pub message: String,
}

impl CompileError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        CompileError {
            field: field.into(),
            message: message.into(),
        }
    }
}
