//! Tunnel client addresses claimed in the store, so gateways sharing it never hand one
//! address to two Sessions (on a single gateway the same claims keep the addresses unique
//! among its own peers).
//!
//! The index is chosen by [`lowest_free_client_index`] (pure) over what the store says is
//! claimed plus what is still busy on this gateway; the store's claim is the arbiter when two
//! gateways choose the same index at once, and the loser moves to the next one. A Session
//! that already holds a claim (it connected to another gateway, or reconnects here) keeps
//! its address. Claims go when the peer goes (the [`Tunnel`](super::Tunnel) releases them)
//! and, for a gateway that stopped without releasing, when it starts again
//! ([`release_stale`]).

use super::addresses::{client_pair, lowest_free_client_index, AddressPair};
use crate::store::{StoreBackend, StoreError};
use std::collections::BTreeSet;

/// How many indices a connect tries before giving up when other gateways keep taking the
/// one it chose (each lost race moves to the next free index).
pub const CLAIM_ATTEMPTS: usize = 16;

/// Why no tunnel address could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "the tunnel client address range is exhausted (65,532 Sessions hold an address); \
         delete Sessions that are no longer used (posternctl delete session NAME)"
    )]
    Exhausted,
    #[error("claiming a tunnel address: {0}")]
    Store(#[from] StoreError),
    #[error(
        "no tunnel address could be claimed after {CLAIM_ATTEMPTS} tries (other gateways took \
         each one first); connect again"
    )]
    Contended,
}

impl ClaimError {
    /// Whether the store could not be reached (the connect is worth retrying later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClaimError::Store(e) if e.is_unavailable())
    }
}

/// An address claimed for a Session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub pair: AddressPair,
    /// False when the Session already held this claim (made by another gateway, or by this
    /// one before): a connect that fails then must not release it.
    pub new: bool,
}

impl Claimed {
    fn new(index: u16) -> Self {
        Claimed {
            pair: client_pair(index),
            new: true,
        }
    }
}

/// Claims a tunnel address for `session` on behalf of `gateway`. `busy_here` are the indices
/// this gateway cannot use now (its connected peers, and revoked ones whose resets are
/// still draining).
pub fn claim(
    store: &dyn StoreBackend,
    gateway: &str,
    session: &str,
    busy_here: &BTreeSet<u16>,
) -> Result<Claimed, ClaimError> {
    if let Some(index) = store.tunnel_address_of(session)? {
        if !busy_here.contains(&index) && store.claim_tunnel_address(index, session, gateway)? {
            return Ok(Claimed {
                pair: client_pair(index),
                new: false,
            });
        }
        // This Session's previous peer here is still draining on that address (its release
        // is queued): a fresh address, as a reconnect always got on one gateway.
        store.release_tunnel_address(session)?;
    }
    let mut lost = BTreeSet::new();
    for attempt in 0..CLAIM_ATTEMPTS {
        let mut taken: BTreeSet<u16> = store.claimed_tunnel_addresses()?.into_iter().collect();
        taken.extend(busy_here);
        taken.extend(&lost);
        let index = lowest_free_client_index(&taken, attempt).map_err(|_| ClaimError::Exhausted)?;
        if store.claim_tunnel_address(index, session, gateway)? {
            return Ok(Claimed::new(index));
        }
        // Another gateway took this index first, or this Session claimed one elsewhere
        // meanwhile (then it keeps that one).
        if let Some(mine) = store.tunnel_address_of(session)? {
            if !busy_here.contains(&mine) {
                return Ok(Claimed::new(mine));
            }
        }
        lost.insert(index);
    }
    Err(ClaimError::Contended)
}

