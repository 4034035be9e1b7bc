//! Retry decisions: which failures may be sent again, how long to wait (exponential backoff
//! with jitter) and whether the retry budget allows another retry.
//!
//! The one rule that keeps a paid request from being charged twice lives in [`decide`]: a
//! request that may have reached the upstream is sent again (retried, or handed to the next
//! fallback config) only when its method is idempotent or the config sets
//! `retry.allowNonIdempotent`.

use postern_common::resources::{parse_duration, Retry, RetryOn};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What went wrong with one try (before any byte reached the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No connection, or it closed before the response headers.
    Connect,
    /// No connection or no response headers in time.
    Timeout,
    /// The upstream answered with this retryable-looking status (429 or 5xx).
    Status(u16),
    /// Anything else (TLS, a missing secret, a failed token fetch): not retried on the same
    /// config, but the next fallback config may be tried.
    Other,
}

/// How far a failed try got towards the upstream, which decides whether sending it again can
/// make the upstream act twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Provably not written: connect refused, DNS, TLS handshake, a connection that hyper
    /// handed the request back from unsent, an HTTP/2 `REFUSED_STREAM`, a failure before
    /// sending (token fetch, rewrite).
    NotSent,
    /// The upstream may have received and acted on it: the connection closed or reset after
    /// the request was written, no response headers in time, or a 502/504 (or unknown 5xx)
    /// from an intermediary that may have passed it on.
    MaybeSent,
    /// The upstream answered that it did not carry the request out: 429, 500, 501, 503, 505.
    NotProcessed,
}

/// One failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub cause: Cause,
    pub delivery: Delivery,
}

impl Failure {
    /// A failure before anything was written.
    pub fn not_sent(cause: Cause) -> Failure {
        Failure {
            cause,
            delivery: Delivery::NotSent,
        }
    }

    /// A failure after the request may have reached the upstream.
    pub fn maybe_sent(cause: Cause) -> Failure {
        Failure {
            cause,
            delivery: Delivery::MaybeSent,
        }
    }

    /// The failure a response status stands for, if any (429 and 5xx). 429 and the 5xx that
    /// RFC 9110 defines as "did not fulfil the request" (500, 501, 503, 505) mean it was not
    /// processed; 502 and 504 come from a gateway that may have passed the request on, and an
    /// unregistered 5xx says nothing, so those count as maybe delivered.
    pub fn from_status(status: http::StatusCode) -> Option<Failure> {
        let code = status.as_u16();
        if code != 429 && !status.is_server_error() {
            return None;
        }
        let delivery = match code {
            429 | 500 | 501 | 503 | 505 => Delivery::NotProcessed,
            _ => Delivery::MaybeSent,
        };
        Some(Failure {
            cause: Cause::Status(code),
            delivery,
        })
    }

    /// The outcome word of the access log's `attempts` for a failure without a status.
    pub fn outcome(&self) -> &'static str {
        match self.cause {
            Cause::Connect => "connect",
            Cause::Timeout => "timeout",
            Cause::Status(_) | Cause::Other => "error",
        }
    }
}

/// Methods that RFC 9110 section 9.2.2 defines as idempotent: sending one twice has the same
/// effect on the server as sending it once.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method as M;
    [M::GET, M::HEAD, M::OPTIONS, M::PUT, M::DELETE, M::TRACE].contains(method)
}

/// Where a failed try stands: what is left to try for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The body can be sent again (it was buffered).
    pub replayable: bool,
    /// This config has tries left.
    pub tries_left: bool,
    /// Another fallback config follows this one.
    pub fallback_left: bool,
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try this config again (the next endpoint when load balancing).
    Retry,
    /// Move on to the next config of the rule's `configNames`.
    FallBack,
    /// Stop: answer the caller with this failure (an upstream status is passed on as is).
    GiveUp,
    /// Stop because the request may have reached the upstream and may not be sent again,
    /// though a retry or fallback would otherwise have happened. Distinct from
    /// [`Next::GiveUp`] so the log can say how to allow it.
    Unsafe,
}

