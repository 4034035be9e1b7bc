//! The in-memory counters: a sharded map from counter key to the current window's usage.
//!
//! Each shard is a `Mutex<HashMap>`. A check-and-reserve on one key happens entirely under
//! its shard's lock, so no two requests can both take the last unit of a limit: concurrent
//! requests never overshoot a limit by more than the difference between a reservation and
//! the usage the provider later reports. Sharding keeps unrelated keys from contending; the
//! critical section is a hash lookup and two additions, never I/O.

use super::shared::{self, Decision, Share, Sharing};
use super::window::Window;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Number of shards; a power of two comfortably above the core count of a gateway host.
const SHARDS: usize = 64;

/// One counter: the current window and what is used and reserved in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    window: Window,
    /// Settled usage: requests counted, or tokens reported (or kept reservations).
    used: u64,
    /// Tokens reserved by requests still in flight.
    reserved: u64,
    /// Changed since the last flush.
    dirty: bool,
    /// The grants behind this counter when the store is shared by gateways.
    share: Option<Share>,
}

impl Slot {
    fn new(window: Window, dirty: bool) -> Slot {
        Slot {
            window,
            used: 0,
            reserved: 0,
            dirty,
            share: None,
        }
    }

    fn spent(&self) -> u64 {
        self.used.saturating_add(self.reserved)
    }

    /// Spending above the grants (a response used more than its reservation) is added to
    /// them, to be charged to the store.
    fn charge_excess(&mut self) {
        let spent = self.spent();
        if let Some(share) = &mut self.share {
            if spent > share.granted {
                share.pending += spent - share.granted;
                share.granted = spent;
            }
        }
    }
}

/// A take would push a counter over its limit; nothing was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded;

/// What to take from one counter for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub key: String,
    pub window: Window,
    pub limit: u64,
    pub amount: u64,
    /// `true` for token limits: the amount is a reservation to settle later; `false` for
    /// request limits: the amount is final at once.
    pub reserve: bool,
}

/// A reservation held by an admitted request, to settle or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    pub window_start: i64,
    pub amount: u64,
}

/// A counter as persisted: `used` includes any reservations still in flight, so a restart
/// never forgets tokens that were being spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRow {
    pub key: String,
    pub window: Window,
    pub used: u64,
}

/// All counters of the gateway.
pub struct Counters {
    shards: Vec<Mutex<HashMap<String, Slot>>>,
    hasher: RandomState,
    /// Charges (shared store) that were never written because their window ended first.
    dropped: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// The shard of `key`; a poisoned lock is reused (the map is consistent after any panic
    /// because each update is two plain field writes).
    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Slot>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `t.amount` from its counter if that keeps `used + reserved` within `t.limit`.
    /// Returns the reservation to settle (token limits), `Ok(None)` for request limits, or
    /// `Err(Exceeded)` when the limit would be exceeded (nothing is taken then).
    pub fn try_take(&self, t: &Take) -> Result<Option<Held>, Exceeded> {
        let mut shard = self.shard(&t.key);
        let slot = shard
            .entry(t.key.clone())
            .or_insert(Slot::new(t.window, false));
        if slot.window.start < t.window.start {
            // A new window: in-flight reservations of the old one settle into nothing.
            *slot = Slot::new(t.window, true);
        }
        // When the clock went back (slot newer than `t`), the newer window keeps counting.
        take_in(slot, t)
    }

    /// Ends a reservation: `actual` replaces it (`None` keeps the reserved amount as used,
    /// for responses that reported no usage). A reservation whose window has passed is
    /// dropped: that window's counter is gone.
    pub fn settle(&self, h: &Held, actual: Option<u64>) {
        let mut shard = self.shard(&h.key);
        if let Some(slot) = shard.get_mut(&h.key) {
            if slot.window.start == h.window_start {
                slot.reserved = slot.reserved.saturating_sub(h.amount);
                slot.used = slot.used.saturating_add(actual.unwrap_or(h.amount));
                slot.dirty = true;
                slot.charge_excess();
            }
        }
    }

    /// Gives a reservation back unused (the request never reached the upstream).
    pub fn release(&self, h: &Held) {
        let mut shard = self.shard(&h.key);
        if let Some(slot) = shard.get_mut(&h.key) {
            if slot.window.start == h.window_start {
                slot.reserved = slot.reserved.saturating_sub(h.amount);
                slot.dirty = true;
            }
        }
    }

