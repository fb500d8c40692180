//! Time-of-use tariffs: which prices apply to a slot. Pure and storage-free, so the exchange's price
//! band and settlement read a slot's prices through one rule (`gridex_store::tariff::tariff_for_slot`
//! loads a zone's versions and applies [`TariffSchedule::slot_tariff`]).
//!
//! A tariff **version** takes effect at `effective_from_ms` and stays in force until the next one. It
//! has flat prices (the default) and optional **bands**: days of the week (a bitmask, Monday = bit 0
//! … Sunday = bit 6) and a local time-of-day range `[start_minute, end_minute)` with their own retail,
//! feed-in and grid-fee prices.
//!
//! Local time is the version's fixed offset from UTC in minutes (`utc_offset_minutes`, e.g. 60 for
//! CET). There is no daylight-saving rule: a utility whose clocks change sets a new version with the
//! new offset effective at the change (versions are effective-dated anyway).
//!
//! A slot's prices are those of the band covering the slot's **start** (bands of one version never
//! overlap, which the registry enforces, so at most one covers it; were two stored, the first in the
//! version's order would win), else the flat prices. A band ends before `end_minute` (exclusive), so
//! `[0, 420)` covers 06:59 but not 07:00; 1440 is midnight at the end of the day. A band never crosses
//! midnight: a night band is two bands (e.g. 22:00–24:00 and 00:00–06:00 of the following days).
//!
//! ```
//! use protocol::tariff::{DaysOfWeek, SlotPrices, TariffSchedule, TariffVersion, TouBand};
//! use protocol::PricePerKwh;
//!
//! let prices = |retail| SlotPrices {
//!     retail_price_per_kwh: PricePerKwh(retail),
//!     feed_in_price_per_kwh: PricePerKwh(50_000),
//!     grid_fee_per_kwh: PricePerKwh(10_000),
//! };
//! let peak = TouBand { days: DaysOfWeek::WEEKDAYS, start_minute: 17 * 60, end_minute: 20 * 60, prices: prices(400_000) };
//! let version = TariffVersion {
//!     effective_from_ms: 0,
//!     protocol_fee_bps: 0,
//!     utc_offset_minutes: 0,
//!     flat: prices(250_000),
//!     bands: vec![peak],
//! };
//! let schedule = TariffSchedule::new(vec![version]);
//! // 1970-01-01 was a Thursday: 17:00 UTC is in the peak band, 20:00 is not.
//! assert_eq!(schedule.slot_tariff(17 * 3_600_000).unwrap().prices.retail_price_per_kwh, PricePerKwh(400_000));
//! assert_eq!(schedule.slot_tariff(20 * 3_600_000).unwrap().prices.retail_price_per_kwh, PricePerKwh(250_000));
//! ```

use crate::PricePerKwh;
use serde::{Deserialize, Serialize};

/// Minutes in a day: the largest `end_minute`.
pub const MINUTES_PER_DAY: u16 = 1_440;
/// Bands of one tariff version at most: 7 days × a few periods each is far below; a bound keeps the
/// overlap check (quadratic) and every slot lookup small.
pub const BANDS_PER_TARIFF_MAX: usize = 64;
/// UTC offsets in force anywhere lie in −12:00 … +14:00.
pub const UTC_OFFSET_MINUTES_MIN: i32 = -12 * 60;
/// See [`UTC_OFFSET_MINUTES_MIN`].
pub const UTC_OFFSET_MINUTES_MAX: i32 = 14 * 60;

const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Days of the week as a bitmask: Monday = bit 0 … Sunday = bit 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DaysOfWeek(pub u8);

impl DaysOfWeek {
    pub const MONDAY: DaysOfWeek = DaysOfWeek(1);
    pub const SATURDAY: DaysOfWeek = DaysOfWeek(1 << 5);
    pub const SUNDAY: DaysOfWeek = DaysOfWeek(1 << 6);
    pub const WEEKDAYS: DaysOfWeek = DaysOfWeek(0b001_1111);
    pub const WEEKEND: DaysOfWeek = DaysOfWeek(0b110_0000);
    pub const ALL: DaysOfWeek = DaysOfWeek(0b111_1111);

