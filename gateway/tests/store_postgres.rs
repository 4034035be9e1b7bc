//! `PgStore` against a real PostgreSQL (a throwaway cluster, see `support/pg.rs`): the same
//! behaviours the SQLite store tests check for resources, Secrets, Credentials and Sessions
//! (`src/store/tests/`), the schema's versioning, and gateways migrating one database at
//! once. Usage, limits, tunnel addresses, certificates and import are in
//! `store_postgres_data.rs`; the change feed, faults and TLS in `store_postgres_feed.rs`.
//! Each test skips, saying why, when the PostgreSQL binaries are not installed.

mod support {
    pub mod fixtures;
    pub mod pg;
}

use postern_common::resources::{
    AuthMethod, Authentication, CredentialType, Kind, PolicySpec, Resource, SessionKind,
    SessionType,
};
use postern_gateway::store::{PgStore, StoreBackend, StoreError};
use support::fixtures::*;
use support::pg::Cluster;

#[test]
fn schema_is_versioned_and_a_newer_one_is_refused() {
    let Some((cluster, store)) = setup() else {
        return;
    };
    assert_eq!(store.schema_version().unwrap(), 1);
    assert_eq!(store.backend_name(), "postgres");
    assert!(store.is_shared());
    store.ping().unwrap();
    drop(store);
    // Connecting again migrates nothing and keeps the data.
    let url = cluster.url("postern");
    let again = PgStore::connect(&url, "gw-2", sealer()).unwrap();
    again.upsert_resources(&[user("alice", None)]).unwrap();
    drop(again);
    cluster.sql("postern", "UPDATE postern_schema SET version = 99");
    let err = PgStore::connect(&url, "gw-3", sealer()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade posternd"));
}

#[test]
fn two_gateways_migrating_one_empty_database_at_once_both_succeed() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_database("race");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url, &format!("gw-{i}"), sealer()))
        })
        .collect();
    let stores: Vec<PgStore> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("every gateway connects"))
        .collect();
    for s in &stores {
        assert_eq!(s.schema_version().unwrap(), 1);
    }
    assert_eq!(
        cluster
            .query_text("race", "SELECT count(*) FROM postern_schema")
            .as_deref(),
        Some("1")
    );
}

#[test]
fn upsert_sets_timestamps_keeps_created_at_and_is_all_or_nothing() {
    let Some((cluster, store)) = setup() else {
        return;
    };
    let first = store
        .upsert_resources(&[user("alice", None), group("dev")])
        .unwrap();
    let created = first[0].metadata().created_at.clone().unwrap();
    assert!(created.ends_with('Z'));
    assert_eq!(first[0].metadata().updated_at.as_deref(), Some(&*created));
    cluster.sql(
        "postern",
        "UPDATE resources SET created_at = '2020-01-01T00:00:00Z', updated_at = '2020-01-01T00:00:00Z',
         body = jsonb_set(jsonb_set(body, '{metadata,createdAt}', '\"2020-01-01T00:00:00Z\"'),
                          '{metadata,updatedAt}', '\"2020-01-01T00:00:00Z\"')",
    );
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
    assert_eq!(
        listed.iter().find(|r| r.name() == "alice").unwrap(),
        &changed[0]
    );

    let err = store
        .upsert_resources(&[user("bob", None), user("bob", None)])
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateInBatch { .. }));
    // A failure in the middle of a batch rolls back the rows before it.
    cluster.sql(
        "postern",
        "CREATE FUNCTION no_bob() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.name = 'bob' THEN RAISE EXCEPTION 'no bob'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER fail_bob BEFORE INSERT ON resources FOR EACH ROW EXECUTE FUNCTION no_bob();",
    );
    let err = store
        .upsert_resources(&[user("carol", None), user("bob", None), group("ops")])
        .unwrap_err();
    assert!(matches!(err, StoreError::Postgres(_)), "{err}");
    assert_eq!(store.list_resources().unwrap().len(), 2);
}

