//! Retry decisions: which failures are retried, how long to wait (exponential backoff with
//! jitter) and whether the retry budget allows another retry.

use postern_common::resources::{parse_duration, Retry, RetryOn};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How one try failed (before any byte reached the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection, or it closed before the response headers.
    Connect,
    /// No response headers in time.
    Timeout,
    /// The upstream answered with this retryable-looking status (429 or 5xx).
    Status(u16),
    /// Anything else (TLS, a missing secret, a failed token fetch): not retried on the same
    /// config, but the next fallback config is tried.
    Other,
}

impl Failure {
    /// The failure a response status stands for, if any (429 and 5xx).
    pub fn from_status(status: http::StatusCode) -> Option<Failure> {
        (status.as_u16() == 429 || status.is_server_error())
            .then_some(Failure::Status(status.as_u16()))
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
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            on: Vec::new(),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            budget: None,
        }
    }
}

impl RetryPolicy {
    /// Compiles `retry` (already validated; bad durations fall back to defaults).
    pub fn from_spec(retry: Option<&Retry>) -> Self {
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
                Budget::new(
                    b.percent,
                    b.min_retries,
                    b.window
                        .as_deref()
                        .and_then(|s| parse_duration(s).ok())
                        .unwrap_or(Duration::from_secs(10)),
                )
            }),
        }
    }

    /// Is `f` one of the failures `retry.on` lists?
    pub fn retryable(&self, f: Failure) -> bool {
        let kind = match f {
            Failure::Connect => RetryOn::Connect,
            Failure::Timeout => RetryOn::Timeout,
            Failure::Status(429) => RetryOn::Status429,
            Failure::Status(s) if (500..600).contains(&s) => RetryOn::Status5xx,
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

/// Retries allowed as a share of requests over a sliding window, kept in ten slots.
#[derive(Debug)]
pub struct Budget {
    percent: u32,
    min_retries: u32,
    slot: Duration,
    slots: Mutex<VecDeque<Slot>>,
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
        Budget {
            percent,
            min_retries,
            slot: (window / SLOTS).max(Duration::from_millis(1)),
            slots: Mutex::new(VecDeque::new()),
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
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.current(&mut slots, now).requests += 1;
    }

    /// Takes one retry at `now` if the window allows it.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
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
        RetryPolicy::from_spec(Some(&r))
    }

    #[test]
    fn retryable_follows_on_list() {
        let p = policy("{attempts: 3, on: [CONNECT, STATUS_429]}");
        assert!(p.retryable(Failure::Connect));
        assert!(p.retryable(Failure::Status(429)));
        assert!(!p.retryable(Failure::Status(503)));
        assert!(!p.retryable(Failure::Timeout));
        assert!(!p.retryable(Failure::Other));
        let d = policy("{attempts: 2}");
        assert!(d.retryable(Failure::Status(502)) && d.retryable(Failure::Connect));
        assert!(!d.retryable(Failure::Status(429)));
    }

    #[test]
    fn no_retry_section_means_one_attempt() {
        assert_eq!(RetryPolicy::from_spec(None).attempts, 1);
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
