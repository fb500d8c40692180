//! The one sign convention, and the checks that keep published counters honest.
//!
//! **Sign convention.** `import_wh` (energy taken from the grid), `export_wh` (energy fed into the grid)
//! and `pv_wh` (PV production) are separate, non-negative, monotonic counters in Wh. `power_w` is the net
//! power at the grid connection point, positive when importing. No counter ever goes down on the wire.
//!
//! Raw device counters may go down for two reasons, handled here:
//! - **Wrap**: a 32-bit accumulator rolled over. When the value went down by almost the whole modulus
//!   and the wrapped difference is plausible, the modulus is added to an offset.
//! - **Reset/replacement**: the meter was reset or replaced. The first lower reading is held back; it
//!   is accepted only when the next reading confirms it (not below it and still below the old value).
//!   The published counter then continues from where it was: energy between the last good reading and
//!   the reset is lost rather than invented.
//!
//! A rise larger than the nameplate power allows over the elapsed time is rejected as implausible,
//! logged, and not published.

use serde::{Deserialize, Serialize};

/// Margin over nameplate power before a rise is implausible: inverters briefly exceed their rating by a
/// few percent; 10 % also covers clock jitter between polls.
pub const NAMEPLATE_MARGIN_PERCENT: i64 = 10;
/// Energy any reading may rise by regardless of elapsed time: the coarsest counter resolution we read
/// (1 kWh steps on meters with a kWh register and scale factor 3).
pub const JUMP_SLACK_WH: i64 = 1_000;
const MS_PER_HOUR: i64 = 3_600_000;

/// Which counter a check refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    Import,
    Export,
    Pv,
}

/// Why a reading was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "{kind:?} counter rose by {delta_wh} Wh in {elapsed_ms} ms, more than the nameplate allows ({allowed_wh} Wh)"
    )]
    Implausible { kind: CounterKind, delta_wh: i64, elapsed_ms: i64, allowed_wh: i64 },
    #[error(
        "{kind:?} counter went down from {previous_wh} to {raw_wh} Wh; waiting for a second reading to confirm a reset"
    )]
    ResetUnconfirmed { kind: CounterKind, previous_wh: i64, raw_wh: i64 },
    #[error("{kind:?} counter is missing from the device's answer")]
    Missing { kind: CounterKind },
    #[error("the reading's time {ts_ms} is not after the last accepted reading's {last_ts_ms}")]
    TimeWentBack { ts_ms: i64, last_ts_ms: i64 },
}

/// One counter's persisted state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    /// Last accepted raw value (Wh, as the device reports after scaling).
    pub raw_wh: i64,
    /// Added to the raw value to get the published value (wraps and confirmed resets).
    pub offset_wh: i64,
    /// A lower raw value seen once, waiting for confirmation.
    #[serde(default)]
    pub pending_reset_wh: Option<i64>,
}

impl CounterState {
    pub fn published_wh(&self) -> i64 {
        self.raw_wh + self.offset_wh
    }
}

/// State of all counters of one device, persisted next to the spool so a restart continues the same
/// published series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersState {
    pub last_ts_ms: Option<i64>,
    pub import: Option<CounterState>,
    pub export: Option<CounterState>,
    pub pv: Option<CounterState>,
}

/// Raw values from one poll, in Wh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawCounters {
    pub ts_ms: i64,
    pub import_wh: Option<i64>,
    pub export_wh: Option<i64>,
    pub pv_wh: Option<i64>,
    /// Modulus of the meter's counters when they are 32-bit accumulators.
    pub meter_modulus_wh: Option<i64>,
    pub pv_modulus_wh: Option<i64>,
}

/// Published values after the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub import_wh: i64,
    pub export_wh: i64,
    pub pv_wh: Option<i64>,
}

/// Applies wrap, reset and plausibility rules to successive polls.
#[derive(Debug, Clone)]
pub struct CounterTracker {
    nameplate_w: i64,
    state: CountersState,
}

enum Step {
    Accept(CounterState),
    HoldReset(CounterState),
}

impl CounterTracker {
    /// `nameplate_w` is the largest power the site can import or export (or produce, for PV).
    pub fn new(nameplate_w: i64, state: CountersState) -> Self {
        assert!(nameplate_w > 0, "nameplate power must be positive");
        Self { nameplate_w, state }
    }

    pub fn state(&self) -> &CountersState {
        &self.state
    }

    /// Energy the nameplate allows over `elapsed_ms`, with margin and slack.
    pub fn allowed_wh(&self, elapsed_ms: i64) -> i64 {
        let wh =
            i128::from(self.nameplate_w) * i128::from(elapsed_ms.max(0)) * i128::from(100 + NAMEPLATE_MARGIN_PERCENT)
                / i128::from(MS_PER_HOUR * 100);
        i64::try_from(wh).unwrap_or(i64::MAX / 2) + JUMP_SLACK_WH
    }

