//! Gaps: energy that fell between settled data, billed when data resumes (issue 11).
//!
//! It owns the metering cursors (`metering_cursors`), the per-zone start of cursors
//! (`metering_zones`) and the gap lines (`gap_settlements`); all are written only here, inside the
//! close transaction of a slot (`close`), so a slot's close stays one transaction and idempotent.
//!
//! A device's metering cursor is the boundary up to which its energy is settled from metered data,
//! and its counters there. It is stored only while its household has an **open gap**: a device
//! without a row is settled up to the end of its zone's last closed slot, so a slot in which every
//! household has data writes no cursor at all (a 100,000-device close stays bound by its ledger
//! writes). In the close of slot S:
//! - a household that is "no data" in S opens a gap: each of its devices without a row gets one,
//!   at S.start with its counters there, or, if it has no reading at S.start (a device that never
//!   reported since it was registered, or since the zone's first slot with cursors), a row "from its
//!   first reading" (counters NULL); rows that exist stay, so the gap grows until data resumes;
//! - a household with data in S (every device bracketed at both boundaries) and rows settles its
//!   gap: each device's energy from its cursor (or first reading) to S.start is
//!   `metering::gap_energy` (across registered meter replacements), summed over the devices and
//!   settled by `rules::settle_gap` with what the household bought in the slots wholly in the gap
//!   (all "no data"); its rows are deleted. A device without a row was settled up to S.start (its household
//!   had data in the previous slot, or it was not registered then): no gap.
//!
//! No energy before a device's first reading is invented, and none after it is lost.

use crate::close::METERED_WH_PER_SLOT_MAX;
use crate::metering::{gap_energy, CounterSample, Replacement};
use crate::registry;
use crate::rules::{self, AccountMeter, GapInput, GapSettlement};
use crate::SettlementError;
use diesel::prelude::*;
use gridex_store::schema::{gap_settlements, metering_cursors, metering_zones};
use gridex_store::schema::{meter_replacements, readings, trades};
use gridex_store::DbConnection;
use protocol::tariff::TariffSchedule;
use protocol::{AccountId, PricePerKwh, SlotId, TimestampMs, ZoneId};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// Rows per multi-row insert or delete of cursors: 1000 rows of 6 columns stay far below both
/// backends' bound-parameter limits (SQLite 32 766, PostgreSQL 65 535).
const CURSOR_ROWS_MAX: usize = 1_000;

/// One device of the zone in the slot being closed: its counters at the slot's start.
#[derive(Debug, Clone)]
pub(crate) struct DeviceMeter {
    pub device_id: String,
    pub account: AccountId,
    pub registered_ms: i64,
    /// Counters at the slot start, where bracketed.
    pub start: Option<CounterSample>,
}

/// What a slot's close writes for gaps: the households' gap settlements (each with a transaction
/// that has entries), the cursors it opens and those it closes.
#[derive(Debug, Default)]
pub(crate) struct GapPlan {
    pub settlements: Vec<GapSettlement>,
    opened: Vec<CursorRow>,
    closed: Vec<String>,
    /// Set when this is the zone's first slot closed with cursors.
    zone_since_ms: Option<i64>,
}

/// A stored cursor: counters at `boundary_ms`, or `None`: from the first reading at or after it.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    boundary_ms: i64,
    counters: Option<CounterSample>,
}

#[derive(Debug, Insertable)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(table_name = metering_cursors)]
struct CursorRow {
    device_id: String,
    zone_id: String,
    boundary_ms: i64,
    import_wh: Option<i64>,
    export_wh: Option<i64>,
    slot_start_ms: i64,
}

/// Everything needed to plan the gaps of one slot's close.
pub(crate) struct SlotContext<'a> {
    pub zone: &'a registry::Zone,
    pub slot: SlotId,
    /// Readings received after this are not used (the slot's cutoff).
    pub cutoff_ms: i64,
}

