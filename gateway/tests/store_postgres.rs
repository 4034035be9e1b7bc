//! `PgStore` against a real PostgreSQL (a throwaway cluster, see `support/pg.rs`): the same
//! behaviours the SQLite store tests check (`src/store/tests/`), plus what only a shared
//! store has: concurrent migrations, import refusing a non-empty database. The change feed,
//! faults and TLS are in `store_postgres_feed.rs`. Each test skips, saying why, when the
//! PostgreSQL binaries are not installed.

mod support {
    pub mod pg;
}

use postern_common::resources::{
    AuthMethod, Authentication, CredentialInfo, CredentialType, GroupSpec, Kind, Metadata,
    PolicySpec, Resource, SessionInfo, SessionKind, SessionType, UserSpec,
};
use postern_gateway::limits::counters::CounterRow;
use postern_gateway::limits::window::Window;
use postern_gateway::store::usage::{UsageKey, UsageRow};
use postern_gateway::store::{
    CredentialRecord, PgStore, SqliteStore, Store, StoreBackend, StoreError, StoredCertificate,
};
use support::pg::Cluster;

/// A cluster and a store on a fresh database in it.
fn setup() -> Option<(Cluster, PgStore)> {
    let cluster = Cluster::start()?;
    let url = cluster.create_database("postern");
    let store = PgStore::connect(&url, "gw-test").expect("connect");
    Some((cluster, store))
}

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

