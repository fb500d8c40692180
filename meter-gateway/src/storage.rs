//! SunSpec storage: decoding of the basic storage controls (model 124) and the lithium-ion battery
//! base model (802), and the only writes the gateway ever makes to a device: a charge/discharge power
//! setpoint on model 124 (with a revert timeout, so the inverter falls back to its own mode by itself
//! when the gateway goes silent) and releasing that control.
//!
//! Offsets are relative to the first register after a model's ID and length, taken from the official
//! SunSpec model definitions shipped in pysunspec2 1.3.7 (`sunspec2/models/json/model_124.json` and
//! `model_802.json`; their JSON offsets count ID and L, ours do not). A model shorter than its
//! definition is an error ([`StorageError::ShortModel`]), never a read past its end. Each model is read
//! whole in one request, so every value comes with the scale factor read alongside it.
//!
//! Setpoints are a zero-width charge/discharge window, the usual reading of model 124 (as Fronius
//! documents it): `StorCtl_Mod` = CHARGE | DISCHARGE, `InWRte` = `p` and `OutWRte` = `−p`, where `p`
//! is the setpoint in percent of `WChaMax` (positive charges): the power must be at most `InWRte` and
//! at least `−OutWRte`. A setpoint above the device's limits (`WChaMax`, 802's `WChaRteMax` /
//! `WDisChaRteMax`) or the owner's, or one the registers cannot express, is refused before anything is
//! written.

use crate::battery::BatteryMode;
use crate::modbus::{Function, ModbusClient, ModbusError};
use crate::sunspec::{int16, scaled, sunssf, uint16, uint32, Device, ModelEntry};

pub use crate::sunspec::{MODEL_LITHIUM_ION, MODEL_STORAGE_BASIC};

/// Model 124 (basic storage controls), length 24.
pub const S124_LEN: u16 = 24;
pub const S124_W_CHA_MAX: u16 = 0;
pub const S124_W_CHA_GRA: u16 = 1;
pub const S124_W_DIS_CHA_GRA: u16 = 2;
pub const S124_STOR_CTL_MOD: u16 = 3;
pub const S124_VA_CHA_MAX: u16 = 4;
pub const S124_MIN_RSV_PCT: u16 = 5;
pub const S124_CHA_STATE: u16 = 6;
pub const S124_STOR_AVAL: u16 = 7;
pub const S124_IN_BAT_V: u16 = 8;
pub const S124_CHA_ST: u16 = 9;
pub const S124_OUT_W_RTE: u16 = 10;
pub const S124_IN_W_RTE: u16 = 11;
pub const S124_IN_OUT_W_RTE_WIN_TMS: u16 = 12;
pub const S124_IN_OUT_W_RTE_RVRT_TMS: u16 = 13;
pub const S124_IN_OUT_W_RTE_RMP_TMS: u16 = 14;
pub const S124_CHA_GRI_SET: u16 = 15;
pub const S124_W_CHA_MAX_SF: u16 = 16;
pub const S124_W_CHA_DIS_CHA_GRA_SF: u16 = 17;
pub const S124_VA_CHA_MAX_SF: u16 = 18;
pub const S124_MIN_RSV_PCT_SF: u16 = 19;
pub const S124_CHA_STATE_SF: u16 = 20;
pub const S124_STOR_AVAL_SF: u16 = 21;
pub const S124_IN_BAT_V_SF: u16 = 22;
pub const S124_IN_OUT_W_RTE_SF: u16 = 23;
/// `StorCtl_Mod` bits: bit 0 enforces `InWRte` (charge limit), bit 1 `OutWRte` (discharge limit).
pub const STOR_CTL_CHARGE: u16 = 1 << 0;
pub const STOR_CTL_DISCHARGE: u16 = 1 << 1;

