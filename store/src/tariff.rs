//! Reading a zone's tariff versions with their time-of-use bands (tables `tariffs` and
//! `tariff_bands`, written by `settlement::registry`). The rule of which prices apply to a slot is
//! `protocol::tariff`'s; [`tariff_for_slot`] is the one read that the exchange's price band and
//! settlement (close, gaps, battery) share, so they cannot disagree about a slot's prices.

use crate::schema::{tariff_bands, tariffs};
use crate::{DbConnection, DbError};
use diesel::prelude::*;
use protocol::tariff::{DaysOfWeek, SlotPrices, SlotTariff, TariffSchedule, TariffVersion, TouBand};
use protocol::{PricePerKwh, ZoneId};
use std::collections::BTreeMap;

/// A tariff version as stored: its flat prices, fee and local-time offset.
#[derive(Queryable, Selectable)]
#[diesel(table_name = tariffs)]
struct VersionRow {
    effective_from_ms: i64,
    retail_price_per_kwh: i64,
    feed_in_price_per_kwh: i64,
    grid_fee_per_kwh: i64,
    protocol_fee_bps: i64,
    utc_offset_minutes: i64,
}

/// One time-of-use band of a version as stored.
#[derive(Queryable, Selectable)]
#[diesel(table_name = tariff_bands)]
struct BandRow {
    effective_from_ms: i64,
    days_mask: i64,
    start_minute: i64,
    end_minute: i64,
    retail_price_per_kwh: i64,
    feed_in_price_per_kwh: i64,
    grid_fee_per_kwh: i64,
}

fn prices(retail: i64, feed_in: i64, grid_fee: i64) -> SlotPrices {
    SlotPrices {
        retail_price_per_kwh: PricePerKwh(retail),
        feed_in_price_per_kwh: PricePerKwh(feed_in),
        grid_fee_per_kwh: PricePerKwh(grid_fee),
    }
}

fn band_from_row(row: BandRow) -> Result<TouBand, DbError> {
    // The table's checks keep these in range; a row that is not is reported, never truncated.
    let narrow = |value: i64| u16::try_from(value).map_err(|_| DbError::Invalid(format!("tariff band value {value}")));
    let days =
        u8::try_from(row.days_mask).map_err(|_| DbError::Invalid(format!("tariff band days {}", row.days_mask)))?;
    Ok(TouBand {
        days: DaysOfWeek(days),
        start_minute: narrow(row.start_minute)?,
        end_minute: narrow(row.end_minute)?,
        prices: prices(row.retail_price_per_kwh, row.feed_in_price_per_kwh, row.grid_fee_per_kwh),
    })
}

fn versions_from_rows(rows: Vec<VersionRow>, bands: Vec<BandRow>) -> Result<Vec<TariffVersion>, DbError> {
    let mut by_version: BTreeMap<i64, Vec<TouBand>> = BTreeMap::new();
    for row in bands {
        by_version.entry(row.effective_from_ms).or_default().push(band_from_row(row)?);
    }
    rows.into_iter()
        .map(|row| {
            let offset = row.utc_offset_minutes;
            let utc_offset_minutes =
                i32::try_from(offset).map_err(|_| DbError::Invalid(format!("tariff UTC offset {offset}")))?;
            Ok(TariffVersion {
                effective_from_ms: row.effective_from_ms,
                protocol_fee_bps: row.protocol_fee_bps,
                utc_offset_minutes,
                flat: prices(row.retail_price_per_kwh, row.feed_in_price_per_kwh, row.grid_fee_per_kwh),
                bands: by_version.remove(&row.effective_from_ms).unwrap_or_default(),
            })
        })
        .collect()
}

fn bands_of(conn: &mut DbConnection, zone: &ZoneId, effective: &[i64]) -> Result<Vec<BandRow>, DbError> {
    if effective.is_empty() {
        return Ok(Vec::new());
    }
    Ok(tariff_bands::table
        .filter(tariff_bands::zone_id.eq(zone.as_str()))
        .filter(tariff_bands::effective_from_ms.eq_any(effective))
        .order((tariff_bands::effective_from_ms, tariff_bands::position))
        .select(BandRow::as_select())
        .load(conn)?)
}

/// The tariff version in force at `at_ms` (the latest effective at or before it) with its bands.
pub fn version_at(conn: &mut DbConnection, zone: &ZoneId, at_ms: i64) -> Result<Option<TariffVersion>, DbError> {
    let row: Option<VersionRow> = tariffs::table
        .filter(tariffs::zone_id.eq(zone.as_str()))
        .filter(tariffs::effective_from_ms.le(at_ms))
        .order(tariffs::effective_from_ms.desc())
        .select(VersionRow::as_select())
        .first(conn)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let bands = bands_of(conn, zone, &[row.effective_from_ms])?;
    Ok(versions_from_rows(vec![row], bands)?.pop())
}

/// What applies to the slot of `zone` starting at `slot_start_ms`: the version in force at the start,
/// the band covering the start (if any) and its prices. `None` when no tariff is in force yet.
pub fn tariff_for_slot(
    conn: &mut DbConnection,
    zone: &ZoneId,
    slot_start_ms: i64,
) -> Result<Option<SlotTariff>, DbError> {
    let versions = version_at(conn, zone, slot_start_ms)?.into_iter().collect();
    Ok(TariffSchedule::new(versions).slot_tariff(slot_start_ms))
}

/// The versions of `zone` effective after `after_ms` (all when `None`), oldest first, at most `limit`,
/// each with its bands.
pub fn versions_page(
    conn: &mut DbConnection,
    zone: &ZoneId,
    after_ms: Option<i64>,
    limit: i64,
) -> Result<Vec<TariffVersion>, DbError> {
    let mut query = tariffs::table.filter(tariffs::zone_id.eq(zone.as_str())).into_boxed();
    if let Some(after_ms) = after_ms {
        query = query.filter(tariffs::effective_from_ms.gt(after_ms));
    }
    let rows: Vec<VersionRow> =
        query.order(tariffs::effective_from_ms).limit(limit).select(VersionRow::as_select()).load(conn)?;
    let effective: Vec<i64> = rows.iter().map(|row| row.effective_from_ms).collect();
    let bands = bands_of(conn, zone, &effective)?;
    versions_from_rows(rows, bands)
}

/// Every tariff version of `zone` with its bands, for settling many slots with one read (gaps, the
/// battery view): apply [`TariffSchedule::slot_tariff`] per slot, the rule [`tariff_for_slot`] applies.
pub fn schedule(conn: &mut DbConnection, zone: &ZoneId) -> Result<TariffSchedule, DbError> {
    let rows: Vec<VersionRow> = tariffs::table
        .filter(tariffs::zone_id.eq(zone.as_str()))
        .order(tariffs::effective_from_ms)
        .select(VersionRow::as_select())
        .load(conn)?;
    let bands: Vec<BandRow> = tariff_bands::table
        .filter(tariff_bands::zone_id.eq(zone.as_str()))
        .order((tariff_bands::effective_from_ms, tariff_bands::position))
        .select(BandRow::as_select())
        .load(conn)?;
    Ok(TariffSchedule::new(versions_from_rows(rows, bands)?))
}
