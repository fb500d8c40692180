//! The plausibility of a device's readings: each accepted reading continues from the previous one
//! (or from a registered meter replacement) with no counter lower and no more energy than the
//! nameplate allows over the time between them. Pure: the caller keeps [`DeviceState`].
//!
//! A home battery's counters (version 2 readings) obey the same rules on their own: each continues
//! from the latest accepted reading that had it ([`BatteryMarks`]; a reading may lack them), never
//! lower, and charge plus discharge fit the nameplate over the time since. A meter replacement
//! resets only the grid meter's counters, never the battery's.

use super::{DeviceState, LastReading, Rejection};
use protocol::rules::nameplate_allowance_wh;
use protocol::Reason;

/// Counters of a meter at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub import_wh: i64,
    pub export_wh: i64,
    pub pv_wh: Option<i64>,
}

/// A meter replacement the utility registered: from `replaced_at_ms` on, the device's readings
/// continue from the new meter's initial counters (`new`) instead of the last accepted reading's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replacement {
    pub replaced_at_ms: i64,
    pub new: Counters,
}

/// A battery counter's value in the latest accepted reading that had it, and that reading's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatteryMark {
    pub ts_ms: i64,
    pub wh: i64,
}

/// The high-water marks of a device's battery counters: where the next reading's must continue from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatteryMarks {
    pub charge: Option<BatteryMark>,
    pub discharge: Option<BatteryMark>,
}

impl BatteryMarks {
    /// The marks once `next` is accepted: its counters where it has them, the older marks elsewhere.
    fn after(self, next: &LastReading) -> Self {
        let mark =
            |wh: Option<i64>, old: Option<BatteryMark>| wh.map(|wh| BatteryMark { ts_ms: next.ts_ms, wh }).or(old);
        Self {
            charge: mark(next.battery_charge_wh, self.charge),
            discharge: mark(next.battery_discharge_wh, self.discharge),
        }
    }
}

/// Accepts `next` as the device's new high-water mark if it is later in time than the last
/// accepted reading and its counters are plausible ([`counters_check`]); otherwise the device's
/// state is unchanged. Consumes the replacements `next` continues from.
pub(crate) fn accept_reading(device: &mut DeviceState, next: LastReading) -> Result<(), Rejection> {
    if let Some(last) = &device.last {
        if next.ts_ms <= last.ts_ms {
            return Err(Rejection::new(
                Reason::TimestampNotIncreasing,
                format!("ts_ms {} is not after the last accepted reading's {}", next.ts_ms, last.ts_ms),
            ));
        }
    }
    counters_check(device, &next)?;
    device.replacements.retain(|replacement| replacement.replaced_at_ms > next.ts_ms);
    device.battery = device.battery.after(&next);
    device.last = Some(next);
    Ok(())
}

/// Where a reading's counters must continue from: the new meter's initial counters of the latest
/// replacement registered at or before the reading (and after the last accepted reading), else the
/// last accepted reading. `None` for a device's first reading.
fn baseline(device: &DeviceState, next: &LastReading) -> Option<(i64, Counters)> {
    let replaced = device.replacements.iter().rev().find(|replacement| replacement.replaced_at_ms <= next.ts_ms);
    match (replaced, &device.last) {
        (Some(replacement), _) => Some((replacement.replaced_at_ms, replacement.new)),
        (None, Some(last)) => Some((last.ts_ms, last.counters())),
        (None, None) => None,
    }
}

/// No counter is lower than the baseline's ([`baseline`]; there is no automatic reset: a lower
/// counter needs a registered meter replacement) and the energy since the baseline fits the
/// nameplate power over the time since it, plus the named tolerance; then the same for the
/// battery's counters ([`battery_check`]).
pub(crate) fn counters_check(device: &DeviceState, next: &LastReading) -> Result<(), Rejection> {
    grid_check(device, next)?;
    battery_check(&device.battery, next, device.nameplate_w)
}

/// The battery's counters are not lower than their marks, and charge plus discharge since the
/// older mark fit the nameplate over that time (a battery charges or discharges at any instant,
/// never both, as a net meter imports or exports).
fn battery_check(marks: &BatteryMarks, next: &LastReading, nameplate_w: i64) -> Result<(), Rejection> {
    let counters = [
        ("battery_charge_wh", marks.charge, next.battery_charge_wh),
        ("battery_discharge_wh", marks.discharge, next.battery_discharge_wh),
    ];
    let mut energy_wh: i128 = 0;
    let mut since_ms: Option<i64> = None;
    for (name, mark, now_wh) in counters {
        let (Some(mark), Some(now_wh)) = (mark, now_wh) else { continue };
        if now_wh < mark.wh {
            return Err(Rejection::new(
                Reason::CounterWentBackwards,
                format!("`{name}` {now_wh} is lower than {} in the last accepted reading with it", mark.wh),
            ));
        }
        energy_wh += i128::from(now_wh - mark.wh);
        since_ms = Some(since_ms.map_or(mark.ts_ms, |since| since.min(mark.ts_ms)));
    }
    let Some(since_ms) = since_ms else { return Ok(()) };
    let elapsed_ms = next.ts_ms - since_ms;
    if energy_wh > nameplate_allowance_wh(nameplate_w, elapsed_ms) {
        return Err(Rejection::new(
            Reason::ImplausibleEnergy,
            format!("{energy_wh} Wh through the battery in {elapsed_ms} ms exceeds the {nameplate_w} W nameplate"),
        ));
    }
    Ok(())
}

