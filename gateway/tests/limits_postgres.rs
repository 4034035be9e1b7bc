//! Limits shared by two gateways on a real PostgreSQL (a throwaway cluster, see
//! `support/pg.rs`): two `Limiter`s, each on its own `PgStore`, take grants from one
//! database. The same scenarios run on SQLite in `src/limits/shared_tests.rs`; here they
//! prove PostgreSQL's row locking keeps the sum of grants within the limit. Each test skips,
//! saying why, when the PostgreSQL binaries are not installed.

mod support {
    pub mod fixtures;
    pub mod pg;
}

use postern_common::resources::{LimitBy, LimitSpec};
use postern_gateway::limits::plan::{charges, Owner, Subject};
use postern_gateway::limits::window::Window;
use postern_gateway::limits::{Limiter, Plan};
use postern_gateway::store::{PgStore, Store};
use std::sync::Arc;
use support::pg::Cluster;

const T0: i64 = 1_800_000_000; // a multiple of 3600 and of a day's seconds / 1000
const KEY: &str = "Service/s/l|service:";

fn gateways(cluster: &Cluster) -> Vec<(Arc<Limiter>, Arc<Store>)> {
    let url = cluster.create_database("postern");
    ["gw-a", "gw-b"]
        .iter()
        .map(|name| {
            let store = Arc::new(Store::from_backend(
                PgStore::connect(&url, name, support::fixtures::sealer()).unwrap(),
            ));
            let lim = Arc::new(Limiter::new(1000).with_gateways(2));
            lim.load(&store, T0).unwrap();
            assert!(lim.is_shared());
            (lim, store)
        })
        .collect()
}

fn plan(requests: Option<u64>, tokens: Option<u64>, per: &str) -> Plan {
    let l = LimitSpec {
        name: "l".into(),
        requests,
        tokens,
        per: per.into(),
        by: LimitBy::Service,
    };
    let mut out = Vec::new();
    let subject = Subject {
        user: "alice",
        groups: &[],
        credential: "c",
    };
    charges(Owner::Service("s"), &[l], &subject, &mut out);
    Plan::from_charges(out)
}

/// 50 concurrent requests on each gateway; token reservations settle 7 above (even) or 7
/// below (odd) the 23 reserved. Returns (admitted, tokens spent, tokens above reservations).
async fn burst(
    gws: &[(Arc<Limiter>, Arc<Store>)],
    requests: Option<u64>,
    tokens: Option<u64>,
    per: &'static str,
) -> (u64, u64, u64) {
    let body = serde_json::json!({"max_tokens": 20, "prompt": "abcdefghijkl"});
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        for (lim, store) in gws {
            let (lim, store, body) = (lim.clone(), store.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let p = plan(requests, tokens, per);
                let Ok(a) = lim.admit_async(p, Some(&body), T0, &store).await else {
                    return (0, 0, 0);
                };
                tokio::task::yield_now().await;
                if tokens.is_none() {
                    a.settle(None);
                    return (1, 0, 0);
                }
                let (actual, above) = if i % 2 == 0 { (30, 7) } else { (16, 0) };
                a.settle(Some(actual));
                (1, actual, above)
            }));
        }
    }
    let mut sum = (0, 0, 0);
    for t in tasks {
        let (n, spent, above) = t.await.unwrap();
        sum = (sum.0 + n, sum.1 + spent, sum.2 + above);
    }
    sum
}

/// A multi-thread runtime for one test (the cluster helper runs its own for admin SQL, so
/// the tests are plain `#[test]`s that make the database first).
fn run(fut: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

#[test]
fn two_gateways_on_postgres_share_a_request_limit_exactly() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let gws = gateways(&cluster);
    run(async move {
        let (admitted, _, _) = burst(&gws, Some(30), None, "1h").await;
        assert!(admitted <= 30, "admitted {admitted} of 30");
        // idle grants go back; then the two admit exactly the limit together
        for (lim, store) in &gws {
            lim.flush(store, T0 + 2).unwrap();
        }
        let mut more = 0;
        let (lim_b, store_b) = &gws[1];
        while lim_b
            .admit_async(plan(Some(30), None, "1h"), None, T0 + 3, store_b)
            .await
            .is_ok()
        {
            more += 1;
        }
        assert_eq!(admitted + more, 30, "{admitted} + {more}");
    });
}

#[test]
fn two_gateways_on_postgres_keep_a_token_budget_within_the_bound() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let gws = gateways(&cluster);
    run(async move {
        let budget = 1000;
        let (admitted, spent, above) = burst(&gws, None, Some(budget), "day").await;
        assert!(
            spent <= budget + above,
            "spent {spent} of {budget} (+{above} above reservations) over {admitted} requests"
        );
        assert!(admitted >= 30, "admitted only {admitted}");
        for (lim, store) in &gws {
            lim.close(store, T0 + 1).unwrap();
            assert_eq!(lim.charges_pending(), 0);
        }
        // the store counts exactly what was spent
        let day = Window {
            start: T0 - T0.rem_euclid(86_400),
            end: T0 - T0.rem_euclid(86_400) + 86_400,
        };
        let left = gws[0].1.grant_limit(KEY, day, budget, u64::MAX).unwrap();
        assert_eq!(left, budget.saturating_sub(spent));
    });
}

#[test]
fn postgres_stopped_then_back_offline_allowance_is_charged() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let gws = gateways(&cluster);
    run(async {
        let (lim_a, store_a) = &gws[0];
        let (lim_b, store_b) = &gws[1];
        let p = || plan(Some(10), None, "1h");
        cluster.stop();
        let mut on_a = 0;
        while lim_a.admit_async(p(), None, T0, store_a).await.is_ok() {
            on_a += 1;
        }
        assert_eq!(on_a, 5, "limit / gateways while PostgreSQL is down");
        assert!(lim_a.is_offline());
        assert_eq!(lim_a.charges_pending(), 5);
        cluster.start_again();
        let mut written = 0;
        for _ in 0..50 {
            written = lim_a.flush(store_a, T0 + 1).unwrap();
            if !lim_a.is_offline() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(
            !lim_a.is_offline(),
            "PostgreSQL back, yet the flush still fails"
        );
        assert_eq!((written, lim_a.charges_pending()), (1, 0));
        let mut on_b = 0;
        while lim_b.admit_async(p(), None, T0 + 2, store_b).await.is_ok() {
            on_b += 1;
        }
        assert_eq!(on_b, 5, "what is left after the charge");
    });
}
