//! Home batteries, read-only: a household's battery per slot (energy charged and discharged, state
//! of charge at the slot's end, what the battery earned) and a zone's storage, from the battery
//! counters of version 2 readings (PROTOCOL.md §4.1; columns `readings.battery_*`).
//!
//! Nothing here is part of the ledger. A battery sits behind the grid meter, whose import and export
//! counters already include what the battery took from or gave to the grid, so closing a slot uses
//! only those counters for money, energy and rewards: battery counters never count as export, as
//! p2p delivery or for GRID (`tests/battery_never_double_counted.rs` holds it). What a battery
//! "earned" is a figure for the household, not a payment.
//!
//! Energy per slot follows [`metering`](crate::metering): each counter at a slot boundary is taken
//! from the readings around it (interpolated, rounded down), so the slots of a period add up to the
//! counters' difference, and a boundary without readings on both sides within
//! `reading_gap_ms_max` has no value (the slot's energy is `null`).

use crate::metering::{metered_energy, CounterSample};
use crate::registry::{self, AccountKind};
use crate::SettlementError;
use diesel::prelude::*;
use gridex_store::schema::{readings, trades};
use gridex_store::DbConnection;
use protocol::tariff::TariffSchedule;
use protocol::{AccountId, MicroMoney, PricePerKwh, SlotId, Wh, ZoneId};
use serde::Serialize;
use std::collections::BTreeMap;

/// Most slots one household battery request covers: a week of 15-minute slots. The readings of
/// that week are loaded (about 10k per device at one a minute), as `/me/readings` allows a week.
pub const BATTERY_SLOTS_MAX: i64 = 672;
/// Most slots a zone's storage covers: a day of 15-minute slots, loading every battery reading of
/// the zone in that day.
pub const STORAGE_SLOTS_MAX: i64 = 96;
/// A device counts as a battery of the zone when its latest reading with a battery is at most this
/// old: an hour, so a battery whose gateway is down for longer drops out of the zone's capacity.
pub const STORAGE_RECENT_MS: i64 = 3_600_000;

/// Which price a household faced in a slot (see [`household_battery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceBasis {
    /// The volume-weighted price of its own peer-to-peer trades (bought and sold) in the slot.
    P2p,
    /// No trade, and the home imported at least as much as it exported: the retail price.
    Retail,
    /// No trade, and the home exported more than it imported: the feed-in price.
    FeedIn,
}

/// A household's battery in one slot. Energy is summed over its devices with data in the slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatterySlot {
    pub slot: SlotId,
    /// Energy into the battery in the slot; `null` when its counter is not known at both boundaries.
    pub charge_wh: Option<Wh>,
    /// Energy out of the battery in the slot; `null` likewise.
    pub discharge_wh: Option<Wh>,
    /// State of charge at the slot's end: the latest reading at or before it (at most
    /// `reading_gap_ms_max` old); with several batteries, weighted by capacity.
    pub soc_permille: Option<u16>,
    /// Usable capacity at the slot's end (summed over the batteries).
    pub capacity_wh: Option<Wh>,
    /// The price the household faced in the slot (for p2p, the weighted mean rounded down; the
    /// earnings use the exact weighted price).
    pub price_per_kwh: Option<PricePerKwh>,
    pub price_basis: Option<PriceBasis>,
    /// (discharge − charge) valued at that price, rounded down (towards −∞) once per slot, so a
    /// sum of slots never overstates it; `null` when the energy or the price is not known.
    pub earned: Option<MicroMoney>,
}

/// A household's battery now: the latest reading with a battery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatteryNow {
    pub ts_ms: i64,
    pub soc_permille: Option<u16>,
    pub capacity_wh: Option<Wh>,
    /// soc × capacity, rounded down.
    pub stored_wh: Option<Wh>,
}

/// A household's battery over a range of slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HouseholdBattery {
    pub account: String,
    pub zone: ZoneId,
    pub slot_len_ms: i64,
    /// The latest reading with a battery (of any device of the household); `null` without one.
    pub now: Option<BatteryNow>,
    /// Slots of the range in which something of the battery is known, oldest first.
    pub slots: Vec<BatterySlot>,
    /// Totals over `slots` (of the slots where each is known).
    pub charge_wh: Wh,
    pub discharge_wh: Wh,
    pub earned: MicroMoney,
}

