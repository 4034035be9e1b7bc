//! What the gateway records about each request: access log lines and LLM token usage,
//! gathered while bodies stream so nothing is buffered just for accounting.

pub mod access_log;
pub mod body;
pub mod drain;
pub mod metrics;
pub mod otlp;
pub mod recent;
pub mod trace_context;
pub mod usage;
pub mod usage_store;

use access_log::{AccessLog, AccessRecord};
use metrics::Metrics;
use otlp::OtlpExporter;
use recent::RecentLog;
use std::sync::Arc;
use std::time::Duration;
use usage_store::UsageRecorder;

/// Where every finished request is reported: one call from the pipeline fans out to each
/// sink (the access log now; usage accounting, metrics and exporters plug in here), so the
/// request path never knows how many there are.
pub struct Telemetry {
    pub access_log: AccessLog,
    /// OpenTelemetry export, when `--otlp-endpoint` is set.
    pub otlp: Option<OtlpExporter>,
    /// Token usage into the store; `None` when usage accounting is off.
    pub usage: Option<UsageRecorder>,
    /// Prometheus counters and histograms.
    pub metrics: Metrics,
    /// The last records in memory, and the live feed, for `posternctl logs`.
    pub recent: RecentLog,
    /// This gateway's name, stamped on every record (`--gateway-name`).
    gateway: Option<Arc<str>>,
}

impl Telemetry {
    /// Telemetry writing only the access log.
    pub fn new(access_log: AccessLog) -> Self {
        Telemetry {
            access_log,
            otlp: None,
            usage: None,
            metrics: Metrics::new(),
            recent: RecentLog::new(recent::DEFAULT_CAPACITY),
            gateway: None,
        }
    }

    /// Stamps every record with this gateway's name.
    pub fn with_gateway_name(mut self, name: &str) -> Self {
        self.gateway = Some(Arc::from(name));
        self
    }

    /// Also exports every record over OTLP through `exporter`.
    pub fn with_otlp(mut self, exporter: OtlpExporter) -> Self {
        self.otlp = Some(exporter);
        self
    }

    /// Also records token usage with `recorder`.
    pub fn with_usage(mut self, recorder: UsageRecorder) -> Self {
        self.usage = Some(recorder);
        self
    }

    /// Reports one finished request to every sink. Never blocks.
    pub fn record(&self, mut record: AccessRecord) {
        record.gateway.clone_from(&self.gateway);
        if let Some(otlp) = &self.otlp {
            otlp.record(&record);
        }
        self.metrics.observe(&record);
        let record = Arc::new(record);
        if let Some(u) = &self.usage {
            u.record(&record);
        }
        self.recent.push(record.clone());
        self.access_log.log(record);
    }

    /// Writes out what the background sinks hold (for shutdown); blocking, up to `timeout`
    /// per sink. Returns whether all finished in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let usage = self.usage.as_ref().is_none_or(|u| u.flush(timeout));
        self.access_log.flush(timeout) && usage
    }
}
