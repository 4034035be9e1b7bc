//! What only a shared PostgreSQL store does, against a real server (`support/pg.rs`): the
//! change feed between two gateways' stores (own notices skipped, `Resync` after the server
//! restarts), `Unavailable` within the ceiling when the server is stopped or frozen, the
//! synchronous API called from inside tokio runtimes, and TLS with `sslmode=verify-full`
//! against a test CA (and refusal with the wrong one). Skips, saying why, when the
//! PostgreSQL binaries are not installed.

mod support {
    pub mod pg;
}

/// The notice key every test gateway shares (the gateways of a store share `secret.key`).
fn sealer() -> std::sync::Arc<dyn postern_gateway::store::feed::NoticeSealer> {
    std::sync::Arc::new(postern_gateway::identity::SecretBox::from_key(&[42; 32]))
}

use postern_common::resources::{
    Authentication, CredentialType, Kind, Metadata, Resource, SessionInfo, SessionKind,
    SessionType, UserSpec,
};
use postern_gateway::store::feed::{FeedEvent, Notice, Topic};
use postern_gateway::store::usage::UsageRow;
use postern_gateway::store::{PgStore, StoreBackend, StoreError};
use std::time::{Duration, Instant};
use support::pg::{Cluster, ServerTls};
use tokio::sync::mpsc::Receiver;

fn user(name: &str) -> Resource {
    Resource::User {
        metadata: Metadata {
            name: name.into(),
            ..Default::default()
        },
        spec: UserSpec::default(),
    }
}

fn session(name: &str) -> SessionInfo {
    SessionInfo {
        name: name.into(),
        user: "alice".into(),
        session_type: SessionType::Clientless,
        kind: SessionKind::Workload,
        credential: "ci".into(),
        authentication: Authentication::credential(CredentialType::Oauth2),
        created_at: "2026-01-01T00:00:00Z".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
    }
}

/// The next event within `within`, or `None`.
fn next(rx: &mut Receiver<FeedEvent>, within: Duration) -> Option<FeedEvent> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(within, rx.recv()).await.ok().flatten() })
}

/// The next event, which must be a notice from `origin` about `topic`; returns it and how
/// long it took to arrive.
fn expect_notice(rx: &mut Receiver<FeedEvent>, origin: &str, topic: Topic) -> (Notice, Duration) {
    let started = Instant::now();
    match next(rx, Duration::from_secs(5)) {
        Some(FeedEvent::Notice(n)) => {
            assert_eq!((n.origin.as_str(), n.topic), (origin, topic), "{n:?}");
            (n, started.elapsed())
        }
        other => panic!("expected a {topic:?} notice from {origin}, got {other:?}"),
    }
}

