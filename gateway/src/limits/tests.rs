//! Table-driven tests of the limiter without sockets.

use super::plan::{charges, Owner, Subject};
use super::*;
use http_body_util::BodyExt;
use postern_common::resources::{LimitBy, LimitSpec};
use serde_json::json;

fn requests(name: &str, n: u64, per: &str, by: LimitBy) -> LimitSpec {
    LimitSpec {
        name: name.into(),
        requests: Some(n),
        tokens: None,
        per: per.into(),
        by,
    }
}

fn tokens(name: &str, n: u64, per: &str, by: LimitBy) -> LimitSpec {
    LimitSpec {
        tokens: Some(n),
        requests: None,
        ..requests(name, 0, per, by)
    }
}

fn plan_for(owner: Owner<'_>, limits: &[LimitSpec], user: &str, groups: &[String]) -> Plan {
    let mut out = Vec::new();
    let subject = Subject {
        user,
        groups,
        credential: &format!("{user}-cred"),
    };
    charges(owner, limits, &subject, &mut out);
    Plan { charges: out }
}

const T0: i64 = 1_800_000_000; // a multiple of 60 and 3600: 2027-01-15T08:00:00Z

#[test]
fn keys_per_subject() {
    let g = vec!["dev".to_string(), "ops".to_string()];
    let cases: Vec<(Owner, LimitBy, &[String], Vec<&str>)> = vec![
        (
            Owner::Service("s"),
            LimitBy::User,
            &g,
            vec!["Service/s/l|user:alice"],
        ),
        (
            Owner::Service("s"),
            LimitBy::Credential,
            &g,
            vec!["Service/s/l|credential:alice-cred"],
        ),
        (
            Owner::Service("s"),
            LimitBy::Service,
            &g,
            vec!["Service/s/l|service:"],
        ),
        (
            Owner::Service("s"),
            LimitBy::Group,
            &g,
            vec!["Service/s/l|group:dev", "Service/s/l|group:ops"],
        ),
        (
            Owner::Service("s"),
            LimitBy::Group,
            &[],
            vec!["Service/s/l|group:user/alice"],
        ),
        (
            Owner::User("alice"),
            LimitBy::User,
            &g,
            vec!["User/alice/l|user:alice"],
        ),
        (
            Owner::Group("dev"),
            LimitBy::Group,
            &g,
            vec!["Group/dev/l|group:dev"],
        ),
        (
            Owner::Group("dev"),
            LimitBy::User,
            &g,
            vec!["Group/dev/l|user:alice"],
        ),
    ];
    for (owner, by, groups, want) in cases {
        let p = plan_for(owner, &[requests("l", 1, "1m", by)], "alice", groups);
        let got: Vec<_> = p.charges.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(got, want, "{owner:?} by {by:?}");
        assert!(p
            .charges
            .iter()
            .all(|c| c.label == got[0].split('|').next().unwrap()));
    }
}

#[test]
fn needs_body_only_for_token_limits() {
    let r = plan_for(
        Owner::Service("s"),
        &[requests("r", 1, "1m", LimitBy::User)],
        "a",
        &[],
    );
    assert!(!r.needs_body());
    let t = plan_for(
        Owner::Service("s"),
        &[tokens("t", 1, "1h", LimitBy::User)],
        "a",
        &[],
    );
    assert!(t.needs_body());
    assert!(Plan::default().is_empty());
}

