//! The registry: zones, tariffs over time, accounts, devices and the reward schedule. Every input is
//! validated here with a typed error; the web API and the demo call these functions.
//!
//! Functions take a `&mut DbConnection` and block; from async code call them inside
//! `Database::run`/`Database::write`, or use [`write()`]/[`read()`], which keep the typed error.

use crate::rewards::RewardSchedule;
use crate::rules::{Tariff, ISSUER_ACCOUNT, TREASURY_ACCOUNT};
use diesel::prelude::*;
use gridex_store::schema::settlement_slots;
use gridex_store::schema::{
    accounts, devices, meter_replacements, readings, reward_schedule, tariff_bands, tariffs, zones,
};
use gridex_store::{Database, DbConnection, DbError};
use protocol::rules::{nameplate_allowance_wh, slot_len_ms_within_limits};
use protocol::tariff::{
    SlotPrices, TouBand, BANDS_PER_TARIFF_MAX, MINUTES_PER_DAY, UTC_OFFSET_MINUTES_MAX, UTC_OFFSET_MINUTES_MIN,
};
use protocol::{AccountId, DeviceId, MeterSerial, PricePerKwh, ZoneId};
use serde::Serialize;

/// Highest price a tariff may set: 100 currency units per kWh is far above any retail price, and
/// keeps `price × energy` of a slot far from overflowing.
pub const PRICE_PER_KWH_MAX: i64 = 100_000_000;
/// Longest display name: fits a dashboard row.
pub const DISPLAY_NAME_LEN_MAX: usize = 64;
/// Largest nameplate power: 1 MW is beyond any household or small business connection.
pub const NAMEPLATE_W_MAX: i64 = 1_000_000;
/// Longest meter replacement reference (a work order number): fits a dashboard row.
pub const REPLACEMENT_REFERENCE_LEN_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown zone `{0}`")]
    UnknownZone(String),
    #[error("zone `{0}` already exists")]
    ZoneExists(String),
    #[error("unknown account `{0}`")]
    UnknownAccount(String),
    #[error("account `{0}` already exists")]
    AccountExists(String),
    #[error("device `{0}` already exists")]
    DeviceExists(String),
    #[error("unknown device `{0}`")]
    UnknownDevice(String),
    #[error("device `{device}` already has a meter replacement at {replaced_at_ms}")]
    ReplacementExists { device: String, replaced_at_ms: i64 },
    #[error("invalid {field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("a tariff effective at {effective_from_ms} would change slot {settled_slot_ms}, which is already settled")]
    TariffInThePast { effective_from_ms: i64, settled_slot_ms: i64 },
    #[error("invalid tariff band {index}: {message}")]
    InvalidBand { index: usize, message: String },
    #[error("tariff bands {first} and {second} overlap: they share a day and a time")]
    BandsOverlap { first: usize, second: usize },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for RegistryError {
    fn from(error: diesel::result::Error) -> Self {
        RegistryError::Db(DbError::Query(error))
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid { field, message: message.into() }
}

/// What an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    Household,
    Utility,
    Treasury,
    Issuer,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Household => "household",
            AccountKind::Utility => "utility",
            AccountKind::Treasury => "treasury",
            AccountKind::Issuer => "issuer",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "household" => Some(AccountKind::Household),
            "utility" => Some(AccountKind::Utility),
            "treasury" => Some(AccountKind::Treasury),
            "issuer" => Some(AccountKind::Issuer),
            _ => None,
        }
    }
}

/// The utility account of a zone: `utility:<zone>`.
pub fn utility_account_for(zone: &ZoneId) -> String {
    format!("utility:{zone}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Zone {
    pub zone_id: ZoneId,
    pub name: String,
    pub slot_len_ms: i64,
    pub utility_account: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub account_id: String,
    pub kind: AccountKind,
    pub display_name: String,
    pub zone_id: Option<String>,
    pub created_ms: i64,
}

/// What a device meters (one type for the registry, the API and the gateway: `protocol`).
pub use protocol::DeviceRole;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub device_id: DeviceId,
    pub account_id: AccountId,
    pub zone_id: ZoneId,
    pub meter_serial: MeterSerial,
    pub nameplate_w: i64,
    pub registered_ms: i64,
    pub role: DeviceRole,
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    let length = name.chars().count();
    if length == 0 || length > DISPLAY_NAME_LEN_MAX || name.chars().any(char::is_control) {
        return Err(invalid("name", format!("1 to {DISPLAY_NAME_LEN_MAX} printable characters")));
    }
    Ok(())
}

type ZoneRow = (String, String, i64, String, i64);

