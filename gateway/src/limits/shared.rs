//! Limits shared by gateways on one store: the pure rules, without I/O.
//!
//! Each counter's window allowance lives in the store (`limit_grants`). A gateway takes
//! **grants** of it and spends them locally, so the sum of what every gateway may spend never
//! passes the limit; the store call happens only when the local grant does not cover a
//! request. What a gateway spends beyond its grants (tokens a response used above its
//! reservation; admissions made while the store was unreachable) is **charged** to the store
//! afterwards, and grants left unspent by an idle counter are **returned** so other gateways
//! can spend them. The I/O is in `grants.rs`; this module decides.

/// A grant is sized as this fraction of what the gateway believes is left of the window,
/// divided by the number of gateways: big enough that a busy counter asks the store a few
/// dozen times per window, small enough that what one gateway holds unspent stays a small
/// part of the limit.
pub const GRANT_DIVISOR: u64 = 4;

/// A counter spent nothing for this long (seconds): its unspent grants go back to the store.
pub const IDLE_SECS: i64 = 2;

/// After the store granted less than asked (nothing is left), refused requests do not ask
/// again for this long (seconds), so a flood over the limit costs one store call per second
/// per counter, not one per request.
pub const EXHAUSTED_SECS: i64 = 1;

/// The number of gateways assumed to share a store when the operator does not say
/// (`--limit-gateways`).
pub const DEFAULT_GATEWAYS: u32 = 2;

/// The grant accounting of one shared counter in its current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    /// Units of the window this gateway holds in the store's count: grants taken plus
    /// charges (written or still pending).
    pub granted: u64,
    /// Part of `granted` the store has not been told of yet.
    pub pending: u64,
    /// When a request last spent from this counter (Unix seconds).
    pub last_spend: i64,
    /// Until when (Unix seconds) the store is known to have nothing left to grant.
    pub exhausted_until: i64,
    /// Units asked of the store by requests of this gateway still waiting for the answer.
    pub asking: u64,
    /// Answers applied in this window (to tell them apart from other counters' answers).
    pub answers: u64,
}

/// How this gateway shares its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    /// Gateways sharing the store (at least 1).
    pub gateways: u32,
    /// The store did not answer the last call: spend the offline allowance, ask nothing.
    pub offline: bool,
}

/// What to do with one take from a shared counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Spend locally; `charge` units of it lie beyond the grants (the offline allowance) and
    /// are added to `granted` and `pending`.
    Spend { charge: u64 },
    /// The grants do not cover it: ask the store for `want` units, then decide again.
    Ask { want: u64 },
    /// Grants already asked for by other requests of this gateway would cover it: wait for
    /// their answer, then decide again (one round trip serves a burst).
    Wait,
    /// Refuse the request.
    Refuse,
}

/// Decides a take of `amount` from a counter with limit `limit` that has `spent` (used plus
/// reserved) in its window and holds `share`.
pub fn decide(
    share: &Share,
    spent: u64,
    amount: u64,
    limit: u64,
    now: i64,
    sharing: Sharing,
) -> Decision {
    let after = spent.saturating_add(amount);
    if after > limit {
        return Decision::Refuse;
    }
    if after <= share.granted {
        return Decision::Spend { charge: 0 };
    }
    if sharing.offline {
        let cap = share
            .granted
            .max(offline_allowance(limit, sharing.gateways));
        return if after <= cap {
            Decision::Spend {
                charge: after - share.granted,
            }
        } else {
            Decision::Refuse
        };
    }
    if now < share.exhausted_until {
        return Decision::Refuse;
    }
    if share.asking > 0 && after <= share.granted.saturating_add(share.asking) {
        return Decision::Wait;
    }
    Decision::Ask {
        want: grant_size(
            limit,
            sharing.gateways,
            share.granted,
            after - share.granted,
        ),
    }
}

/// The grant to ask for when `need` more units are wanted and this gateway already holds
/// `granted` of `limit`: `ceil((limit - granted) / (GRANT_DIVISOR × gateways))`, at least
/// `need`. It shrinks as the window fills, so little is left stranded at its end.
pub fn grant_size(limit: u64, gateways: u32, granted: u64, need: u64) -> u64 {
    let parts = GRANT_DIVISOR.saturating_mul(u64::from(gateways.max(1)));
    need.max(limit.saturating_sub(granted).div_ceil(parts))
}

/// What one gateway may spend of a window on its own while the store is unreachable:
/// `limit / gateways`, so that gateways cut off together admit about one limit between them.
pub fn offline_allowance(limit: u64, gateways: u32) -> u64 {
    limit / u64::from(gateways.max(1))
}

