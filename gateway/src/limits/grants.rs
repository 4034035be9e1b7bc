//! The store I/O of limits shared by gateways: grant round trips on the request path when the
//! grants held fall short, and the background charges, returns and pruning of the flush. The
//! rules are in [`super::shared`].

use super::counters::{Grant, SharedTake, Take};
use super::{estimate, Admission, Limiter, Plan, Refusal};
use crate::store::{Store, StoreError};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Grant round trips one take may wait for: a second one only when requests of this gateway
/// spent the first grant before its requester could.
const MAX_ASKS: usize = 2;

/// Answers to other requests' asks (for the same counter) one take may wait for before it
/// is refused.
const MAX_WAITS: usize = 4;

/// What owns the store the limiter takes grants from; held (cloned `Arc`) across the
/// blocking store call, which runs on tokio's blocking pool.
pub trait GrantStore: Send + Sync + 'static {
    /// The store.
    fn grant_store(&self) -> &Store;
}

impl GrantStore for Store {
    fn grant_store(&self) -> &Store {
        self
    }
}

impl GrantStore for crate::state::Gateway {
    fn grant_store(&self) -> &Store {
        self.store()
    }
}

impl Limiter {
    /// [`Limiter::admit`] for the request path. On a store no other gateway shares it is
    /// exactly `admit` and never waits. On a shared store a request the grants held cover is
    /// admitted without I/O; one they do not cover waits for a grant from the store (at most
    /// [`MAX_ASKS`] round trips, on the blocking pool), or for a round trip another request of
    /// this gateway already started for the same counter. While the store is unreachable no
    /// round trip is made and the offline allowance applies.
    pub async fn admit_async<S: GrantStore>(
        self: &Arc<Self>,
        plan: Plan,
        body: Option<&serde_json::Value>,
        now: i64,
        store: &Arc<S>,
    ) -> Result<Admission, Refusal> {
        if !self.is_shared() {
            return self.admit(plan, body, now);
        }
        let mut admission = Admission::new(self);
        if plan.is_empty() {
            return Ok(admission);
        }
        let estimate = estimate::estimate_tokens(body, self.default_completion_tokens);
        for c in &plan.charges {
            let take = Self::take_for(c, estimate, now);
            let (mut asks, mut waits, mut seen) = (0, 0, None);
            let held = loop {
                // Listen before looking, so an answer arriving in between is not missed.
                let mut answered = std::pin::pin!(self.answered.notified());
                answered.as_mut().enable();
                match self.counters.take_shared(&take, now, self.sharing()) {
                    SharedTake::Taken(h) => break Some(h),
                    SharedTake::Ask { want } if asks < MAX_ASKS => {
                        asks += 1;
                        self.ask(store, &take, want, now).await;
                    }
                    SharedTake::Ask { want } => {
                        let none = Grant {
                            amount: 0,
                            asked: want,
                            failed: true,
                        };
                        self.counters.answer(&take, none, now);
                        break None;
                    }
                    SharedTake::Wait { answers } if waits < MAX_WAITS => {
                        if seen.is_some_and(|s| s != answers) {
                            waits += 1;
                        }
                        seen = Some(answers);
                        answered.await;
                    }
                    SharedTake::Wait { .. } | SharedTake::Exceeded => break None,
                }
            };
            match held {
                Some(h) => admission.keep(h, take),
                None => {
                    admission.undo();
                    return Err(Refusal::new(c, take.window.retry_after(now)));
                }
            }
        }
        Ok(admission)
    }

    /// One grant round trip, whose answer is applied to the counters and announced to the
    /// requests waiting for it. It runs as its own task, so a request cancelled meanwhile
    /// (the client went away) cannot leave the ask counted forever or the grant unused.
    async fn ask<S: GrantStore>(self: &Arc<Self>, store: &Arc<S>, t: &Take, want: u64, now: i64) {
        let (me, store, t) = (self.clone(), store.clone(), t.clone());
        let job = tokio::spawn(async move {
            let (s, key) = (store.clone(), t.key.clone());
            let (window, limit) = (t.window, t.limit);
            let answer = tokio::task::spawn_blocking(move || {
                s.grant_store().grant_limit(&key, window, limit, want)
            })
            .await;
            let grant = match answer {
                Ok(Ok(amount)) => Grant {
                    amount,
                    asked: want,
                    failed: false,
                },
                Ok(Err(e)) => me.failed_ask(&e, want),
                Err(e) => me.failed_ask(
                    &StoreError::Unavailable {
                        backend: "limits",
                        reason: format!("the grant task failed: {e}"),
                    },
                    want,
                ),
            };
            me.counters.answer(&t, grant, now);
            me.answered.notify_waiters();
        });
        let _ = job.await;
    }

    fn failed_ask(&self, e: &StoreError, want: u64) -> Grant {
        self.went_offline(e);
        Grant {
            amount: 0,
            asked: want,
            failed: true,
        }
    }

    fn went_offline(&self, e: &StoreError) {
        if !self.offline.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %e,
                gateways = self.gateways,
                "store unreachable: shared limits now admit up to limit/{} of each window on this gateway alone, charged when it answers again",
                self.gateways
            );
        }
    }

    /// The shared flush: charges spending beyond grants, returns the unspent grants of idle
    /// counters (every unspent grant when `closing`), prunes ended windows. A store failure
    /// keeps what was not written for the next flush and switches to the offline allowance;
    /// a flush that reaches the store ends it. Returns the number of writes made.
    pub(super) fn flush_shared(&self, store: &Store, now: i64, closing: bool) -> usize {
        let work = self.counters.shared_work(now, closing);
        let (mut charged, mut returned) = (0, 0);
        let mut write = || -> Result<(), StoreError> {
            for o in &work.charges {
                store.charge_limit(&o.key, o.window, o.amount)?;
                charged += 1;
            }
            for o in &work.returns {
                store.return_limit(&o.key, o.window.start, o.amount)?;
                returned += 1;
            }
            store.prune_limit_grants(now)?;
            Ok(())
        };
        match write() {
            Ok(()) => {
                if self.offline.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        charges = work.charges.len(),
                        "store reachable again: spending beyond grants charged; shared limits take grants again"
                    );
                }
            }
            Err(e) => {
                self.went_offline(&e);
                self.counters
                    .restore(&work.charges[charged..], &work.returns[returned..]);
            }
        }
        charged + returned
    }
}
