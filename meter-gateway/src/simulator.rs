//! A simulated home: a SunSpec device stack (common model 1, inverter 103, meter 203; or, with
//! [`HomeSpec::float_models`], the float models 113 and 213) served over
//! Modbus TCP or RTU with tokio-modbus's server, whose counters follow a day of PV production (by time
//! of day, with cloud noise) and household load, on a possibly sped-up [`SimClock`]. A home may have a
//! battery ([`crate::battery`]) behind its grid meter; then it also serves SunSpec storage models 124
//! and 802 ([`crate::storage`]) and accepts Modbus writes to model 124's control registers, which set
//! the battery's [`BatteryMode`] (and fall back to self-consumption after the written revert timeout).
//!
//! Energy is integrated in whole milliwatt-hours per step, so that each home balances exactly:
//! `pv + import + discharged = load + export + charged` over any span (and the battery's own
//! `charged − discharged = stored change + losses`). Registers show whole Wh, truncated, as a meter does.
//!
//! [`RegisterBank`] is the plain register store underneath; tests use it directly to serve arbitrary
//! registers, Modbus exceptions, or silence.

use crate::battery::{energy_mwh, Battery, BatteryCounters, BatteryMode, BatterySpec, MWH_PER_WH};
use crate::clock::SimClock;
use crate::storage::*;
use crate::sunspec::*;
use std::collections::HashMap;
use std::future::{ready, Ready};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Base address of the simulated SunSpec map.
pub const SIM_BASE: u16 = 40000;
/// Integration step: one simulated minute keeps a day's curve smooth and costs 1440 steps per day.
pub const STEP_MS: i64 = 60_000;
/// Most simulated homes in one process (ports and memory).
pub const HOMES_MAX: usize = 1_000;
const MS_PER_HOUR: f64 = 3_600_000.0;

/// How a device answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// Every request gets this Modbus exception.
    Exception(ExceptionCode),
    /// No answer at all (a dead or misaddressed device).
    Silent,
}

/// Holding and input registers by address.
#[derive(Debug, Clone)]
pub struct RegisterBank {
    pub holding: HashMap<u16, u16>,
    pub input: HashMap<u16, u16>,
    pub behaviour: Behaviour,
    /// Every write request received (address, words), accepted or not: what reached the device.
    pub writes: Vec<(u16, Vec<u16>)>,
}

impl Default for RegisterBank {
    fn default() -> Self {
        Self { holding: HashMap::new(), input: HashMap::new(), behaviour: Behaviour::Normal, writes: Vec::new() }
    }
}

impl RegisterBank {
    pub fn set_holding(&mut self, addr: u16, words: &[u16]) {
        for (i, word) in words.iter().enumerate() {
            self.holding.insert(addr.wrapping_add(i as u16), *word);
        }
    }
    pub fn set_input(&mut self, addr: u16, words: &[u16]) {
        for (i, word) in words.iter().enumerate() {
            self.input.insert(addr.wrapping_add(i as u16), *word);
        }
    }
    fn read(table: &HashMap<u16, u16>, addr: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        (0..count).map(|i| table.get(&addr.wrapping_add(i)).copied().ok_or(ExceptionCode::IllegalDataAddress)).collect()
    }

    /// Writes a SunSpec stack at `base`: marker, the given models in order, end marker. Returns where
    /// each model's data starts.
    pub fn set_sunspec(&mut self, base: u16, models: &[(u16, Vec<u16>)]) -> Vec<ModelEntry> {
        self.set_holding(base, &MARKER);
        let mut addr = base + 2;
        let mut entries = Vec::with_capacity(models.len());
        for (id, body) in models {
            self.set_holding(addr, &[*id, body.len() as u16]);
            self.set_holding(addr + 2, body);
            entries.push(ModelEntry { id: *id, start: addr + 2, len: body.len() as u16 });
            addr += 2 + body.len() as u16;
        }
        self.set_holding(addr, &[END_MODEL_ID, 0]);
        entries
    }
}

fn string_words(text: &str, words: usize) -> Vec<u16> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(words * 2, 0);
    bytes.chunks(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect()
}

/// Model 1 body.
pub fn common_model(manufacturer: &str, model: &str, version: &str, serial: &str) -> Vec<u16> {
    let mut body = vec![0u16; usize::from(COMMON_LEN)];
    body[0..16].copy_from_slice(&string_words(manufacturer, 16));
    body[16..32].copy_from_slice(&string_words(model, 16));
    body[40..48].copy_from_slice(&string_words(version, 8));
    body[48..64].copy_from_slice(&string_words(serial, 16));
    body[usize::from(COMMON_DEVICE_ADDRESS)] = 1;
    body
}

