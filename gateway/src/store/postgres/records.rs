//! Credentials (as hashes) and Sessions on PostgreSQL, with the same rules and errors as
//! SQLite (`store/records.rs`).

use super::super::{CredentialRecord, StoreError};
use super::resources::expect_one;
use super::{errors, notify, send_notice, Db};
use crate::store::feed::{Notice, Topic};
use deadpool_postgres::Transaction;
use postern_common::resources::{
    Authentication, CredentialInfo, CredentialType, Kind, SessionInfo, SessionType,
};
use tokio_postgres::Row;

const CREDENTIAL_COLUMNS: &str =
    "name, user_name, type, client_id, lookup_id, secret_hash, created_at, expires_at";

const SESSION_COLUMNS: &str =
    "name, user_name, type, credential, created_at, expires_at, kind, authentication";

/// Parses an RFC 3339 timestamp into Unix seconds, naming the offending field on error.
pub(super) fn parse_rfc3339(field: &'static str, value: &str) -> Result<i64, StoreError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp())
        .map_err(|_| StoreError::InvalidTimestamp {
            field,
            value: value.to_string(),
        })
}

/// Inserts one credentials row.
pub(super) async fn insert_credential_row(
    c: &Transaction<'_>,
    r: &CredentialRecord,
) -> Result<(), StoreError> {
    parse_rfc3339("createdAt", &r.info.created_at)?;
    if let Some(expires_at) = &r.info.expires_at {
        parse_rfc3339("expiresAt", expires_at)?;
    }
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .await?;
    c.execute(
        &stmt,
        &[
            &r.info.name,
            &r.info.user,
            &r.info.credential_type.as_str(),
            &r.info.client_id,
            &r.lookup_id,
            &&r.secret_hash[..],
            &r.info.created_at,
            &r.info.expires_at,
        ],
    )
    .await
    .map_err(|e| match errors::unique_violation(&e).as_deref() {
        Some("credentials_lookup_id") => StoreError::DuplicateLookupId {
            lookup_id: r.lookup_id.clone(),
        },
        Some(_) => StoreError::AlreadyExists {
            kind: Kind::Credential,
            name: r.info.name.clone(),
        },
        None => e.into(),
    })?;
    Ok(())
}

/// Inserts one sessions row.
pub(super) async fn insert_session_row(
    c: &Transaction<'_>,
    s: &SessionInfo,
) -> Result<(), StoreError> {
    parse_rfc3339("createdAt", &s.created_at)?;
    let expires_unix = parse_rfc3339("expiresAt", &s.expires_at)?;
    let authentication = serde_json::to_string(&s.authentication).expect("serializes");
    let stmt = c
        .prepare_cached(
            "INSERT INTO sessions (name, user_name, type, credential, created_at, expires_at,
                                   expires_unix, kind, identity_provider, authentication)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &s.name,
            &s.user,
            &session_type_str(s.session_type),
            &s.credential,
            &s.created_at,
            &s.expires_at,
            &expires_unix,
            &s.kind.as_str(),
            &s.authentication.identity_provider,
            &authentication,
        ],
    )
    .await
    .map_err(|e| match errors::unique_violation(&e) {
        Some(_) => StoreError::AlreadyExists {
            kind: Kind::Session,
            name: s.name.clone(),
        },
        None => e.into(),
    })?;
    Ok(())
}

fn read_credential(r: &Row) -> Result<CredentialRecord, StoreError> {
    let name: String = r.get(0);
    let type_text: &str = r.get(2);
    let hash: &[u8] = r.get(5);
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("Credential {name:?}"),
        reason,
    };
    let credential_type = CredentialType::parse(type_text)
        .ok_or_else(|| corrupt(format!("unknown type {type_text:?}")))?;
    let secret_hash = <[u8; 32]>::try_from(hash)
        .map_err(|_| corrupt(format!("secret hash is {} bytes", hash.len())))?;
    Ok(CredentialRecord {
        info: CredentialInfo {
            name: name.clone(),
            user: r.get(1),
            credential_type,
            client_id: r.get(3),
            created_at: r.get(6),
            expires_at: r.get(7),
        },
        lookup_id: r.get(4),
        secret_hash,
    })
}

