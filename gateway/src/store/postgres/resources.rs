//! Declared resources and sealed Secrets on PostgreSQL, with the same rules as SQLite
//! (`store/sqlite.rs`): all-or-nothing upserts that keep `created_at`, and a User's
//! Credentials and Sessions going with it.

use super::super::StoreError;
use super::{errors, notify, Db};
use crate::store::feed::Topic;
use postern_common::resources::{Kind, Resource, SecretInfo};
use std::collections::HashSet;

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(super) fn expect_one(n: u64, kind: Kind, name: &str) -> Result<(), StoreError> {
    if n == 0 {
        Err(StoreError::NotFound {
            kind,
            name: name.to_string(),
        })
    } else {
        Ok(())
    }
}

pub(super) fn decode_resource(kind: &str, name: &str, body: &str) -> Result<Resource, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("{kind} {name:?}"),
        reason,
    };
    let r: Resource = serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
    if r.kind().as_str() != kind || r.name() != name {
        return Err(corrupt(format!(
            "row holds {} {:?}",
            r.kind().as_str(),
            r.name()
        )));
    }
    Ok(r)
}

pub(super) async fn list(db: Db) -> Result<Vec<Resource>, StoreError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT kind, name, body::text FROM resources ORDER BY kind, name",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| decode_resource(r.get(0), r.get(1), r.get(2)))
        .collect()
}

pub(super) async fn upsert(db: Db, resources: Vec<Resource>) -> Result<Vec<Resource>, StoreError> {
    let mut seen = HashSet::new();
    for r in &resources {
        if !seen.insert((r.kind(), r.name().to_string())) {
            return Err(StoreError::DuplicateInBatch {
                kind: r.kind(),
                name: r.name().to_string(),
            });
        }
    }
    let now = now_rfc3339();
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let select = tx
        .prepare(
            "SELECT body::text, created_at, updated_at FROM resources
             WHERE kind = $1 AND name = $2 FOR UPDATE",
        )
        .await?;
    let upsert = tx
        .prepare(
            "INSERT INTO resources (kind, name, body, created_at, updated_at)
             VALUES ($1, $2, $3::text::jsonb, $4, $5)
             ON CONFLICT (kind, name) DO UPDATE
             SET body = excluded.body, updated_at = excluded.updated_at",
        )
        .await?;
    let mut stored = Vec::with_capacity(resources.len());
    let mut changed = false;
    for r in &resources {
        let kind = r.kind().as_str();
        let existing = tx.query_opt(&select, &[&kind, &r.name()]).await?;
        let mut r = r.without_server_fields();
        let (created_at, updated_at) = match existing {
            None => {
                changed = true;
                (now.clone(), now.clone())
            }
            Some(row) => {
                let body: &str = row.get(0);
                let unchanged = serde_json::from_str::<Resource>(body)
                    .is_ok_and(|old| old.without_server_fields() == r);
                let created: String = row.get(1);
                let updated: String = row.get(2);
                changed |= !unchanged;
                (created, if unchanged { updated } else { now.clone() })
            }
        };
        let meta = r.metadata_mut();
        meta.created_at = Some(created_at.clone());
        meta.updated_at = Some(updated_at.clone());
        let body = serde_json::to_string(&r).expect("resources always serialize");
        tx.execute(
            &upsert,
            &[&kind, &r.name(), &body, &created_at, &updated_at],
        )
        .await?;
        stored.push(r);
    }
    // An apply that changes nothing (a GitOps loop re-applying) makes no gateway reload.
    if changed {
        notify(&tx, &db, Topic::Resources, None).await?;
    }
    tx.commit().await?;
    Ok(stored)
}

pub(super) async fn delete(db: Db, kind: Kind, name: String) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "DELETE FROM resources WHERE kind = $1 AND name = $2",
            &[&kind.as_str(), &name],
        )
        .await?;
    expect_one(n, kind, &name)?;
    notify(&tx, &db, Topic::Resources, None).await?;
    if kind == Kind::User {
        tx.execute("DELETE FROM sessions WHERE user_name = $1", &[&name])
            .await?;
        tx.execute("DELETE FROM credentials WHERE user_name = $1", &[&name])
            .await?;
        notify(&tx, &db, Topic::Sessions, None).await?;
        notify(&tx, &db, Topic::Credentials, None).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn put_secret(
    db: Db,
    name: String,
    ciphertext: Vec<u8>,
    overwrite: bool,
) -> Result<(), StoreError> {
    let now = now_rfc3339();
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let sql = if overwrite {
        "INSERT INTO secrets (name, ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $3)
         ON CONFLICT (name) DO UPDATE
         SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at"
    } else {
        "INSERT INTO secrets (name, ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $3)"
    };
    tx.execute(sql, &[&name, &ciphertext, &now]).await.map_err(
        |e| match errors::unique_violation(&e) {
            Some(_) => StoreError::AlreadyExists {
                kind: Kind::Secret,
                name: name.clone(),
            },
            None => e.into(),
        },
    )?;
    notify(&tx, &db, Topic::Secrets, Some(&name)).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_secrets(db: Db) -> Result<Vec<(SecretInfo, Vec<u8>)>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT name, created_at, updated_at, ciphertext FROM secrets ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                SecretInfo {
                    name: r.get(0),
                    created_at: r.get(1),
                    updated_at: r.get(2),
                },
                r.get(3),
            )
        })
        .collect())
}

pub(super) async fn delete_secret(db: Db, name: String) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute("DELETE FROM secrets WHERE name = $1", &[&name])
        .await?;
    expect_one(n, Kind::Secret, &name)?;
    notify(&tx, &db, Topic::Secrets, Some(&name)).await?;
    tx.commit().await?;
    Ok(())
}
