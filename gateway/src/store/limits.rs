//! Rate-limit and budget counters: written in batches by the limiter's flush, read at start.

use super::{SqliteStore, StoreError};
use crate::limits::counters::CounterRow;
use crate::limits::window::Window;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

impl SqliteStore {
    /// Upserts `rows` and deletes counters whose window ended at or before `now`, in one
    /// transaction.
    pub fn save_limit_counters(&self, rows: &[CounterRow], now: i64) -> Result<(), StoreError> {
        let mut conn = self.lock_relaxed();
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO limit_counters (key, window_start, window_end, used)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE
                 SET window_start = excluded.window_start, window_end = excluded.window_end,
                     used = excluded.used",
            )?;
            for r in rows {
                let used = i64::try_from(r.used).unwrap_or(i64::MAX);
                upsert.execute(params![r.key, r.window.start, r.window.end, used])?;
            }
        }
        tx.execute(
            "DELETE FROM limit_counters WHERE window_end <= ?1",
            params![now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Counters whose window is still open at `now`.
    pub fn load_limit_counters(&self, now: i64) -> Result<Vec<CounterRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT key, window_start, window_end, used FROM limit_counters WHERE window_end > ?1",
        )?;
        let rows = stmt.query_map(params![now], |r| {
            Ok(CounterRow {
                key: r.get(0)?,
                window: Window {
                    start: r.get(1)?,
                    end: r.get(2)?,
                },
                used: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl SqliteStore {
    /// See [`super::StoreBackend::grant_limit`].
    pub fn grant_limit(
        &self,
        key: &str,
        window: Window,
        limit: u64,
        want: u64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock_relaxed();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let granted = current_grant(&tx, key, window)?;
        let Some(granted) = granted else {
            return Ok(0);
        };
        let g = want.min(limit.saturating_sub(granted));
        write_grant(&tx, key, window, granted.saturating_add(g))?;
        tx.commit()?;
        Ok(g)
    }

    /// See [`super::StoreBackend::return_limit`].
    pub fn return_limit(
        &self,
        key: &str,
        window_start: i64,
        amount: u64,
    ) -> Result<(), StoreError> {
        self.lock_relaxed().execute(
            "UPDATE limit_grants SET granted = max(granted - ?3, 0)
             WHERE key = ?1 AND window_start = ?2",
            params![key, window_start, clamp(amount)],
        )?;
        Ok(())
    }

    /// See [`super::StoreBackend::charge_limit`].
    pub fn charge_limit(&self, key: &str, window: Window, amount: u64) -> Result<(), StoreError> {
        let mut conn = self.lock_relaxed();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(granted) = current_grant(&tx, key, window)? {
            write_grant(&tx, key, window, granted.saturating_add(amount))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// See [`super::StoreBackend::prune_limit_grants`].
    pub fn prune_limit_grants(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self.lock_relaxed().execute(
            "DELETE FROM limit_grants WHERE window_end <= ?1",
            params![now],
        )?)
    }
}

/// What `window` of `key` has granted so far: 0 for a new or older window, `None` when the
/// row already holds a newer window (nothing may be granted or charged to an old one).
fn current_grant(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    window: Window,
) -> Result<Option<u64>, StoreError> {
    let row: Option<(i64, i64)> = tx
        .query_row(
            "SELECT window_start, granted FROM limit_grants WHERE key = ?1",
            params![key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        None => Some(0),
        Some((start, _)) if start < window.start => Some(0),
        Some((start, _)) if start > window.start => None,
        Some((_, granted)) => Some(granted.max(0) as u64),
    })
}

fn write_grant(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    window: Window,
    granted: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO limit_grants (key, window_start, window_end, granted) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key) DO UPDATE SET window_start = excluded.window_start,
             window_end = excluded.window_end, granted = excluded.granted",
        params![key, window.start, window.end, clamp(granted)],
    )?;
    Ok(())
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_prune() {
        let store = SqliteStore::open_in_memory().unwrap();
        let row = |key: &str, start, end, used| CounterRow {
            key: key.into(),
            window: Window { start, end },
            used,
        };
        store
            .save_limit_counters(&[row("a", 0, 60, 5), row("b", 60, 120, 7)], 30)
            .unwrap();
        store
            .save_limit_counters(&[row("a", 0, 60, 6)], 30)
            .unwrap();
        let mut got = store.load_limit_counters(30).unwrap();
        got.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(got, vec![row("a", 0, 60, 6), row("b", 60, 120, 7)]);
        store.save_limit_counters(&[], 60).unwrap();
        assert_eq!(
            store.load_limit_counters(0).unwrap(),
            vec![row("b", 60, 120, 7)]
        );
    }

    #[test]
    fn grants_never_add_up_past_the_limit_and_restart_with_each_window() {
        let store = SqliteStore::open_in_memory().unwrap();
        let w1 = Window { start: 0, end: 60 };
        let w2 = Window {
            start: 60,
            end: 120,
        };
        assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 4);
        assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 4);
        assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 2);
        assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 0);
        store.return_limit("k", 0, 3).unwrap();
        assert_eq!(store.grant_limit("k", w1, 10, 5).unwrap(), 3);
        store.charge_limit("k", w1, 7).unwrap();
        assert_eq!(store.grant_limit("k", w1, 20, 100).unwrap(), 3);
        // A new window starts over; the old one can no longer be granted or charged.
        assert_eq!(store.grant_limit("k", w2, 10, 6).unwrap(), 6);
        assert_eq!(store.grant_limit("k", w1, 10, 6).unwrap(), 0);
        store.charge_limit("k", w1, 100).unwrap();
        assert_eq!(store.grant_limit("k", w2, 10, 6).unwrap(), 4);
        assert_eq!(store.prune_limit_grants(119).unwrap(), 0);
        assert_eq!(store.prune_limit_grants(120).unwrap(), 1);
    }
}
