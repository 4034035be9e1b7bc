//! `PgStore` against a real PostgreSQL (`support/pg.rs`): usage aggregates summing every
//! gateway, limit counters and the shared limit grants (never more than the limit, however
//! many gateways ask at once), tunnel address claims, certificates, and `import` (what
//! `posternd migrate` writes) refusing a non-empty database. Skips, saying why, when the
//! PostgreSQL binaries are not installed.

mod support {
    pub mod fixtures;
    pub mod pg;
}

use postern_gateway::limits::counters::CounterRow;
use postern_gateway::limits::window::Window;
use postern_gateway::store::usage::UsageKey;
use postern_gateway::store::{
    PgStore, SqliteStore, Store, StoreBackend, StoreError, StoredCertificate,
};
use support::fixtures::*;

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
    let other = PgStore::connect(&cluster.url("postern"), "gw-other", sealer()).unwrap();
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

/// Rows go in by thousands per statement: more than one batch, with absent fields, keep
/// their order and every value.
#[test]
fn usage_rows_in_several_batches_keep_every_value() {
    let Some((_cluster, store)) = setup() else {
        return;
    };
    let rows: Vec<_> = (0..12_345u64)
        .map(|i| {
            let mut r = usage_row(
                &format!("2026-01-01T00:00:{:02}.{:06}Z", i % 60, i),
                &format!("user-{}", i % 7),
                if i % 2 == 0 { &["dev", "ops"] } else { &[] },
                "m\0odel",
                i,
                2 * i,
                i % 3 == 0,
            );
            if i % 5 == 0 {
                r.user = None;
                r.model = None;
            }
            r.gateway = (i % 4 == 0).then(|| "gw-a".to_string());
            r
        })
        .collect();
    store.insert_usage(&rows).unwrap();
    let mut stored = store.list_usage().unwrap();
    assert_eq!(stored.len(), rows.len());
    // PostgreSQL text holds no NUL: it comes back as U+FFFD, as one row at a time did.
    let mut want = rows.clone();
    for r in &mut want {
        r.model = r.model.as_ref().map(|m| m.replace('\0', "\u{FFFD}"));
    }
    stored.sort_by_key(|r| r.prompt);
    assert_eq!(stored, want);
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

#[test]
fn a_nul_from_an_upstream_does_not_lose_the_usage_batch() {
    let Some((_cluster, store)) = setup() else {
        return;
    };
    let mut hostile = usage_row(
        "2026-01-01T00:00:00.000Z",
        "alice",
        &["d\0v"],
        "m\0x",
        1,
        2,
        false,
    );
    hostile.service = Some("a\0i".into());
    let fine = usage_row("2026-01-01T00:00:01.000Z", "bob", &[], "m2", 1, 1, false);
    store.insert_usage(&[hostile, fine]).unwrap();
    let rows = store.list_usage().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].model.as_deref(), Some("m\u{FFFD}x"));
    assert_eq!(rows[0].service.as_deref(), Some("a\u{FFFD}i"));
    assert_eq!(rows[0].groups, ["d\u{FFFD}v"]);
    assert_eq!(rows[1].model.as_deref(), Some("m2"));
}

#[test]
fn leases_have_one_holder_until_they_expire_and_settings_are_kept() {
    let Some((cluster, store)) = setup() else {
        return;
    };
    assert!(store.acquire_lease("acme", "gw-a", 100, 160).unwrap());
    assert!(!store.acquire_lease("acme", "gw-b", 120, 180).unwrap());
    // The holder extends it; another takes it only once it has expired.
    assert!(store.acquire_lease("acme", "gw-a", 150, 210).unwrap());
    assert!(!store.acquire_lease("acme", "gw-b", 200, 260).unwrap());
    assert!(store.acquire_lease("acme", "gw-b", 210, 270).unwrap());
    store.release_lease("acme", "gw-a").unwrap(); // not its holder: nothing
    assert!(!store.acquire_lease("acme", "gw-a", 220, 280).unwrap());
    store.release_lease("acme", "gw-b").unwrap();
    assert!(store.acquire_lease("acme", "gw-a", 220, 280).unwrap());

    // Settings: bytes by name, replaced in place.
    assert_eq!(store.get_setting("join-bundle").unwrap(), None);
    store.put_setting("join-bundle", b"one").unwrap();
    store.put_setting("join-bundle", &[0, 255]).unwrap();
    assert_eq!(
        store.get_setting("join-bundle").unwrap(),
        Some(vec![0, 255])
    );

    // Gateways asking at once: exactly one wins.
    let url = cluster.url("postern");
    let winners: usize = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let s = PgStore::connect(&url, &format!("gw-{i}"), sealer()).unwrap();
                s.acquire_lease("race", &format!("gw-{i}"), 1000, 1060)
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .sum();
    assert_eq!(winners, 1);
}