/// Model 802 (lithium-ion battery base), length 62.
pub const S802_LEN: u16 = 62;
pub const S802_AH_RTG: u16 = 0;
pub const S802_WH_RTG: u16 = 1;
pub const S802_W_CHA_RTE_MAX: u16 = 2;
pub const S802_W_DIS_CHA_RTE_MAX: u16 = 3;
pub const S802_DIS_CHA_RTE: u16 = 4;
pub const S802_SOC_MAX: u16 = 5;
pub const S802_SOC_MIN: u16 = 6;
pub const S802_SOC_RSV_MAX: u16 = 7;
pub const S802_SOC_RSV_MIN: u16 = 8;
pub const S802_SOC: u16 = 9;
pub const S802_DOD: u16 = 10;
pub const S802_SOH: u16 = 11;
pub const S802_N_CYC: u16 = 12; // uint32, two registers
pub const S802_CHA_ST: u16 = 14;
pub const S802_LOC_REM_CTL: u16 = 15;
pub const S802_TYP: u16 = 19;
pub const S802_STATE: u16 = 20;
pub const S802_V: u16 = 32;
pub const S802_A: u16 = 42;
pub const S802_W: u16 = 45;
pub const S802_AH_RTG_SF: u16 = 50;
pub const S802_WH_RTG_SF: u16 = 51;
pub const S802_W_CHA_DIS_CHA_MAX_SF: u16 = 52;
pub const S802_DIS_CHA_RTE_SF: u16 = 53;
pub const S802_SOC_SF: u16 = 54;
pub const S802_DOD_SF: u16 = 55;
pub const S802_SOH_SF: u16 = 56;
pub const S802_V_SF: u16 = 57;
pub const S802_A_SF: u16 = 59;
pub const S802_W_SF: u16 = 61;

/// `ChaSt` values (both models).
pub const CHA_ST_OFF: u16 = 1;
pub const CHA_ST_EMPTY: u16 = 2;
pub const CHA_ST_DISCHARGING: u16 = 3;
pub const CHA_ST_CHARGING: u16 = 4;
pub const CHA_ST_FULL: u16 = 5;
pub const CHA_ST_HOLDING: u16 = 6;
/// 802 `State`: connected.
pub const STATE_CONNECTED: u16 = 3;
/// 802 `Typ`: lithium-ion.
pub const TYP_LITHIUM_ION: u16 = 4;

/// Default revert timeout written with a setpoint: the inverter returns to its own mode five minutes
/// after the gateway's last write, long enough to ride out a few failed polls and short enough that a
/// dead gateway does not hold a battery at a stale setpoint for long. The gateway rewrites an active
/// setpoint every half of it.
pub const REVERT_S_DEFAULT: u16 = 300;
const PERCENT: i128 = 100;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the device has no SunSpec storage control (model 124)")]
    NoControl,
    #[error("model {id} has {len} registers, its definition needs {needed}")]
    ShortModel { id: u16, len: u16, needed: u16 },
    #[error("setpoint {requested_w} W exceeds the {limit:?} limit of {limit_w} W")]
    AboveLimit { requested_w: i64, limit_w: i64, limit: Limit },
    #[error("the device does not report {0}, so a setpoint can be neither checked nor expressed")]
    Unknown(&'static str),
    #[error("setpoint {requested_w} W cannot be expressed in the device's registers")]
    NotRepresentable { requested_w: i64 },
    #[error("revert timeout must be 1 to 65535 s (0 would hold a setpoint forever)")]
    NoRevert,
    #[error(transparent)]
    Modbus(#[from] ModbusError),
}

/// Which limit refused a setpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Model 124's `WChaMax` (the base of the percent rates, both ways).
    WChaMax,
    /// Model 802's `WChaRteMax`.
    WChaRteMax,
    /// Model 802's `WDisChaRteMax`.
    WDisChaRteMax,
    /// The owner's `[battery] power_w_max`.
    Owner,
}

/// Model 124 decoded; `None` where not implemented or its scale factor is. Percentages in per mille.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BasicStorage {
    pub w_cha_max_w: Option<i64>,
    /// Ramp rates, per mille of `WChaMax` per second.
    pub w_cha_gra_permille: Option<i64>,
    pub w_dis_cha_gra_permille: Option<i64>,
    pub stor_ctl_mod: Option<u16>,
    pub va_cha_max_va: Option<i64>,
    pub min_rsv_permille: Option<i64>,
    /// `ChaState`: state of charge.
    pub cha_state_permille: Option<i64>,
    pub stor_aval_mah: Option<i64>,
    pub in_bat_mv: Option<i64>,
    pub cha_st: Option<u16>,
    /// Raw rates and their scale factor (percent × 10^sf of `WChaMax`), as written.
    pub out_w_rte: Option<i16>,
    pub in_w_rte: Option<i16>,
    pub in_out_w_rte_sf: Option<i16>,
    pub win_tms_s: Option<u16>,
    pub rvrt_tms_s: Option<u16>,
    pub rmp_tms_s: Option<u16>,
    pub cha_gri_set: Option<u16>,
}

