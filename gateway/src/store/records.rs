//! Credentials (stored as hashes) and Sessions: server-managed records, never declared in YAML.

use super::sqlite::{expect_one, is_constraint};
use super::{CredentialRecord, SqliteStore, StoreError};
use postern_common::resources::{
    Authentication, CredentialInfo, CredentialType, Kind, SessionInfo, SessionKind, SessionType,
};
use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

const CREDENTIAL_COLUMNS: &str =
    "name, user, type, client_id, lookup_id, secret_hash, created_at, expires_at";

const SESSION_COLUMNS: &str =
    "name, user, type, credential, created_at, expires_at, kind, authentication";

impl SqliteStore {
    /// Stores a new credential. `AlreadyExists` if the name is taken; `DuplicateLookupId` if
    /// its lookup id is (which only happens if ids are not random).
    pub fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError> {
        insert_credential_row(&self.lock(), c)
    }

    /// Every credential, ordered by name, for building the in-memory state.
    pub fn list_credentials(&self) -> Result<Vec<CredentialRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY name"
        ))?;
        let rows = stmt.query_map([], read_credential)?;
        rows.map(|row| row?).collect()
    }

    /// The credential with this lookup id (client id or auth-token id), for a login that
    /// prefers a fresh read over the in-memory state.
    pub fn get_credential_by_lookup_id(
        &self,
        lookup_id: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let conn = self.lock();
        let found = conn
            .query_row(
                &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE lookup_id = ?1"),
                params![lookup_id],
                read_credential,
            )
            .optional()?;
        found.transpose()
    }

    /// Deletes a credential and the sessions it made, in one transaction (a crash in between
    /// would leave sessions that a new credential of the same name brings back to life);
    /// `NotFound` if absent.
    pub fn delete_credential(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM credentials WHERE name = ?1", params![name])?;
        expect_one(n, Kind::Credential, name)?;
        tx.execute("DELETE FROM sessions WHERE credential = ?1", params![name])?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes every credential of `user` (when the User is deleted); returns how many.
    pub fn delete_credentials_of_user(&self, user: &str) -> Result<usize, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM credentials WHERE user = ?1", params![user])?)
    }

    /// Stores a new session. `AlreadyExists` if the name is taken; `InvalidTimestamp` unless
    /// both timestamps are RFC 3339.
    pub fn insert_session(&self, s: &SessionInfo) -> Result<(), StoreError> {
        insert_session_row(&self.lock_relaxed(), s)
    }

    /// Every session, ordered by name, for building the in-memory state.
    pub fn list_sessions(&self) -> Result<Vec<SessionInfo>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY name"
        ))?;
        let rows = stmt.query_map([], read_session)?;
        rows.map(|row| row?).collect()
    }

    /// One session by name.
    pub fn get_session(&self, name: &str) -> Result<Option<SessionInfo>, StoreError> {
        let conn = self.lock();
        let found = conn
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE name = ?1"),
                params![name],
                read_session,
            )
            .optional()?;
        found.transpose()
    }

    /// Deletes a session (logout, revocation); `NotFound` if absent.
    pub fn delete_session(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM sessions WHERE name = ?1", params![name])?;
        expect_one(n, Kind::Session, name)
    }

    /// Deletes sessions whose `expiresAt` is at or before `now_rfc3339` (any UTC offset);
    /// returns how many.
    pub fn delete_expired_sessions(&self, now_rfc3339: &str) -> Result<usize, StoreError> {
        let now = parse_rfc3339("now", now_rfc3339)?;
        Ok(self.lock_relaxed().execute(
            "DELETE FROM sessions WHERE expires_unix <= ?1",
            params![now],
        )?)
    }

    /// Deletes every session of `user` (when the User is deleted or disabled); returns how many.
    pub fn delete_sessions_of_user(&self, user: &str) -> Result<usize, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM sessions WHERE user = ?1", params![user])?)
    }

    /// Deletes every session signed in through IdentityProvider `idp` (when it is deleted);
    /// returns how many.
    pub fn delete_sessions_of_identity_provider(&self, idp: &str) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM sessions WHERE identity_provider = ?1",
            params![idp],
        )?)
    }

    /// Deletes every session of `user` signed in through an IdentityProvider (when the
    /// User's email, the link to the person, changes); returns how many.
    pub fn delete_signed_in_sessions_of_user(&self, user: &str) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM sessions WHERE user = ?1 AND identity_provider IS NOT NULL",
            params![user],
        )?)
    }

    /// Deletes every session created by `credential` (when it is deleted); returns how many.
    pub fn delete_sessions_of_credential(&self, credential: &str) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM sessions WHERE credential = ?1",
            params![credential],
        )?)
    }
}