    /// Takes back a counted request (another limit refused the same request).
    pub fn uncount(&self, h: &Held) {
        let mut shard = self.shard(&h.key);
        if let Some(slot) = shard.get_mut(&h.key) {
            if slot.window.start == h.window_start {
                slot.used = slot.used.saturating_sub(h.amount);
                slot.dirty = true;
            }
        }
    }

    /// `(used, reserved)` of `key` in the window starting at `window_start`, for tests and
    /// inspection.
    pub fn get(&self, key: &str, window_start: i64) -> (u64, u64) {
        self.shard(key)
            .get(key)
            .filter(|s| s.window.start == window_start)
            .map_or((0, 0), |s| (s.used, s.reserved))
    }

    /// The counters changed since the last call (clearing their mark), after forgetting those
    /// whose window ended before `now` with nothing in flight.
    pub fn take_dirty(&self, now: i64) -> Vec<CounterRow> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, s| s.window.end > now || s.reserved > 0);
            for (key, s) in map.iter_mut().filter(|(_, s)| s.dirty) {
                s.dirty = false;
                out.push(CounterRow {
                    key: key.clone(),
                    window: s.window,
                    used: s.used.saturating_add(s.reserved),
                });
            }
        }
        out
    }

    /// Marks `rows` changed again (their write failed, so the next flush retries them).
    pub fn redirty(&self, rows: &[CounterRow]) {
        for r in rows {
            if let Some(s) = self.shard(&r.key).get_mut(&r.key) {
                s.dirty = true;
            }
        }
    }

    /// Restores persisted counters (at start, before any request), skipping ended windows.
    pub fn load(&self, rows: impl IntoIterator<Item = CounterRow>, now: i64) {
        for r in rows.into_iter().filter(|r| r.window.end > now) {
            let mut shard = self.shard(&r.key);
            let slot = shard.entry(r.key).or_insert(Slot::new(r.window, false));
            if slot.window.start <= r.window.start {
                slot.window = r.window;
                slot.used = slot.used.max(r.used);
            }
        }
    }
}

/// What the store answered to a grant request, applied before a shared take is decided again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub amount: u64,
    pub asked: u64,
    /// The store did not answer (nothing was granted, and nothing is known of what is left).
    pub failed: bool,
}

/// The outcome of a take from a shared counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedTake {
    /// Taken: the reservation to settle (token limits) or `None` (request limits).
    Taken(Option<Held>),
    /// The grants held do not cover it: ask the store for `want` units (now counted as
    /// asked for), give [`Counters::answer`] the answer, then take again.
    Ask { want: u64 },
    /// Grants other requests asked for would cover it: take again once one is answered.
    /// `answers` counts the answers this counter has had, so a waiter can tell its own
    /// counter's answers from other counters'.
    Wait { answers: u64 },
    /// The limit refuses it; nothing was taken.
    Exceeded,
}

/// One write a shared flush owes the store for one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    pub key: String,
    pub window: Window,
    pub amount: u64,
}

/// What a shared flush writes: `charges` (spending beyond grants) first, then `returns`
/// (unspent grants of idle counters). Both are already taken off the counters; what cannot
/// be written is handed back with [`Counters::restore`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SharedWork {
    pub charges: Vec<Owed>,
    pub returns: Vec<Owed>,
}

impl Counters {
    /// Takes `t.amount` from a shared counter if the grants this gateway holds cover it, or
    /// the offline allowance does while the store is unreachable.
    pub fn take_shared(&self, t: &Take, now: i64, sharing: Sharing) -> SharedTake {
        let mut shard = self.shard(&t.key);
        let slot = shard
            .entry(t.key.clone())
            .or_insert(Slot::new(t.window, false));
        if slot.window.start < t.window.start {
            self.drop_pending(slot);
            *slot = Slot::new(t.window, true);
        }
        let spent = slot.spent();
        let share = slot.share.get_or_insert_with(Share::default);
        match shared::decide(share, spent, t.amount, t.limit, now, sharing) {
            Decision::Refuse => SharedTake::Exceeded,
            Decision::Wait => SharedTake::Wait {
                answers: share.answers,
            },
            Decision::Ask { want } => {
                share.asking = share.asking.saturating_add(want);
                SharedTake::Ask { want }
            }
            Decision::Spend { charge } => {
                share.granted += charge;
                share.pending += charge;
                share.last_spend = now;
                slot.dirty = true;
                if t.reserve {
                    slot.reserved += t.amount;
                    SharedTake::Taken(Some(Held {
                        key: t.key.clone(),
                        window_start: slot.window.start,
                        amount: t.amount,
                    }))
                } else {
                    slot.used += t.amount;
                    SharedTake::Taken(None)
                }
            }
        }
    }

