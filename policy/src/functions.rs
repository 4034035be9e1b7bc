//! Custom CEL functions promised by the policy docs and not built into cel-interpreter,
//! plus the list of every function name a condition may call (checked at compile time).

use std::sync::Arc;

use cel_interpreter::{Context, ExecutionError, FunctionContext, Value};

/// Functions built into `cel_interpreter::Context::default()` (features `regex`, `chrono`).
const BUILTIN_FUNCTIONS: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// Functions this module registers on every [`super::EvalContext`].
const CUSTOM_FUNCTIONS: &[&str] = &["hasAll", "hasAny", "lowerAscii", "lower"];

/// True when `name` can be called from a condition: a built-in, one of ours, or an operator
/// (`_<_`, `@in`, `!_`, ...), which the parser names with punctuation.
pub(crate) fn is_known_function(name: &str) -> bool {
    let is_operator = !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_operator || BUILTIN_FUNCTIONS.contains(&name) || CUSTOM_FUNCTIONS.contains(&name)
}

/// Registers `hasAll`, `hasAny`, `lowerAscii` and `lower` on a root context.
pub(crate) fn register(ctx: &mut Context<'static>) {
    ctx.add_function("hasAll", has_all);
    ctx.add_function("hasAny", has_any);
    ctx.add_function("lowerAscii", lower_ascii);
    ctx.add_function("lower", lower_ascii);
}

/// The receiver list and the wanted values of `list.hasAll(...)` / `list.hasAny(...)`.
///
/// Accepts `list.f("a", "b")`, `list.f(["a", "b"])`, and the function forms
/// `f(list, "a", "b")` / `f(list, ["a", "b"])`.
fn receiver_and_wanted(
    ftx: &FunctionContext,
) -> Result<(Arc<Vec<Value>>, Vec<Value>), ExecutionError> {
    let mut args = ftx.args.iter();
    let this = match &ftx.this {
        Some(v) => v.clone(),
        None => match args.next() {
            Some(e) => ftx.ptx.resolve(e)?,
            None => return Err(ExecutionError::missing_argument_or_target()),
        },
    };
    let list = match this {
        Value::List(l) => l,
        other => return Err(ExecutionError::unsupported_target_type(other)),
    };
    let mut wanted = Vec::with_capacity(ftx.args.len());
    for e in args {
        wanted.push(ftx.ptx.resolve(e)?);
    }
    if wanted.is_empty() {
        return Err(ftx.error("expects a list or at least one value"));
    }
    if wanted.len() == 1 {
        if let Value::List(inner) = &wanted[0] {
            let inner = inner.as_ref().clone();
            return Ok((list, inner));
        }
    }
    Ok((list, wanted))
}

/// `list.hasAll(a, b, ...)` / `list.hasAll([a, b])`: every wanted value is in the list
/// (true for an empty wanted list).
fn has_all(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (list, wanted) = receiver_and_wanted(ftx)?;
    Ok(Value::Bool(wanted.iter().all(|w| list.contains(w))))
}

/// `list.hasAny(a, b, ...)` / `list.hasAny([a, b])`: at least one wanted value is in the
/// list (false for an empty wanted list).
fn has_any(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let (list, wanted) = receiver_and_wanted(ftx)?;
    Ok(Value::Bool(wanted.iter().any(|w| list.contains(w))))
}

/// `s.lowerAscii()` (and its alias `s.lower()`): ASCII lower-casing, as in CEL's strings
/// extension.
fn lower_ascii(ftx: &FunctionContext) -> Result<Value, ExecutionError> {
    let this = match &ftx.this {
        Some(v) => v.clone(),
        None => match ftx.args.first() {
            Some(e) => ftx.ptx.resolve(e)?,
            None => return Err(ExecutionError::missing_argument_or_target()),
        },
    };
    match this {
        Value::String(s) => Ok(Value::String(Arc::new(s.to_ascii_lowercase()))),
        other => Err(ExecutionError::unsupported_target_type(other)),
    }
}
