//! The access log: one JSON line per request, written off the hot path.

use super::usage::Usage;
use postern_common::resources::Effect;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Records queued before new ones are dropped (and counted) rather than slowing requests.
const QUEUE: usize = 8192;

/// One request as the access log shows it. Holds no secrets or tokens by construction: only
/// names and ids. JSON keys are camelCase and absent values are left out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRecord {
    /// RFC 3339 UTC with milliseconds, when the request arrived.
    pub time: String,
    pub request_id: String,
    /// Which front door: `"public"` or `"tunnel"`.
    pub via: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The caller's groups (as declared on the User), for usage by group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The Credential the caller's session was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The `dynamicConfig` entry used, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Effect>,
    /// Why: `policy my-api/inline-0 rule rule-0 priority 0`, `no matching rule`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// `true` when the provider reported no usage and `usage` was estimated from the
    /// characters sent and received (about four per token).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of upstream failure ended the request (`connect`, `timeout`, `stream`,
    /// ...), for metrics; not written to the log.
    #[serde(skip)]
    pub upstream_error: Option<&'static str>,
    /// Upstream tries when there was more than one (retry or fallback), as `config:outcome`,
    /// e.g. `["openai:502", "gemini:200"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<String>,
}

impl AccessRecord {
    /// Starts a record stamped now, via the public door; the pipeline fills in the rest.
    pub fn new(
        request_id: impl Into<String>,
        method: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        Self {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: request_id.into(),
            via: "public".into(),
            user: None,
            session: None,
            groups: Vec::new(),
            credential: None,
            service: None,
            config: None,
            decision: None,
            reason: None,
            method: method.into(),
            path: path.into(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            latency_ms: 0.0,
            model: None,
            usage: None,
            usage_estimated: false,
            error: None,
            upstream_error: None,
            attempts: Vec::new(),
        }
    }
}

enum Msg {
    Record(Box<AccessRecord>),
    Flush(mpsc::Sender<()>),
}

struct Inner {
    tx: Option<SyncSender<Msg>>,
    dropped: AtomicU64,
}

/// Where access records go. Cheap to clone; logging never blocks the request.
///
/// Exists so every request leaves exactly one line for operators and billing, written by a
/// background thread through a bounded queue: a slow disk costs dropped lines (counted by
/// [`AccessLog::dropped`]), never request latency.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

impl AccessLog {
    /// Logs to standard output.
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// Appends to `path`, creating it readable by owner and group only (0640).
    pub fn file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
        let f = opts.open(path)?;
        Ok(Self::to_writer(Box::new(f)))
    }

    /// Discards records (access logging turned off).
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner {
                tx: None,
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Queues `record` for writing; drops and counts it when the queue is full.
    pub fn log(&self, record: AccessRecord) {
        let Some(tx) = &self.inner.tx else { return };
        match tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records lost because the writer could not keep up (or had stopped).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Waits (blocking, up to `timeout`) until everything queued so far is written.
    /// For shutdown and tests, never for the request path. Returns whether it finished in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.inner.tx else {
            return true;
        };
        let (done_tx, done_rx) = mpsc::channel();
        if tx.send(Msg::Flush(done_tx)).is_err() {
            return false;
        }
        done_rx.recv_timeout(timeout).is_ok()
    }

    fn to_writer(out: Box<dyn Write + Send>) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("postern-access-log".into())
            .spawn(move || write_loop(rx, out));
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "could not start the access log writer; access logging is off");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                tx,
                dropped: AtomicU64::new(0),
            }),
        }
    }
}

/// Writes one JSON line per record, flushing whenever the queue runs empty.
fn write_loop(rx: Receiver<Msg>, mut out: Box<dyn Write + Send>) {
    let mut line = Vec::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => {
                    line.clear();
                    if serde_json::to_writer(&mut line, &r).is_ok() {
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line) {
                            tracing::warn!(error = %e, "access log write failed");
                        }
                    }
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::warn!(error = %e, "access log flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("postern-al-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("access.log")
    }

    #[test]
    fn records_round_trip_as_json_lines() {
        let path = temp_path("rt");
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::file(&path).unwrap();
        let mut r = AccessRecord::new("req-1", "POST", "/v1/chat/completions");
        r.user = Some("alice".into());
        r.service = Some("gemini".into());
        r.decision = Some(Effect::Allow);
        r.reason = Some("policy gemini/inline-0 rule rule-0 priority 0".into());
        r.status = 200;
        r.bytes_out = 1234;
        r.latency_ms = 12.5;
        r.model = Some("gemini-2.0-flash".into());
        r.usage = Some(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        });
        log.log(r);
        let mut d = AccessRecord::new("req-2", "GET", "/admin");
        d.decision = Some(Effect::Deny);
        d.reason = Some("no matching rule".into());
        d.status = 403;
        log.clone().log(d);
        assert!(log.flush(Duration::from_secs(5)));

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["requestId"], "req-1");
        assert_eq!(lines[0]["via"], "public");
        assert_eq!(lines[0]["decision"], "ALLOW");
        assert_eq!(lines[0]["bytesOut"], 1234);
        assert_eq!(lines[0]["usage"]["total_tokens"], 3);
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["decision"], "DENY");
        assert_eq!(lines[1]["status"], 403);
        assert!(lines[1].get("user").is_none() && lines[1].get("model").is_none());
        assert_eq!(log.dropped(), 0);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o007, 0, "access log must not be world-readable");
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn disabled_log_accepts_and_discards() {
        let log = AccessLog::disabled();
        log.log(AccessRecord::new("r", "GET", "/"));
        assert!(log.flush(Duration::from_millis(10)));
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, gate) = mpsc::channel();
        let log = AccessLog::to_writer(Box::new(Stuck(gate)));
        let start = std::time::Instant::now();
        for i in 0..(QUEUE + 100) {
            log.log(AccessRecord::new(format!("r{i}"), "GET", "/"));
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(log.dropped() >= 99, "dropped {}", log.dropped());
        drop(release);
    }
}
