//! Live load-balancing and retry state that outlives a compiled snapshot.
//!
//! Every change to the declared resources compiles a new [`Snapshot`](crate::state::Snapshot).
//! If the round-robin position, the retry budget's counts and the in-flight counts lived only
//! in that snapshot, every `apply` (even of another resource, or a new Secret) would restart
//! the rotation at the first endpoint and hand every config a fresh retry budget. So they live
//! here, keyed by Service name and config name, and a rebuilt config picks its old state up.
//! A Service that is deleted (or a config that disappears from it) drops its state.

use super::retry::BudgetCounters;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

/// Which config a state belongs to: the Service's name and the dynamicConfig name (`None` for
/// `spec.config`).
pub type ConfigKey = (String, Option<String>);

/// The live state of one config.
#[derive(Debug, Default)]
pub struct ConfigState {
    /// Round-robin position.
    pub next: Arc<AtomicUsize>,
    /// The retry budget's sliding-window counts.
    pub budget: BudgetCounters,
    /// In-flight counts by endpoint (index and URL: the same URL may appear twice with other
    /// keys).
    in_flight: Mutex<HashMap<(usize, String), Arc<AtomicUsize>>>,
}

impl ConfigState {
    /// The in-flight counters for `urls` (in endpoint order), reusing those of endpoints that
    /// kept their place and URL; counters of endpoints no longer listed are forgotten.
    pub fn in_flight(&self, urls: &[&str]) -> Vec<Arc<AtomicUsize>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::with_capacity(urls.len());
        let out = urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let key = (i, u.to_string());
                let c = map.remove(&key).unwrap_or_default();
                kept.insert(key, c.clone());
                c
            })
            .collect();
        *map = kept;
        out
    }
}

/// The table of [`ConfigState`]s, one per Service config. Lives as long as the gateway.
#[derive(Debug, Default)]
pub struct UpstreamStates {
    map: Mutex<HashMap<ConfigKey, Arc<ConfigState>>>,
}

impl UpstreamStates {
    /// The state of `config` of Service `service`, made fresh the first time.
    pub fn state(&self, service: &str, config: Option<&str>) -> Arc<ConfigState> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((service.to_string(), config.map(str::to_string)))
            .or_default()
            .clone()
    }

    /// Forgets the state of every config not in `live` (deleted Services and configs).
    pub fn keep_only(&self, live: &HashSet<ConfigKey>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| live.contains(k));
    }

    /// True when some config of Service `service` has state.
    pub fn state_exists(&self, service: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().any(|(s, _)| s == service)
    }

    /// How many configs have state.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no config has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn same_key_same_state_until_dropped() {
        let t = UpstreamStates::default();
        let a = t.state("svc", None);
        a.next.fetch_add(3, Ordering::Relaxed);
        assert_eq!(t.state("svc", None).next.load(Ordering::Relaxed), 3);
        assert_eq!(
            t.state("svc", Some("gemini")).next.load(Ordering::Relaxed),
            0
        );
        assert_eq!(t.len(), 2);
        t.keep_only(&HashSet::from([(
            "svc".to_string(),
            Some("gemini".to_string()),
        )]));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.state("svc", None).next.load(Ordering::Relaxed),
            0,
            "dropped, then fresh"
        );
    }

    #[test]
    fn in_flight_counters_follow_index_and_url() {
        let s = ConfigState::default();
        let first = s.in_flight(&["http://a", "http://b"]);
        first[1].store(2, Ordering::Relaxed);
        let same = s.in_flight(&["http://a", "http://b", "http://c"]);
        assert_eq!(same[1].load(Ordering::Relaxed), 2);
        assert!(Arc::ptr_eq(&first[0], &same[0]));
        let moved = s.in_flight(&["http://b"]);
        assert_eq!(
            moved[0].load(Ordering::Relaxed),
            0,
            "another place is another endpoint"
        );
        let back = s.in_flight(&["http://a", "http://b"]);
        assert!(!Arc::ptr_eq(&first[1], &back[1]), "forgotten once unlisted");
    }
}