/// Model 203 body with power (W_SF 0) and counters (TotWh_SF 0).
pub fn meter_model(power_w: i64, import_wh: u32, export_wh: u32) -> Vec<u16> {
    let mut body = vec![NI_UINT16; usize::from(METER_LEN)];
    body[usize::from(MTR_W)] = power_w.clamp(-32_767, 32_767) as i16 as u16;
    body[usize::from(MTR_W_SF)] = 0;
    body[usize::from(MTR_TOT_WH_EXP)..usize::from(MTR_TOT_WH_EXP) + 2]
        .copy_from_slice(&[(export_wh >> 16) as u16, export_wh as u16]);
    body[usize::from(MTR_TOT_WH_IMP)..usize::from(MTR_TOT_WH_IMP) + 2]
        .copy_from_slice(&[(import_wh >> 16) as u16, import_wh as u16]);
    body[usize::from(MTR_TOT_WH_SF)] = 0;
    body
}

/// Model 103 body with power (W_SF 0), lifetime energy (WH_SF 0) and operating state.
pub fn inverter_model(power_w: i64, energy_wh: u32, state: u16) -> Vec<u16> {
    let mut body = vec![NI_UINT16; usize::from(INVERTER_LEN)];
    body[usize::from(INV_W)] = power_w.clamp(0, 32_767) as u16;
    body[usize::from(INV_W_SF)] = 0;
    body[usize::from(INV_WH)..usize::from(INV_WH) + 2].copy_from_slice(&[(energy_wh >> 16) as u16, energy_wh as u16]);
    body[usize::from(INV_WH_SF)] = 0;
    body[usize::from(INV_ST)] = state;
    body
}

/// A float32 as two registers, high word first.
pub fn float_words(value: f32) -> [u16; 2] {
    let bits = value.to_bits();
    [(bits >> 16) as u16, bits as u16]
}

/// A body of `len` registers whose float32 points are all "not implemented" (0x7FC00000).
fn not_implemented_floats(len: u16) -> Vec<u16> {
    (0..len).map(|i| if i.is_multiple_of(2) { (NI_FLOAT32 >> 16) as u16 } else { NI_FLOAT32 as u16 }).collect()
}

/// Model 213 body (float meter, 124 registers) with power and counters; other floats not implemented.
pub fn meter_float_model(power_w: f32, import_wh: f32, export_wh: f32) -> Vec<u16> {
    let mut body = not_implemented_floats(METER_FLOAT_LEN);
    let mut set = |offset: u16, value: f32| {
        body[usize::from(offset)..usize::from(offset) + 2].copy_from_slice(&float_words(value));
    };
    set(MTRF_W, power_w);
    set(MTRF_TOT_WH_EXP, export_wh);
    set(MTRF_TOT_WH_IMP, import_wh);
    body[122..124].copy_from_slice(&[0, 0]); // Evt: no events
    body
}

/// Model 113 body (float inverter, 60 registers) with power, lifetime energy and operating state.
pub fn inverter_float_model(power_w: f32, energy_wh: f32, state: u16) -> Vec<u16> {
    let mut body = not_implemented_floats(INVERTER_FLOAT_LEN);
    body[usize::from(INVF_W)..usize::from(INVF_W) + 2].copy_from_slice(&float_words(power_w));
    body[usize::from(INVF_WH)..usize::from(INVF_WH) + 2].copy_from_slice(&float_words(energy_wh));
    body[usize::from(INVF_ST)] = state;
    body[usize::from(INVF_ST) + 1] = NI_UINT16; // StVnd
    body[48..60].fill(0); // Evt1, Evt2, EvtVnd1–4: no events
    body
}

/// A value that fits a uint16 register with its scale factor: the smallest non-negative power of ten.
fn fit_u16(value: i64) -> (u16, i16) {
    let (mut value, mut sf) = (value.max(0), 0i16);
    while value > i64::from(NI_UINT16 - 1) {
        value /= 10;
        sf += 1;
    }
    (value as u16, sf)
}

/// Model 124's writable control registers as the simulated inverter holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageControl {
    pub stor_ctl_mod: u16,
    /// Percent of `WChaMax` in hundredths ([`SIM_IN_OUT_W_RTE_SF`]).
    pub out_w_rte: i16,
    pub in_w_rte: i16,
    pub win_tms: u16,
    pub rvrt_tms: u16,
    pub rmp_tms: u16,
    pub cha_gri_set: u16,
    /// Simulated time of the last accepted write (the revert timeout counts from it).
    pub written_ms: i64,
}

/// The simulator's rate scale factor: hundredths of a percent (0.5 W steps on a 5 kW battery).
pub const SIM_IN_OUT_W_RTE_SF: i16 = -2;
/// The simulated battery's nominal voltage, for its rated Ah.
const SIM_BATTERY_V: i64 = 50;

impl StorageControl {
    /// The battery mode this control means for a battery of `w_cha_max` (both ways, as model 124
    /// defines its rates): no bit is the inverter's own mode; the enforced window `[−OutWRte, InWRte]`
    /// becomes a setpoint when it excludes zero or is a single point, else self-consumption (which stays
    /// inside any window containing zero only approximately: the simulator has no windowed mode).
    pub fn mode(&self, w_cha_max: i64) -> BatteryMode {
        let power = |raw: i16| i64::from(raw) * w_cha_max / 10_000;
        let high = (self.stor_ctl_mod & STOR_CTL_CHARGE != 0).then(|| power(self.in_w_rte));
        let low = (self.stor_ctl_mod & STOR_CTL_DISCHARGE != 0).then(|| -power(self.out_w_rte));
        match (low, high) {
            (Some(low), Some(high)) if low == high => BatteryMode::Setpoint { power_w: low },
            (Some(low), _) if low > 0 => BatteryMode::Setpoint { power_w: low },
            (_, Some(high)) if high < 0 => BatteryMode::Setpoint { power_w: high },
            _ => BatteryMode::SelfConsumption,
        }
    }
}