fn zone_from_row((zone_id, name, slot_len_ms, utility_account, created_ms): ZoneRow) -> Result<Zone, RegistryError> {
    let zone_id = ZoneId::parse(&zone_id).map_err(|error| invalid("zone_id", error.to_string()))?;
    Ok(Zone { zone_id, name, slot_len_ms, utility_account, created_ms })
}

/// The zone, if registered.
pub fn zone(conn: &mut DbConnection, zone: &ZoneId) -> Result<Option<Zone>, RegistryError> {
    let row: Option<ZoneRow> = zones::table
        .filter(zones::zone_id.eq(zone.as_str()))
        .select((zones::zone_id, zones::name, zones::slot_len_ms, zones::utility_account, zones::created_ms))
        .first(conn)
        .optional()?;
    row.map(zone_from_row).transpose()
}

/// Every zone, by id.
pub fn list_zones(conn: &mut DbConnection) -> Result<Vec<Zone>, RegistryError> {
    let rows: Vec<ZoneRow> = zones::table
        .order(zones::zone_id)
        .select((zones::zone_id, zones::name, zones::slot_len_ms, zones::utility_account, zones::created_ms))
        .load(conn)?;
    rows.into_iter().map(zone_from_row).collect()
}

/// Zones by id after the zone `after` (keyset paging: the previous page's last id), at most `limit`.
pub fn zones_page(conn: &mut DbConnection, after: Option<&ZoneId>, limit: i64) -> Result<Vec<Zone>, RegistryError> {
    let mut query = zones::table.into_boxed();
    if let Some(after) = after {
        query = query.filter(zones::zone_id.gt(after.as_str().to_owned()));
    }
    let rows: Vec<ZoneRow> = query
        .order(zones::zone_id)
        .limit(limit)
        .select((zones::zone_id, zones::name, zones::slot_len_ms, zones::utility_account, zones::created_ms))
        .load(conn)?;
    rows.into_iter().map(zone_from_row).collect()
}

/// Creates a zone with its utility account (`utility:<zone>` unless named) and the system accounts.
/// Its first slot to settle is the one containing `now_ms`.
pub fn create_zone(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    name: &str,
    slot_len_ms: i64,
    utility_account: Option<&str>,
    now_ms: i64,
) -> Result<Zone, RegistryError> {
    check_name(name)?;
    if !slot_len_ms_within_limits(slot_len_ms) || 86_400_000 % slot_len_ms != 0 {
        return Err(invalid("slot_len_ms", "between 1 minute and 1 hour, dividing a day evenly"));
    }
    let utility_account = utility_account.map_or_else(|| utility_account_for(zone_id), str::to_owned);
    if !utility_account.starts_with("utility:") || utility_account.len() > 64 {
        return Err(invalid("utility_account", "`utility:<name>`, at most 64 characters"));
    }
    if self::zone(conn, zone_id)?.is_some() {
        return Err(RegistryError::ZoneExists(zone_id.to_string()));
    }
    diesel::insert_into(zones::table)
        .values((
            zones::zone_id.eq(zone_id.as_str()),
            zones::name.eq(name),
            zones::slot_len_ms.eq(slot_len_ms),
            zones::utility_account.eq(&utility_account),
            zones::created_ms.eq(now_ms),
        ))
        .execute(conn)?;
    insert_account(conn, &utility_account, AccountKind::Utility, &format!("Utility of {name}"), Some(zone_id), now_ms)?;
    ensure_system_accounts(conn, now_ms)?;
    Ok(Zone { zone_id: zone_id.clone(), name: name.to_owned(), slot_len_ms, utility_account, created_ms: now_ms })
}

/// Inserts the account unless `id` is taken; whether it did. The one place an account row is written.
fn insert_account(
    conn: &mut DbConnection,
    id: &str,
    kind: AccountKind,
    display_name: &str,
    zone: Option<&ZoneId>,
    now_ms: i64,
) -> Result<bool, RegistryError> {
    let taken: i64 = accounts::table.filter(accounts::account_id.eq(id)).count().get_result(conn)?;
    if taken > 0 {
        return Ok(false);
    }
    diesel::insert_into(accounts::table)
        .values((
            accounts::account_id.eq(id),
            accounts::kind.eq(kind.as_str()),
            accounts::display_name.eq(display_name),
            accounts::zone_id.eq(zone.map(ZoneId::as_str)),
            accounts::created_ms.eq(now_ms),
        ))
        .execute(conn)?;
    Ok(true)
}