fn credential(name: &str, user: &str, lookup_id: &str) -> CredentialRecord {
    CredentialRecord {
        info: CredentialInfo {
            name: name.into(),
            user: user.into(),
            credential_type: CredentialType::Oauth2,
            client_id: Some(lookup_id.into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
        },
        lookup_id: lookup_id.into(),
        secret_hash: [9u8; 32],
    }
}

fn session(name: &str, user: &str, credential: &str, expires_at: &str) -> SessionInfo {
    SessionInfo {
        name: name.into(),
        user: user.into(),
        session_type: SessionType::Clientless,
        kind: SessionKind::Workload,
        credential: credential.into(),
        authentication: Authentication::credential(CredentialType::Oauth2),
        created_at: "2026-01-01T00:00:00Z".into(),
        expires_at: expires_at.into(),
    }
}

fn names(v: Vec<SessionInfo>) -> Vec<String> {
    v.into_iter().map(|s| s.name).collect()
}

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
    let again = PgStore::connect(&url, "gw-2").unwrap();
    again.upsert_resources(&[user("alice", None)]).unwrap();
    drop(again);
    cluster.sql("postern", "UPDATE postern_schema SET version = 99");
    let err = PgStore::connect(&url, "gw-3").unwrap_err();
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
            std::thread::spawn(move || PgStore::connect(&url, &format!("gw-{i}")))
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

fn usage_row(
    time: &str,
    user: &str,
    groups: &[&str],
    model: &str,
    p: u64,
    c: u64,
    est: bool,
) -> UsageRow {
    UsageRow {
        time: time.into(),
        user: Some(user.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        service: Some("ai".into()),
        config: None,
        model: Some(model.into()),
        prompt: p,
        completion: c,
        total: p + c,
        estimated: est,
        gateway: Some("gw-a".into()),
    }
}

#[test]
fn usage_aggregates_by_each_key_window_and_day() {
    let Some((_cluster, store)) = setup() else {
        return;
    };
    let rows = vec![
        usage_row(
            "2026-01-01T00:00:00.000Z",
            "alice",
            &["dev", "ops"],
            "m1",
            11,
            7,
            false,
        ),
        usage_row(
            "2026-01-02T00:00:00.000Z",
            "alice",
            &["dev", "ops"],
            "m2",
            11,
            7,
            false,
        ),
        usage_row("2026-01-02T00:00:01.000Z", "bob", &[], "m1", 1, 2, true),
    ];
    store.insert_usage(&rows).unwrap();
    store.insert_usage(&[]).unwrap();
    let users = store.usage_totals(UsageKey::User, "2000").unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(
        (
            users[0].key.as_str(),
            users[0].requests,
            users[0].prompt_tokens,
            users[0].completion_tokens,
            users[0].total_tokens,
            users[0].estimated
        ),
        ("alice", 2, 22, 14, 36, 0)
    );
    assert_eq!((users[1].key.as_str(), users[1].estimated), ("bob", 1));
    let groups = store.usage_totals(UsageKey::Group, "2000").unwrap();
    let keys: Vec<_> = groups
        .iter()
        .map(|g| (g.key.as_str(), g.requests, g.total_tokens))
        .collect();
    assert_eq!(keys, vec![("dev", 2, 36), ("ops", 2, 36), ("-", 1, 3)]);
    let recent = store
        .usage_totals(UsageKey::Model, "2026-01-02T00:00:00.000Z")
        .unwrap();
    let keys: Vec<_> = recent
        .iter()
        .map(|g| (g.key.as_str(), g.requests))
        .collect();
    assert_eq!(keys, vec![("m2", 1), ("m1", 1)]);
    assert_eq!(
        store.usage_totals(UsageKey::Config, "2000").unwrap()[0].key,
        "-"
    );
    assert!(store
        .usage_totals(UsageKey::Service, "2027")
        .unwrap()
        .is_empty());
    assert_eq!(
        store.usage_daily(None, "2000").unwrap(),
        vec![
            ("2026-01-01".to_string(), "m1".to_string(), 18),
            ("2026-01-02".to_string(), "m1".to_string(), 3),
            ("2026-01-02".to_string(), "m2".to_string(), 18),
        ]
    );
    assert_eq!(
        store.usage_daily(Some("bob"), "2000").unwrap(),
        vec![("2026-01-02".to_string(), "m1".to_string(), 3)]
    );
    assert_eq!(store.list_usage().unwrap(), rows);
}

#[test]
fn limit_counters_grants_and_tunnel_addresses() {
    let Some((_cluster, store)) = setup() else {
        return;
    };
    let row = |key: &str, start, end, used| CounterRow {
        key: key.into(),
        window: Window { start, end },
        used,
    };
    store
        .save_limit_counters(&[row("a", 0, 60, 5), row("b", 60, 120, 7)], 30)
        .unwrap();
    store
        .save_limit_counters(&[row("a", 0, 60, 6)], 30)
        .unwrap();
    let mut got = store.load_limit_counters(30).unwrap();
    got.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(got, vec![row("a", 0, 60, 6), row("b", 60, 120, 7)]);
    store.save_limit_counters(&[], 60).unwrap();
    assert_eq!(
        store.load_limit_counters(0).unwrap(),
        vec![row("b", 60, 120, 7)]
    );

    let w1 = Window { start: 0, end: 60 };
    let w2 = Window {
        start: 60,
        end: 120,
    };
    assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 4);
    assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 4);
    assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 2);
    assert_eq!(store.grant_limit("k", w1, 10, 4).unwrap(), 0);
    store.return_limit("k", 0, 3).unwrap();
    store.return_limit("k", 60, 100).unwrap(); // another window: ignored
    assert_eq!(store.grant_limit("k", w1, 10, 5).unwrap(), 3);
    store.charge_limit("k", w1, 5).unwrap();
    store.return_limit("k", 0, 2).unwrap();
    assert_eq!(store.grant_limit("k", w1, 10, 5).unwrap(), 0);
    // A newer window starts from nothing; the old one then grants nothing.
    assert_eq!(store.grant_limit("k", w2, 10, 7).unwrap(), 7);
    assert_eq!(store.grant_limit("k", w1, 10, 1).unwrap(), 0);
    store.charge_limit("k", w1, 50).unwrap();
    assert_eq!(store.grant_limit("k", w2, 10, 7).unwrap(), 3);
    store.charge_limit("fresh", w2, 4).unwrap();
    assert_eq!(store.grant_limit("fresh", w2, 10, 9).unwrap(), 6);
    assert_eq!(store.prune_limit_grants(60).unwrap(), 0);
    assert_eq!(store.prune_limit_grants(120).unwrap(), 2);
    assert_eq!(store.grant_limit("k", w2, 10, 7).unwrap(), 7);

    assert!(store.claim_tunnel_address(2, "s1", "gw-a").unwrap());
    assert!(store.claim_tunnel_address(2, "s1", "gw-a").unwrap());
    assert!(!store.claim_tunnel_address(2, "s2", "gw-b").unwrap());
    assert!(store.claim_tunnel_address(3, "s2", "gw-b").unwrap());
    assert!(!store.claim_tunnel_address(4, "s2", "gw-b").unwrap());
    assert_eq!(store.tunnel_address_of("s2").unwrap(), Some(3));
    assert_eq!(store.tunnel_address_of("nobody").unwrap(), None);
    assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![2, 3]);
    store.release_tunnel_address("s1").unwrap();
    store.release_tunnel_address("s1").unwrap();
    assert!(store.claim_tunnel_address(2, "s3", "gw-b").unwrap());
    assert!(store.claim_tunnel_address(65535, "s4", "gw-a").unwrap());
    assert_eq!(
        store.release_tunnel_addresses_of_gateway("gw-b").unwrap(),
        2
    );
    assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![65535]);
}

