//! Size limits on CEL conditions, checked at compile time so that no policy can stall the
//! gateway (see `FUNCTIONS.md`, "Limits", for why evaluation time is then bounded).
//!
//! The source is checked before parsing (length, bracket nesting), so that the recursive
//! parser never sees pathological input; the parsed AST is checked after (node count,
//! depth, regular expression literals).

use cel_parser::ast::{EntryExpr, Expr, IdedExpr};
use cel_parser::reference::Val;

/// Longest CEL expression accepted, in bytes of UTF-8 source.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// Deepest nesting accepted: of brackets `(`, `[`, `{` in the source, and of the parsed
/// expression tree (each operator, call, selection or literal is one level).
pub const MAX_NESTING: usize = 32;

/// Most nodes accepted in one parsed expression (literals, identifiers, selections, calls,
/// operators, list/map entries; a macro such as `all` counts its expansion).
pub const MAX_AST_NODES: usize = 1000;

/// Longest regular expression accepted by `matches`, in bytes (a literal pattern longer
/// than this is a compile error; a computed one makes the condition not match).
pub const MAX_REGEX_BYTES: usize = 1024;

/// Memory bound of one compiled regular expression (the `regex` crate's `size_limit`):
/// patterns such as `a{1000}{1000}` that would need more fail to compile.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Checks the source before parsing: its length and its bracket nesting (brackets inside
/// string literals do not count). `Err` holds the message of the compile error.
pub(crate) fn check_source(source: &str) -> Result<(), String> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "expression is {} bytes long, over the limit of {MAX_EXPRESSION_BYTES} bytes",
            source.len()
        ));
    }
    let depth = bracket_depth(source);
    if depth > MAX_NESTING {
        return Err(format!(
            "expression nests brackets {depth} deep, over the limit of {MAX_NESTING}"
        ));
    }
    // Long runs of prefix operators (`!!!!x`, `----1`) nest in the parser like brackets.
    let unary = unary_run(source);
    if unary > MAX_NESTING {
        return Err(format!(
            "expression chains {unary} prefix operators, over the nesting limit of {MAX_NESTING}"
        ));
    }
    Ok(())
}

/// Maximum depth of `(`, `[`, `{` outside string literals (a lexical approximation: quotes
/// of any CEL string form toggle a literal, backslash escapes are skipped).
fn bracket_depth(source: &str) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    max
}

/// Longest run of `!` and `-` (ignoring whitespace) outside string literals.
fn unary_run(source: &str) -> usize {
    let mut run = 0usize;
    let mut max = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '!' | '-' => {
                    run += 1;
                    max = max.max(run);
                }
                c if c.is_whitespace() => {}
                '"' | '\'' => {
                    quote = Some(c);
                    run = 0;
                }
                _ => run = 0,
            },
        }
    }
    max
}

/// Checks the parsed expression: node count, depth, and the regular expressions given to
/// `matches` as literals (length and syntax). Returns every problem found.
pub(crate) fn check_ast(e: &IdedExpr) -> Vec<String> {
    let mut stats = Stats::default();
    walk(e, 1, &mut stats);
    let mut errors = Vec::new();
    if stats.nodes > MAX_AST_NODES {
        errors.push(format!(
            "expression has {} nodes, over the limit of {MAX_AST_NODES}",
            stats.nodes
        ));
    }
    if stats.depth > MAX_NESTING {
        errors.push(format!(
            "expression nests {} levels deep, over the limit of {MAX_NESTING}",
            stats.depth
        ));
    }
    errors.extend(stats.regex_errors);
    errors
}

#[derive(Default)]
struct Stats {
    nodes: usize,
    depth: usize,
    regex_errors: Vec<String>,
}

fn walk(e: &IdedExpr, depth: usize, s: &mut Stats) {
    s.nodes += 1;
    s.depth = s.depth.max(depth);
    let next = depth + 1;
    match &e.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
        Expr::Select(sel) => walk(&sel.operand, next, s),
        Expr::Call(c) => {
            if c.func_name == "matches" {
                let pattern = match (&c.target, c.args.as_slice()) {
                    (Some(_), [p]) | (None, [_, p]) => Some(p),
                    _ => None,
                };
                if let Some(IdedExpr {
                    expr: Expr::Literal(Val::String(p)),
                    ..
                }) = pattern
                {
                    if let Err(message) = crate::functions::compile_regex(p) {
                        s.regex_errors.push(message);
                    }
                }
            }
            if let Some(t) = &c.target {
                walk(t, next, s);
            }
            for a in &c.args {
                walk(a, next, s);
            }
        }
        Expr::Comprehension(c) => {
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(part, next, s);
            }
        }
        Expr::List(l) => {
            for el in &l.elements {
                walk(el, next, s);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                walk_entry(&entry.expr, next, s);
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                walk_entry(&entry.expr, next, s);
            }
        }
    }
}

fn walk_entry(e: &EntryExpr, depth: usize, s: &mut Stats) {
    match e {
        EntryExpr::MapEntry(me) => {
            walk(&me.key, depth, s);
            walk(&me.value, depth, s);
        }
        EntryExpr::StructField(sf) => walk(&sf.value, depth, s),
    }
}

/// Most work one CEL expression may do in list macros (`all`, `exists`, `exists_one`,
/// `map`, `filter`) in one evaluation: each iteration costs the number of nodes of the
/// macro body plus 1/16 of the length of the accumulated list or map (which `map` and
/// `filter` copy on each step, cheaply). Past it, the evaluation fails, so the condition
/// does not match. About 15 ms of work in a release build at most.
pub const MAX_LOOP_COST: u64 = 250_000;

/// Name of the function that charges one macro iteration to the loop budget; the `@`
/// makes it impossible to write in a condition.
pub(crate) const LOOP_STEP_FUNCTION: &str = "@postern_loop_step";

/// Wraps the loop condition of every comprehension (the expansion of a list macro) in a
/// call of [`LOOP_STEP_FUNCTION`], which the interpreter evaluates once per iteration:
/// `@postern_loop_step(cond, weight, accumulator_name)` charges `weight` (the nodes of the
/// loop condition and step) plus the accumulator's length, then returns `cond`.
pub(crate) fn instrument_loops(e: &mut IdedExpr) {
    crate::ast::for_each_child_mut(e, &mut instrument_loops);
    let Expr::Comprehension(c) = &mut e.expr else {
        return;
    };
    let weight = count_nodes(&c.loop_cond) + count_nodes(&c.loop_step);
    let cond = std::mem::replace(
        c.loop_cond.as_mut(),
        IdedExpr {
            id: 0,
            expr: Expr::Unspecified,
        },
    );
    let literal = |v: Val| IdedExpr {
        id: 0,
        expr: Expr::Literal(v),
    };
    *c.loop_cond = IdedExpr {
        id: cond.id,
        expr: Expr::Call(cel_parser::ast::CallExpr {
            func_name: LOOP_STEP_FUNCTION.to_owned(),
            target: None,
            args: vec![
                cond,
                literal(Val::Int(i64::try_from(weight).unwrap_or(i64::MAX))),
                literal(Val::String(c.accu_var.clone())),
            ],
        }),
    };
}

fn count_nodes(e: &IdedExpr) -> usize {
    let mut stats = Stats::default();
    walk(e, 1, &mut stats);
    stats.nodes
}
