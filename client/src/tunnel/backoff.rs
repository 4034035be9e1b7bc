//! Exponential backoff with jitter for reconnecting to the gateway: 1 s, 2 s, 4 s ... up to
//! a cap, each delay drawn between half and all of its step, so agents cut off together
//! (a gateway restart) do not come back in lockstep.

use std::time::Duration;

/// The first delay after a failure.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
pub const CAP: Duration = Duration::from_secs(60);

/// The delay before attempt `failures + 1` after `failures` failures in a row (at least 1),
/// with `jitter` in `[0, 1]` choosing where in `[step / 2, step]` it falls.
pub fn delay(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let step = BASE.saturating_mul(1u32 << exp).min(CAP);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        1.0
    };
    step.mul_f64(0.5 + 0.5 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let full: Vec<u64> = (1..=9).map(|n| delay(n, 1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(0, 1.0), BASE);
        assert_eq!(delay(u32::MAX, 1.0), CAP);
    }

    #[test]
    fn jitter_stays_within_half_to_full_step() {
        assert_eq!(delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(delay(3, 0.5), Duration::from_secs(3));
        assert_eq!(delay(3, 7.0), Duration::from_secs(4));
        assert_eq!(delay(3, f64::NAN), Duration::from_secs(4));
        assert_eq!(delay(20, 0.0), CAP / 2);
    }
}
