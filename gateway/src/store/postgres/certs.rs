//! ACME accounts and issued certificates on PostgreSQL (sealed bytes only), shared so every
//! gateway serves what any of them obtained. Writes send a `Certificates` notice.

use super::super::{StoreError, StoredCertificate};
use super::{notify, Db};
use crate::store::feed::Topic;

pub(super) async fn put_account(
    db: Db,
    directory: String,
    sealed: Vec<u8>,
) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO acme_accounts (directory, sealed, created)
         VALUES ($1, $2, extract(epoch FROM now())::bigint)
         ON CONFLICT (directory) DO UPDATE SET sealed = excluded.sealed",
        &[&directory, &sealed],
    )
    .await?;
    notify(&tx, &db, Topic::Certificates, None).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn get_account(db: Db, directory: String) -> Result<Option<Vec<u8>>, StoreError> {
    let row = db
        .client()
        .await?
        .query_opt(
            "SELECT sealed FROM acme_accounts WHERE directory = $1",
            &[&directory],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn list_accounts(db: Db) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT directory, sealed, created FROM acme_accounts ORDER BY directory",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

pub(super) const PUT_CERTIFICATE: &str = "INSERT INTO certificates
        (name, identifiers, chain_pem, key_sealed, not_before, not_after, directory)
     VALUES ($1, $2::text::jsonb, $3, $4, $5, $6, $7)
     ON CONFLICT (name) DO UPDATE SET identifiers = excluded.identifiers,
        chain_pem = excluded.chain_pem, key_sealed = excluded.key_sealed,
        not_before = excluded.not_before, not_after = excluded.not_after,
        directory = excluded.directory";

pub(super) async fn put_certificate(db: Db, c: StoredCertificate) -> Result<(), StoreError> {
    let identifiers = serde_json::to_string(&c.identifiers).expect("strings serialize");
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        PUT_CERTIFICATE,
        &[
            &c.name,
            &identifiers,
            &c.chain_pem,
            &c.key_sealed,
            &c.not_before,
            &c.not_after,
            &c.directory,
        ],
    )
    .await?;
    notify(&tx, &db, Topic::Certificates, Some(&c.name)).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_certificates(db: Db) -> Result<Vec<StoredCertificate>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT name, identifiers::text, chain_pem, key_sealed, not_before, not_after, directory
             FROM certificates ORDER BY name",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let identifiers =
                serde_json::from_str(r.get::<_, &str>(1)).map_err(|e| StoreError::Corrupt {
                    what: format!("certificate {name:?}"),
                    reason: e.to_string(),
                })?;
            Ok(StoredCertificate {
                name,
                identifiers,
                chain_pem: r.get(2),
                key_sealed: r.get(3),
                not_before: r.get(4),
                not_after: r.get(5),
                directory: r.get(6),
            })
        })
        .collect()
}

pub(super) async fn delete_certificate(db: Db, name: String) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute("DELETE FROM certificates WHERE name = $1", &[&name])
        .await?;
    if n > 0 {
        notify(&tx, &db, Topic::Certificates, Some(&name)).await?;
    }
    tx.commit().await?;
    Ok(())
}