/// One stored reading as this module reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    ts_ms: i64,
    import_wh: i64,
    export_wh: i64,
    charge_wh: Option<i64>,
    discharge_wh: Option<i64>,
    soc_permille: Option<i64>,
    capacity_wh: Option<i64>,
}

type RowTuple = (String, i64, i64, i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

/// Readings of `device_ids` taken in `[from_ms, to_ms]`, by device, oldest first; with
/// `battery_only` only those with a battery field.
fn load_rows(
    conn: &mut DbConnection,
    device_ids: Vec<String>,
    from_ms: i64,
    to_ms: i64,
    battery_only: bool,
) -> Result<BTreeMap<String, Vec<Row>>, SettlementError> {
    let mut query = readings::table
        .filter(readings::device_id.eq_any(device_ids))
        .filter(readings::ts_ms.ge(from_ms))
        .filter(readings::ts_ms.le(to_ms))
        .into_boxed();
    if battery_only {
        query = query.filter(
            readings::battery_charge_wh
                .is_not_null()
                .or(readings::battery_discharge_wh.is_not_null())
                .or(readings::battery_soc_permille.is_not_null())
                .or(readings::battery_capacity_wh.is_not_null()),
        );
    }
    let rows: Vec<RowTuple> = query
        .order((readings::device_id, readings::ts_ms))
        .select((
            readings::device_id,
            readings::ts_ms,
            readings::import_wh,
            readings::export_wh,
            readings::battery_charge_wh,
            readings::battery_discharge_wh,
            readings::battery_soc_permille,
            readings::battery_capacity_wh,
        ))
        .load(conn)?;
    let mut by_device: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (device, ts_ms, import_wh, export_wh, charge_wh, discharge_wh, soc_permille, capacity_wh) in rows {
        by_device.entry(device).or_default().push(Row {
            ts_ms,
            import_wh,
            export_wh,
            charge_wh,
            discharge_wh,
            soc_permille,
            capacity_wh,
        });
    }
    Ok(by_device)
}

/// One counter's samples (`import_wh` carries it) from the rows that have it.
fn samples(rows: &[Row], counter: impl Fn(&Row) -> Option<i64>) -> Vec<CounterSample> {
    rows.iter()
        .filter_map(|row| counter(row).map(|wh| CounterSample { ts_ms: row.ts_ms, import_wh: wh, export_wh: 0 }))
        .collect()
}

/// One device's counter over `[start, end)`, by the metering rule.
fn counter_energy(samples: &[CounterSample], start: i64, end: i64, gap_ms_max: i64) -> Option<i64> {
    metered_energy(samples, start, end, gap_ms_max).map(|energy| energy.import_wh)
}

/// The latest value of a field at or before `at_ms`, at most `gap_ms_max` old.
fn latest_at(rows: &[Row], at_ms: i64, gap_ms_max: i64, field: impl Fn(&Row) -> Option<i64>) -> Option<i64> {
    rows.iter().rev().filter(|row| row.ts_ms <= at_ms && row.ts_ms >= at_ms.saturating_sub(gap_ms_max)).find_map(field)
}

/// Per device: its samples of each counter, and its rows (for state of charge and capacity).
struct DeviceSeries {
    rows: Vec<Row>,
    /// Whether the device is a grid meter: only those price a slot by the home's net grid energy
    /// (a PV meter's counters are behind the grid meter, `registry::DeviceRole`).
    settled: bool,
    grid: Vec<CounterSample>,
    charge: Vec<CounterSample>,
    discharge: Vec<CounterSample>,
}

impl DeviceSeries {
    fn of(rows: Vec<Row>) -> Self {
        let grid = rows
            .iter()
            .map(|row| CounterSample { ts_ms: row.ts_ms, import_wh: row.import_wh, export_wh: row.export_wh })
            .collect();
        let charge = samples(&rows, |row| row.charge_wh);
        let discharge = samples(&rows, |row| row.discharge_wh);
        Self { rows, settled: true, grid, charge, discharge }
    }
}

fn add(total: Option<i64>, part: Option<i64>) -> Option<i64> {
    match (total, part) {
        (Some(total), Some(part)) => Some(total + part),
        (total, part) => total.or(part),
    }
}

/// The batteries' state at `at_ms`, summed: (soc ‰, capacity, stored). With one battery its soc as
/// reported; with several, stored ÷ capacity of those reporting both.
fn state_at(series: &[DeviceSeries], at_ms: i64, gap_ms_max: i64) -> (Option<u16>, Option<Wh>, Option<Wh>) {
    let mut socs = Vec::new();
    let (mut capacity, mut stored, mut weighted_capacity) = (None, None, 0_i64);
    for device in series {
        let soc = latest_at(&device.rows, at_ms, gap_ms_max, |row| row.soc_permille);
        let cap = latest_at(&device.rows, at_ms, gap_ms_max, |row| row.capacity_wh);
        capacity = add(capacity, cap);
        if let Some(soc) = soc {
            socs.push(soc);
        }
        if let (Some(soc), Some(cap)) = (soc, cap) {
            // Rounded down: soc ≤ 1000, so stored ≤ capacity.
            stored = add(stored, Some(soc * cap / 1_000));
            weighted_capacity += cap;
        }
    }
    let soc = match socs.as_slice() {
        [only] => Some(*only),
        _ if weighted_capacity > 0 => stored.map(|stored| stored * 1_000 / weighted_capacity),
        _ => None,
    };
    (soc.and_then(|soc| u16::try_from(soc).ok()), capacity.map(Wh), stored.map(Wh))
}

/// Σ price × qty and Σ qty of the account's trades (both sides) per slot start.
fn trade_sums(
    conn: &mut DbConnection,
    account: &str,
    zone: &ZoneId,
    from_ms: i64,
    to_ms: i64,
) -> Result<BTreeMap<i64, (i128, i128)>, SettlementError> {
    let rows: Vec<(i64, i64, i64)> = trades::table
        .filter(trades::zone_id.eq(zone.as_str()))
        .filter(trades::slot_start_ms.ge(from_ms))
        .filter(trades::slot_start_ms.lt(to_ms))
        .filter(trades::buyer_id.eq(account).or(trades::seller_id.eq(account)))
        .select((trades::slot_start_ms, trades::price_per_kwh, trades::qty_wh))
        .load(conn)?;
    let mut sums: BTreeMap<i64, (i128, i128)> = BTreeMap::new();
    for (slot_ms, price, qty) in rows {
        let entry = sums.entry(slot_ms).or_insert((0, 0));
        entry.0 += i128::from(price) * i128::from(qty);
        entry.1 += i128::from(qty);
    }
    Ok(sums)
}

/// `numerator / denominator` µ per kWh applied to `energy_wh`, rounded down: `⌊n × e ÷ (d × 1000)⌋`.
fn value_floor(numerator: i128, denominator: i128, energy_wh: i64) -> Option<MicroMoney> {
    let divisor = denominator.checked_mul(1_000)?;
    if divisor <= 0 {
        return None;
    }
    let value = numerator.checked_mul(i128::from(energy_wh))?.div_euclid(divisor);
    i64::try_from(value).ok().map(MicroMoney)
}

/// A household's battery per slot for the slots starting in `[from_ms, to_ms)` (aligned to its zone's
/// slot length; at most the [`BATTERY_SLOTS_MAX`] latest), and its latest state. `None` when the
/// account is not a registered household with a zone.
///
/// **What the battery earned** in a slot is its discharge valued minus its charge costed at the price
/// the household faced in that slot: the volume-weighted price of its own peer-to-peer trades in the
/// slot (bought and sold together) if it traded, else the retail price when the home imported at
/// least as much as it exported over the slot (grid meter), else the feed-in price (tariffs in force
/// at the slot's start). `earned = ⌊price × (discharge_wh − charge_wh) ÷ 1000⌋` in micro-units,
/// rounded down (towards −∞) once per slot with the exact weighted price; the total is the sum of the
/// slots. A slot whose battery energy is unknown, or whose price is (no trade and no metered grid
/// energy), earns `null` and adds nothing. It is a figure for the household, never a ledger entry.
pub fn household_battery(
    conn: &mut DbConnection,
    account: &AccountId,
    from_ms: i64,
    to_ms: i64,
    reading_gap_ms_max: i64,
) -> Result<Option<HouseholdBattery>, SettlementError> {
    let account_hex = account.to_hex();
    let Some(registered) = registry::account(conn, &account_hex)? else { return Ok(None) };
    let (AccountKind::Household, Some(zone_id)) = (registered.kind, registered.zone_id) else { return Ok(None) };
    let zone_id = ZoneId::parse(&zone_id).map_err(|error| SettlementError::InvalidData(error.to_string()))?;
    let Some(zone) = registry::zone(conn, &zone_id)? else { return Ok(None) };
    let slot_len_ms = zone.slot_len_ms;
    let to_ms = to_ms.max(from_ms);
    let mut first_ms = from_ms.div_euclid(slot_len_ms) * slot_len_ms;
    let count = (to_ms - first_ms + slot_len_ms - 1).div_euclid(slot_len_ms);
    if count > BATTERY_SLOTS_MAX {
        first_ms += (count - BATTERY_SLOTS_MAX) * slot_len_ms;
    }

    let device_ids = registry::device_ids_of_account(conn, &account_hex)?;
    let rows = load_rows(
        conn,
        device_ids,
        first_ms.saturating_sub(reading_gap_ms_max),
        to_ms.saturating_add(slot_len_ms).saturating_add(reading_gap_ms_max),
        false,
    )?;
    let grid_meters: std::collections::BTreeSet<String> =
        registry::device_ids_of_account_with_role(conn, &account_hex, registry::DeviceRole::Grid)?
            .into_iter()
            .collect();
    let series: Vec<DeviceSeries> = rows
        .into_iter()
        .map(|(device, rows)| DeviceSeries { settled: grid_meters.contains(&device), ..DeviceSeries::of(rows) })
        .collect();
    let trades = trade_sums(conn, &account_hex, &zone_id, first_ms, to_ms)?;
    let tariffs = gridex_store::tariff::schedule(conn, &zone_id)?;

    let mut slots = Vec::new();
    let mut start = first_ms;
    while start < to_ms {
        let end = start + slot_len_ms;
        if let Some(row) = battery_slot(&series, start, end, reading_gap_ms_max, trades.get(&start), &tariffs) {
            slots.push(row);
        }
        start = end;
    }
    let now = latest_state(conn, &account_hex)?;
    let charge_wh = Wh(slots.iter().filter_map(|slot| slot.charge_wh).map(|wh| wh.0).sum());
    let discharge_wh = Wh(slots.iter().filter_map(|slot| slot.discharge_wh).map(|wh| wh.0).sum());
    let earned = MicroMoney(slots.iter().filter_map(|slot| slot.earned).map(|money| money.0).sum());
    Ok(Some(HouseholdBattery {
        account: account_hex,
        zone: zone_id,
        slot_len_ms,
        now,
        slots,
        charge_wh,
        discharge_wh,
        earned,
    }))
}

/// One slot of [`household_battery`]; `None` when nothing of a battery is known in it.
fn battery_slot(
    series: &[DeviceSeries],
    start: i64,
    end: i64,
    gap_ms_max: i64,
    traded: Option<&(i128, i128)>,
    tariffs: &TariffSchedule,
) -> Option<BatterySlot> {
    let (mut charge, mut discharge, mut grid_net, mut grid_known) = (None, None, 0_i64, true);
    for device in series {
        charge = add(charge, counter_energy(&device.charge, start, end, gap_ms_max));
        discharge = add(discharge, counter_energy(&device.discharge, start, end, gap_ms_max));
        if !device.settled {
            continue;
        }
        match metered_energy(&device.grid, start, end, gap_ms_max) {
            Some(energy) => grid_net += energy.import_wh - energy.export_wh,
            None => grid_known = false,
        }
    }
    let (soc_permille, capacity_wh, _) = state_at(series, end, gap_ms_max);
    if charge.is_none() && discharge.is_none() && soc_permille.is_none() && capacity_wh.is_none() {
        return None;
    }
    // The slot's prices by the rule its close used (time-of-use bands included).
    let price = match (traded, tariffs.slot_tariff(start).map(|tariff| tariff.prices)) {
        (Some(&(value, qty)), _) if qty > 0 => Some((value, qty, PriceBasis::P2p)),
        (_, Some(tariff)) if grid_known && grid_net >= 0 => {
            Some((i128::from(tariff.retail_price_per_kwh.0), 1, PriceBasis::Retail))
        }
        (_, Some(tariff)) if grid_known => Some((i128::from(tariff.feed_in_price_per_kwh.0), 1, PriceBasis::FeedIn)),
        _ => None,
    };
    let earned = match (price, charge, discharge) {
        (Some((value, qty, _)), Some(charge), Some(discharge)) => value_floor(value, qty, discharge - charge),
        _ => None,
    };
    Some(BatterySlot {
        slot: SlotId::new(start).ok()?,
        charge_wh: charge.map(Wh),
        discharge_wh: discharge.map(Wh),
        soc_permille,
        capacity_wh,
        price_per_kwh: price.and_then(|(value, qty, _)| i64::try_from(value.div_euclid(qty)).ok()).map(PricePerKwh),
        price_basis: price.map(|(_, _, basis)| basis),
        earned,
    })
}

/// The latest reading with a battery of the account's devices.
fn latest_state(conn: &mut DbConnection, account: &str) -> Result<Option<BatteryNow>, SettlementError> {
    let device_ids = registry::device_ids_of_account(conn, account)?;
    let latest = latest_battery_readings(conn, device_ids, i64::MIN)?;
    let Some(ts_ms) = latest.iter().map(|(_, row)| row.ts_ms).max() else { return Ok(None) };
    let series: Vec<DeviceSeries> = latest.into_iter().map(|(_, row)| DeviceSeries::of(vec![row])).collect();
    let (soc_permille, capacity_wh, stored_wh) = state_at(&series, ts_ms, i64::MAX);
    Ok(Some(BatteryNow { ts_ms, soc_permille, capacity_wh, stored_wh }))
}

/// Each device's latest reading with a state of charge or a capacity taken at or after `since_ms`.
fn latest_battery_readings(
    conn: &mut DbConnection,
    device_ids: Vec<String>,
    since_ms: i64,
) -> Result<Vec<(String, Row)>, SettlementError> {
    let mut latest = Vec::new();
    for device in device_ids {
        let row: Option<RowTuple> = readings::table
            .filter(readings::device_id.eq(&device))
            .filter(readings::ts_ms.ge(since_ms))
            .filter(readings::battery_soc_permille.is_not_null().or(readings::battery_capacity_wh.is_not_null()))
            .order(readings::seq.desc())
            .select((
                readings::device_id,
                readings::ts_ms,
                readings::import_wh,
                readings::export_wh,
                readings::battery_charge_wh,
                readings::battery_discharge_wh,
                readings::battery_soc_permille,
                readings::battery_capacity_wh,
            ))
            .first(conn)
            .optional()?;
        if let Some((device, ts_ms, import_wh, export_wh, charge_wh, discharge_wh, soc_permille, capacity_wh)) = row {
            let row = Row { ts_ms, import_wh, export_wh, charge_wh, discharge_wh, soc_permille, capacity_wh };
            latest.push((device, row));
        }
    }
    Ok(latest)
}

/// A zone's batteries' energy in one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageSlot {
    pub slot: SlotId,
    /// Summed over the batteries with data in the slot.
    pub charge_wh: Wh,
    pub discharge_wh: Wh,
    /// How many batteries had data in the slot.
    pub batteries: u64,
}

