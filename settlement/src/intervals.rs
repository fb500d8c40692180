//! Interval data, read-only: each device's metered energy per slot over a range of slots, by the
//! same rule that closes a slot ([`metering::metered_energy`](crate::metering::metered_energy): the
//! counters at each boundary from the readings around it, interpolated and rounded down, "no data"
//! without readings on both sides within the gap limit, and a slot over
//! [`METERED_WH_PER_SLOT_MAX`](crate::close::METERED_WH_PER_SLOT_MAX) is "no data" too).
//!
//! It reads every accepted reading stored now, so a slot settled before a late reading arrived
//! may show more energy here than its statement (settlement counts readings received by the end of
//! its grace period only). The web API serves it as Green Button (ESPI) XML and reconciles the
//! utility's own meter data against it.

use crate::close::METERED_WH_PER_SLOT_MAX;
use crate::metering::{metered_energy, CounterSample, MeteredEnergy};
use diesel::prelude::*;
use gridex_store::schema::readings;
use gridex_store::{DbConnection, DbError};
use std::collections::BTreeMap;

/// Most slots one interval-data request covers: a week of 15-minute slots. Each device's readings
/// of that week are loaded at once (about 10k at one a minute), one device at a time.
pub const INTERVAL_SLOTS_MAX: i64 = 672;

/// The slots `[first_ms + k × slot_len_ms, …)` of a request, `k < count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    pub first_ms: i64,
    pub slot_len_ms: i64,
    pub count: i64,
}

impl SlotRange {
    /// The slots that start in `[from_ms, to_ms)`, aligned to `slot_len_ms`; `None` when that is
    /// more than [`INTERVAL_SLOTS_MAX`] slots or the arguments are out of range.
    pub fn covering(from_ms: i64, to_ms: i64, slot_len_ms: i64) -> Option<SlotRange> {
        if slot_len_ms <= 0 || from_ms < 0 || to_ms < from_ms {
            return None;
        }
        let first_ms = from_ms.checked_add(slot_len_ms - 1)?.div_euclid(slot_len_ms) * slot_len_ms;
        let count = (to_ms.max(first_ms) - first_ms).checked_add(slot_len_ms - 1)?.div_euclid(slot_len_ms);
        (count <= INTERVAL_SLOTS_MAX).then_some(SlotRange { first_ms, slot_len_ms, count })
    }

    /// The start of slot `index`.
    pub fn start_ms(&self, index: i64) -> i64 {
        self.first_ms + index * self.slot_len_ms
    }

    /// The end of the last slot.
    pub fn end_ms(&self) -> i64 {
        self.start_ms(self.count)
    }
}

/// One device's energy per slot of a [`SlotRange`], in order; `None`: no data for that slot.
pub type DeviceIntervals = Vec<Option<MeteredEnergy>>;

/// The energy per slot of `range` from one device's counter samples (sorted by time).
pub fn intervals_of(samples: &[CounterSample], range: SlotRange, gap_ms_max: i64) -> DeviceIntervals {
    (0..range.count)
        .map(|index| {
            let start_ms = range.start_ms(index);
            metered_energy(samples, start_ms, start_ms + range.slot_len_ms, gap_ms_max).filter(|energy| {
                energy.import_wh <= METERED_WH_PER_SLOT_MAX && energy.export_wh <= METERED_WH_PER_SLOT_MAX
            })
        })
        .collect()
}

/// Each of `device_ids`' energy per slot of `range`, from its readings within `gap_ms_max` of the
/// range (one query per device, so memory holds one device's readings at a time).
pub fn device_intervals(
    conn: &mut DbConnection,
    device_ids: &[String],
    range: SlotRange,
    gap_ms_max: i64,
) -> Result<BTreeMap<String, DeviceIntervals>, DbError> {
    let from_ms = range.first_ms.saturating_sub(gap_ms_max);
    let to_ms = range.end_ms().saturating_add(gap_ms_max);
    let mut intervals = BTreeMap::new();
    for device_id in device_ids {
        let rows: Vec<(i64, i64, i64)> = readings::table
            .filter(readings::device_id.eq(device_id))
            .filter(readings::ts_ms.ge(from_ms))
            .filter(readings::ts_ms.le(to_ms))
            .order(readings::ts_ms.asc())
            .select((readings::ts_ms, readings::import_wh, readings::export_wh))
            .load(conn)?;
        let mut samples: Vec<CounterSample> = rows
            .into_iter()
            .map(|(ts_ms, import_wh, export_wh)| CounterSample { ts_ms, import_wh, export_wh })
            .collect();
        samples.dedup_by_key(|sample| sample.ts_ms);
        intervals.insert(device_id.clone(), intervals_of(&samples, range, gap_ms_max));
    }
    Ok(intervals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts_ms: i64, import_wh: i64, export_wh: i64) -> CounterSample {
        CounterSample { ts_ms, import_wh, export_wh }
    }

    #[test]
    fn a_range_covers_the_slots_that_start_in_it() {
        assert_eq!(SlotRange::covering(0, 3_000, 1_000), Some(SlotRange { first_ms: 0, slot_len_ms: 1_000, count: 3 }));
        // A slot that started before `from_ms` is not in it; one that starts before `to_ms` is.
        assert_eq!(
            SlotRange::covering(500, 2_001, 1_000),
            Some(SlotRange { first_ms: 1_000, slot_len_ms: 1_000, count: 2 })
        );
        assert_eq!(SlotRange::covering(0, 0, 1_000).map(|range| range.count), Some(0));
    }

    #[test]
    fn a_range_of_more_than_a_week_of_slots_is_refused() {
        let slot = 900_000;
        assert!(SlotRange::covering(0, INTERVAL_SLOTS_MAX * slot, slot).is_some());
        assert_eq!(SlotRange::covering(0, INTERVAL_SLOTS_MAX * slot + 1, slot), None);
        assert_eq!(SlotRange::covering(2_000, 1_000, slot), None);
        assert_eq!(SlotRange::covering(0, 1_000, 0), None);
    }

    #[test]
    fn the_slots_of_a_range_add_up_to_the_counters_difference() {
        let samples = [sample(0, 0, 0), sample(1_500, 10, 3), sample(3_000, 31, 3)];
        let range = SlotRange { first_ms: 0, slot_len_ms: 1_000, count: 3 };
        let intervals = intervals_of(&samples, range, 10_000);
        let energy: Vec<(i64, i64)> =
            intervals.iter().map(|slot| slot.map(|e| (e.import_wh, e.export_wh)).unwrap_or((-1, -1))).collect();
        // Boundaries: 0 → (0,0), 1000 → (6,2), 2000 → (17,3), 3000 → (31,3), rounded down.
        assert_eq!(energy, vec![(6, 2), (11, 1), (14, 0)]);
        assert_eq!(energy.iter().map(|(import, _)| import).sum::<i64>(), 31);
    }

    #[test]
    fn a_slot_without_readings_on_both_sides_has_no_data() {
        let samples = [sample(0, 0, 0), sample(1_000, 10, 0)];
        let range = SlotRange { first_ms: 0, slot_len_ms: 1_000, count: 2 };
        assert_eq!(
            intervals_of(&samples, range, 10_000),
            vec![Some(MeteredEnergy { import_wh: 10, export_wh: 0 }), None]
        );
    }
}
