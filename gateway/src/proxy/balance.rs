//! Choosing an endpoint of a load-balanced upstream: round robin, or the endpoint with the
//! fewest requests in flight. In-flight counts are atomics held by an [`InFlight`] guard that
//! lives as long as the response body, so a long stream keeps its endpoint busy. The
//! round-robin position and the in-flight counts are shared `Arc`s handed in by the caller, so
//! they can outlive one compiled snapshot (see [`super::upstream_state`]).

use postern_common::resources::{HttpConfig, LbPolicy};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One place requests can be sent, with the http config (auth included) used for it.
#[derive(Debug)]
pub struct Endpoint {
    pub url: url::Url,
    /// The config's `http`, with `auth` replaced by the endpoint's own when it has one.
    pub http: Option<HttpConfig>,
    in_flight: Arc<AtomicUsize>,
}

impl Endpoint {
    /// An idle endpoint with its own in-flight count.
    pub fn new(url: url::Url, http: Option<HttpConfig>) -> Self {
        Endpoint::with_count(url, http, Arc::default())
    }

    /// An endpoint counting its requests in flight into `in_flight`, which may be shared with
    /// the same endpoint of an earlier snapshot.
    pub fn with_count(
        url: url::Url,
        http: Option<HttpConfig>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Endpoint {
            url,
            http,
            in_flight,
        }
    }

    /// Requests sent to this endpoint whose response has not ended yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one request against an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// Marks a request in flight on `ep`.
    pub fn start(ep: Arc<Endpoint>) -> Self {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(ep)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one config and the policy that picks among them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    policy: LbPolicy,
    next: Arc<AtomicUsize>,
}

impl Balancer {
    /// A balancer over `endpoints` (at least one; validation guarantees it) starting at the
    /// first endpoint.
    pub fn new(endpoints: Vec<Endpoint>, policy: LbPolicy) -> Self {
        Balancer::with_position(endpoints, policy, Arc::default())
    }

    /// A balancer whose round-robin position is `next`, which may be shared with the same
    /// config of an earlier snapshot so a re-apply continues the rotation.
    pub fn with_position(
        endpoints: Vec<Endpoint>,
        policy: LbPolicy,
        next: Arc<AtomicUsize>,
    ) -> Self {
        Balancer {
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            policy,
            next,
        }
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when there is no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Endpoint `i`.
    pub fn get(&self, i: usize) -> &Arc<Endpoint> {
        &self.endpoints[i]
    }

    /// The endpoint for the next try, given the indexes already `tried` for this request: a
    /// retry goes to an endpoint not tried yet when there is one.
    pub fn pick(&self, tried: &[usize]) -> usize {
        let n = self.endpoints.len();
        if n <= 1 {
            return 0;
        }
        if let Some(&last) = tried.last() {
            if self.policy == LbPolicy::RoundRobin {
                return (1..=n)
                    .map(|k| (last + k) % n)
                    .find(|i| !tried.contains(i))
                    .unwrap_or((last + 1) % n);
            }
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        match self.policy {
            LbPolicy::RoundRobin => start,
            LbPolicy::LeastBusy => {
                let fresh = (0..n).any(|i| !tried.contains(&i));
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| !fresh || !tried.contains(i))
                    .min_by_key(|&i| self.endpoints[i].in_flight())
                    .unwrap_or(start)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(n: usize, policy: LbPolicy) -> Balancer {
        let eps = (0..n)
            .map(|i| Endpoint::new(format!("http://e{i}").parse().unwrap(), None))
            .collect();
        Balancer::new(eps, policy)
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let b = balancer(3, LbPolicy::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| b.pick(&[])).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn retries_go_to_the_next_untried_endpoint() {
        let b = balancer(3, LbPolicy::RoundRobin);
        assert_eq!(b.pick(&[1]), 2);
        assert_eq!(b.pick(&[2, 0]), 1);
        assert_eq!(b.pick(&[0, 1, 2]), 0);
        let l = balancer(2, LbPolicy::LeastBusy);
        assert_eq!(l.pick(&[0]), 1);
        assert_eq!(l.pick(&[1]), 0);
    }

    #[test]
    fn least_busy_prefers_idle_and_releases_on_drop() {
        let b = balancer(2, LbPolicy::LeastBusy);
        let g1 = InFlight::start(b.get(0).clone());
        let g2 = InFlight::start(b.get(0).clone());
        for _ in 0..4 {
            assert_eq!(b.pick(&[]), 1);
        }
        let g3 = InFlight::start(b.get(1).clone());
        assert_eq!(b.pick(&[]), 1, "one in flight beats two");
        drop((g1, g2));
        assert_eq!(b.get(0).in_flight(), 0);
        assert_eq!(b.pick(&[]), 0);
        drop(g3);
        assert_eq!(b.get(1).in_flight(), 0);
    }

    #[test]
    fn shared_position_and_counts_carry_over_to_a_rebuilt_balancer() {
        let next = Arc::new(AtomicUsize::new(0));
        let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
        let build = |policy| {
            let eps = (0..2)
                .map(|i| {
                    let url = format!("http://e{i}").parse().unwrap();
                    Endpoint::with_count(url, None, counts[i].clone())
                })
                .collect();
            Balancer::with_position(eps, policy, next.clone())
        };
        let first = build(LbPolicy::RoundRobin);
        assert_eq!(first.pick(&[]), 0);
        let second = build(LbPolicy::RoundRobin);
        assert_eq!(second.pick(&[]), 1, "the rotation continues");
        assert_eq!(first.pick(&[]), 0);
        let _busy = InFlight::start(first.get(0).clone());
        let third = build(LbPolicy::LeastBusy);
        assert_eq!(
            third.get(0).in_flight(),
            1,
            "a request of the old snapshot still counts"
        );
        assert_eq!(third.pick(&[]), 1);
        assert_eq!(third.pick(&[]), 1);
    }

    #[test]
    fn single_endpoint_always_zero() {
        let b = balancer(1, LbPolicy::LeastBusy);
        assert_eq!(b.pick(&[0]), 0);
    }
}
