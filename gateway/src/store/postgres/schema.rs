//! The PostgreSQL schema as an ordered list of migrations, recorded in `postern_schema`, run
//! at connect under a transaction-scoped advisory lock so gateways starting together apply
//! each migration once. Same tables as SQLite schema 6. Text compared or
//! ordered by the store is `COLLATE "C"` so ordering is bytewise, as in SQLite, whatever the
//! database's locale. A Session's authentication record (ID-token claims, which people can
//! shape) is JSON kept as `text`: `jsonb` refuses a `\u0000` escape that SQLite keeps.

use super::super::StoreError;
use deadpool_postgres::Client;

/// The advisory lock key migrations take ("postern" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6f73_7465_726e;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only; never edit one
/// that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 0 -> 1: everything SQLite has at its version 6.
    r#"
    CREATE TABLE resources (
        kind       text COLLATE "C" NOT NULL,
        name       text COLLATE "C" NOT NULL,
        body       jsonb NOT NULL,
        created_at text NOT NULL,
        updated_at text NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE secrets (
        name       text COLLATE "C" PRIMARY KEY,
        ciphertext bytea NOT NULL,
        created_at text NOT NULL,
        updated_at text NOT NULL
    );
    CREATE TABLE credentials (
        name        text COLLATE "C" PRIMARY KEY,
        user_name   text NOT NULL,
        type        text NOT NULL,
        client_id   text,
        lookup_id   text NOT NULL,
        secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
        created_at  text NOT NULL,
        expires_at  text,
        CONSTRAINT credentials_lookup_id UNIQUE (lookup_id)
    );
    CREATE INDEX credentials_user ON credentials (user_name);
    CREATE TABLE sessions (
        name              text COLLATE "C" PRIMARY KEY,
        user_name         text NOT NULL,
        type              text NOT NULL,
        credential        text NOT NULL,
        created_at        text NOT NULL,
        expires_at        text NOT NULL,
        expires_unix      bigint NOT NULL,
        kind              text NOT NULL,
        identity_provider text,
        authentication    text NOT NULL
    );
    CREATE INDEX sessions_user ON sessions (user_name);
    CREATE INDEX sessions_credential ON sessions (credential);
    CREATE INDEX sessions_expires_unix ON sessions (expires_unix);
    CREATE INDEX sessions_identity_provider ON sessions (identity_provider);
    CREATE TABLE usage (
        id         bigserial PRIMARY KEY,
        time       text COLLATE "C" NOT NULL,
        user_name  text COLLATE "C",
        groups     jsonb NOT NULL,
        service    text COLLATE "C",
        config     text COLLATE "C",
        model      text COLLATE "C",
        prompt     bigint NOT NULL,
        completion bigint NOT NULL,
        total      bigint NOT NULL,
        estimated  boolean NOT NULL DEFAULT false,
        gateway    text
    );
    CREATE INDEX usage_time ON usage (time);
    CREATE TABLE limit_counters (
        key          text PRIMARY KEY,
        window_start bigint NOT NULL,
        window_end   bigint NOT NULL,
        used         bigint NOT NULL
    );
    CREATE INDEX limit_counters_window_end ON limit_counters (window_end);
    CREATE TABLE limit_grants (
        key          text PRIMARY KEY,
        window_start bigint NOT NULL,
        window_end   bigint NOT NULL,
        granted      bigint NOT NULL
    );
    CREATE INDEX limit_grants_window_end ON limit_grants (window_end);
    CREATE TABLE acme_accounts (
        directory text COLLATE "C" PRIMARY KEY,
        sealed    bytea NOT NULL,
        created   bigint NOT NULL
    );
    CREATE TABLE certificates (
        name        text COLLATE "C" PRIMARY KEY,
        identifiers jsonb NOT NULL,
        chain_pem   text NOT NULL,
        key_sealed  bytea NOT NULL,
        not_before  bigint NOT NULL,
        not_after   bigint NOT NULL,
        directory   text NOT NULL
    );
    CREATE TABLE settings (
        name    text PRIMARY KEY,
        value   bytea NOT NULL,
        updated bigint NOT NULL
    );
    CREATE TABLE leases (
        name    text PRIMARY KEY,
        holder  text NOT NULL,
        expires bigint NOT NULL
    );
    CREATE TABLE tunnel_addresses (
        idx        integer PRIMARY KEY,
        session    text NOT NULL,
        gateway    text NOT NULL,
        claimed_at bigint NOT NULL,
        CONSTRAINT tunnel_addresses_session UNIQUE (session)
    );
    CREATE INDEX tunnel_addresses_gateway ON tunnel_addresses (gateway);
    "#,
];

/// Brings the schema up to date; `SchemaTooNew` if another gateway is newer than this one.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Quietly: "already exists, skipping" at every start is noise in the gateway's log.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS postern_schema (version integer NOT NULL)",
    )
    .await?;
    let found: i64 = match tx
        .query_opt("SELECT max(version)::bigint FROM postern_schema", &[])
        .await?
    {
        Some(row) => row.get::<_, Option<i64>>(0).unwrap_or(0),
        None => 0,
    };
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    if found == supported {
        tx.commit().await?;
        return Ok(());
    }
    for migration in &MIGRATIONS[found.max(0) as usize..] {
        tx.batch_execute(migration).await?;
    }
    tx.execute("DELETE FROM postern_schema", &[]).await?;
    tx.execute(
        "INSERT INTO postern_schema (version) VALUES ($1)",
        &[&(supported as i32)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The version recorded in the database (for tests and `migrate`).
pub async fn version(client: &Client) -> Result<i64, StoreError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM postern_schema",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