/// Plans the gap settlements and cursor changes of the slot (see the module docs). Reads only.
pub(crate) fn plan(
    conn: &mut DbConnection,
    context: &SlotContext<'_>,
    devices: &[DeviceMeter],
    meters: &BTreeMap<AccountId, AccountMeter>,
) -> Result<GapPlan, SettlementError> {
    let zone_id = &context.zone.zone_id;
    let start_ms = context.slot.start_ms();
    let since: Option<i64> = metering_zones::table
        .filter(metering_zones::zone_id.eq(zone_id.as_str()))
        .select(metering_zones::since_ms)
        .first(conn)
        .optional()?;
    let mut plan = GapPlan { zone_since_ms: since.is_none().then_some(start_ms), ..GapPlan::default() };
    let since_ms = since.unwrap_or(start_ms);
    let cursors = load_cursors(conn, zone_id)?;

    let mut by_account: BTreeMap<AccountId, Vec<&DeviceMeter>> = BTreeMap::new();
    for device in devices {
        by_account.entry(device.account).or_default().push(device);
    }
    let mut resuming = Vec::new();
    for (account, devices) in by_account {
        if meters.get(&account).is_none_or(|meter| meter.no_data) {
            for device in devices.into_iter().filter(|device| !cursors.contains_key(&device.device_id)) {
                plan.opened.push(open_cursor(context, device, since_ms));
            }
        } else if devices.iter().any(|device| cursors.contains_key(&device.device_id)) {
            resuming.push(resume(conn, context, account, &devices, &cursors, &mut plan)?);
        }
    }
    if resuming.iter().any(|household| !household.segments.is_empty()) {
        let batch = Batch::load(conn, context, &resuming)?;
        for household in &resuming {
            if let Some(settlement) = settle_household(context, household, &batch) {
                plan.settlements.push(settlement);
            }
        }
    }
    Ok(plan)
}

/// A household with data again and open cursors: each device's gap `[from, to)`.
#[derive(Debug)]
struct Resuming {
    account: AccountId,
    /// (device id, counters at the cursor or first reading, counters at the slot start).
    segments: Vec<(String, CounterSample, CounterSample)>,
}

/// Closes the household's cursors and finds where each device's gap starts.
fn resume(
    conn: &mut DbConnection,
    context: &SlotContext<'_>,
    account: AccountId,
    devices: &[&DeviceMeter],
    cursors: &HashMap<String, Cursor>,
    plan: &mut GapPlan,
) -> Result<Resuming, SettlementError> {
    let start_ms = context.slot.start_ms();
    let mut resuming = Resuming { account, segments: Vec::new() };
    for device in devices {
        let Some(cursor) = cursors.get(&device.device_id) else {
            continue;
        };
        let Some(start) = device.start else {
            return Err(SettlementError::InvalidData(format!("device {} has data without counters", device.device_id)));
        };
        let from = match cursor.counters {
            Some(counters) => Some(counters),
            // Only devices that never reported before the gap: rare, one indexed probe each.
            None => first_reading(conn, &device.device_id, cursor.boundary_ms, start_ms, context.cutoff_ms)?,
        };
        if let Some(from) = from.filter(|from| from.ts_ms < start_ms) {
            resuming.segments.push((device.device_id.clone(), from, start));
        }
        plan.closed.push(device.device_id.clone());
    }
    Ok(resuming)
}

/// The cursor of a device whose household opens a gap in the slot: its counters at the slot start,
/// or "from its first reading" since it was registered (or since cursors exist in the zone).
fn open_cursor(context: &SlotContext<'_>, device: &DeviceMeter, since_ms: i64) -> CursorRow {
    let registered_slot_ms = SlotId::containing(TimestampMs(device.registered_ms), context.zone.slot_len_ms).start_ms();
    let (boundary_ms, import_wh, export_wh) = match device.start {
        Some(start) => (start.ts_ms, Some(start.import_wh), Some(start.export_wh)),
        None => (since_ms.max(registered_slot_ms), None, None),
    };
    CursorRow {
        device_id: device.device_id.clone(),
        zone_id: context.zone.zone_id.to_string(),
        boundary_ms,
        import_wh,
        export_wh,
        slot_start_ms: context.slot.start_ms(),
    }
}

