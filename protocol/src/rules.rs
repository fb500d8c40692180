//! Pure rules that the exchange (accepting readings and orders) and settlement (registering zones
//! and meter replacements) must apply identically, kept here once so neither depends on the other.
//! They are part of the contract PROTOCOL.md describes (§2 readings, the slot of an order); no I/O.

/// Shortest and longest slot a zone may use (the `zones` table's CHECK): one minute to one hour.
pub const SLOT_LEN_MS_MIN: i64 = 60_000;
pub const SLOT_LEN_MS_MAX: i64 = 3_600_000;

/// True when a slot of `slot_len_ms` is within [`SLOT_LEN_MS_MIN`]..=[`SLOT_LEN_MS_MAX`].
pub fn slot_len_ms_within_limits(slot_len_ms: i64) -> bool {
    (SLOT_LEN_MS_MIN..=SLOT_LEN_MS_MAX).contains(&slot_len_ms)
}

/// Tolerance of the nameplate check: meters round to whole Wh and clocks jitter.
pub const NAMEPLATE_TOLERANCE_PERCENT: i64 = 5;
/// Plus a fixed allowance for counter rounding at both ends of the interval.
pub const NAMEPLATE_TOLERANCE_WH: i64 = 2;

/// Milliseconds per hour, for energy = power × time.
const MS_PER_HOUR: i128 = 3_600_000;

/// The energy the nameplate allows over `elapsed_ms`, with the documented tolerance.
pub fn nameplate_allowance_wh(nameplate_w: i64, elapsed_ms: i64) -> i128 {
    let exact = i128::from(nameplate_w) * i128::from(elapsed_ms.max(0)) / MS_PER_HOUR;
    exact + exact * i128::from(NAMEPLATE_TOLERANCE_PERCENT) / 100 + i128::from(NAMEPLATE_TOLERANCE_WH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_one_minute_to_one_hour_are_within_limits() {
        assert!(slot_len_ms_within_limits(60_000));
        assert!(slot_len_ms_within_limits(3_600_000));
        assert!(!slot_len_ms_within_limits(59_999));
        assert!(!slot_len_ms_within_limits(3_600_001));
    }

    #[test]
    fn the_nameplate_allows_power_times_time_plus_the_tolerance() {
        // 3 600 W for one hour is 3 600 Wh; 5 % and 2 Wh on top.
        assert_eq!(nameplate_allowance_wh(3_600, 3_600_000), 3_600 + 180 + 2);
        assert_eq!(nameplate_allowance_wh(3_600, -5), 2);
    }
}