/// Decides what follows a failed try of a `method` request. `rules` is the config's retry
/// policy; `budget` is asked (and so charged) only when a retry would otherwise happen.
pub fn decide(
    method: &http::Method,
    failure: Failure,
    rules: &RetryPolicy,
    opts: Options,
    budget: impl FnOnce() -> bool,
) -> Next {
    let would_retry = opts.tries_left && rules.retryable(failure.cause);
    if !opts.replayable || !(would_retry || opts.fallback_left) {
        return Next::GiveUp;
    }
    let safe = failure.delivery != Delivery::MaybeSent
        || is_idempotent(method)
        || rules.allow_non_idempotent;
    if !safe {
        return Next::Unsafe;
    }
    if would_retry && budget() {
        return Next::Retry;
    }
    if opts.fallback_left {
        Next::FallBack
    } else {
        Next::GiveUp
    }
}

/// A config's compiled `upstream.retry`.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub attempts: u32,
    on: Vec<RetryOn>,
    backoff: Duration,
    max_backoff: Duration,
    budget: Option<Budget>,
    /// `retry.allowNonIdempotent`: maybe-delivered requests of any method may be sent again.
    pub allow_non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            on: Vec::new(),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            budget: None,
            allow_non_idempotent: false,
        }
    }
}

impl RetryPolicy {
    /// Compiles `retry` (already validated; bad durations fall back to defaults). The budget
    /// counts into `counters`, which outlive this policy (see [`BudgetCounters`]).
    pub fn from_spec(retry: Option<&Retry>, counters: BudgetCounters) -> Self {
        let Some(r) = retry else {
            return RetryPolicy::default();
        };
        let backoff = r
            .backoff
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(Duration::from_millis(100));
        let max_backoff = r
            .max_backoff
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or_else(|| (backoff * 10).min(Duration::from_secs(10)));
        RetryPolicy {
            attempts: r
                .attempts
                .clamp(1, postern_common::resources::MAX_RETRY_ATTEMPTS),
            on: r.on.clone(),
            backoff,
            max_backoff,
            budget: r.budget.as_ref().map(|b| {
                Budget::with_counters(
                    b.percent,
                    b.min_retries,
                    b.window
                        .as_deref()
                        .and_then(|s| parse_duration(s).ok())
                        .unwrap_or(Duration::from_secs(10)),
                    counters,
                )
            }),
            allow_non_idempotent: r.allow_non_idempotent,
        }
    }

    /// Is `cause` one of the failures `retry.on` lists?
    pub fn retryable(&self, cause: Cause) -> bool {
        let kind = match cause {
            Cause::Connect => RetryOn::Connect,
            Cause::Timeout => RetryOn::Timeout,
            Cause::Status(429) => RetryOn::Status429,
            Cause::Status(s) if (500..600).contains(&s) => RetryOn::Status5xx,
            _ => return false,
        };
        self.on.contains(&kind)
    }

    /// The wait before retry number `retry` (1 for the first retry): `backoff * 2^(retry-1)`,
    /// capped at `maxBackoff`, then jittered into its upper half with `unit` in `[0, 1)`.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        exp / 2 + exp.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// Counts a request against the budget's window.
    pub fn note_request(&self) {
        if let Some(b) = &self.budget {
            b.note_request(Instant::now());
        }
    }

    /// Takes a retry from the budget; false when the budget is spent.
    pub fn allow_retry(&self) -> bool {
        self.budget
            .as_ref()
            .is_none_or(|b| b.try_retry(Instant::now()))
    }
}

/// The live counts of a retry budget. Shared (`Arc`) so they can be kept across a re-apply of
/// the Service: the compiled policy is rebuilt, the counts carry on.
#[derive(Debug, Clone, Default)]
pub struct BudgetCounters(Arc<Mutex<VecDeque<Slot>>>);

