//! OPA/Rego conditions (`condition.opa.inline`), evaluated with `regorus`.
//!
//! A module is parsed and prepared once at apply time; each evaluation clones the prepared
//! engine (cheap: the parsed modules are shared), sets the input and evaluates
//! `data.<package>.match`, where `<package>` is read from the module's `package` line.
//!
//! The input is `{"ctx": <the same ctx as CEL sees>, "attrs": <policy attrs or {}>}`.
//!
//! The decision is the value of `match`:
//! - undefined (no rule body held) => not matched;
//! - `true` => matched, `false` => not matched;
//! - a non-boolean is an error, treated as not matched (logged at debug);
//! - an evaluation error (including the time limit below) => not matched (logged at debug).
//!
//! Limits: modules over [`MAX_MODULE_BYTES`] or nesting brackets deeper than
//! [`MAX_REGO_NESTING`] are rejected at compile time, and every
//! evaluation runs under a wall-clock budget of [`EVAL_TIME_LIMIT`] (regorus checks it
//! cooperatively while it works), so a pathological policy cannot stall the gateway.
//! regorus 0.14 offers no instruction budget for its tree interpreter and its memory limit
//! needs a global allocator feature, so memory is not bounded per evaluation.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, PolicyLengthConfig, Value};

use super::{CompileError, EvalContext};
use crate::reads::Reads;

/// Largest accepted Rego module, in bytes.
pub const MAX_MODULE_BYTES: usize = 64 * 1024;

/// Wall-clock budget of one evaluation of a Rego condition.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(50);

/// Name under which the module is loaded; regorus prefixes positions with it.
const SOURCE_NAME: &str = "condition.rego";

/// A compiled Rego condition: a prepared engine to clone per evaluation.
#[derive(Debug, Clone)]
pub(crate) struct RegoCondition {
    /// Prepared engine holding only this module.
    engine: Engine,
    /// `data.<package>.match`.
    rule: String,
    /// The policy's `attrs` (or `{}`), as a Rego value.
    attrs: Value,
    /// What of `input.ctx.request.http` the module may read.
    reads: Reads,
}

impl RegoCondition {
    /// Parses and prepares `source`; `field` is the path of the `opa.inline` field.
    pub(crate) fn compile(
        source: &str,
        field: &str,
        attrs: Option<&serde_json::Value>,
    ) -> Result<Self, Vec<CompileError>> {
        let err = |message: String| vec![CompileError::new(field, message)];
        if source.len() > MAX_MODULE_BYTES {
            return Err(err(format!(
                "Rego module is {} bytes, more than the limit of {MAX_MODULE_BYTES}",
                source.len()
            )));
        }
        let depth = nesting_depth(source);
        if depth > MAX_REGO_NESTING {
            return Err(err(format!(
                "Rego module nests brackets {depth} deep, over the limit of {MAX_REGO_NESTING}; \
                 split the rule into helper rules"
            )));
        }
        let mut engine = Engine::new();
        engine.set_policy_length_config(length_limits());
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        });
        let package = engine
            .add_policy(SOURCE_NAME.to_owned(), source.to_owned())
            .map_err(|e| err(parse_error_message(&e.to_string())))?;
        match engine.has_declared_rule_rooted_at(SOURCE_NAME, "match") {
            Ok(true) => {}
            Ok(false) => {
                return Err(err(format!(
                    "Rego module has no `match` rule (the decision is {package}.match)"
                )))
            }
            Err(e) => return Err(err(format!("invalid Rego module: {e}"))),
        }
        let rule = format!("{package}.match");
        let attrs = match attrs {
            Some(a) => {
                use serde::Deserialize;
                Value::deserialize(a)
                    .map_err(|e| err(format!("policy attrs cannot be given to Rego: {e}")))?
            }
            None => Value::new_object(),
        };
        // Prepare (analyze, schedule) once, here: clones made per request then start
        // prepared. Semantic errors found while preparing are compile errors; an
        // evaluation error against this empty input is not (it depends on the input).
        engine.set_input(Value::new_object());
        if let Err(e) = engine.compile_with_entrypoint(&rule.as_str().into()) {
            return Err(err(format!(
                "invalid Rego module: {}",
                one_line(&e.to_string())
            )));
        }
        Ok(RegoCondition {
            engine,
            rule,
            attrs,
            reads: Reads::from_fn(|field| module_reads(source, field)),
        })
    }

    /// What of the request the module may read (textual, conservative).
    pub(crate) fn reads(&self) -> Reads {
        self.reads
    }

    /// The decision for this request: see the module documentation.
    pub(crate) fn evaluate(&self, ctx: &EvalContext) -> bool {
        let mut input = BTreeMap::new();
        input.insert(Value::from("ctx"), ctx.rego_ctx().clone());
        input.insert(Value::from("attrs"), self.attrs.clone());
        let mut engine = self.engine.clone();
        engine.set_input(Value::from(input));
        // The engine is a private clone: a panic inside regorus leaves nothing shared in a
        // broken state, and must not take the request task down.
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| engine.eval_rule(self.rule.clone())));
        match result {
            Ok(Ok(Value::Bool(b))) => b,
            Ok(Ok(Value::Undefined)) => false,
            Ok(Ok(other)) => {
                tracing::debug!(
                    rule = %self.rule,
                    result = %other,
                    "Rego condition result is not boolean; treated as not matched"
                );
                false
            }
            Ok(Err(error)) => {
                tracing::debug!(
                    rule = %self.rule,
                    %error,
                    "Rego condition failed to evaluate; treated as not matched"
                );
                false
            }
            Err(_) => {
                tracing::debug!(rule = %self.rule, "Rego condition panicked; treated as not matched");
                false
            }
        }
    }
}