/// The unspent grants to give back at `now`: all of them when the counter has been idle
/// for [`IDLE_SECS`] (or `closing`), else none. Charges not yet written are never returned.
pub fn to_return(share: &Share, spent: u64, now: i64, closing: bool) -> u64 {
    if !closing && now - share.last_spend < IDLE_SECS {
        return 0;
    }
    share
        .granted
        .saturating_sub(spent)
        .min(share.granted - share.pending.min(share.granted))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONLINE: Sharing = Sharing {
        gateways: 2,
        offline: false,
    };
    const OFFLINE: Sharing = Sharing {
        gateways: 2,
        offline: true,
    };

    fn share(granted: u64, pending: u64) -> Share {
        Share {
            granted,
            pending,
            last_spend: 100,
            exhausted_until: 0,
            asking: 0,
            answers: 0,
        }
    }

    fn asking(granted: u64, asking: u64) -> Share {
        Share {
            asking,
            ..share(granted, 0)
        }
    }

    #[test]
    fn decisions() {
        use Decision::*;
        let exhausted = Share {
            exhausted_until: 101,
            ..share(5, 0)
        };
        let cases = [
            // (share, spent, amount, limit, now, sharing, decision)
            (share(5, 0), 4, 1, 10, 100, ONLINE, Spend { charge: 0 }),
            // 10 - 5 = 5 left in this gateway's view, / (4 × 2) → 1, but 2 are needed
            (share(5, 0), 5, 2, 10, 100, ONLINE, Ask { want: 2 }),
            (share(0, 0), 0, 1, 100, 100, ONLINE, Ask { want: 13 }),
            (share(0, 0), 0, 1, 0, 100, ONLINE, Refuse),
            (share(5, 0), 10, 1, 10, 100, ONLINE, Refuse),
            (exhausted, 5, 1, 10, 100, ONLINE, Refuse),
            (exhausted, 5, 1, 10, 101, ONLINE, Ask { want: 1 }),
            (exhausted, 4, 1, 10, 100, ONLINE, Spend { charge: 0 }),
            // a grant of 3 is on its way: the next 3 wait for it, the 4th asks too
            (asking(5, 3), 5, 1, 10, 100, ONLINE, Wait),
            (asking(5, 3), 7, 1, 10, 100, ONLINE, Wait),
            (asking(5, 3), 8, 1, 10, 100, ONLINE, Ask { want: 4 }),
            (asking(5, 3), 8, 1, 10, 100, OFFLINE, Refuse),
            // offline: up to max(granted, limit / gateways), the excess charged later
            (share(0, 0), 0, 1, 10, 100, OFFLINE, Spend { charge: 1 }),
            (share(2, 0), 4, 1, 10, 100, OFFLINE, Spend { charge: 3 }),
            (share(2, 0), 5, 1, 10, 100, OFFLINE, Refuse),
            (share(8, 0), 7, 1, 10, 100, OFFLINE, Spend { charge: 0 }),
            (share(8, 0), 8, 1, 10, 100, OFFLINE, Refuse),
        ];
        for (i, (s, spent, amount, limit, now, sharing, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                decide(&s, spent, amount, limit, now, sharing),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn grant_sizes_shrink_as_the_window_fills() {
        assert_eq!(grant_size(1000, 2, 0, 1), 125);
        assert_eq!(grant_size(1000, 2, 875, 1), 16);
        assert_eq!(grant_size(1000, 2, 999, 1), 1);
        assert_eq!(grant_size(1000, 2, 1000, 1), 1);
        assert_eq!(grant_size(1000, 2, 0, 400), 400);
        assert_eq!(grant_size(1000, 0, 0, 1), 250, "0 gateways counts as 1");
        assert_eq!(
            grant_size(u64::MAX, u32::MAX, 0, 1),
            u64::MAX.div_ceil(4 * 0xFFFF_FFFF)
        );
    }

    #[test]
    fn offline_allowances() {
        assert_eq!(offline_allowance(10, 2), 5);
        assert_eq!(offline_allowance(10, 3), 3);
        assert_eq!(offline_allowance(1, 2), 0);
        assert_eq!(offline_allowance(10, 0), 10);
    }

    #[test]
    fn returns_only_idle_unspent_and_written_grants() {
        let cases = [
            // (share, spent, now, closing, returned)
            (share(10, 0), 4, 101, false, 0),
            (share(10, 0), 4, 102, false, 6),
            (share(10, 0), 4, 101, true, 6),
            (share(10, 0), 12, 102, false, 0),
            (share(10, 8), 4, 102, false, 2),
            (share(10, 10), 0, 102, false, 0),
        ];
        for (i, (s, spent, now, closing, want)) in cases.into_iter().enumerate() {
            assert_eq!(to_return(&s, spent, now, closing), want, "case {i}");
        }
    }
}
