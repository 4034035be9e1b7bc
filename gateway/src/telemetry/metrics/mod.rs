//! Prometheus metrics of the gateway, fed from the same access records as the access log
//! and served by `posternd serve --metrics-listen ADDR` at `/metrics`.

pub mod registry;

use super::access_log::AccessRecord;
use postern_common::resources::Effect;
use registry::{single, CounterVec, HistogramVec, DURATION_BUCKETS};

/// Values read at scrape time rather than counted per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Live sessions.
    pub active_sessions: u64,
    /// Connected tunnel peers (0 until the tunnel exists).
    pub tunnel_peers: u64,
    /// Access log lines dropped because the writer could not keep up.
    pub access_log_dropped: u64,
    /// Usage rows dropped because the store writer could not keep up, or the store stayed
    /// unreachable past the backlog.
    pub usage_dropped: u64,
    /// Usage rows waiting for the store to be reachable again.
    pub usage_buffered: u64,
    /// 1 when the store answered its last ping, else 0.
    pub store_reachable: u64,
    /// Limit usage beyond grants not yet written to a shared store.
    pub limit_charges_pending: u64,
    /// Limit charges that could not be written before their window ended.
    pub limit_charges_dropped: u64,
    /// Requests whose response has not ended (the in-flight cap's count).
    pub requests_in_flight: u64,
    /// Requests answered 503 because the in-flight cap was reached.
    pub requests_shed: u64,
    /// Connections closed at once because the connection cap was reached.
    pub connections_refused: u64,
}

/// The gateway's metric families.
///
/// Exists so operators can alert on traffic, denials, upstream failures and token spend.
/// Observing a request touches only per-series atomics (a read lock finds the series), and
/// every label has bounded cardinality: Service, config, model and policy names come from
/// declared resources, statuses and kinds from small fixed sets.
pub struct Metrics {
    requests: CounterVec,
    duration: HistogramVec,
    decisions: CounterVec,
    upstream_errors: CounterVec,
    tokens: CounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty families.
    pub fn new() -> Self {
        Metrics {
            requests: CounterVec::new(
                "postern_requests_total",
                "Requests to Services, by Service, HTTP status and policy decision.",
                &["service", "status", "decision"],
            ),
            duration: HistogramVec::new(
                "postern_request_duration_seconds",
                "Time from request arrival to the end of the response body.",
                &["service"],
                DURATION_BUCKETS,
            ),
            decisions: CounterVec::new(
                "postern_decisions_total",
                "Policy decisions, by effect and the policy/rule that decided (or no_match, unauthenticated).",
                &["decision", "reason"],
            ),
            upstream_errors: CounterVec::new(
                "postern_upstream_errors_total",
                "Requests that failed at the upstream, by Service, config and kind (connect, timeout, unavailable, incomplete, other).",
                &["service", "config", "kind"],
            ),
            tokens: CounterVec::new(
                "postern_tokens_total",
                "LLM tokens, reported or estimated, by model and type (prompt or completion).",
                &["model", "type"],
            ),
        }
    }

    /// Counts one finished request.
    pub fn observe(&self, r: &AccessRecord) {
        let service = r.service.as_deref().unwrap_or("-");
        let decision = decision_label(r.decision);
        let code = http::StatusCode::from_u16(r.status).ok();
        let other;
        let status = match &code {
            Some(c) => c.as_str(),
            None => {
                other = r.status.to_string();
                &other
            }
        };
        self.requests.inc_by(&[service, status, decision], 1);
        self.duration
            .observe(&[service], r.latency_ms.max(0.0) / 1000.0);
        if r.decision.is_some() {
            let reason = reason_label(r.reason.as_deref());
            self.decisions.inc_by(&[decision, &reason], 1);
        }
        if let Some(kind) = r.upstream_error {
            let config = r.config.as_deref().unwrap_or("-");
            self.upstream_errors.inc_by(&[service, config, kind], 1);
        }
        if let Some(u) = &r.usage {
            let model = r.model.as_deref().unwrap_or("unknown");
            self.tokens.inc_by(&[model, "prompt"], u.prompt_tokens);
            self.tokens
                .inc_by(&[model, "completion"], u.completion_tokens);
        }
    }

    /// The exposition text (format 0.0.4) of every family plus `gauges`.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        self.requests.render(&mut out);
        self.duration.render(&mut out);
        self.decisions.render(&mut out);
        self.upstream_errors.render(&mut out);
        self.tokens.render(&mut out);
        single(
            &mut out,
            "postern_active_sessions",
            "Sessions currently valid.",
            "gauge",
            gauges.active_sessions,
        );
        single(
            &mut out,
            "postern_tunnel_peers",
            "Agents connected over the tunnel.",
            "gauge",
            gauges.tunnel_peers,
        );
        single(
            &mut out,
            "postern_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
            "counter",
            gauges.access_log_dropped,
        );
        single(
            &mut out,
            "postern_usage_dropped_total",
            "Token usage rows dropped: the store writer could not keep up, or the store stayed unreachable past the backlog.",
            "counter",
            gauges.usage_dropped,
        );
        single(
            &mut out,
            "postern_usage_buffered",
            "Token usage rows waiting for the store to be reachable again.",
            "gauge",
            gauges.usage_buffered,
        );
        single(
            &mut out,
            "postern_store_reachable",
            "1 when the store answered its last ping (every second), else 0.",
            "gauge",
            gauges.store_reachable,
        );
        single(
            &mut out,
            "postern_limit_charges_pending",
            "Limit usage beyond the grants held, not yet written to the shared store.",
            "gauge",
            gauges.limit_charges_pending,
        );
        single(
            &mut out,
            "postern_limit_charges_dropped_total",
            "Limit charges never written: their window ended while the store was unreachable.",
            "counter",
            gauges.limit_charges_dropped,
        );
        single(
            &mut out,
            "postern_requests_in_flight",
            "Requests whose response has not ended, against --max-inflight-requests.",
            "gauge",
            gauges.requests_in_flight,
        );
        single(
            &mut out,
            "postern_requests_shed_total",
            "Requests answered 503 with Retry-After because --max-inflight-requests was reached.",
            "counter",
            gauges.requests_shed,
        );
        single(
            &mut out,
            "postern_connections_refused_total",
            "Connections closed at once because --max-connections was reached.",
            "counter",
            gauges.connections_refused,
        );
        out
    }
}

