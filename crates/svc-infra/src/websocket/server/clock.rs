//! The shared clock: every timestamp of the server side (last frame seen, ping sent,
//! latency) counts from one process-wide instant, kept in atomics, so no connection needs
//! a timer or an `Instant` of its own.

use std::time::Instant;

/// The instant all millisecond timestamps count from.
pub(crate) fn clock_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since [`clock_origin`] (at least 1, so 0 can mean "never").
pub(crate) fn now_ms() -> u64 {
    clock_origin().elapsed().as_millis() as u64 + 1
}

/// Microseconds since [`clock_origin`] (at least 1).
pub(crate) fn now_us() -> u64 {
    clock_origin().elapsed().as_micros() as u64 + 1
}
