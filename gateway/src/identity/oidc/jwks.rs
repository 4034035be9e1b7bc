//! The IdP's signing keys, cached, and the rule for fetching them again when an ID token
//! names a key the cache lacks (the IdP rotated its keys): at most once per interval, and
//! callers that miss at the same time share one fetch.

use openidconnect::core::CoreJsonWebKeySet;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Shortest time between two JWKS fetches caused by unknown key ids, per IdentityProvider.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// What to do after a token's key was not found in the keys of generation `seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefetchDecision {
    /// Another caller fetched newer keys meanwhile: retry with those, fetch nothing.
    UseNewerKeys,
    /// Fetch the JWKS now.
    Fetch,
    /// The last fetch was too recent: refuse the token without fetching.
    TooSoon,
}

/// The rate limit on refetches, as plain data so it can be tested without clocks or I/O.
#[derive(Debug, Clone)]
pub struct RefetchLimiter {
    interval: Duration,
    last_fetch: Option<Instant>,
}

impl RefetchLimiter {
    /// A limiter allowing one refetch per `interval`; the first one is allowed at once.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_fetch: None,
        }
    }

    /// Decides for a caller that saw generation `seen` while `current` is the cache's now.
    pub fn decide(&self, now: Instant, seen: u64, current: u64) -> RefetchDecision {
        if current != seen {
            return RefetchDecision::UseNewerKeys;
        }
        match self.last_fetch {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                RefetchDecision::TooSoon
            }
            _ => RefetchDecision::Fetch,
        }
    }

    /// Notes a fetch attempt at `now` (successful or not: a failing IdP is not hammered
    /// either).
    pub fn record(&mut self, now: Instant) {
        self.last_fetch = Some(now);
    }
}

/// One generation of keys: the number grows by one with each successful refetch.
pub type Generation = (u64, Arc<CoreJsonWebKeySet>);

/// The cached key set of one IdentityProvider.
pub struct JwksCache {
    keys: RwLock<Generation>,
    limiter: tokio::sync::Mutex<RefetchLimiter>,
}

impl JwksCache {
    /// A cache holding the keys fetched at discovery.
    pub fn new(keys: CoreJsonWebKeySet, interval: Duration) -> Self {
        Self {
            keys: RwLock::new((0, Arc::new(keys))),
            limiter: tokio::sync::Mutex::new(RefetchLimiter::new(interval)),
        }
    }

    /// The keys to verify with now, and their generation.
    pub fn current(&self) -> Generation {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Called after a token's key was missing from generation `seen`: returns newer keys to
    /// retry with (fetched now with `fetch`, or by a concurrent caller), or `None` when the
    /// rate limit forbids a fetch. Callers queue on one lock, so a burst of tokens with a new
    /// key id causes one fetch.
    pub async fn refresh_after_miss<F, Fut, E>(
        &self,
        seen: u64,
        fetch: F,
    ) -> Result<Option<Arc<CoreJsonWebKeySet>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CoreJsonWebKeySet, E>>,
    {
        let mut limiter = self.limiter.lock().await;
        let (current, keys) = self.current();
        match limiter.decide(Instant::now(), seen, current) {
            RefetchDecision::UseNewerKeys => Ok(Some(keys)),
            RefetchDecision::TooSoon => Ok(None),
            RefetchDecision::Fetch => {
                limiter.record(Instant::now());
                let fresh = Arc::new(fetch().await?);
                let mut slot = self.keys.write().unwrap_or_else(|e| e.into_inner());
                *slot = (slot.0 + 1, fresh.clone());
                Ok(Some(fresh))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn limiter_allows_one_fetch_per_interval() {
        let t0 = Instant::now();
        let mut l = RefetchLimiter::new(REFETCH_INTERVAL);
        assert_eq!(l.decide(t0, 0, 0), RefetchDecision::Fetch);
        l.record(t0);
        assert_eq!(l.decide(t0, 0, 0), RefetchDecision::TooSoon);
        assert_eq!(
            l.decide(t0 + REFETCH_INTERVAL - Duration::from_millis(1), 0, 0),
            RefetchDecision::TooSoon
        );
        assert_eq!(
            l.decide(t0 + REFETCH_INTERVAL, 0, 0),
            RefetchDecision::Fetch
        );
    }

    #[test]
    fn limiter_prefers_keys_fetched_meanwhile() {
        let t0 = Instant::now();
        let mut l = RefetchLimiter::new(REFETCH_INTERVAL);
        l.record(t0);
        assert_eq!(l.decide(t0, 0, 1), RefetchDecision::UseNewerKeys);
    }

    fn empty() -> CoreJsonWebKeySet {
        CoreJsonWebKeySet::new(Vec::new())
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Arc::new(JwksCache::new(empty(), REFETCH_INTERVAL));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .refresh_after_miss(0, || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(empty())
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().unwrap().is_some());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(cache.current().0, 1);
    }

    #[tokio::test]
    async fn a_second_miss_within_the_interval_fetches_nothing() {
        let cache = JwksCache::new(empty(), REFETCH_INTERVAL);
        let first = cache
            .refresh_after_miss(0, || async { Ok::<_, ()>(empty()) })
            .await;
        assert!(first.unwrap().is_some());
        let second = cache
            .refresh_after_miss(1, || async { panic!("fetched within the interval") })
            .await;
        assert_eq!(second, Ok::<_, ()>(None));
    }

    #[tokio::test]
    async fn a_failed_fetch_counts_against_the_limit() {
        let cache = JwksCache::new(empty(), REFETCH_INTERVAL);
        let first = cache.refresh_after_miss(0, || async { Err("down") }).await;
        assert_eq!(first.err(), Some("down"));
        assert_eq!(cache.current().0, 0);
        let second = cache
            .refresh_after_miss(0, || async { panic!("fetched within the interval") })
            .await;
        assert_eq!(second, Ok::<_, &str>(None));
    }
}