/// Model 124 body for a battery: limits, state of charge, charge status and the control registers.
pub fn storage_basic_model(
    spec: &BatterySpec,
    soc_permille: i64,
    battery_w: i64,
    control: &StorageControl,
) -> Vec<u16> {
    let mut body = vec![NI_UINT16; usize::from(S124_LEN)];
    let mut set = |offset: u16, word: u16| body[usize::from(offset)] = word;
    let (w_cha_max, w_sf) = fit_u16(spec.charge_w_max);
    set(S124_W_CHA_MAX, w_cha_max);
    set(S124_W_CHA_MAX_SF, w_sf as u16);
    set(S124_W_CHA_GRA, 100); // the simulated battery reaches any power within a second
    set(S124_W_DIS_CHA_GRA, 100);
    set(S124_W_CHA_DIS_CHA_GRA_SF, 0);
    set(S124_STOR_CTL_MOD, control.stor_ctl_mod);
    set(S124_MIN_RSV_PCT, 0);
    set(S124_MIN_RSV_PCT_SF, 0);
    set(S124_CHA_STATE, soc_permille.clamp(0, 1000) as u16);
    set(S124_CHA_STATE_SF, (-1i16) as u16);
    set(S124_CHA_ST, charge_status(soc_permille, battery_w));
    set(S124_OUT_W_RTE, control.out_w_rte as u16);
    set(S124_IN_W_RTE, control.in_w_rte as u16);
    set(S124_IN_OUT_W_RTE_WIN_TMS, control.win_tms);
    set(S124_IN_OUT_W_RTE_RVRT_TMS, control.rvrt_tms);
    set(S124_IN_OUT_W_RTE_RMP_TMS, control.rmp_tms);
    set(S124_CHA_GRI_SET, control.cha_gri_set);
    set(S124_IN_OUT_W_RTE_SF, SIM_IN_OUT_W_RTE_SF as u16);
    // VAChaMax, StorAval and InBatV stay not implemented (as many devices leave them).
    body
}

fn charge_status(soc_permille: i64, battery_w: i64) -> u16 {
    match battery_w {
        w if w > 0 => CHA_ST_CHARGING,
        w if w < 0 => CHA_ST_DISCHARGING,
        _ if soc_permille >= 1000 => CHA_ST_FULL,
        _ if soc_permille <= 0 => CHA_ST_EMPTY,
        _ => CHA_ST_HOLDING,
    }
}

/// Model 802 body for a battery: ratings, limits, state of charge and power.
pub fn lithium_ion_model(spec: &BatterySpec, soc_permille: i64, battery_w: i64) -> Vec<u16> {
    let mut body = vec![NI_UINT16; usize::from(S802_LEN)];
    let mut set = |offset: u16, word: u16| body[usize::from(offset)] = word;
    let (ah, ah_sf) = fit_u16(spec.capacity_wh / SIM_BATTERY_V);
    set(S802_AH_RTG, ah);
    set(S802_AH_RTG_SF, ah_sf as u16);
    let (wh, wh_sf) = fit_u16(spec.capacity_wh);
    set(S802_WH_RTG, wh);
    set(S802_WH_RTG_SF, wh_sf as u16);
    let w_sf = fit_u16(spec.charge_w_max.max(spec.discharge_w_max)).1;
    let at_sf = |w: i64| (w / 10i64.pow(u32::from(w_sf.unsigned_abs()))) as u16;
    set(S802_W_CHA_RTE_MAX, at_sf(spec.charge_w_max));
    set(S802_W_DIS_CHA_RTE_MAX, at_sf(spec.discharge_w_max));
    set(S802_W_CHA_DIS_CHA_MAX_SF, w_sf as u16);
    set(S802_SOC_MAX, 1000);
    set(S802_SOC_MIN, 0);
    set(S802_SOC, soc_permille.clamp(0, 1000) as u16);
    set(S802_SOC_SF, (-1i16) as u16);
    set(S802_SOH, 100);
    set(S802_SOH_SF, 0);
    set(S802_CHA_ST, charge_status(soc_permille, battery_w));
    set(S802_LOC_REM_CTL, 0);
    set(S802_TYP, TYP_LITHIUM_ION);
    set(S802_STATE, STATE_CONNECTED);
    for event in [24, 25, 26, 27, 28, 29, 30, 31] {
        set(event, 0); // no alarms (Evt1, Evt2, EvtVnd1, EvtVnd2)
    }
    set(S802_V, (SIM_BATTERY_V * 10) as u16);
    set(S802_V_SF, (-1i16) as u16);
    set(S802_V_SF + 1, 0); // CellV_SF
    set(S802_A, (battery_w * 10 / SIM_BATTERY_V).clamp(-32_767, 32_767) as i16 as u16);
    set(S802_A_SF, (-1i16) as u16);
    set(S802_A_SF + 1, 0); // AMax_SF
                           // Positive while charging, as the simulator's battery power.
    set(S802_W, battery_w.clamp(-32_767, 32_767) as i16 as u16);
    set(S802_W_SF, 0);
    body
}

