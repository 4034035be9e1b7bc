//! Two gateways on one store: two `Limiter`s, each with its own connection to one SQLite
//! file that says it is shared (`test_store`), driven concurrently on a multi-thread runtime.

use super::plan::{charges, Owner, Subject};
use super::shared::IDLE_SECS;
use super::test_store::SharedSqlite;
use super::*;
use crate::store::Store;
use postern_common::resources::{LimitBy, LimitSpec};
use serde_json::json;
use std::sync::atomic::Ordering;

const T0: i64 = 1_800_000_000; // a multiple of 60 and 3600: 2027-01-15T08:00:00Z

/// One gateway: its limiter and its own connection to the shared database.
struct Gw {
    lim: Arc<Limiter>,
    store: Arc<Store>,
    down: Arc<std::sync::atomic::AtomicBool>,
    grants: Arc<std::sync::atomic::AtomicUsize>,
    grant_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("postern-limits-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("postern.db")
}

fn gateway(db: &std::path::Path) -> Gw {
    let backend = SharedSqlite::open(db);
    let (down, grants) = (backend.down.clone(), backend.grants.clone());
    let grant_delay_ms = backend.grant_delay_ms.clone();
    let store = Arc::new(Store::from_backend(backend));
    let lim = Arc::new(Limiter::new(1000).with_gateways(2));
    lim.load(&store, T0).unwrap();
    assert!(lim.is_shared());
    Gw {
        lim,
        store,
        down,
        grants,
        grant_delay_ms,
    }
}

fn limit(requests: Option<u64>, tokens: Option<u64>, per: &str) -> LimitSpec {
    LimitSpec {
        name: "l".into(),
        requests,
        tokens,
        per: per.into(),
        by: LimitBy::Service,
    }
}

fn plan(l: &LimitSpec) -> Plan {
    let mut out = Vec::new();
    let subject = Subject {
        user: "alice",
        groups: &[],
        credential: "c",
    };
    charges(
        Owner::Service("s"),
        std::slice::from_ref(l),
        &subject,
        &mut out,
    );
    Plan { charges: out }
}

const KEY: &str = "Service/s/l|service:";

/// What the store has left to grant of `limit` in `window` (takes it, so call last).
fn left_in_store(store: &Store, window: Window, limit: u64) -> u64 {
    store.grant_limit(KEY, window, limit, u64::MAX).unwrap()
}

use super::window::Window;

/// What one gateway's burst did: requests admitted, tokens the responses reported, and how
/// many of those were above the reservations.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    admitted: u64,
    spent: u64,
    above: u64,
}