#[test]
fn grants_across_many_threads_never_exceed_the_limit() {
    let Some((cluster, store)) = setup() else {
        return;
    };
    let other = PgStore::connect(&cluster.url("postern"), "gw-other").unwrap();
    let stores = [std::sync::Arc::new(store), std::sync::Arc::new(other)];
    let w = Window { start: 0, end: 60 };
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let s = stores[i % 2].clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| s.grant_limit("rpm", w, 100, 1).unwrap())
                    .sum::<u64>()
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 100);
}

fn cert(name: &str, not_after: i64) -> StoredCertificate {
    StoredCertificate {
        name: name.into(),
        identifiers: vec![name.into(), format!("*.{name}")],
        chain_pem: "-----BEGIN CERTIFICATE-----".into(),
        key_sealed: vec![1, 2, 3],
        not_before: 10,
        not_after,
        directory: "https://acme.test/dir".into(),
    }
}

#[test]
fn certificates_and_acme_accounts() {
    let Some((_cluster, s)) = setup() else { return };
    s.put_certificate(&cert("b.test", 100)).unwrap();
    s.put_certificate(&cert("a.test", 100)).unwrap();
    s.put_certificate(&cert("a.test", 200)).unwrap();
    let all = s.list_certificates().unwrap();
    assert_eq!(all, vec![cert("a.test", 200), cert("b.test", 100)]);
    s.delete_certificate("a.test").unwrap();
    s.delete_certificate("missing.test").unwrap();
    assert_eq!(s.list_certificates().unwrap(), vec![cert("b.test", 100)]);
    assert_eq!(s.get_acme_account("https://a/dir").unwrap(), None);
    s.put_acme_account("https://a/dir", b"one").unwrap();
    s.put_acme_account("https://a/dir", b"two").unwrap();
    s.put_acme_account("https://b/dir", b"three").unwrap();
    assert_eq!(
        s.get_acme_account("https://a/dir").unwrap(),
        Some(b"two".to_vec())
    );
    let accounts = s.list_acme_accounts().unwrap();
    assert_eq!(accounts.len(), 2);
    let now = chrono::Utc::now().timestamp();
    assert!((accounts[0].2 - now).abs() < 60, "{}", accounts[0].2);
}

/// A SQLite store holding something of every table.
fn filled_sqlite() -> Store {
    let s = Store::from_backend(SqliteStore::open_in_memory().unwrap());
    s.upsert_resources(&[user("alice", Some("a@example.com")), group("dev")])
        .unwrap();
    s.put_secret("api-key", b"sealed", false).unwrap();
    s.insert_credential(&credential("ci", "alice", "pcid_1"))
        .unwrap();
    s.insert_session(&session("s1", "alice", "ci", "2030-01-01T00:00:00Z"))
        .unwrap();
    s.insert_usage(&[usage_row(
        "2026-01-01T00:00:00.000Z",
        "alice",
        &["dev"],
        "m1",
        1,
        2,
        false,
    )])
    .unwrap();
    s.save_limit_counters(
        &[CounterRow {
            key: "rpm".into(),
            window: Window {
                start: 0,
                end: i64::MAX,
            },
            used: 3,
        }],
        0,
    )
    .unwrap();
    s.put_acme_account("https://a/dir", b"acct").unwrap();
    s.put_certificate(&cert("a.test", 100)).unwrap();
    s
}

#[test]
fn import_copies_everything_and_refuses_a_non_empty_database() {
    let Some((_cluster, pg)) = setup() else {
        return;
    };
    let source = filled_sqlite();
    let dump = source.export().unwrap();
    assert!(dump.counts().tables().iter().all(|(_, n)| *n > 0));
    pg.import(&dump, false).unwrap();
    let pg = Store::from_backend(pg);
    let copied = pg.export().unwrap();
    assert_eq!(copied.counts(), dump.counts());
    assert_eq!(copied, dump);

    let err = pg.import(&dump, false).unwrap_err();
    assert!(matches!(err, StoreError::NotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("2 rows in resources"), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    // Nothing was written by the refused import.
    assert_eq!(pg.export().unwrap().counts(), dump.counts());

    pg.upsert_resources(&[group("extra")]).unwrap();
    pg.import(&dump, true).unwrap();
    assert_eq!(pg.export().unwrap(), dump);
}