#[test]
fn kinds_names_order_not_found_and_corrupt_rows() {
    let Some((cluster, store)) = setup() else {
        return;
    };
    let policy = Resource::Policy {
        metadata: meta("dev"),
        spec: PolicySpec::default(),
    };
    // Bytewise order, as SQLite: "Zed" before "alice", whatever the database locale.
    store
        .upsert_resources(&[group("dev"), policy, user("alice", None), user("Zed", None)])
        .unwrap();
    let listed: Vec<_> = store
        .list_resources()
        .unwrap()
        .iter()
        .map(|r| format!("{}/{}", r.kind().as_str(), r.name()))
        .collect();
    assert_eq!(
        listed,
        ["Group/dev", "Policy/dev", "User/Zed", "User/alice"]
    );
    store.delete_resource(Kind::Group, "dev").unwrap();
    let err = store.delete_resource(Kind::Group, "dev").unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            kind: Kind::Group,
            ..
        }
    ));
    assert!(err.to_string().contains("posternctl get groups"), "{err}");
    cluster.sql(
        "postern",
        r#"INSERT INTO resources VALUES ('User', 'x', '{"kind":"User"}', 'a', 'b')"#,
    );
    assert!(matches!(
        store.list_resources(),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn secrets_put_list_overwrite_delete() {
    let Some((cluster, store)) = setup() else {
        return;
    };
    store.put_secret("api-key", b"cipher-1", false).unwrap();
    let err = store.put_secret("api-key", b"cipher-2", false).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                kind: Kind::Secret,
                ..
            }
        ),
        "{err}"
    );
    cluster.sql(
        "postern",
        "UPDATE secrets SET created_at = '2020-01-01T00:00:00Z'",
    );
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

#[test]
fn credentials_insert_clash_lookup_delete() {
    let Some((_cluster, store)) = setup() else {
        return;
    };
    let mut c = credential("ci", "alice", "pcid_1");
    c.info.expires_at = Some("2027-01-01T00:00:00+02:00".into());
    store.insert_credential(&c).unwrap();
    let mut token = credential("laptop", "alice", "abc");
    token.info.credential_type = CredentialType::AuthToken;
    token.info.client_id = None;
    store.insert_credential(&token).unwrap();
    store
        .insert_credential(&credential("bot", "bob", "pcid_2"))
        .unwrap();
    assert!(matches!(
        store.insert_credential(&credential("ci", "bob", "pcid_9")),
        Err(StoreError::AlreadyExists {
            kind: Kind::Credential,
            ..
        })
    ));
    assert!(matches!(
        store.insert_credential(&credential("new", "bob", "pcid_1")),
        Err(StoreError::DuplicateLookupId { .. })
    ));
    let mut bad = credential("bad", "bob", "pcid_3");
    bad.info.created_at = "yesterday".into();
    assert!(matches!(
        store.insert_credential(&bad),
        Err(StoreError::InvalidTimestamp {
            field: "createdAt",
            ..
        })
    ));
    let listed = store.list_credentials().unwrap();
    let listed_names: Vec<_> = listed.iter().map(|c| c.info.name.as_str()).collect();
    assert_eq!(listed_names, ["bot", "ci", "laptop"]);
    assert_eq!(listed[1], c);
    assert_eq!(listed[2], token);
    assert_eq!(
        store.get_credential_by_lookup_id("abc").unwrap(),
        Some(token)
    );
    assert_eq!(store.get_credential_by_lookup_id("nope").unwrap(), None);
    store.delete_credential("bot").unwrap();
    assert!(matches!(
        store.delete_credential("bot"),
        Err(StoreError::NotFound {
            kind: Kind::Credential,
            ..
        })
    ));
    assert_eq!(store.delete_credentials_of_user("alice").unwrap(), 2);
    assert_eq!(store.delete_credentials_of_user("alice").unwrap(), 0);
    assert!(store.list_credentials().unwrap().is_empty());
}