fn decision_label(d: Option<Effect>) -> &'static str {
    match d {
        Some(Effect::Allow) => "allow",
        Some(Effect::Deny) => "deny",
        None => "none",
    }
}

/// `policy/rule` for a rule's decision; `no_match` or `unauthenticated` otherwise. Parses
/// the access log's reason text (`policy P rule R priority N`).
pub fn reason_label(reason: Option<&str>) -> String {
    let Some(reason) = reason else {
        return "none".into();
    };
    if reason.starts_with("not authenticated") {
        return "unauthenticated".into();
    }
    let mut words = reason.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("policy"), Some(policy), Some("rule"), Some(rule)) => format!("{policy}/{rule}"),
        _ => "no_match".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::usage::Usage;

    fn allowed(service: &str, status: u16) -> AccessRecord {
        let mut r = AccessRecord::new("r", "POST", "/v1/chat/completions");
        r.service = Some(service.into());
        r.status = status;
        r.decision = Some(Effect::Allow);
        r.reason = Some("policy gemini/inline-0 rule rule-0 priority 0".into());
        r.latency_ms = 20.0;
        r
    }

    #[test]
    fn observes_requests_decisions_errors_and_tokens() {
        let m = Metrics::new();
        let mut ok = allowed("ai", 200);
        ok.model = Some("gpt".into());
        ok.usage = Some(Usage {
            prompt_tokens: 11,
            completion_tokens: 7,
            total_tokens: 18,
        });
        m.observe(&ok);
        m.observe(&ok);
        let mut failed = allowed("ai", 502);
        failed.config = Some("openai".into());
        failed.upstream_error = Some("connect");
        m.observe(&failed);
        let mut denied = AccessRecord::new("r", "GET", "/");
        denied.service = Some("ai".into());
        denied.status = 401;
        denied.decision = Some(Effect::Deny);
        denied.reason = Some("not authenticated: missing token".into());
        m.observe(&denied);

        let text = m.render(Gauges {
            active_sessions: 3,
            tunnel_peers: 0,
            access_log_dropped: 1,
            usage_dropped: 0,
            usage_buffered: 0,
            store_reachable: 1,
            limit_charges_pending: 0,
            limit_charges_dropped: 0,
            requests_in_flight: 5,
            requests_shed: 6,
            connections_refused: 7,
        });
        for line in [
            "postern_requests_total{service=\"ai\",status=\"200\",decision=\"allow\"} 2",
            "postern_requests_total{service=\"ai\",status=\"401\",decision=\"deny\"} 1",
            "postern_request_duration_seconds_bucket{service=\"ai\",le=\"0.025\"} 4",
            "postern_request_duration_seconds_count{service=\"ai\"} 4",
            "postern_decisions_total{decision=\"allow\",reason=\"gemini/inline-0/rule-0\"} 3",
            "postern_decisions_total{decision=\"deny\",reason=\"unauthenticated\"} 1",
            "postern_upstream_errors_total{service=\"ai\",config=\"openai\",kind=\"connect\"} 1",
            "postern_tokens_total{model=\"gpt\",type=\"completion\"} 14",
            "postern_tokens_total{model=\"gpt\",type=\"prompt\"} 22",
            "postern_active_sessions 3",
            "postern_tunnel_peers 0",
            "postern_access_log_dropped_total 1",
            "postern_requests_in_flight 5",
            "postern_requests_shed_total 6",
            "postern_connections_refused_total 7",
            "postern_usage_dropped_total 0",
            "# TYPE postern_request_duration_seconds histogram",
            "# TYPE postern_active_sessions gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a family announced by a TYPE line before it.
        let mut typed = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(
                    typed.iter().any(|t| name.starts_with(t.as_str())),
                    "{name} has no TYPE"
                );
            }
        }
    }

    #[test]
    fn reasons_have_bounded_labels() {
        assert_eq!(
            reason_label(Some("policy p/inline-0 rule r priority 3")),
            "p/inline-0/r"
        );
        assert_eq!(
            reason_label(Some("no matching rule (deny by default)")),
            "no_match"
        );
        assert_eq!(
            reason_label(Some("not authenticated: token expired at 12:00")),
            "unauthenticated"
        );
        assert_eq!(reason_label(None), "none");
    }
}
