use super::*;
use postern_common::resources::{
    CredentialType, GroupSpec, Metadata, PolicySpec, Resource, SessionInfo, SessionType, UserSpec,
};
use std::path::PathBuf;

mod records;

fn meta(name: &str) -> Metadata {
    Metadata {
        name: name.into(),
        ..Default::default()
    }
}

fn user(name: &str, email: Option<&str>) -> Resource {
    Resource::User {
        metadata: meta(name),
        spec: UserSpec {
            email: email.map(str::to_string),
            ..Default::default()
        },
    }
}

fn group(name: &str) -> Resource {
    Resource::Group {
        metadata: meta(name),
        spec: GroupSpec::default(),
    }
}

fn temp_db() -> PathBuf {
    std::env::temp_dir().join(format!(
        "postern-store-test-{}-{}.db",
        std::process::id(),
        crate::identity::random_id("db")
    ))
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

#[test]
fn file_is_private_wal_versioned_and_durable() {
    let path = temp_db();
    {
        let store = SqliteStore::open(&path).unwrap();
        store.upsert_resources(&[user("alice", None)]).unwrap();
        let conn = store.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        // FULL (2): a commit is on disk before the change is acknowledged (docs/operations.md).
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::MIGRATIONS.len() as i64);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.list_resources().unwrap().len(), 1);
    drop(store);
    remove_db(&path);
}

#[test]
fn relaxed_writes_skip_the_commit_sync_then_restore_full() {
    let path = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let sync = |c: &rusqlite::Connection| -> i64 {
        c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
    };
    {
        let relaxed = store.lock_relaxed();
        assert_eq!(sync(&relaxed), 1);
    }
    assert_eq!(sync(&store.lock()), 2);
    drop(store);
    remove_db(&path);
}

#[test]
fn newer_schema_is_refused() {
    let path = temp_db();
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade posternd"));
    remove_db(&path);
}

#[test]
fn upsert_sets_timestamps_and_keeps_created_at() {
    let store = SqliteStore::open_in_memory().unwrap();
    let first = store
        .upsert_resources(&[user("alice", None), group("dev")])
        .unwrap();
    let created = first[0].metadata().created_at.clone().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(&created).is_ok());
    assert!(created.ends_with('Z'));
    assert_eq!(first[0].metadata().updated_at.as_deref(), Some(&*created));

    // Make the stored timestamps old so a change is visible.
    store
        .lock()
        .execute(
            "UPDATE resources SET created_at = '2020-01-01T00:00:00Z', updated_at = '2020-01-01T00:00:00Z',
             body = json_set(body, '$.metadata.createdAt', '2020-01-01T00:00:00Z', '$.metadata.updatedAt', '2020-01-01T00:00:00Z')",
            [],
        )
        .unwrap();

    // Unchanged: both timestamps stay; client-sent server fields are ignored.
    let mut same = user("alice", None);
    same.metadata_mut().created_at = Some("1999-01-01T00:00:00Z".into());
    let again = store.upsert_resources(&[same]).unwrap();
    assert_eq!(
        again[0].metadata().created_at.as_deref(),
        Some("2020-01-01T00:00:00Z")
    );
    assert_eq!(
        again[0].metadata().updated_at.as_deref(),
        Some("2020-01-01T00:00:00Z")
    );

    // Changed: created_at stays, updated_at moves.
    let changed = store
        .upsert_resources(&[user("alice", Some("a@example.com"))])
        .unwrap();
    assert_eq!(
        changed[0].metadata().created_at.as_deref(),
        Some("2020-01-01T00:00:00Z")
    );
    assert_ne!(
        changed[0].metadata().updated_at.as_deref(),
        Some("2020-01-01T00:00:00Z")
    );

    let listed = store.list_resources().unwrap();
    assert_eq!(listed.len(), 2);
    let alice = listed.iter().find(|r| r.name() == "alice").unwrap();
    assert_eq!(alice, &changed[0]);
}

#[test]
fn same_name_in_different_kinds_is_fine() {
    let store = SqliteStore::open_in_memory().unwrap();
    let policy = Resource::Policy {
        metadata: meta("dev"),
        spec: PolicySpec::default(),
    };
    store.upsert_resources(&[group("dev"), policy]).unwrap();
    assert_eq!(store.list_resources().unwrap().len(), 2);
    store.delete_resource(Kind::Group, "dev").unwrap();
    let left = store.list_resources().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].kind(), Kind::Policy);
}

#[test]
fn upsert_is_all_or_nothing() {
    let store = SqliteStore::open_in_memory().unwrap();
    let err = store
        .upsert_resources(&[user("alice", None), user("alice", None)])
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateInBatch { .. }));
    assert!(store.list_resources().unwrap().is_empty());

    // A failure in the middle of the batch rolls back the rows before it.
    store
        .lock()
        .execute_batch(
            "CREATE TRIGGER fail_bob BEFORE INSERT ON resources WHEN NEW.name = 'bob'
             BEGIN SELECT RAISE(ABORT, 'no bob'); END;",
        )
        .unwrap();
    let err = store
        .upsert_resources(&[user("alice", None), user("bob", None), group("dev")])
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err}");
    assert!(store.list_resources().unwrap().is_empty());
}

#[test]
fn delete_missing_resource_is_not_found() {
    let store = SqliteStore::open_in_memory().unwrap();
    let err = store.delete_resource(Kind::User, "ghost").unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            kind: Kind::User,
            ..
        }
    ));
    assert!(err.to_string().contains("posternctl get users"), "{err}");
}

#[test]
fn corrupt_row_is_reported() {
    let store = SqliteStore::open_in_memory().unwrap();
    store
        .lock()
        .execute(
            "INSERT INTO resources VALUES ('User', 'x', '{\"kind\":\"User\"}', 'a', 'b')",
            [],
        )
        .unwrap();
    assert!(matches!(
        store.list_resources(),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn secrets_put_list_overwrite_delete() {
    let store = SqliteStore::open_in_memory().unwrap();
    store.put_secret("api-key", b"cipher-1", false).unwrap();
    let err = store.put_secret("api-key", b"cipher-2", false).unwrap_err();
    assert!(matches!(
        err,
        StoreError::AlreadyExists {
            kind: Kind::Secret,
            ..
        }
    ));
    store
        .lock()
        .execute("UPDATE secrets SET created_at = '2020-01-01T00:00:00Z'", [])
        .unwrap();
    store.put_secret("api-key", b"cipher-2", true).unwrap();
    store.put_secret("other", b"cipher-3", true).unwrap();
    let listed = store.list_secrets().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].0.name, "api-key");
    assert_eq!(listed[0].0.created_at, "2020-01-01T00:00:00Z");
    assert_ne!(listed[0].0.updated_at, "2020-01-01T00:00:00Z");
    assert_eq!(listed[0].1, b"cipher-2");
    store.delete_secret("api-key").unwrap();
    assert!(matches!(
        store.delete_secret("api-key"),
        Err(StoreError::NotFound {
            kind: Kind::Secret,
            ..
        })
    ));
    assert_eq!(store.list_secrets().unwrap().len(), 1);
}
