//! The agent's forecast of PV production and household load per delivery slot, learned from its own
//! readings by time of day: a clear-sky envelope of PV per slot of the day (the highest production
//! seen there, slowly forgotten so the seasons move it) scaled by the recent clearness (persistence of
//! the weather), and a load profile per slot of the day blended with the recent load. Integers only:
//! Wh per slot and per-mille weights.
//!
//! Without PV counters (`pv_wh` absent) production reads as zero and the "load" profile learns the net
//! consumption by time of day, which carries the solar shape too.

use protocol::{Reading, SlotId, TimestampMs};
use std::collections::VecDeque;

const MS_PER_DAY: i64 = 24 * 60 * 60 * 1000;
/// Slots of history the persistence terms look at: an hour of 15-minute slots follows passing weather
/// without chasing a single cloud.
pub const RECENT_SLOTS: usize = 4;
/// Each day the envelope keeps this share (per mille) of its old value before a new maximum: a clear
/// day's shape lasts weeks, yet it follows the season.
pub const ENVELOPE_KEEP_PER_MILLE: i64 = 995;
/// Weight (per mille) of a new day's load in a slot of the day's profile: about a week of memory.
pub const LOAD_LEARN_PER_MILLE: i64 = 150;
/// Weight (per mille) of the time-of-day profile against the recent load in a load forecast.
pub const LOAD_PROFILE_PER_MILLE: i64 = 700;
/// Weight (per mille) of a new daytime slot's clearness in the long-run clearness used at sunrise.
pub const CLEARNESS_LEARN_PER_MILLE: i64 = 50;
/// Below this envelope (Wh per slot) a slot is night: its clearness says nothing about the weather.
pub const DAYLIGHT_WH_MIN: i64 = 20;
/// Weight (per mille) of a new slot's forecast error in the running error: about a day of slots.
pub const ERROR_LEARN_PER_MILLE: i64 = 20;
/// Forecasts remembered for scoring once their slot is metered: a day of 15-minute slots ahead.
pub const FORECASTS_KEPT_MAX: usize = 96;
/// A slot with readings over less than this share (per mille) of it is not learned from.
pub const COVERAGE_PER_MILLE_MIN: i64 = 500;

/// One completed slot's energy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotEnergy {
    slot: SlotId,
    pv_wh: i64,
    load_wh: i64,
}

/// What the readings of the slot in progress add up to so far.
#[derive(Debug, Clone, Copy)]
struct Accumulating {
    slot: SlotId,
    pv_wh: i64,
    load_wh: i64,
    covered_ms: i64,
}

/// A reading's counters, kept to take the next reading's differences.
#[derive(Debug, Clone, Copy)]
struct Counters {
    ts_ms: i64,
    import_wh: i64,
    export_wh: i64,
    pv_wh: i64,
}

/// The learned forecast of one home. Owns its profiles (one entry per slot of the day) and the last
/// few completed slots.
#[derive(Debug, Clone)]
pub struct Forecaster {
    slot_len_ms: i64,
    pv_envelope_wh: Vec<Option<i64>>,
    load_profile_wh: Vec<Option<i64>>,
    /// Long-run clearness (per mille of the envelope) of daytime slots.
    clearness_per_mille: i64,
    recent: VecDeque<SlotEnergy>,
    current: Option<Accumulating>,
    last: Option<Counters>,
    /// Net export forecasts made for slots not yet metered, to score them when they are.
    pending: std::collections::BTreeMap<SlotId, i64>,
    /// Running mean absolute error of the net export forecast, in Wh per slot.
    error_wh: Option<i64>,
}

impl Forecaster {
    /// A forecaster for slots of `slot_len_ms` (which must divide a day; other lengths are rounded to
    /// the nearest slot count per day).
    pub fn new(slot_len_ms: i64) -> Self {
        let slot_len_ms = slot_len_ms.max(1);
        let slots_per_day = usize::try_from((MS_PER_DAY / slot_len_ms).max(1)).unwrap_or(1);
        Self {
            slot_len_ms,
            pv_envelope_wh: vec![None; slots_per_day],
            load_profile_wh: vec![None; slots_per_day],
            clearness_per_mille: 800,
            recent: VecDeque::new(),
            current: None,
            last: None,
            pending: std::collections::BTreeMap::new(),
            error_wh: None,
        }
    }

    fn bucket(&self, slot: SlotId) -> usize {
        let slots = self.pv_envelope_wh.len() as i64;
        usize::try_from((slot.start_ms().rem_euclid(MS_PER_DAY) / self.slot_len_ms).rem_euclid(slots)).unwrap_or(0)
    }

