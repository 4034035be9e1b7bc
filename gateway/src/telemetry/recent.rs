//! The last few access records in memory, and a live feed of new ones, for
//! `posternctl logs [-f]`.

use super::access_log::AccessRecord;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Records kept by default.
pub const DEFAULT_CAPACITY: usize = 1000;
/// New records a slow follower may fall behind by before it skips ahead.
const FEED: usize = 1024;

/// Which records a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only this Service.
    pub service: Option<String>,
    /// Only this user.
    pub user: Option<String>,
}

impl LogFilter {
    /// Whether `r` passes the filter.
    pub fn matches(&self, r: &AccessRecord) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        eq(&self.service, &r.service) && eq(&self.user, &r.user)
    }
}

/// A ring buffer of recent access records plus a broadcast of each new one.
///
/// Exists so admins can look at and follow traffic without shell access to the access log
/// file. Holding a record costs one short lock and one broadcast send; followers that fall
/// behind lose records rather than slowing requests.
pub struct RecentLog {
    ring: Mutex<VecDeque<Arc<AccessRecord>>>,
    capacity: usize,
    feed: broadcast::Sender<Arc<AccessRecord>>,
    closing: watch::Sender<bool>,
    closed: AtomicBool,
}

impl RecentLog {
    /// Keeps the last `capacity` records.
    pub fn new(capacity: usize) -> Self {
        let (feed, _) = broadcast::channel(FEED);
        let (closing, _) = watch::channel(false);
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
            feed,
            closing,
            closed: AtomicBool::new(false),
        }
    }

    /// Adds `record`, evicting the oldest when full, and tells followers.
    pub fn push(&self, record: Arc<AccessRecord>) {
        if self.capacity > 0 {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            if ring.len() >= self.capacity {
                ring.pop_front();
            }
            ring.push_back(record.clone());
        }
        // No followers is not an error.
        let _ = self.feed.send(record);
    }

    /// The last `tail` records that pass `filter`, oldest first.
    pub fn tail(&self, filter: &LogFilter, tail: usize) -> Vec<Arc<AccessRecord>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = ring
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(tail)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// A receiver of every record pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AccessRecord>> {
        self.feed.subscribe()
    }

    /// A receiver that turns `true` when the gateway shuts down, so followers can end.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every follow stream (graceful shutdown would otherwise wait for them).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.closing.send_replace(true);
    }

    /// Whether [`RecentLog::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(service: &str, user: Option<&str>, id: &str) -> Arc<AccessRecord> {
        let mut r = AccessRecord::new(id, "GET", "/");
        r.service = Some(service.into());
        r.user = user.map(str::to_string);
        Arc::new(r)
    }

    #[test]
    fn keeps_the_last_records_and_filters() {
        let log = RecentLog::new(3);
        log.push(rec("a", Some("alice"), "1"));
        log.push(rec("b", Some("bob"), "2"));
        log.push(rec("a", None, "3"));
        log.push(rec("a", Some("alice"), "4"));
        let ids = |v: Vec<Arc<AccessRecord>>| -> Vec<String> {
            v.iter().map(|r| r.request_id.clone()).collect()
        };
        assert_eq!(ids(log.tail(&LogFilter::default(), 10)), ["2", "3", "4"]);
        assert_eq!(ids(log.tail(&LogFilter::default(), 2)), ["3", "4"]);
        let svc_a = LogFilter {
            service: Some("a".into()),
            user: None,
        };
        assert_eq!(ids(log.tail(&svc_a, 10)), ["3", "4"]);
        let alice = LogFilter {
            service: Some("a".into()),
            user: Some("alice".into()),
        };
        assert_eq!(ids(log.tail(&alice, 10)), ["4"]);
        let nobody = LogFilter {
            service: None,
            user: Some("zed".into()),
        };
        assert!(log.tail(&nobody, 10).is_empty());
    }

    #[tokio::test]
    async fn followers_get_new_records_and_the_close_signal() {
        let log = RecentLog::new(0);
        let mut rx = log.subscribe();
        let mut closing = log.closing();
        log.push(rec("a", None, "x"));
        assert_eq!(rx.recv().await.unwrap().request_id, "x");
        assert!(log.tail(&LogFilter::default(), 5).is_empty());
        log.close();
        closing.changed().await.unwrap();
        assert!(*closing.borrow() && log.is_closed());
    }
}