#[test]
fn every_write_reaches_the_other_gateway_and_its_own_are_skipped() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_database("postern");
    let a = PgStore::connect(&url, "gw-a", sealer()).unwrap();
    let b = PgStore::connect(&url, "gw-b", sealer()).unwrap();
    let mut rx = b.subscribe().expect("a shared store has a feed");
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)),
        Some(FeedEvent::Resync)
    );

    let s = session("s-1");
    a.insert_session(&s).unwrap();
    let (n, took) = expect_notice(&mut rx, "gw-a", Topic::Sessions);
    assert_eq!(n.name.as_deref(), Some("s-1"));
    assert_eq!(n.session.as_deref(), Some(&s));
    assert!(took < Duration::from_secs(1), "notice took {took:?}");

    a.upsert_resources(&[user("alice")]).unwrap();
    expect_notice(&mut rx, "gw-a", Topic::Resources);
    // Applying the same again changes nothing and tells no one.
    a.upsert_resources(&[user("alice")]).unwrap();
    a.put_secret("k", b"sealed", false).unwrap();
    assert_eq!(
        expect_notice(&mut rx, "gw-a", Topic::Secrets)
            .0
            .name
            .as_deref(),
        Some("k")
    );
    a.delete_session("s-1").unwrap();
    let (n, _) = expect_notice(&mut rx, "gw-a", Topic::Sessions);
    assert_eq!((n.name.as_deref(), n.session), (Some("s-1"), None));
    a.insert_session(&session("s-2")).unwrap();
    expect_notice(&mut rx, "gw-a", Topic::Sessions);
    a.delete_resource(Kind::User, "alice").unwrap();
    expect_notice(&mut rx, "gw-a", Topic::Resources);
    let (n, _) = expect_notice(&mut rx, "gw-a", Topic::Sessions);
    assert_eq!(n.name, None);
    expect_notice(&mut rx, "gw-a", Topic::Credentials);
    assert!(a.claim_tunnel_address(7, "s-9", "gw-a").unwrap());
    expect_notice(&mut rx, "gw-a", Topic::TunnelAddresses);
    a.put_acme_account("https://acme/dir", b"acct").unwrap();
    expect_notice(&mut rx, "gw-a", Topic::Certificates);

    // A failed write sends nothing: its transaction, notice included, rolled back.
    assert!(a.put_secret("k", b"again", false).is_err());
    // Usage and limit writes send nothing; B's own writes are not echoed back to it.
    a.insert_usage(&[UsageRow {
        time: "2026-01-01T00:00:00.000Z".into(),
        user: None,
        groups: vec![],
        service: None,
        config: None,
        model: None,
        prompt: 1,
        completion: 1,
        total: 2,
        estimated: false,
        gateway: Some("gw-a".into()),
    }])
    .unwrap();
    a.grant_limit(
        "rpm",
        postern_gateway::limits::window::Window { start: 0, end: 60 },
        10,
        1,
    )
    .unwrap();
    b.put_secret("from-b", b"sealed", false).unwrap();
    b.delete_sessions_of_user("alice").unwrap();
    a.delete_secret("k").unwrap();
    let (n, _) = expect_notice(&mut rx, "gw-a", Topic::Secrets);
    assert_eq!(n.name.as_deref(), Some("k"));
    assert_eq!(next(&mut rx, Duration::from_millis(300)), None);

    // A gateway hears only the others: A hears B.
    let mut rx_a = a.subscribe().unwrap();
    assert_eq!(
        next(&mut rx_a, Duration::from_secs(5)),
        Some(FeedEvent::Resync)
    );
    a.put_secret("from-a", b"x", false).unwrap();
    b.delete_secret("from-b").unwrap();
    assert_eq!(
        expect_notice(&mut rx_a, "gw-b", Topic::Secrets)
            .0
            .name
            .as_deref(),
        Some("from-b")
    );
}

#[test]
fn the_feed_says_lost_then_resyncs_after_the_server_restarts() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_database("postern");
    let a = PgStore::connect(&url, "gw-a", sealer()).unwrap();
    let b = PgStore::connect(&url, "gw-b", sealer()).unwrap();
    let mut rx = b.subscribe().unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)),
        Some(FeedEvent::Resync)
    );
    cluster.stop();
    match next(&mut rx, Duration::from_secs(10)) {
        Some(FeedEvent::Lost(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected Lost, got {other:?}"),
    }
    // Writes while it is down are refused, not queued.
    assert!(a
        .put_secret("while-down", b"x", false)
        .unwrap_err()
        .is_unavailable());
    cluster.start_again();
    let started = Instant::now();
    assert_eq!(
        next(&mut rx, Duration::from_secs(15)),
        Some(FeedEvent::Resync)
    );
    // Backoff is capped at 5 s: back within that plus a connect (and slack for a loaded machine).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    a.put_secret("after", b"x", false).unwrap();
    let (n, _) = expect_notice(&mut rx, "gw-a", Topic::Secrets);
    assert_eq!(n.name.as_deref(), Some("after"));
}

#[test]
fn a_feed_started_while_the_server_is_down_says_so_then_resyncs() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_database("postern");
    let store = PgStore::connect(&url, "gw-a", sealer()).unwrap();
    cluster.stop();
    let mut rx = store.subscribe().unwrap();
    assert!(matches!(
        next(&mut rx, Duration::from_secs(10)),
        Some(FeedEvent::Lost(_))
    ));
    // Once per outage, however many reconnects fail.
    assert_eq!(next(&mut rx, Duration::from_millis(1500)), None);
    cluster.start_again();
    assert_eq!(
        next(&mut rx, Duration::from_secs(10)),
        Some(FeedEvent::Resync)
    );
}