/// Makes sure `treasury` and `issuer` exist.
pub fn ensure_system_accounts(conn: &mut DbConnection, now_ms: i64) -> Result<(), RegistryError> {
    insert_account(conn, TREASURY_ACCOUNT, AccountKind::Treasury, "Protocol treasury", None, now_ms)?;
    insert_account(conn, ISSUER_ACCOUNT, AccountKind::Issuer, "GRID issuer", None, now_ms)?;
    Ok(())
}

fn check_price(field: &'static str, price: PricePerKwh) -> Result<(), RegistryError> {
    if !(0..=PRICE_PER_KWH_MAX).contains(&price.0) {
        return Err(invalid(field, format!("0 to {PRICE_PER_KWH_MAX} micro-units per kWh")));
    }
    Ok(())
}

/// Time-of-use bands of a tariff version (see `protocol::tariff`): none means flat prices only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeOfUse {
    /// Local time of the bands: this fixed offset from UTC (no daylight-saving rule).
    pub utc_offset_minutes: i32,
    pub bands: Vec<TouBand>,
}

/// Sets the zone's flat tariff from `tariff.effective_from_ms` on (replacing one at the same time).
/// A tariff may not take effect inside or before a slot that is already settled.
pub fn set_tariff(conn: &mut DbConnection, zone_id: &ZoneId, tariff: &Tariff) -> Result<(), RegistryError> {
    set_time_of_use_tariff(conn, zone_id, tariff, &TimeOfUse::default())
}

/// Checks one set of prices: each in range, and feed-in at most retail (the gap rule's proof that
/// withholding never pays rests on it, `rules` "Gaps").
fn check_prices(prices: &SlotPrices) -> Result<(), &'static str> {
    let in_range = |price: PricePerKwh| (0..=PRICE_PER_KWH_MAX).contains(&price.0);
    if !in_range(prices.retail_price_per_kwh)
        || !in_range(prices.feed_in_price_per_kwh)
        || !in_range(prices.grid_fee_per_kwh)
    {
        return Err("prices are 0 to 100000000 micro-units per kWh");
    }
    if prices.feed_in_price_per_kwh > prices.retail_price_per_kwh {
        return Err("the feed-in price may not exceed the retail price");
    }
    Ok(())
}

/// Checks time-of-use bands: at most [`BANDS_PER_TARIFF_MAX`], each with days, `start_minute <
/// end_minute <= 1440` and valid prices, no two sharing a day and a minute.
pub fn check_time_of_use(time_of_use: &TimeOfUse) -> Result<(), RegistryError> {
    if !(UTC_OFFSET_MINUTES_MIN..=UTC_OFFSET_MINUTES_MAX).contains(&time_of_use.utc_offset_minutes) {
        return Err(invalid("utc_offset_minutes", "-720 to 840 minutes"));
    }
    if time_of_use.bands.len() > BANDS_PER_TARIFF_MAX {
        return Err(invalid("bands", format!("at most {BANDS_PER_TARIFF_MAX}")));
    }
    let band_error = |index: usize, message: &str| RegistryError::InvalidBand { index, message: message.to_owned() };
    for (index, band) in time_of_use.bands.iter().enumerate() {
        if !band.days.is_valid() {
            return Err(band_error(index, "days must name at least one day (bits 0..6, Monday..Sunday)"));
        }
        if band.end_minute > MINUTES_PER_DAY {
            return Err(band_error(index, "end_minute is at most 1440"));
        }
        if band.start_minute >= band.end_minute {
            return Err(band_error(index, "start_minute must be before end_minute"));
        }
        check_prices(&band.prices).map_err(|message| band_error(index, message))?;
    }
    for (second, band) in time_of_use.bands.iter().enumerate() {
        if let Some(first) = time_of_use.bands[..second].iter().position(|earlier| earlier.overlaps(band)) {
            return Err(RegistryError::BandsOverlap { first, second });
        }
    }
    Ok(())
}