/// 50 concurrent admissions on each gateway, settled (token limits) half 7 tokens above their
/// reservation and half 7 below.
async fn burst(
    gws: &[&Gw],
    l: &LimitSpec,
    body: Option<serde_json::Value>,
    now: i64,
) -> Vec<Tally> {
    let mut tasks = Vec::new();
    for i in 0..50 {
        for (g, gw) in gws.iter().enumerate() {
            let (lim, store, l, body) = (gw.lim.clone(), gw.store.clone(), l.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let admitted = lim.admit_async(plan(&l), body.as_ref(), now, &store).await;
                let Ok(a) = admitted else {
                    return (g, Tally::default());
                };
                tokio::task::yield_now().await;
                let reserved = a.held.first().map(|h| h.amount);
                let actual = reserved.map(|r| if i % 2 == 0 { r + 7 } else { r - 7 });
                a.settle(actual);
                let above = if i % 2 == 0 && actual.is_some() { 7 } else { 0 };
                let spent = actual.unwrap_or(0);
                (
                    g,
                    Tally {
                        admitted: 1,
                        spent,
                        above,
                    },
                )
            }));
        }
    }
    let mut out = vec![Tally::default(); gws.len()];
    for t in tasks {
        let (g, one) = t.await.unwrap();
        out[g].admitted += one.admitted;
        out[g].spent += one.spent;
        out[g].above += one.above;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_never_admit_more_than_a_request_limit() {
    let db = scratch("requests");
    let (a, b) = (gateway(&db), gateway(&db));
    let l = limit(Some(30), None, "1h");
    let got = burst(&[&a, &b], &l, None, T0).await;
    let (na, nb) = (got[0].admitted, got[1].admitted);
    eprintln!("burst admitted {na} + {nb} of 30");
    assert!(na + nb <= 30, "admitted {na} + {nb} of 30");
    assert!(na + nb >= 15, "admitted only {na} + {nb} of 30");
    // Grants left unspent by a race on one gateway go back once it is idle; then the other
    // spends them, and the two together admit exactly the limit, never one more.
    for gw in [&a, &b] {
        gw.lim.flush(&gw.store, T0 + IDLE_SECS).unwrap();
    }
    let mut more = 0;
    while b
        .lim
        .admit_async(plan(&l), None, T0 + IDLE_SECS + 1, &b.store)
        .await
        .is_ok()
    {
        more += 1;
    }
    assert_eq!(na + nb + more, 30, "{na} + {nb} + {more}");
    assert!(a
        .lim
        .admit_async(plan(&l), None, T0 + IDLE_SECS + 2, &a.store)
        .await
        .is_err());
    let hour = Window {
        start: T0,
        end: T0 + 3600,
    };
    assert_eq!(left_in_store(&a.store, hour, 30), 0);
}

#[tokio::test]
async fn requests_the_grant_covers_never_wait_for_the_store() {
    let db = scratch("covered");
    let a = gateway(&db);
    let l = limit(Some(1000), None, "1h");
    for i in 0..125 {
        a.lim
            .admit_async(plan(&l), None, T0 + i / 10, &a.store)
            .await
            .unwrap();
    }
    // one grant of ceil(1000 / (4 × 2)) = 125 covered all of them
    assert_eq!(a.grants.load(Ordering::SeqCst), 1);
    a.lim
        .admit_async(plan(&l), None, T0 + 13, &a.store)
        .await
        .unwrap();
    assert_eq!(a.grants.load(Ordering::SeqCst), 2);
    assert_eq!(a.lim.counters().share(KEY, T0), (125 + 110, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_a_token_budget_within_the_documented_bound() {
    let db = scratch("tokens");
    let (a, b) = (gateway(&db), gateway(&db));
    let budget = 1000;
    let l = limit(None, Some(budget), "day");
    // each request reserves 20 + ceil(12 / 4) = 23 tokens
    let body = json!({"max_tokens": 20, "prompt": "abcdefghijkl"});
    let got = burst(&[&a, &b], &l, Some(body.clone()), T0).await;
    let admitted = got[0].admitted + got[1].admitted;
    let spent = got[0].spent + got[1].spent;
    // The bound: the budget plus what responses used above their reservation, exactly as on
    // one gateway.
    let overage = got[0].above + got[1].above;
    eprintln!("admitted {got:?}: spent {spent} of {budget} (+{overage} above reservations)");
    assert!(
        spent <= budget + overage,
        "spent {spent} of {budget} (+{overage} above reservations) over {admitted} requests"
    );
    assert!(admitted >= 30, "admitted only {admitted}");
    // What each gateway spent beyond its grants is charged, its unspent grants returned, so
    // the store counts exactly what was spent.
    for gw in [&a, &b] {
        gw.lim.close(&gw.store, T0 + 1).unwrap();
        assert_eq!(gw.lim.charges_pending(), 0);
    }
    let day = Window {
        start: T0 - T0.rem_euclid(86_400),
        end: T0 - T0.rem_euclid(86_400) + 86_400,
    };
    assert_eq!(
        left_in_store(&a.store, day, budget),
        budget.saturating_sub(spent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_allows_limit_over_gateways_then_is_charged() {
    let db = scratch("offline");
    let (a, b) = (gateway(&db), gateway(&db));
    let l = limit(Some(10), None, "1h");
    a.down.store(true, Ordering::SeqCst);
    let mut admitted = 0;
    while a
        .lim
        .admit_async(plan(&l), None, T0, &a.store)
        .await
        .is_ok()
    {
        admitted += 1;
    }
    // limit / gateways = 10 / 2 on its own; only the first admission waited for the store
    assert_eq!(admitted, 5);
    assert!(a.lim.is_offline());
    assert_eq!(a.grants.load(Ordering::SeqCst), 1);
    assert_eq!(a.lim.charges_pending(), 5);
    a.lim.flush(&a.store, T0 + 1).unwrap();
    assert_eq!(a.lim.charges_pending(), 5, "kept while the store is down");

    a.down.store(false, Ordering::SeqCst);
    assert_eq!(
        a.lim.flush(&a.store, T0 + 2).unwrap(),
        1,
        "one charge written"
    );
    assert!(!a.lim.is_offline());
    assert_eq!(a.lim.charges_pending(), 0);
    // the other gateway now gets only what is left after the charge
    let mut on_b = 0;
    while b
        .lim
        .admit_async(plan(&l), None, T0 + 3, &b.store)
        .await
        .is_ok()
    {
        on_b += 1;
    }
    assert_eq!(on_b, 5);

    // Charges of a window that ends while the store is down are dropped and counted.
    let m = LimitSpec {
        name: "m".into(),
        ..limit(Some(4), None, "1m")
    };
    a.down.store(true, Ordering::SeqCst);
    a.lim.flush(&a.store, T0 + 4).unwrap(); // the flush finds it down
    assert!(a.lim.is_offline());
    for _ in 0..2 {
        a.lim
            .admit_async(plan(&m), None, T0 + 5, &a.store)
            .await
            .unwrap();
    }
    assert!(a
        .lim
        .admit_async(plan(&m), None, T0 + 5, &a.store)
        .await
        .is_err());
    assert_eq!(a.lim.charges_dropped(), 0);
    a.lim.flush(&a.store, T0 + 60).unwrap();
    assert_eq!(a.lim.charges_dropped(), 2);
    assert_eq!(a.lim.charges_pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_grants_go_back_for_the_other_gateway() {
    let db = scratch("idle");
    let (a, b) = (gateway(&db), gateway(&db));
    let l = limit(Some(10), None, "1h");
    // a takes a grant of ceil(10 / (4 × 2)) = 2 and spends 1 of it
    a.lim
        .admit_async(plan(&l), None, T0, &a.store)
        .await
        .unwrap();
    assert_eq!(a.lim.counters().share(KEY, T0), (2, 0));
    let mut on_b = 0;
    while b
        .lim
        .admit_async(plan(&l), None, T0, &b.store)
        .await
        .is_ok()
    {
        on_b += 1;
    }
    assert_eq!(on_b, 8);
    // not idle long enough: a keeps its grant, and b does not ask again yet
    a.lim.flush(&a.store, T0 + IDLE_SECS - 1).unwrap();
    let trips = b.grants.load(Ordering::SeqCst);
    assert!(b
        .lim
        .admit_async(plan(&l), None, T0, &b.store)
        .await
        .is_err());
    assert_eq!(
        b.grants.load(Ordering::SeqCst),
        trips,
        "exhausted: no round trip"
    );
    assert!(b
        .lim
        .admit_async(plan(&l), None, T0 + IDLE_SECS, &b.store)
        .await
        .is_err());
    // idle: the unspent unit goes back, and b spends it
    a.lim.flush(&a.store, T0 + IDLE_SECS).unwrap();
    assert_eq!(a.lim.counters().share(KEY, T0), (1, 0));
    b.lim
        .admit_async(plan(&l), None, T0 + IDLE_SECS + 1, &b.store)
        .await
        .unwrap();
    assert!(b
        .lim
        .admit_async(plan(&l), None, T0 + IDLE_SECS + 2, &b.store)
        .await
        .is_err());
    // at shutdown every unspent grant goes back at once, idle or not
    let c = gateway(&db);
    let l2 = limit(Some(100), None, "1h");
    c.lim
        .admit_async(plan(&l2), None, T0, &c.store)
        .await
        .unwrap();
    let (held, _) = c.lim.counters().share(KEY, T0);
    assert!(held > 1);
    c.lim.close(&c.store, T0).unwrap();
    assert_eq!(c.lim.counters().share(KEY, T0), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_waits_for_one_round_trip_instead_of_each_asking() {
    let db = scratch("burst");
    let a = gateway(&db);
    let l = limit(Some(1000), None, "1h");
    let got = burst(&[&a], &l, None, T0).await;
    assert_eq!(got[0].admitted, 50);
    // the first grant (125) covers all 50; a request that missed it asks at most once more
    let trips = a.grants.load(Ordering::SeqCst);
    assert!(
        trips <= 3,
        "{trips} grant round trips for 50 concurrent requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_its_grant_is_on_the_way_leaves_nothing_stuck() {
    let db = scratch("cancel");
    let a = gateway(&db);
    let l = limit(Some(100), None, "1h");
    a.grant_delay_ms.store(300, Ordering::SeqCst);
    let (lim, store, l2) = (a.lim.clone(), a.store.clone(), l.clone());
    let first =
        tokio::spawn(async move { lim.admit_async(plan(&l2), None, T0, &store).await.is_ok() });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    first.abort(); // the client went away while the grant was on its way
    assert!(first.await.is_err());
    a.grant_delay_ms.store(0, Ordering::SeqCst);
    // the grant still arrives and is counted; the next request spends it without asking
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        a.lim.admit_async(plan(&l), None, T0, &a.store),
    )
    .await
    .expect("a request after the cancelled one must not hang");
    assert!(next.is_ok());
    assert_eq!(a.grants.load(Ordering::SeqCst), 1);
    assert_eq!(a.lim.counters().share(KEY, T0), (13, 0));
    assert_eq!(a.lim.counters().get(KEY, T0), (1, 0));
}

#[tokio::test]
async fn a_store_no_one_shares_never_takes_grants() {
    let store = Arc::new(Store::open_in_memory().unwrap());
    let lim = Arc::new(Limiter::new(1000));
    lim.load(&store, T0).unwrap();
    assert!(!lim.is_shared());
    let l = limit(Some(3), None, "1h");
    for _ in 0..3 {
        lim.admit_async(plan(&l), None, T0, &store).await.unwrap();
    }
    assert!(lim.admit_async(plan(&l), None, T0, &store).await.is_err());
    assert_eq!(lim.counters().get(KEY, T0), (3, 0));
    assert_eq!(lim.counters().share(KEY, T0), (0, 0));
    let hour = Window {
        start: T0,
        end: T0 + 3600,
    };
    assert_eq!(left_in_store(&store, hour, 3), 3);
}