    fn step(
        kind: CounterKind,
        previous: Option<CounterState>,
        raw_wh: i64,
        modulus_wh: Option<i64>,
        allowed_wh: i64,
    ) -> Result<Step, Rejection> {
        let Some(previous) = previous else {
            return Ok(Step::Accept(CounterState { raw_wh, offset_wh: 0, pending_reset_wh: None }));
        };
        let p = previous.raw_wh;
        if raw_wh >= p {
            let delta_wh = raw_wh - p;
            if delta_wh > allowed_wh {
                return Err(Rejection::Implausible { kind, delta_wh, elapsed_ms: 0, allowed_wh });
            }
            return Ok(Step::Accept(CounterState { raw_wh, offset_wh: previous.offset_wh, pending_reset_wh: None }));
        }
        if let Some(modulus) = modulus_wh.filter(|m| *m > 0) {
            let wrapped_delta = raw_wh + modulus - p;
            if p > modulus / 2 && (0..=allowed_wh).contains(&wrapped_delta) {
                return Ok(Step::Accept(CounterState {
                    raw_wh,
                    offset_wh: previous.offset_wh + modulus,
                    pending_reset_wh: None,
                }));
            }
        }
        match previous.pending_reset_wh {
            Some(pending) if raw_wh >= pending && raw_wh - pending <= allowed_wh => {
                // Confirmed: continue the published series from the last accepted value.
                Ok(Step::Accept(CounterState {
                    raw_wh,
                    offset_wh: previous.offset_wh + p - pending,
                    pending_reset_wh: None,
                }))
            }
            _ => Ok(Step::HoldReset(CounterState { pending_reset_wh: Some(raw_wh), ..previous })),
        }
    }