#[test]
fn a_stopped_server_gives_unavailable_quickly_and_the_store_comes_back() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_database("postern");
    let store = PgStore::connect(&url, "gw-a", sealer()).unwrap();
    store.upsert_resources(&[user("alice")]).unwrap();
    cluster.stop();
    for _ in 0..2 {
        let started = Instant::now();
        let err = store.list_resources().unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        let err = store.upsert_resources(&[user("bob")]).unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            err.to_string().contains("store (postgres) is unreachable"),
            "{err}"
        );
        assert!(store.ping().unwrap_err().is_unavailable());
    }
    // A gateway cannot start against it either, and the message hides the password.
    let err = PgStore::connect(
        &format!(
            "postgres://postgres:s3cret@127.0.0.1:{}/postern?sslmode=disable",
            cluster.port
        ),
        "gw-b",
        sealer(),
    )
    .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(err.to_string().contains("***"), "{err}");
    cluster.start_again();
    assert_eq!(store.list_resources().unwrap().len(), 1);
    store.upsert_resources(&[user("bob")]).unwrap();
}

#[test]
fn a_frozen_server_gives_unavailable_within_the_ceiling() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_database("postern");
    let store = PgStore::connect(&url, "gw-a", sealer()).unwrap();
    store.ping().unwrap();
    cluster.freeze();
    let started = Instant::now();
    let err = store.list_resources().unwrap_err();
    let took = started.elapsed();
    cluster.thaw();
    assert!(err.is_unavailable(), "{err}");
    assert!(took <= Duration::from_millis(16_500), "{took:?}");
    store.ping().unwrap();
}

fn cluster_with_database() -> Option<(Cluster, String)> {
    let cluster = Cluster::start()?;
    let url = cluster.create_database("postern");
    Some((cluster, url))
}

#[tokio::test(flavor = "current_thread")]
async fn the_sync_api_works_inside_a_single_threaded_runtime() {
    // The cluster helper blocks on its own runtime: set it up off this one.
    let Some((cluster, url)) = std::thread::spawn(cluster_with_database).join().unwrap() else {
        return;
    };
    let store = PgStore::connect(&url, "gw-a", sealer()).unwrap();
    store.upsert_resources(&[user("alice")]).unwrap();
    assert_eq!(store.list_resources().unwrap().len(), 1);
    let mut rx = store.subscribe().unwrap();
    let other = PgStore::connect(&url, "gw-b", sealer()).unwrap();
    assert_eq!(rx.recv().await, Some(FeedEvent::Resync));
    other.put_secret("k", b"x", false).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(FeedEvent::Notice(n))) => assert_eq!(n.topic, Topic::Secrets),
        other => panic!("{other:?}"),
    }
    // Dropping the store inside a runtime must not panic.
    drop(store);
    drop(other);
    std::thread::spawn(move || drop(cluster)).join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_api_works_on_runtime_workers_and_in_spawn_blocking() {
    let Some((cluster, url)) = std::thread::spawn(cluster_with_database).join().unwrap() else {
        return;
    };
    let store = std::sync::Arc::new(PgStore::connect(&url, "gw-a", sealer()).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.put_secret(&format!("k{i}"), b"x", false) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let s = store.clone();
    let n = tokio::task::spawn_blocking(move || s.list_secrets().unwrap().len())
        .await
        .unwrap();
    assert_eq!(n, 8);
    let s = store.clone();
    let from_thread = std::thread::spawn(move || s.list_secrets().unwrap().len())
        .join()
        .unwrap();
    assert_eq!(from_thread, 8);
    drop(store);
    std::thread::spawn(move || drop(cluster)).join().unwrap();
}

/// A CA, and a server certificate for `localhost` only, signed by it.
fn test_pki() -> (String, ServerTls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "postern test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (
        ca.pem(),
        ServerTls {
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        },
    )
}

