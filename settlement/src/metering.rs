//! Metered energy of a device over a slot, from the cumulative counters of its accepted readings.
//!
//! The counter at a slot boundary `t` is taken from the nearest accepted readings on each side:
//! a reading exactly at `t` is used as is; otherwise the counter is linearly interpolated between the
//! last reading before `t` and the first after it, in exact integer arithmetic and **rounded down**
//! (towards negative infinity). Because both boundaries of every slot are rounded the same way, the
//! energies of consecutive slots add up exactly to the difference of the raw counters: no Wh is made
//! or lost across slots, only placed in the neighbouring slot.
//!
//! **No data:** a boundary without an accepted reading on both sides within
//! [`SettlementConfig::reading_gap_ms_max`](crate::SettlementConfig) of each other, or a counter that
//! runs backwards, has no value; so has a slot in which a counter advances by more than
//! [`METERED_WH_PER_SLOT_MAX`](crate::close::METERED_WH_PER_SLOT_MAX). The device is then "no data"
//! for the slot (see `rules` for how such an account is settled).
//!
//! **Gaps:** energy that was settled provisionally as "no data" is settled exactly once data resumes:
//! from a device's metering cursor (its counters at the boundary up to which it is settled) to the
//! counters at the start of the first slot with data again, across any registered meter replacement
//! in between ([`gap_energy`]; the billing rule is `rules::settle_gap`).

/// One accepted reading's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSample {
    pub ts_ms: i64,
    pub import_wh: i64,
    pub export_wh: i64,
}

/// Energy through a meter over one slot, both counters non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeteredEnergy {
    pub import_wh: i64,
    pub export_wh: i64,
}

/// `c0 + (c1 - c0) × (at - t0) / (t1 - t0)`, rounded down; `t0 < at < t1`.
fn interpolate(c0: i64, c1: i64, t0: i64, t1: i64, at: i64) -> i64 {
    let numerator = i128::from(c1 - c0) * i128::from(at - t0);
    let step = numerator.div_euclid(i128::from(t1 - t0));
    // |step| <= |c1 - c0| because 0 < at - t0 < t1 - t0, so it fits i64.
    c0 + i64::try_from(step).unwrap_or(0)
}

/// The counters at `at` from `samples` sorted by time; `None` when `at` is not bracketed by readings
/// at most `gap_ms_max` apart or a counter runs backwards between them.
pub fn counters_at(samples: &[CounterSample], at: i64, gap_ms_max: i64) -> Option<CounterSample> {
    let after_index = samples.partition_point(|sample| sample.ts_ms < at);
    let after = samples.get(after_index)?;
    if after.ts_ms == at {
        return Some(*after);
    }
    let before = samples.get(after_index.checked_sub(1)?)?;
    if after.ts_ms - before.ts_ms > gap_ms_max
        || after.import_wh < before.import_wh
        || after.export_wh < before.export_wh
    {
        return None;
    }
    Some(CounterSample {
        ts_ms: at,
        import_wh: interpolate(before.import_wh, after.import_wh, before.ts_ms, after.ts_ms, at),
        export_wh: interpolate(before.export_wh, after.export_wh, before.ts_ms, after.ts_ms, at),
    })
}

/// The device's energy in `[start_ms, end_ms)`, or `None` ("no data").
pub fn metered_energy(samples: &[CounterSample], start_ms: i64, end_ms: i64, gap_ms_max: i64) -> Option<MeteredEnergy> {
    let start = counters_at(samples, start_ms, gap_ms_max)?;
    let end = counters_at(samples, end_ms, gap_ms_max)?;
    let energy =
        MeteredEnergy { import_wh: end.import_wh - start.import_wh, export_wh: end.export_wh - start.export_wh };
    (energy.import_wh >= 0 && energy.export_wh >= 0).then_some(energy)
}

/// A meter replacement registered by the utility (table `meter_replacements`): the old meter's final
/// counters and the new meter's initial counters at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replacement {
    pub at_ms: i64,
    pub old_import_wh: i64,
    pub old_export_wh: i64,
    pub new_import_wh: i64,
    pub new_export_wh: i64,
}

/// Energy through a meter over a gap, and whether every segment of it ran forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GapEnergy {
    pub energy: MeteredEnergy,
    /// A counter ran backwards over a segment with no registered replacement: that segment counts as
    /// zero (the exchange refuses such readings, so only inconsistent stored data gets here).
    pub inconsistent: bool,
}

