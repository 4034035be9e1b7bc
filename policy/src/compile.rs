//! Compiling a `Condition` tree into parsed CEL expressions, once per configuration change.

use std::panic::AssertUnwindSafe;

use cel_interpreter::Value;
use cel_parser::{ast::IdedExpr, Parser};
use postern_common::resources::Condition;

use super::opa::RegoCondition;
use super::reads::{reads, Reads};
use super::{functions, limits, CompileError, EvalContext};

/// One parsed CEL expression with its source (kept for debug logs).
#[derive(Debug, Clone)]
struct CelExpr {
    source: String,
    expr: IdedExpr,
}

impl CelExpr {
    /// Parses `source`; every syntax error, unknown function, exceeded size limit (see
    /// `limits`) and invalid regular expression literal becomes a [`CompileError`] on
    /// `field`.
    fn compile(source: &str, field: &str) -> Result<Self, Vec<CompileError>> {
        // Length and nesting first: the parser is recursive, and must not see input deep
        // enough to exhaust the stack.
        limits::check_source(source).map_err(|m| vec![CompileError::new(field, m)])?;
        let mut expr = parse_bounded(source, field)?;
        functions::qualify_namespaces(&mut expr);
        let references = expr.references();
        let mut unknown: Vec<&str> = references
            .functions()
            .into_iter()
            .filter(|f| !functions::is_known_function(f))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(unknown
                .into_iter()
                .map(|f| CompileError::new(field, format!("unknown function '{f}'")))
                .collect());
        }
        limits::instrument_loops(&mut expr);
        Ok(CelExpr {
            source: source.to_owned(),
            expr,
        })
    }

    /// `Some(b)` for a boolean result; `None` for an evaluation error or a non-boolean
    /// result (both logged at debug: they mean "not matched").
    fn eval(&self, ctx: &EvalContext) -> Option<bool> {
        match self.eval_detailed(ctx) {
            Ok(b) => Some(b),
            Err(why) => {
                tracing::debug!(expression = %self.source, %why, "treated as not matched");
                None
            }
        }
    }

    /// The boolean result, or why there is none (an evaluation error, a non-boolean result, a
    /// panic of the interpreter), for `explain`.
    fn eval_detailed(&self, ctx: &EvalContext) -> Result<bool, String> {
        // The interpreter has unfinished and unreachable branches that panic; a panic must
        // not take the request task down. Evaluation only reads `ctx`, so unwinding leaves no
        // broken state behind.
        ctx.reset_loop_cost();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| ctx.cel().resolve(&self.expr)));
        match result {
            Err(_) => Err("the expression made the interpreter panic".into()),
            Ok(Ok(Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("the result is not a boolean: {other:?}")),
            Ok(Err(error)) => Err(error.to_string()),
        }
    }
}

/// Stack of the thread that parses one expression. The parser recurses once or more per
/// operator: an expression within [`limits::MAX_EXPRESSION_BYTES`] can still be a chain of
/// ~2000 operators, too deep for a 2 MiB task stack before the depth limit can reject it.
/// Only the pages used are touched.
const PARSE_STACK_BYTES: usize = 64 << 20;

