//! Compiling upstream configs: fallback order, load-balanced endpoints, retry and timeouts.

use super::*;
use postern_common::resources::parse_documents;
use std::time::Duration;

fn build(yaml: &str) -> Result<Snapshot, Vec<BuildError>> {
    let docs = parse_documents("t.yaml", yaml).expect("parses");
    Snapshot::build(
        docs.into_iter().map(|d| d.resource).collect(),
        vec![],
        vec![],
    )
}

const SVC: &str = r#"
kind: Service
metadata: {name: s}
spec:
  dynamicConfig:
    configs:
      - name: a
        upstream: {url: "http://a"}
      - name: b
        upstream:
          loadBalance:
            policy: LEAST_BUSY
            endpoints:
              - url: "http://b1"
                auth: {bearer: {fromSecret: k1}}
              - url: "http://b2"
          retry: {attempts: 3, backoff: 50ms}
          timeout: {connect: 2s, responseHeader: 500ms}
        http:
          path: {addPrefix: /v1}
          auth: {bearer: {fromSecret: k0}}
    rules:
      - condition: {match: 'ctx.request.http.path == "/x"'}
        configNames: [b, a]
      - condition: {matchAny: true}
        configName: a
"#;

#[test]
fn fallback_lists_keep_their_order() {
    let snap = build(SVC).unwrap_or_else(|e| panic!("{e:?}"));
    let s = &snap.services["s"];
    let names =
        |i: usize| -> Vec<&str> { s.dynamic_rules[i].1.iter().map(|c| c.label()).collect() };
    assert_eq!(names(0), ["b", "a"]);
    assert_eq!(names(1), ["a"]);
}

#[test]
fn endpoints_carry_their_own_auth_and_the_config_settings() {
    let snap = build(SVC).unwrap_or_else(|e| panic!("{e:?}"));
    let b = &snap.services["s"].dynamic_rules[0].1[0];
    assert_eq!(b.balancer.len(), 2);
    let auth = |i: usize| {
        let h = b.balancer.get(i).http.as_ref().unwrap();
        assert_eq!(h.path.as_ref().unwrap().add_prefix.as_deref(), Some("/v1"));
        h.auth
            .as_ref()
            .unwrap()
            .bearer
            .as_ref()
            .unwrap()
            .from_secret
            .clone()
    };
    assert_eq!(auth(0), "k1", "the endpoint's own key");
    assert_eq!(auth(1), "k0", "the config's key");
    assert_eq!(b.url.as_str(), "http://b1/");
    assert_eq!(b.retry.attempts, 3);
    assert_eq!(b.timeouts.connect, Some(Duration::from_secs(2)));
    assert_eq!(b.timeouts.response_header, Some(Duration::from_millis(500)));
}

#[test]
fn bad_fields_are_named() {
    let e = build(
        r#"
kind: Service
metadata: {name: s}
spec:
  config:
    upstream:
      url: "http://a"
      loadBalance: {endpoints: []}
      retry: {attempts: 0}
      timeout: {responseHeader: soon}
  dynamicConfig:
    configs:
      - name: a
        upstream: {url: "http://a"}
    rules:
      - condition: {matchAny: true}
        configNames: [a, zz, a]
"#,
    )
    .err()
    .expect("refused");
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "spec.config.upstream.url",
        "spec.config.upstream.loadBalance.endpoints",
        "spec.config.upstream.retry.attempts",
        "spec.config.upstream.timeout.responseHeader",
        "spec.dynamicConfig.rules[0].configNames[1]",
        "spec.dynamicConfig.rules[0].configNames[2]",
    ] {
        assert!(fields.contains(&f), "{f} missing in {fields:?}");
    }
}

fn build_live(yaml: &str, states: &UpstreamStates) -> Snapshot {
    let docs = parse_documents("t.yaml", yaml).expect("parses");
    let snap = Snapshot::build_with(
        docs.into_iter().map(|d| d.resource).collect(),
        vec![],
        vec![],
        states,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    states.keep_only(&snap.upstream_keys());
    snap
}

const RR: &str = r#"
kind: Service
metadata: {name: rr}
spec:
  config:
    upstream:
      loadBalance: {endpoints: [{url: "http://e0"}, {url: "http://e1"}]}
      retry: {attempts: 2, budget: {percent: 0, minRetries: 1, window: 1m}}
"#;

#[test]
fn rotation_and_budget_survive_a_rebuild_and_go_with_a_delete() {
    let states = UpstreamStates::default();
    let cfg = |s: &Snapshot| s.services["rr"].default_config.clone().unwrap();
    let first = build_live(RR, &states);
    assert_eq!(cfg(&first).balancer.pick(&[]), 0);
    assert!(cfg(&first).retry.allow_retry(), "minRetries: 1");
    // the same Service changed (another backoff): same rotation, same spent budget
    let changed = RR.replace("attempts: 2,", "attempts: 2, backoff: 20ms,");
    let second = build_live(&changed, &states);
    assert_eq!(cfg(&second).balancer.pick(&[]), 1, "the rotation continues");
    assert!(
        !cfg(&second).retry.allow_retry(),
        "the budget was spent before"
    );
    // a check build (apply's validation) does not touch the live state
    let check = build(&changed).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg(&check).balancer.pick(&[]), 0);
    assert_eq!(cfg(&second).balancer.pick(&[]), 0);
    // deleting the Service forgets its state; applying it again starts afresh
    build_live(SVC.replace("{name: s}", "{name: other}").as_str(), &states);
    assert!(!states.state_exists("rr"));
    let again = build_live(RR, &states);
    assert_eq!(cfg(&again).balancer.pick(&[]), 0);
    assert!(cfg(&again).retry.allow_retry());
}