/// Where the simulated home's model 124 data starts: after the marker, the common model (1), the
/// inverter (103) and the meter (203), and its own header.
pub const SIM_STORAGE_BASIC_START: u16 = SIM_BASE + 2 + (2 + COMMON_LEN) + (2 + INVERTER_LEN) + (2 + METER_LEN) + 2;
/// The same with the float models 113 and 213 in place of 103 and 203.
pub const SIM_STORAGE_BASIC_START_FLOAT: u16 =
    SIM_BASE + 2 + (2 + COMMON_LEN) + (2 + INVERTER_FLOAT_LEN) + (2 + METER_FLOAT_LEN) + 2;

/// One simulated home.
#[derive(Debug, Clone, PartialEq)]
pub struct HomeSpec {
    pub seed: u64,
    /// PV array peak power.
    pub pv_peak_w: f64,
    /// Average household load.
    pub load_avg_w: f64,
    /// Connection nameplate (what the gateway should be configured with).
    pub nameplate_w: i64,
    /// Hours added to UTC to get the home's local solar time.
    pub utc_offset_h: f64,
    pub serial: String,
    /// A battery behind the grid meter, if the home has one.
    pub battery: Option<BatterySpec>,
    /// Serve the float models 113 and 213 (float32 values) instead of 103 and 203 (integers with
    /// scale factors).
    pub float_models: bool,
}

impl HomeSpec {
    /// A home whose size varies with `seed`: 3–10 kWp of PV, 300–800 W average load.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        Self {
            seed,
            pv_peak_w: 3_000.0 + rng.unit() * 7_000.0,
            load_avg_w: 300.0 + rng.unit() * 500.0,
            nameplate_w: 30_000,
            utc_offset_h: 0.0,
            serial: format!("SIM-{seed:08}"),
            battery: None,
            float_models: false,
        }
    }
}

/// Deterministic generator (SplitMix64): the same seed gives the same weather. Small, fixed and
/// dependency-free, so a seed's stream never changes with a crate update; the matching benchmark
/// draws its order stream from it too.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// In `0..bound` (modulo: negligibly uneven for small bounds).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Counters and instantaneous values of a home at its last update. Energy in mWh (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HomeState {
    pub sim_ms: i64,
    /// What the grid meter counts.
    pub import_mwh: i64,
    pub export_mwh: i64,
    /// What the PV inverter counts.
    pub pv_mwh: i64,
    /// What the household consumed (no meter shows it; the simulation knows it).
    pub load_mwh: i64,
    pub pv_w: f64,
    pub load_w: f64,
    /// The battery's counters, if the home has one.
    pub battery: Option<BatteryCounters>,
    /// The battery's AC power over the last step, positive when charging.
    pub battery_w: i64,
    cloud: f64,
}

impl HomeState {
    /// Net power of the household alone (load − PV), positive when it needs energy.
    pub fn home_net_w(&self) -> f64 {
        self.load_w - self.pv_w
    }
    /// Net power at the grid point, positive when importing (the battery included).
    pub fn net_w(&self) -> f64 {
        self.home_net_w() + self.battery_w as f64
    }
    /// The grid meter's import counter in whole Wh (truncated, as a meter does).
    pub fn import_wh(&self) -> i64 {
        self.import_mwh / MWH_PER_WH
    }
    pub fn export_wh(&self) -> i64 {
        self.export_mwh / MWH_PER_WH
    }
    pub fn pv_wh(&self) -> i64 {
        self.pv_mwh / MWH_PER_WH
    }
}

/// A home's physics: advance to a time, then read registers.
#[derive(Debug)]
pub struct Home {
    pub spec: HomeSpec,
    state: HomeState,
    battery: Option<Battery>,
    control: StorageControl,
    rng: SplitMix64,
}

/// Clear-sky PV output share by local hour: a sine between 6:00 and 18:00, flattened at the top.
pub fn clear_sky_share(hour: f64) -> f64 {
    if !(6.0..18.0).contains(&hour) {
        return 0.0;
    }
    (std::f64::consts::PI * (hour - 6.0) / 12.0).sin().powf(1.5)
}

/// Household load relative to its average by local hour: low at night, peaks morning and evening.
pub fn load_share(hour: f64) -> f64 {
    match hour {
        h if h < 6.0 => 0.5,
        h if h < 9.0 => 1.5,
        h if h < 17.0 => 0.8,
        h if h < 22.0 => 1.8,
        _ => 0.7,
    }
}

