//! The plausibility of a device's readings: each accepted reading continues from the previous one
//! (or from a registered meter replacement) with no counter lower and no more energy than the
//! nameplate allows over the time between them. Pure: the caller keeps [`DeviceState`].

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
/// nameplate power over the time since it, plus the named tolerance.
pub(crate) fn counters_check(device: &DeviceState, next: &LastReading) -> Result<(), Rejection> {
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
        LastReading { seq, ts_ms, import_wh, export_wh: 0, pv_wh: None, signing_bytes: Vec::new() }
    }

    fn device(nameplate_w: i64) -> DeviceState {
        let zone = ZoneId::parse("z").expect("a zone id");
        DeviceState { zone, nameplate_w, last: None, replacements: Vec::new() }
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
    fn energy_beyond_the_nameplate_is_implausible_and_leaves_the_baseline() {
        let mut state = device(1_000);
        accept_reading(&mut state, last(1, 0, 0)).expect("baseline");
        let error = accept_reading(&mut state, last(2, 3_600_000, 1_100)).expect_err("1 100 Wh from 1 kW in an hour");
        assert_eq!(error.reason, Reason::ImplausibleEnergy);
        assert_eq!(state.last.as_ref().map(|last| last.seq), Some(1));
    }
}
