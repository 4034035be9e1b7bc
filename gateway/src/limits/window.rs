//! Which window a moment falls in, for each kind of `per`.

use chrono::{Datelike, TimeZone, Utc};
use postern_common::resources::Period;

/// A half-open window `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// Whole seconds from `now` until the window ends, at least 1 (the `Retry-After` value).
    pub fn retry_after(&self, now: i64) -> u64 {
        (self.end - now).max(1) as u64
    }
}

/// The window of `period` holding `now`.
///
/// Rate windows are fixed and aligned to multiples of their length since the Unix epoch, so
/// every gateway process (and a restarted one) agrees on them without coordination; budgets
/// follow the UTC calendar because that is how providers bill and how people read them.
pub fn window(period: Period, now: i64) -> Window {
    match period {
        Period::Window(secs) => {
            let len = secs.max(1) as i64;
            let start = now - now.rem_euclid(len);
            Window {
                start,
                end: start + len,
            }
        }
        Period::Day => {
            let start = now - now.rem_euclid(86_400);
            Window {
                start,
                end: start + 86_400,
            }
        }
        Period::Month => {
            let t = Utc.timestamp_opt(now, 0).single().unwrap_or_default();
            let (y, m) = (t.year(), t.month());
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let first = |y: i32, m: u32| {
                Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
                    .single()
                    .map_or(0, |d| d.timestamp())
            };
            Window {
                start: first(y, m),
                end: first(ny, nm),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn windows() {
        let cases = [
            (
                Period::Window(60),
                "2026-03-04T10:20:30Z",
                "2026-03-04T10:20:00Z",
                "2026-03-04T10:21:00Z",
                30,
            ),
            (
                Period::Window(1),
                "2026-03-04T10:20:30Z",
                "2026-03-04T10:20:30Z",
                "2026-03-04T10:20:31Z",
                1,
            ),
            (
                Period::Window(3600),
                "2026-03-04T10:59:59Z",
                "2026-03-04T10:00:00Z",
                "2026-03-04T11:00:00Z",
                1,
            ),
            (
                Period::Window(10),
                "2026-03-04T10:20:30Z",
                "2026-03-04T10:20:30Z",
                "2026-03-04T10:20:40Z",
                10,
            ),
            (
                Period::Day,
                "2026-03-04T23:00:00Z",
                "2026-03-04T00:00:00Z",
                "2026-03-05T00:00:00Z",
                3600,
            ),
            (
                Period::Month,
                "2026-02-28T12:00:00Z",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
                43_200,
            ),
            (
                Period::Month,
                "2026-12-31T23:59:00Z",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
                60,
            ),
            (
                Period::Month,
                "2028-02-29T00:00:00Z",
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
                86_400,
            ),
        ];
        for (p, now, start, end, retry) in cases {
            let w = window(p, ts(now));
            assert_eq!(
                w,
                Window {
                    start: ts(start),
                    end: ts(end)
                },
                "{p:?} at {now}"
            );
            assert_eq!(w.retry_after(ts(now)), retry, "{p:?} at {now}");
        }
    }
}