impl Home {
    pub fn new(spec: HomeSpec, start_ms: i64) -> Self {
        let mut rng = SplitMix64(spec.seed ^ 0xA5A5_5A5A);
        let wh = |unit: f64, base: f64, spread: f64| (base + (unit * spread).round()) as i64 * MWH_PER_WH;
        let state = HomeState {
            sim_ms: start_ms,
            import_mwh: wh(rng.unit(), 1_000_000.0, 500_000.0),
            export_mwh: wh(rng.unit(), 500_000.0, 500_000.0),
            pv_mwh: wh(rng.unit(), 2_000_000.0, 1_000_000.0),
            load_mwh: 0,
            pv_w: 0.0,
            load_w: spec.load_avg_w,
            battery: None,
            battery_w: 0,
            cloud: 0.8,
        };
        // A battery starts half full.
        let battery = spec.battery.map(|battery| Battery::new(battery, 500));
        let mut home = Self { spec, state, battery, control: StorageControl::default(), rng };
        home.state.battery = home.battery.as_ref().map(Battery::counters);
        home.sample(start_ms);
        home
    }

    pub fn state(&self) -> HomeState {
        self.state
    }

    /// The home's battery, if it has one (its mode is what a controller sets).
    pub fn battery(&self) -> Option<&Battery> {
        self.battery.as_ref()
    }
    pub fn battery_mut(&mut self) -> Option<&mut Battery> {
        self.battery.as_mut()
    }

    fn hour(&self, sim_ms: i64) -> f64 {
        let hours = sim_ms as f64 / MS_PER_HOUR + self.spec.utc_offset_h;
        hours.rem_euclid(24.0)
    }

    /// Sets instantaneous PV and load for `sim_ms`, moving the weather one step.
    fn sample(&mut self, sim_ms: i64) {
        let noise = self.rng.unit() - 0.5;
        self.state.cloud = (self.state.cloud + 0.1 * noise + 0.05 * (0.8 - self.state.cloud)).clamp(0.15, 1.0);
        let hour = self.hour(sim_ms);
        self.state.pv_w = self.spec.pv_peak_w * clear_sky_share(hour) * self.state.cloud;
        let load_noise = 1.0 + 0.3 * (self.rng.unit() - 0.5);
        self.state.load_w = self.spec.load_avg_w * load_share(hour) * load_noise;
    }

    /// Model 124's control registers as last written.
    pub fn storage_control(&self) -> StorageControl {
        self.control
    }

    /// When an active setpoint reverts by itself (`InOutWRte_RvrtTms` after the last write).
    fn revert_at_ms(&self) -> Option<i64> {
        (self.control.stor_ctl_mod != 0 && self.control.rvrt_tms > 0)
            .then(|| self.control.written_ms + i64::from(self.control.rvrt_tms) * 1_000)
    }

    /// Integrates energy up to `sim_ms`; an active setpoint whose revert timeout passes on the way
    /// falls back to self-consumption at that moment.
    pub fn advance(&mut self, sim_ms: i64) {
        if let Some(revert_ms) = self.revert_at_ms().filter(|at| *at <= sim_ms) {
            self.integrate(revert_ms);
            self.control.stor_ctl_mod = 0;
            if let Some(battery) = self.battery.as_mut() {
                battery.mode = BatteryMode::SelfConsumption;
            }
        }
        self.integrate(sim_ms);
    }

    /// Applies a Modbus write of `words` at `offset` into model 124 at simulated time `now_ms`. Only
    /// `StorCtl_Mod` and `OutWRte`..`ChaGriSet` are writable; anything else, or a value out of range,
    /// changes nothing.
    pub fn write_storage_control(&mut self, offset: u16, words: &[u16], now_ms: i64) -> Result<(), ExceptionCode> {
        let Some(battery) = self.battery.as_ref() else { return Err(ExceptionCode::IllegalDataAddress) };
        let w_cha_max = battery.spec.charge_w_max;
        let mut control = self.control;
        for (i, word) in words.iter().enumerate() {
            let offset = u16::try_from(i).ok().and_then(|i| offset.checked_add(i));
            let rate = |word: u16| {
                let rate = word as i16;
                // At most 100 % in hundredths.
                (-10_000..=10_000).contains(&rate).then_some(rate).ok_or(ExceptionCode::IllegalDataValue)
            };
            match offset {
                Some(S124_STOR_CTL_MOD) if *word <= (STOR_CTL_CHARGE | STOR_CTL_DISCHARGE) => {
                    control.stor_ctl_mod = *word
                }
                Some(S124_OUT_W_RTE) => control.out_w_rte = rate(*word)?,
                Some(S124_IN_W_RTE) => control.in_w_rte = rate(*word)?,
                Some(S124_IN_OUT_W_RTE_WIN_TMS) => control.win_tms = *word,
                Some(S124_IN_OUT_W_RTE_RVRT_TMS) => control.rvrt_tms = *word,
                Some(S124_IN_OUT_W_RTE_RMP_TMS) => control.rmp_tms = *word,
                Some(S124_CHA_GRI_SET) if *word <= 1 => control.cha_gri_set = *word,
                Some(S124_STOR_CTL_MOD | S124_CHA_GRI_SET) => return Err(ExceptionCode::IllegalDataValue),
                _ => return Err(ExceptionCode::IllegalDataAddress),
            }
        }
        self.advance(now_ms);
        control.written_ms = now_ms;
        self.control = control;
        if let Some(battery) = self.battery.as_mut() {
            battery.mode = control.mode(w_cha_max);
        }
        Ok(())
    }