/// A gap's (retail, feed-in) prices.
type GapPrices = (PricePerKwh, PricePerKwh);

/// What settling the slot's resuming households needs beyond their counters, read set-based once
/// per close (after an outage every household of a zone may resume in the same slot).
struct Batch {
    /// Registered replacements of the resuming devices, in time order.
    replacements: HashMap<String, Vec<Replacement>>,
    /// Purchases in the zone since the earliest gap: (buyer, slot start) → Wh.
    bought: BTreeMap<(String, i64), i64>,
    /// Every tariff version of the zone with its time-of-use bands.
    tariffs: TariffSchedule,
    /// Gap prices by `[first slot, end)`: after an outage most resuming households share their gap,
    /// and each range costs up to a week of slots per version in force to price.
    gap_prices: RefCell<HashMap<(i64, i64), Option<GapPrices>>>,
}

impl Batch {
    fn load(
        conn: &mut DbConnection,
        context: &SlotContext<'_>,
        resuming: &[Resuming],
    ) -> Result<Batch, SettlementError> {
        let zone_id = &context.zone.zone_id;
        let start_ms = context.slot.start_ms();
        let earliest_ms = resuming
            .iter()
            .flat_map(|household| household.segments.iter().map(|(_, from, _)| from.ts_ms))
            .min()
            .unwrap_or(start_ms);
        let devices: Vec<&str> = resuming
            .iter()
            .flat_map(|household| household.segments.iter().map(|(device, _, _)| device.as_str()))
            .collect();
        let mut replacements: HashMap<String, Vec<Replacement>> = HashMap::new();
        for chunk in devices.chunks(CURSOR_ROWS_MAX) {
            for (device_id, replacement) in load_replacements(conn, chunk, earliest_ms, start_ms)? {
                replacements.entry(device_id).or_default().push(replacement);
            }
        }
        let first_slot_ms = SlotId::containing(TimestampMs(earliest_ms), context.zone.slot_len_ms).start_ms();
        let rows: Vec<(String, i64, i64)> = trades::table
            .filter(trades::zone_id.eq(zone_id.as_str()))
            .filter(trades::slot_start_ms.ge(first_slot_ms))
            .filter(trades::slot_start_ms.lt(start_ms))
            .select((trades::buyer_id, trades::slot_start_ms, trades::qty_wh))
            .load(conn)?;
        let mut bought: BTreeMap<(String, i64), i64> = BTreeMap::new();
        for (buyer, slot_ms, qty_wh) in rows {
            let sum = bought.entry((buyer, slot_ms)).or_default();
            *sum = sum.saturating_add(qty_wh);
        }
        Ok(Batch {
            replacements,
            bought,
            tariffs: gridex_store::tariff::schedule(conn, zone_id)?,
            gap_prices: RefCell::new(HashMap::new()),
        })
    }

    /// The worst prices of the slots starting in `[from_ms, to_ms)` (`rules::gap_prices`), bands included.
    fn gap_prices(&self, from_ms: i64, to_ms: i64, slot_len_ms: i64) -> Option<GapPrices> {
        *self
            .gap_prices
            .borrow_mut()
            .entry((from_ms, to_ms))
            .or_insert_with(|| rules::gap_prices(&self.tariffs.prices_in(from_ms, to_ms, slot_len_ms)))
    }

    /// What `buyer` bought in slots starting in `[from_ms, to_ms)`.
    fn bought_wh(&self, buyer: &str, from_ms: i64, to_ms: i64) -> i64 {
        self.bought
            .range((buyer.to_owned(), from_ms)..(buyer.to_owned(), to_ms))
            .fold(0_i64, |sum, (_, qty_wh)| sum.saturating_add(*qty_wh))
    }
}

/// A household's gap, summed over its devices.
#[derive(Debug, Default)]
struct HouseholdGap {
    /// The earliest device cursor (or first reading) before the slot start.
    start_ms: Option<i64>,
    import_wh: i64,
    export_wh: i64,
}