/// Parses `source` and checks the size of its tree, on a thread with a large stack, so that
/// a deep expression is a compile error rather than a stack overflow (which would abort the
/// process). A panic of the parser (cel-parser 0.10 panics on some malformed input, e.g.
/// `1 +`) is a compile error too.
fn parse_bounded(source: &str, field: &str) -> Result<IdedExpr, Vec<CompileError>> {
    let owned_source = source.to_owned();
    let owned_field = field.to_owned();
    let parse = move || -> Result<IdedExpr, Vec<CompileError>> {
        let field = owned_field.as_str();
        let expr = Parser::new().parse(&owned_source).map_err(|errs| {
            errs.errors
                .iter()
                .map(|e| {
                    CompileError::new(
                        field,
                        format!(
                            "invalid CEL expression at line {} column {}: {}",
                            e.pos.0, e.pos.1, e.msg
                        ),
                    )
                })
                .collect::<Vec<_>>()
        })?;
        let too_big = limits::check_ast(&expr);
        if !too_big.is_empty() {
            // Dropping the tree recurses as deep as it is: still on this thread.
            drop(expr);
            return Err(too_big
                .into_iter()
                .map(|m| CompileError::new(field, m))
                .collect());
        }
        Ok(expr)
    };
    let handle = std::thread::Builder::new()
        .name("cel-parse".into())
        .stack_size(PARSE_STACK_BYTES)
        .spawn(parse)
        .map_err(|e| {
            vec![CompileError::new(
                field,
                format!("could not start the CEL parser: {e}"),
            )]
        })?;
    handle.join().unwrap_or_else(|_| {
        Err(vec![CompileError::new(
            field,
            "invalid CEL expression: the parser could not handle it (incomplete expression?)",
        )])
    })
}

#[derive(Debug, Clone)]
enum Node {
    Match(CelExpr),
    Not(CelExpr),
    All(Vec<CompiledCondition>),
    Any(Vec<CompiledCondition>),
    None(Vec<CompiledCondition>),
    MatchAny,
    Opa(Box<RegoCondition>),
}

/// A compiled `Condition`: parsed once at apply time, evaluated per request without
/// re-parsing. `Send + Sync`, so it can live in a shared configuration snapshot.
#[derive(Debug, Clone)]
pub struct CompiledCondition {
    node: Node,
    reads: Reads,
}

const ALL_FIELDS: &str = "match, matchAny, all, any, none, not, opa";

impl CompiledCondition {
    /// Compiles `c`, whose path in the resource is `field` (e.g. `spec.rules[0].condition`).
    ///
    /// Collects every error of the tree rather than stopping at the first. Besides CEL syntax,
    /// unknown functions, CEL expressions over the size limits (length, nesting, node count;
    /// see `FUNCTIONS.md`) and invalid or oversized regular expression literals, it rejects: a condition with zero or several fields set,
    /// `matchAny: false`, an empty `of` list (an empty `all` would otherwise match
    /// everything), and for `opa.inline`: an unparsable Rego module (line and column in the
    /// message), a module without a `match` rule, or one over 64 KiB.
    ///
    /// OPA conditions compiled this way see `input.attrs` as `{}`; see
    /// [`CompiledCondition::compile_with_attrs`].
    pub fn compile(c: &Condition, field: &str) -> Result<Self, Vec<CompileError>> {
        Self::compile_with_attrs(c, field, None)
    }

    /// Like [`CompiledCondition::compile`], with the `attrs` of the enclosing policy, which
    /// OPA conditions in the tree see as `input.attrs` (`{}` when `None`).
    pub fn compile_with_attrs(
        c: &Condition,
        field: &str,
        attrs: Option<&serde_json::Value>,
    ) -> Result<Self, Vec<CompileError>> {
        let set = c.set_fields();
        if set.len() != 1 {
            let message = if set.is_empty() {
                format!("no condition set: exactly one of {ALL_FIELDS} is required")
            } else {
                format!(
                    "exactly one of {ALL_FIELDS} may be set, found {}",
                    set.join(", ")
                )
            };
            return Err(vec![CompileError::new(field, message)]);
        }
        let node = if let Some(src) = &c.match_ {
            Node::Match(CelExpr::compile(src, &format!("{field}.match"))?)
        } else if let Some(src) = &c.not {
            Node::Not(CelExpr::compile(src, &format!("{field}.not"))?)
        } else if let Some(any) = c.match_any {
            if !any {
                return Err(vec![CompileError::new(
                    format!("{field}.matchAny"),
                    "matchAny must be true when set",
                )]);
            }
            Node::MatchAny
        } else if let Some(list) = &c.all {
            Node::All(compile_list(&list.of, &format!("{field}.all.of"), attrs)?)
        } else if let Some(list) = &c.any {
            Node::Any(compile_list(&list.of, &format!("{field}.any.of"), attrs)?)
        } else if let Some(list) = &c.none {
            Node::None(compile_list(&list.of, &format!("{field}.none.of"), attrs)?)
        } else if let Some(opa) = &c.opa {
            Node::Opa(Box::new(RegoCondition::compile(
                &opa.inline,
                &format!("{field}.opa.inline"),
                attrs,
            )?))
        } else {
            return Err(vec![CompileError::new(field, "unsupported condition")]);
        };
        let reads = match &node {
            Node::Match(e) | Node::Not(e) => reads(&e.expr),
            Node::All(v) | Node::Any(v) | Node::None(v) => {
                v.iter().fold(Reads::default(), |acc, c| acc.union(c.reads))
            }
            Node::MatchAny => Reads::default(),
            Node::Opa(r) => r.reads(),
        };
        Ok(CompiledCondition { node, reads })
    }

