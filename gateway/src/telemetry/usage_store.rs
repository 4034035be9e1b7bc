//! The usage sink: every request with token usage becomes a row in the store's `usage`
//! table, written in batches by a background thread so the request path never waits on disk.

use super::access_log::AccessRecord;
use super::drain::Drain;
use crate::store::usage::{UsageKey, UsageRow, UsageTotals};
use crate::store::{Store, StoreError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rows queued before new ones are dropped (and counted).
const QUEUE: usize = 16_384;
/// Rows kept while the store is unreachable; past it the oldest are dropped (and counted).
pub const BACKLOG: usize = 100_000;
/// Longest wait between tries to write the backlog while the store is unreachable.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
/// Longest a row waits before its batch is written.
const BATCH_WAIT: Duration = Duration::from_millis(200);

/// Records LLM token usage in the store, off the hot path.
///
/// Exists so usage survives restarts and can be summed per user, group, model, service or
/// config: [`UsageRecorder::record`] only queues the record (a full queue drops and counts),
/// and a thread turns what arrived into rows and inserts them in one transaction every
/// ~200 ms.
#[derive(Clone)]
pub struct UsageRecorder {
    store: Arc<Store>,
    drain: Arc<Drain<Arc<AccessRecord>>>,
    backlog: Arc<Mutex<Backlog>>,
}

/// Usage rows the store could not take yet (it was unreachable), oldest first, bounded:
/// when full the oldest rows go, and are counted.
#[derive(Debug)]
pub struct Backlog {
    rows: VecDeque<UsageRow>,
    capacity: usize,
    dropped: u64,
}

impl Backlog {
    /// An empty backlog of at most `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        Backlog {
            rows: VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// Keeps `rows` (after those already kept), dropping the oldest past the capacity.
    pub fn keep(&mut self, rows: impl IntoIterator<Item = UsageRow>) {
        self.rows.extend(rows);
        while self.rows.len() > self.capacity {
            self.rows.pop_front();
            self.dropped += 1;
        }
    }

    /// Everything kept, oldest first, leaving the backlog empty.
    pub fn take(&mut self) -> Vec<UsageRow> {
        self.rows.drain(..).collect()
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows dropped because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The writer thread's side: new rows after the backlog, one insert per batch, and backoff
/// while the store is unreachable.
struct Writer {
    store: Arc<Store>,
    backlog: Arc<Mutex<Backlog>>,
    next_try: Option<Instant>,
    wait: Duration,
}

impl Writer {
    fn write(&mut self, new_rows: impl Iterator<Item = UsageRow>) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = backlog.take();
        rows.extend(new_rows);
        if rows.is_empty() {
            return;
        }
        if self.next_try.is_some_and(|t| Instant::now() < t) {
            backlog.keep(rows);
            return;
        }
        match self.store.insert_usage(&rows) {
            Ok(()) => {
                if self.next_try.take().is_some() {
                    tracing::info!("store back: wrote {} buffered usage rows", rows.len());
                }
                self.wait = BATCH_WAIT;
            }
            Err(e) if e.is_unavailable() => {
                if self.next_try.is_none() {
                    tracing::warn!(
                        "store unreachable: keeping {} usage rows to write later (at most {BACKLOG}): {e}",
                        rows.len()
                    );
                }
                backlog.keep(rows);
                self.next_try = Some(Instant::now() + self.wait);
                self.wait = (self.wait * 2).min(MAX_RETRY_WAIT);
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = rows.len(), "writing token usage failed");
            }
        }
    }
}

impl UsageRecorder {
    /// Starts the writer thread for `store` (its own connection is best, so reads by the
    /// rest of the gateway never wait on a batch).
    pub fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let backlog = Arc::new(Mutex::new(Backlog::new(BACKLOG)));
        let mut writer = Writer {
            store: store.clone(),
            backlog: backlog.clone(),
            next_try: None,
            wait: BATCH_WAIT,
        };
        let sink = move |batch: &mut Vec<Arc<AccessRecord>>| {
            writer.write(batch.iter().filter_map(|r| row_of(r)));
        };
        let drain = Drain::start_ticking("postern-usage", QUEUE, BATCH_WAIT, sink)?;
        Ok(Self {
            store,
            drain: Arc::new(drain),
            backlog,
        })
    }

    /// Rows waiting for the store to be reachable again.
    pub fn buffered(&self) -> usize {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Queues the usage of `record`, if it has any. Never blocks.
    pub fn record(&self, record: &Arc<AccessRecord>) {
        if record.usage.is_some() {
            self.drain.push(record.clone());
        }
    }

    /// Rows lost because the writer could not keep up, or the store stayed unreachable
    /// past the backlog's capacity.
    pub fn dropped(&self) -> u64 {
        let backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        self.drain.dropped() + backlog.dropped()
    }

    /// Waits (blocking, up to `timeout`) until every row queued so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.drain.flush(timeout)
    }

    /// Totals per `by` since `since` (RFC 3339 UTC), after writing what is queued. Blocking.
    pub fn totals(&self, by: UsageKey, since: &str) -> Result<Vec<UsageTotals>, StoreError> {
        self.flush(Duration::from_secs(2));
        self.store.usage_totals(by, since)
    }
}