impl HouseholdGap {
    /// Adds one device's gap `[from, to)`. A device whose counters ran backwards without a
    /// registered replacement, or that exported implausibly much, is credited no export.
    fn add_device(
        &mut self,
        device_id: &str,
        from: CounterSample,
        to: CounterSample,
        replacements: &[Replacement],
        slot_len_ms: i64,
    ) {
        let gap = gap_energy(from, to, replacements);
        let slots = (to.ts_ms - from.ts_ms).div_euclid(slot_len_ms) + 1;
        let export_wh_max = METERED_WH_PER_SLOT_MAX.saturating_mul(slots);
        if gap.inconsistent {
            tracing::warn!(device = device_id, from = from.ts_ms, to = to.ts_ms, "gap counters run backwards");
        }
        let credited_export_wh =
            if gap.inconsistent || gap.energy.export_wh > export_wh_max { 0 } else { gap.energy.export_wh };
        self.start_ms = Some(self.start_ms.map_or(from.ts_ms, |start| start.min(from.ts_ms)));
        // Saturating: only forged counters near i64::MAX could overflow, and they are charged anyway.
        self.import_wh = self.import_wh.saturating_add(gap.energy.import_wh);
        self.export_wh = self.export_wh.saturating_add(credited_export_wh);
    }
}

/// The gap settlement of one household (`None` when it has no gap or nothing to pay): its devices'
/// energy, what it bought in the slots wholly in the gap, at the worst prices in force.
fn settle_household(context: &SlotContext<'_>, household: &Resuming, batch: &Batch) -> Option<GapSettlement> {
    let slot_len_ms = context.zone.slot_len_ms;
    let mut gap = HouseholdGap::default();
    for (device_id, from, to) in &household.segments {
        let replacements = batch.replacements.get(device_id).map_or(&[][..], Vec::as_slice);
        gap.add_device(device_id, *from, *to, replacements, slot_len_ms);
    }
    let gap_start_ms = gap.start_ms?;
    let first_slot_ms = SlotId::containing(TimestampMs(gap_start_ms), slot_len_ms).start_ms();
    // Purchases count from the first slot wholly in the gap: a gap that starts at a device's first
    // reading, inside a slot, does not know what was used in that slot before the reading.
    let bought_from_ms = if first_slot_ms == gap_start_ms { first_slot_ms } else { first_slot_ms + slot_len_ms };
    let start_ms = context.slot.start_ms();
    // Every slot of the gap had a tariff (it was closed); none would only mean no tariff at all. The
    // prices are those of the gap's slots by the rule every slot closes by (bands included).
    let (retail, feed_in) = batch.gap_prices(first_slot_ms, start_ms, slot_len_ms)?;
    let input = GapInput {
        account: household.account,
        gap_start_ms,
        import_wh: gap.import_wh,
        export_wh: gap.export_wh,
        bought_wh: batch.bought_wh(&household.account.to_hex(), bought_from_ms, start_ms),
        retail_price_per_kwh: retail,
        feed_in_price_per_kwh: feed_in,
    };
    let settlement = rules::settle_gap(&input, context.slot, &context.zone.utility_account);
    (!settlement.tx.entries.is_empty()).then_some(settlement)
}

/// The stored cursors of the zone's devices (those with an open gap).
fn load_cursors(conn: &mut DbConnection, zone_id: &ZoneId) -> Result<HashMap<String, Cursor>, SettlementError> {
    let rows: Vec<(String, i64, Option<i64>, Option<i64>)> = metering_cursors::table
        .filter(metering_cursors::zone_id.eq(zone_id.as_str()))
        .select((
            metering_cursors::device_id,
            metering_cursors::boundary_ms,
            metering_cursors::import_wh,
            metering_cursors::export_wh,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(device_id, boundary_ms, import_wh, export_wh)| {
            let counters = import_wh.zip(export_wh).map(|(import_wh, export_wh)| CounterSample {
                ts_ms: boundary_ms,
                import_wh,
                export_wh,
            });
            (device_id, Cursor { boundary_ms, counters })
        })
        .collect())
}

