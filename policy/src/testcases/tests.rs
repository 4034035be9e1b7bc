use super::*;
use crate::Reason;
use postern_common::resources::{parse_documents, AuthMethod, Effect, Resource, SessionKind};

const RESOURCES: &str = "kind: Group
metadata: {name: dev}
---
kind: Group
metadata: {name: ops}
---
kind: User
metadata: {name: bot}
spec: {type: WORKLOAD, groups: [dev, ops]}
---
kind: User
metadata: {name: alice}
spec: {groups: [dev]}
---
kind: Policy
metadata: {name: no-delete}
spec:
  global: true
  rules:
    - {name: deny-delete, effect: DENY, priority: -1, condition: {match: 'ctx.request.http.method == \"DELETE\"'}}
---
kind: Service
metadata: {name: api}
spec:
  config: {upstream: {url: 'http://up'}}
  dynamicConfig:
    configs: [{name: big, upstream: {url: 'http://big'}}]
    rules: [{configName: big, condition: {match: 'ctx.request.http.bodyMap.model == \"large\"'}}]
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                all:
                  of:
                    - match: ctx.user.spec.groups.hasAll(\"dev\", \"ops\")
                    - match: ctx.groups.size() == 2 && ctx.groups[1].metadata.name == \"ops\"
                    - match: ctx.session.spec.user == ctx.user.metadata.name
                    - match: ctx.request.http.headers[\"x-team\"] == \"a\"
                    - match: ctx.request.ip == \"10.1.2.3\"
                    - match: ctx.service.metadata.name == \"api\"
                    - match: ctx.request.http.queryParams.q == \"1\"
";

fn world() -> PolicyWorld {
    let docs = parse_documents("r.yaml", RESOURCES).unwrap();
    PolicyWorld::build(docs.into_iter().map(|d| d.resource)).unwrap()
}

fn good() -> Scenario {
    Scenario {
        user: "bot".into(),
        service: "api".into(),
        request: RequestSpec {
            method: Some("POST".into()),
            path: Some("/v1".into()),
            headers: [("X-Team".to_owned(), "a".to_owned())].into(),
            query: Some("q=1".into()),
            body: Some(serde_json::json!({"model": "large"})),
            ip: Some("10.1.2.3".parse().unwrap()),
            ..RequestSpec::default()
        },
        session: Default::default(),
    }
}

#[test]
fn ctx_has_the_gateway_shape_and_allows() {
    let p = world().prepare(&good()).unwrap();
    let e = p.explain();
    assert_eq!(e.decision.effect, Effect::Allow, "{e:?}");
    assert_eq!(e.deciding_rule().unwrap().id(), "api/inline-0/rule-0");
    assert_eq!(e.rules[0].rule, "deny-delete", "priority -1 first");
    assert_eq!(p.chosen_config(), ChosenConfig::Dynamic("big".into()));
}

#[test]
fn dynamic_config_falls_back_to_default() {
    let mut s = good();
    s.request.body = Some(serde_json::json!({"model": "small"}));
    let p = world().prepare(&s).unwrap();
    assert_eq!(p.chosen_config(), ChosenConfig::Default);
}

#[test]
fn each_broken_condition_denies_by_default() {
    let w = world();
    let mut cases = vec![];
    let mut s = good();
    s.user = "alice".into();
    cases.push(s);
    let mut s = good();
    s.request.headers.clear();
    cases.push(s);
    let mut s = good();
    s.request.ip = None;
    cases.push(s);
    let mut s = good();
    s.request.query = None;
    cases.push(s);
    for s in cases {
        let e = w.prepare(&s).unwrap().explain();
        assert_eq!(e.decision.reason, Reason::NoMatch, "{s:?}");
    }
    let mut s = good();
    s.request.method = Some("DELETE".into());
    let e = w.prepare(&s).unwrap().explain();
    assert_eq!(e.deciding_rule().unwrap().id(), "no-delete/deny-delete");
    assert!(e.rules[1].matched, "the allow rule is still evaluated");
}

#[test]
fn unknown_user_or_service_and_bad_resources_are_errors() {
    let w = world();
    let mut s = good();
    s.user = "x".into();
    let e = w.prepare(&s).err().unwrap();
    assert_eq!(e.to_string(), "User \"x\" not found in the resources");
    let mut s = good();
    s.service = "nope".into();
    assert_eq!(
        w.prepare(&s).err().unwrap(),
        ScenarioError::UnknownService("nope".into())
    );
    let text = RESOURCES.replace(
        "spec: {groups: [dev]}",
        "spec: {groups: [dev], isDisabled: true}",
    );
    let docs = parse_documents("r.yaml", &text).unwrap();
    let disabled = PolicyWorld::build(docs.into_iter().map(|d| d.resource)).unwrap();
    let mut s = good();
    s.user = "alice".into();
    assert_eq!(
        disabled.prepare(&s).err().unwrap(),
        ScenarioError::DisabledUser("alice".into())
    );
    let mut s = good();
    s.request.headers.insert("bad header".into(), "v".into());
    assert!(matches!(w.prepare(&s), Err(ScenarioError::Header { .. })));

    let bad = "kind: Service\nmetadata: {name: s}\nspec:\n  config: {upstream: {url: 'http://x'}}\n  authorization: {policies: [missing]}\n";
    let docs = parse_documents("b.yaml", bad).unwrap();
    let resources: Vec<Resource> = docs.into_iter().map(|d| d.resource).collect();
    let err = PolicyWorld::build(resources).unwrap_err();
    assert!(
        err.to_string()
            .contains("Service/s: spec.authorization.policies[0]"),
        "{err}"
    );
}

const CASES: &str = "cases:
  - name: bot allowed
    user: bot
    service: api
    request: {method: POST, headers: {x-team: a}, query: q=1, ip: 10.1.2.3}
    expect: ALLOW
    rule: api/inline-0/rule-0
  - name: alice denied
    user: alice
    service: api
    expect: DENY
    rule: none
  - name: wrong expectation
    user: alice
    service: api
    expect: ALLOW
    rule: api/inline-0/rule-0
  - name: unknown user
    user: zed
    service: api
    expect: DENY
";

#[test]
fn case_file_runs_and_reports() {
    let file = parse_case_file("c.yaml", CASES).unwrap();
    let outcomes = run_cases(&world(), &file);
    let lines: Vec<String> = outcomes.iter().map(ToString::to_string).collect();
    assert_eq!(lines[0], "PASS bot allowed");
    assert_eq!(lines[1], "PASS alice denied");
    assert_eq!(
        lines[2],
        "FAIL wrong expectation: expected ALLOW by api/inline-0/rule-0, got DENY by none"
    );
    assert_eq!(
        lines[3],
        "ERROR unknown user: User \"zed\" not found in the resources"
    );
    assert_eq!(summary(&outcomes), "2 passed, 2 failed");
}

#[test]
fn case_file_errors_name_file_line_and_field() {
    let text = CASES.replace(
        "    expect: DENY\n    rule: none",
        "    expect: MAYBE\n    rule: none",
    );
    let e = parse_case_file("c.yaml", &text).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("cases[1].expect"), "{e}");
    assert_eq!(e.line, Some(11), "{e}");
    assert!(e.to_string().starts_with("c.yaml:11:"), "{e}");

    let text = CASES.replace("    request: {method: POST,", "    reqest: {method: POST,");
    let e = parse_case_file("c.yaml", &text).unwrap_err();
    assert!(e.message.contains("unknown field `reqest`"), "{e}");
    assert_eq!(e.line, Some(5), "{e}");

    let text = CASES.replace("ip: 10.1.2.3", "ip: not-an-ip, bogus: 1");
    let e = parse_case_file("c.yaml", &text).unwrap_err();
    assert_eq!(
        e.field
            .as_deref()
            .map(|f| f.starts_with("cases[0].request")),
        Some(true),
        "{e}"
    );
}

#[test]
fn a_case_session_defaults_like_the_gateways_sessions() {
    let file = parse_case_file(
        "c.yaml",
        "cases:\n\
         - {name: a, user: bot, service: api, expect: DENY, session: {kind: agent}}\n\
         - {name: b, user: bot, service: api, expect: DENY}\n\
         - {name: c, user: bot, service: api, expect: DENY, session: {kind: browser, authentication: {method: oidc, identityProvider: corp, claims: {groups: [eng]}}}}\n",
    )
    .unwrap();
    let sessions: Vec<_> = file.cases.iter().map(|c| c.scenario().session).collect();
    assert_eq!(sessions[0].authentication().method, AuthMethod::AuthToken);
    assert_eq!(sessions[1].kind, SessionKind::Workload);
    assert_eq!(sessions[1].authentication().method, AuthMethod::Oauth2);
    let c = sessions[2].authentication();
    assert_eq!(c.method, AuthMethod::Oidc);
    assert_eq!(c.identity_provider.as_deref(), Some("corp"));
    assert_eq!(c.claims["groups"][0], "eng");
}

#[test]
fn rules_see_the_path_the_gateway_would_and_refused_paths_are_errors() {
    let docs = parse_documents(
        "r.yaml",
        "kind: User
metadata: {name: bot}
spec: {type: WORKLOAD}
---
kind: Service
metadata: {name: api}
spec:
  config: {upstream: {url: 'http://up'}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - {effect: ALLOW, condition: {match: 'ctx.request.http.path == \"/admin/\"'}}
",
    )
    .unwrap();
    let world = PolicyWorld::build(docs.into_iter().map(|d| d.resource)).unwrap();
    let scenario = |path: &str| Scenario {
        user: "bot".into(),
        service: "api".into(),
        request: RequestSpec {
            path: Some(path.into()),
            ..RequestSpec::default()
        },
        session: Default::default(),
    };
    for path in ["/%61dmin/", "/x/../admin/", "//admin//"] {
        let e = world.prepare(&scenario(path)).unwrap().explain();
        assert_eq!(e.decision.effect, Effect::Allow, "{path}: {e:?}");
    }
    for path in ["/%2e%2e%2fadmin", "/admin;x", "/a%252e", "/a\\b"] {
        let err = world.prepare(&scenario(path)).err().expect(path);
        assert!(
            matches!(&err, ScenarioError::Path { path: p, .. } if p == path),
            "{path}: {err}"
        );
        assert!(err.to_string().contains("400"), "{err}");
    }
}
