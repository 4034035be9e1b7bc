//! Case files for `posternctl policy test`: hypothetical requests with the decision (and
//! optionally the deciding rule) they must get.

use postern_common::resources::Effect;
use serde::Deserialize;
use std::fmt;

use super::scenario::{PolicyWorld, RequestSpec, Scenario, ScenarioError, SessionSpec};
use crate::explain::NO_MATCH;

/// A case file: `cases: [...]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// One expectation about one hypothetical request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Printed in the result line.
    pub name: String,
    /// A User of the resources.
    pub user: String,
    /// A Service of the resources.
    pub service: String,
    /// The request; `GET /` with nothing else by default.
    #[serde(default)]
    pub request: RequestSpec,
    /// The calling Session; a workload's OAuth2 Session by default.
    #[serde(default)]
    pub session: SessionSpec,
    /// ALLOW or DENY.
    pub expect: Effect,
    /// `<policy>/<rule>` that must decide, or `none` for deny by default.
    #[serde(default)]
    pub rule: Option<String>,
}

impl Case {
    /// The case as a [`Scenario`].
    pub fn scenario(&self) -> Scenario {
        Scenario {
            user: self.user.clone(),
            service: self.service.clone(),
            request: self.request.clone(),
            session: self.session.clone(),
        }
    }
}

/// A case file that cannot be read: file, line, column and field path when known, in the
/// same shape (and with the same message format) as a resource file that cannot be read.
pub type CaseFileError = postern_common::resources::ParseError;

/// Parses a case file (YAML or JSON); `file` is used in error messages only.
pub fn parse_case_file(file: &str, text: &str) -> Result<CaseFile, CaseFileError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        let inner = e.into_inner();
        let loc = inner.location();
        let mut message = inner.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // serde_yaml prefixes the path (`cases[1].expect: ...`); we print our own.
        if let Some((_, rest)) = message
            .split_once(": ")
            .filter(|(p, _)| !p.contains(' ') && field.as_deref() == Some(*p))
        {
            message = rest.to_owned();
        }
        CaseFileError {
            file: file.to_owned(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field,
            message,
        }
    })
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseResult {
    /// Decision (and rule, when given) as expected.
    Pass,
    /// Something else decided.
    Fail {
        /// What the gateway would decide.
        got: Effect,
        /// `<policy>/<rule>` that decided, or `none`.
        got_rule: String,
    },
    /// The case could not be evaluated (unknown user or service, bad header).
    Error(ScenarioError),
}

/// One case with its result; `Display` is the line `posternctl policy test` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseOutcome {
    /// The case as written.
    pub case: Case,
    /// What happened.
    pub result: CaseResult,
}

impl CaseOutcome {
    /// True for [`CaseResult::Pass`].
    pub fn passed(&self) -> bool {
        self.result == CaseResult::Pass
    }
}

impl fmt::Display for CaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.case.name;
        match &self.result {
            CaseResult::Pass => write!(f, "PASS {name}"),
            CaseResult::Fail { got, got_rule } => {
                write!(f, "FAIL {name}: expected {}", self.case.expect.as_str())?;
                if let Some(rule) = &self.case.rule {
                    write!(f, " by {rule}")?;
                }
                write!(f, ", got {} by {got_rule}", got.as_str())
            }
            CaseResult::Error(e) => write!(f, "ERROR {name}: {e}"),
        }
    }
}

/// Runs one case against `world`.
pub fn run_case(world: &PolicyWorld, case: &Case) -> CaseOutcome {
    let result = match world.prepare(&case.scenario()) {
        Err(e) => CaseResult::Error(e),
        Ok(prepared) => {
            let e = prepared.explain();
            let got_rule = e
                .deciding_rule()
                .map(|r| r.id())
                .unwrap_or_else(|| NO_MATCH.to_owned());
            let rule_ok = case.rule.as_ref().is_none_or(|r| *r == got_rule);
            if e.decision.effect == case.expect && rule_ok {
                CaseResult::Pass
            } else {
                CaseResult::Fail {
                    got: e.decision.effect,
                    got_rule,
                }
            }
        }
    };
    CaseOutcome {
        case: case.clone(),
        result,
    }
}

/// Runs every case of `file` in order.
pub fn run_cases(world: &PolicyWorld, file: &CaseFile) -> Vec<CaseOutcome> {
    file.cases.iter().map(|c| run_case(world, c)).collect()
}

/// `N passed, M failed` (errors count as failed).
pub fn summary(outcomes: &[CaseOutcome]) -> String {
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    format!("{passed} passed, {} failed", outcomes.len() - passed)
}
