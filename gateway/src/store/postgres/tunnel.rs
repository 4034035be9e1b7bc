//! Tunnel client addresses claimed by Sessions on PostgreSQL: the unique index and the
//! unique session make two gateways unable to hand out one address twice. Claims and
//! releases send a `TunnelAddresses` notice.

use super::super::StoreError;
use super::{notify, Db};
use crate::store::feed::Topic;

pub(super) async fn claim(
    db: Db,
    index: u16,
    session: String,
    gateway: String,
) -> Result<bool, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO tunnel_addresses (idx, session, gateway, claimed_at)
             VALUES ($1, $2, $3, extract(epoch FROM now())::bigint)
             ON CONFLICT DO NOTHING",
            &[&i32::from(index), &session, &gateway],
        )
        .await?;
    let holder = tx
        .query_opt(
            "SELECT session FROM tunnel_addresses WHERE idx = $1",
            &[&i32::from(index)],
        )
        .await?;
    if inserted > 0 {
        notify(&tx, &db, Topic::TunnelAddresses, Some(&session)).await?;
    }
    tx.commit().await?;
    Ok(holder.is_some_and(|r| r.get::<_, &str>(0) == session))
}

pub(super) async fn address_of(db: Db, session: String) -> Result<Option<u16>, StoreError> {
    let row = db
        .client()
        .await?
        .query_opt(
            "SELECT idx FROM tunnel_addresses WHERE session = $1",
            &[&session],
        )
        .await?;
    Ok(row.and_then(|r| u16::try_from(r.get::<_, i32>(0)).ok()))
}

pub(super) async fn release(db: Db, sql: &'static str, arg: String) -> Result<usize, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let n = tx.execute(sql, &[&arg]).await?;
    if n > 0 {
        notify(&tx, &db, Topic::TunnelAddresses, None).await?;
    }
    tx.commit().await?;
    Ok(n as usize)
}

pub(super) async fn claimed(db: Db) -> Result<Vec<u16>, StoreError> {
    let rows = db
        .client()
        .await?
        .query("SELECT idx FROM tunnel_addresses ORDER BY idx", &[])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| u16::try_from(r.get::<_, i32>(0)).ok())
        .collect())
}
