//! Filling the portal from a real gateway (temporary data directory, real policies, the
//! in-memory recent log and the usage store), and the day sums on their own.

use super::*;
use crate::datadir::{self, DataDir, InitOptions};
use crate::identity::{SecretBox, TokenSigner};
use crate::portal::pages::{portal_page, portal_view};
use crate::proxy::upstream::{UpstreamClient, UpstreamOptions};
use crate::state::{GatewayParts, Settings};
use crate::store::Store;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::usage::Usage;
use crate::telemetry::usage_store::UsageRecorder;
use crate::telemetry::Telemetry;
use http_body_util::BodyExt;
use postern_common::api::{ApplyFile, CreateCredentialRequest};
use postern_common::resources::CredentialType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const DOMAIN: &str = "postern.test";

const RESOURCES: &str = r#"
kind: User
metadata: {name: alice}
spec: {type: HUMAN, email: alice@example.com, groups: [dev]}
---
kind: User
metadata: {name: bob}
spec: {type: HUMAN, email: bob@example.com}
---
kind: Group
metadata: {name: dev}
spec: {}
---
kind: Service
metadata: {name: wiki}
spec:
  isPublic: true
  config: {upstream: {url: "http://127.0.0.1:9"}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition: {match: '"dev" in ctx.user.spec.groups'}
---
kind: Service
metadata: {name: ai}
spec:
  isPublic: true
  config: {upstream: {url: "http://127.0.0.1:9"}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition: {match: 'ctx.request.http.method == "POST"'}
---
kind: Service
metadata: {name: db}
spec:
  mode: TCP
  port: 5432
  config: {upstream: {url: "tcp://127.0.0.1:9"}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition: {match: 'ctx.user.metadata.name == "alice"'}
---
kind: Service
metadata: {name: intranet}
spec:
  config: {upstream: {url: "http://127.0.0.1:9"}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition: {match: '"dev" in ctx.user.spec.groups'}
---
kind: Service
metadata: {name: tunnel-only}
spec:
  port: 8080
  config: {upstream: {url: "http://127.0.0.1:9"}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                all:
                  of:
                    - match: 'ctx.session.spec.kind == "agent"'
                    - match: 'ctx.session.spec.type == "CLIENT"'
                    - match: 'ctx.user.metadata.name == "alice"'
---
kind: Service
metadata: {name: admin-only}
spec:
  isPublic: true
  config: {upstream: {url: "http://127.0.0.1:9"}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: DENY
              condition: {matchAny: true}
"#;

fn gateway(with_usage: bool) -> (Arc<Gateway>, std::path::PathBuf) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "postern-portal-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    datadir::init(
        &dir,
        &InitOptions {
            domain: DOMAIN.into(),
            tls_cert: None,
            tls_key: None,
            store: None,
        },
    )
    .unwrap();
    let dd = DataDir::new(&dir);
    let mut telemetry = Telemetry::new(AccessLog::disabled());
    if with_usage {
        let store = Arc::new(Store::open(&dd.database()).unwrap());
        telemetry = telemetry.with_usage(UsageRecorder::start(store).unwrap());
    }
    let gw = Gateway::open(GatewayParts {
        domain: DOMAIN.into(),
        settings: Settings::default(),
        store: Store::open(&dd.database()).unwrap(),
        secretbox: SecretBox::load(&dd.secret_key()).unwrap(),
        signer: TokenSigner::load(&dd.signing_key()).unwrap(),
        upstream: UpstreamClient::new(UpstreamOptions {
            extra_ca_pem: Vec::new(),
            connect_timeout: std::time::Duration::from_secs(5),
            response_header_timeout: std::time::Duration::from_secs(5),
        })
        .unwrap(),
        telemetry,
    })
    .unwrap();
    gw.apply(
        &[ApplyFile {
            file: "t.yaml".into(),
            content: RESOURCES.into(),
        }],
        false,
    )
    .unwrap();
    (gw, dir)
}

fn login(gw: &Gateway, user: &str) -> Principal {
    static N: AtomicUsize = AtomicUsize::new(0);
    let cred = gw
        .create_credential(&CreateCredentialRequest {
            name: format!("{user}-{}", N.fetch_add(1, Ordering::Relaxed)),
            user: user.into(),
            credential_type: CredentialType::AuthToken,
            ttl_seconds: None,
        })
        .unwrap();
    let out = gw.login(&cred.auth_token.unwrap()).unwrap().unwrap();
    gw.authenticate(&out.access_token).unwrap()
}

fn record(user: &str, service: &str, model: Option<&str>, tokens: Option<u64>) -> AccessRecord {
    let mut r = AccessRecord::new(
        AccessRecord::new_request_id(),
        "POST",
        "/v1/chat/completions",
    );
    r.user = Some(user.into());
    r.service = Some(service.into());
    r.status = 200;
    r.decision = Some(Effect::Allow);
    r.model = model.map(str::to_string);
    r.usage = tokens.map(|t| Usage {
        prompt_tokens: t / 2,
        completion_tokens: t - t / 2,
        total_tokens: t,
    });
    r
}

#[test]
fn services_are_listed_by_what_the_policies_allow() {
    let (gw, dir) = gateway(false);
    let alice = login(&gw, "alice");
    let items = usable_services(&gw.snapshot(), &alice, DOMAIN, Some(8443));
    let summary: Vec<(&str, &Reach, bool)> = items
        .iter()
        .map(|s| (s.name.as_str(), &s.reach, s.allowed_for_plain_request))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "ai",
                &Reach::Public {
                    url: "https://ai.postern.test:8443/".into()
                },
                false
            ),
            (
                "db",
                &Reach::Private {
                    address: "db.local:5432".into(),
                    connect: "postern connect --userspace -p 5432:db:5432".into()
                },
                true
            ),
            (
                "intranet",
                &Reach::Private {
                    address: "http://intranet.local/".into(),
                    connect: "postern connect --userspace -p 8080:intranet:80".into()
                },
                true
            ),
            // Used through the tunnel, so decided for the agent's Session, not the browser's.
            (
                "tunnel-only",
                &Reach::Private {
                    address: "http://tunnel-only.local:8080/".into(),
                    connect: "postern connect --userspace -p 8080:tunnel-only:8080".into()
                },
                true
            ),
            (
                "wiki",
                &Reach::Public {
                    url: "https://wiki.postern.test:8443/".into()
                },
                true
            ),
        ]
    );
    // bob is not in dev and is not alice: only "ai" (some requests) remains; the DENY-only
    // Service is never listed.
    let bob = login(&gw, "bob");
    let names: Vec<_> = usable_services(&gw.snapshot(), &bob, DOMAIN, None)
        .into_iter()
        .map(|s| (s.name, s.allowed_for_plain_request))
        .collect();
    assert_eq!(names, vec![("ai".to_string(), false)]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_person_sees_their_own_requests_newest_first_and_an_admin_everyones() {
    let (gw, dir) = gateway(false);
    let alice = login(&gw, "alice");
    let admin = login(&gw, crate::datadir::ADMIN_USER);
    for i in 0..30u64 {
        let mut r = record("alice", "ai", Some("m"), Some(i));
        r.path = format!("/alice/{i}");
        gw.telemetry.record(r);
    }
    let mut r = record("bob", "ai", Some("m"), Some(999));
    r.path = "/bob".into();
    gw.telemetry.record(r);

    let v = portal_view(&gw, &alice, Some("Corp SSO"), "https://postern.test");
    assert!(!v.is_admin);
    assert_eq!(v.requests.len(), RECENT_REQUESTS);
    assert_eq!(v.requests[0].path, "/alice/29");
    assert_eq!(v.requests[19].path, "/alice/10");
    assert!(v
        .requests
        .iter()
        .all(|r| r.user.as_deref() == Some("alice")));
    assert_eq!(v.email.as_deref(), Some("alice@example.com"));
    assert_eq!(v.groups, vec!["dev".to_string()]);
    assert_eq!(v.identity_provider.as_deref(), Some("Corp SSO"));
    assert_eq!(v.session_expires, alice.session.info.expires_at);
    // Usage comes from the usage store, which this gateway does not keep.
    assert_eq!(
        v.usage.unavailable.as_deref(),
        Some("Usage accounting is off in this gateway.")
    );
    let resp = portal_page(&gw, &alice, Some("Corp SSO"), "https://postern.test");
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let html = std::str::from_utf8(&body).unwrap();
    assert!(html.contains("POST /alice/29"));
    assert!(!html.contains("/bob"));
    assert!(!html.contains("<th scope=\"col\">User</th>"));
    assert!(html.contains("<dt>Signed in with</dt><dd>Corp SSO</dd>"));

    let v = portal_view(&gw, &admin, None, "https://postern.test");
    assert!(v.is_admin);
    assert_eq!(v.requests[0].path, "/bob");
    assert_eq!(v.requests[0].user.as_deref(), Some("bob"));
    // This gateway has usage accounting off: the admin view says so.
    assert_eq!(
        v.usage.unavailable.as_deref(),
        Some("Usage accounting is off in this gateway.")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_admin_portal_reads_the_usage_store_and_the_response_is_html() {
    let (gw, dir) = gateway(true);
    let admin = login(&gw, crate::datadir::ADMIN_USER);
    gw.telemetry
        .record(record("alice", "ai", Some("<gpt>"), Some(120)));
    gw.telemetry
        .record(record("bob", "ai", Some("small"), Some(30)));
    gw.telemetry.record(record("bob", "ai", None, None));
    assert!(gw.telemetry.flush(std::time::Duration::from_secs(5)));

    let v = portal_view(&gw, &admin, None, "https://postern.test:8443");
    assert_eq!(v.usage.unavailable, None);
    assert!(v.usage.source.contains("usage store"));
    let today = USAGE_DAYS - 1;
    assert_eq!(v.usage.daily.days.len(), USAGE_DAYS);
    assert_eq!(
        v.usage.daily.models,
        vec![
            ("<gpt>".to_string(), {
                let mut d = vec![0; USAGE_DAYS];
                d[today] = 120;
                d
            }),
            ("small".to_string(), {
                let mut d = vec![0; USAGE_DAYS];
                d[today] = 30;
                d
            }),
        ]
    );
    assert_eq!(
        v.usage.by_user,
        vec![("alice".to_string(), 120), ("bob".to_string(), 30)]
    );
    // A person sees their own usage from the store, nobody else's.
    let bob = login(&gw, "bob");
    let mine = portal_view(&gw, &bob, None, "https://postern.test:8443");
    assert_eq!(mine.usage.unavailable, None);
    assert_eq!(
        mine.usage.daily.models,
        vec![("small".to_string(), {
            let mut d = vec![0; USAGE_DAYS];
            d[today] = 30;
            d
        })]
    );
    assert!(mine.usage.by_user.is_empty());

    let resp = crate::portal::portal_page_async(
        gw.clone(),
        admin.clone(),
        None,
        "https://postern.test:8443".into(),
    )
    .await;
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let html = std::str::from_utf8(&body).unwrap();
    assert!(html.contains("&lt;gpt&gt;"));
    assert!(!html.contains("<gpt>"));
    // The admin is not in group dev: wiki is not theirs; ai takes POSTs from anyone.
    assert!(html.contains("<a href=\"https://ai.postern.test:8443/\">ai</a>"));
    assert!(!html.contains("wiki"));
    assert!(html.contains("<th scope=\"col\">User</th>"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn day_labels_end_today() {
    let now = DateTime::parse_from_rfc3339("2026-03-02T23:59:59Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(
        day_labels(now, 3),
        vec!["2026-02-28", "2026-03-01", "2026-03-02"]
    );
}

#[test]
fn rows_are_added_up_per_day_and_model() {
    let days: Vec<String> = vec!["2026-11-25".into(), "2026-11-26".into()];
    let d = daily_from_rows(
        days,
        [
            ("2026-11-25", "a", 1),
            ("2026-11-26", "a", 2),
            ("2026-11-26", "a", u64::MAX),
            ("2026-11-26", "b", 9),
            ("2026-10-01", "c", 100),
        ],
    );
    assert_eq!(
        d.models,
        vec![
            ("a".to_string(), vec![1, u64::MAX]),
            ("b".to_string(), vec![0, 9])
        ]
    );
}
