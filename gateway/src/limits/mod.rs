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
//! When several gateways share the store ([`crate::store::StoreBackend::is_shared`]), each
//! counter is spent from grants of the window's allowance taken from the store ([`shared`],
//! I/O in `grants.rs`): [`Limiter::admit_async`] asks the store only when the grants held do
//! not cover a request, and the flush charges and returns instead of saving counters.
//!
//! Pure logic (windows, keys, estimates, counters, grant rules) lives apart from I/O so it is
//! unit-tested without sockets.

pub mod counters;
pub mod estimate;
mod grants;
pub mod plan;
mod refusal;
pub mod shared;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod test_store;
#[cfg(test)]
mod tests;
pub mod window;

pub use grants::GrantStore;
pub use refusal::Refusal;

use crate::state::{Principal, ServiceEntry, Snapshot};
use crate::store::{Store, StoreError};
use counters::{CounterRow, Counters, Held, SharedTake, Take};
use plan::{Charge, Owner, Subject, Unit};
use postern_common::resources::{Kind, Resource};
use std::sync::atomic::{AtomicBool, Ordering};
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

    /// A plan of charges built with [`plan::charges`], for tests driving a limiter without
    /// a snapshot (`Limiter::plan` is what the request path uses).
    pub fn from_charges(charges: Vec<Charge>) -> Self {
        Plan { charges }
    }
}

/// Every counter of the gateway and the estimate settings.
pub struct Limiter {
    counters: Counters,
    default_completion_tokens: u64,
    /// The store is shared by gateways (set by [`Limiter::load`]): spend grants.
    shared: AtomicBool,
    /// Gateways assumed to share the store (`--limit-gateways`).
    gateways: u32,
    /// The store failed the last limit call: spend the offline allowance until a flush
    /// reaches it again.
    offline: AtomicBool,
    /// Woken when a grant round trip's answer has been applied, for requests waiting on it.
    answered: tokio::sync::Notify,
}

impl Limiter {
    /// A limiter with empty counters; `default_completion_tokens` is reserved for requests
    /// that set no completion cap.
    pub fn new(default_completion_tokens: u64) -> Self {
        Limiter {
            counters: Counters::default(),
            default_completion_tokens,
            shared: AtomicBool::new(false),
            gateways: shared::DEFAULT_GATEWAYS,
            offline: AtomicBool::new(false),
            answered: tokio::sync::Notify::new(),
        }
    }

    /// Sets how many gateways share the store (`--limit-gateways`, at least 1): it sizes
    /// grants and the allowance each gateway spends alone while the store is unreachable.
    /// Ignored unless the store is shared.
    pub fn with_gateways(mut self, gateways: u32) -> Self {
        self.gateways = gateways.max(1);
        self
    }

    /// Whether counters are spent from grants of a shared store.
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// Whether the store failed the last limit call (the offline allowance applies).
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    /// Units spent beyond grants not yet charged to the shared store (a gauge).
    pub fn charges_pending(&self) -> u64 {
        self.counters.charges_pending()
    }

    /// Units spent beyond grants that were never charged to the shared store because their
    /// window ended while it was unreachable (a counter).
    pub fn charges_dropped(&self) -> u64 {
        self.counters.charges_dropped()
    }

    fn sharing(&self) -> shared::Sharing {
        shared::Sharing {
            gateways: self.gateways,
            offline: self.is_offline(),
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
    ///
    /// Never touches the store: on a shared store it spends only the grants already held
    /// (use [`Limiter::admit_async`] on the request path, which asks for more).
    pub fn admit(
        self: &Arc<Self>,
        plan: Plan,
        body: Option<&serde_json::Value>,
        now: i64,
    ) -> Result<Admission, Refusal> {
        let mut admission = Admission::new(self);
        if plan.is_empty() {
            return Ok(admission);
        }
        let estimate = estimate::estimate_tokens(body, self.default_completion_tokens);
        for c in &plan.charges {
            let take = Self::take_for(c, estimate, now);
            let window = take.window;
            let taken = if self.is_shared() {
                match self.counters.take_shared(&take, now, self.sharing()) {
                    SharedTake::Taken(h) => Ok(h),
                    SharedTake::Ask { want } => {
                        // no round trip here: the ask just counted will not be made
                        let none = counters::Grant {
                            amount: 0,
                            asked: want,
                            failed: true,
                        };
                        self.counters.answer(&take, none, now);
                        Err(counters::Exceeded)
                    }
                    SharedTake::Wait { .. } | SharedTake::Exceeded => Err(counters::Exceeded),
                }
            } else {
                self.counters.try_take(&take)
            };
            match taken {
                Ok(h) => admission.keep(h, take),
                Err(counters::Exceeded) => {
                    admission.undo();
                    return Err(Refusal::new(c, window.retry_after(now)));
                }
            }
        }
        Ok(admission)
    }

    /// What `c` takes from its counter at `now` for a request estimated at `estimate` tokens.
    fn take_for(c: &Charge, estimate: u64, now: i64) -> Take {
        Take {
            key: c.key.clone(),
            window: c.window(now),
            limit: c.limit,
            amount: if c.unit == Unit::Tokens { estimate } else { 1 },
            reserve: c.unit == Unit::Tokens,
        }
    }

    /// Writes the counters changed since the last flush and prunes ended windows from the
    /// store. Called from a background task every second and once at shutdown. On a shared
    /// store it charges spending beyond grants and returns idle grants instead (see
    /// `grants.rs`); store failures there switch to the offline allowance and are retried.
    pub fn flush(&self, store: &Store, now: i64) -> Result<usize, StoreError> {
        if self.is_shared() {
            return Ok(self.flush_shared(store, now, false));
        }
        let rows = self.counters.take_dirty(now);
        if let Err(e) = store.save_limit_counters(&rows, now) {
            self.counters.redirty(&rows);
            return Err(e);
        }
        Ok(rows.len())
    }

    /// The last flush, at shutdown: like [`Limiter::flush`], and on a shared store every
    /// unspent grant goes back at once so the other gateways can spend it.
    pub fn close(&self, store: &Store, now: i64) -> Result<usize, StoreError> {
        if self.is_shared() {
            return Ok(self.flush_shared(store, now, true));
        }
        self.flush(store, now)
    }

    /// Restores the counters of windows that have not ended yet, or, when `store` is shared
    /// by gateways, switches to grants (per-gateway counters are not kept there: the grants
    /// in the store count what every gateway took).
    pub fn load(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        if store.is_shared() {
            self.shared.store(true, Ordering::Relaxed);
            return Ok(());
        }
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
    fn new(limiter: &Arc<Limiter>) -> Self {
        Admission {
            limiter: limiter.clone(),
            held: Vec::new(),
            counted: Vec::new(),
        }
    }

    /// Records what one take took: a reservation to settle, or a counted request.
    fn keep(&mut self, held: Option<Held>, take: Take) {
        match held {
            Some(h) => self.held.push(h),
            None => self.counted.push(Held {
                key: take.key,
                window_start: take.window.start,
                amount: 1,
            }),
        }
    }

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
