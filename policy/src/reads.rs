//! Static analysis of a parsed CEL expression: which costly parts of `ctx.request.http`
//! (the body, the headers, the query parameters) can it read?
//!
//! The proxy buffers and parses a body, and builds the policy context's header and query
//! maps, only when some compiled condition needs them, so this must never say "no" for an
//! expression that can observe the field. It walks the AST: a field selection of the
//! field's name (e.g. `bodyMap`), a string literal of it (index access such as
//! `ctx.request.http["bodyMap"]`), or use of `ctx`, `ctx.request` or `ctx.request.http` as
//! a whole value (e.g. iterated by a macro) all count as reading it.

use cel_parser::ast::{EntryExpr, Expr, IdedExpr};
use cel_parser::reference::Val;

/// The fields of `ctx.request.http` that cost something to build, and whether a condition
/// may read each. Everything else in `ctx` is built for every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    /// `bodyMap`: the body must be buffered and parsed.
    pub body: bool,
    /// `headers`: every header is copied into the context.
    pub headers: bool,
    /// `queryParams`: the query string is decoded into the context.
    pub query: bool,
}

impl Reads {
    /// Everything: what a context built without analysis holds.
    pub const ALL: Reads = Reads {
        body: true,
        headers: true,
        query: true,
    };

    /// What either reads.
    pub fn union(self, other: Reads) -> Reads {
        Reads {
            body: self.body || other.body,
            headers: self.headers || other.headers,
            query: self.query || other.query,
        }
    }

    /// The same analysis, given a test of "may this read field `name`".
    pub(crate) fn from_fn(reads: impl Fn(&str) -> bool) -> Reads {
        Reads {
            body: reads("bodyMap"),
            headers: reads("headers"),
            query: reads("queryParams"),
        }
    }
}

/// What evaluating `e` may read of `ctx.request.http`.
pub(crate) fn reads(e: &IdedExpr) -> Reads {
    Reads::from_fn(|field| reads_field(e, field))
}

/// True if evaluating `e` may read `ctx.request.http.<field>`.
pub(crate) fn reads_field(e: &IdedExpr, field: &str) -> bool {
    if let Some(path) = select_path(e) {
        return path_reads(&path, field);
    }
    let reads_body = |e: &IdedExpr| reads_field(e, field);
    match &e.expr {
        Expr::Unspecified | Expr::Ident(_) => false,
        Expr::Literal(Val::String(s)) => s == field,
        Expr::Literal(_) => false,
        Expr::Select(s) => s.field == field || reads_body(&s.operand),
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

/// A path reads `field` if it selects it anywhere, goes through
/// `ctx.request.http.<field>`, or stops at an ancestor of it (the whole value escapes).
fn path_reads(path: &[&str], field: &str) -> bool {
    if path.contains(&field) {
        return true;
    }
    const HTTP_PATH: [&str; 3] = ["ctx", "request", "http"];
    path.len() <= HTTP_PATH.len() && path == &HTTP_PATH[..path.len()]
}