    /// Whether `day` (0 = Monday … 6 = Sunday) is in the set.
    pub fn contains(self, day: u8) -> bool {
        day < 7 && self.0 & (1 << day) != 0
    }

    /// A non-empty set of real days (no bit above Sunday).
    pub fn is_valid(self) -> bool {
        self.0 != 0 && self.0 & !Self::ALL.0 == 0
    }
}

/// The prices of one slot: retail (the utility sells), feed-in (the utility buys) and the grid fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPrices {
    pub retail_price_per_kwh: PricePerKwh,
    pub feed_in_price_per_kwh: PricePerKwh,
    pub grid_fee_per_kwh: PricePerKwh,
}

/// A time-of-use band: its days and local `[start_minute, end_minute)` with its own prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouBand {
    pub days: DaysOfWeek,
    pub start_minute: u16,
    pub end_minute: u16,
    pub prices: SlotPrices,
}

impl TouBand {
    /// Whether the band covers local `day` (0 = Monday) at `minute` of the day (end exclusive).
    pub fn covers(&self, day: u8, minute: u16) -> bool {
        self.days.contains(day) && self.start_minute <= minute && minute < self.end_minute
    }

    /// Whether both bands cover some common minute of some common day.
    pub fn overlaps(&self, other: &TouBand) -> bool {
        self.days.0 & other.days.0 != 0 && self.start_minute < other.end_minute && other.start_minute < self.end_minute
    }
}

/// The local day of the week (0 = Monday) and minute of the day of `at_ms` at `utc_offset_minutes`.
pub fn local_day_and_minute(at_ms: i64, utc_offset_minutes: i32) -> (u8, u16) {
    let local_ms = at_ms.saturating_add(i64::from(utc_offset_minutes) * MS_PER_MINUTE);
    let days = local_ms.div_euclid(MS_PER_DAY);
    // 1970-01-01 (day 0) was a Thursday: day 3 counting from Monday.
    let day = (days + 3).rem_euclid(7);
    let minute = local_ms.rem_euclid(MS_PER_DAY) / MS_PER_MINUTE;
    // Both are in range by the remainders above (0..7, 0..1440).
    (day as u8, minute as u16)
}

/// One tariff version: flat prices plus optional bands, in force from `effective_from_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TariffVersion {
    pub effective_from_ms: i64,
    pub protocol_fee_bps: i64,
    pub utc_offset_minutes: i32,
    pub flat: SlotPrices,
    pub bands: Vec<TouBand>,
}

impl TariffVersion {
    /// The index of the band covering `at_ms` (the first in order), if any.
    pub fn band_at(&self, at_ms: i64) -> Option<usize> {
        let (day, minute) = local_day_and_minute(at_ms, self.utc_offset_minutes);
        self.bands.iter().position(|band| band.covers(day, minute))
    }

    /// The prices at `at_ms`: the covering band's, else the flat ones.
    pub fn prices_at(&self, at_ms: i64) -> SlotPrices {
        self.band_at(at_ms).map_or(self.flat, |index| self.bands[index].prices)
    }
}

/// What applies to one slot: the version in force at its start, the band (if any) and its prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotTariff {
    pub effective_from_ms: i64,
    pub protocol_fee_bps: i64,
    /// Index of the covering band in its version; `None`: the flat prices.
    pub band: Option<usize>,
    pub prices: SlotPrices,
}

/// A zone's tariff versions, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TariffSchedule {
    versions: Vec<TariffVersion>,
}