/// The home batteries of a zone: those whose latest reading with a battery is at most
/// [`STORAGE_RECENT_MS`] old, their total usable capacity and stored energy (soc × capacity, each
/// rounded down), and the zone's charge and discharge in its latest complete slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneStorage {
    pub zone: ZoneId,
    pub slot_len_ms: i64,
    pub at_ms: i64,
    pub batteries: u64,
    pub capacity_wh: Wh,
    pub stored_wh: Wh,
    /// stored ÷ capacity of the batteries reporting both, ‰; `null` without any.
    pub soc_permille: Option<u16>,
    /// The latest complete slots (ending at or before `at_ms`), oldest first.
    pub slots: Vec<StorageSlot>,
}

/// The zone's storage at `now_ms` with its last `slots` complete slots (at most
/// [`STORAGE_SLOTS_MAX`]). `None` for an unknown zone.
pub fn zone_storage(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    now_ms: i64,
    slots: i64,
    reading_gap_ms_max: i64,
) -> Result<Option<ZoneStorage>, SettlementError> {
    let Some(zone) = registry::zone(conn, zone_id)? else { return Ok(None) };
    let slot_len_ms = zone.slot_len_ms;
    let device_ids = registry::device_ids_in_zone(conn, zone_id)?;
    let latest = latest_battery_readings(conn, device_ids.clone(), now_ms.saturating_sub(STORAGE_RECENT_MS))?;
    let (mut capacity, mut stored, mut weighted_capacity) = (0_i64, 0_i64, 0_i64);
    for (_, row) in &latest {
        capacity += row.capacity_wh.unwrap_or(0);
        if let (Some(soc), Some(cap)) = (row.soc_permille, row.capacity_wh) {
            stored += soc * cap / 1_000;
            weighted_capacity += cap;
        }
    }
    let soc_permille =
        (weighted_capacity > 0).then(|| stored * 1_000 / weighted_capacity).and_then(|soc| u16::try_from(soc).ok());

    let end_ms = now_ms.div_euclid(slot_len_ms) * slot_len_ms;
    let first_ms = end_ms - slots.clamp(0, STORAGE_SLOTS_MAX) * slot_len_ms;
    let rows = load_rows(
        conn,
        device_ids,
        first_ms.saturating_sub(reading_gap_ms_max),
        end_ms.saturating_add(reading_gap_ms_max),
        true,
    )?;
    let series: Vec<DeviceSeries> = rows.into_values().map(DeviceSeries::of).collect();
    let mut storage_slots = Vec::new();
    let mut start = first_ms;
    while start < end_ms {
        let end = start + slot_len_ms;
        let mut slot = StorageSlot {
            slot: SlotId::new(start).map_err(|error| SettlementError::InvalidData(error.to_string()))?,
            charge_wh: Wh(0),
            discharge_wh: Wh(0),
            batteries: 0,
        };
        for device in &series {
            let charge = counter_energy(&device.charge, start, end, reading_gap_ms_max);
            let discharge = counter_energy(&device.discharge, start, end, reading_gap_ms_max);
            slot.charge_wh += Wh(charge.unwrap_or(0));
            slot.discharge_wh += Wh(discharge.unwrap_or(0));
            slot.batteries += u64::from(charge.is_some() || discharge.is_some());
        }
        storage_slots.push(slot);
        start = end;
    }
    Ok(Some(ZoneStorage {
        zone: zone_id.clone(),
        slot_len_ms,
        at_ms: now_ms,
        batteries: latest.len() as u64,
        capacity_wh: Wh(capacity),
        stored_wh: Wh(stored),
        soc_permille,
        slots: storage_slots,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts_ms: i64, charge_wh: i64, discharge_wh: i64, soc: i64, capacity_wh: i64) -> Row {
        Row {
            ts_ms,
            import_wh: 0,
            export_wh: 0,
            charge_wh: Some(charge_wh),
            discharge_wh: Some(discharge_wh),
            soc_permille: Some(soc),
            capacity_wh: Some(capacity_wh),
        }
    }

    #[test]
    fn earnings_are_rounded_down_once_with_the_exact_weighted_price() {
        // 1 000 Wh at 100 000 and 2 000 Wh at 200 001: weighted 166 667.33 µ/kWh; 3 Wh net discharge.
        let (value, qty) = (100_000 * 1_000 + 200_001 * 2_000, 3_000);
        assert_eq!(value_floor(value, qty, 3), Some(MicroMoney(500)), "⌊500.002⌋");
        assert_eq!(value_floor(value, qty, -3), Some(MicroMoney(-501)), "towards −∞");
        assert_eq!(value_floor(300_000, 1, 0), Some(MicroMoney(0)));
    }

    #[test]
    fn several_batteries_weight_their_state_of_charge_by_capacity() {
        let one = DeviceSeries::of(vec![row(0, 0, 0, 1_000, 10_000)]);
        let other = DeviceSeries::of(vec![row(0, 0, 0, 0, 5_000)]);
        assert_eq!(state_at(&[one], 0, 1), (Some(1_000), Some(Wh(10_000)), Some(Wh(10_000))));
        let one = DeviceSeries::of(vec![row(0, 0, 0, 1_000, 10_000)]);
        assert_eq!(state_at(&[one, other], 0, 1), (Some(666), Some(Wh(15_000)), Some(Wh(10_000))));
    }

    #[test]
    fn a_stale_state_of_charge_is_not_taken_for_the_slot_end() {
        let device = DeviceSeries::of(vec![row(0, 0, 0, 500, 10_000)]);
        assert_eq!(state_at(std::slice::from_ref(&device), 900_000, 900_000).0, Some(500));
        assert_eq!(state_at(&[device], 900_001, 900_000).0, None);
    }
}