    /// True if any expression in the tree may read `ctx.request.http.bodyMap`, so the proxy
    /// knows whether to buffer and parse the body (decided from the AST for CEL; for Rego,
    /// conservatively from the text: `bodyMap`, or `input.ctx`, `input.ctx.request` or
    /// `input.ctx.request.http` used as a whole).
    pub fn reads_body(&self) -> bool {
        self.reads.body
    }

    /// What of `ctx.request.http` the tree may read (body, headers, query parameters), so
    /// the proxy builds only those parts of the context; same analysis as
    /// [`CompiledCondition::reads_body`].
    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// Whether the condition matches this request. Never fails: an evaluation error
    /// (missing field, type mismatch) or a non-boolean result counts as "not matched",
    /// including inside `not`, which matches only when its expression is exactly `false`.
    /// For OPA, the decision is `data.<package>.match`: undefined is "not matched", and a
    /// non-boolean is an error, treated as not matched.
    pub fn evaluate(&self, ctx: &EvalContext) -> bool {
        self.evaluate_noting(ctx, &mut None)
    }

    /// Like [`evaluate`](Self::evaluate), also noting each CEL expression that could not be
    /// evaluated (`expression: why`), so `explain` can say why a rule did not match.
    pub fn evaluate_with_notes(&self, ctx: &EvalContext, notes: &mut Vec<String>) -> bool {
        let mut sink = Some(std::mem::take(notes));
        let matched = self.evaluate_noting(ctx, &mut sink);
        *notes = sink.unwrap_or_default();
        matched
    }

    fn evaluate_noting(&self, ctx: &EvalContext, notes: &mut Option<Vec<String>>) -> bool {
        let mut cel = |e: &CelExpr| match notes {
            None => e.eval(ctx),
            Some(n) => match e.eval_detailed(ctx) {
                Ok(b) => Some(b),
                Err(why) => {
                    n.push(format!("{}: {why}", e.source));
                    None
                }
            },
        };
        match &self.node {
            Node::Match(e) => cel(e) == Some(true),
            Node::Not(e) => cel(e) == Some(false),
            Node::All(v) => v.iter().all(|c| c.evaluate_noting(ctx, notes)),
            Node::Any(v) => v.iter().any(|c| c.evaluate_noting(ctx, notes)),
            Node::None(v) => !v.iter().any(|c| c.evaluate_noting(ctx, notes)),
            Node::MatchAny => true,
            Node::Opa(r) => r.evaluate(ctx),
        }
    }
}

fn compile_list(
    of: &[Condition],
    field: &str,
    attrs: Option<&serde_json::Value>,
) -> Result<Vec<CompiledCondition>, Vec<CompileError>> {
    if of.is_empty() {
        return Err(vec![CompileError::new(
            field,
            "must contain at least one condition",
        )]);
    }
    let mut out = Vec::with_capacity(of.len());
    let mut errors = Vec::new();
    for (i, c) in of.iter().enumerate() {
        match CompiledCondition::compile_with_attrs(c, &format!("{field}[{i}]"), attrs) {
            Ok(c) => out.push(c),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
