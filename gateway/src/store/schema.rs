//! The SQLite schema as an ordered list of migrations; `PRAGMA user_version` records how many
//! have been applied, so opening an older database upgrades it in place.

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only; never edit one
/// that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "
    CREATE TABLE resources (
        kind       TEXT NOT NULL,
        name       TEXT NOT NULL,
        body       TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    ) STRICT;

    CREATE TABLE secrets (
        name       TEXT PRIMARY KEY NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) STRICT;

    CREATE TABLE credentials (
        name         TEXT PRIMARY KEY NOT NULL,
        user         TEXT NOT NULL,
        type         TEXT NOT NULL,
        client_id    TEXT,
        lookup_id    TEXT NOT NULL,
        secret_hash  BLOB NOT NULL CHECK (length(secret_hash) = 32),
        created_at   TEXT NOT NULL,
        expires_at   TEXT
    ) STRICT;
    CREATE UNIQUE INDEX credentials_lookup_id ON credentials (lookup_id);
    CREATE INDEX credentials_user ON credentials (user);

    CREATE TABLE sessions (
        name         TEXT PRIMARY KEY NOT NULL,
        user         TEXT NOT NULL,
        type         TEXT NOT NULL,
        credential   TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        expires_at   TEXT NOT NULL,
        expires_unix INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX sessions_user ON sessions (user);
    CREATE INDEX sessions_credential ON sessions (credential);
    CREATE INDEX sessions_expires_unix ON sessions (expires_unix);
    ",
    // 1 -> 2: LLM token usage, one row per accounted request.
    "
    CREATE TABLE usage (
        time       TEXT NOT NULL,
        user       TEXT,
        groups     TEXT NOT NULL DEFAULT '[]',
        service    TEXT,
        config     TEXT,
        model      TEXT,
        prompt     INTEGER NOT NULL,
        completion INTEGER NOT NULL,
        total      INTEGER NOT NULL,
        estimated  INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX usage_time ON usage (time);
    ",
    // 2 -> 3: limits: rate-limit and budget counters (gateway::limits), flushed every second.
    // `used` includes tokens reserved by requests in flight at the flush.
    "
    CREATE TABLE IF NOT EXISTS limit_counters (
        key          TEXT PRIMARY KEY NOT NULL,
        window_start INTEGER NOT NULL,
        window_end   INTEGER NOT NULL,
        used         INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX IF NOT EXISTS limit_counters_window_end ON limit_counters (window_end);
    ",
    // 3 -> 4: people: a Session's kind (browser, agent, workload), the IdentityProvider that
    // signed it in, and how it was authenticated (method and ID-token claims, as JSON).
    // Empty on older rows, which `list_sessions` derives from `type`.
    "
    ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT '';
    ALTER TABLE sessions ADD COLUMN identity_provider TEXT;
    ALTER TABLE sessions ADD COLUMN authentication TEXT NOT NULL DEFAULT '';
    CREATE INDEX sessions_identity_provider ON sessions (identity_provider);
    ",
    // 4 -> 5: certificates: the ACME account per directory (its credentials sealed) and the
    // certificates ACME issued (the chain in clear, the private key sealed), so a restart
    // serves them without ordering again.
    "
    CREATE TABLE acme_accounts (
        directory  TEXT PRIMARY KEY NOT NULL,
        sealed     BLOB NOT NULL,
        created    INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE certificates (
        name        TEXT PRIMARY KEY NOT NULL,
        identifiers TEXT NOT NULL,
        chain_pem   TEXT NOT NULL,
        key_sealed  BLOB NOT NULL,
        not_before  INTEGER NOT NULL,
        not_after   INTEGER NOT NULL,
        directory   TEXT NOT NULL
    ) STRICT;
    ",
    // 5 -> 6: several gateways: which gateway served each accounted request, the shares of
    // each limit's window granted to gateways, leases (one gateway at a time does a job,
    // such as ordering certificates), settings (the sealed join bundle) and the tunnel client addresses claimed by Sessions
    // (unique across gateways sharing a store).
    "
    ALTER TABLE usage ADD COLUMN gateway TEXT;
    CREATE TABLE limit_grants (
        key          TEXT PRIMARY KEY NOT NULL,
        window_start INTEGER NOT NULL,
        window_end   INTEGER NOT NULL,
        granted      INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE settings (
        name    TEXT PRIMARY KEY NOT NULL,
        value   BLOB NOT NULL,
        updated INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE leases (
        name    TEXT PRIMARY KEY NOT NULL,
        holder  TEXT NOT NULL,
        expires INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE tunnel_addresses (
        idx        INTEGER PRIMARY KEY NOT NULL,
        session    TEXT NOT NULL UNIQUE,
        gateway    TEXT NOT NULL,
        claimed_at INTEGER NOT NULL
    ) STRICT;
    ",
];
