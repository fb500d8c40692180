//! When a polled reading is published: the gateway's cadence, chosen for the market, not the meter.
//!
//! The gateway polls the device every `interval_ms` (counters and plausibility are checked at every
//! poll), but signs, spools and publishes a reading only
//!
//! - at the **first accepted poll** after it starts;
//! - **every `publish_interval_ms`**: the first accepted poll at or after each *interval mark*
//!   `k × publish_interval_ms + interval_offset_ms` (clock time); the offset is derived from the device id,
//!   spread evenly over the interval, so that many homes do not publish in the same second;
//! - **right after every slot boundary**: the first accepted poll at or after each *boundary mark*
//!   `k × slot_len_ms + boundary_offset_ms`; this offset, also derived from the device id, is below
//!   `boundary_spread_ms` (10 s by default), so a zone's boundary readings arrive spread over a few
//!   seconds instead of all at once, and each lands within `boundary_spread_ms` plus one poll of the
//!   boundary. Settlement interpolates a boundary's counters between the readings on each side of it
//!   when they are at most `reading_gap_ms_max` (15 min) apart and arrive within the grace period
//!   (5 min), so a reading seconds after the boundary is far inside both.
//!
//! A publish interval not longer than the poll period (in clock time) publishes every poll.
//! A poll that is rejected by the counter rules publishes nothing; the next accepted one is published
//! in its place. Readings between publishes are simply not sent: the counters are cumulative, so no
//! energy is lost, only the live view's resolution. What is published goes through the spool exactly
//! as before (kept until the exchange answers it).
//!
//! Times are the gateway clock's (`SimClock`), so a sped-up demo publishes per simulated interval.

use protocol::DeviceId;

/// Default publish interval: 30 s. At the default slot length that is 31 readings per home and slot
/// (30 interval publishes and the boundary one) instead of 900 at one a second.
pub const PUBLISH_INTERVAL_MS_DEFAULT: u64 = 30_000;
/// Shortest publish interval accepted (the shortest poll period): at or below the poll period every
/// poll is published, which is the right cadence for tests and a handful of homes.
/// Equal to `config::POLL_INTERVAL_MIN_MS` (checked by a test there).
pub const PUBLISH_INTERVAL_MS_MIN: u64 = 100;
/// Longest publish interval accepted: 5 minutes, the settlement grace period; a live view (and the
/// exchange's plausibility window between two readings) older than that is of little use.
pub const PUBLISH_INTERVAL_MS_MAX: u64 = 300_000;
/// Default spread of the boundary readings: a device publishes its boundary reading at the first poll
/// at least `boundary_offset_ms` (below this) after the boundary. 10 s spreads 100 000 homes' boundary
/// readings to 10 000/s, about what one 2-core node stores in the flood benchmark (exchange/BENCHMARKS.md,
/// which also has the paced measurements).
pub const BOUNDARY_SPREAD_MS_DEFAULT: u64 = 10_000;
/// Largest boundary spread accepted: 60 s keeps the boundary reading far within settlement's grace
/// period (5 min) and its interpolation gap (15 min), and close enough to the boundary to split the
/// energy around it precisely.
pub const BOUNDARY_SPREAD_MS_MAX: u64 = 60_000;

/// Why a poll is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The first accepted poll since the gateway started.
    First,
    /// The publish interval is not longer than the poll period.
    EveryPoll,
    /// The first poll at or after a slot boundary (plus the device's boundary offset).
    Boundary,
    /// The first poll at or after an interval mark.
    Interval,
}

/// The publishing schedule of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cadence {
    publish_interval_ms: i64,
    slot_len_ms: i64,
    interval_offset_ms: i64,
    boundary_offset_ms: i64,
    every_poll: bool,
    last_published_ms: Option<i64>,
}

/// A number in `0..modulus` taken from eight bytes of the device id (a public key: uniformly spread).
fn offset(device: &DeviceId, bytes: std::ops::Range<usize>, modulus: u64) -> i64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&device.as_bytes()[bytes]);
    let value = u64::from_le_bytes(word) % modulus.max(1);
    // value < modulus <= u64 of a validated setting (at most minutes), so it fits i64.
    i64::try_from(value).unwrap_or(0)
}