    /// Integrates energy up to `sim_ms` in steps of at most [`STEP_MS`], in whole mWh per step.
    fn integrate(&mut self, sim_ms: i64) {
        while self.state.sim_ms < sim_ms {
            let step_ms = (sim_ms - self.state.sim_ms).min(STEP_MS);
            let pv_mwh = energy_mwh(self.state.pv_w.round() as i64, step_ms);
            let load_mwh = energy_mwh(self.state.load_w.round() as i64, step_ms);
            let home_net_w = self.state.load_w.round() as i64 - self.state.pv_w.round() as i64;
            let battery_mwh = match &mut self.battery {
                Some(battery) => battery.step(home_net_w, step_ms),
                None => 0,
            };
            let grid_mwh = load_mwh - pv_mwh + battery_mwh;
            if grid_mwh > 0 {
                self.state.import_mwh += grid_mwh;
            } else {
                self.state.export_mwh -= grid_mwh;
            }
            self.state.pv_mwh += pv_mwh;
            self.state.load_mwh += load_mwh;
            self.state.battery = self.battery.as_ref().map(Battery::counters);
            self.state.battery_w = if step_ms > 0 { battery_mwh * 3_600 / step_ms } else { 0 };
            let crossed_step = (self.state.sim_ms / STEP_MS) != ((self.state.sim_ms + step_ms) / STEP_MS);
            self.state.sim_ms += step_ms;
            if crossed_step {
                self.sample(self.state.sim_ms);
            }
        }
    }