/// Model 802 decoded (the values the gateway uses). Percentages in per mille.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LithiumIon {
    pub ah_rtg_ah: Option<i64>,
    pub wh_rtg_wh: Option<i64>,
    pub w_cha_rte_max_w: Option<i64>,
    pub w_dis_cha_rte_max_w: Option<i64>,
    pub dis_cha_rte_permille: Option<i64>,
    pub soc_max_permille: Option<i64>,
    pub soc_min_permille: Option<i64>,
    pub soc_permille: Option<i64>,
    pub dod_permille: Option<i64>,
    pub soh_permille: Option<i64>,
    pub cycles: Option<u32>,
    pub cha_st: Option<u16>,
    pub loc_rem_ctl: Option<u16>,
    pub typ: Option<u16>,
    pub state: Option<u16>,
    pub v_mv: Option<i64>,
    pub a_ma: Option<i64>,
    /// DC power as the device reports it (the model does not fix its sign).
    pub w: Option<i64>,
}

/// What one poll learns about the battery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStatus {
    /// 802's `SoC` when present, else 124's `ChaState`; `None` outside 0..=1000.
    pub soc_permille: Option<u16>,
    /// 802's `WHRtg` (model 124 has no capacity in Wh).
    pub capacity_wh: Option<i64>,
    pub basic: Option<BasicStorage>,
    pub battery: Option<LithiumIon>,
}

fn at(words: &[u16], offset: u16) -> u16 {
    words.get(usize::from(offset)).copied().unwrap_or(crate::sunspec::NI_UINT16)
}

/// `value × 10^(sf + extra)`: `extra` = 1 turns a percentage into per mille, 3 a unit into milli-units.
fn unsigned(words: &[u16], offset: u16, sf_offset: u16, extra: i16) -> Option<i64> {
    let sf = sunssf(at(words, sf_offset))?;
    scaled(i64::from(uint16(at(words, offset))?), sf.checked_add(extra)?)
}

fn signed(words: &[u16], offset: u16, sf_offset: u16, extra: i16) -> Option<i64> {
    let sf = sunssf(at(words, sf_offset))?;
    scaled(i64::from(int16(at(words, offset))?), sf.checked_add(extra)?)
}

/// Decodes a whole model 124 body (at least [`S124_LEN`] registers).
pub fn decode_basic(words: &[u16]) -> BasicStorage {
    let u = |offset| uint16(at(words, offset));
    BasicStorage {
        w_cha_max_w: unsigned(words, S124_W_CHA_MAX, S124_W_CHA_MAX_SF, 0),
        w_cha_gra_permille: unsigned(words, S124_W_CHA_GRA, S124_W_CHA_DIS_CHA_GRA_SF, 1),
        w_dis_cha_gra_permille: unsigned(words, S124_W_DIS_CHA_GRA, S124_W_CHA_DIS_CHA_GRA_SF, 1),
        stor_ctl_mod: u(S124_STOR_CTL_MOD),
        va_cha_max_va: unsigned(words, S124_VA_CHA_MAX, S124_VA_CHA_MAX_SF, 0),
        min_rsv_permille: unsigned(words, S124_MIN_RSV_PCT, S124_MIN_RSV_PCT_SF, 1),
        cha_state_permille: unsigned(words, S124_CHA_STATE, S124_CHA_STATE_SF, 1),
        stor_aval_mah: unsigned(words, S124_STOR_AVAL, S124_STOR_AVAL_SF, 3),
        in_bat_mv: unsigned(words, S124_IN_BAT_V, S124_IN_BAT_V_SF, 3),
        cha_st: u(S124_CHA_ST),
        out_w_rte: int16(at(words, S124_OUT_W_RTE)),
        in_w_rte: int16(at(words, S124_IN_W_RTE)),
        in_out_w_rte_sf: sunssf(at(words, S124_IN_OUT_W_RTE_SF)),
        win_tms_s: u(S124_IN_OUT_W_RTE_WIN_TMS),
        rvrt_tms_s: u(S124_IN_OUT_W_RTE_RVRT_TMS),
        rmp_tms_s: u(S124_IN_OUT_W_RTE_RMP_TMS),
        cha_gri_set: u(S124_CHA_GRI_SET),
    }
}

