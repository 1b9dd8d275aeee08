//! Time, through a trait so tests can skew it (docs/architecture.md §7.1: only monotonic durations are compared).

use std::time::{Duration, Instant};

/// A monotonic clock.
pub trait Clock: Send + Sync + 'static {
    /// Now, for measuring a lease this node holds: must never lag real time (it ends leases).
    fn now(&self) -> Instant;

    /// Now, for a wait the leader must not cut short (takeover after a silent node's lease):
    /// may lag real time, never run ahead. Comparable only with other `waiting_now` readings.
    fn waiting_now(&self) -> Instant {
        self.now()
    }
}

/// The system's clock for leases: `CLOCK_BOOTTIME`, as an [`Instant`].
///
/// Not `Instant::now()` (`CLOCK_MONOTONIC`): that clock stops while the machine or VM is
/// suspended, so a node resumed after a suspend longer than its lease would still believe its
/// lease valid while the leader, whose clock ran, has given its shards to another node.
/// `CLOCK_BOOTTIME` counts the suspended time too (docs/architecture.md §13). The value is
/// mapped onto `Instant` (the first reading's `Instant` plus the boot time elapsed since), so
/// it compares with every other lease instant; after a suspend it runs ahead of
/// `Instant::now()` by the time suspended, which only makes leases end sooner.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// `CLOCK_MONOTONIC`: it stops in a suspend, so a leader resumed from one waits longer.
    fn waiting_now(&self) -> Instant {
        Instant::now()
    }

    fn now(&self) -> Instant {
        static BASE: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
        let (at, boot) = *BASE.get_or_init(|| (Instant::now(), boottime_ns()));
        at + Duration::from_nanos(boottime_ns().saturating_sub(boot))
    }
}

/// Nanoseconds on `CLOCK_BOOTTIME` (monotonic, and counting time suspended).
#[cfg(target_os = "linux")]
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_BOOTTIME exists on Linux since 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed: {}", std::io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Elsewhere `Instant` (which may stop in a suspend: leases are safe across suspends on Linux only).
#[cfg(not(target_os = "linux"))]
fn boottime_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_is_boottime_and_keeps_pace_with_instant() {
        let (c, i0) = (SystemClock, Instant::now());
        let (b0, t0) = (boottime_ns(), c.now());
        std::thread::sleep(Duration::from_millis(20));
        let (b1, t1) = (boottime_ns(), c.now());
        let i1 = Instant::now();
        let lease = t1.duration_since(t0).as_nanos() as i128;
        assert!((lease - (b1 - b0) as i128).abs() < 2_000_000, "follows CLOCK_BOOTTIME");
        // No suspend happens during a test: the two clocks agree to a millisecond or two.
        assert!((lease - i1.duration_since(i0).as_nanos() as i128).abs() < 2_000_000);
    }
}
