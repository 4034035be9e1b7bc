//! Walking a parsed CEL expression: the one place that knows where an expression's direct
//! children are, so rewrites of the tree (namespaced functions, loop budgets) only say what
//! they do to a node.

use cel_parser::ast::{EntryExpr, Expr, IdedExpr};

/// Calls `f` on each direct child of `e` (call target and arguments, comprehension parts,
/// list elements, map keys and values, struct field values).
pub(crate) fn for_each_child_mut(e: &mut IdedExpr, f: &mut dyn FnMut(&mut IdedExpr)) {
    match &mut e.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
        Expr::Select(s) => f(&mut s.operand),
        Expr::Call(c) => {
            if let Some(t) = c.target.as_deref_mut() {
                f(t);
            }
            c.args.iter_mut().for_each(&mut *f);
        }
        Expr::Comprehension(c) => {
            for part in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                f(part);
            }
        }
        Expr::List(l) => l.elements.iter_mut().for_each(&mut *f),
        Expr::Map(m) => m.entries.iter_mut().for_each(|en| entry(&mut en.expr, f)),
        Expr::Struct(s) => s.entries.iter_mut().for_each(|en| entry(&mut en.expr, f)),
    }
}

fn entry(e: &mut EntryExpr, f: &mut dyn FnMut(&mut IdedExpr)) {
    match e {
        EntryExpr::MapEntry(me) => {
            f(&mut me.key);
            f(&mut me.value);
        }
        EntryExpr::StructField(sf) => f(&mut sf.value),
    }
}
