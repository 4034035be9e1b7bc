//! The whole table of [`decide`]: method × how far the try got × policy × what is left × budget.

use super::*;
use http::Method;
use std::cell::Cell;

fn policy(allow_non_idempotent: bool) -> RetryPolicy {
    let r: Retry = serde_yaml::from_str(&format!(
        "{{attempts: 3, on: [CONNECT, TIMEOUT, STATUS_429, STATUS_5XX], allowNonIdempotent: {allow_non_idempotent}}}"
    ))
    .unwrap();
    RetryPolicy::from_spec(Some(&r), BudgetCounters::default())
}

const ALL_LEFT: Options = Options {
    replayable: true,
    tries_left: true,
    fallback_left: true,
};

fn methods() -> Vec<Method> {
    let mut m: Vec<Method> = [
        "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH", "CONNECT", "PURGE",
    ]
    .iter()
    .map(|s| Method::from_bytes(s.as_bytes()).unwrap())
    .collect();
    m.dedup();
    m
}

fn failures() -> Vec<Failure> {
    let mut out = Vec::new();
    for cause in [Cause::Connect, Cause::Timeout, Cause::Other] {
        out.push(Failure::not_sent(cause));
        out.push(Failure::maybe_sent(cause));
    }
    for code in [429u16, 500, 501, 502, 503, 504, 505, 507, 524, 599] {
        out.push(Failure::from_status(http::StatusCode::from_u16(code).unwrap()).unwrap());
    }
    out
}

fn all_options() -> Vec<Options> {
    let mut out = Vec::new();
    for replayable in [false, true] {
        for tries_left in [false, true] {
            for fallback_left in [false, true] {
                out.push(Options {
                    replayable,
                    tries_left,
                    fallback_left,
                });
            }
        }
    }
    out
}

#[test]
fn idempotent_methods_are_those_of_rfc_9110() {
    let idem: Vec<String> = methods()
        .into_iter()
        .filter(is_idempotent)
        .map(|m| m.to_string())
        .collect();
    assert_eq!(idem, ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);
}

#[test]
fn statuses_say_whether_the_request_was_processed() {
    let d =
        |c: u16| Failure::from_status(http::StatusCode::from_u16(c).unwrap()).map(|f| f.delivery);
    for c in [429, 500, 501, 503, 505] {
        assert_eq!(d(c), Some(Delivery::NotProcessed), "{c}");
    }
    for c in [502, 504, 506, 507, 520, 524, 599] {
        assert_eq!(d(c), Some(Delivery::MaybeSent), "{c}");
    }
    for c in [200, 201, 301, 400, 401, 404, 409, 413] {
        assert_eq!(d(c), None, "{c}");
    }
}

