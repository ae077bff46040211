//! The read budget: how fast one connection may send frames (`WS_MAX_INCOMING_RATE`,
//! `WS_MAX_INCOMING_BURST`). A connection over its budget is not closed and loses nothing:
//! the server stops reading its socket until the budget allows the next frame, so its
//! kernel buffers fill and TCP slows the sender down. One flooding connection then costs
//! the server no more than an honest busy one.
//!
//! A token bucket in its "virtual scheduling" form (GCRA): one timestamp per connection,
//! the theoretical arrival time of the next frame, instead of a token count and a refill
//! time.

/// The read budget of one connection (16 bytes; nothing when the rate is unlimited but
/// the two configuration words).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadBudget {
    /// Nanoseconds of budget one frame costs (1 s / rate); 0 = no limit.
    interval_ns: u32,
    /// How far ahead of now the schedule may run (burst × interval), in microseconds.
    limit_us: u32,
    /// The theoretical arrival time of the next frame, in nanoseconds since the
    /// process-wide clock origin.
    tat_ns: u64,
}

impl ReadBudget {
    /// `rate` frames per second with bursts of `burst`; a `rate` of 0 sets no limit.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        if rate == 0 {
            return Self {
                interval_ns: 0,
                limit_us: 0,
                tat_ns: 0,
            };
        }
        let interval_ns = (1_000_000_000 / u64::from(rate)).max(1);
        let limit_us =
            (interval_ns * u64::from(burst.max(1)) / 1_000).clamp(1, u64::from(u32::MAX));
        Self {
            interval_ns: interval_ns as u32,
            limit_us: limit_us as u32,
            tat_ns: 0,
        }
    }

    /// Charges one frame that arrived at `now_ns`. Returns the instant (nanoseconds since
    /// the clock origin) before which the next frame must not be read, or `None` when it
    /// may be read at once.
    #[inline]
    pub(crate) fn charge(&mut self, now_ns: u64) -> Option<u64> {
        if self.interval_ns == 0 {
            return None;
        }
        self.tat_ns = self.tat_ns.max(now_ns) + u64::from(self.interval_ns);
        let limit_ns = u64::from(self.limit_us) * 1_000;
        let ahead = self.tat_ns - now_ns;
        (ahead >= limit_ns).then(|| self.tat_ns - limit_ns + u64::from(self.interval_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames read back to back at `now`, until the budget asks for a pause.
    fn burst_at(budget: &mut ReadBudget, now: u64) -> (u32, u64) {
        let mut n = 0;
        loop {
            n += 1;
            if let Some(resume) = budget.charge(now) {
                return (n, resume);
            }
        }
    }

    #[test]
    fn unlimited_never_pauses() {
        let mut budget = ReadBudget::new(0, 0);
        assert!((0..100_000).all(|i| budget.charge(i).is_none()));
    }

    #[test]
    fn a_burst_then_the_rate() {
        // 1,000 frames/s (1 ms each), bursts of 10.
        let mut budget = ReadBudget::new(1_000, 10);
        let start = 5_000_000_000;
        let (n, resume) = burst_at(&mut budget, start);
        assert_eq!(
            n, 10,
            "the burst is read at once; the 10th frame asks for a pause"
        );
        assert_eq!(
            resume,
            start + 1_000_000,
            "the next frame is due 1 ms later"
        );
        // Read exactly when allowed, one frame per pause: the rate holds.
        let (n, resume2) = burst_at(&mut budget, resume);
        assert_eq!((n, resume2), (1, resume + 1_000_000));
        // After a second of silence the whole burst is back, and no more than that.
        let (n, _) = burst_at(&mut budget, resume2 + 1_000_000_000);
        assert_eq!(n, 10);
    }

    #[test]
    fn a_sender_at_the_rate_never_waits() {
        // 10,000 frames/s: one every 100 µs.
        let mut budget = ReadBudget::new(10_000, 1);
        // Burst 1: every frame uses the whole budget, and reading resumes exactly when the
        // next one is due, so a sender at the rate is never held back.
        for i in 0..10_000u64 {
            let now = 1_000_000 + i * 100_000;
            assert_eq!(budget.charge(now), Some(now + 100_000));
        }
        let mut budget = ReadBudget::new(10_000, 2);
        assert!((0..10_000u64).all(|i| budget.charge(1_000_000 + i * 100_000).is_none()));
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let mut budget = ReadBudget::new(u32::MAX, u32::MAX);
        assert_eq!(budget.interval_ns, 1, "the fastest rate still limits");
        budget.charge(u64::MAX / 2);
        let mut budget = ReadBudget::new(1, u32::MAX);
        assert!(budget.charge(1).is_none());
    }
}