/// Decodes a whole model 802 body (at least [`S802_LEN`] registers).
pub fn decode_lithium_ion(words: &[u16]) -> LithiumIon {
    let u = |offset| uint16(at(words, offset));
    let pct = |offset| unsigned(words, offset, S802_SOC_SF, 1);
    LithiumIon {
        ah_rtg_ah: unsigned(words, S802_AH_RTG, S802_AH_RTG_SF, 0),
        wh_rtg_wh: unsigned(words, S802_WH_RTG, S802_WH_RTG_SF, 0),
        w_cha_rte_max_w: unsigned(words, S802_W_CHA_RTE_MAX, S802_W_CHA_DIS_CHA_MAX_SF, 0),
        w_dis_cha_rte_max_w: unsigned(words, S802_W_DIS_CHA_RTE_MAX, S802_W_CHA_DIS_CHA_MAX_SF, 0),
        dis_cha_rte_permille: unsigned(words, S802_DIS_CHA_RTE, S802_DIS_CHA_RTE_SF, 1),
        soc_max_permille: pct(S802_SOC_MAX),
        soc_min_permille: pct(S802_SOC_MIN),
        soc_permille: pct(S802_SOC),
        dod_permille: unsigned(words, S802_DOD, S802_DOD_SF, 1),
        soh_permille: unsigned(words, S802_SOH, S802_SOH_SF, 1),
        cycles: uint32(at(words, S802_N_CYC), at(words, S802_N_CYC + 1)),
        cha_st: u(S802_CHA_ST),
        loc_rem_ctl: u(S802_LOC_REM_CTL),
        typ: u(S802_TYP),
        state: u(S802_STATE),
        v_mv: unsigned(words, S802_V, S802_V_SF, 3),
        a_ma: signed(words, S802_A, S802_A_SF, 3),
        w: signed(words, S802_W, S802_W_SF, 0),
    }
}

fn check_len(model: ModelEntry, needed: u16) -> Result<(), StorageError> {
    if model.len < needed {
        return Err(StorageError::ShortModel { id: model.id, len: model.len, needed });
    }
    Ok(())
}

/// Reads model 124 in one request after checking its length.
pub async fn read_basic(client: &mut ModbusClient, model: ModelEntry) -> Result<BasicStorage, StorageError> {
    check_len(model, S124_LEN)?;
    Ok(decode_basic(&client.read_block(Function::Holding, model.start, S124_LEN).await?))
}

/// Reads model 802 in one request after checking its length.
pub async fn read_lithium_ion(client: &mut ModbusClient, model: ModelEntry) -> Result<LithiumIon, StorageError> {
    check_len(model, S802_LEN)?;
    Ok(decode_lithium_ion(&client.read_block(Function::Holding, model.start, S802_LEN).await?))
}

fn soc(permille: Option<i64>) -> Option<u16> {
    permille.filter(|soc| (0..=1000).contains(soc)).and_then(|soc| u16::try_from(soc).ok())
}

/// Reads the storage models the device has; `None` when it has neither 124 nor 802.
pub async fn read_status(client: &mut ModbusClient, device: &Device) -> Result<Option<StorageStatus>, StorageError> {
    let (basic_model, battery_model) = (device.storage_basic(), device.lithium_ion());
    if basic_model.is_none() && battery_model.is_none() {
        return Ok(None);
    }
    let basic = match basic_model {
        Some(model) => Some(read_basic(client, model).await?),
        None => None,
    };
    let battery = match battery_model {
        Some(model) => Some(read_lithium_ion(client, model).await?),
        None => None,
    };
    Ok(Some(StorageStatus {
        soc_permille: soc(battery.and_then(|b| b.soc_permille))
            .or_else(|| soc(basic.and_then(|b| b.cha_state_permille))),
        capacity_wh: battery.and_then(|b| b.wh_rtg_wh).filter(|wh| *wh > 0),
        basic,
        battery,
    }))
}

/// The registers a setpoint writes, computed and checked before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetpointPlan {
    pub stor_ctl_mod: u16,
    pub in_w_rte: i16,
    pub out_w_rte: i16,
    pub revert_s: u16,
    /// The power the registers express (the request within one register step), positive charging.
    pub commanded_w: i64,
}

fn pow10(exp: i16) -> i128 {
    10i128.pow(u32::from(exp.unsigned_abs()))
}