/// Sets the zone's tariff from `tariff.effective_from_ms` on (replacing one at the same time, bands
/// included) with its flat prices as the default and `time_of_use`'s bands. A tariff may not take
/// effect inside or before a slot that is already settled.
pub fn set_time_of_use_tariff(
    conn: &mut DbConnection,
    zone_id: &ZoneId,
    tariff: &Tariff,
    time_of_use: &TimeOfUse,
) -> Result<(), RegistryError> {
    check_price("retail_price_per_kwh", tariff.retail_price_per_kwh)?;
    check_price("feed_in_price_per_kwh", tariff.feed_in_price_per_kwh)?;
    check_price("grid_fee_per_kwh", tariff.grid_fee_per_kwh)?;
    if tariff.feed_in_price_per_kwh > tariff.retail_price_per_kwh {
        return Err(invalid("feed_in_price_per_kwh", "at most the retail price"));
    }
    check_time_of_use(time_of_use)?;
    if !(0..=crate::rules::BPS_PER_UNIT).contains(&tariff.protocol_fee_bps) {
        return Err(invalid("protocol_fee_bps", "0 to 10000"));
    }
    if tariff.effective_from_ms < 0 {
        return Err(invalid("effective_from_ms", "a unix time in milliseconds"));
    }
    let zone = self::zone(conn, zone_id)?.ok_or_else(|| RegistryError::UnknownZone(zone_id.to_string()))?;
    let last_settled: Option<i64> = settlement_slots::table
        .filter(settlement_slots::zone_id.eq(zone_id.as_str()))
        .select(diesel::dsl::max(settlement_slots::slot_start_ms))
        .first(conn)?;
    if let Some(settled_slot_ms) = last_settled {
        if tariff.effective_from_ms < settled_slot_ms + zone.slot_len_ms {
            return Err(RegistryError::TariffInThePast {
                effective_from_ms: tariff.effective_from_ms,
                settled_slot_ms,
            });
        }
    }
    // One transaction: a version and its bands are replaced together or not at all.
    conn.transaction(|conn| {
        diesel::delete(
            tariff_bands::table
                .filter(tariff_bands::zone_id.eq(zone_id.as_str()))
                .filter(tariff_bands::effective_from_ms.eq(tariff.effective_from_ms)),
        )
        .execute(conn)?;
        diesel::delete(
            tariffs::table
                .filter(tariffs::zone_id.eq(zone_id.as_str()))
                .filter(tariffs::effective_from_ms.eq(tariff.effective_from_ms)),
        )
        .execute(conn)?;
        diesel::insert_into(tariffs::table)
            .values((
                tariffs::zone_id.eq(zone_id.as_str()),
                tariffs::effective_from_ms.eq(tariff.effective_from_ms),
                tariffs::retail_price_per_kwh.eq(tariff.retail_price_per_kwh.0),
                tariffs::feed_in_price_per_kwh.eq(tariff.feed_in_price_per_kwh.0),
                tariffs::grid_fee_per_kwh.eq(tariff.grid_fee_per_kwh.0),
                tariffs::protocol_fee_bps.eq(tariff.protocol_fee_bps),
                tariffs::utc_offset_minutes.eq(i64::from(time_of_use.utc_offset_minutes)),
            ))
            .execute(conn)?;
        for (position, band) in time_of_use.bands.iter().enumerate() {
            diesel::insert_into(tariff_bands::table)
                .values((
                    tariff_bands::zone_id.eq(zone_id.as_str()),
                    tariff_bands::effective_from_ms.eq(tariff.effective_from_ms),
                    // At most BANDS_PER_TARIFF_MAX (checked above): fits.
                    tariff_bands::position.eq(position as i64),
                    tariff_bands::days_mask.eq(i64::from(band.days.0)),
                    tariff_bands::start_minute.eq(i64::from(band.start_minute)),
                    tariff_bands::end_minute.eq(i64::from(band.end_minute)),
                    tariff_bands::retail_price_per_kwh.eq(band.prices.retail_price_per_kwh.0),
                    tariff_bands::feed_in_price_per_kwh.eq(band.prices.feed_in_price_per_kwh.0),
                    tariff_bands::grid_fee_per_kwh.eq(band.prices.grid_fee_per_kwh.0),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// A tariff's flat prices as stored (its bands: `gridex_store::tariff`).
#[derive(Queryable, Selectable)]
#[diesel(table_name = tariffs)]
struct TariffRow {
    effective_from_ms: i64,
    retail_price_per_kwh: i64,
    feed_in_price_per_kwh: i64,
    grid_fee_per_kwh: i64,
    protocol_fee_bps: i64,
}

impl From<TariffRow> for Tariff {
    fn from(row: TariffRow) -> Tariff {
        Tariff {
            effective_from_ms: row.effective_from_ms,
            retail_price_per_kwh: PricePerKwh(row.retail_price_per_kwh),
            feed_in_price_per_kwh: PricePerKwh(row.feed_in_price_per_kwh),
            grid_fee_per_kwh: PricePerKwh(row.grid_fee_per_kwh),
            protocol_fee_bps: row.protocol_fee_bps,
        }
    }
}

/// The tariff in force at `at_ms` (the latest one effective at or before it), its flat prices only:
/// a slot's prices, bands included, are `gridex_store::tariff::tariff_for_slot`'s.
pub fn tariff_at(conn: &mut DbConnection, zone_id: &ZoneId, at_ms: i64) -> Result<Option<Tariff>, RegistryError> {
    let row: Option<TariffRow> = tariffs::table
        .filter(tariffs::zone_id.eq(zone_id.as_str()))
        .filter(tariffs::effective_from_ms.le(at_ms))
        .order(tariffs::effective_from_ms.desc())
        .select(TariffRow::as_select())
        .first(conn)
        .optional()?;
    Ok(row.map(Tariff::from))
}

/// Every tariff of the zone, oldest first, flat prices only (bands: `gridex_store::tariff::schedule`).
pub fn tariffs(conn: &mut DbConnection, zone_id: &ZoneId) -> Result<Vec<Tariff>, RegistryError> {
    let rows: Vec<TariffRow> = tariffs::table
        .filter(tariffs::zone_id.eq(zone_id.as_str()))
        .order(tariffs::effective_from_ms)
        .select(TariffRow::as_select())
        .load(conn)?;
    Ok(rows.into_iter().map(Tariff::from).collect())
}

/// Registers an account. Households are named by their key (64 hex digits); a utility must be
/// `utility:<zone>` of an existing zone; `treasury` and `issuer` have those names.
pub fn register_account(
    conn: &mut DbConnection,
    id: &str,
    kind: AccountKind,
    display_name: &str,
    zone_id: Option<&ZoneId>,
    now_ms: i64,
) -> Result<Account, RegistryError> {
    check_name(display_name)?;
    let valid_id = match kind {
        // A household signs with this key: refuse one that could never pass PROTOCOL.md §2.
        AccountKind::Household => AccountId::parse(id).is_ok_and(|id| protocol::wire::verifying_key(id.0).is_ok()),
        AccountKind::Utility => zone_id.is_some_and(|zone| id == utility_account_for(zone)),
        AccountKind::Treasury => id == TREASURY_ACCOUNT,
        AccountKind::Issuer => id == ISSUER_ACCOUNT,
    };
    if !valid_id {
        return Err(invalid("account_id", format!("not a valid id for a {} account", kind.as_str())));
    }
    if let Some(zone_id) = zone_id {
        if self::zone(conn, zone_id)?.is_none() {
            return Err(RegistryError::UnknownZone(zone_id.to_string()));
        }
    }
    if !insert_account(conn, id, kind, display_name, zone_id, now_ms)? {
        return Err(RegistryError::AccountExists(id.to_owned()));
    }
    Ok(Account {
        account_id: id.to_owned(),
        kind,
        display_name: display_name.to_owned(),
        zone_id: zone_id.map(ZoneId::to_string),
        created_ms: now_ms,
    })
}

/// The account, if registered.
pub fn account(conn: &mut DbConnection, id: &str) -> Result<Option<Account>, RegistryError> {
    let row: Option<(String, String, String, Option<String>, i64)> = accounts::table
        .filter(accounts::account_id.eq(id))
        .select((accounts::account_id, accounts::kind, accounts::display_name, accounts::zone_id, accounts::created_ms))
        .first(conn)
        .optional()?;
    row.map(|(account_id, kind, display_name, zone_id, created_ms)| {
        let kind = AccountKind::parse(&kind).ok_or_else(|| invalid("kind", kind.clone()))?;
        Ok(Account { account_id, kind, display_name, zone_id, created_ms })
    })
    .transpose()
}

/// Registers the grid meter of a household account in a zone ([`register_device_with_role`] with
/// [`DeviceRole::Grid`]).
pub fn register_device(
    conn: &mut DbConnection,
    device_id: &DeviceId,
    account_id: &AccountId,
    zone_id: &ZoneId,
    meter_serial: &MeterSerial,
    nameplate_w: i64,
    now_ms: i64,
) -> Result<Device, RegistryError> {
    let new = NewDevice { device_id, account_id, zone_id, meter_serial, nameplate_w, role: DeviceRole::Grid };
    register_device_with_role(conn, &new, now_ms)
}

/// A device to register ([`register_device_with_role`]).
#[derive(Debug, Clone, Copy)]
pub struct NewDevice<'a> {
    pub device_id: &'a DeviceId,
    pub account_id: &'a AccountId,
    pub zone_id: &'a ZoneId,
    pub meter_serial: &'a MeterSerial,
    pub nameplate_w: i64,
    pub role: DeviceRole,
}

/// Registers a metering device of a household account in a zone; the account must be of the same
/// zone (checked first, so a device offered for another zone's account is refused as `zone`). An
/// account has at most one grid meter: a second one would bill its household's energy twice (an
/// account belongs to one zone, so this is also "one per account and zone").
pub fn register_device_with_role(
    conn: &mut DbConnection,
    new: &NewDevice<'_>,
    now_ms: i64,
) -> Result<Device, RegistryError> {
    let NewDevice { device_id, account_id, zone_id, meter_serial, nameplate_w, role } = *new;
    if let Some(owner) = account(conn, &account_id.to_hex())? {
        if owner.zone_id.as_deref() != Some(zone_id.as_str()) {
            return Err(invalid("zone", "the account belongs to another zone"));
        }
    }
    if !(1..=NAMEPLATE_W_MAX).contains(&nameplate_w) {
        return Err(invalid("nameplate_w", format!("1 to {NAMEPLATE_W_MAX} W")));
    }
    protocol::wire::verifying_key(device_id.0).map_err(|error| invalid("device_id", error.detail))?;
    if self::zone(conn, zone_id)?.is_none() {
        return Err(RegistryError::UnknownZone(zone_id.to_string()));
    }
    match account(conn, &account_id.to_hex())? {
        Some(account) if account.kind == AccountKind::Household => {}
        Some(_) => return Err(invalid("account_id", "devices belong to household accounts")),
        None => return Err(RegistryError::UnknownAccount(account_id.to_hex())),
    }
    let exists: i64 = devices::table.filter(devices::device_id.eq(device_id.to_hex())).count().get_result(conn)?;
    if exists > 0 {
        return Err(RegistryError::DeviceExists(device_id.to_hex()));
    }
    if role == DeviceRole::Grid {
        let grid_meters: i64 = devices::table
            .filter(devices::account_id.eq(account_id.to_hex()))
            .filter(devices::role.eq(DeviceRole::Grid.as_str()))
            .count()
            .get_result(conn)?;
        if grid_meters > 0 {
            return Err(invalid(
                "role",
                "the account already has a grid meter; register this one as pv, battery or submeter",
            ));
        }
    }
    diesel::insert_into(devices::table)
        .values((
            devices::device_id.eq(device_id.to_hex()),
            devices::account_id.eq(account_id.to_hex()),
            devices::zone_id.eq(zone_id.as_str()),
            devices::meter_serial.eq(meter_serial.as_str()),
            devices::nameplate_w.eq(nameplate_w),
            devices::registered_ms.eq(now_ms),
            devices::role.eq(role.as_str()),
        ))
        .execute(conn)?;
    Ok(Device {
        device_id: *device_id,
        account_id: *account_id,
        zone_id: zone_id.clone(),
        meter_serial: meter_serial.clone(),
        nameplate_w,
        registered_ms: now_ms,
        role,
    })
}

/// The device's role, if it is registered.
pub fn device_role(conn: &mut DbConnection, device_id: &DeviceId) -> Result<Option<DeviceRole>, RegistryError> {
    let role: Option<String> = devices::table.find(device_id.to_hex()).select(devices::role).first(conn).optional()?;
    role.map(|role| DeviceRole::parse(&role).ok_or_else(|| invalid("role", role))).transpose()
}

/// The devices of an account (their ids, 64 hex digits).
pub fn device_ids_of_account(conn: &mut DbConnection, account_id: &str) -> Result<Vec<String>, DbError> {
    Ok(devices::table.filter(devices::account_id.eq(account_id)).select(devices::device_id).load(conn)?)
}

/// The devices of an account with `role` (their ids, 64 hex digits).
pub fn device_ids_of_account_with_role(
    conn: &mut DbConnection,
    account_id: &str,
    role: DeviceRole,
) -> Result<Vec<String>, DbError> {
    Ok(devices::table
        .filter(devices::account_id.eq(account_id))
        .filter(devices::role.eq(role.as_str()))
        .select(devices::device_id)
        .load(conn)?)
}

/// The devices registered in a zone (their ids, 64 hex digits).
pub fn device_ids_in_zone(conn: &mut DbConnection, zone_id: &ZoneId) -> Result<Vec<String>, DbError> {
    Ok(devices::table.filter(devices::zone_id.eq(zone_id.as_str())).select(devices::device_id).load(conn)?)
}

/// A registered device as stored: device id, account id, meter serial, registered_ms, role (as
/// stored: one of [`DeviceRole::as_str`], the table's CHECK).
pub type DeviceListing = (String, String, String, i64, String);

/// Every device registered in a zone, as stored.
pub fn zone_devices(conn: &mut DbConnection, zone_id: &ZoneId) -> Result<Vec<DeviceListing>, DbError> {
    Ok(devices::table
        .filter(devices::zone_id.eq(zone_id.as_str()))
        .select((devices::device_id, devices::account_id, devices::meter_serial, devices::registered_ms, devices::role))
        .load(conn)?)
}

/// The household accounts registered in a zone (their ids, 64 hex digits), by id.
pub fn zone_accounts(conn: &mut DbConnection, zone_id: &ZoneId) -> Result<Vec<String>, DbError> {
    Ok(accounts::table
        .filter(accounts::zone_id.eq(zone_id.as_str()))
        .filter(accounts::kind.eq(AccountKind::Household.as_str()))
        .order(accounts::account_id)
        .select(accounts::account_id)
        .load(conn)?)
}

/// Sets the (single, global) reward schedule.
pub fn set_reward_schedule(conn: &mut DbConnection, schedule: &RewardSchedule) -> Result<(), RegistryError> {
    if schedule.epoch_len_ms <= 0 {
        return Err(invalid("epoch_len_ms", "must be positive"));
    }
    if schedule.halving_epochs <= 0 {
        return Err(invalid("halving_epochs", "must be positive"));
    }
    if schedule.initial_emission_per_epoch < 0 || schedule.max_supply < 0 || schedule.genesis_ms < 0 {
        return Err(invalid("reward_schedule", "amounts and genesis must not be negative"));
    }
    diesel::delete(reward_schedule::table).execute(conn)?;
    diesel::insert_into(reward_schedule::table)
        .values((
            reward_schedule::id.eq(1_i64),
            reward_schedule::genesis_ms.eq(schedule.genesis_ms),
            reward_schedule::epoch_len_ms.eq(schedule.epoch_len_ms),
            reward_schedule::initial_emission_per_epoch.eq(schedule.initial_emission_per_epoch),
            reward_schedule::halving_epochs.eq(schedule.halving_epochs),
            reward_schedule::max_supply.eq(schedule.max_supply),
        ))
        .execute(conn)?;
    Ok(())
}

/// The reward schedule, if one is set (without one, no GRID is emitted).
pub fn reward_schedule(conn: &mut DbConnection) -> Result<Option<RewardSchedule>, RegistryError> {
    let row: Option<(i64, i64, i64, i64, i64)> = reward_schedule::table
        .select((
            reward_schedule::genesis_ms,
            reward_schedule::epoch_len_ms,
            reward_schedule::initial_emission_per_epoch,
            reward_schedule::halving_epochs,
            reward_schedule::max_supply,
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(|(genesis_ms, epoch_len_ms, initial_emission_per_epoch, halving_epochs, max_supply)| RewardSchedule {
        genesis_ms,
        epoch_len_ms,
        initial_emission_per_epoch,
        halving_epochs,
        max_supply,
    }))
}

/// Runs `work` in one write transaction from async code, keeping its typed error (the work is rolled
/// back when it fails).
pub async fn write<T, E, F>(db: &Database, work: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<diesel::result::Error> + From<DbError> + Send + 'static,
    F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
{
    db.write(move |conn| Ok(conn.transaction(work))).await?
}

/// Runs a blocking read from async code on the blocking pool, keeping its typed error.
pub async fn read<T, E, F>(db: &Database, work: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
    F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
{
    db.run(move |conn| Ok(work(conn))).await?
}

/// A meter's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MeterCounters {
    pub import_wh: i64,
    pub export_wh: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv_wh: Option<i64>,
}

impl MeterCounters {
    fn non_negative(&self) -> bool {
        self.import_wh >= 0 && self.export_wh >= 0 && self.pv_wh.is_none_or(|pv| pv >= 0)
    }
}

/// A meter replacement: at `replaced_at_ms` the old meter stopped at `old` and the new one
/// (`new_meter_serial`) started at `new`. The exchange accepts a device's readings after it only
/// when they continue from `new`; settlement counts energy up to `old` and from `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterReplacement {
    pub device_id: DeviceId,
    pub replaced_at_ms: i64,
    pub old: MeterCounters,
    pub new: MeterCounters,
    pub new_meter_serial: MeterSerial,
    /// The utility's reference for the swap (a work order).
    pub reference: String,
    pub registered_ms: i64,
}

/// The device's last accepted reading: its time and counters.
fn last_accepted(conn: &mut DbConnection, device_id: &str) -> Result<Option<(i64, MeterCounters)>, RegistryError> {
    let row: Option<(i64, i64, i64, Option<i64>)> = readings::table
        .filter(readings::device_id.eq(device_id))
        .order(readings::seq.desc())
        .select((readings::ts_ms, readings::import_wh, readings::export_wh, readings::pv_wh))
        .first(conn)
        .optional()?;
    Ok(row.map(|(ts_ms, import_wh, export_wh, pv_wh)| (ts_ms, MeterCounters { import_wh, export_wh, pv_wh })))
}

/// The old meter's final counters continue from the last accepted reading: none lower, and the
/// energy in between within the nameplate over the time in between (the exchange's own rule).
fn check_final_counters(
    last: &(i64, MeterCounters),
    replacement: &MeterReplacement,
    nameplate_w: i64,
) -> Result<(), RegistryError> {
    let (last_ts_ms, before) = last;
    let after = &replacement.old;
    if replacement.replaced_at_ms <= *last_ts_ms {
        return Err(invalid("replaced_at_ms", format!("must be after the last accepted reading ({last_ts_ms})")));
    }
    let pv_wh = match (before.pv_wh, after.pv_wh) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let grid_wh = i128::from(after.import_wh - before.import_wh) + i128::from(after.export_wh - before.export_wh);
    if after.import_wh < before.import_wh || after.export_wh < before.export_wh || pv_wh.is_some_and(|pv| pv < 0) {
        return Err(invalid("old", "the old meter's final counters are below its last accepted reading"));
    }
    let allowance = nameplate_allowance_wh(nameplate_w, replacement.replaced_at_ms - last_ts_ms);
    if grid_wh > allowance || pv_wh.is_some_and(|pv| i128::from(pv) > allowance) {
        return Err(invalid("old", format!("more energy since the last accepted reading than {nameplate_w} W allow")));
    }
    Ok(())
}

/// Registers a meter replacement (see [`MeterReplacement`]) and sets the device's meter serial to
/// the new one. The swap must be after the device's last accepted reading and not in the future;
/// the old meter's final counters must continue plausibly from that reading; all counters are
/// non-negative.
pub fn register_meter_replacement(
    conn: &mut DbConnection,
    replacement: &MeterReplacement,
    now_ms: i64,
) -> Result<MeterReplacement, RegistryError> {
    let device_id = replacement.device_id.to_hex();
    let nameplate_w: Option<i64> =
        devices::table.find(&device_id).select(devices::nameplate_w).first(conn).optional()?;
    let Some(nameplate_w) = nameplate_w else { return Err(RegistryError::UnknownDevice(device_id)) };
    if !replacement.old.non_negative() || !replacement.new.non_negative() {
        return Err(invalid("counters", "counters must not be negative"));
    }
    if replacement.replaced_at_ms > now_ms {
        return Err(invalid("replaced_at_ms", "must not be in the future"));
    }
    let length = replacement.reference.chars().count();
    if length == 0 || length > REPLACEMENT_REFERENCE_LEN_MAX || replacement.reference.chars().any(char::is_control) {
        return Err(invalid("reference", format!("1 to {REPLACEMENT_REFERENCE_LEN_MAX} printable characters")));
    }
    if let Some(last) = last_accepted(conn, &device_id)? {
        check_final_counters(&last, replacement, nameplate_w)?;
    }
    let exists: i64 = meter_replacements::table
        .filter(meter_replacements::device_id.eq(&device_id))
        .filter(meter_replacements::replaced_at_ms.eq(replacement.replaced_at_ms))
        .count()
        .get_result(conn)?;
    if exists > 0 {
        return Err(RegistryError::ReplacementExists { device: device_id, replaced_at_ms: replacement.replaced_at_ms });
    }
    diesel::insert_into(meter_replacements::table)
        .values((
            meter_replacements::device_id.eq(&device_id),
            meter_replacements::replaced_at_ms.eq(replacement.replaced_at_ms),
            meter_replacements::old_import_wh.eq(replacement.old.import_wh),
            meter_replacements::old_export_wh.eq(replacement.old.export_wh),
            meter_replacements::old_pv_wh.eq(replacement.old.pv_wh),
            meter_replacements::new_import_wh.eq(replacement.new.import_wh),
            meter_replacements::new_export_wh.eq(replacement.new.export_wh),
            meter_replacements::new_pv_wh.eq(replacement.new.pv_wh),
            meter_replacements::new_meter_serial.eq(replacement.new_meter_serial.as_str()),
            meter_replacements::reference.eq(&replacement.reference),
            meter_replacements::registered_ms.eq(now_ms),
        ))
        .execute(conn)?;
    diesel::update(devices::table.find(&device_id))
        .set(devices::meter_serial.eq(replacement.new_meter_serial.as_str()))
        .execute(conn)?;
    Ok(MeterReplacement { registered_ms: now_ms, ..replacement.clone() })
}