fn grid_check(device: &DeviceState, next: &LastReading) -> Result<(), Rejection> {
    let Some((since_ms, base)) = baseline(device, next) else { return Ok(()) };
    let counters = next.counters();
    if !counters_not_lower(&base, &counters) {
        return Err(Rejection::new(
            Reason::CounterWentBackwards,
            "a counter is lower than in the last accepted reading and no meter replacement is registered",
        ));
    }
    within_nameplate(&base, &counters, next.ts_ms - since_ms, device.nameplate_w)
}

fn counters_not_lower(earlier: &Counters, later: &Counters) -> bool {
    let pv_ok = match (earlier.pv_wh, later.pv_wh) {
        (Some(before), Some(after)) => after >= before,
        _ => true,
    };
    later.import_wh >= earlier.import_wh && later.export_wh >= earlier.export_wh && pv_ok
}

fn within_nameplate(earlier: &Counters, later: &Counters, elapsed_ms: i64, nameplate_w: i64) -> Result<(), Rejection> {
    let allowance = nameplate_allowance_wh(nameplate_w, elapsed_ms);
    // A net meter either imports or exports at any instant, so the two together fit the nameplate.
    let grid = i128::from(later.import_wh - earlier.import_wh) + i128::from(later.export_wh - earlier.export_wh);
    let pv = match (earlier.pv_wh, later.pv_wh) {
        (Some(before), Some(after)) => i128::from(after - before),
        _ => 0,
    };
    if grid > allowance || pv > allowance {
        return Err(Rejection::new(
            Reason::ImplausibleEnergy,
            format!("{} Wh in {elapsed_ms} ms exceeds the {nameplate_w} W nameplate", grid.max(pv)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ZoneId;

    fn last(seq: u64, ts_ms: i64, import_wh: i64) -> LastReading {
        LastReading {
            seq,
            ts_ms,
            import_wh,
            export_wh: 0,
            pv_wh: None,
            battery_charge_wh: None,
            battery_discharge_wh: None,
            signing_bytes: Vec::new(),
        }
    }

    fn battery(seq: u64, ts_ms: i64, charge_wh: Option<i64>, discharge_wh: Option<i64>) -> LastReading {
        LastReading { battery_charge_wh: charge_wh, battery_discharge_wh: discharge_wh, ..last(seq, ts_ms, 0) }
    }

    fn device(nameplate_w: i64) -> DeviceState {
        let zone = ZoneId::parse("z").expect("a zone id");
        DeviceState { zone, nameplate_w, last: None, replacements: Vec::new(), battery: BatteryMarks::default() }
    }

    fn replacement(replaced_at_ms: i64, import_wh: i64) -> Replacement {
        Replacement { replaced_at_ms, new: Counters { import_wh, export_wh: 0, pv_wh: None } }
    }

    fn reason(result: Result<(), Rejection>) -> Reason {
        result.expect_err("refused").reason
    }

    #[test]
    fn a_reading_not_after_the_last_accepted_one_is_refused_and_leaves_the_baseline() {
        let mut state = device(10_000);
        accept_reading(&mut state, last(1, 600_000, 0)).expect("baseline");
        assert_eq!(reason(accept_reading(&mut state, last(2, 1, 0))), Reason::TimestampNotIncreasing);
        assert_eq!(reason(accept_reading(&mut state, last(2, 600_000, 0))), Reason::TimestampNotIncreasing);
        assert_eq!(state.last.as_ref().map(|last| last.seq), Some(1));
    }

    #[test]
    fn the_nameplate_allowance_runs_from_the_last_accepted_reading_not_a_backdated_one() {
        // The drill: a backdated reading would have widened the interval to days.
        let mut state = device(10_000);
        accept_reading(&mut state, last(1, 6 * 86_400_000, 1_000)).expect("baseline");
        assert!(accept_reading(&mut state, last(2, 1, 1_000)).is_err());
        let jump = last(3, 6 * 86_400_000 + 60_000, 501_000);
        assert_eq!(reason(accept_reading(&mut state, jump)), Reason::ImplausibleEnergy);
        accept_reading(&mut state, last(4, 6 * 86_400_000 + 60_000, 1_150)).expect("150 Wh in a minute at 10 kW");
    }

    #[test]
    fn a_counter_reset_is_refused_however_consistently_it_continues() {
        let mut state = device(10_000);
        accept_reading(&mut state, last(1, 0, 5_000)).expect("the first reading sets the baseline");
        assert_eq!(reason(accept_reading(&mut state, last(2, 1_000, 10))), Reason::CounterWentBackwards);
        assert_eq!(reason(accept_reading(&mut state, last(3, 2_000, 12))), Reason::CounterWentBackwards);
        assert_eq!(state.last.as_ref().map(|last| last.import_wh), Some(5_000));
        accept_reading(&mut state, last(4, 3_000, 5_001)).expect("continues from the old baseline");
    }

    #[test]
    fn after_a_registered_replacement_readings_continue_from_the_new_meter() {
        let mut state = device(3_600);
        accept_reading(&mut state, last(1, 0, 5_000)).expect("baseline");
        state.set_replacements(vec![replacement(3_600_000, 100)]);
        // Before the swap the old meter still counts.
        accept_reading(&mut state, last(2, 1_800_000, 5_100)).expect("old meter");
        // Below the new meter's initial counters: backwards.
        assert_eq!(reason(accept_reading(&mut state, last(3, 3_700_000, 99))), Reason::CounterWentBackwards);
        // 3.6 kW for 100 s after the swap allows 105 Wh (+ tolerance), not 200 Wh.
        assert_eq!(reason(accept_reading(&mut state, last(3, 3_700_000, 300))), Reason::ImplausibleEnergy);
        accept_reading(&mut state, last(3, 3_700_000, 150)).expect("continues from the new meter");
        assert!(state.replacements.is_empty(), "the replacement is consumed");
        assert_eq!(reason(accept_reading(&mut state, last(4, 3_800_000, 149))), Reason::CounterWentBackwards);
    }

    #[test]
    fn replacements_before_the_last_accepted_reading_are_ignored() {
        let mut state = device(10_000);
        accept_reading(&mut state, last(1, 10_000, 5_000)).expect("baseline");
        state.set_replacements(vec![replacement(5_000, 0)]);
        assert!(state.replacements.is_empty());
        assert_eq!(reason(accept_reading(&mut state, last(2, 20_000, 1))), Reason::CounterWentBackwards);
    }

    #[test]
    fn a_battery_counter_continues_from_the_last_reading_that_had_it_even_across_one_without() {
        let mut state = device(3_600);
        accept_reading(&mut state, battery(1, 0, Some(5_000), Some(4_000))).expect("baseline");
        // A reading without the battery (it did not answer) leaves the marks where they were.
        accept_reading(&mut state, battery(2, 60_000, None, None)).expect("no battery this time");
        let rolled_back = battery(3, 120_000, Some(10), Some(4_000));
        assert_eq!(reason(accept_reading(&mut state, rolled_back)), Reason::CounterWentBackwards);
        let discharge_back = battery(3, 120_000, Some(5_000), Some(3_999));
        assert_eq!(reason(accept_reading(&mut state, discharge_back)), Reason::CounterWentBackwards);
        accept_reading(&mut state, battery(3, 120_000, Some(5_050), Some(4_000))).expect("continues");
        assert_eq!(state.battery.charge, Some(BatteryMark { ts_ms: 120_000, wh: 5_050 }));
    }

    #[test]
    fn charge_and_discharge_together_fit_the_nameplate_since_the_older_mark() {
        // 3.6 kW for 100 s allows 100 Wh + 5 % + 2 Wh = 107 Wh.
        let mut state = device(3_600);
        accept_reading(&mut state, battery(1, 0, Some(0), Some(0))).expect("baseline");
        let both = battery(2, 100_000, Some(60), Some(60));
        assert_eq!(reason(accept_reading(&mut state, both)), Reason::ImplausibleEnergy);
        accept_reading(&mut state, battery(2, 100_000, Some(60), Some(47))).expect("107 Wh in 100 s");
    }

    #[test]
    fn a_meter_replacement_does_not_reset_the_battery_counters() {
        let mut state = device(3_600);
        accept_reading(&mut state, LastReading { import_wh: 5_000, ..battery(1, 0, Some(900), None) })
            .expect("baseline");
        state.set_replacements(vec![replacement(1_000, 0)]);
        let reset = battery(2, 2_000, Some(0), None);
        assert_eq!(reason(accept_reading(&mut state, reset)), Reason::CounterWentBackwards);
        accept_reading(&mut state, battery(2, 2_000, Some(900), None)).expect("the new meter, the same battery");
    }

    #[test]
    fn energy_beyond_the_nameplate_is_implausible_and_leaves_the_baseline() {
        let mut state = device(1_000);
        accept_reading(&mut state, last(1, 0, 0)).expect("baseline");
        let error = accept_reading(&mut state, last(2, 3_600_000, 1_100)).expect_err("1 100 Wh from 1 kW in an hour");
        assert_eq!(error.reason, Reason::ImplausibleEnergy);
        assert_eq!(state.last.as_ref().map(|last| last.seq), Some(1));
    }
}
