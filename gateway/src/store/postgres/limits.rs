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

/// Makes sure `key` has a row for `window` (resetting an older window to nothing granted)
/// and locks it; returns what the row's window has granted, or `None` when the row holds a
/// newer window (nothing may be granted or charged to an old one).
async fn lock_grant(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &str,
    window: Window,
) -> Result<Option<u64>, StoreError> {
    let ensure = tx
        .prepare_cached(
            "INSERT INTO limit_grants (key, window_start, window_end, granted)
             VALUES ($1, $2, $3, 0)
             ON CONFLICT (key) DO UPDATE SET window_start = excluded.window_start,
                 window_end = excluded.window_end, granted = 0
             WHERE limit_grants.window_start < excluded.window_start",
        )
        .await?;
    tx.execute(&ensure, &[&key, &window.start, &window.end])
        .await?;
    let select = tx
        .prepare_cached("SELECT window_start, granted FROM limit_grants WHERE key = $1 FOR UPDATE")
        .await?;
    let row = tx.query_one(&select, &[&key]).await?;
    let start: i64 = row.get(0);
    let granted: i64 = row.get(1);
    Ok((start == window.start).then_some(granted.max(0) as u64))
}

async fn set_grant(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &str,
    granted: u64,
) -> Result<(), StoreError> {
    let update = tx
        .prepare_cached("UPDATE limit_grants SET granted = $2 WHERE key = $1")
        .await?;
    tx.execute(&update, &[&key, &clamp(granted)]).await?;
    Ok(())
}

pub(super) async fn grant(
    db: Db,
    key: String,
    window: Window,
    limit: u64,
    want: u64,
) -> Result<u64, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let Some(granted) = lock_grant(&tx, &key, window).await? else {
        return Ok(0);
    };
    let g = want.min(limit.saturating_sub(granted));
    if g > 0 {
        set_grant(&tx, &key, granted.saturating_add(g)).await?;
    }
    tx.commit().await?;
    Ok(g)
}

pub(super) async fn give_back(
    db: Db,
    key: String,
    window_start: i64,
    amount: u64,
) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute(
            "UPDATE limit_grants SET granted = greatest(granted - $3, 0)
             WHERE key = $1 AND window_start = $2",
            &[&key, &window_start, &clamp(amount)],
        )
        .await?;
    Ok(())
}

pub(super) async fn charge(
    db: Db,
    key: String,
    window: Window,
    amount: u64,
) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    if let Some(granted) = lock_grant(&tx, &key, window).await? {
        set_grant(&tx, &key, granted.saturating_add(amount)).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn prune_grants(db: Db, now: i64) -> Result<usize, StoreError> {
    let n = db
        .client()
        .await?
        .execute("DELETE FROM limit_grants WHERE window_end <= $1", &[&now])
        .await?;
    Ok(n as usize)
}
