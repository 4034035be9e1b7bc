//! Hypothetical requests evaluated offline with the gateway's own engine: the shared
//! construction of `ctx` ([`crate::values`]), a [`Scenario`] against a [`PolicyWorld`] of resources,
//! and the case files of `posternctl policy test` ([`cases`]).

pub mod cases;
mod scenario;

#[cfg(test)]
mod tests;

pub use cases::{
    parse_case_file, run_case, run_cases, summary, Case, CaseFile, CaseFileError, CaseOutcome,
    CaseResult,
};
pub use scenario::{
    ChosenConfig, PolicyWorld, Prepared, RequestSpec, Scenario, ScenarioError, SessionSpec,
};
