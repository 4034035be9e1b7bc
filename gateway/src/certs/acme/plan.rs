//! What the ACME manager should do now, decided without I/O: which certificates to order
//! (new names), which to renew (past two thirds of their lifetime), which to drop (names no
//! longer served), and when to look again. The manager task feeds it the wanted names, the
//! certificates it holds, the failures so far and the clock, and carries out the answer.

use std::collections::{BTreeMap, BTreeSet};

/// First retry after a failed order, in seconds; doubled per further failure.
pub const BACKOFF_FIRST: i64 = 10;
/// Longest wait between retries that our own backoff makes, in seconds.
pub const BACKOFF_CAP: i64 = 3600;
/// Longest `Retry-After` honoured, in seconds: a CA asking for more is asked again after a
/// week (Let's Encrypt's longest rate-limit windows are a week).
pub const RETRY_AFTER_CAP: i64 = 7 * 24 * 3600;

/// One certificate the gateway should hold: stored under `name`, covering `identifiers`
/// (the first is `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The key in the store and in the live table.
    pub name: String,
    /// The DNS names of the order, in order.
    pub identifiers: Vec<String>,
}

/// What the wanted certificates are: `<domain>` and one per public Service, or (DNS-01) one
/// certificate for `<domain>` and `*.<domain>`. `public_services` are Service names (a full
/// `SVC.<domain>` is taken as well); anything that is not one DNS label is left out.
pub fn wanted(domain: &str, public_services: &[String], wildcard: bool) -> Vec<Wanted> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if wildcard {
        return vec![Wanted {
            name: domain.clone(),
            identifiers: vec![domain.clone(), format!("*.{domain}")],
        }];
    }
    let mut names = BTreeSet::new();
    names.insert(domain.clone());
    for svc in public_services {
        let svc = svc.trim().trim_end_matches('.').to_ascii_lowercase();
        let label = svc
            .strip_suffix(domain.as_str())
            .and_then(|l| l.strip_suffix('.'))
            .unwrap_or(&svc);
        if !label.is_empty() && !label.contains('.') {
            names.insert(format!("{label}.{domain}"));
        }
    }
    let mut out: Vec<Wanted> = names
        .into_iter()
        .map(|n| Wanted {
            identifiers: vec![n.clone()],
            name: n,
        })
        .collect();
    // The control plane's own name first: it is what clients log in to.
    out.sort_by_key(|w| w.name != domain);
    out
}

/// A certificate the gateway holds (from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub identifiers: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The ACME directory that issued it.
    pub directory: String,
}

impl Held {
    /// When renewal starts: two thirds into the lifetime.
    pub fn renew_at(&self) -> i64 {
        renew_at(self.not_before, self.not_after)
    }
}

/// `not_before + 2/3 (not_after - not_before)`.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let life = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add(life / 3 * 2 + (life % 3) * 2 / 3)
}

/// Failures of one name so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backoff {
    /// Failed orders in a row.
    pub failures: u32,
    /// Unix seconds before which no new order is made.
    pub next_try: i64,
}

impl Backoff {
    /// The state after one more failure at `now`; `retry_after` is the CA's `Retry-After`
    /// (Unix seconds), if it sent one.
    pub fn failed(self, now: i64, retry_after: Option<i64>) -> Backoff {
        let failures = self.failures.saturating_add(1);
        let ours = now.saturating_add(backoff_delay(failures));
        let theirs = retry_after
            .map(|t| t.min(now.saturating_add(RETRY_AFTER_CAP)))
            .unwrap_or(i64::MIN);
        Backoff {
            failures,
            next_try: ours.max(theirs),
        }
    }
}

/// Our wait after `failures` failures in a row: 10 s, 20 s, 40 s, ... up to an hour.
pub fn backoff_delay(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_FIRST
        .saturating_mul(1i64 << doublings)
        .min(BACKOFF_CAP)
}

/// Why a certificate is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing held for the name.
    New,
    /// The held certificate is past its renewal time.
    Renew,
    /// The held certificate covers other names or came from another directory.
    Changed,
}

/// One order to make now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub wanted: Wanted,
    pub reason: Reason,
}

/// The decision for one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Orders to make now, in the order given by [`wanted`].
    pub due: Vec<Due>,
    /// Held certificates whose name is no longer wanted.
    pub drop: Vec<String>,
    /// When to plan again (Unix seconds), if anything is scheduled; the manager also plans
    /// again when Services change.
    pub next_wake: Option<i64>,
}

/// Decides what to do at `now`.
pub fn plan(
    wanted: &[Wanted],
    held: &[Held],
    backoff: &BTreeMap<String, Backoff>,
    directory: &str,
    now: i64,
) -> Plan {
    let held_by_name: BTreeMap<&str, &Held> = held.iter().map(|h| (h.name.as_str(), h)).collect();
    let mut out = Plan::default();
    let wake = |t: i64, out: &mut Plan| {
        out.next_wake = Some(out.next_wake.map_or(t, |w| w.min(t)));
    };
    for w in wanted {
        let reason = match held_by_name.get(w.name.as_str()) {
            None => Some(Reason::New),
            Some(h) if h.identifiers != w.identifiers || h.directory != directory => {
                Some(Reason::Changed)
            }
            Some(h) if now >= h.renew_at() => Some(Reason::Renew),
            Some(h) => {
                wake(h.renew_at(), &mut out);
                None
            }
        };
        let Some(reason) = reason else { continue };
        match backoff.get(&w.name) {
            Some(b) if b.next_try > now => wake(b.next_try, &mut out),
            _ => out.due.push(Due {
                wanted: w.clone(),
                reason,
            }),
        }
    }
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    out.drop = held
        .iter()
        .filter(|h| !wanted_names.contains(h.name.as_str()))
        .map(|h| h.name.clone())
        .collect();
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