    /// Takes a reading: the energy since the previous one counts towards the slot it ends in. Readings
    /// out of order, or with counters that went backwards (a meter swap), only restart the differences.
    pub fn observe(&mut self, reading: &Reading) {
        let now = Counters {
            ts_ms: reading.ts_ms.0,
            import_wh: reading.import_wh.0,
            export_wh: reading.export_wh.0,
            pv_wh: reading.pv_wh.map_or(0, |pv| pv.0),
        };
        let Some(before) = self.last.replace(now) else { return };
        let elapsed_ms = now.ts_ms - before.ts_ms;
        let (import, export, pv) =
            (now.import_wh - before.import_wh, now.export_wh - before.export_wh, now.pv_wh - before.pv_wh);
        if elapsed_ms <= 0 || import < 0 || export < 0 || pv < 0 {
            return;
        }
        let slot = SlotId::containing(TimestampMs(now.ts_ms), self.slot_len_ms);
        if self.current.is_some_and(|current| current.slot != slot) {
            self.complete();
        }
        let current = self.current.get_or_insert(Accumulating { slot, pv_wh: 0, load_wh: 0, covered_ms: 0 });
        current.pv_wh += pv;
        current.load_wh += pv + import - export;
        current.covered_ms += elapsed_ms.min(self.slot_len_ms);
    }

    /// Learns from the slot in progress once the readings moved past it.
    fn complete(&mut self) {
        let Some(done) = self.current.take() else { return };
        if done.covered_ms * 1000 < self.slot_len_ms * COVERAGE_PER_MILLE_MIN {
            return;
        }
        // Scale a slot with gaps up to a whole slot.
        let scale = |wh: i64| {
            i64::try_from(i128::from(wh) * i128::from(self.slot_len_ms) / i128::from(done.covered_ms.max(1)))
                .unwrap_or(wh)
        };
        let energy = SlotEnergy { slot: done.slot, pv_wh: scale(done.pv_wh), load_wh: scale(done.load_wh) };
        if let Some(forecast) = self.pending.remove(&energy.slot) {
            let error = (forecast - (energy.pv_wh - energy.load_wh)).abs();
            self.error_wh = Some(self.error_wh.map_or(error, |old| blend(old, error, ERROR_LEARN_PER_MILLE)));
        }
        self.pending.retain(|slot, _| *slot > energy.slot);
        let bucket = self.bucket(energy.slot);
        if let Some(envelope) = self.pv_envelope_wh[bucket] {
            if envelope >= DAYLIGHT_WH_MIN {
                let clearness = (energy.pv_wh * 1000 / envelope).clamp(0, 1000);
                self.clearness_per_mille = blend(self.clearness_per_mille, clearness, CLEARNESS_LEARN_PER_MILLE);
            }
        }
        let kept = self.pv_envelope_wh[bucket].map_or(0, |old| old * ENVELOPE_KEEP_PER_MILLE / 1000);
        self.pv_envelope_wh[bucket] = Some(kept.max(energy.pv_wh));
        self.load_profile_wh[bucket] = Some(
            self.load_profile_wh[bucket].map_or(energy.load_wh, |old| blend(old, energy.load_wh, LOAD_LEARN_PER_MILLE)),
        );
        self.recent.push_back(energy);
        while self.recent.len() > RECENT_SLOTS {
            self.recent.pop_front();
        }
    }

    /// The clearness of the recent slots against their envelope, or the long-run clearness when they
    /// were dark (night, or before the envelope is known).
    fn recent_clearness_per_mille(&self) -> i64 {
        let (mut pv_wh, mut envelope_wh) = (0, 0);
        for energy in &self.recent {
            if let Some(envelope) = self.pv_envelope_wh[self.bucket(energy.slot)] {
                pv_wh += energy.pv_wh;
                envelope_wh += envelope;
            }
        }
        if envelope_wh < DAYLIGHT_WH_MIN * self.recent.len().max(1) as i64 {
            return self.clearness_per_mille;
        }
        (pv_wh * 1000 / envelope_wh).clamp(0, 1000)
    }

    /// Forecast PV production of `slot` in Wh; `None` before anything was learned.
    pub fn pv_wh(&self, slot: SlotId) -> Option<i64> {
        match self.pv_envelope_wh[self.bucket(slot)] {
            Some(envelope) => Some(envelope * self.recent_clearness_per_mille() / 1000),
            None => self.recent.back().map(|energy| energy.pv_wh),
        }
    }

    /// Forecast load of `slot` in Wh; `None` before anything was learned.
    pub fn load_wh(&self, slot: SlotId) -> Option<i64> {
        let recent = (!self.recent.is_empty())
            .then(|| self.recent.iter().map(|energy| energy.load_wh).sum::<i64>() / self.recent.len() as i64);
        match (self.load_profile_wh[self.bucket(slot)], recent) {
            (Some(profile), Some(recent)) => Some(blend(recent, profile, LOAD_PROFILE_PER_MILLE)),
            (profile, recent) => profile.or(recent),
        }
    }

    /// Forecast net export of `slot` in Wh (negative: a deficit).
    pub fn net_export_wh(&self, slot: SlotId) -> Option<i64> {
        Some(self.pv_wh(slot)? - self.load_wh(slot)?)
    }

    /// The forecast less its running error (towards zero): the part of the surplus or deficit the
    /// forecaster is confident of. Remembers the forecast to score it once `slot` is metered.
    pub fn confident_net_export_wh(&mut self, slot: SlotId) -> Option<i64> {
        let forecast = self.net_export_wh(slot)?;
        if self.pending.len() < FORECASTS_KEPT_MAX || self.pending.contains_key(&slot) {
            self.pending.insert(slot, forecast);
        }
        let margin = self.error_wh.unwrap_or(0);
        Some(forecast.signum() * (forecast.abs() - margin).max(0))
    }