/// Deepest nesting of `(`, `[`, `{` accepted in a Rego module. regorus' parser backtracks
/// over unclosed brackets in time exponential in their depth (found by fuzzing: 19 `[` took
/// seconds), so deeper modules are refused before parsing; real rules nest a handful deep.
pub const MAX_REGO_NESTING: usize = 16;

/// The deepest bracket nesting of `source` outside strings, raw strings and comments.
/// Strings end at their line's end, as Rego's do.
fn nesting_depth(source: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// regorus' own length limits, aligned with [`MAX_MODULE_BYTES`].
fn length_limits() -> PolicyLengthConfig {
    let defaults = PolicyLengthConfig::default();
    PolicyLengthConfig {
        max_file_bytes: NonZeroUsize::new(MAX_MODULE_BYTES).unwrap_or(defaults.max_file_bytes),
        ..defaults
    }
}

/// Turns regorus' multi-line report (`--> name:line:col`, the source line, a caret, then
/// `error: message`) into `invalid Rego module at line L column C: message`.
fn parse_error_message(report: &str) -> String {
    let position = report.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("-->")?.trim();
        let rest = rest.strip_prefix(SOURCE_NAME)?.strip_prefix(':')?;
        let (line, col) = rest.split_once(':')?;
        Some((line.parse::<u32>().ok()?, col.parse::<u32>().ok()?))
    });
    let message = report
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(str::trim)
        .map(str::to_owned)
        .unwrap_or_else(|| one_line(report));
    match position {
        Some((line, col)) => {
            format!("invalid Rego module at line {line} column {col}: {message}")
        }
        None => format!("invalid Rego module: {message}"),
    }
}

/// The non-empty lines of `s` joined by ` | `.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The path to the request's costly fields under `input`.
const HTTP_PATH: [&str; 3] = ["ctx", "request", "http"];

/// Conservative, textual: true if the module mentions `field` (e.g. `bodyMap`) anywhere,
/// or refers to `input`, `input.ctx`, `input.ctx.request` or `input.ctx.request.http` as
/// a whole value (or indexes one of them with a non-literal key), through which the field
/// could be read.
pub(crate) fn module_reads(source: &str, field: &str) -> bool {
    if source.contains(field) {
        return true;
    }
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = source[from..].find("input") {
        let start = from + found;
        let end = start + "input".len();
        from = end;
        let before_ok = start == 0 || !(is_ident(bytes[start - 1]) || bytes[start - 1] == b'.');
        let after_ok = end == bytes.len() || !is_ident(bytes[end]);
        if !(before_ok && after_ok) {
            continue;
        }
        match ref_path(&source[end..]) {
            // A dynamic index on an ancestor of the body could select it.
            RefPath::Dynamic(path) | RefPath::Whole(path) if is_http_ancestor(&path) => {
                return true
            }
            _ => {}
        }
    }
    false
}

/// The segments of a reference following `input`.
enum RefPath {
    /// Only literal segments, e.g. `.ctx.user` or `["ctx"]`.
    Whole(Vec<String>),
    /// Literal segments then an index that is not a string literal, e.g. `.ctx[k]`.
    Dynamic(Vec<String>),
}

fn ref_path(rest: &str) -> RefPath {
    let mut path = Vec::new();
    let mut s = rest;
    loop {
        if let Some(after) = s.strip_prefix('.') {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                return RefPath::Whole(path);
            }
            path.push(after[..len].to_owned());
            s = &after[len..];
        } else if let Some(after) = s.strip_prefix('[') {
            let literal = after.strip_prefix('"').and_then(|a| {
                let close = a.find('"')?;
                let key = &a[..close];
                let tail = a[close + 1..].trim_start().strip_prefix(']')?;
                (!key.contains('\\')).then_some((key, tail))
            });
            match literal {
                Some((key, tail)) => {
                    path.push(key.to_owned());
                    s = tail;
                }
                None => return RefPath::Dynamic(path),
            }
        } else {
            return RefPath::Whole(path);
        }
    }
}

/// `input` itself, or a path on the way to `input.ctx.request.http` (included).
fn is_http_ancestor(path: &[String]) -> bool {
    path.len() <= HTTP_PATH.len() && path.iter().zip(HTTP_PATH).all(|(a, b)| a == b)
}
