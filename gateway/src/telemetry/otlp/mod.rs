//! OpenTelemetry export over OTLP/HTTP (protobuf): every finished request becomes a log
//! record and a SERVER span sent to a collector, without ever slowing the request.
//!
//! [`OtlpExporter::record`] only pushes onto a bounded queue; a background task batches
//! (up to [`OtlpOptions::batch`] records or every [`OtlpOptions::interval`]), posts to
//! `<endpoint>/v1/logs` and `<endpoint>/v1/traces`, and drops (counting) what it cannot
//! deliver. See `docs/ai-gateway-otel.md`.

pub mod encode;
pub mod transport;
mod worker;

use crate::telemetry::access_log::AccessRecord;
use encode::EncodeContext;
use http::header::{HeaderName, HeaderValue};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
pub use transport::{HttpTransport, Signal, Transport};
use worker::{Batching, Control, Counters, Worker};

/// Why the exporter could not be set up, or one export failed.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `--otlp-endpoint` is not an `http(s)://host[:port][/prefix]` URL.
    #[error("invalid OTLP endpoint {0:?}: {1}")]
    Endpoint(String, String),
    /// `--otlp-header` is not `name=value` with a valid header name and value.
    #[error("invalid OTLP header {0:?}: expected name=value")]
    Header(String),
    /// The TLS client could not be built.
    #[error("OTLP TLS setup: {0}")]
    Tls(String),
    /// Not called from inside a Tokio runtime.
    #[error("the OTLP exporter needs a Tokio runtime")]
    NoRuntime,
    /// The request could not be built or sent (connection refused, reset, ...).
    #[error("OTLP request failed: {0}")]
    Request(String),
    /// The collector answered with a non-2xx status.
    #[error("OTLP collector answered HTTP {0}")]
    Status(u16),
    /// No answer within the export timeout.
    #[error("OTLP export timed out after {0:?}")]
    Timeout(Duration),
}

/// Where and how to export. [`OtlpOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// Base URL of the collector's OTLP/HTTP receiver, e.g. `http://collector:4318`.
    pub endpoint: String,
    /// Extra headers on every export (authentication for hosted collectors).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Resource attribute `service.name`.
    pub service_name: String,
    /// The gateway's domain, for `server.address` (`<service>.<domain>`).
    pub domain: Option<String>,
    /// Records waiting for export before new ones are dropped.
    pub queue: usize,
    /// Most records in one export request.
    pub batch: usize,
    /// Longest a record waits for its batch to fill.
    pub interval: Duration,
    /// Time allowed for one POST, connecting included.
    pub timeout: Duration,
}

impl OtlpOptions {
    /// Defaults: service `posternd`, queue 4096, batches of 512 or every second, 5 s timeout.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpOptions {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            service_name: "posternd".into(),
            domain: None,
            queue: 4096,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Counters for the metrics exporter: records exported, dropped because the queue was full
/// (or the exporter had stopped), and lost because their export failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtlpStats {
    /// Records the collector accepted.
    pub exported: u64,
    /// Records never queued: the queue was full.
    pub dropped: u64,
    /// Records whose export request failed (collector down, non-2xx, timeout).
    pub failed: u64,
}

/// Handle to the OTLP exporter. Cheap to clone; [`record`](Self::record) never blocks.
///
/// Exists so operators can send the gateway's access records, as OpenTelemetry logs and
/// traces with GenAI attributes, to any collector without the collector's health ever
/// affecting requests.
#[derive(Clone)]
pub struct OtlpExporter {
    tx: mpsc::Sender<Box<AccessRecord>>,
    control: mpsc::Sender<Control>,
    counters: Arc<Counters>,
}

impl OtlpExporter {
    /// Validates `opts` and starts the background exporter on the current Tokio runtime.
    pub fn start(opts: OtlpOptions) -> Result<Self, OtlpError> {
        let endpoint = validate_endpoint(&opts.endpoint)?;
        let transport = HttpTransport::new(endpoint, opts.headers.clone(), opts.timeout)?;
        Self::with_transport(opts, transport)
    }

    /// Starts the background exporter sending through `transport` (tests use a fake one).
    pub fn with_transport(opts: OtlpOptions, transport: impl Transport) -> Result<Self, OtlpError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let (control_tx, control_rx) = mpsc::channel(4);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            rx,
            control: control_rx,
            transport,
            ctx: EncodeContext {
                service_name: opts.service_name,
                domain: opts.domain,
            },
            counters: counters.clone(),
            batching: Batching {
                max: opts.batch,
                interval: opts.interval,
            },
        };
        rt.spawn(worker.run());
        Ok(OtlpExporter {
            tx,
            control: control_tx,
            counters,
        })
    }

    /// Queues one finished request; drops and counts it when the queue is full.
    pub fn record(&self, record: &AccessRecord) {
        if self.tx.try_send(Box::new(record.clone())).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records exported, dropped and failed so far.
    pub fn stats(&self) -> OtlpStats {
        OtlpStats {
            exported: self.counters.exported.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Exports everything queued so far, waiting at most `timeout` (for shutdown and tests).
    /// Returns whether it finished in time.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = oneshot::channel();
        let asked = async {
            self.control.send(Control::Flush(done_tx)).await.is_ok() && done_rx.await.is_ok()
        };
        tokio::time::timeout(timeout, asked).await.unwrap_or(false)
    }
}

/// `http(s)://host[:port][/prefix]` without a trailing slash, ready for `/v1/logs` to be
/// appended.
pub fn validate_endpoint(s: &str) -> Result<String, OtlpError> {
    let bad = |why: &str| OtlpError::Endpoint(s.to_string(), why.to_string());
    let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().unwrap_or_default().is_empty() {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Parses `--otlp-header name=value`; the value is marked sensitive (kept out of debug output).
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), OtlpError> {
    let bad = || OtlpError::Header(s.split('=').next().unwrap_or_default().to_string());
    let (k, v) = s.split_once('=').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
    let mut value = HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
    value.set_sensitive(true);
    Ok((name, value))
}

#[cfg(test)]
mod tests;
