//! `posternd migrate`'s write side: a whole [`Dump`] into PostgreSQL in one transaction,
//! refused (`NotEmpty`) when the database already holds anything unless `replace`.

use super::super::dump::Dump;
use super::super::StoreError;
use super::records::{insert_credential_row, insert_session_row};
use super::usage::{clamp, insert_rows};
use super::{notify, Db};
use crate::store::feed::Topic;

/// Every table `import` fills, in an order that deletes cleanly.
const TABLES: &[&str] = &[
    "tunnel_addresses",
    "sessions",
    "credentials",
    "secrets",
    "resources",
    "usage",
    "limit_counters",
    "limit_grants",
    "leases",
    "settings",
    "acme_accounts",
    "certificates",
];

pub(super) async fn import(db: Db, dump: Dump, replace: bool) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    // Two imports at once must not both find the database empty.
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        TABLES.join(", ")
    ))
    .await?;
    let mut held = Vec::new();
    for table in TABLES {
        let row = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?;
        let n: i64 = row.get(0);
        if n > 0 {
            held.push(format!("{n} rows in {table}"));
        }
    }
    if !held.is_empty() {
        if !replace {
            return Err(StoreError::NotEmpty {
                what: held.join(", "),
            });
        }
        tx.batch_execute(&format!("TRUNCATE {}", TABLES.join(", ")))
            .await?;
    }
    for r in &dump.resources {
        let meta = r.metadata();
        let now = super::resources::now_rfc3339();
        let created = meta.created_at.clone().unwrap_or_else(|| now.clone());
        let updated = meta.updated_at.clone().unwrap_or(now);
        let body = serde_json::to_string(r).expect("resources always serialize");
        tx.execute(
            "INSERT INTO resources (kind, name, body, created_at, updated_at)
             VALUES ($1, $2, $3::text::jsonb, $4, $5)",
            &[&r.kind().as_str(), &r.name(), &body, &created, &updated],
        )
        .await?;
    }
    for (info, ciphertext) in &dump.secrets {
        tx.execute(
            "INSERT INTO secrets (name, ciphertext, created_at, updated_at)
             VALUES ($1, $2, $3, $4)",
            &[&info.name, ciphertext, &info.created_at, &info.updated_at],
        )
        .await?;
    }
    for c in &dump.credentials {
        insert_credential_row(&tx, c).await?;
    }
    for s in &dump.sessions {
        insert_session_row(&tx, s).await?;
    }
    insert_rows(&tx, &dump.usage).await?;
    for c in &dump.limit_counters {
        tx.execute(
            "INSERT INTO limit_counters (key, window_start, window_end, used)
             VALUES ($1, $2, $3, $4)",
            &[&c.key, &c.window.start, &c.window.end, &clamp(c.used)],
        )
        .await?;
    }
    for (directory, sealed, created) in &dump.acme_accounts {
        tx.execute(
            "INSERT INTO acme_accounts (directory, sealed, created) VALUES ($1, $2, $3)",
            &[directory, sealed, created],
        )
        .await?;
    }
    for c in &dump.certificates {
        let identifiers = serde_json::to_string(&c.identifiers).expect("strings serialize");
        tx.execute(
            super::certs::PUT_CERTIFICATE,
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
    }
    for topic in [
        Topic::Resources,
        Topic::Secrets,
        Topic::Credentials,
        Topic::Sessions,
        Topic::Certificates,
        Topic::TunnelAddresses,
    ] {
        notify(&tx, &db, topic, None).await?;
    }
    tx.commit().await?;
    Ok(())
}