#[test]
fn request_limit_refuses_exactly_the_next_one() {
    let cases = [
        (1u64, "1s", 1u64),
        (3, "1m", 60),
        (5, "1h", 3600),
        (2, "day", 86_400),
    ];
    for (n, per, len) in cases {
        let lim = Arc::new(Limiter::new(1000));
        let limits = [requests("r", n, per, LimitBy::User)];
        let now = T0 - T0.rem_euclid(86_400) + 7; // 7 s into a day, a minute and an hour
        for i in 0..n {
            let a = lim.admit(plan_for(Owner::Service("s"), &limits, "a", &[]), None, now);
            assert!(a.is_ok(), "{per}: request {i} refused");
        }
        let r = lim
            .admit(plan_for(Owner::Service("s"), &limits, "a", &[]), None, now)
            .err()
            .unwrap_or_else(|| panic!("{per}: request {} admitted", n + 1));
        assert_eq!(r.retry_after, len.max(8) - 7, "{per}");
        assert_eq!(r.reason(), "limit Service/s/r");
        assert_eq!(r.budget, per == "day");
        // another user has its own counter; the next window starts afresh
        assert!(lim
            .admit(plan_for(Owner::Service("s"), &limits, "b", &[]), None, now)
            .is_ok());
        let next = now + r.retry_after as i64;
        assert!(
            lim.admit(plan_for(Owner::Service("s"), &limits, "a", &[]), None, next)
                .is_ok(),
            "{per}"
        );
    }
}

#[test]
fn token_reservation_and_settle() {
    let lim = Arc::new(Limiter::new(1000));
    let limits = [tokens("t", 60, "1h", LimitBy::User)];
    let plan = || plan_for(Owner::User("a"), &limits, "a", &[]);
    let key = "User/a/t|user:a";
    let body = json!({"max_tokens": 10, "messages": [{"role": "user", "content": "message 0"}]});
    // reserve 20, settle 18: three fit (54 used), the fourth (54 + 20 > 60) is refused
    for want_used in [18, 36, 54] {
        let a = lim.admit(plan(), Some(&body), T0).unwrap();
        assert_eq!(lim.counters().get(key, T0), (want_used - 18, 20));
        a.settle(Some(18));
        assert_eq!(lim.counters().get(key, T0), (want_used, 0));
    }
    let r = lim.admit(plan(), Some(&body), T0 + 10).err().unwrap();
    assert_eq!((r.unit, r.retry_after, r.budget), ("tokens", 3590, false));

    // no usage reported: the reservation is kept; dropped unsettled: it is given back
    let lim = Arc::new(Limiter::new(1000));
    lim.admit(plan(), Some(&body), T0).unwrap().settle(None);
    assert_eq!(lim.counters().get(key, T0), (20, 0));
    drop(lim.admit(plan(), Some(&body), T0).unwrap());
    assert_eq!(lim.counters().get(key, T0), (20, 0));
    // no body: the default completion estimate alone exceeds the limit
    assert!(lim.admit(plan(), None, T0).is_err());
}

#[test]
fn one_refusal_gives_back_what_others_took() {
    let lim = Arc::new(Limiter::new(1000));
    let mut charges_ = plan_for(
        Owner::Service("s"),
        &[
            requests("r", 10, "1m", LimitBy::User),
            tokens("t", 100, "1h", LimitBy::User),
        ],
        "a",
        &[],
    )
    .charges;
    charges_.extend(
        plan_for(
            Owner::User("a"),
            &[requests("tight", 1, "1m", LimitBy::User)],
            "a",
            &[],
        )
        .charges,
    );
    let body = json!({"max_tokens": 20});
    let a = lim
        .admit(
            Plan {
                charges: charges_.clone(),
            },
            Some(&body),
            T0,
        )
        .unwrap();
    let r = lim
        .admit(Plan { charges: charges_ }, Some(&body), T0)
        .err()
        .unwrap();
    assert_eq!(r.label, "User/a/tight");
    assert_eq!(lim.counters().get("Service/s/r|user:a", T0), (1, 0));
    assert_eq!(lim.counters().get("Service/s/t|user:a", T0), (0, 20));
    a.settle(Some(5));
    assert_eq!(lim.counters().get("Service/s/t|user:a", T0), (5, 0));
}

#[tokio::test]
async fn refusal_response() {
    let cases = [
        (
            requests("rpm", 1, "1m", LimitBy::User),
            "rate_limit_error",
            "rate_limit_exceeded",
            "60",
        ),
        (
            tokens("monthly", 1, "month", LimitBy::Service),
            "insufficient_quota",
            "insufficient_quota",
            "1440000",
        ),
    ];
    for (l, ty, code, retry) in cases {
        let lim = Arc::new(Limiter::new(1000));
        let plan = || plan_for(Owner::Service("s"), std::slice::from_ref(&l), "a", &[]);
        if l.requests.is_some() {
            lim.admit(plan(), None, T0).unwrap();
        }
        let r = lim
            .admit(plan(), Some(&json!({"max_tokens": 5})), T0)
            .err()
            .unwrap();
        let resp = r.response("req-1");
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], retry, "{l:?}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], ty);
        assert_eq!(v["error"]["code"], code);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("Service/s/{}", l.name)));
    }
}

