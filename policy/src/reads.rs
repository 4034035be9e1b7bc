//! Static analysis of a parsed CEL expression: does it read the request body?
//!
//! The proxy buffers and parses a body only when some compiled condition needs it, so this
//! must never say "no" for an expression that can observe `ctx.request.http.bodyMap`. It
//! walks the AST: a field selection of `bodyMap`, a `"bodyMap"` string literal (index
//! access such as `ctx.request.http["bodyMap"]`), or use of `ctx`, `ctx.request` or
//! `ctx.request.http` as a whole value (e.g. iterated by a macro) all count as reading it.

use cel_parser::ast::{EntryExpr, Expr, IdedExpr};
use cel_parser::reference::Val;

const BODY_PATH: [&str; 4] = ["ctx", "request", "http", "bodyMap"];

/// True if evaluating `e` may read `ctx.request.http.bodyMap`.
pub(crate) fn reads_body(e: &IdedExpr) -> bool {
    if let Some(path) = select_path(e) {
        return path_reads_body(&path);
    }
    match &e.expr {
        Expr::Unspecified | Expr::Ident(_) => false,
        Expr::Literal(Val::String(s)) => s == "bodyMap",
        Expr::Literal(_) => false,
        Expr::Select(s) => s.field == "bodyMap" || reads_body(&s.operand),
        Expr::Call(c) => {
            c.target.as_deref().is_some_and(reads_body) || c.args.iter().any(reads_body)
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .any(|e| reads_body(e)),
        Expr::List(l) => l.elements.iter().any(reads_body),
        Expr::Map(m) => m.entries.iter().any(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => reads_body(&me.key) || reads_body(&me.value),
            EntryExpr::StructField(sf) => reads_body(&sf.value),
        }),
        Expr::Struct(s) => s.entries.iter().any(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => reads_body(&me.key) || reads_body(&me.value),
            EntryExpr::StructField(sf) => reads_body(&sf.value),
        }),
    }
}

/// `a.b.c` as `["a", "b", "c"]` when `e` is a chain of field selections on an identifier.
fn select_path(e: &IdedExpr) -> Option<Vec<&str>> {
    match &e.expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(s) => {
            let mut path = select_path(&s.operand)?;
            path.push(s.field.as_str());
            Some(path)
        }
        _ => None,
    }
}

/// A path reads the body if it selects `bodyMap` anywhere, goes through
/// `ctx.request.http.bodyMap`, or stops at an ancestor of it (the whole value escapes).
fn path_reads_body(path: &[&str]) -> bool {
    if path.contains(&"bodyMap") {
        return true;
    }
    path.len() < BODY_PATH.len() && path == &BODY_PATH[..path.len()]
}
