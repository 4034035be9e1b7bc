//! What the gateway records about each request: access log lines and LLM token usage,
//! gathered while bodies stream so nothing is buffered just for accounting.

pub mod access_log;
pub mod body;
pub mod otlp;
pub mod usage;

use access_log::{AccessLog, AccessRecord};
use otlp::OtlpExporter;

/// Where every finished request is reported: one call from the pipeline fans out to each
/// sink (the access log now; usage accounting, metrics and exporters plug in here), so the
/// request path never knows how many there are.
pub struct Telemetry {
    pub access_log: AccessLog,
    /// OpenTelemetry export, when `--otlp-endpoint` is set.
    pub otlp: Option<OtlpExporter>,
}

impl Telemetry {
    /// Telemetry writing only the access log.
    pub fn new(access_log: AccessLog) -> Self {
        Telemetry {
            access_log,
            otlp: None,
        }
    }

    /// Also exports every record over OTLP through `exporter`.
    pub fn with_otlp(mut self, exporter: OtlpExporter) -> Self {
        self.otlp = Some(exporter);
        self
    }

    /// Reports one finished request to every sink. Never blocks.
    pub fn record(&self, record: AccessRecord) {
        if let Some(otlp) = &self.otlp {
            otlp.record(&record);
        }
        self.access_log.log(record);
    }
}