#[test]
fn fifty_threads_never_overshoot() {
    // a budget: each request reserves 23 and reports 18
    let lim = Arc::new(Limiter::new(1000));
    let limits = [tokens("budget", 100, "day", LimitBy::Service)];
    let body = json!({"max_tokens": 20, "prompt": "abcdefghijkl"});
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (lim, barrier, body, limits) = (lim.clone(), barrier.clone(), &body, &limits);
                s.spawn(move || {
                    barrier.wait();
                    let user = format!("u{i}");
                    match lim.admit(
                        plan_for(Owner::Service("s"), limits, &user, &[]),
                        Some(body),
                        T0,
                    ) {
                        Ok(a) => {
                            std::thread::yield_now();
                            a.settle(Some(18));
                            1
                        }
                        Err(_) => 0,
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let day = T0 - T0.rem_euclid(86_400);
    let (used, reserved) = lim.counters().get("Service/s/budget|service:", day);
    assert_eq!(reserved, 0);
    assert_eq!(used, admitted as u64 * 18);
    assert!(used <= 100, "used {used}");
    assert!(admitted >= 4, "admitted {admitted}");

    // a request limit under the same contention admits exactly its number
    let lim = Arc::new(Limiter::new(1000));
    let limits = [requests("rps", 10, "1h", LimitBy::Service)];
    let admitted: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|_| {
                let (lim, limits) = (lim.clone(), &limits);
                s.spawn(move || {
                    usize::from(
                        lim.admit(plan_for(Owner::Service("s"), limits, "a", &[]), None, T0)
                            .is_ok(),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 10);
}

#[test]
fn counters_survive_a_flush_and_load() {
    let store = crate::store::Store::open_in_memory().unwrap();
    let lim = Arc::new(Limiter::new(1000));
    let limits = [
        requests("r", 3, "1m", LimitBy::User),
        tokens("t", 100, "1h", LimitBy::User),
    ];
    let plan = || plan_for(Owner::Service("s"), &limits, "a", &[]);
    lim.admit(plan(), Some(&json!({"max_tokens": 4})), T0)
        .unwrap()
        .settle(Some(18));
    let in_flight = lim
        .admit(plan(), Some(&json!({"max_tokens": 4})), T0)
        .unwrap();
    assert_eq!(lim.flush(&store, T0).unwrap(), 2);
    assert_eq!(lim.flush(&store, T0).unwrap(), 0, "nothing changed since");
    drop(in_flight);

    let restarted = Arc::new(Limiter::new(1000));
    restarted.load(&store, T0 + 1).unwrap();
    assert_eq!(restarted.counters().get("Service/s/r|user:a", T0), (2, 0));
    // the in-flight reservation was persisted as spent
    assert_eq!(restarted.counters().get("Service/s/t|user:a", T0), (22, 0));
    let refused = restarted.admit(plan(), None, T0 + 1).err().unwrap();
    assert_eq!(refused.label, "Service/s/t");
    assert_eq!(restarted.counters().get("Service/s/r|user:a", T0), (2, 0));
    restarted
        .admit(plan(), Some(&json!({"max_tokens": 1})), T0 + 1)
        .unwrap();
    assert!(restarted
        .admit(plan(), Some(&json!({"max_tokens": 1})), T0 + 2)
        .is_err());

    // an ended window is neither loaded nor kept in the store
    lim.flush(&store, T0 + 3600).unwrap();
    let later = Limiter::new(1000);
    later.load(&store, T0 + 3600).unwrap();
    assert_eq!(later.counters().get("Service/s/t|user:a", T0), (0, 0));
}
