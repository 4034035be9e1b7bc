//! The rule set of a (User, Service) pair, merged once per configuration snapshot and
//! thread rather than on every request.
//!
//! Merging copies, deduplicates and sorts every rule of the Service, the User and the
//! global Policies; a request then only clones one `Arc` owned by its own thread. Each
//! thread keeps its own cache, so no lock is shared and no reference count bounces between
//! cores. The cache holds the `Arc`s of what it was built from: their addresses, its keys,
//! cannot be reused by other entries while it remembers them.

use crate::state::{ServiceEntry, Snapshot, UserEntry};
use postern_policy::{Catalog, RuleSet};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// More pairs than this per thread and the cache starts over (memory stays bounded when
/// many Users call many Services).
const MAX_PAIRS: usize = 4096;

/// One thread's merged rule sets for one snapshot.
#[derive(Default)]
struct Cache {
    /// The snapshot the entries were merged from; `Weak` so an old one is not kept alive.
    snapshot: Weak<Snapshot>,
    pairs: HashMap<(usize, usize), Entry>,
}

/// A merged rule set and what it was merged from (kept alive so the key stays unique).
struct Entry {
    rules: Arc<RuleSet>,
    _service: Arc<ServiceEntry>,
    _user: Arc<UserEntry>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::default();
}

/// The rules that apply when `user` calls `service` under `snap`: the same set as
/// [`Catalog::combine`] of the three, merged at most once per thread and snapshot.
pub fn rules_for(
    snap: &Arc<Snapshot>,
    service: &Arc<ServiceEntry>,
    user: &Arc<UserEntry>,
) -> Arc<RuleSet> {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        // Compared by address, without touching the shared snapshot's reference counts; the
        // `Weak` keeps that address from being reused by a later snapshot.
        if !std::ptr::eq(cache.snapshot.as_ptr(), Arc::as_ptr(snap))
            || cache.pairs.len() >= MAX_PAIRS
        {
            cache.pairs.clear();
            cache.snapshot = Arc::downgrade(snap);
        }
        let key = (Arc::as_ptr(service) as usize, Arc::as_ptr(user) as usize);
        cache
            .pairs
            .entry(key)
            .or_insert_with(|| Entry {
                rules: Arc::new(Catalog::combine(
                    &service.rules,
                    &user.rules,
                    &snap.global_rules,
                )),
                _service: service.clone(),
                _user: user.clone(),
            })
            .rules
            .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_common::resources::parse_documents;

    const YAML: &str = r#"
kind: User
metadata: {name: alice}
spec: {type: HUMAN, groups: [dev]}
---
kind: Policy
metadata: {name: global-deny}
spec:
  rules:
    - {name: no-delete, effect: DENY, priority: 1, condition: {match: 'ctx.request.http.method == "DELETE"'}}
---
kind: Service
metadata: {name: api}
spec:
  config: {upstream: {url: "http://127.0.0.1:1"}}
  authorization:
    inlinePolicies:
      - name: devs
        spec:
          rules:
            - {name: dev, effect: ALLOW, condition: {match: '"dev" in ctx.user.spec.groups'}}
"#;

    fn snapshot(yaml: &str) -> Arc<Snapshot> {
        let docs = parse_documents("t.yaml", yaml).expect("parses");
        Arc::new(
            Snapshot::build(
                docs.into_iter().map(|d| d.resource).collect(),
                vec![],
                vec![],
            )
            .expect("builds"),
        )
    }

    fn names(r: &RuleSet) -> Vec<String> {
        r.rules().iter().map(|r| r.rule.clone()).collect()
    }

    #[test]
    fn a_pair_is_merged_once_per_snapshot_and_equals_the_plain_merge() {
        let snap = snapshot(YAML);
        let (svc, user) = (&snap.services["api"], &snap.users["alice"]);
        let first = rules_for(&snap, svc, user);
        let plain = Catalog::combine(&svc.rules, &user.rules, &snap.global_rules);
        assert_eq!(names(&first), names(&plain));
        assert!(!names(&first).is_empty());
        assert!(Arc::ptr_eq(&first, &rules_for(&snap, svc, user)));
    }

    #[test]
    fn a_new_snapshot_is_merged_afresh() {
        let old = snapshot(YAML);
        let before = rules_for(&old, &old.services["api"], &old.users["alice"]);
        let new = snapshot(&YAML.replace("name: dev,", "name: dev-renamed,"));
        let after = rules_for(&new, &new.services["api"], &new.users["alice"]);
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(names(&after).contains(&"dev-renamed".to_string()));
        assert!(!names(&after).contains(&"dev".to_string()));
    }
}
