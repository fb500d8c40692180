//! Time as the gateway sees it: real time, or simulated time running `speed` times faster.

use protocol::TimestampMs;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A clock that maps real elapsed time onto simulated time: `now = origin_sim_ms + speed × elapsed`.
/// With `speed = 1` and the origin at the current wall-clock time it is the real clock.
///
/// The simulator, the gateway (reading timestamps) and the demo's exchange share one `SimClock` value so
/// that they agree on what time it is.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    pub origin_real: Instant,
    pub origin_sim_ms: i64,
    pub speed: f64,
}

/// Wall-clock time in unix milliseconds.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

impl SimClock {
    /// The real clock.
    pub fn real() -> Self {
        Self::starting_at(wall_clock_ms(), 1.0)
    }
    /// A clock that reads `origin_sim_ms` now and advances `speed` simulated ms per real ms.
    /// A non-finite or non-positive speed is treated as 1.
    pub fn starting_at(origin_sim_ms: i64, speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 { speed } else { 1.0 };
        Self { origin_real: Instant::now(), origin_sim_ms, speed }
    }
    /// A clock starting at the current wall-clock time, running `speed` times faster.
    pub fn sped_up(speed: f64) -> Self {
        Self::starting_at(wall_clock_ms(), speed)
    }
    /// Simulated unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        let elapsed_ms = self.origin_real.elapsed().as_secs_f64() * 1000.0;
        self.origin_sim_ms.saturating_add((elapsed_ms * self.speed) as i64)
    }
    pub fn now(&self) -> TimestampMs {
        TimestampMs(self.now_ms())
    }
    /// Real milliseconds that pass while `sim_ms` simulated milliseconds pass.
    pub fn real_ms_for(&self, sim_ms: i64) -> u64 {
        (sim_ms.max(0) as f64 / self.speed).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sped_up_clock_maps_real_time_onto_simulated_time() {
        let clock = SimClock::starting_at(1_000, 60.0);
        assert!(clock.now_ms() >= 1_000);
        assert_eq!(clock.real_ms_for(60_000), 1_000);
        assert_eq!(SimClock::starting_at(0, -3.0).speed, 1.0);
    }
}
