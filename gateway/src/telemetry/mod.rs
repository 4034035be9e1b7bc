//! What the gateway records about each request: access log lines and LLM token usage,
//! gathered while bodies stream so nothing is buffered just for accounting.

pub mod access_log;
pub mod body;
pub mod usage;

use access_log::{AccessLog, AccessRecord};

/// Where every finished request is reported: one call from the pipeline fans out to each
/// sink (the access log now; usage accounting, metrics and exporters plug in here), so the
/// request path never knows how many there are.
pub struct Telemetry {
    pub access_log: AccessLog,
}

impl Telemetry {
    /// Telemetry writing only the access log.
    pub fn new(access_log: AccessLog) -> Self {
        Telemetry { access_log }
    }

    /// Reports one finished request to every sink. Never blocks.
    pub fn record(&self, record: AccessRecord) {
        self.access_log.log(record);
    }
}
