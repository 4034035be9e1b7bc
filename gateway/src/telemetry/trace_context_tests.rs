use super::*;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const PARENT: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
const OURS: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn valid_traceparent() {
    let p = parse_traceparent(VALID.as_bytes()).unwrap();
    assert_eq!(
        p,
        TraceParent {
            trace_id: TRACE,
            parent_id: PARENT,
            flags: 1
        }
    );
    let unsampled = VALID.replace("-01", "-00");
    assert_eq!(parse_traceparent(unsampled.as_bytes()).unwrap().flags, 0);
}

#[test]
fn versions() {
    let ff = VALID.replacen("00-", "ff-", 1);
    assert_eq!(
        parse_traceparent(ff.as_bytes()),
        Err(TraceParentError::Version)
    );
    // A future version is read as 00, with or without more fields after a '-'.
    let future = VALID.replacen("00-", "cc-", 1);
    assert!(parse_traceparent(future.as_bytes()).is_ok());
    let future_more = format!("{}-what-the-future-holds", future);
    assert_eq!(
        parse_traceparent(future_more.as_bytes()).unwrap().trace_id,
        TRACE
    );
    let future_glued = format!("{future}x");
    assert_eq!(
        parse_traceparent(future_glued.as_bytes()),
        Err(TraceParentError::Format)
    );
    // Version 00 has exactly four fields.
    let longer = format!("{VALID}-01");
    assert_eq!(
        parse_traceparent(longer.as_bytes()),
        Err(TraceParentError::Length)
    );
}

#[test]
fn all_zero_ids() {
    let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    assert_eq!(
        parse_traceparent(zero_trace.as_bytes()),
        Err(TraceParentError::ZeroTraceId)
    );
    let zero_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
    assert_eq!(
        parse_traceparent(zero_parent.as_bytes()),
        Err(TraceParentError::ZeroParentId)
    );
}

#[test]
fn bad_lengths_and_delimiters() {
    for bad in [
        "",
        "00",
        &VALID[..54],
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", // trace id 31
        "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01", // trace id 33
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", // parent id 15
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    ] {
        assert!(parse_traceparent(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn uppercase_and_non_hex_are_refused() {
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00- bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(
            parse_traceparent(bad.as_bytes()),
            Err(TraceParentError::Format),
            "{bad:?}"
        );
    }
}

#[test]
fn continued_upstream_with_our_span_as_parent() {
    let h = headers(&[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")]);
    let t = TraceContext::read(&h, |_| OURS).unwrap();
    assert_eq!((t.trace_id, t.parent_id, t.span_id), (TRACE, PARENT, OURS));
    assert_eq!(
        t.traceparent(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
    );
    let mut up = h.clone();
    set_upstream_headers(&mut up, Some(&t));
    assert_eq!(
        up.get_all(TRACEPARENT).iter().collect::<Vec<_>>(),
        ["00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"]
    );
    assert_eq!(up.get(TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
}

#[test]
fn unknown_flags_are_not_passed_on() {
    let h = headers(&[("traceparent", &VALID.replace("-01", "-ff"))]);
    let t = TraceContext::read(&h, |_| OURS).unwrap();
    assert_eq!(t.flags, 1);
    assert!(t.traceparent().to_str().unwrap().ends_with("-01"));
}

#[test]
fn malformed_or_duplicate_traceparent_starts_a_new_trace_and_is_not_passed_on() {
    for h in [
        headers(&[("traceparent", "00-xyz"), ("tracestate", "a=b")]),
        headers(&[("traceparent", VALID), ("traceparent", VALID)]),
        headers(&[("tracestate", "a=b")]),
    ] {
        let mut called = false;
        assert_eq!(
            TraceContext::read(&h, |_| {
                called = true;
                OURS
            }),
            None
        );
        assert!(!called, "no span id is made for a request starting a trace");
        let mut up = h.clone();
        set_upstream_headers(&mut up, None);
        assert!(up.get(TRACEPARENT).is_none() && up.get(TRACESTATE).is_none());
    }
}

#[test]
fn tracestate_members() {
    let parse = |vs: &[&str]| parse_tracestate(vs.iter().map(|v| v.as_bytes()));
    assert_eq!(
        parse(&["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"]).as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
    // Several headers make one list; empty members are skipped.
    assert_eq!(
        parse(&["a=1,,", " tenant@vendor=x "]).as_deref(),
        Some("a=1,tenant@vendor=x")
    );
    assert_eq!(parse(&[]), None);
    for bad in [
        "a=1,a=2", "Upper=1", "a=", "=1", "a=b=c", "a=1 ,b", "1abc=x", "a@b@c=1",
    ] {
        assert_eq!(parse(&[bad]), None, "{bad:?}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert_eq!(parse(&[&many.join(",")]), None);
    // Past 512 characters, members are dropped from the end.
    let long: Vec<String> = (0..10)
        .map(|i| format!("k{i}={}", "v".repeat(100)))
        .collect();
    let kept = parse(&[&long.join(",")]).unwrap();
    assert!(kept.len() <= 512, "{}", kept.len());
    assert!(kept.starts_with("k0=") && kept.ends_with(&"v".repeat(100)));
    assert_eq!(kept.split(',').count(), 4);
}

#[test]
fn span_ids_are_never_zero() {
    for _ in 0..100 {
        assert_ne!(new_span_id(), [0; 8]);
    }
}

#[test]
fn without_a_recorded_span_the_upstream_gets_the_callers_span() {
    let h = headers(&[("traceparent", VALID)]);
    let t = TraceContext::from_headers(&h, false).unwrap();
    assert_eq!(t.span_id, PARENT);
    assert_eq!(t.traceparent(), VALID);
    let t = TraceContext::from_headers(&h, true).unwrap();
    assert_ne!(t.span_id, PARENT);
    assert_eq!(t.parent_id, PARENT);
}