/// Drops the claims `gateway` left behind when it stopped (it holds no peer yet at start).
/// Returns how many there were.
pub fn release_stale(store: &dyn StoreBackend, gateway: &str) -> Result<usize, StoreError> {
    store.release_tunnel_addresses_of_gateway(gateway)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};
    use std::collections::HashMap;

    fn none() -> BTreeSet<u16> {
        BTreeSet::new()
    }

    #[test]
    fn two_gateways_on_one_store_never_share_an_address() {
        let store = Store::from_backend(SqliteStore::open_in_memory().unwrap());
        let a = claim(&*store, "gw-a", "s1", &none()).unwrap().pair;
        let b = claim(&*store, "gw-b", "s2", &none()).unwrap().pair;
        let c = claim(&*store, "gw-a", "s3", &none()).unwrap().pair;
        assert_eq!((a.index, b.index, c.index), (2, 3, 4));
        assert_eq!(b.v4.to_string(), "100.64.0.3");
        // The lowest free index again once released, whichever gateway asks.
        store.release_tunnel_address("s2").unwrap();
        assert_eq!(claim(&*store, "gw-a", "s4", &none()).unwrap().pair.index, 3);
        assert_eq!(claim(&*store, "gw-b", "s5", &none()).unwrap().pair.index, 5);
    }

    #[test]
    fn a_session_keeps_its_claim_on_any_gateway_unless_it_is_draining_here() {
        let store = Store::from_backend(SqliteStore::open_in_memory().unwrap());
        let first = claim(&*store, "gw-a", "s1", &none()).unwrap();
        assert_eq!((first.pair.index, first.new), (2, true));
        // The agent comes back through gateway B: same address, the claim it already held.
        let again = claim(&*store, "gw-b", "s1", &none()).unwrap();
        assert_eq!((again.pair.index, again.new), (2, false));
        assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![2]);
        // Its old peer still drains on 2 here: a fresh address, and only one claim.
        let busy = BTreeSet::from([2]);
        assert_eq!(claim(&*store, "gw-b", "s1", &busy).unwrap().pair.index, 3);
        assert_eq!(store.tunnel_address_of("s1").unwrap(), Some(3));
        assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![3]);
        // Indices busy here are skipped even when the store has them free.
        let busy = BTreeSet::from([2, 4]);
        assert_eq!(claim(&*store, "gw-b", "s2", &busy).unwrap().pair.index, 5);
    }

    #[test]
    fn a_restarted_gateway_drops_only_its_own_stale_claims() {
        let store = Store::from_backend(SqliteStore::open_in_memory().unwrap());
        claim(&*store, "gw-a", "s1", &none()).unwrap();
        claim(&*store, "gw-b", "s2", &none()).unwrap();
        claim(&*store, "gw-a", "s3", &none()).unwrap();
        assert_eq!(release_stale(&*store, "gw-a").unwrap(), 2);
        assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![3]);
        assert_eq!(claim(&*store, "gw-a", "s4", &none()).unwrap().pair.index, 2);
    }

    #[test]
    fn an_exhausted_range_says_what_to_do() {
        let store = Store::from_backend(SqliteStore::open_in_memory().unwrap());
        let all: BTreeSet<u16> = (0..=u16::MAX).collect();
        let e = claim(&*store, "gw-a", "s1", &all).unwrap_err();
        assert!(matches!(e, ClaimError::Exhausted), "{e}");
        assert!(e.to_string().contains("posternctl delete session"));
        assert!(!e.is_unavailable());
        assert_eq!(store.claimed_tunnel_addresses().unwrap(), Vec::<u16>::new());
    }

    /// Two gateways (two connections to one database file) claiming at the same time: they
    /// race for the same lowest index over and over, and still no index has two Sessions.
    #[test]
    fn concurrent_claims_from_two_gateways_are_unique() {
        let dir = std::env::temp_dir().join(format!("postern-claims-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("postern.db");
        drop(Store::open(&path).unwrap());
        let per_gateway = 150;
        let run = |gateway: &'static str| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                (0..per_gateway)
                    .map(|i| {
                        let session = format!("{gateway}-s{i}");
                        let got = claim(&*store, gateway, &session, &BTreeSet::new()).unwrap();
                        assert!(got.new);
                        (got.pair.index, session)
                    })
                    .collect::<Vec<_>>()
            })
        };
        let (a, b) = (run("gw-a"), run("gw-b"));
        let mut owner: HashMap<u16, String> = HashMap::new();
        for (index, session) in a.join().unwrap().into_iter().chain(b.join().unwrap()) {
            if let Some(other) = owner.insert(index, session.clone()) {
                panic!("index {index} handed to {other} and {session}");
            }
        }
        assert_eq!(owner.len(), 2 * per_gateway);
        let store = Store::open(&path).unwrap();
        for (index, session) in &owner {
            assert_eq!(store.tunnel_address_of(session).unwrap(), Some(*index));
        }
        // Both filled the range from the bottom: no index above what they needed.
        let highest = *owner.keys().max().unwrap() as usize;
        assert!(
            highest <= 2 * per_gateway + 2 + CLAIM_ATTEMPTS,
            "highest index {highest}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