    /// The SunSpec stack for the current state (counters truncated to whole Wh, as a meter does).
    pub fn write_registers(&self, bank: &mut RegisterBank) {
        let s = &self.state;
        let wrap = |wh: i64| (wh.max(0) as u64 % (1u64 << 32)) as u32;
        let inverter_state = if s.pv_w > 0.0 { 4 } else { 2 };
        let common = (MODEL_COMMON, common_model("gridex", "SimHome", "1.0", &self.spec.serial));
        let mut models = if self.spec.float_models {
            let (pv_w, net_w) = (s.pv_w.round() as f32, s.net_w().round() as f32);
            vec![
                common,
                (113, inverter_float_model(pv_w, s.pv_wh() as f32, inverter_state)),
                (213, meter_float_model(net_w, s.import_wh() as f32, s.export_wh() as f32)),
            ]
        } else {
            vec![
                common,
                (103, inverter_model(s.pv_w.round() as i64, wrap(s.pv_wh()), inverter_state)),
                (203, meter_model(s.net_w().round() as i64, wrap(s.import_wh()), wrap(s.export_wh()))),
            ]
        };
        if let Some(battery) = &self.battery {
            let soc = battery.soc_permille();
            models.push((MODEL_STORAGE_BASIC, storage_basic_model(&battery.spec, soc, s.battery_w, &self.control)));
            models.push((MODEL_LITHIUM_ION, lithium_ion_model(&battery.spec, soc, s.battery_w)));
        }
        bank.set_sunspec(SIM_BASE, &models);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The Modbus service of one device: a register bank, refreshed from a home (if any) on each request.
#[derive(Debug, Clone)]
pub struct DeviceService {
    pub bank: Arc<Mutex<RegisterBank>>,
    pub home: Option<Arc<Mutex<Home>>>,
    pub clock: SimClock,
}

impl DeviceService {
    pub fn answer(&self, request: &Request<'_>) -> Result<Option<Response>, ExceptionCode> {
        if let Some(home) = &self.home {
            let mut home = lock(home);
            home.advance(self.clock.now_ms());
            home.write_registers(&mut lock(&self.bank));
        }
        let mut bank = lock(&self.bank);
        match bank.behaviour {
            Behaviour::Silent => return Ok(None),
            Behaviour::Exception(code) => return Err(code),
            Behaviour::Normal => {}
        }
        let write = match request {
            Request::WriteMultipleRegisters(addr, words) => Some((*addr, words.to_vec())),
            Request::WriteSingleRegister(addr, word) => Some((*addr, vec![*word])),
            _ => None,
        };
        if let Some((addr, words)) = write {
            bank.writes.push((addr, words.clone()));
            // Lock order is home, then bank (as above).
            drop(bank);
            let home = self.home.as_ref().ok_or(ExceptionCode::IllegalDataAddress)?;
            let mut home = lock(home);
            let start = if home.spec.float_models { SIM_STORAGE_BASIC_START_FLOAT } else { SIM_STORAGE_BASIC_START };
            let offset = addr.checked_sub(start).ok_or(ExceptionCode::IllegalDataAddress)?;
            home.write_storage_control(offset, &words, self.clock.now_ms())?;
            home.write_registers(&mut lock(&self.bank));
            return Ok(Some(match request {
                Request::WriteSingleRegister(..) => Response::WriteSingleRegister(addr, words[0]),
                _ => Response::WriteMultipleRegisters(addr, words.len() as u16),
            }));
        }
        match request {
            Request::ReadHoldingRegisters(addr, count) if *count <= 125 => {
                RegisterBank::read(&bank.holding, *addr, *count).map(|w| Some(Response::ReadHoldingRegisters(w)))
            }
            Request::ReadInputRegisters(addr, count) if *count <= 125 => {
                RegisterBank::read(&bank.input, *addr, *count).map(|w| Some(Response::ReadInputRegisters(w)))
            }
            Request::ReadHoldingRegisters(..) | Request::ReadInputRegisters(..) => Err(ExceptionCode::IllegalDataValue),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl Service for DeviceService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        ready(self.answer(&request.request))
    }
}

/// Serves `service` over Modbus TCP on `listener` until `shutdown` changes.
pub async fn serve_tcp(
    listener: TcpListener,
    service: DeviceService,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream, _addr| {
        let service = service.clone();
        async move { Ok(Some((service, stream))) }
    };
    let on_error = |error| tracing::debug!(%error, "simulator connection ended");
    let abort = async move {
        let _ = shutdown.changed().await;
    };
    server.serve_until(&on_connected, on_error, abort).await.map(|_| ())
}

/// Serves `service` over Modbus RTU on the serial device at `path` until `shutdown` changes.
pub async fn serve_rtu(
    path: &str,
    baud: u32,
    service: DeviceService,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    use tokio_serial::SerialPortBuilderExt;
    let port = tokio_serial::new(path, baud).open_native_async().map_err(io::Error::from)?;
    let server = tokio_modbus::server::rtu::Server::new(port);
    let abort = async move {
        let _ = shutdown.changed().await;
    };
    server.serve_until(service, abort).await.map(|_| ())
}

/// Running simulated homes.
#[derive(Debug)]
pub struct Simulation {
    /// Where each home listens, in the order of the specs.
    pub addrs: Vec<SocketAddr>,
    pub homes: Vec<Arc<Mutex<Home>>>,
    pub clock: SimClock,
}

impl Simulation {
    /// A home's state advanced to now.
    pub fn state(&self, index: usize) -> Option<HomeState> {
        let home = self.homes.get(index)?;
        let mut home = lock(home);
        home.advance(self.clock.now_ms());
        Some(home.state())
    }
}

/// Builds the service of one simulated home.
pub fn home_service(spec: HomeSpec, clock: SimClock) -> (DeviceService, Arc<Mutex<Home>>) {
    let home = Arc::new(Mutex::new(Home::new(spec, clock.now_ms())));
    let mut bank = RegisterBank::default();
    lock(&home).write_registers(&mut bank);
    (DeviceService { bank: Arc::new(Mutex::new(bank)), home: Some(home.clone()), clock }, home)
}

/// Starts one Modbus TCP server per home: on `listen_base`'s port + i, or on free ports when the base
/// port is 0. Servers stop when `shutdown` changes (or its sender is dropped).
pub async fn spawn_homes(
    listen_base: SocketAddr,
    homes: &[HomeSpec],
    clock: SimClock,
    shutdown: watch::Receiver<bool>,
) -> io::Result<Simulation> {
    if homes.len() > HOMES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("at most {HOMES_MAX} homes")));
    }
    let mut simulation = Simulation { addrs: Vec::new(), homes: Vec::new(), clock };
    for (index, spec) in homes.iter().enumerate() {
        let mut addr = listen_base;
        if listen_base.port() != 0 {
            let port = u16::try_from(usize::from(listen_base.port()) + index)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ports run past 65535"))?;
            addr.set_port(port);
        }
        let listener = TcpListener::bind(addr).await?;
        simulation.addrs.push(listener.local_addr()?);
        let (service, home) = home_service(spec.clone(), clock);
        simulation.homes.push(home);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_tcp(listener, service, shutdown).await {
                tracing::warn!(%error, "simulated home stopped");
            }
        });
    }
    Ok(simulation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::battery::BatteryMode;

    #[test]
    fn pv_follows_the_sun_and_is_zero_at_night() {
        assert_eq!(clear_sky_share(3.0), 0.0);
        assert_eq!(clear_sky_share(20.0), 0.0);
        assert!(clear_sky_share(12.0) > 0.99);
        assert!(clear_sky_share(8.0) < clear_sky_share(11.0));
    }

    #[test]
    fn a_simulated_day_produces_and_consumes_plausibly_and_counters_only_rise() {
        let spec = HomeSpec { pv_peak_w: 5_000.0, load_avg_w: 500.0, ..HomeSpec::from_seed(7) };
        let mut home = Home::new(spec, 0);
        let start = home.state();
        let mut last = start;
        for hour in 1..=24 {
            home.advance(hour * 3_600_000);
            let now = home.state();
            assert!(
                now.import_mwh >= last.import_mwh && now.export_mwh >= last.export_mwh && now.pv_mwh >= last.pv_mwh
            );
            last = now;
        }
        let pv_day_wh = last.pv_wh() - start.pv_wh();
        // A 5 kWp array yields roughly 10-35 kWh on a day with clouds.
        assert!((10_000..35_000).contains(&pv_day_wh), "pv {pv_day_wh}");
        assert!(last.export_mwh > start.export_mwh, "exports at noon");
        assert!(last.import_mwh > start.import_mwh, "imports at night");
    }

    #[test]
    fn the_same_seed_gives_the_same_day() {
        let run = |seed| {
            let mut home = Home::new(HomeSpec::from_seed(seed), 0);
            home.advance(86_400_000);
            home.state()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    fn energy_balance(before: &HomeState, after: &HomeState) -> (i64, i64) {
        let battery = |state: &HomeState| state.battery.unwrap_or_default();
        let (b0, b1) = (battery(before), battery(after));
        let sources = (after.pv_mwh - before.pv_mwh)
            + (after.import_mwh - before.import_mwh)
            + (b1.discharged_mwh - b0.discharged_mwh);
        let sinks = (after.load_mwh - before.load_mwh)
            + (after.export_mwh - before.export_mwh)
            + (b1.charged_mwh - b0.charged_mwh);
        (sources, sinks)
    }

    #[test]
    fn a_home_balances_to_the_milliwatt_hour_with_and_without_a_battery() {
        for battery in [None, Some(BatterySpec::HOME_10_KWH)] {
            let mut home = Home::new(HomeSpec { battery, ..HomeSpec::from_seed(11) }, 0);
            let start = home.state();
            // Uneven steps, as a gateway's polls are.
            let mut now = 0;
            for step in 0..5_000i64 {
                now += 1_000 + (step * 7_919) % 170_000;
                home.advance(now);
            }
            let end = home.state();
            let (sources, sinks) = energy_balance(&start, &end);
            assert_eq!(sources, sinks, "pv + import + discharged = load + export + charged");
            if let (Some(b0), Some(b1)) = (start.battery, end.battery) {
                assert_eq!(
                    b1.stored_mwh - b0.stored_mwh,
                    (b1.charged_mwh - b0.charged_mwh)
                        - (b1.discharged_mwh - b0.discharged_mwh)
                        - (b1.losses_mwh - b0.losses_mwh)
                );
                assert!(b1.charged_mwh > b0.charged_mwh && b1.discharged_mwh > b0.discharged_mwh, "it cycled");
            }
        }
    }

    #[test]
    fn a_battery_in_self_consumption_lowers_both_import_and_export() {
        let day = |battery| {
            let mut home = Home::new(HomeSpec { battery, ..HomeSpec::from_seed(5) }, 0);
            let start = home.state();
            home.advance(3 * 86_400_000);
            let end = home.state();
            (end.import_mwh - start.import_mwh, end.export_mwh - start.export_mwh)
        };
        let (import_without, export_without) = day(None);
        let (import_with, export_with) = day(Some(BatterySpec::HOME_10_KWH));
        assert!(import_with < import_without * 8 / 10, "{import_with} vs {import_without}");
        assert!(export_with < export_without, "{export_with} vs {export_without}");
    }

    #[test]
    fn model_124_windows_become_battery_modes() {
        let control = |stor_ctl_mod, in_w_rte, out_w_rte| StorageControl {
            stor_ctl_mod,
            in_w_rte,
            out_w_rte,
            ..StorageControl::default()
        };
        let both = STOR_CTL_CHARGE | STOR_CTL_DISCHARGE;
        assert_eq!(control(0, 6_000, -6_000).mode(5_000), BatteryMode::SelfConsumption, "no bit: its own mode");
        assert_eq!(control(both, 6_000, -6_000).mode(5_000), BatteryMode::Setpoint { power_w: 3_000 });
        assert_eq!(control(both, -2_000, 2_000).mode(5_000), BatteryMode::Setpoint { power_w: -1_000 });
        assert_eq!(control(both, 0, 0).mode(5_000), BatteryMode::Setpoint { power_w: 0 }, "hold");
        assert_eq!(control(STOR_CTL_DISCHARGE, 0, -4_000).mode(5_000), BatteryMode::Setpoint { power_w: 2_000 });
        assert_eq!(control(both, 10_000, 10_000).mode(5_000), BatteryMode::SelfConsumption, "a window around zero");
    }

    #[test]
    fn a_setpoint_charges_from_the_grid_and_the_meter_sees_it() {
        let mut home = Home::new(HomeSpec { battery: Some(BatterySpec::HOME_10_KWH), ..HomeSpec::from_seed(5) }, 0);
        if let Some(battery) = home.battery_mut() {
            battery.mode = BatteryMode::Setpoint { power_w: 3_000 };
        }
        let start = home.state();
        // Midnight to 1:00: no sun, so all of it comes through the meter.
        home.advance(3_600_000);
        let end = home.state();
        let import_mwh = end.import_mwh - start.import_mwh;
        let load_mwh = end.load_mwh - start.load_mwh;
        assert_eq!(import_mwh, load_mwh + 3_000_000);
        assert!(end.net_w() > 2_500.0);
    }
}
