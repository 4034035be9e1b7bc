//! Limit counters on PostgreSQL (the single-gateway flush, kept for `migrate` and for a
//! gateway that is alone on the database). Limit writes send no notice.

use super::super::StoreError;
use super::usage::clamp;
use super::Db;
use crate::limits::counters::CounterRow;
use crate::limits::window::Window;

pub(super) async fn save_counters(
    db: Db,
    rows: Vec<CounterRow>,
    now: i64,
) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let upsert = tx
        .prepare(
            "INSERT INTO limit_counters (key, window_start, window_end, used)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE
             SET window_start = excluded.window_start, window_end = excluded.window_end,
                 used = excluded.used",
        )
        .await?;
    for r in &rows {
        tx.execute(
            &upsert,
            &[&r.key, &r.window.start, &r.window.end, &clamp(r.used)],
        )
        .await?;
    }
    tx.execute("DELETE FROM limit_counters WHERE window_end <= $1", &[&now])
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn load_counters(db: Db, now: i64) -> Result<Vec<CounterRow>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT key, window_start, window_end, used FROM limit_counters WHERE window_end > $1",
            &[&now],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| CounterRow {
            key: r.get(0),
            window: Window {
                start: r.get(1),
                end: r.get(2),
            },
            used: r.get::<_, i64>(3).max(0) as u64,
        })
        .collect())
}