    /// Checks one poll. On success the state advances; on rejection only a pending reset is remembered.
    pub fn observe(&mut self, raw: RawCounters) -> Result<Accepted, Rejection> {
        let import_wh = raw.import_wh.ok_or(Rejection::Missing { kind: CounterKind::Import })?;
        let export_wh = raw.export_wh.ok_or(Rejection::Missing { kind: CounterKind::Export })?;
        if let Some(last_ts_ms) = self.state.last_ts_ms {
            if raw.ts_ms <= last_ts_ms {
                return Err(Rejection::TimeWentBack { ts_ms: raw.ts_ms, last_ts_ms });
            }
        }
        let elapsed_ms = self.state.last_ts_ms.map_or(0, |last| raw.ts_ms - last);
        let allowed_wh = self.allowed_wh(elapsed_ms);
        let with_elapsed = |error: Rejection| match error {
            Rejection::Implausible { kind, delta_wh, allowed_wh, .. } => {
                Rejection::Implausible { kind, delta_wh, elapsed_ms, allowed_wh }
            }
            other => other,
        };
        let steps = [
            (CounterKind::Import, self.state.import, Some(import_wh), raw.meter_modulus_wh),
            (CounterKind::Export, self.state.export, Some(export_wh), raw.meter_modulus_wh),
            (CounterKind::Pv, self.state.pv, raw.pv_wh, raw.pv_modulus_wh),
        ];
        let mut next = [self.state.import, self.state.export, self.state.pv];
        let mut held = None;
        for (index, (kind, previous, value, modulus)) in steps.into_iter().enumerate() {
            let Some(value) = value else { continue };
            match Self::step(kind, previous, value, modulus, allowed_wh).map_err(with_elapsed)? {
                Step::Accept(state) => next[index] = Some(state),
                Step::HoldReset(state) => {
                    next[index] = Some(state);
                    held.get_or_insert(Rejection::ResetUnconfirmed {
                        kind,
                        previous_wh: previous.map_or(0, |p| p.raw_wh),
                        raw_wh: value,
                    });
                }
            }
        }
        if let Some(rejection) = held {
            // Remember only the pending resets; accepted values of other counters wait for this reading.
            for (slot, candidate) in
                [&mut self.state.import, &mut self.state.export, &mut self.state.pv].into_iter().zip(next)
            {
                if let (Some(current), Some(candidate)) = (slot.as_mut(), candidate) {
                    if candidate.pending_reset_wh.is_some() && candidate.raw_wh == current.raw_wh {
                        current.pending_reset_wh = candidate.pending_reset_wh;
                    }
                }
            }
            return Err(rejection);
        }
        [self.state.import, self.state.export, self.state.pv] = next;
        self.state.last_ts_ms = Some(raw.ts_ms);
        let published = |state: Option<CounterState>| state.map(|s| s.published_wh());
        let accepted = Accepted {
            import_wh: published(self.state.import).unwrap_or(0),
            export_wh: published(self.state.export).unwrap_or(0),
            pv_wh: raw.pv_wh.and(published(self.state.pv)),
        };
        assert!(accepted.import_wh >= 0 || import_wh < 0, "published import follows the device");
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = 60_000;

    fn raw(minute: i64, import_wh: i64, export_wh: i64) -> RawCounters {
        RawCounters {
            ts_ms: minute * MINUTE_MS,
            import_wh: Some(import_wh),
            export_wh: Some(export_wh),
            ..Default::default()
        }
    }

    fn tracker() -> CounterTracker {
        // 12 kW over one minute allows 220 Wh plus slack.
        CounterTracker::new(12_000, CountersState::default())
    }

    #[test]
    fn steady_counters_are_published_unchanged() {
        let mut counters = tracker();
        assert_eq!(
            counters.observe(raw(0, 100, 50)).expect("first"),
            Accepted { import_wh: 100, export_wh: 50, pv_wh: None }
        );
        assert_eq!(counters.observe(raw(1, 300, 60)).expect("second").import_wh, 300);
    }

    #[test]
    fn a_32_bit_counter_that_wraps_keeps_counting_up() {
        let modulus = 1i64 << 32;
        let mut counters = tracker();
        let mut near_top = raw(0, modulus - 100, 0);
        near_top.meter_modulus_wh = Some(modulus);
        counters.observe(near_top).expect("near the top");
        let mut wrapped = raw(1, 50, 0);
        wrapped.meter_modulus_wh = Some(modulus);
        assert_eq!(counters.observe(wrapped).expect("wrapped").import_wh, modulus + 50);
    }

    #[test]
    fn a_reset_is_accepted_only_after_a_second_reading_confirms_it() {
        let mut counters = tracker();
        counters.observe(raw(0, 50_000, 10_000)).expect("before");
        let first_low = counters.observe(raw(1, 20, 10_010));
        assert!(matches!(first_low, Err(Rejection::ResetUnconfirmed { kind: CounterKind::Import, .. })));
        let confirmed = counters.observe(raw(2, 120, 10_020)).expect("confirmed");
        // Continues from 50 000 plus what the new meter counted since the first low reading.
        assert_eq!(confirmed.import_wh, 50_100);
        assert_eq!(confirmed.export_wh, 10_020);
        assert_eq!(counters.observe(raw(3, 200, 10_030)).expect("after").import_wh, 50_180);
    }

    #[test]
    fn a_single_glitch_low_reading_is_not_taken_for_a_reset() {
        let mut counters = tracker();
        counters.observe(raw(0, 50_000, 0)).expect("before");
        assert!(counters.observe(raw(1, 3, 0)).is_err());
        // Back to normal: the glitch is forgotten and nothing jumps.
        assert_eq!(counters.observe(raw(2, 50_100, 0)).expect("normal").import_wh, 50_100);
    }

    #[test]
    fn a_jump_beyond_nameplate_power_is_rejected_and_the_series_continues() {
        let mut counters = tracker();
        counters.observe(raw(0, 1_000, 0)).expect("first");
        let jump = counters.observe(raw(1, 1_000_000, 0));
        assert!(matches!(jump, Err(Rejection::Implausible { kind: CounterKind::Import, elapsed_ms: MINUTE_MS, .. })));
        assert_eq!(counters.observe(raw(2, 1_150, 0)).expect("plausible").import_wh, 1_150);
    }

    #[test]
    fn a_missing_counter_is_not_published_as_zero() {
        let mut counters = tracker();
        let mut missing = raw(0, 1, 1);
        missing.export_wh = None;
        assert_eq!(counters.observe(missing), Err(Rejection::Missing { kind: CounterKind::Export }));
    }

    #[test]
    fn state_round_trips_so_a_restart_continues_the_series() {
        let mut counters = tracker();
        counters.observe(raw(0, 50_000, 0)).expect("before");
        let _ = counters.observe(raw(1, 10, 0));
        counters.observe(raw(2, 20, 0)).expect("confirmed");
        let saved = serde_json::to_string(counters.state()).expect("serializes");
        let mut restarted = CounterTracker::new(12_000, serde_json::from_str(&saved).expect("parses"));
        assert_eq!(restarted.observe(raw(3, 30, 0)).expect("after restart").import_wh, 50_020);
    }

    proptest::proptest! {
        /// Whatever the device reports (glitches, wraps, resets, jumps), published counters never go
        /// down, never go negative, and never rise by more than the nameplate allows since the last
        /// published reading.
        #[test]
        fn published_counters_are_monotonic_and_plausible_for_any_device_behaviour(
            steps in proptest::collection::vec((1i64..600_000, 0i64..5_000_000, 0i64..5_000_000), 1..60)
        ) {
            let mut counters = CounterTracker::new(12_000, CountersState::default());
            let mut ts_ms = 0;
            let mut last: Option<(i64, Accepted)> = None;
            for (dt_ms, import_wh, export_wh) in steps {
                ts_ms += dt_ms;
                let raw = RawCounters {
                    ts_ms,
                    import_wh: Some(import_wh),
                    export_wh: Some(export_wh),
                    meter_modulus_wh: Some(5_000_000),
                    ..Default::default()
                };
                if let Ok(accepted) = counters.observe(raw) {
                    proptest::prop_assert!(accepted.import_wh >= 0 && accepted.export_wh >= 0);
                    if let Some((last_ts, previous)) = last {
                        let allowed = counters.allowed_wh(ts_ms - last_ts);
                        proptest::prop_assert!(accepted.import_wh >= previous.import_wh);
                        proptest::prop_assert!(accepted.export_wh >= previous.export_wh);
                        proptest::prop_assert!(accepted.import_wh - previous.import_wh <= allowed);
                        proptest::prop_assert!(accepted.export_wh - previous.export_wh <= allowed);
                    }
                    last = Some((ts_ms, accepted));
                }
            }
        }
    }
}