#[test]
fn tls_verify_full_against_a_test_ca_and_refusals() {
    let (ca_pem, tls) = test_pki();
    let Some(cluster) = Cluster::start_with(Some(tls)) else {
        return;
    };
    cluster.create_database("postern");
    let ca = cluster.dir().join("client-ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let (wrong_ca_pem, _) = test_pki();
    let wrong = cluster.dir().join("wrong-ca.pem");
    std::fs::write(&wrong, wrong_ca_pem).unwrap();
    let url = |host: &str, mode: &str, root: &std::path::Path, app: &str| {
        format!(
            "postgres://postgres@{host}:{}/postern?sslmode={mode}&sslrootcert={}&application_name={app}",
            cluster.port,
            root.display()
        )
    };

    let store = PgStore::connect(
        &url("localhost", "verify-full", &ca, "tls-full"),
        "gw-a",
        sealer(),
    )
    .expect("verify-full with the right CA connects");
    store.upsert_resources(&[user("alice")]).unwrap();
    let encrypted = cluster.query_text(
        "postern",
        "SELECT bool_and(s.ssl)::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'tls-full'",
    );
    assert_eq!(encrypted.as_deref(), Some("true"));
    let mut rx = store.subscribe().unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)),
        Some(FeedEvent::Resync)
    );

    let err = PgStore::connect(
        &url("localhost", "verify-full", &wrong, "x"),
        "gw-b",
        sealer(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(!err.is_unavailable(), "a wrong CA is not an outage: {err}");
    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let err =
        PgStore::connect(&url("127.0.0.1", "verify-full", &ca, "x"), "gw-b", sealer()).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    PgStore::connect(&url("127.0.0.1", "verify-ca", &ca, "x"), "gw-b", sealer())
        .expect("verify-ca checks the chain only");
    PgStore::connect(&url("127.0.0.1", "require", &wrong, "x"), "gw-b", sealer())
        .expect("require encrypts without checking, as libpq");
    let missing = cluster.dir().join("missing.pem");
    let err = PgStore::connect(
        &url("localhost", "verify-full", &missing, "x"),
        "gw-b",
        sealer(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}

#[test]
fn sslmode_require_refuses_a_server_without_tls() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.create_database("postern");
    let base = format!("postgres://postgres@127.0.0.1:{}/postern", cluster.port);
    let err = PgStore::connect(&format!("{base}?sslmode=require"), "gw", sealer()).unwrap_err();
    // A configuration problem, not an outage: a gateway starting with it stops at once.
    assert!(matches!(err, StoreError::Postgres(_)), "{err}");
    assert!(err.to_string().contains("does not support TLS"), "{err}");
    PgStore::connect(&format!("{base}?sslmode=prefer"), "gw", sealer())
        .expect("prefer falls back to plain");
}

#[test]
fn forged_notices_are_never_acted_on() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.create_database("postern");
    let b = PgStore::connect(&url, "gw-b", sealer()).unwrap();
    let mut rx = b.subscribe().expect("a shared store has a feed");
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)),
        Some(FeedEvent::Resync)
    );
    // Any role that may connect may NOTIFY: a plain notice bringing a Session into memory.
    let forged = serde_json::json!({"o": "gw-evil", "t": "sessions", "n": "s-x",
        "s": serde_json::to_value(session("s-x")).unwrap()});
    cluster.sql("postern", &format!("NOTIFY postern_changes, '{forged}'"));
    // A gateway with another secret.key seals with another key.
    let other_key = std::sync::Arc::new(postern_gateway::identity::SecretBox::from_key(&[7; 32]));
    let stranger = PgStore::connect(&url, "gw-stranger", other_key).unwrap();
    stranger.insert_session(&session("s-y")).unwrap();
    assert_eq!(next(&mut rx, Duration::from_millis(700)), None);
    // The feed still works for a gateway with the right key.
    let a = PgStore::connect(&url, "gw-a", sealer()).unwrap();
    a.insert_session(&session("s-z")).unwrap();
    let (n, _) = expect_notice(&mut rx, "gw-a", Topic::Sessions);
    assert_eq!(n.name.as_deref(), Some("s-z"));
}
