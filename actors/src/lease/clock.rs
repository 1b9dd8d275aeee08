//! Time, through a trait so tests can skew it (docs/architecture.md §7.1: only monotonic durations are compared).

use std::time::{Duration, Instant};

/// A monotonic clock.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock running `rate` times as fast as the system's (for tests of drift).
#[derive(Clone, Copy, Debug)]
pub struct SkewedClock {
    base: Instant,
    rate: f64,
}

impl SkewedClock {
    /// A clock that agrees with the system's now and then runs at `rate` (1.0 = no skew).
    pub fn new(rate: f64) -> SkewedClock {
        SkewedClock { base: Instant::now(), rate }
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        let real = self.base.elapsed().as_secs_f64() * self.rate;
        self.base + Duration::from_secs_f64(real.max(0.0))
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process (and network namespace) on a
/// machine, so ownership journals of several nodes can be merged exactly.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