impl UsageRecorder {
    /// Tokens per (day, model) since `since`, of `user` or everyone, after writing what is
    /// queued. Blocking.
    pub fn daily(
        &self,
        user: Option<&str>,
        since: &str,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.flush(Duration::from_secs(2));
        self.store.usage_daily(user, since)
    }
}

/// The row for `record`, when it carries usage.
pub fn row_of(record: &AccessRecord) -> Option<UsageRow> {
    let u = record.usage.as_ref()?;
    Some(UsageRow {
        time: record.time.clone(),
        user: record.user.clone(),
        groups: record.groups.clone(),
        service: record.service.clone(),
        config: record.config.clone(),
        model: record.model.clone(),
        prompt: u.prompt_tokens,
        completion: u.completion_tokens,
        total: u.total_tokens,
        estimated: record.usage_estimated,
        gateway: record.gateway.as_deref().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_row(n: u64) -> UsageRow {
        UsageRow {
            time: format!("2026-01-01T00:00:{n:02}.000Z"),
            user: None,
            groups: Vec::new(),
            service: None,
            config: None,
            model: None,
            prompt: n,
            completion: 0,
            total: n,
            estimated: false,
            gateway: None,
        }
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_rows_and_counts_them() {
        let mut b = Backlog::new(3);
        b.keep((1..=2).map(usage_row));
        b.keep((3..=5).map(usage_row));
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped(), 2);
        let kept: Vec<u64> = b.take().iter().map(|r| r.prompt).collect();
        assert_eq!(kept, vec![3, 4, 5]);
        assert!(b.is_empty());
    }
    use crate::telemetry::usage::Usage;

    fn record(user: &str, usage: Option<Usage>, estimated: bool) -> AccessRecord {
        let mut r = AccessRecord::new("r", "POST", "/v1/chat/completions");
        r.user = Some(user.into());
        r.groups = vec!["dev".into()];
        r.model = Some("m".into());
        r.usage = usage;
        r.usage_estimated = estimated;
        r
    }

    #[test]
    fn records_with_usage_are_batched_into_the_store() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let rec = UsageRecorder::start(store.clone()).unwrap();
        let u = Usage {
            prompt_tokens: 11,
            completion_tokens: 7,
            total_tokens: 18,
        };
        for _ in 0..150 {
            rec.record(&Arc::new(record("alice", Some(u.clone()), false)));
        }
        rec.record(&Arc::new(record("bob", Some(u.clone()), true)));
        rec.record(&Arc::new(record("carol", None, false)));
        assert!(rec.flush(Duration::from_secs(5)));
        let t = rec.totals(UsageKey::User, "2000").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].key.as_str(), t[0].requests, t[0].total_tokens),
            ("alice", 150, 2700)
        );
        assert_eq!((t[1].key.as_str(), t[1].estimated), ("bob", 1));
        let g = store.usage_totals(UsageKey::Group, "2000").unwrap();
        assert_eq!((g[0].key.as_str(), g[0].requests), ("dev", 151));
        assert_eq!(rec.dropped(), 0);
    }

    #[test]
    fn rows_are_written_without_a_flush_within_the_batch_wait() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let rec = UsageRecorder::start(store.clone()).unwrap();
        rec.record(&Arc::new(record(
            "alice",
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
                total_tokens: 2,
            }),
            false,
        )));
        std::thread::sleep(BATCH_WAIT * 3);
        assert_eq!(store.usage_totals(UsageKey::User, "2000").unwrap().len(), 1);
    }
}
