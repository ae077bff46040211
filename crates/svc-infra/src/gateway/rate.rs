//! The request rate limit of one `/ws` connection: a token bucket for the requests, and a
//! second one for the requests refused, so that a client over the rate is told (an `error`
//! answer) and only one that keeps sending at more than twice the rate is closed (1008).

use std::time::Instant;

/// The rate and burst every connection of a gateway gets (`WS_GATEWAY_REQUEST_RATE`,
/// `WS_GATEWAY_REQUEST_BURST`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rate {
    /// Tokens added per second.
    pub(super) per_second: f64,
    /// Most tokens held (and the first burst allowed).
    pub(super) burst: f64,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the rate: handle it.
    Allow,
    /// Over the rate: answer with an error.
    Refuse,
    /// Over the rate for as long again as the rate allows: close with 1008.
    Close,
}

/// One connection's state: two buckets, refilled at the same rate.
#[derive(Debug)]
pub(super) struct Limiter {
    allowed: f64,
    refused: f64,
    last: Instant,
}

impl Limiter {
    /// Both buckets full.
    pub(super) fn new(rate: Rate, now: Instant) -> Self {
        Self {
            allowed: rate.burst,
            refused: rate.burst,
            last: now,
        }
    }

    /// The verdict on a request arriving at `now`.
    pub(super) fn check(&mut self, rate: Rate, now: Instant) -> Verdict {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate.per_second;
        self.last = now;
        self.allowed = (self.allowed + refill).min(rate.burst);
        self.refused = (self.refused + refill).min(rate.burst);
        if self.allowed >= 1.0 {
            self.allowed -= 1.0;
            Verdict::Allow
        } else if self.refused >= 1.0 {
            self.refused -= 1.0;
            Verdict::Refuse
        } else {
            Verdict::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 5.0,
    };

    #[test]
    fn a_burst_then_the_rate_then_refusals_then_the_close() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RATE, t0);
        let verdicts: Vec<_> = (0..11).map(|_| l.check(RATE, t0)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Allow; 5]);
        assert_eq!(&verdicts[5..10], &[Verdict::Refuse; 5]);
        assert_eq!(verdicts[10], Verdict::Close);
    }

    #[test]
    fn a_client_at_the_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RATE, t0);
        for i in 0..1000 {
            let now = t0 + Duration::from_millis(100) * i;
            assert_eq!(l.check(RATE, now), Verdict::Allow, "request {i}");
        }
    }

    #[test]
    fn a_client_under_twice_the_rate_is_refused_some_but_not_closed() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RATE, t0);
        let mut refused = 0;
        for i in 0..1000 {
            let now = t0 + Duration::from_millis(55) * i; // 18/s against 10/s
            match l.check(RATE, now) {
                Verdict::Allow => {}
                Verdict::Refuse => refused += 1,
                Verdict::Close => panic!("closed at request {i}"),
            }
        }
        assert!((400..500).contains(&refused), "{refused}");
    }
}
