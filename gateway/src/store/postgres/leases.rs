//! Leases on PostgreSQL (one gateway at a time does a job, such as ordering certificates; the
//! upsert takes the row lock, so two gateways asking at once get one holder) and shared
//! settings.

use super::super::StoreError;
use super::Db;

pub(super) async fn acquire(
    db: Db,
    name: String,
    holder: String,
    now: i64,
    expires: i64,
) -> Result<bool, StoreError> {
    let row = db
        .client()
        .await?
        .query_opt(
            "INSERT INTO leases (name, holder, expires) VALUES ($1, $2, $4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
             WHERE leases.expires <= $3 OR leases.holder = excluded.holder
             RETURNING holder",
            &[&name, &holder, &now, &expires],
        )
        .await?;
    // No row: the WHERE refused the update, as another holder's lease has not expired.
    Ok(row.is_some_and(|r| r.get::<_, &str>(0) == holder))
}

pub(super) async fn release(db: Db, name: String, holder: String) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute(
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await?;
    Ok(())
}

pub(super) async fn put_setting(db: Db, name: String, value: Vec<u8>) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute(
            "INSERT INTO settings (name, value, updated)
             VALUES ($1, $2, extract(epoch FROM now())::bigint)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            &[&name, &value],
        )
        .await?;
    Ok(())
}

pub(super) async fn get_setting(db: Db, name: String) -> Result<Option<Vec<u8>>, StoreError> {
    let row = db
        .client()
        .await?
        .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
        .await?;
    Ok(row.map(|r| r.get(0)))
}
