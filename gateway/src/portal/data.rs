//! Filling a [`PortalView`] from the running gateway: which Services the person may use
//! (the same rules a request would meet), recent requests from memory, and token usage per
//! day. The sums over days are pure functions, tested on their own.

use super::chart::{fold_small_models, DailyUsage};
use super::view::{Reach, RequestRow, ServiceItem, UsageView};
use crate::state::{Gateway, Principal, ServiceEntry, Snapshot};
use crate::store::usage::UsageKey;
use crate::telemetry::access_log::AccessRecord;
use crate::telemetry::recent::LogFilter;
use chrono::{DateTime, Duration, Utc};
use postern_common::resources::{Effect, ServiceMode};
use postern_policy::{Catalog, CelValue, EvalContext, RequestFacts};
use std::collections::BTreeMap;

/// Days of usage the portal shows (today and the six before, UTC).
pub const USAGE_DAYS: usize = 7;
/// Recent requests the portal lists.
pub const RECENT_REQUESTS: usize = 20;

/// The tunnel's DNS domain (`<service>.local`).
const TUNNEL_DNS_DOMAIN: &str = "local";

/// Requests tried, besides the plain one, to tell whether some request is allowed: a
/// Service that only takes `POST /v1/chat/completions` is still one the person may use.
const OTHER_PROBES: [(&str, &str); 5] = [
    ("POST", "/"),
    ("PUT", "/"),
    ("DELETE", "/"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
];

/// The Services `principal` may use, by name. Each is decided by its combined rules (the
/// Service's, the User's and Groups', global Policies), as a request would be, for a plain
/// request (a browser's `GET /` for a public Service; a tunnel connection or `GET /` for a
/// private one) and, when that is denied, for a few other typical requests
/// ([`OTHER_PROBES`]). Listed when one of them is allowed now; marked when only the others
/// are. Rules on other paths, headers or the client address may hide a Service that some
/// request could use; every real request is still decided by the policies.
pub fn usable_services(
    snap: &Snapshot,
    principal: &Principal,
    domain: &str,
    public_port: Option<u16>,
) -> Vec<ServiceItem> {
    let mut names: Vec<&String> = snap.services.keys().collect();
    names.sort();
    let agent = agent_session(&principal.session.value);
    let mut out = Vec::new();
    for name in names {
        let service = &snap.services[name];
        let rules = Catalog::combine(&service.rules, &principal.user.rules, &snap.global_rules);
        if !rules.rules().iter().any(|r| r.effect == Effect::Allow) {
            continue;
        }
        let public = service.spec.is_public && service.spec.mode == ServiceMode::Http;
        let reach = if public {
            let port = public_port.map(|p| format!(":{p}")).unwrap_or_default();
            Reach::Public {
                url: format!("https://{name}.{domain}{port}/"),
            }
        } else {
            let Some(port) = crate::tunnel::service_port(service) else {
                continue;
            };
            let host = format!("{name}.{TUNNEL_DNS_DOMAIN}");
            let address = match service.spec.mode {
                ServiceMode::Http if port == 80 => format!("http://{host}/"),
                ServiceMode::Http => format!("http://{host}:{port}/"),
                ServiceMode::Tcp => format!("{host}:{port}"),
            };
            let local = if port < 1024 { 8000 + port } else { port };
            Reach::Private {
                address,
                connect: format!("postern connect --userspace -p {local}:{name}:{port}"),
            }
        };
        let session = if public {
            &principal.session.value
        } else {
            &agent
        };
        let probe = |method: &str, path: &str| {
            allowed(
                service, principal, session, domain, public, &rules, method, path,
            )
        };
        let tcp = service.spec.mode == ServiceMode::Tcp;
        let plain = if tcp {
            probe("CONNECT", "/")
        } else {
            probe("GET", "/")
        };
        if !plain && (tcp || !OTHER_PROBES.iter().any(|(m, p)| probe(m, p))) {
            continue;
        }
        out.push(ServiceItem {
            name: name.clone(),
            reach,
            allowed_for_plain_request: plain,
        });
    }
    out
}

/// `ctx.session` as the person's `postern` agent would present it: a private Service is
/// used through the tunnel, with an agent Session (`spec.kind: agent`, `spec.type: CLIENT`),
/// not with the browser's.
fn agent_session(browser: &CelValue) -> CelValue {
    let mut v = browser.json().clone();
    if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.insert("kind".into(), "agent".into());
        spec.insert("type".into(), "CLIENT".into());
    }
    CelValue::from_json(&v)
}

