//! The usage sink: every request with token usage becomes a row in the store's `usage`
//! table, written in batches by a background thread so the request path never waits on disk.

use super::access_log::AccessRecord;
use crate::store::usage::{UsageKey, UsageRow, UsageTotals};
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows queued before new ones are dropped (and counted).
const QUEUE: usize = 8192;
/// Longest a row waits before its batch is written.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// Rows written per transaction at most.
const BATCH_MAX: usize = 100;

enum Msg {
    Row(Box<UsageRow>),
    Flush(mpsc::Sender<()>),
}

/// Records LLM token usage in the store, off the hot path.
///
/// Exists so usage survives restarts and can be summed per user, group, model, service or
/// config: [`UsageRecorder::record`] only queues (a full queue drops and counts), and a
/// thread inserts batches every ~200 ms or 100 rows.
#[derive(Clone)]
pub struct UsageRecorder {
    store: Arc<Store>,
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl UsageRecorder {
    /// Starts the writer thread for `store` (its own connection is best, so reads by the
    /// rest of the gateway never wait on a batch).
    pub fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = store.clone();
        std::thread::Builder::new()
            .name("postern-usage".into())
            .spawn(move || write_loop(rx, &writer))?;
        Ok(Self {
            store,
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues the usage of `record`, if it has any. Never blocks.
    pub fn record(&self, record: &AccessRecord) {
        let Some(row) = row_of(record) else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Row(Box::new(row)))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rows lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (blocking, up to `timeout`) until every row queued so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(done_tx)).is_err() {
            return false;
        }
        done_rx.recv_timeout(timeout).is_ok()
    }

    /// Totals per `by` since `since` (RFC 3339 UTC), after writing what is queued. Blocking.
    pub fn totals(&self, by: UsageKey, since: &str) -> Result<Vec<UsageTotals>, StoreError> {
        self.flush(Duration::from_secs(2));
        self.store.usage_totals(by, since)
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
    })
}

fn write_loop(rx: Receiver<Msg>, store: &Store) {
    let mut batch: Vec<UsageRow> = Vec::with_capacity(BATCH_MAX);
    let mut waiters: Vec<mpsc::Sender<()>> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let closed = match msg {
            Ok(Msg::Row(r)) => {
                batch.push(*r);
                deadline.get_or_insert_with(|| Instant::now() + BATCH_WAIT);
                false
            }
            Ok(Msg::Flush(done)) => {
                waiters.push(done);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if closed || due || batch.len() >= BATCH_MAX || !waiters.is_empty() {
            if let Err(e) = store.insert_usage(&batch) {
                tracing::warn!(error = %e, rows = batch.len(), "writing token usage failed");
            }
            batch.clear();
            deadline = None;
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            rec.record(&record("alice", Some(u.clone()), false));
        }
        rec.record(&record("bob", Some(u.clone()), true));
        rec.record(&record("carol", None, false));
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
        rec.record(&record(
            "alice",
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
                total_tokens: 2,
            }),
            false,
        ));
        std::thread::sleep(BATCH_WAIT * 3);
        assert_eq!(store.usage_totals(UsageKey::User, "2000").unwrap().len(), 1);
    }
}