impl TariffSchedule {
    /// The schedule of `versions` (sorted here by effective time).
    pub fn new(mut versions: Vec<TariffVersion>) -> TariffSchedule {
        versions.sort_by_key(|version| version.effective_from_ms);
        TariffSchedule { versions }
    }

    pub fn versions(&self) -> &[TariffVersion] {
        &self.versions
    }

    /// The version in force at `at_ms`: the latest effective at or before it.
    pub fn version_at(&self, at_ms: i64) -> Option<&TariffVersion> {
        let after = self.versions.partition_point(|version| version.effective_from_ms <= at_ms);
        after.checked_sub(1).map(|index| &self.versions[index])
    }

    /// What applies to the slot starting at `slot_start_ms`; `None` before the first version.
    pub fn slot_tariff(&self, slot_start_ms: i64) -> Option<SlotTariff> {
        let version = self.version_at(slot_start_ms)?;
        let band = version.band_at(slot_start_ms);
        Some(SlotTariff {
            effective_from_ms: version.effective_from_ms,
            protocol_fee_bps: version.protocol_fee_bps,
            band,
            prices: band.map_or(version.flat, |index| version.bands[index].prices),
        })
    }

    /// The prices of every slot starting in `[from_ms, to_ms)` (slots of `slot_len_ms` from
    /// `from_ms`), each distinct set once. Bands repeat weekly, so a version's first week of slots
    /// stands for all of its slots: the work is bounded by a week of slots per version in force.
    pub fn prices_in(&self, from_ms: i64, to_ms: i64, slot_len_ms: i64) -> Vec<SlotPrices> {
        assert!(slot_len_ms > 0, "a slot has a length");
        let mut found: Vec<SlotPrices> = Vec::new();
        let mut slot_ms = from_ms;
        while slot_ms < to_ms {
            let Some(version) = self.version_at(slot_ms) else {
                // Before the first version: skip to it (slot grid kept).
                let Some(first) = self.versions.first() else { break };
                let behind = first.effective_from_ms - slot_ms;
                slot_ms += (behind + slot_len_ms - 1) / slot_len_ms * slot_len_ms;
                continue;
            };
            let next_ms = self
                .versions
                .iter()
                .map(|later| later.effective_from_ms)
                .find(|&effective_ms| effective_ms > slot_ms)
                .unwrap_or(i64::MAX)
                .min(to_ms);
            let week_end_ms = slot_ms.saturating_add(7 * MS_PER_DAY).min(next_ms);
            while slot_ms < week_end_ms {
                let prices = version.prices_at(slot_ms);
                if !found.contains(&prices) {
                    found.push(prices);
                }
                slot_ms += slot_len_ms;
            }
            // The rest of this version's slots repeat the week just seen: jump to the first slot at
            // or after the next version.
            if slot_ms < next_ms {
                slot_ms += (next_ms - slot_ms + slot_len_ms - 1) / slot_len_ms * slot_len_ms;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR_MS: i64 = 3_600_000;
    /// 2026-11-30 00:00 UTC, a Monday.
    const MONDAY_MS: i64 = 1_795_996_800_000;

    fn prices(retail: i64) -> SlotPrices {
        SlotPrices {
            retail_price_per_kwh: PricePerKwh(retail),
            feed_in_price_per_kwh: PricePerKwh(1),
            grid_fee_per_kwh: PricePerKwh(2),
        }
    }

    fn band(days: DaysOfWeek, start_minute: u16, end_minute: u16, retail: i64) -> TouBand {
        TouBand { days, start_minute, end_minute, prices: prices(retail) }
    }

    fn version(effective_from_ms: i64, utc_offset_minutes: i32, bands: Vec<TouBand>) -> TariffVersion {
        TariffVersion { effective_from_ms, protocol_fee_bps: 0, utc_offset_minutes, flat: prices(100), bands }
    }

    #[test]
    fn the_reference_monday_is_a_monday() {
        assert_eq!(local_day_and_minute(MONDAY_MS, 0), (0, 0));
        assert_eq!(local_day_and_minute(MONDAY_MS - 1, 0), (6, 1_439));
    }

    #[test]
    fn a_band_ends_before_its_end_minute() {
        let v = version(0, 0, vec![band(DaysOfWeek::ALL, 7 * 60, 9 * 60, 300)]);
        assert_eq!(v.prices_at(MONDAY_MS + 7 * HOUR_MS - 1).retail_price_per_kwh, PricePerKwh(100));
        assert_eq!(v.prices_at(MONDAY_MS + 7 * HOUR_MS).retail_price_per_kwh, PricePerKwh(300));
        assert_eq!(v.prices_at(MONDAY_MS + 9 * HOUR_MS - 1).retail_price_per_kwh, PricePerKwh(300));
        assert_eq!(v.prices_at(MONDAY_MS + 9 * HOUR_MS).retail_price_per_kwh, PricePerKwh(100));
    }

    #[test]
    fn a_weekday_band_does_not_cover_the_weekend() {
        let v = version(0, 0, vec![band(DaysOfWeek::WEEKDAYS, 0, MINUTES_PER_DAY, 300)]);
        let friday_late = MONDAY_MS + 5 * 24 * HOUR_MS - 1;
        let saturday = MONDAY_MS + 5 * 24 * HOUR_MS;
        let sunday_late = MONDAY_MS + 7 * 24 * HOUR_MS - 1;
        assert_eq!(v.band_at(friday_late), Some(0));
        assert_eq!(v.band_at(saturday), None);
        assert_eq!(v.band_at(sunday_late), None);
        assert_eq!(v.band_at(sunday_late + 1), Some(0));
    }

    #[test]
    fn a_band_to_midnight_covers_the_last_minute_and_not_the_next_day() {
        let v = version(0, 0, vec![band(DaysOfWeek::MONDAY, 22 * 60, MINUTES_PER_DAY, 300)]);
        assert_eq!(v.band_at(MONDAY_MS + 24 * HOUR_MS - 1), Some(0));
        assert_eq!(v.band_at(MONDAY_MS + 24 * HOUR_MS), None);
        assert_eq!(v.band_at(MONDAY_MS), None);
    }

    #[test]
    fn the_offset_moves_local_midnight() {
        // At UTC+1, Sunday 23:00 UTC is Monday 00:00 local.
        let v = version(0, 60, vec![band(DaysOfWeek::MONDAY, 0, 60, 300)]);
        assert_eq!(v.band_at(MONDAY_MS - HOUR_MS), Some(0));
        assert_eq!(v.band_at(MONDAY_MS), None);
        let west = version(0, -300, vec![band(DaysOfWeek::SUNDAY, 19 * 60, MINUTES_PER_DAY, 300)]);
        // Monday 00:00 UTC is Sunday 19:00 at UTC−5.
        assert_eq!(west.band_at(MONDAY_MS), Some(0));
    }

    #[test]
    fn the_version_in_force_is_the_latest_effective_at_the_slot_start() {
        let schedule = TariffSchedule::new(vec![
            version(MONDAY_MS + HOUR_MS, 0, vec![band(DaysOfWeek::ALL, 0, MINUTES_PER_DAY, 500)]),
            version(MONDAY_MS, 0, vec![]),
        ]);
        assert_eq!(schedule.slot_tariff(MONDAY_MS - 1), None);
        assert_eq!(schedule.slot_tariff(MONDAY_MS).map(|t| t.band), Some(None));
        let later = schedule.slot_tariff(MONDAY_MS + HOUR_MS).unwrap();
        assert_eq!((later.effective_from_ms, later.band), (MONDAY_MS + HOUR_MS, Some(0)));
        assert_eq!(later.prices.retail_price_per_kwh, PricePerKwh(500));
    }

    #[test]
    fn the_prices_of_a_range_are_those_of_its_slots_only() {
        let schedule = TariffSchedule::new(vec![version(0, 0, vec![band(DaysOfWeek::WEEKEND, 12 * 60, 13 * 60, 900)])]);
        let weekdays = schedule.prices_in(MONDAY_MS, MONDAY_MS + 5 * 24 * HOUR_MS, 15 * 60_000);
        assert_eq!(weekdays, vec![prices(100)]);
        let saturday_noon = MONDAY_MS + 5 * 24 * HOUR_MS + 12 * HOUR_MS;
        let noon = schedule.prices_in(saturday_noon, saturday_noon + 15 * 60_000, 15 * 60_000);
        assert_eq!(noon, vec![prices(900)]);
        let year = schedule.prices_in(MONDAY_MS, MONDAY_MS + 365 * 24 * HOUR_MS, 15 * 60_000);
        assert_eq!(year, vec![prices(100), prices(900)]);
    }

    #[test]
    fn overlapping_bands_share_a_day_and_a_minute() {
        let morning = band(DaysOfWeek::WEEKDAYS, 6 * 60, 9 * 60, 1);
        assert!(morning.overlaps(&band(DaysOfWeek::MONDAY, 8 * 60, 10 * 60, 1)));
        assert!(!morning.overlaps(&band(DaysOfWeek::MONDAY, 9 * 60, 10 * 60, 1)), "end is exclusive");
        assert!(!morning.overlaps(&band(DaysOfWeek::WEEKEND, 6 * 60, 9 * 60, 1)));
    }

    proptest! {
        /// The prices of a slot are a band's exactly when that band covers the slot's local start,
        /// checked against a direct count of days and minutes.
        #[test]
        fn a_band_covers_exactly_its_days_and_minutes(
            days in 1u8..128,
            start in 0u16..1440,
            len in 1u16..1440,
            offset in UTC_OFFSET_MINUTES_MIN..=UTC_OFFSET_MINUTES_MAX,
            at_minute in 0i64..(4 * 7 * 1440),
        ) {
            let end = (start + len).min(MINUTES_PER_DAY);
            prop_assume!(start < end);
            let v = version(0, offset, vec![band(DaysOfWeek(days), start, end, 300)]);
            let at_ms = MONDAY_MS + at_minute * MS_PER_MINUTE - i64::from(offset) * MS_PER_MINUTE;
            // Local time is `at_minute` minutes after a local Monday midnight.
            let day = (at_minute / 1440 % 7) as u8;
            let minute = (at_minute % 1440) as u16;
            let expected = days & (1 << day) != 0 && start <= minute && minute < end;
            prop_assert_eq!(v.band_at(at_ms).is_some(), expected);
            prop_assert_eq!(v.prices_at(at_ms).retail_price_per_kwh, PricePerKwh(if expected { 300 } else { 100 }));
        }

        /// Every slot's prices are among those `prices_in` lists for a range holding the slot.
        #[test]
        fn the_prices_of_a_range_hold_each_slots_prices(slots in 1i64..3000, pick in 0i64..3000) {
            let slot_len_ms = 15 * MS_PER_MINUTE;
            let schedule = TariffSchedule::new(vec![
                version(MONDAY_MS, 60, vec![band(DaysOfWeek::SATURDAY, 600, 660, 700)]),
                version(MONDAY_MS + 20 * 24 * HOUR_MS, 0, vec![band(DaysOfWeek::WEEKDAYS, 0, 30, 800)]),
            ]);
            let from_ms = MONDAY_MS + 3 * slot_len_ms;
            let to_ms = from_ms + slots * slot_len_ms;
            let found = schedule.prices_in(from_ms, to_ms, slot_len_ms);
            let slot_ms = from_ms + (pick % slots) * slot_len_ms;
            let expected = schedule.slot_tariff(slot_ms).map(|tariff| tariff.prices);
            prop_assert!(expected.is_some_and(|prices| found.contains(&prices)));
        }
    }
}