/// Inserts one credentials row (see [`SqliteStore::insert_credential`]).
pub(super) fn insert_credential_row(
    conn: &Connection,
    c: &CredentialRecord,
) -> Result<(), StoreError> {
    parse_rfc3339("createdAt", &c.info.created_at)?;
    if let Some(expires_at) = &c.info.expires_at {
        parse_rfc3339("expiresAt", expires_at)?;
    }
    conn.execute(
        &format!(
            "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            c.info.name,
            c.info.user,
            c.info.credential_type.as_str(),
            c.info.client_id,
            c.lookup_id,
            &c.secret_hash[..],
            c.info.created_at,
            c.info.expires_at,
        ],
    )
    .map_err(|e| {
        if is_constraint(&e, SQLITE_CONSTRAINT_PRIMARYKEY) {
            StoreError::AlreadyExists {
                kind: Kind::Credential,
                name: c.info.name.clone(),
            }
        } else if is_constraint(&e, SQLITE_CONSTRAINT_UNIQUE) {
            StoreError::DuplicateLookupId {
                lookup_id: c.lookup_id.clone(),
            }
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Inserts one sessions row (see [`SqliteStore::insert_session`]).
pub(super) fn insert_session_row(conn: &Connection, s: &SessionInfo) -> Result<(), StoreError> {
    parse_rfc3339("createdAt", &s.created_at)?;
    let expires_unix = parse_rfc3339("expiresAt", &s.expires_at)?;
    conn.execute(
        "INSERT INTO sessions (name, user, type, credential, created_at, expires_at, expires_unix,
                               kind, identity_provider, authentication)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            s.name,
            s.user,
            session_type_str(s.session_type),
            s.credential,
            s.created_at,
            s.expires_at,
            expires_unix,
            s.kind.as_str(),
            s.authentication.identity_provider,
            serde_json::to_string(&s.authentication).expect("serializes"),
        ],
    )
    .map_err(|e| {
        if is_constraint(&e, SQLITE_CONSTRAINT_PRIMARYKEY) {
            StoreError::AlreadyExists {
                kind: Kind::Session,
                name: s.name.clone(),
            }
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Decodes a sessions row ([`SESSION_COLUMNS`]); the outer error is SQLite's, the inner one a
/// corrupt row.
fn read_session(r: &Row<'_>) -> rusqlite::Result<Result<SessionInfo, StoreError>> {
    let name: String = r.get(0)?;
    let type_text: String = r.get(2)?;
    let kind_text: String = r.get(6)?;
    let auth_text: String = r.get(7)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("Session {name:?}"),
        reason,
    };
    let Some(session_type) = parse_session_type(&type_text) else {
        return Ok(Err(corrupt(format!("unknown session type {type_text:?}"))));
    };
    let (kind, authentication) = match session_origin(session_type, &kind_text, &auth_text) {
        Ok(x) => x,
        Err(reason) => return Ok(Err(corrupt(reason))),
    };
    Ok(Ok(SessionInfo {
        name: name.clone(),
        user: r.get(1)?,
        session_type,
        kind,
        credential: r.get(3)?,
        authentication,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
    }))
}

/// Decodes a credentials row; the outer error is SQLite's, the inner one a corrupt row.
fn read_credential(r: &Row<'_>) -> rusqlite::Result<Result<CredentialRecord, StoreError>> {
    let name: String = r.get(0)?;
    let type_text: String = r.get(2)?;
    let hash: Vec<u8> = r.get(5)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("Credential {name:?}"),
        reason,
    };
    let Some(credential_type) = CredentialType::parse(&type_text) else {
        return Ok(Err(corrupt(format!("unknown type {type_text:?}"))));
    };
    let Ok(secret_hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
        return Ok(Err(corrupt(format!("secret hash is {} bytes", hash.len()))));
    };
    Ok(Ok(CredentialRecord {
        info: CredentialInfo {
            name: name.clone(),
            user: r.get(1)?,
            credential_type,
            client_id: r.get(3)?,
            created_at: r.get(6)?,
            expires_at: r.get(7)?,
        },
        lookup_id: r.get(4)?,
        secret_hash,
    }))
}

/// A stored Session's kind and authentication; rows written before they were recorded
/// (empty columns) were agent logins (`CLIENT`) or OAuth2 grants (`CLIENTLESS`).
fn session_origin(
    session_type: SessionType,
    kind: &str,
    authentication: &str,
) -> Result<(SessionKind, Authentication), String> {
    if kind.is_empty() && authentication.is_empty() {
        return Ok(match session_type {
            SessionType::Client => (
                SessionKind::Agent,
                Authentication::credential(CredentialType::AuthToken),
            ),
            SessionType::Clientless => (
                SessionKind::Workload,
                Authentication::credential(CredentialType::Oauth2),
            ),
        });
    }
    let kind = serde_json::from_value(serde_json::Value::String(kind.to_string()))
        .map_err(|_| format!("unknown session kind {kind:?}"))?;
    let authentication = serde_json::from_str(authentication)
        .map_err(|e| format!("unreadable authentication record: {e}"))?;
    Ok((kind, authentication))
}

fn session_type_str(t: SessionType) -> &'static str {
    match t {
        SessionType::Clientless => "CLIENTLESS",
        SessionType::Client => "CLIENT",
    }
}

fn parse_session_type(s: &str) -> Option<SessionType> {
    match s {
        "CLIENTLESS" => Some(SessionType::Clientless),
        "CLIENT" => Some(SessionType::Client),
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp into Unix seconds, naming the offending field on error.
fn parse_rfc3339(field: &'static str, value: &str) -> Result<i64, StoreError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp())
        .map_err(|_| StoreError::InvalidTimestamp {
            field,
            value: value.to_string(),
        })
}
