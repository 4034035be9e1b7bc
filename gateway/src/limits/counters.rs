//! The in-memory counters: a sharded map from counter key to the current window's usage.
//!
//! Each shard is a `Mutex<HashMap>`. A check-and-reserve on one key happens entirely under
//! its shard's lock, so no two requests can both take the last unit of a limit: concurrent
//! requests never overshoot a limit by more than the difference between a reservation and
//! the usage the provider later reports. Sharding keeps unrelated keys from contending; the
//! critical section is a hash lookup and two additions, never I/O.

use super::window::Window;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
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
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
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
        let slot = shard.entry(t.key.clone()).or_insert(Slot {
            window: t.window,
            used: 0,
            reserved: 0,
            dirty: false,
        });
        if slot.window.start < t.window.start {
            // A new window: in-flight reservations of the old one settle into nothing.
            *slot = Slot {
                window: t.window,
                used: 0,
                reserved: 0,
                dirty: true,
            };
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
            let slot = shard.entry(r.key).or_insert(Slot {
                window: r.window,
                used: 0,
                reserved: 0,
                dirty: false,
            });
            if slot.window.start <= r.window.start {
                slot.window = r.window;
                slot.used = slot.used.max(r.used);
            }
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
