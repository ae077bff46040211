//! The request rate limit of one `/ws` connection: a token bucket for the requests, and a
//! second one for the requests refused, so that a client over the rate is told (an `error`
//! answer) and only one that keeps sending at more than twice the rate is closed (1008).

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

/// One connection's state: two buckets, refilled at the same rate. 16 bytes (every
/// connection's task holds one): the buckets as `f32` (computed in `f64`), the time of the
/// last request in microseconds on the process's clock (`clock::now_us`).
#[derive(Debug)]
pub(super) struct Limiter {
    allowed: f32,
    refused: f32,
    last_us: u64,
}

impl Limiter {
    /// Both buckets full, at `now_us`.
    pub(super) fn new(rate: Rate, now_us: u64) -> Self {
        Self {
            allowed: rate.burst as f32,
            refused: rate.burst as f32,
            last_us: now_us,
        }
    }

    /// The verdict on a request arriving at `now_us`.
    pub(super) fn check(&mut self, rate: Rate, now_us: u64) -> Verdict {
        let elapsed = now_us.saturating_sub(self.last_us) as f64 / 1e6;
        let refill = elapsed * rate.per_second;
        self.last_us = now_us;
        let allowed = (f64::from(self.allowed) + refill).min(rate.burst);
        let refused = (f64::from(self.refused) + refill).min(rate.burst);
        let (allowed, refused, verdict) = if allowed >= 1.0 {
            (allowed - 1.0, refused, Verdict::Allow)
        } else if refused >= 1.0 {
            (allowed, refused - 1.0, Verdict::Refuse)
        } else {
            (allowed, refused, Verdict::Close)
        };
        self.allowed = allowed as f32;
        self.refused = refused as f32;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 5.0,
    };

    #[test]
    fn a_burst_then_the_rate_then_refusals_then_the_close() {
        let t0 = 5_000_000;
        let mut l = Limiter::new(RATE, t0);
        let verdicts: Vec<_> = (0..11).map(|_| l.check(RATE, t0)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Allow; 5]);
        assert_eq!(&verdicts[5..10], &[Verdict::Refuse; 5]);
        assert_eq!(verdicts[10], Verdict::Close);
    }

    #[test]
    fn a_client_at_the_rate_is_never_refused() {
        let t0 = 5_000_000;
        let mut l = Limiter::new(RATE, t0);
        for i in 0..1000 {
            let now = t0 + 100_000 * i;
            assert_eq!(l.check(RATE, now), Verdict::Allow, "request {i}");
        }
    }

    #[test]
    fn a_client_under_twice_the_rate_is_refused_some_but_not_closed() {
        let t0 = 5_000_000;
        let mut l = Limiter::new(RATE, t0);
        let mut refused = 0;
        for i in 0..1000 {
            let now = t0 + 55_000 * i; // 18/s against 10/s
            match l.check(RATE, now) {
                Verdict::Allow => {}
                Verdict::Refuse => refused += 1,
                Verdict::Close => panic!("closed at request {i}"),
            }
        }
        assert!((400..500).contains(&refused), "{refused}");
    }
}