/// Retries allowed as a share of requests over a sliding window, kept in ten slots.
#[derive(Debug)]
pub struct Budget {
    percent: u32,
    min_retries: u32,
    slot: Duration,
    slots: BudgetCounters,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    start: Instant,
    requests: u64,
    retries: u64,
}

const SLOTS: u32 = 10;

impl Budget {
    /// `percent` retries per 100 requests in `window`, and always at least `min_retries`.
    pub fn new(percent: u32, min_retries: u32, window: Duration) -> Self {
        Budget::with_counters(percent, min_retries, window, BudgetCounters::default())
    }

    /// [`Budget::new`] counting into existing `counters`.
    pub fn with_counters(
        percent: u32,
        min_retries: u32,
        window: Duration,
        counters: BudgetCounters,
    ) -> Self {
        Budget {
            percent,
            min_retries,
            slot: (window / SLOTS).max(Duration::from_millis(1)),
            slots: counters,
        }
    }

    fn current<'a>(&self, slots: &'a mut VecDeque<Slot>, now: Instant) -> &'a mut Slot {
        let horizon = self.slot * SLOTS;
        while slots
            .front()
            .is_some_and(|s| now.duration_since(s.start) >= horizon)
        {
            slots.pop_front();
        }
        let fresh = slots
            .back()
            .is_none_or(|s| now.duration_since(s.start) >= self.slot);
        if fresh {
            slots.push_back(Slot {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        slots.back_mut().expect("just pushed")
    }

    /// Counts one request at `now`.
    pub fn note_request(&self, now: Instant) {
        let mut slots = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        self.current(&mut slots, now).requests += 1;
    }

    /// Takes one retry at `now` if the window allows it.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut slots = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        self.current(&mut slots, now);
        let (requests, retries) = slots
            .iter()
            .fold((0u64, 0u64), |(q, r), s| (q + s.requests, r + s.retries));
        let allowed = (requests * u64::from(self.percent) / 100).max(u64::from(self.min_retries));
        if retries < allowed {
            self.current(&mut slots, now).retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        let r: Retry = serde_yaml::from_str(yaml).unwrap();
        RetryPolicy::from_spec(Some(&r), BudgetCounters::default())
    }

    #[test]
    fn retryable_follows_on_list() {
        let p = policy("{attempts: 3, on: [CONNECT, STATUS_429]}");
        assert!(p.retryable(Cause::Connect));
        assert!(p.retryable(Cause::Status(429)));
        assert!(!p.retryable(Cause::Status(503)));
        assert!(!p.retryable(Cause::Timeout));
        assert!(!p.retryable(Cause::Other));
        let d = policy("{attempts: 2}");
        assert!(d.retryable(Cause::Status(502)) && d.retryable(Cause::Connect));
        assert!(!d.retryable(Cause::Status(429)));
    }

    #[test]
    fn no_retry_section_means_one_attempt() {
        let p = RetryPolicy::from_spec(None, BudgetCounters::default());
        assert_eq!(p.attempts, 1);
        assert!(!p.allow_non_idempotent);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        let p = policy("{attempts: 5, backoff: 100ms, maxBackoff: 300ms}");
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(300), "capped");
        assert_eq!(p.backoff(30, 0.0), Duration::from_millis(150));
        let mid = p.backoff(2, 0.5);
        assert!(mid > Duration::from_millis(100) && mid < Duration::from_millis(200));
    }

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let b = Budget::new(20, 1, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..10 {
            b.note_request(t0);
        }
        assert!(b.try_retry(t0));
        assert!(b.try_retry(t0));
        assert!(!b.try_retry(t0), "20% of 10 is 2");
        // once the window has slid past, the old requests and retries are forgotten
        let later = t0 + Duration::from_secs(11);
        assert!(b.try_retry(later), "min_retries still allowed");
        assert!(!b.try_retry(later));
    }
}

#[cfg(test)]
#[path = "retry_decide_tests.rs"]
mod decide_tests;