/// Checks `power_w` (positive charges) against every known limit and expresses it in model 124's
/// registers. `owner_max_w` is the owner's own limit, both ways.
pub fn plan_setpoint(
    basic: &BasicStorage,
    battery: Option<&LithiumIon>,
    owner_max_w: Option<i64>,
    power_w: i64,
    revert_s: u16,
) -> Result<SetpointPlan, StorageError> {
    if revert_s == 0 {
        return Err(StorageError::NoRevert);
    }
    let w_cha_max = basic.w_cha_max_w.filter(|w| *w > 0).ok_or(StorageError::Unknown("WChaMax"))?;
    let sf = basic.in_out_w_rte_sf.ok_or(StorageError::Unknown("InOutWRte_SF"))?;
    let magnitude = power_w.unsigned_abs().min(i64::MAX as u64) as i64;
    let above = |limit_w: i64, limit: Limit| -> Result<(), StorageError> {
        if magnitude > limit_w {
            return Err(StorageError::AboveLimit { requested_w: power_w, limit_w, limit });
        }
        Ok(())
    };
    above(w_cha_max, Limit::WChaMax)?;
    if let Some(battery) = battery {
        if power_w > 0 {
            if let Some(limit_w) = battery.w_cha_rte_max_w {
                above(limit_w, Limit::WChaRteMax)?;
            }
        } else if let Some(limit_w) = battery.w_dis_cha_rte_max_w {
            above(limit_w, Limit::WDisChaRteMax)?;
        }
    }
    if let Some(limit_w) = owner_max_w {
        above(limit_w, Limit::Owner)?;
    }
    // raw = power / WChaMax × 100 % / 10^sf, rounded to the nearest step.
    let numerator = i128::from(power_w) * PERCENT * if sf < 0 { pow10(sf) } else { 1 };
    let denominator = i128::from(w_cha_max) * if sf > 0 { pow10(sf) } else { 1 };
    let raw = (numerator + numerator.signum() * denominator / 2) / denominator;
    let not_representable = StorageError::NotRepresentable { requested_w: power_w };
    let in_w_rte = i16::try_from(raw).map_err(|_| StorageError::NotRepresentable { requested_w: power_w })?;
    let out_w_rte = in_w_rte.checked_neg().ok_or(StorageError::NotRepresentable { requested_w: power_w })?;
    if in_w_rte == i16::MIN || out_w_rte == i16::MIN || (power_w != 0 && in_w_rte == 0) {
        return Err(not_representable);
    }
    let commanded_w = raw * denominator / (PERCENT * if sf < 0 { pow10(sf) } else { 1 });
    Ok(SetpointPlan {
        stor_ctl_mod: STOR_CTL_CHARGE | STOR_CTL_DISCHARGE,
        in_w_rte,
        out_w_rte,
        revert_s,
        commanded_w: i64::try_from(commanded_w).map_err(|_| StorageError::NotRepresentable { requested_w: power_w })?,
    })
}

/// Reads the device's limits, checks `power_w` against them (and `owner_max_w`), then writes the rates
/// with their revert timeout and enables the window. Nothing is written when a check fails. Returns
/// the plan written.
pub async fn write_setpoint(
    client: &mut ModbusClient,
    device: &Device,
    power_w: i64,
    owner_max_w: Option<i64>,
    revert_s: u16,
) -> Result<SetpointPlan, StorageError> {
    let model = device.storage_basic().ok_or(StorageError::NoControl)?;
    let basic = read_basic(client, model).await?;
    let battery = match device.lithium_ion() {
        Some(model) => Some(read_lithium_ion(client, model).await?),
        None => None,
    };
    let plan = plan_setpoint(&basic, battery.as_ref(), owner_max_w, power_w, revert_s)?;
    // Rates first, the mode last: until the mode enables them, new rates change nothing.
    let rates = [plan.out_w_rte as u16, plan.in_w_rte as u16, 0, plan.revert_s];
    client.write(model.start + S124_OUT_W_RTE, &rates).await?;
    client.write(model.start + S124_STOR_CTL_MOD, &[plan.stor_ctl_mod]).await?;
    Ok(plan)
}

/// Releases control: `StorCtl_Mod` = 0, the inverter's own mode.
pub async fn release(client: &mut ModbusClient, device: &Device) -> Result<(), StorageError> {
    let model = device.storage_basic().ok_or(StorageError::NoControl)?;
    check_len(model, S124_LEN)?;
    client.write(model.start + S124_STOR_CTL_MOD, &[0]).await?;
    Ok(())
}

