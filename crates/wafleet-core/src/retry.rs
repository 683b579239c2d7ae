//! Retry arithmetic as data: how long to wait before the next attempt and whether to try at all.
//!
//! This module owns the numbers only. It never sleeps, never reads a clock and never draws a random
//! number: the caller passes the attempt count, the job's age and a jitter value in `[0, 1)`, so every
//! result here is exact and testable. Which errors are worth retrying is decided elsewhere
//! ([`crate::graph_error`], [`crate::llm_error`]); this module only says *when*.
//!
//! Counting convention, shared by every function here: `attempt` is the zero-based number of the
//! attempt that just failed. The first try is attempt 0, so the first retry waits
//! `next_delay(0, jitter)` (at most `base`), and `max_attempts` counts every try including the first.

use std::time::Duration;

/// Exponential backoff with full jitter, bounded by a number of attempts and by the job's age.
///
/// Full jitter (`delay = jitter × min(max, base × 2^attempt)`) rather than "equal" or "decorrelated"
/// jitter because it spreads a thundering herd of workers that failed together (a Graph API outage,
/// an LLM provider returning 529 to everyone) over the whole window instead of re-synchronising them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Cap of the first retry's delay; doubled on every further attempt.
    pub base: Duration,
    /// Upper bound of any single delay, however many attempts failed.
    pub max: Duration,
    /// Total number of tries allowed, the first one included. `0` and `1` both mean "never retry".
    pub max_attempts: u32,
    /// A job older than this is not retried: a WhatsApp reply that arrives an hour late is worse
    /// than an operator alert, and the 24-hour customer service window may have closed.
    pub max_age: Duration,
}

impl Backoff {
    /// The largest delay that may follow the failure of `attempt`: `min(max, base × 2^attempt)`.
    ///
    /// Saturates instead of overflowing: any attempt number, up to `u32::MAX`, is fine.
    pub fn cap(&self, attempt: u32) -> Duration {
        // 2^31 is the largest power of two a u32 multiplier can hold; beyond that the product is
        // certainly larger than any sensible `max`, and `checked_mul` catches the rest.
        let grown = if attempt < 32 {
            self.base.checked_mul(1u32 << attempt)
        } else {
            None
        };
        match grown {
            Some(delay) => delay.min(self.max),
            None if self.base.is_zero() => Duration::ZERO,
            None => self.max,
        }
    }

    /// Delay before the next try after attempt number `attempt` failed.
    ///
    /// `jitter` is a uniform random value in `[0, 1)` drawn by the caller. Values outside that range
    /// are clamped (NaN counts as 0), so a buggy caller gets a wrong delay, never a panic.
    pub fn next_delay(&self, attempt: u32, jitter: f64) -> Duration {
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self.cap(attempt).mul_f64(jitter)
    }

    /// Whether a job whose attempt number `attempt` just failed, first enqueued `age` ago, should be
    /// tried again.
    pub fn should_retry(&self, attempt: u32, age: Duration) -> bool {
        attempt.saturating_add(1) < self.max_attempts && age < self.max_age
    }
}

/// Ceiling of [`pair_rate_backoff`]. The longest wait Meta can impose after a burst is repaying 45
/// borrowed messages at one per 6 s, i.e. 270 s; waiting much longer than that only delays the reply.
pub const PAIR_RATE_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Wait before re-sending to a recipient after a pair-rate-limit error (Graph code 131056): Meta's
/// advice of 4^X seconds, capped at [`PAIR_RATE_BACKOFF_MAX`].
///
/// `failures` is X, zero-based like `attempt` elsewhere in this module: the number of pair-rate
/// failures for this recipient *before* the one that just happened. So the first failure waits 1 s,
/// then 4 s, 16 s, 64 s, 256 s, then the cap.
pub fn pair_rate_backoff(failures: u32) -> Duration {
    let secs = 4u64
        .checked_pow(failures)
        .unwrap_or(u64::MAX)
        .min(PAIR_RATE_BACKOFF_MAX.as_secs());
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    const POLICY: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        max_attempts: 5,
        max_age: Duration::from_secs(600),
    };

    #[test]
    fn delay_cap_doubles_from_base_and_stops_at_max() {
        let cases = [
            (0, secs(1)),
            (1, secs(2)),
            (2, secs(4)),
            (5, secs(32)),
            (6, secs(60)),
            (7, secs(60)),
            (31, secs(60)),
            (32, secs(60)),
            (1_000, secs(60)),
            (u32::MAX, secs(60)),
        ];
        for (attempt, expected) in cases {
            assert_eq!(POLICY.cap(attempt), expected, "attempt {attempt}");
        }
    }

    #[test]
    fn next_delay_is_jitter_times_cap() {
        let cases = [
            (0, 0.0, Duration::ZERO),
            (0, 0.5, Duration::from_millis(500)),
            (3, 0.25, secs(2)),
            (10, 0.5, secs(30)),
            (u32::MAX, 0.5, secs(30)),
            (u32::MAX, 0.999, Duration::from_millis(59_940)),
        ];
        for (attempt, jitter, expected) in cases {
            assert_eq!(
                POLICY.next_delay(attempt, jitter),
                expected,
                "attempt {attempt}, jitter {jitter}"
            );
        }
    }

    #[test]
    fn out_of_range_jitter_is_clamped_instead_of_panicking() {
        let cases = [
            (-1.0, Duration::ZERO),
            (f64::NAN, Duration::ZERO),
            (f64::NEG_INFINITY, Duration::ZERO),
            (1.0, secs(4)),
            (7.5, secs(4)),
            (f64::INFINITY, secs(4)),
        ];
        for (jitter, expected) in cases {
            assert_eq!(POLICY.next_delay(2, jitter), expected, "jitter {jitter}");
        }
    }

    #[test]
    fn huge_base_saturates_at_max_instead_of_overflowing() {
        let policy = Backoff {
            base: Duration::MAX,
            max: secs(3_600),
            ..POLICY
        };
        assert_eq!(policy.cap(0), secs(3_600));
        assert_eq!(policy.cap(1), secs(3_600));
        assert_eq!(policy.next_delay(u32::MAX, 0.5), secs(1_800));

        let zero_base = Backoff {
            base: Duration::ZERO,
            ..POLICY
        };
        assert_eq!(zero_base.cap(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn should_retry_counts_every_try_and_respects_age() {
        let cases = [
            (0, secs(0), true),
            (3, secs(0), true),
            (4, secs(0), false),
            (u32::MAX, secs(0), false),
            (0, secs(599), true),
            (0, secs(600), false),
            (0, Duration::MAX, false),
        ];
        for (attempt, age, expected) in cases {
            assert_eq!(
                POLICY.should_retry(attempt, age),
                expected,
                "attempt {attempt}, age {age:?}"
            );
        }
    }

    #[test]
    fn a_single_attempt_policy_never_retries() {
        for max_attempts in [0, 1] {
            let policy = Backoff {
                max_attempts,
                ..POLICY
            };
            assert!(!policy.should_retry(0, Duration::ZERO));
        }
    }

    #[test]
    fn pair_rate_backoff_follows_powers_of_four_then_caps() {
        let cases = [
            (0, secs(1)),
            (1, secs(4)),
            (2, secs(16)),
            (3, secs(64)),
            (4, secs(256)),
            (5, secs(300)),
            (40, secs(300)),
            (u32::MAX, secs(300)),
        ];
        for (failures, expected) in cases {
            assert_eq!(pair_rate_backoff(failures), expected, "failures {failures}");
        }
    }
}