    /// Applies the store's answer to an ask [`Counters::take_shared`] counted: the grant is
    /// added, the ask no longer counted, and a short grant marks the store used up for
    /// [`shared::EXHAUSTED_SECS`]. An answer for a window that has since ended is ignored.
    pub fn answer(&self, t: &Take, g: Grant, now: i64) {
        let mut shard = self.shard(&t.key);
        let Some(share) = shard
            .get_mut(&t.key)
            .filter(|s| s.window == t.window)
            .and_then(|s| s.share.as_mut())
        else {
            return;
        };
        share.asking = share.asking.saturating_sub(g.asked);
        share.granted = share.granted.saturating_add(g.amount);
        share.answers = share.answers.wrapping_add(1);
        if g.amount < g.asked && !g.failed {
            share.exhausted_until = now + shared::EXHAUSTED_SECS;
        }
    }

    /// Takes off the counters what a shared flush owes the store at `now`: every pending
    /// charge, and the unspent grants of counters idle for [`shared::IDLE_SECS`] (all unspent
    /// grants when `closing`). Forgets counters whose window ended with nothing in flight;
    /// charges of ended windows are dropped (and counted): no gateway spends them any more.
    pub fn shared_work(&self, now: i64, closing: bool) -> SharedWork {
        let mut work = SharedWork::default();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, s| {
                let keep = s.window.end > now || s.reserved > 0;
                if !keep {
                    self.drop_pending(s);
                }
                keep
            });
            for (key, slot) in map.iter_mut() {
                let spent = slot.spent();
                let ended = slot.window.end <= now;
                if ended {
                    self.drop_pending(slot);
                }
                let Some(share) = &mut slot.share else {
                    continue;
                };
                if ended {
                    continue;
                }
                let back = shared::to_return(share, spent, now, closing);
                if share.pending > 0 {
                    work.charges.push(Owed {
                        key: key.clone(),
                        window: slot.window,
                        amount: std::mem::take(&mut share.pending),
                    });
                }
                if back > 0 {
                    share.granted -= back;
                    work.returns.push(Owed {
                        key: key.clone(),
                        window: slot.window,
                        amount: back,
                    });
                }
            }
        }
        work
    }

    /// Hands back what a shared flush could not write: charges stay pending, returns stay
    /// granted (while their window lasts; an ended window's charges are counted as dropped).
    pub fn restore(&self, charges: &[Owed], returns: &[Owed]) {
        for (owed, is_charge) in charges
            .iter()
            .map(|o| (o, true))
            .chain(returns.iter().map(|o| (o, false)))
        {
            let mut shard = self.shard(&owed.key);
            let share = shard
                .get_mut(&owed.key)
                .filter(|s| s.window == owed.window)
                .and_then(|s| s.share.as_mut());
            match (share, is_charge) {
                (Some(share), true) => share.pending += owed.amount,
                (Some(share), false) => share.granted += owed.amount,
                (None, true) => {
                    self.dropped.fetch_add(owed.amount, Ordering::Relaxed);
                }
                (None, false) => {}
            }
        }
    }

    /// `(granted, pending)` of a shared counter in the window starting at `window_start`.
    pub fn share(&self, key: &str, window_start: i64) -> (u64, u64) {
        self.shard(key)
            .get(key)
            .filter(|s| s.window.start == window_start)
            .and_then(|s| s.share)
            .map_or((0, 0), |s| (s.granted, s.pending))
    }

    /// Units spent beyond grants that are not written to the store yet (a gauge).
    pub fn charges_pending(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                let map = shard.lock().unwrap_or_else(|e| e.into_inner());
                map.values()
                    .filter_map(|s| s.share)
                    .map(|s| s.pending)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Units spent beyond grants whose window ended before the store could be told (a
    /// counter).
    pub fn charges_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drop_pending(&self, slot: &mut Slot) {
        if let Some(share) = &mut slot.share {
            let lost = std::mem::take(&mut share.pending);
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// The check-and-take on one slot, under its shard's lock.
fn take_in(slot: &mut Slot, t: &Take) -> Result<Option<Held>, Exceeded> {
    let after = slot
        .used
        .saturating_add(slot.reserved)
        .saturating_add(t.amount);
    if after > t.limit {
        return Err(Exceeded);
    }
    slot.dirty = true;
    if t.reserve {
        slot.reserved += t.amount;
        Ok(Some(Held {
            key: t.key.clone(),
            window_start: slot.window.start,
            amount: t.amount,
        }))
    } else {
        slot.used += t.amount;
        Ok(None)
    }
}