fn read_session(r: &Row) -> Result<SessionInfo, StoreError> {
    let name: String = r.get(0);
    let type_text: &str = r.get(2);
    let kind_text: &str = r.get(6);
    let auth_text: &str = r.get(7);
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("Session {name:?}"),
        reason,
    };
    let session_type = match type_text {
        "CLIENTLESS" => SessionType::Clientless,
        "CLIENT" => SessionType::Client,
        _ => return Err(corrupt(format!("unknown session type {type_text:?}"))),
    };
    let kind = serde_json::from_value(serde_json::Value::String(kind_text.to_string()))
        .map_err(|_| corrupt(format!("unknown session kind {kind_text:?}")))?;
    let authentication: Authentication = serde_json::from_str(auth_text)
        .map_err(|e| corrupt(format!("unreadable authentication record: {e}")))?;
    Ok(SessionInfo {
        name: name.clone(),
        user: r.get(1),
        session_type,
        kind,
        credential: r.get(3),
        authentication,
        created_at: r.get(4),
        expires_at: r.get(5),
    })
}

fn session_type_str(t: SessionType) -> &'static str {
    match t {
        SessionType::Clientless => "CLIENTLESS",
        SessionType::Client => "CLIENT",
    }
}

pub(super) async fn insert_credential(db: Db, c: CredentialRecord) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    insert_credential_row(&tx, &c).await?;
    notify(&tx, &db, Topic::Credentials, Some(&c.info.name)).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_credentials(db: Db) -> Result<Vec<CredentialRecord>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY name"),
            &[],
        )
        .await?;
    rows.iter().map(read_credential).collect()
}

pub(super) async fn credential_by_lookup_id(
    db: Db,
    lookup_id: String,
) -> Result<Option<CredentialRecord>, StoreError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE lookup_id = $1"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&lookup_id]).await?;
    row.as_ref().map(read_credential).transpose()
}

pub(super) async fn delete_credential(db: Db, name: String) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute("DELETE FROM credentials WHERE name = $1", &[&name])
        .await?;
    expect_one(n, Kind::Credential, &name)?;
    let sessions = tx
        .execute("DELETE FROM sessions WHERE credential = $1", &[&name])
        .await?;
    notify(&tx, &db, Topic::Credentials, Some(&name)).await?;
    if sessions > 0 {
        notify(&tx, &db, Topic::Sessions, None).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Runs one bulk delete and, when it removed anything, tells the others `topic` changed.
pub(super) async fn delete_where(
    db: Db,
    sql: &'static str,
    arg: String,
    topic: Topic,
) -> Result<usize, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let n = tx.execute(sql, &[&arg]).await?;
    if n > 0 {
        notify(&tx, &db, topic, None).await?;
    }
    tx.commit().await?;
    Ok(n as usize)
}

pub(super) async fn insert_session(db: Db, s: SessionInfo) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    insert_session_row(&tx, &s).await?;
    let notice = Notice {
        origin: db.origin.to_string(),
        topic: Topic::Sessions,
        name: Some(s.name.clone()),
        session: Some(Box::new(s)),
    };
    send_notice(&tx, &db, notice).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_sessions(db: Db) -> Result<Vec<SessionInfo>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY name"),
            &[],
        )
        .await?;
    rows.iter().map(read_session).collect()
}

pub(super) async fn get_session(db: Db, name: String) -> Result<Option<SessionInfo>, StoreError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE name = $1"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&name]).await?;
    row.as_ref().map(read_session).transpose()
}

pub(super) async fn delete_session(db: Db, name: String) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute("DELETE FROM sessions WHERE name = $1", &[&name])
        .await?;
    expect_one(n, Kind::Session, &name)?;
    notify(&tx, &db, Topic::Sessions, Some(&name)).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delete_expired_sessions(db: Db, now: String) -> Result<usize, StoreError> {
    let now = parse_rfc3339("now", &now)?;
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    // No notice: every gateway drops expired Sessions from its memory by the clock, so a
    // sweep (which every gateway runs) must not make the others reload every Session.
    let n = tx
        .execute("DELETE FROM sessions WHERE expires_unix <= $1", &[&now])
        .await?;
    tx.commit().await?;
    Ok(n as usize)
}