    /// The running mean absolute error of the net export forecast (Wh per slot), once scored.
    pub fn error_wh(&self) -> Option<i64> {
        self.error_wh
    }
}

/// `old` moved towards `new` by `weight_per_mille`.
fn blend(old: i64, new: i64, weight_per_mille: i64) -> i64 {
    old + (new - old) * weight_per_mille / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{Home, HomeSpec};
    use protocol::{testing, MeterSerial, Wh};

    const SLOT_MS: i64 = 15 * 60 * 1000;
    const MINUTE_MS: i64 = 60_000;

    fn reading(home: &Home, with_pv: bool) -> Reading {
        let state = home.state();
        let (key, serial) = (testing::signing_key(9), MeterSerial::parse("SN").expect("valid"));
        Reading {
            pv_wh: with_pv.then_some(Wh(state.pv_wh())),
            ..testing::grid_reading(
                &key,
                testing::zone(),
                serial,
                1,
                state.sim_ms,
                state.import_wh(),
                state.export_wh(),
            )
        }
    }

    /// The agent's old forecast: the net export over the last hour, scaled to a slot.
    fn trailing_hour(history: &VecDeque<(i64, i64)>) -> Option<i64> {
        let (first, last) = (history.front()?, history.back()?);
        let span_ms = last.0 - first.0;
        (span_ms >= MINUTE_MS).then(|| (last.1 - first.1) * SLOT_MS / span_ms)
    }

    /// Absolute errors of the learned and the trailing-hour forecasts of the slot two ahead, over
    /// `days` days of a simulated home (the demo's PV and load shapes with its cloud noise), scored on
    /// the last day only; one reading a minute.
    fn errors(seed: u64, days: i64, with_pv: bool) -> (i64, i64, i64) {
        let start_ms = 1_790_000_000_000 - 1_790_000_000_000 % (24 * 3_600_000);
        let mut home = Home::new(HomeSpec::from_seed(seed), start_ms);
        let mut forecaster = Forecaster::new(SLOT_MS);
        let mut history: VecDeque<(i64, i64)> = VecDeque::new();
        let mut forecasts: Vec<(SlotId, i64, i64)> = Vec::new();
        let mut actual: std::collections::HashMap<SlotId, (i64, i64)> = Default::default();
        let end_ms = start_ms + days * 24 * 3_600_000;
        let mut now_ms = start_ms;
        while now_ms < end_ms {
            home.advance(now_ms);
            let reading = reading(&home, with_pv);
            let net = reading.export_wh.0 - reading.import_wh.0;
            let slot = SlotId::containing(reading.ts_ms, SLOT_MS);
            let entry = actual.entry(slot).or_insert((net, net));
            entry.1 = net;
            forecaster.observe(&reading);
            history.push_back((now_ms, net));
            while history.front().is_some_and(|(ts, _)| *ts < now_ms - 3_600_000) {
                history.pop_front();
            }
            if now_ms % SLOT_MS == 0 && now_ms >= end_ms - 24 * 3_600_000 {
                let target = SlotId::new(now_ms + 2 * SLOT_MS).expect("a slot");
                if let (Some(learned), Some(old)) = (forecaster.net_export_wh(target), trailing_hour(&history)) {
                    forecasts.push((target, learned, old));
                }
            }
            now_ms += MINUTE_MS;
        }
        let (mut learned_error, mut old_error, mut scored) = (0, 0, 0);
        for (slot, learned, old) in forecasts {
            let (Some(&(first, _)), Some(&(next, _))) = (actual.get(&slot), actual.get(&slot.next(SLOT_MS))) else {
                continue;
            };
            let truth = next - first;
            learned_error += (learned - truth).abs();
            old_error += (old - truth).abs();
            scored += 1;
        }
        (learned_error, old_error, scored)
    }

    #[test]
    fn the_learned_forecast_beats_the_trailing_hour_average_over_a_day_of_recorded_shape() {
        for seed in [1, 7, 42] {
            let (learned, old, scored) = errors(seed, 4, true);
            eprintln!("seed {seed}: learned {learned} Wh, trailing hour {old} Wh over {scored} slots");
            assert!(scored > 80, "most slots of the last day are scored ({scored})");
            // At sunrise, sunset and the load peaks the trailing hour is wrong for hours.
            assert!(learned * 10 < old * 7, "seed {seed}: learned error {learned} Wh, trailing-hour {old} Wh");
        }
    }

    #[test]
    fn without_pv_counters_the_net_profile_still_beats_the_trailing_hour_average() {
        let (learned, old, _) = errors(3, 4, false);
        assert!(learned * 10 < old * 8, "learned error {learned} Wh, trailing-hour {old} Wh");
    }

    #[test]
    fn nothing_is_forecast_before_a_slot_was_seen() {
        let forecaster = Forecaster::new(SLOT_MS);
        assert_eq!(forecaster.net_export_wh(SlotId::new(SLOT_MS).expect("a slot")), None);
    }
}