/// Whether `method path` on `service` (from a browser for a public Service, through the
/// tunnel for a private one) is allowed for `principal` with `session` now.
#[allow(clippy::too_many_arguments)]
fn allowed(
    service: &ServiceEntry,
    principal: &Principal,
    session: &CelValue,
    domain: &str,
    public: bool,
    rules: &postern_policy::RuleSet,
    method: &str,
    path: &str,
) -> bool {
    let mut headers = http::HeaderMap::new();
    let scheme = if public {
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("text/html"),
        );
        "https"
    } else if service.spec.mode == ServiceMode::Tcp {
        "tcp"
    } else {
        "http"
    };
    let host = format!("{}.{domain}", service.name);
    let facts = RequestFacts {
        method,
        path,
        host: &host,
        scheme,
        headers: &headers,
        query: None,
        body: None,
        size: 0,
        client_ip: None,
        now: None,
    };
    let ctx = EvalContext::new(
        &principal.user.value,
        session,
        &principal.user.groups_value,
        &service.value,
        &facts,
    );
    rules.decide(&ctx).effect == Effect::Allow
}

/// The recent requests to show: the person's own, or everyone's for an admin; newest first.
pub fn recent_requests(gw: &Gateway, user: Option<&str>) -> Vec<RequestRow> {
    let filter = LogFilter {
        service: None,
        user: user.map(str::to_string),
    };
    let mut records = gw.telemetry.recent.tail(&filter, RECENT_REQUESTS);
    records.reverse();
    records.iter().map(|r| request_row(r)).collect()
}

fn request_row(r: &AccessRecord) -> RequestRow {
    RequestRow {
        time: r.time.clone(),
        user: r.user.clone(),
        service: r.service.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        status: r.status,
        decision: r.decision.map(|d| match d {
            Effect::Allow => "allow".to_string(),
            Effect::Deny => "deny".to_string(),
        }),
        model: r.model.clone(),
        tokens: r.usage.as_ref().map(|u| u.total_tokens),
    }
}

/// The first instant of each of the last `n` UTC days, oldest first, as `YYYY-MM-DD`.
pub fn day_labels(now: DateTime<Utc>, n: usize) -> Vec<String> {
    (0..n)
        .rev()
        .map(|back| {
            (now - Duration::days(back as i64))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect()
}

/// Usage per day and model from `(day, model, tokens)` rows (`day` as in `days`; rows for
/// other days are ignored, repeated pairs are added up): the shape a per-day `GROUP BY`
/// over the usage store returns.
pub fn daily_from_rows<D, M>(
    days: Vec<String>,
    rows: impl IntoIterator<Item = (D, M, u64)>,
) -> DailyUsage
where
    D: AsRef<str>,
    M: Into<String>,
{
    let n = days.len();
    let mut models: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (day, model, tokens) in rows {
        let Some(i) = days.iter().position(|x| x == day.as_ref()) else {
            continue;
        };
        let slot = &mut models.entry(model.into()).or_insert_with(|| vec![0; n])[i];
        *slot = slot.saturating_add(tokens);
    }
    fold_small_models(DailyUsage {
        days,
        models: models.into_iter().collect(),
    })
}

/// Token usage for the portal, from the usage store: a person's own (`user`), or
/// everyone's with a per-User table for admins (`None`). Blocking (reads the store, through
/// the usage recorder's own connection, so it never holds up the request path's store).
pub fn usage_view(gw: &Gateway, user: Option<&str>, now: DateTime<Utc>) -> UsageView {
    let days = day_labels(now, USAGE_DAYS);
    let Some(recorder) = &gw.telemetry.usage else {
        return UsageView {
            unavailable: Some("Usage accounting is off in this gateway.".into()),
            ..UsageView::default()
        };
    };
    let since = format!("{}T00:00:00.000Z", days[0]);
    let read = || -> Result<UsageView, crate::store::StoreError> {
        let rows = recorder.daily(user, &since)?;
        let by_user = match user {
            Some(_) => Vec::new(),
            None => recorder
                .totals(UsageKey::User, &since)?
                .into_iter()
                .map(|t| (t.key, t.total_tokens))
                .collect(),
        };
        Ok(UsageView {
            unavailable: None,
            daily: daily_from_rows(days.clone(), rows),
            source: "From the usage store (every request with token usage).".into(),
            by_user,
        })
    };
    read().unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading token usage for the portal failed");
        UsageView {
            unavailable: Some(format!("Usage could not be read: {e}")),
            ..UsageView::default()
        }
    })
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