/// The energy from counters `from` (the cursor) to counters `to` (the start of the slot with data),
/// both at boundaries, `from.ts_ms <= to.ts_ms`. Each meter contributes the difference of its own
/// counters: with replacements at times in `(from.ts_ms, to.ts_ms]` (taken in time order), the energy
/// is `(old_final − from) + … + (to − new_initial)`. A segment whose counter runs backwards counts 0.
pub fn gap_energy(from: CounterSample, to: CounterSample, replacements: &[Replacement]) -> GapEnergy {
    let mut within: Vec<&Replacement> = replacements
        .iter()
        .filter(|replacement| from.ts_ms < replacement.at_ms && replacement.at_ms <= to.ts_ms)
        .collect();
    within.sort_by_key(|replacement| replacement.at_ms);
    let mut gap = GapEnergy::default();
    let mut add = |segment_import: i64, segment_export: i64| {
        gap.inconsistent |= segment_import < 0 || segment_export < 0;
        gap.energy.import_wh += segment_import.max(0);
        gap.energy.export_wh += segment_export.max(0);
    };
    let (mut import_wh, mut export_wh) = (from.import_wh, from.export_wh);
    for replacement in within {
        add(replacement.old_import_wh - import_wh, replacement.old_export_wh - export_wh);
        (import_wh, export_wh) = (replacement.new_import_wh, replacement.new_export_wh);
    }
    add(to.import_wh - import_wh, to.export_wh - export_wh);
    gap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts_ms: i64, import_wh: i64, export_wh: i64) -> CounterSample {
        CounterSample { ts_ms, import_wh, export_wh }
    }

    #[test]
    fn a_reading_on_the_boundary_is_used_as_is() {
        let samples = [sample(0, 10, 20), sample(1_000, 15, 30)];
        assert_eq!(counters_at(&samples, 0, 10_000), Some(sample(0, 10, 20)));
        assert_eq!(counters_at(&samples, 1_000, 10_000), Some(sample(1_000, 15, 30)));
    }

    #[test]
    fn counters_between_readings_are_interpolated_and_rounded_down() {
        let samples = [sample(0, 0, 0), sample(3_000, 10, 1)];
        // 10 × 1/3 = 3.33 → 3; 1 × 1/3 → 0; 10 × 2/3 = 6.67 → 6.
        assert_eq!(counters_at(&samples, 1_000, 10_000), Some(sample(1_000, 3, 0)));
        assert_eq!(counters_at(&samples, 2_000, 10_000), Some(sample(2_000, 6, 0)));
    }

    #[test]
    fn consecutive_slots_add_up_to_the_raw_counter_difference() {
        let samples = [sample(0, 0, 0), sample(7_000, 1_001, 333), sample(20_000, 5_003, 1_000)];
        let mut total = MeteredEnergy::default();
        for start in (0..20_000).step_by(900) {
            let end = (start + 900).min(20_000);
            let energy = metered_energy(&samples, start, end, 60_000).expect("bracketed");
            total.import_wh += energy.import_wh;
            total.export_wh += energy.export_wh;
        }
        assert_eq!(total, MeteredEnergy { import_wh: 5_003, export_wh: 1_000 });
    }

    #[test]
    fn a_boundary_without_readings_on_both_sides_is_no_data() {
        let samples = [sample(0, 0, 0), sample(1_000, 5, 0)];
        assert_eq!(counters_at(&samples, 2_000, 10_000), None);
        assert_eq!(counters_at(&samples, -1, 10_000), None);
        assert_eq!(metered_energy(&samples, 500, 1_500, 10_000), None);
        assert_eq!(metered_energy(&[], 0, 1_000, 10_000), None);
    }

    #[test]
    fn readings_too_far_apart_or_running_backwards_are_no_data() {
        assert_eq!(counters_at(&[sample(0, 0, 0), sample(100_000, 5, 0)], 50_000, 10_000), None);
        assert_eq!(counters_at(&[sample(0, 9, 0), sample(1_000, 5, 0)], 500, 10_000), None);
    }

    fn energy(import_wh: i64, export_wh: i64) -> MeteredEnergy {
        MeteredEnergy { import_wh, export_wh }
    }

    #[test]
    fn the_gap_is_the_counter_difference_between_cursor_and_the_slot_start() {
        let gap = gap_energy(sample(900, 1_010, 40), sample(3_600, 1_260, 55), &[]);
        assert_eq!(gap, GapEnergy { energy: energy(250, 15), inconsistent: false });
        assert_eq!(gap_energy(sample(900, 7, 7), sample(900, 7, 7), &[]).energy, energy(0, 0));
    }

    #[test]
    fn a_replacement_in_the_gap_counts_each_meter_from_its_own_counters() {
        let swap =
            Replacement { at_ms: 2_000, old_import_wh: 1_100, old_export_wh: 50, new_import_wh: 0, new_export_wh: 0 };
        // 100 Wh on the old meter up to its final reading, 30 on the new one since its initial reading.
        let gap = gap_energy(sample(900, 1_000, 40), sample(3_600, 30, 5), &[swap]);
        assert_eq!(gap, GapEnergy { energy: energy(130, 15), inconsistent: false });
    }

    #[test]
    fn replacements_outside_the_gap_are_ignored_and_several_are_taken_in_time_order() {
        let swap = |at_ms, old_import_wh, new_import_wh| Replacement {
            at_ms,
            old_import_wh,
            old_export_wh: 0,
            new_import_wh,
            new_export_wh: 0,
        };
        let replacements = [swap(3_000, 520, 10), swap(2_000, 150, 500), swap(900, 99, 0), swap(4_000, 9, 9)];
        // 100 → 150 (old), 500 → 520 (second meter), 10 → 40 (third): 50 + 20 + 30.
        let gap = gap_energy(sample(900, 100, 0), sample(3_600, 40, 0), &replacements);
        assert_eq!(gap, GapEnergy { energy: energy(100, 0), inconsistent: false });
    }

    #[test]
    fn a_counter_running_backwards_without_a_replacement_counts_zero_and_is_flagged() {
        let gap = gap_energy(sample(900, 5_000, 40), sample(3_600, 100, 60), &[]);
        assert_eq!(gap, GapEnergy { energy: energy(0, 20), inconsistent: true });
    }
}
