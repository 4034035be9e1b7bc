//! `spec.limits` of Services, Users and Groups: request rates, token rates and token budgets.
//!
//! A limit is declared where it belongs: on the Service (protects the provider account), on a
//! User (a per-caller allowance) or on a Group (shared or per-member allowances). The gateway
//! applies every limit of the Service, of the User and of each of the User's Groups to each
//! request; the first one that would be exceeded refuses it with 429.

use serde::{Deserialize, Serialize};

/// Shortest fixed window a rate limit may use.
pub const MIN_WINDOW_SECS: u64 = 1;
/// Longest fixed window; anything longer is a budget (`per: day` or `per: month`).
pub const MAX_WINDOW_SECS: u64 = 3600;
/// Largest `requests` or `tokens` value accepted (one trillion): catches typos such as a
/// misplaced exponent while leaving room for any real budget.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000;

/// One limit: at most `requests` requests, or `tokens` LLM tokens, per window `per`,
/// counted separately for each subject chosen by `by`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSpec {
    /// Unique among the limits of the same resource; shown in errors and the access log.
    pub name: String,
    /// Most requests per window. Exactly one of `requests` and `tokens` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Most LLM tokens (prompt + completion, as the provider reports them) per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// The window: `1s` to `1h` (`s`, `m` or `h`; fixed windows aligned to the Unix epoch), or
    /// `day` / `month` (calendar, UTC) for budgets.
    pub per: String,
    /// Whose usage is counted together; `user` when absent.
    #[serde(default)]
    pub by: LimitBy,
}

/// Whose usage one counter holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitBy {
    /// One counter per User (the default).
    #[default]
    User,
    /// One counter per Group of the caller, shared by all its members. A caller in no Group
    /// is counted on its own.
    Group,
    /// One counter per Credential, so each application key of a User has its own allowance.
    Credential,
    /// One counter for everybody: the limit protects the Service as a whole.
    Service,
}

impl LimitBy {
    /// The lowercase name used in YAML and in counter keys.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitBy::User => "user",
            LimitBy::Group => "group",
            LimitBy::Credential => "credential",
            LimitBy::Service => "service",
        }
    }
}

/// A parsed `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A fixed window of this many seconds, aligned to multiples since the Unix epoch.
    Window(u64),
    /// The calendar day in UTC.
    Day,
    /// The calendar month in UTC.
    Month,
}

impl Period {
    /// Parses `30s`, `1m`, `1h`, `day` or `month`, enforcing the window bounds.
    pub fn parse(s: &str) -> Result<Period, String> {
        match s {
            "day" => return Ok(Period::Day),
            "month" => return Ok(Period::Month),
            _ => {}
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let bad = || format!("{s:?} is not a period; use e.g. 1s, 10s, 1m, 1h, day or month");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n.saturating_mul(60),
            "h" => n.saturating_mul(3600),
            _ => return Err(bad()),
        };
        if !(MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(&secs) {
            return Err(format!(
                "{s:?} is out of range; windows run from 1s to 1h, use day or month for longer"
            ));
        }
        Ok(Period::Window(secs))
    }

    /// Day and month periods make a budget (refused as `insufficient_quota`).
    pub fn is_calendar(self) -> bool {
        matches!(self, Period::Day | Period::Month)
    }
}

/// Problems with `limits` as (field path, message) pairs, paths starting at `at`.
pub fn check_limits(at: &str, limits: &[LimitSpec], push: &mut impl FnMut(String, String)) {
    let mut names = std::collections::HashSet::new();
    for (i, l) in limits.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if let Err(m) = super::validate::check_name(&l.name) {
            push(format!("{at}.name"), m);
        } else if !names.insert(l.name.as_str()) {
            push(format!("{at}.name"), format!("{:?} is used twice", l.name));
        }
        match (l.requests, l.tokens) {
            (Some(_), Some(_)) | (None, None) => {
                push(at.clone(), "set exactly one of requests and tokens".into())
            }
            (Some(n), None) | (None, Some(n)) => {
                let field = if l.requests.is_some() {
                    "requests"
                } else {
                    "tokens"
                };
                if n == 0 || n > MAX_AMOUNT {
                    push(
                        format!("{at}.{field}"),
                        format!("{n} is out of range; use 1 to {MAX_AMOUNT}"),
                    );
                }
            }
        }
        if let Err(m) = Period::parse(&l.per) {
            push(format!("{at}.per"), m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let cases: &[(&str, Result<Period, ()>)] = &[
            ("1s", Ok(Period::Window(1))),
            ("10s", Ok(Period::Window(10))),
            ("1m", Ok(Period::Window(60))),
            ("60m", Ok(Period::Window(3600))),
            ("1h", Ok(Period::Window(3600))),
            ("day", Ok(Period::Day)),
            ("month", Ok(Period::Month)),
            ("0s", Err(())),
            ("2h", Err(())),
            ("61m", Err(())),
            ("1d", Err(())),
            ("s", Err(())),
            ("", Err(())),
            ("1 m", Err(())),
            ("99999999999999999999h", Err(())),
        ];
        for (s, want) in cases {
            assert_eq!(Period::parse(s).map_err(|_| ()), *want, "{s:?}");
        }
    }

    #[test]
    fn field_paths() {
        let l = |name: &str, r: Option<u64>, t: Option<u64>, per: &str| LimitSpec {
            name: name.into(),
            requests: r,
            tokens: t,
            per: per.into(),
            by: LimitBy::User,
        };
        let cases: Vec<(Vec<LimitSpec>, Vec<&str>)> = vec![
            (vec![l("rpm", Some(5), None, "1m")], vec![]),
            (vec![l("b", None, Some(10), "month")], vec![]),
            (vec![l("x", Some(1), Some(1), "1m")], vec!["spec.limits[0]"]),
            (vec![l("x", None, None, "1m")], vec!["spec.limits[0]"]),
            (
                vec![l("x", Some(0), None, "1m")],
                vec!["spec.limits[0].requests"],
            ),
            (
                vec![l("x", None, Some(MAX_AMOUNT + 1), "1m")],
                vec!["spec.limits[0].tokens"],
            ),
            (
                vec![l("x", Some(1), None, "week")],
                vec!["spec.limits[0].per"],
            ),
            (
                vec![l("Bad", Some(1), None, "1s")],
                vec!["spec.limits[0].name"],
            ),
            (
                vec![l("a", Some(1), None, "1s"), l("a", Some(1), None, "1s")],
                vec!["spec.limits[1].name"],
            ),
        ];
        for (limits, want) in cases {
            let mut got = Vec::new();
            check_limits("spec.limits", &limits, &mut |f, _| got.push(f));
            assert_eq!(got, want, "{limits:?}");
        }
    }

    #[test]
    fn yaml_shape() {
        let l: LimitSpec =
            serde_yaml::from_str("{name: rpm, requests: 5, per: 1m, by: credential}").unwrap();
        assert_eq!(l.by, LimitBy::Credential);
        let d: LimitSpec = serde_yaml::from_str("{name: rpm, requests: 5, per: 1m}").unwrap();
        assert_eq!(d.by, LimitBy::User);
        assert!(
            serde_yaml::from_str::<LimitSpec>("{name: a, requests: 1, per: 1m, x: 1}").is_err()
        );
        assert!(
            serde_yaml::from_str::<LimitSpec>("{name: a, requests: 1, per: 1m, by: team}").is_err()
        );
    }
}
