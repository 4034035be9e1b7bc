//! The usage sink: every request with token usage becomes a row in the store's `usage`
//! table, written in batches by a background thread so the request path never waits on disk.

use super::access_log::AccessRecord;
use super::drain::Drain;
use crate::store::usage::{UsageKey, UsageRow, UsageTotals};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Rows queued before new ones are dropped (and counted).
const QUEUE: usize = 16_384;
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
}

impl UsageRecorder {
    /// Starts the writer thread for `store` (its own connection is best, so reads by the
    /// rest of the gateway never wait on a batch).
    pub fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let writer = store.clone();
        let mut rows = Vec::new();
        let sink = move |batch: &mut Vec<Arc<AccessRecord>>| {
            rows.clear();
            rows.extend(batch.iter().filter_map(|r| row_of(r)));
            if rows.is_empty() {
                return;
            }
            if let Err(e) = writer.insert_usage(&rows) {
                tracing::warn!(error = %e, rows = rows.len(), "writing token usage failed");
            }
        };
        let drain = Drain::start("postern-usage", QUEUE, BATCH_WAIT, sink)?;
        Ok(Self {
            store,
            drain: Arc::new(drain),
        })
    }

    /// Queues the usage of `record`, if it has any. Never blocks.
    pub fn record(&self, record: &Arc<AccessRecord>) {
        if record.usage.is_some() {
            self.drain.push(record.clone());
        }
    }

    /// Rows lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.drain.dropped()
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
