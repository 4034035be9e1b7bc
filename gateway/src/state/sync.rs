//! Keeping a gateway's memory in step with changes other gateways write to a shared store.
//!
//! The store's change feed ([`crate::store::feed`]) delivers a notice per committed change.
//! [`plan`] turns a batch of them into the least work that brings memory up to date (pure,
//! unit-tested); [`Gateway::apply_sync`] does that work; [`start`] runs the loop. A lost feed
//! ends in `Resync`, a full reload. [`StoreHealth`] records what `/healthz` reports.

use super::{now_unix, Gateway};
use crate::store::feed::{FeedEvent, Topic};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What to reload after a batch of feed events.
#[derive(Debug, Default, PartialEq)]
pub struct SyncPlan {
    /// Rebuild the snapshot (resources, Secrets, Credentials).
    pub snapshot: bool,
    /// Reload every Session.
    pub all_sessions: bool,
    /// Sessions changed elsewhere by name: read each, insert it or drop it.
    pub sessions_changed: Vec<String>,
    /// Certificates changed: wake the certificate manager.
    pub certificates: bool,
}

impl SyncPlan {
    /// Everything, as after a lost feed.
    pub fn everything() -> Self {
        SyncPlan {
            snapshot: true,
            all_sessions: true,
            certificates: true,
            ..Default::default()
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == SyncPlan::default()
    }
}

/// The work a batch of events calls for. A `Resync` or a whole-topic Sessions notice makes
/// per-Session work pointless, so it is dropped.
pub fn plan(events: &[FeedEvent]) -> SyncPlan {
    let mut p = SyncPlan::default();
    for event in events {
        let notice = match event {
            FeedEvent::Notice(n) => n,
            FeedEvent::Resync => {
                p = SyncPlan::everything();
                continue;
            }
            FeedEvent::Lost(_) => continue,
        };
        match notice.topic {
            Topic::Resources | Topic::Secrets | Topic::Credentials => p.snapshot = true,
            Topic::Certificates => p.certificates = true,
            Topic::TunnelAddresses => {}
            // A Session body is only a hint: a sealed notice proves who wrote it, not when,
            // so a recorded one replayed after a revocation must not bring the Session back.
            // Every Session named is read from the store.
            Topic::Sessions => match &notice.name {
                Some(name) => p.sessions_changed.push(name.clone()),
                None => p.all_sessions = true,
            },
        }
    }
    if p.all_sessions {
        p.sessions_changed.clear();
    }
    p
}

/// The change feed's state, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedState {
    /// The store is not shared: there is nothing to hear.
    None,
    Live,
    /// Lost: this gateway does not hear other gateways' changes until it resyncs.
    Lost,
}

impl FeedState {
    /// As JSON shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::None => "none",
            FeedState::Live => "live",
            FeedState::Lost => "lost",
        }
    }
}

/// Whether the store answers (from a background ping, never a request's query) and whether
/// the change feed is live.
#[derive(Debug)]
pub struct StoreHealth {
    reachable: AtomicBool,
    feed: AtomicU8,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            reachable: AtomicBool::new(true),
            feed: AtomicU8::new(0),
        }
    }
}

impl StoreHealth {
    /// Whether the last ping answered.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The change feed's state.
    pub fn feed(&self) -> FeedState {
        match self.feed.load(Ordering::Relaxed) {
            1 => FeedState::Live,
            2 => FeedState::Lost,
            _ => FeedState::None,
        }
    }

    fn set_feed(&self, state: FeedState) {
        let v = match state {
            FeedState::None => 0,
            FeedState::Live => 1,
            FeedState::Lost => 2,
        };
        self.feed.store(v, Ordering::Relaxed);
    }

    /// Records a ping's outcome; returns whether reachability changed.
    fn set_reachable(&self, reachable: bool) -> bool {
        self.reachable.swap(reachable, Ordering::Relaxed) != reachable
    }
}

impl Gateway {
    /// Does the work of `plan`. On error the caller retries with a full resync. Holds the
    /// write lock, so a local change and a reload cannot interleave (a reload that read the
    /// store before a local apply must not replace that apply's snapshot afterwards).
    pub fn apply_sync(&self, plan: &SyncPlan) -> Result<(), super::ChangeError> {
        let _guard = self.write_lock.lock().expect("write lock");
        if plan.snapshot {
            self.reload()?;
        }
        if plan.all_sessions {
            self.reload_sessions()?;
        }
        let now = now_unix();
        for name in &plan.sessions_changed {
            match self.store.get_session(name)? {
                // A Session deleted through this gateway a moment after the read stays gone.
                Some(s)
                    if super::sessions::expires_unix(&s) > now && !self.recently_deleted(name) =>
                {
                    self.insert_session_entry(s)
                }
                Some(_) => {}
                None => self.remove_sessions_where(|s| &s.name == name),
            }
        }
        if plan.certificates && !plan.snapshot {
            self.changes.send_modify(|generation| *generation += 1);
        }
        Ok(())
    }
}