/// The device's first reading with a time in `[from_ms, before_ms)` received by `cutoff_ms`.
fn first_reading(
    conn: &mut DbConnection,
    device_id: &str,
    from_ms: i64,
    before_ms: i64,
    cutoff_ms: i64,
) -> Result<Option<CounterSample>, SettlementError> {
    let row: Option<(i64, i64, i64)> = readings::table
        .filter(readings::device_id.eq(device_id))
        .filter(readings::ts_ms.ge(from_ms))
        .filter(readings::ts_ms.lt(before_ms))
        .filter(readings::received_ms.le(cutoff_ms))
        .order(readings::ts_ms)
        .select((readings::ts_ms, readings::import_wh, readings::export_wh))
        .first(conn)
        .optional()?;
    Ok(row.map(|(ts_ms, import_wh, export_wh)| CounterSample { ts_ms, import_wh, export_wh }))
}

/// The registered meter replacements of `devices` at times in `(from_ms, to_ms]`, in time order.
fn load_replacements(
    conn: &mut DbConnection,
    devices: &[&str],
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(String, Replacement)>, SettlementError> {
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = meter_replacements::table
        .filter(meter_replacements::device_id.eq_any(devices))
        .filter(meter_replacements::replaced_at_ms.gt(from_ms))
        .filter(meter_replacements::replaced_at_ms.le(to_ms))
        .order((meter_replacements::device_id, meter_replacements::replaced_at_ms))
        .select((
            meter_replacements::device_id,
            meter_replacements::replaced_at_ms,
            meter_replacements::old_import_wh,
            meter_replacements::old_export_wh,
            meter_replacements::new_import_wh,
            meter_replacements::new_export_wh,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(device_id, at_ms, old_import_wh, old_export_wh, new_import_wh, new_export_wh)| {
            (device_id, Replacement { at_ms, old_import_wh, old_export_wh, new_import_wh, new_export_wh })
        })
        .collect())
}

/// Writes the plan: gap lines (their transactions have ids from `first_tx_id` on, in order), the
/// cursors opened and closed, and the zone's start of cursors. Call inside the slot's close transaction.
pub(crate) fn write(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    slot: SlotId,
    plan: &GapPlan,
    first_tx_id: i64,
) -> Result<(), SettlementError> {
    if let Some(since_ms) = plan.zone_since_ms {
        diesel::insert_into(metering_zones::table)
            .values((metering_zones::zone_id.eq(zone_id.as_str()), metering_zones::since_ms.eq(since_ms)))
            .execute(conn)?;
    }
    for (index, settlement) in plan.settlements.iter().enumerate() {
        let input = &settlement.input;
        diesel::insert_into(gap_settlements::table)
            .values((
                gap_settlements::zone_id.eq(zone_id.as_str()),
                gap_settlements::slot_start_ms.eq(slot.start_ms()),
                gap_settlements::account_id.eq(input.account.to_hex()),
                gap_settlements::gap_start_ms.eq(input.gap_start_ms),
                gap_settlements::import_wh.eq(input.import_wh),
                gap_settlements::export_wh.eq(input.export_wh),
                gap_settlements::bought_wh.eq(input.bought_wh),
                gap_settlements::retail_price_per_kwh.eq(input.retail_price_per_kwh.0),
                gap_settlements::feed_in_price_per_kwh.eq(input.feed_in_price_per_kwh.0),
                gap_settlements::charged.eq(settlement.charged),
                gap_settlements::credited.eq(settlement.credited),
                gap_settlements::tx_id.eq(first_tx_id + index as i64),
            ))
            .execute(conn)?;
    }
    for chunk in plan.opened.chunks(CURSOR_ROWS_MAX) {
        match conn {
            DbConnection::Postgres(pg) => diesel::insert_into(metering_cursors::table).values(chunk).execute(pg)?,
            DbConnection::Sqlite(sqlite) => {
                diesel::insert_into(metering_cursors::table).values(chunk).execute(sqlite)?
            }
        };
    }
    for chunk in plan.closed.chunks(CURSOR_ROWS_MAX) {
        diesel::delete(metering_cursors::table.filter(metering_cursors::device_id.eq_any(chunk))).execute(conn)?;
    }
    Ok(())
}