/// Explicit rows: the cases the issue names.
#[test]
fn named_cases() {
    let post = Method::POST;
    let get = Method::GET;
    let closed = Failure::maybe_sent(Cause::Connect);
    let refused = Failure::not_sent(Cause::Connect);
    let header_timeout = Failure::maybe_sent(Cause::Timeout);
    let s503 = Failure::from_status(http::StatusCode::SERVICE_UNAVAILABLE).unwrap();
    let s504 = Failure::from_status(http::StatusCode::GATEWAY_TIMEOUT).unwrap();
    let strict = policy(false);
    let opted = policy(true);
    let yes = || true;
    let rows: [(&Method, Failure, &RetryPolicy, Next); 14] = [
        // closed before the response headers: POST is never sent again without opt-in...
        (&post, closed, &strict, Next::Unsafe),
        // ...with opt-in it is retried; GET always is
        (&post, closed, &opted, Next::Retry),
        (&get, closed, &strict, Next::Retry),
        // nothing was written: any method
        (&post, refused, &strict, Next::Retry),
        (&Method::PATCH, refused, &strict, Next::Retry),
        // waiting for headers means the request was sent
        (&post, header_timeout, &strict, Next::Unsafe),
        (&post, header_timeout, &opted, Next::Retry),
        (&Method::PUT, header_timeout, &strict, Next::Retry),
        // an explicit 503/429 answer: not processed, so retried for POST too
        (&post, s503, &strict, Next::Retry),
        (
            &post,
            Failure::from_status(http::StatusCode::TOO_MANY_REQUESTS).unwrap(),
            &strict,
            Next::Retry,
        ),
        (
            &post,
            Failure::from_status(http::StatusCode::INTERNAL_SERVER_ERROR).unwrap(),
            &strict,
            Next::Retry,
        ),
        // a 504 from an intermediary: maybe processed
        (&post, s504, &strict, Next::Unsafe),
        (&post, s504, &opted, Next::Retry),
        (&Method::DELETE, s504, &strict, Next::Retry),
    ];
    for (i, (m, f, p, want)) in rows.into_iter().enumerate() {
        assert_eq!(decide(m, f, p, ALL_LEFT, yes), want, "row {i}: {m} {f:?}");
    }
    // no tries left on this config: a safe failure falls back, an unsafe one stops
    let last_try = Options {
        tries_left: false,
        ..ALL_LEFT
    };
    assert_eq!(
        decide(&post, refused, &strict, last_try, yes),
        Next::FallBack
    );
    assert_eq!(decide(&post, closed, &strict, last_try, yes), Next::Unsafe);
    assert_eq!(decide(&post, closed, &opted, last_try, yes), Next::FallBack);
    // budget spent: fall back if possible, else give the failure to the caller
    assert_eq!(
        decide(&post, s503, &strict, ALL_LEFT, || false),
        Next::FallBack
    );
    let alone = Options {
        fallback_left: false,
        ..ALL_LEFT
    };
    assert_eq!(decide(&post, s503, &strict, alone, || false), Next::GiveUp);
    // a streamed (not buffered) body can never be sent again
    let streamed = Options {
        replayable: false,
        ..ALL_LEFT
    };
    assert_eq!(decide(&get, refused, &strict, streamed, yes), Next::GiveUp);
    // a failure retry.on does not list, with no fallback: nothing would be resent anyway, so
    // it is not reported as held back for safety
    let only_5xx: Retry = serde_yaml::from_str("{attempts: 3, on: [STATUS_5XX]}").unwrap();
    let only_5xx = RetryPolicy::from_spec(Some(&only_5xx), BudgetCounters::default());
    assert_eq!(decide(&post, closed, &only_5xx, alone, yes), Next::GiveUp);
    assert_eq!(
        decide(&post, closed, &only_5xx, ALL_LEFT, yes),
        Next::Unsafe
    );
}

/// Every combination, against the rules stated in the module docs.
#[test]
fn whole_table() {
    let mut rows = 0;
    for m in methods() {
        for f in failures() {
            for allow in [false, true] {
                let listed = policy(allow);
                let unlisted = RetryPolicy {
                    on: Vec::new(),
                    ..policy(allow)
                };
                for on_list in [true, false] {
                    let p = if on_list { &listed } else { &unlisted };
                    for opts in all_options() {
                        for budget_left in [true, false] {
                            let asked = Cell::new(false);
                            let got = decide(&m, f, p, opts, || {
                                asked.set(true);
                                budget_left
                            });
                            rows += 1;
                            let ctx = format!("{m} {f:?} allow={allow} on={on_list} {opts:?} budget={budget_left}");
                            let resend_ok =
                                f.delivery != Delivery::MaybeSent || is_idempotent(&m) || allow;
                            let would_retry = opts.tries_left && on_list && f.cause != Cause::Other;
                            let want = if !opts.replayable || !(would_retry || opts.fallback_left) {
                                Next::GiveUp
                            } else if !resend_ok {
                                Next::Unsafe
                            } else if would_retry && budget_left {
                                Next::Retry
                            } else if opts.fallback_left {
                                Next::FallBack
                            } else {
                                Next::GiveUp
                            };
                            assert_eq!(got, want, "{ctx}");
                            // the budget is charged only for a retry that would happen
                            assert_eq!(
                                asked.get(),
                                opts.replayable && resend_ok && would_retry,
                                "budget asked: {ctx}"
                            );
                            // the safety property itself
                            if f.delivery == Delivery::MaybeSent && !is_idempotent(&m) && !allow {
                                assert!(!matches!(got, Next::Retry | Next::FallBack), "{ctx}");
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(rows, 10 * 16 * 2 * 2 * 8 * 2);
}