/// How often the store is pinged for `/healthz`.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Pause before a failed sync is retried as a full resync.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Starts the store pinger and, on a shared store, the loop that applies other gateways'
/// changes. Call once, inside the runtime, after the state is loaded.
pub fn start(gw: &Arc<Gateway>) {
    let pinger = gw.clone();
    tokio::spawn(async move {
        loop {
            let g = pinger.clone();
            let outcome = tokio::task::spawn_blocking(move || g.store.ping()).await;
            let ok = matches!(outcome, Ok(Ok(())));
            if pinger.store_health.set_reachable(ok) {
                if ok {
                    tracing::info!("store reachable again");
                } else if let Ok(Err(e)) = outcome {
                    tracing::warn!("store unreachable: {e}");
                }
            }
            tokio::time::sleep(PING_EVERY).await;
        }
    });
    let Some(mut feed) = gw.store.subscribe() else {
        return;
    };
    gw.store_health.set_feed(FeedState::Live);
    let gw = gw.clone();
    tokio::spawn(async move {
        let mut pending = SyncPlan::default();
        loop {
            let mut events = Vec::new();
            if pending.is_empty() {
                match feed.recv().await {
                    Some(e) => events.push(e),
                    None => {
                        tracing::error!("store change feed ended; restart posternd to hear other gateways' changes");
                        gw.store_health.set_feed(FeedState::Lost);
                        return;
                    }
                }
            }
            while let Ok(e) = feed.try_recv() {
                events.push(e);
            }
            for e in &events {
                match e {
                    FeedEvent::Lost(reason) => {
                        tracing::warn!("not hearing other gateways' changes: {reason}");
                        gw.store_health.set_feed(FeedState::Lost);
                    }
                    FeedEvent::Resync => gw.store_health.set_feed(FeedState::Live),
                    FeedEvent::Notice(_) => {}
                }
            }
            let mut work = plan(&events);
            if !pending.is_empty() {
                work = std::mem::take(&mut pending);
            }
            if work.is_empty() {
                continue;
            }
            let g = gw.clone();
            let outcome = tokio::task::spawn_blocking(move || g.apply_sync(&work)).await;
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failure {
                tracing::warn!(
                    "applying other gateways' changes failed ({e}); resyncing in {}s",
                    RETRY_AFTER.as_secs()
                );
                pending = SyncPlan::everything();
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::feed::Notice;

    fn notice(topic: Topic, name: Option<&str>) -> FeedEvent {
        FeedEvent::Notice(Notice {
            origin: "gw-b".into(),
            topic,
            name: name.map(str::to_string),
            session: None,
        })
    }

    #[test]
    fn a_batch_becomes_the_least_work() {
        let p = plan(&[
            notice(Topic::Resources, None),
            notice(Topic::Secrets, None),
            notice(Topic::Sessions, Some("s1")),
            notice(Topic::TunnelAddresses, None),
        ]);
        assert_eq!(
            p,
            SyncPlan {
                snapshot: true,
                sessions_changed: vec!["s1".into()],
                ..Default::default()
            }
        );
        assert!(plan(&[notice(Topic::TunnelAddresses, None)]).is_empty());
        assert!(plan(&[FeedEvent::Lost("gone".into())]).is_empty());
    }

    #[test]
    fn a_session_body_in_a_notice_is_only_a_name_to_read() {
        let body = postern_common::resources::SessionInfo {
            name: "s9".into(),
            user: "alice".into(),
            session_type: postern_common::resources::SessionType::Clientless,
            kind: postern_common::resources::SessionKind::Workload,
            credential: "c".into(),
            authentication: postern_common::resources::Authentication::credential(
                postern_common::resources::CredentialType::Oauth2,
            ),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
        };
        let p = plan(&[FeedEvent::Notice(Notice {
            origin: "gw-b".into(),
            topic: Topic::Sessions,
            name: Some("s9".into()),
            session: Some(Box::new(body)),
        })]);
        assert_eq!(p.sessions_changed, vec!["s9".to_string()]);
    }

    #[test]
    fn whole_topic_and_resync_supersede_single_sessions() {
        let p = plan(&[
            notice(Topic::Sessions, Some("s1")),
            notice(Topic::Sessions, None),
        ]);
        assert!(p.all_sessions);
        assert!(p.sessions_changed.is_empty());
        let p = plan(&[notice(Topic::Certificates, None), FeedEvent::Resync]);
        assert_eq!(p, SyncPlan::everything());
    }
}
