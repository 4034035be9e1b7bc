//! Sign-ins already completed, so a callback replayed with the same state and flow cookie
//! is refused here, before the identity provider is asked again.

use std::collections::HashMap;

/// Most completed sign-ins remembered at once; past it, new callbacks wait for old entries
/// to expire (each lives as long as its flow could).
pub const MAX_REMEMBERED: usize = 100_000;

/// States of finished flows, each with the Unix time its flow expires.
#[derive(Default)]
pub struct UsedStates {
    until: HashMap<String, i64>,
}

/// What [`UsedStates::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use: go on.
    Fresh,
    /// This state was already used.
    Replayed,
    /// Too many at once: refuse for now.
    Full,
}

impl UsedStates {
    /// Records `state` (valid until `expires`) as used, unless it already was.
    pub fn claim(&mut self, state: &str, expires: i64, now: i64) -> Claim {
        if self.until.contains_key(state) {
            return Claim::Replayed;
        }
        if self.until.len() >= MAX_REMEMBERED {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= MAX_REMEMBERED {
                return Claim::Full;
            }
        }
        self.until.insert(state.to_string(), expires);
        Claim::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_used_once() {
        let mut used = UsedStates::default();
        assert_eq!(used.claim("s1", 100, 0), Claim::Fresh);
        assert_eq!(used.claim("s1", 100, 50), Claim::Replayed);
        assert_eq!(used.claim("s2", 100, 50), Claim::Fresh);
    }

    #[test]
    fn full_until_entries_expire() {
        let mut used = UsedStates::default();
        for i in 0..MAX_REMEMBERED {
            assert_eq!(used.claim(&i.to_string(), 100, 0), Claim::Fresh);
        }
        assert_eq!(used.claim("late", 100, 99), Claim::Full);
        assert_eq!(used.claim("late", 200, 100), Claim::Fresh);
    }
}