#[test]
fn sessions_insert_list_delete_expire_and_bulk_deletes() {
    let Some((_cluster, store)) = setup() else {
        return;
    };
    let s = session("sess-a", "alice", "ci", "2026-06-01T00:00:00Z");
    store.insert_session(&s).unwrap();
    let mut client = session("sess-b", "alice", "laptop", "2026-06-01T00:00:00Z");
    client.session_type = SessionType::Client;
    client.kind = SessionKind::Agent;
    store.insert_session(&client).unwrap();
    assert!(matches!(
        store.insert_session(&s),
        Err(StoreError::AlreadyExists {
            kind: Kind::Session,
            ..
        })
    ));
    assert!(matches!(
        store.insert_session(&session("sess-c", "bob", "x", "soon")),
        Err(StoreError::InvalidTimestamp {
            field: "expiresAt",
            ..
        })
    ));
    assert_eq!(
        store.list_sessions().unwrap(),
        vec![s.clone(), client.clone()]
    );
    assert_eq!(store.get_session("sess-b").unwrap(), Some(client));
    assert_eq!(store.get_session("nope").unwrap(), None);
    store.delete_session("sess-a").unwrap();
    assert!(matches!(
        store.delete_session("sess-a"),
        Err(StoreError::NotFound {
            kind: Kind::Session,
            ..
        })
    ));
    store.delete_session("sess-b").unwrap();

    // Expiry compares instants: 10:00+02:00 is 08:00Z, expired at 09:00Z.
    for (name, at) in [
        ("s1", "2026-06-01T10:00:00+02:00"),
        ("s2", "2026-06-01T09:00:00Z"),
        ("s3", "2026-06-01T09:00:01Z"),
    ] {
        store.insert_session(&session(name, "a", "c", at)).unwrap();
    }
    assert_eq!(
        store
            .delete_expired_sessions("2026-06-01T09:00:00Z")
            .unwrap(),
        2
    );
    assert_eq!(names(store.list_sessions().unwrap()), ["s3"]);
    assert!(matches!(
        store.delete_expired_sessions("now"),
        Err(StoreError::InvalidTimestamp { field: "now", .. })
    ));
    store.delete_session("s3").unwrap();

    for (name, user, cred) in [
        ("s1", "alice", "ci"),
        ("s2", "alice", "laptop"),
        ("s3", "bob", "ci-bob"),
        ("s4", "bob", "ci-bob"),
    ] {
        store
            .insert_session(&session(name, user, cred, "2030-01-01T00:00:00Z"))
            .unwrap();
    }
    let mut person = session("s-browser", "alice", "", "2030-01-01T00:00:00Z");
    person.kind = SessionKind::Browser;
    person.authentication = Authentication {
        method: AuthMethod::Oidc,
        identity_provider: Some("corp".into()),
        claims: serde_json::json!({"groups": ["eng"], "email": "a@example.com"}),
    };
    store.insert_session(&person).unwrap();
    assert_eq!(store.get_session("s-browser").unwrap(), Some(person));
    // Claims are the IdP's (a person may shape their name): kept exactly, NUL included.
    let mut odd = session("s-odd", "carol", "", "2030-01-01T00:00:00Z");
    odd.authentication.claims = serde_json::json!({"name": "c\u{0}rol"});
    store.insert_session(&odd).unwrap();
    assert_eq!(store.get_session("s-odd").unwrap(), Some(odd));
    store.delete_session("s-odd").unwrap();
    assert_eq!(
        store.delete_sessions_of_identity_provider("other").unwrap(),
        0
    );
    assert_eq!(store.delete_signed_in_sessions_of_user("alice").unwrap(), 1);
    assert_eq!(
        store.delete_sessions_of_identity_provider("corp").unwrap(),
        0
    );
    assert_eq!(store.delete_sessions_of_credential("ci-bob").unwrap(), 2);
    assert_eq!(store.delete_sessions_of_credential("ci-bob").unwrap(), 0);
    assert_eq!(store.delete_sessions_of_user("alice").unwrap(), 2);
    assert!(store.list_sessions().unwrap().is_empty());
}

#[test]
fn deleting_a_user_or_credential_takes_what_it_made_all_or_nothing() {
    let Some((cluster, store)) = setup() else {
        return;
    };
    store
        .upsert_resources(&[user("alice", None), user("bob", None)])
        .unwrap();
    store
        .insert_credential(&credential("ci", "alice", "pcid_1"))
        .unwrap();
    store
        .insert_credential(&credential("ci-bob", "bob", "pcid_2"))
        .unwrap();
    for (name, user, cred) in [("s1", "alice", "ci"), ("s2", "bob", "ci-bob")] {
        store
            .insert_session(&session(name, user, cred, "2030-01-01T00:00:00Z"))
            .unwrap();
    }
    store.delete_credential("ci-bob").unwrap();
    assert_eq!(names(store.list_sessions().unwrap()), ["s1"]);
    // Make the last statement of the cascade fail, as a crash there would stop it.
    cluster.sql(
        "postern",
        "CREATE FUNCTION stop() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'stop'; END $$;
         CREATE TRIGGER stop BEFORE DELETE ON credentials FOR EACH ROW EXECUTE FUNCTION stop();",
    );
    assert!(store.delete_resource(Kind::User, "alice").is_err());
    assert_eq!(store.list_resources().unwrap().len(), 2);
    assert_eq!(store.list_sessions().unwrap().len(), 1);
    assert_eq!(store.list_credentials().unwrap().len(), 1);
    cluster.sql("postern", "DROP TRIGGER stop ON credentials");
    store.delete_resource(Kind::User, "alice").unwrap();
    assert!(store.list_sessions().unwrap().is_empty());
    assert!(store.list_credentials().unwrap().is_empty());
}
