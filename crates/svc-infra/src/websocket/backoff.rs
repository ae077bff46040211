//! [`Backoff`]: the one retry-delay policy of the crate, used by the client's reconnect
//! (through [`WebSocketConfig::jittered_backoff_delay`](super::WebSocketConfig::jittered_backoff_delay))
//! and by the Redis backplane's.
//!
//! Retry *n* (0-based) waits `min(base * 2^n, max)` times a random factor in
//! `[1 - jitter, 1 + jitter]` (DESIGN §2).

use std::time::Duration;

/// Exponential backoff with a cap and jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    /// In `0..=1`.
    jitter: f64,
}

impl Backoff {
    /// `jitter` outside `0..=1` (or NaN) is clamped into it, so that no delay is negative and
    /// nothing panics; configs check the range before they get here.
    pub(crate) const fn new(base: Duration, max: Duration, jitter: f64) -> Self {
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        Self { base, max, jitter }
    }

    /// The delay before retry `n` (0-based), before jitter: `min(base * 2^n, max)`. Never
    /// overflows: it saturates at `max`.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let factor = 2f64.powi(n.min(64) as i32);
        let secs = self.base.as_secs_f64() * factor;
        secs_saturating(secs.min(self.max.as_secs_f64()))
    }

    /// [`delay`](Self::delay) times a random factor in `[1 - jitter, 1 + jitter]`.
    pub(crate) fn jittered(&self, n: u32) -> Duration {
        let delay = self.delay(n).as_secs_f64();
        let j = self.jitter;
        let factor = if j > 0.0 {
            rand::random_range((1.0 - j)..=(1.0 + j))
        } else {
            1.0
        };
        secs_saturating(delay * factor)
    }
}

/// `secs` as a `Duration`, saturating at `Duration::MAX` instead of panicking.
fn secs_saturating(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_base_and_caps_at_max() {
        let b = Backoff::new(SEC, Duration::from_secs(60), 0.0);
        let secs: Vec<f64> = (0..8).map(|n| b.delay(n).as_secs_f64()).collect();
        assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
        assert_eq!(b.jittered(3), Duration::from_secs(8), "no jitter, exact");
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.2);
        for n in 0..12 {
            let base = b.delay(n).as_secs_f64();
            for _ in 0..50 {
                let d = b.jittered(n).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "{n}: {d} vs {base}"
                );
            }
        }
    }

    #[test]
    fn extremes_do_not_panic() {
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO, 1.0);
        assert_eq!(zero.jittered(5), Duration::ZERO);
        let huge = Backoff::new(Duration::MAX, Duration::MAX, 1.0);
        assert_eq!(huge.delay(64), Duration::MAX);
        let _ = huge.jittered(64);
        for bad in [-0.5, 7.0, f64::NAN] {
            let b = Backoff::new(SEC, SEC, bad);
            let d = b.jittered(0);
            assert!(d <= Duration::from_secs(2), "{bad}: {d:?}");
        }
    }
}
