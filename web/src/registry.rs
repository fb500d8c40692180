//! Registry writes used by the utility API, the admin subcommands and the demo: a thin adapter over
//! `settlement::registry` (which owns the rules) that maps its errors to API errors.

use crate::error::ApiError;
use crate::public::TariffView;
use crate::utility::NewDevice;
use gridex_store::DbConnection;
use protocol::{AccountId, PricePerKwh, ZoneId};
use settlement::registry::{self, AccountKind, RegistryError};

pub use settlement::rewards::RewardSchedule;

/// The HTTP answer for a registry refusal.
pub fn api_error(error: RegistryError) -> ApiError {
    match &error {
        RegistryError::ZoneExists(_)
        | RegistryError::AccountExists(_)
        | RegistryError::DeviceExists(_)
        | RegistryError::ReplacementExists { .. }
        | RegistryError::TariffInThePast { .. } => ApiError::conflict("conflict", error.to_string()),
        RegistryError::UnknownZone(_) => ApiError::not_found("unknown_zone", error.to_string()),
        RegistryError::UnknownAccount(_) => ApiError::not_found("unknown_account", error.to_string()),
        RegistryError::UnknownDevice(_) => ApiError::not_found("unknown_device", error.to_string()),
        RegistryError::Invalid { .. } => ApiError::bad_request("invalid_value", error.to_string()),
        RegistryError::Db(_) => ApiError::internal(error),
    }
}

pub fn create_zone(
    conn: &mut DbConnection,
    zone: &ZoneId,
    name: &str,
    slot_len_ms: i64,
    now_ms: i64,
) -> Result<(), RegistryError> {
    registry::create_zone(conn, zone, name, slot_len_ms, None, now_ms).map(|_| ())
}

pub fn set_tariff(conn: &mut DbConnection, zone: &ZoneId, tariff: &TariffView) -> Result<(), RegistryError> {
    registry::set_tariff(
        conn,
        zone,
        &settlement::rules::Tariff {
            effective_from_ms: tariff.effective_from_ms,
            retail_price_per_kwh: PricePerKwh(tariff.retail_price_per_kwh),
            feed_in_price_per_kwh: PricePerKwh(tariff.feed_in_price_per_kwh),
            grid_fee_per_kwh: PricePerKwh(tariff.grid_fee_per_kwh),
            protocol_fee_bps: tariff.protocol_fee_bps,
        },
    )
}

pub fn register_account(
    conn: &mut DbConnection,
    account: &AccountId,
    display_name: &str,
    zone: &ZoneId,
    now_ms: i64,
) -> Result<(), RegistryError> {
    registry::register_account(conn, &account.to_hex(), AccountKind::Household, display_name, Some(zone), now_ms)
        .map(|_| ())
}

/// Registers a device; its account must be a household of the same zone.
pub fn register_device(conn: &mut DbConnection, device: &NewDevice, now_ms: i64) -> Result<(), RegistryError> {
    if let Some(owner) = registry::account(conn, &device.account_id.to_hex())? {
        if owner.zone_id.as_deref() != Some(device.zone.as_str()) {
            return Err(RegistryError::Invalid {
                field: "zone",
                message: "the account belongs to another zone".into(),
            });
        }
    }
    registry::register_device(
        conn,
        &device.device_id,
        &device.account_id,
        &device.zone,
        &device.meter_serial,
        device.nameplate_w,
        now_ms,
    )
    .map(|_| ())
}

pub fn set_reward_schedule(conn: &mut DbConnection, schedule: &RewardSchedule) -> Result<(), RegistryError> {
    registry::set_reward_schedule(conn, schedule)
}

/// Runs a registry write in one transaction from async code.
pub async fn write<T, F>(db: &gridex_store::Database, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConnection) -> Result<T, RegistryError> + Send + 'static,
{
    registry::write(db, work).await.map_err(api_error)
}