/// The smallest mark `k × period + offset` strictly after `after_ms`.
fn next_mark(after_ms: i64, period_ms: i64, offset_ms: i64) -> i64 {
    let k = (after_ms - offset_ms).div_euclid(period_ms) + 1;
    k * period_ms + offset_ms
}

impl Cadence {
    /// The schedule of `device`. `poll_period_ms` is the poll interval in clock time (real interval ×
    /// clock speed). Periods must be positive (the settings are validated before).
    pub fn new(
        device: &DeviceId,
        publish_interval_ms: u64,
        slot_len_ms: i64,
        boundary_spread_ms: u64,
        poll_period_ms: f64,
    ) -> Self {
        assert!(publish_interval_ms > 0);
        assert!(slot_len_ms > 0);
        let publish_interval = i64::try_from(publish_interval_ms).unwrap_or(i64::MAX);
        let interval_offset_ms = offset(device, 0..8, publish_interval_ms);
        let boundary_offset_ms = offset(device, 8..16, boundary_spread_ms).min(slot_len_ms - 1);
        Self {
            publish_interval_ms: publish_interval,
            slot_len_ms,
            interval_offset_ms,
            boundary_offset_ms,
            every_poll: publish_interval_ms as f64 <= poll_period_ms,
            last_published_ms: None,
        }
    }

    /// This device's offset of its interval publishes from the interval grid, in `0..publish_interval_ms`.
    pub fn interval_offset_ms(&self) -> i64 {
        self.interval_offset_ms
    }

    /// This device's delay of its boundary reading after a slot boundary, below `boundary_spread_ms`.
    pub fn boundary_offset_ms(&self) -> i64 {
        self.boundary_offset_ms
    }

    /// The first boundary mark (a slot boundary plus this device's offset) after `after_ms`.
    pub fn next_boundary_mark(&self, after_ms: i64) -> i64 {
        next_mark(after_ms, self.slot_len_ms, self.boundary_offset_ms)
    }

    /// The first interval mark after `after_ms`.
    pub fn next_interval_mark(&self, after_ms: i64) -> i64 {
        next_mark(after_ms, self.publish_interval_ms, self.interval_offset_ms)
    }

    /// Whether an accepted poll at `ts_ms` is to be published, and why.
    pub fn due(&self, ts_ms: i64) -> Option<Publish> {
        let Some(last_ms) = self.last_published_ms else { return Some(Publish::First) };
        if self.every_poll {
            Some(Publish::EveryPoll)
        } else if self.next_boundary_mark(last_ms) <= ts_ms {
            Some(Publish::Boundary)
        } else if self.next_interval_mark(last_ms) <= ts_ms {
            Some(Publish::Interval)
        } else {
            None
        }
    }

