//! The access log: one JSON line per request, written off the hot path.

use super::drain::Drain;
use super::usage::Usage;
use postern_common::resources::Effect;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
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
    /// The gateway that served the request (`--gateway-name`), where several share a store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Arc<str>>,
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
    /// The caller's W3C trace this request continues (the exported span's parent), when it
    /// sent a valid `traceparent`; not written to the log.
    #[serde(skip)]
    pub trace: Option<super::trace_context::TraceContext>,
}

impl AccessRecord {
    /// A fresh id for a request: `req-` and 32 hex digits from the thread's CSPRNG, which
    /// needs no system call (the OS generator costs one per request).
    pub fn new_request_id() -> String {
        use std::fmt::Write as _;
        let mut id = String::with_capacity(36);
        let _ = write!(id, "req-{:032x}", rand::random::<u128>());
        id
    }

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
            gateway: None,
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
            trace: None,
        }
    }
}

/// Where access records go. Cheap to clone; logging never blocks the request.
///
/// Exists so every request leaves exactly one line for operators and billing, written by a
/// background thread through a bounded queue: a slow disk costs dropped lines (counted by
/// [`AccessLog::dropped`]), never request latency. The writer wakes every
/// [`WRITE_TICK`] and writes what arrived in one buffered write, so logging costs a request
/// no thread wake-up and no system call.
#[derive(Clone)]
pub struct AccessLog {
    drain: Option<Arc<Drain<Arc<AccessRecord>>>>,
}

/// How long a line may wait before it is written.
pub const WRITE_TICK: Duration = Duration::from_millis(50);

impl AccessLog {
    /// Lines to standard output (`--access-log -`).
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// Lines appended to `path`, created readable by owner and group only.
    pub fn file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
        let f = opts.open(path)?;
        Ok(Self::to_writer(Box::new(f)))
    }

    /// No access log (`--access-log off`).
    pub fn disabled() -> Self {
        Self { drain: None }
    }

    /// Queues `record` for writing. Never blocks; a full queue drops the line and counts it.
    pub fn log(&self, record: Arc<AccessRecord>) {
        if let Some(d) = &self.drain {
            d.push(record);
        }
    }

    /// Lines lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.drain.as_ref().map_or(0, |d| d.dropped())
    }

    /// Waits (blocking, up to `timeout`) until every line queued so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.drain.as_ref().is_none_or(|d| d.flush(timeout))
    }

    fn to_writer(out: Box<dyn Write + Send>) -> Self {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
        let sink = move |batch: &mut Vec<Arc<AccessRecord>>| {
            for r in batch.iter() {
                if serde_json::to_writer(&mut out, &**r).is_ok() {
                    if let Err(e) = out.write_all(b"\n") {
                        tracing::warn!(error = %e, "access log write failed");
                    }
                }
            }
            if let Err(e) = out.flush() {
                tracing::warn!(error = %e, "access log flush failed");
            }
        };
        match Drain::start("postern-access-log", QUEUE, WRITE_TICK, sink) {
            Ok(d) => Self {
                drain: Some(Arc::new(d)),
            },
            Err(e) => {
                tracing::error!(error = %e, "could not start the access log writer; access logging is off");
                Self::disabled()
            }
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
        log.log(Arc::new(r));
        let mut d = AccessRecord::new("req-2", "GET", "/admin");
        d.decision = Some(Effect::Deny);
        d.reason = Some("no matching rule".into());
        d.status = 403;
        log.clone().log(Arc::new(d));
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
    fn request_ids_are_distinct_and_fixed_length() {
        let a = AccessRecord::new_request_id();
        let b = AccessRecord::new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 32);
        assert!(a.starts_with("req-") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn disabled_log_accepts_and_discards() {
        let log = AccessLog::disabled();
        log.log(Arc::new(AccessRecord::new("r", "GET", "/")));
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
        let (release, gate) = std::sync::mpsc::channel();
        let log = AccessLog::to_writer(Box::new(Stuck(gate)));
        let records: Vec<_> = (0..3 * QUEUE)
            .map(|i| Arc::new(AccessRecord::new(format!("r{i}"), "GET", "/")))
            .collect();
        let start = std::time::Instant::now();
        for r in records {
            log.log(r);
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        // The writer takes at most one batch before it blocks on the stuck output, so at most
        // two queues' worth are accepted.
        assert!(log.dropped() >= QUEUE as u64, "dropped {}", log.dropped());
        drop(release);
    }
}
