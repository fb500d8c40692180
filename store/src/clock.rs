//! Where every component gets the time from. Gate closure, book opening, the timestamp window and
//! slot closing all read an injectable [`Clock`], so tests and the demo can run faster than real time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// A source of wall-clock time in unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that starts at `origin_ms` and runs `speed` times faster than real time, for demos.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    origin_ms: i64,
    speed: u32,
    started: Instant,
}

impl ScaledClock {
    /// `speed` is clamped to at least 1 (real time).
    pub fn new(origin_ms: i64, speed: u32) -> Self {
        Self { origin_ms, speed: speed.max(1), started: Instant::now() }
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> i64 {
        let elapsed_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.origin_ms.saturating_add(elapsed_ms.saturating_mul(i64::from(self.speed)))
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self { now_ms: AtomicI64::new(now_ms) }
    }
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_starts_at_its_origin_and_never_runs_backwards() {
        let clock = ScaledClock::new(1_000, 60);
        let first = clock.now_ms();
        assert!(first >= 1_000);
        assert!(clock.now_ms() >= first);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        clock.advance(10);
        assert_eq!(clock.now_ms(), 15);
        clock.set(3);
        assert_eq!(clock.now_ms(), 3);
    }
}
