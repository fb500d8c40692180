//! Registry writes used by the utility API, the admin subcommands and the demo: a thin adapter over
//! `settlement::registry`, which owns every rule (including "a device's account is in the same
//! zone"); registry refusals become API errors by `From<RegistryError> for ApiError`.

use crate::error::ApiError;
use crate::public::TariffView;
use gridex_store::DbConnection;
use protocol::{AccountId, DeviceId, MeterSerial, PricePerKwh, ZoneId};
use serde::{Deserialize, Serialize};
use settlement::registry::{self, AccountKind, DeviceRole, RegistryError};

pub use settlement::rewards::RewardSchedule;

/// A device as the utility registers it (`POST /api/v1/devices`, `gridex device add`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub device_id: DeviceId,
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub account_id: AccountId,
    #[schema(value_type = String, pattern = "^[a-z0-9-]{1,32}$")]
    pub zone: ZoneId,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub meter_serial: MeterSerial,
    pub nameplate_w: i64,
}

/// A device as `POST /api/v1/devices` takes it: [`NewDevice`] and, optionally, its role (`grid`,
/// the household's connection meter, when absent).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistration {
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub device_id: DeviceId,
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub account_id: AccountId,
    #[schema(value_type = String, pattern = "^[a-z0-9-]{1,32}$")]
    pub zone: ZoneId,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub meter_serial: MeterSerial,
    pub nameplate_w: i64,
    /// What the device meters: `grid` (the household's connection meter, the default), `pv`,
    /// `battery` or `submeter`; only grid meters are settled.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(grid|pv|battery|submeter)$")]
    pub role: DeviceRole,
}

impl DeviceRegistration {
    pub fn device(&self) -> NewDevice {
        NewDevice {
            device_id: self.device_id,
            account_id: self.account_id,
            zone: self.zone.clone(),
            meter_serial: self.meter_serial.clone(),
            nameplate_w: self.nameplate_w,
        }
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

/// Creates a zone of `utility` (its utility account is `utility:<utility>`, shared by all the
/// utility's zones), as the utility API does for the key's utility.
pub fn create_utility_zone(
    conn: &mut DbConnection,
    zone: &ZoneId,
    name: &str,
    slot_len_ms: i64,
    utility: &crate::settings::UtilityName,
    now_ms: i64,
) -> Result<(), RegistryError> {
    registry::create_zone(conn, zone, name, slot_len_ms, Some(&utility.account()), now_ms).map(|_| ())
}

pub fn set_tariff(conn: &mut DbConnection, zone: &ZoneId, tariff: &TariffView) -> Result<(), RegistryError> {
    registry::set_time_of_use_tariff(
        conn,
        zone,
        &settlement::rules::Tariff {
            effective_from_ms: tariff.effective_from_ms,
            retail_price_per_kwh: PricePerKwh(tariff.retail_price_per_kwh),
            feed_in_price_per_kwh: PricePerKwh(tariff.feed_in_price_per_kwh),
            grid_fee_per_kwh: PricePerKwh(tariff.grid_fee_per_kwh),
            protocol_fee_bps: tariff.protocol_fee_bps,
        },
        &registry::TimeOfUse {
            utc_offset_minutes: tariff.utc_offset_minutes,
            bands: tariff.bands.iter().map(|band| band.band()).collect(),
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

/// Registers a household's grid meter; its account must be a household of the same zone
/// (`settlement::registry`).
pub fn register_device(conn: &mut DbConnection, device: &NewDevice, now_ms: i64) -> Result<(), RegistryError> {
    register_device_with_role(conn, device, DeviceRole::Grid, now_ms)
}

/// Registers a device with its role; an account has at most one grid meter (`settlement::registry`).
pub fn register_device_with_role(
    conn: &mut DbConnection,
    device: &NewDevice,
    role: DeviceRole,
    now_ms: i64,
) -> Result<(), RegistryError> {
    let new = registry::NewDevice {
        device_id: &device.device_id,
        account_id: &device.account_id,
        zone_id: &device.zone,
        meter_serial: &device.meter_serial,
        nameplate_w: device.nameplate_w,
        role,
    };
    registry::register_device_with_role(conn, &new, now_ms).map(|_| ())
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
    registry::write(db, work).await.map_err(ApiError::from)
}
