//! Rate limits and token budgets (`spec.limits` on Services, Users and Groups).
//!
//! The request path calls [`Limiter::plan`] once it knows the caller (to learn whether the
//! body must be read), [`Limiter::admit`] after the policy allowed the request and before
//! anything goes upstream, and [`Admission::settle`] when the response has ended and its
//! usage is known. All of it works on in-memory counters ([`counters`]); the store is only
//! touched by [`Limiter::flush`] (every second, off the hot path, and at shutdown) and
//! [`Limiter::load`] (at start). A crash therefore loses at most the last second of counting,
//! which can only let callers spend slightly more, never refuse them wrongly.
//!
//! Pure logic (windows, keys, estimates, counters) lives apart from I/O so it is unit-tested
//! without sockets.

pub mod counters;
pub mod estimate;
pub mod plan;
mod refusal;
#[cfg(test)]
mod tests;
pub mod window;

pub use refusal::Refusal;

use crate::state::{Principal, ServiceEntry, Snapshot};
use crate::store::{Store, StoreError};
use counters::{CounterRow, Counters, Held, Take};
use plan::{Charge, Owner, Subject, Unit};
use postern_common::resources::{Kind, Resource};
use std::sync::Arc;

/// Tokens reserved for the completion of a request that sets no `max_tokens`.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 1000;

/// The limits that apply to one request, worked out before its body is read.
#[derive(Debug, Default)]
pub struct Plan {
    charges: Vec<Charge>,
}

impl Plan {
    /// A token limit applies, so the body must be buffered to estimate the reservation
    /// (`max_tokens` and the prompt's length). Request-only limits never force buffering.
    pub fn needs_body(&self) -> bool {
        self.charges.iter().any(|c| c.unit == Unit::Tokens)
    }

    /// No limit applies.
    pub fn is_empty(&self) -> bool {
        self.charges.is_empty()
    }
}

/// Every counter of the gateway and the estimate settings.
pub struct Limiter {
    counters: Counters,
    default_completion_tokens: u64,
}

impl Limiter {
    /// A limiter with empty counters; `default_completion_tokens` is reserved for requests
    /// that set no completion cap.
    pub fn new(default_completion_tokens: u64) -> Self {
        Limiter {
            counters: Counters::default(),
            default_completion_tokens,
        }
    }

    /// The counters, for inspection and tests.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The limits of `service`, of the caller's User and of each of its (existing) Groups.
    pub fn plan(&self, snap: &Snapshot, service: &ServiceEntry, who: &Principal) -> Plan {
        let user = &who.user.spec;
        let subject = Subject {
            user: &who.user.name,
            groups: &user.groups,
            credential: &who.session.info.credential,
        };
        let mut charges = Vec::new();
        plan::charges(
            Owner::Service(&service.name),
            &service.spec.limits,
            &subject,
            &mut charges,
        );
        plan::charges(
            Owner::User(&who.user.name),
            &user.limits,
            &subject,
            &mut charges,
        );
        for g in &user.groups {
            if let Some(Resource::Group { spec, .. }) =
                snap.resources.get(&(Kind::Group, g.clone()))
            {
                plan::charges(Owner::Group(g), &spec.limits, &subject, &mut charges);
            }
        }
        Plan { charges }
    }

    /// Checks and takes every charge of `plan` at `now`: one request from each request
    /// limit, the estimated tokens (from the buffered JSON `body`) from each token limit.
    /// All or nothing: when one limit refuses, what the others took is given back.
    pub fn admit(
        self: &Arc<Self>,
        plan: Plan,
        body: Option<&serde_json::Value>,
        now: i64,
    ) -> Result<Admission, Refusal> {
        let mut admission = Admission {
            limiter: self.clone(),
            held: Vec::new(),
            counted: Vec::new(),
        };
        if plan.is_empty() {
            return Ok(admission);
        }
        let estimate = estimate::estimate_tokens(body, self.default_completion_tokens);
        for c in &plan.charges {
            let window = c.window(now);
            let take = Take {
                key: c.key.clone(),
                window,
                limit: c.limit,
                amount: if c.unit == Unit::Tokens { estimate } else { 1 },
                reserve: c.unit == Unit::Tokens,
            };
            match self.counters.try_take(&take) {
                Ok(Some(h)) => admission.held.push(h),
                Ok(None) => admission.counted.push(Held {
                    key: take.key,
                    window_start: window.start,
                    amount: 1,
                }),
                Err(counters::Exceeded) => {
                    admission.undo();
                    return Err(Refusal::new(c, window.retry_after(now)));
                }
            }
        }
        Ok(admission)
    }

    /// Writes the counters changed since the last flush and prunes ended windows from the
    /// store. Called from a background task every second and once at shutdown.
    pub fn flush(&self, store: &Store, now: i64) -> Result<usize, StoreError> {
        let rows = self.counters.take_dirty(now);
        if let Err(e) = store.save_limit_counters(&rows, now) {
            self.counters.redirty(&rows);
            return Err(e);
        }
        Ok(rows.len())
    }

    /// Restores the counters of windows that have not ended yet.
    pub fn load(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let rows: Vec<CounterRow> = store.load_limit_counters(now)?;
        self.counters.load(rows, now);
        Ok(())
    }
}

/// An admitted request's reservations. Settle it when the response ends; dropping it
/// unsettled (the request never reached the upstream) gives the token reservations back.
pub struct Admission {
    limiter: Arc<Limiter>,
    /// Token reservations to settle.
    held: Vec<Held>,
    /// Requests counted, given back only when another limit refuses the same request.
    counted: Vec<Held>,
}

impl Admission {
    /// Replaces each token reservation with the reported total (`usage`), or keeps it as
    /// spent when the response reported none (an interrupted stream may still have cost
    /// tokens, so the conservative choice is to count the estimate).
    pub fn settle(mut self, total_tokens: Option<u64>) {
        for h in self.held.drain(..) {
            self.limiter.counters.settle(&h, total_tokens);
        }
    }

    /// Gives back everything taken (used when a later limit refuses the request).
    fn undo(&mut self) {
        for h in self.held.drain(..) {
            self.limiter.counters.release(&h);
        }
        for h in self.counted.drain(..) {
            self.limiter.counters.uncount(&h);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for h in self.held.drain(..) {
            self.limiter.counters.release(&h);
        }
    }
}
