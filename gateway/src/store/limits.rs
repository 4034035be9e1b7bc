//! Rate-limit and budget counters: written in batches by the limiter's flush, read at start.

use super::{SqliteStore, StoreError};
use crate::limits::counters::CounterRow;
use crate::limits::window::Window;
use rusqlite::params;

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
}