    /// Records that the reading taken at `ts_ms` was published.
    pub fn published(&mut self, ts_ms: i64) {
        self.last_published_ms = Some(ts_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT_MS: i64 = 900_000;
    const INTERVAL_MS: u64 = 30_000;
    const POLL_MS: i64 = 1_000;

    fn device(seed: u8) -> DeviceId {
        DeviceId::from_verifying_key(&protocol::testing::signing_key(seed).verifying_key())
    }

    fn cadence(seed: u8) -> Cadence {
        Cadence::new(&device(seed), INTERVAL_MS, SLOT_MS, BOUNDARY_SPREAD_MS_DEFAULT, POLL_MS as f64)
    }

    /// Polls every second from `from_ms` to `to_ms`; returns the published (time, why).
    fn run(cadence: &mut Cadence, from_ms: i64, to_ms: i64) -> Vec<(i64, Publish)> {
        let mut published = Vec::new();
        let mut ts = from_ms;
        while ts <= to_ms {
            if let Some(why) = cadence.due(ts) {
                cadence.published(ts);
                published.push((ts, why));
            }
            ts += POLL_MS;
        }
        published
    }

    #[test]
    fn a_device_publishes_once_per_interval_not_every_poll() {
        let mut cadence = cadence(1);
        let start = 10 * SLOT_MS + 1_234;
        // One hour of polls: 3 600 polls, 120 interval marks and 4 boundaries.
        let published = run(&mut cadence, start, start + 4 * SLOT_MS - 1);
        assert_eq!(published[0], (start, Publish::First));
        let intervals = published.iter().filter(|(_, why)| *why == Publish::Interval).count();
        let boundaries = published.iter().filter(|(_, why)| *why == Publish::Boundary).count();
        assert_eq!(boundaries, 4);
        // A boundary mark that falls on an interval mark's poll publishes once for both.
        assert!((116..=120).contains(&intervals), "{intervals} interval publishes");
        for (ts, why) in &published[1..] {
            if *why == Publish::Interval {
                assert_eq!((ts - cadence.interval_offset_ms()).rem_euclid(INTERVAL_MS as i64) / POLL_MS, 0);
            }
        }
    }

    #[test]
    fn the_first_poll_at_or_after_each_boundary_mark_is_published() {
        let mut cadence = cadence(2);
        let offset = cadence.boundary_offset_ms();
        assert!((0..BOUNDARY_SPREAD_MS_DEFAULT as i64).contains(&offset));
        let start = 20 * SLOT_MS - 5 * POLL_MS;
        let published = run(&mut cadence, start, start + 2 * SLOT_MS + 20_000);
        for boundary in [20 * SLOT_MS, 21 * SLOT_MS, 22 * SLOT_MS] {
            let (ts, _) = published.iter().find(|(ts, _)| *ts >= boundary).expect("a reading after the boundary");
            assert!(*ts >= boundary + offset, "not before the device's boundary mark");
            assert!(*ts < boundary + offset + POLL_MS, "the first poll at or after it");
        }
    }

    #[test]
    fn a_rejected_poll_at_the_boundary_leaves_the_publish_due_for_the_next_one() {
        let mut cadence = cadence(3);
        let mark = cadence.next_boundary_mark(5 * SLOT_MS);
        cadence.published(mark - 2 * POLL_MS);
        assert_eq!(cadence.due(mark - POLL_MS), None);
        assert_eq!(cadence.due(mark), Some(Publish::Boundary));
        // The poll at the mark was rejected by the counter rules: nothing was published, still due.
        assert_eq!(cadence.due(mark + POLL_MS), Some(Publish::Boundary));
        cadence.published(mark + POLL_MS);
        assert_eq!(cadence.due(mark + 2 * POLL_MS), None);
    }

    #[test]
    fn publishes_of_many_devices_are_spread_over_the_interval_and_the_boundary_spread() {
        let devices = 3_000usize;
        let mut per_second = vec![0usize; (INTERVAL_MS / 1_000) as usize];
        let mut boundary_per_second = vec![0usize; (BOUNDARY_SPREAD_MS_DEFAULT / 1_000) as usize];
        for index in 0..devices {
            // Distinct seeds; the public key is a hash of its seed, so the ids are spread.
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let cadence = Cadence::new(
                &DeviceId::from_verifying_key(&key.verifying_key()),
                INTERVAL_MS,
                SLOT_MS,
                BOUNDARY_SPREAD_MS_DEFAULT,
                POLL_MS as f64,
            );
            per_second[(cadence.interval_offset_ms() / 1_000) as usize] += 1;
            boundary_per_second[(cadence.boundary_offset_ms() / 1_000) as usize] += 1;
        }
        // Evenly spread: every second of the interval gets 100 on average; none more than twice that.
        let mean = devices / per_second.len();
        assert!(per_second.iter().all(|count| *count > mean / 2 && *count < 2 * mean), "{per_second:?}");
        let mean = devices / boundary_per_second.len();
        assert!(
            boundary_per_second.iter().all(|count| *count > mean / 2 && *count < 2 * mean),
            "{boundary_per_second:?}"
        );
    }

    #[test]
    fn an_interval_not_longer_than_the_poll_period_publishes_every_poll() {
        let mut cadence = Cadence::new(&device(4), 6_000, SLOT_MS, BOUNDARY_SPREAD_MS_DEFAULT, 6_000.0);
        cadence.published(0);
        assert_eq!(cadence.due(1), Some(Publish::EveryPoll));
        let mut slower = Cadence::new(&device(4), 6_001, SLOT_MS, BOUNDARY_SPREAD_MS_DEFAULT, 6_000.0);
        slower.published(0);
        assert_ne!(slower.due(1), Some(Publish::EveryPoll));
    }

    #[test]
    fn marks_are_strictly_after_the_given_time() {
        assert_eq!(next_mark(0, 10, 3), 3);
        assert_eq!(next_mark(3, 10, 3), 13);
        assert_eq!(next_mark(-8, 10, 3), -7);
        assert_eq!(next_mark(12, 10, 0), 20);
    }
}