/// Applies a [`BatteryMode`]: a setpoint is written (checked), self-consumption releases control.
/// Returns the commanded power of a setpoint.
pub async fn apply(
    client: &mut ModbusClient,
    device: &Device,
    mode: BatteryMode,
    owner_max_w: Option<i64>,
    revert_s: u16,
) -> Result<Option<i64>, StorageError> {
    match mode {
        BatteryMode::SelfConsumption => release(client, device).await.map(|()| None),
        BatteryMode::Setpoint { power_w } => {
            write_setpoint(client, device, power_w, owner_max_w, revert_s).await.map(|plan| Some(plan.commanded_w))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sunspec::{NI_INT16, NI_SUNSSF, NI_UINT16};

    fn basic(w_cha_max: u16, sf: i16) -> BasicStorage {
        let mut words = vec![NI_UINT16; usize::from(S124_LEN)];
        words[usize::from(S124_W_CHA_MAX)] = w_cha_max;
        words[usize::from(S124_W_CHA_MAX_SF)] = 0;
        words[usize::from(S124_IN_OUT_W_RTE_SF)] = sf as u16;
        decode_basic(&words)
    }

    #[test]
    fn a_setpoint_becomes_a_zero_width_window_in_percent_of_w_cha_max() {
        let plan = plan_setpoint(&basic(5_000, -2), None, None, 3_000, 60).expect("fits");
        assert_eq!((plan.in_w_rte, plan.out_w_rte, plan.commanded_w), (6_000, -6_000, 3_000));
        let plan = plan_setpoint(&basic(5_000, -2), None, None, -1_234, 60).expect("fits");
        assert_eq!((plan.in_w_rte, plan.out_w_rte, plan.commanded_w), (-2_468, 2_468, -1_234));
        let plan = plan_setpoint(&basic(5_000, 0), None, None, 1_234, 60).expect("fits");
        assert_eq!((plan.in_w_rte, plan.commanded_w), (25, 1_250), "one percent steps round to the nearest");
        assert_eq!(plan_setpoint(&basic(5_000, 0), None, None, 0, 60).expect("hold").in_w_rte, 0);
    }

    #[test]
    fn setpoints_beyond_limits_or_resolution_are_refused() {
        let b = basic(5_000, -2);
        assert!(matches!(
            plan_setpoint(&b, None, None, 5_001, 60),
            Err(StorageError::AboveLimit { limit: Limit::WChaMax, .. })
        ));
        let li = LithiumIon { w_cha_rte_max_w: Some(4_000), w_dis_cha_rte_max_w: Some(3_000), ..Default::default() };
        assert!(plan_setpoint(&b, Some(&li), None, 4_000, 60).is_ok());
        assert!(matches!(
            plan_setpoint(&b, Some(&li), None, -3_001, 60),
            Err(StorageError::AboveLimit { limit: Limit::WDisChaRteMax, .. })
        ));
        assert!(matches!(
            plan_setpoint(&b, Some(&li), Some(2_000), 2_500, 60),
            Err(StorageError::AboveLimit { limit: Limit::Owner, .. })
        ));
        assert!(matches!(
            plan_setpoint(&basic(5_000, 0), None, None, 20, 60),
            Err(StorageError::NotRepresentable { .. })
        ));
        // 100 % at 0.001 % steps is 100 000: beyond an int16.
        assert!(matches!(
            plan_setpoint(&basic(5_000, -3), None, None, 5_000, 60),
            Err(StorageError::NotRepresentable { .. })
        ));
        assert!(matches!(plan_setpoint(&basic(NI_UINT16, -2), None, None, 1, 60), Err(StorageError::Unknown(_))));
        assert!(matches!(
            plan_setpoint(&basic(5_000, NI_SUNSSF as i16), None, None, 1, 60),
            Err(StorageError::Unknown(_))
        ));
        assert!(matches!(plan_setpoint(&b, None, None, 100, 0), Err(StorageError::NoRevert)));
    }

    #[test]
    fn percentages_decode_to_per_mille_and_sentinels_to_none() {
        let mut words = vec![NI_UINT16; usize::from(S802_LEN)];
        words[usize::from(S802_SOC)] = 505;
        words[usize::from(S802_SOC_SF)] = (-1i16) as u16;
        words[usize::from(S802_WH_RTG)] = 1_350;
        words[usize::from(S802_WH_RTG_SF)] = 1;
        words[usize::from(S802_W)] = NI_INT16;
        words[usize::from(S802_W_SF)] = 0;
        let li = decode_lithium_ion(&words);
        assert_eq!(li.soc_permille, Some(505));
        assert_eq!(li.wh_rtg_wh, Some(13_500));
        assert_eq!(li.w, None);
        assert_eq!(li.soh_permille, None);
        assert_eq!(li.cycles, None);
    }
}
