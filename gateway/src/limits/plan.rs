//! Which limits apply to a request and which counter each one charges.

use super::window::{window, Window};
use postern_common::resources::{LimitBy, LimitSpec, Period};

/// Where a limit is declared, as shown in errors and the access log (`Service/gemini`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    Service(&'a str),
    User(&'a str),
    Group(&'a str),
}

impl Owner<'_> {
    fn label(&self) -> String {
        match self {
            Owner::Service(n) => format!("Service/{n}"),
            Owner::User(n) => format!("User/{n}"),
            Owner::Group(n) => format!("Group/{n}"),
        }
    }
}

/// Who is calling, as far as `by` is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user: &'a str,
    /// The User's `spec.groups`.
    pub groups: &'a [String],
    /// The Credential behind the caller's Session.
    pub credential: &'a str,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
}

/// One limit applied to one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// `Service/gemini/rpm`: owner and limit name, for the 429 and the access log.
    pub label: String,
    /// The counter: label plus subject (`Service/gemini/rpm|user:alice`). The window start
    /// is kept beside it, not in it, so one slot per key is reused across windows.
    pub key: String,
    pub unit: Unit,
    pub limit: u64,
    pub period: Period,
    /// The `per` as declared, for messages.
    pub per: String,
}

impl Charge {
    /// The window this charge counts in at `now`.
    pub fn window(&self, now: i64) -> Window {
        window(self.period, now)
    }

    /// Budgets (calendar periods) are refused as `insufficient_quota`, rates as
    /// `rate_limit_error`.
    pub fn is_budget(&self) -> bool {
        self.period.is_calendar()
    }
}

/// The charges of `limits` declared on `owner` for `subject`, appended to `out`.
///
/// `by: group` on a Group's own limit counts that Group as a whole; on a Service or User limit
/// it counts each of the caller's Groups separately (a caller in no Group is counted alone,
/// so the limit still applies).
pub fn charges(
    owner: Owner<'_>,
    limits: &[LimitSpec],
    subject: &Subject<'_>,
    out: &mut Vec<Charge>,
) {
    for l in limits {
        let (unit, limit) = match (l.requests, l.tokens) {
            (Some(n), None) => (Unit::Requests, n),
            (None, Some(n)) => (Unit::Tokens, n),
            _ => continue, // refused by validation; never in a snapshot
        };
        let Ok(period) = Period::parse(&l.per) else {
            continue;
        };
        let label = format!("{}/{}", owner.label(), l.name);
        let mut push = |subject_key: String| {
            out.push(Charge {
                key: format!("{label}|{}:{subject_key}", l.by.as_str()),
                label: label.clone(),
                unit,
                limit,
                period,
                per: l.per.clone(),
            })
        };
        match (l.by, owner) {
            (LimitBy::User, _) => push(subject.user.to_string()),
            (LimitBy::Credential, _) => push(subject.credential.to_string()),
            (LimitBy::Service, _) => push(String::new()),
            (LimitBy::Group, Owner::Group(g)) => push(g.to_string()),
            (LimitBy::Group, _) if subject.groups.is_empty() => {
                push(format!("user/{}", subject.user))
            }
            (LimitBy::Group, _) => {
                for g in subject.groups {
                    push(g.clone());
                }
            }
        }
    }
}
