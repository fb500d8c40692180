//! The agent's home-battery plan (`[agent.battery]`): pure, integer Wh. It owns the owner's battery
//! settings, what the agent last heard from the battery, and two decisions:
//!
//! - **The plan** ([`plan`]): over the next day of slots, against the learned PV and load forecast, the
//!   battery's AC energy per slot (positive charges). By default it follows self-consumption (store
//!   the home's surplus, cover its deficit, never below the reserve, within the daily cycle budget and
//!   the power limit). With `control` on it adds two trades: energy still stored when tomorrow's sun
//!   would overfill the battery is sold in the evening and night, and when the home's own surplus will
//!   not fill the battery for the night's deficit, the shortfall is bought from neighbours' midday
//!   surplus (only below the price at which stored energy beats retail). The quoting strategy then
//!   trades the home's net position after the battery, so it never commits more than the plan.
//! - **The setpoint** ([`setpoint`]): in the slot being delivered, the battery makes the meter follow
//!   what the agent actually sold or bought (charge the household surplus beyond the sales, discharge
//!   what was sold beyond it, charge what was bought), which is plain self-consumption when nothing
//!   traded. Without contact to the exchange for `no_contact_fallback_ms` the agent falls back to the
//!   inverter's own self-consumption mode.

use crate::battery::BatteryMode;
use serde::Deserialize;

/// Default: fall back to self-consumption after five minutes without a word from the exchange (a
/// third of a slot: its gate has not yet closed, so nothing already traded is lost).
pub const NO_CONTACT_FALLBACK_MS_DEFAULT: i64 = 5 * 60 * 1000;
/// Default reserve: a tenth of the capacity stays for an outage.
pub const RESERVE_SOC_PERMILLE_DEFAULT: u16 = 100;
/// Default cycle budget: one full cycle a day, the pace warranties assume.
pub const CYCLES_PER_DAY_MAX_DEFAULT: u32 = 1;
/// More cycles a day than this wears any home battery out within a few years.
pub const CYCLES_PER_DAY_LIMIT: u32 = 4;
/// Default power limit assumed by the plan (the inverter clamps anyway).
pub const POWER_W_MAX_DEFAULT: i64 = 5_000;
/// Default round trip efficiency of a lithium home battery (per mille).
pub const ROUND_TRIP_EFFICIENCY_PERMILLE_DEFAULT: i64 = 900;
/// Slots the plan looks ahead: a day of 15-minute slots, one charge and one discharge.
pub const HORIZON_SLOTS: usize = 96;
const MS_PER_HOUR: i64 = 3_600_000;

fn default_reserve() -> u16 {
    RESERVE_SOC_PERMILLE_DEFAULT
}
fn default_cycles() -> u32 {
    CYCLES_PER_DAY_MAX_DEFAULT
}
fn default_fallback() -> i64 {
    NO_CONTACT_FALLBACK_MS_DEFAULT
}
fn default_power() -> i64 {
    POWER_W_MAX_DEFAULT
}
fn default_efficiency() -> i64 {
    ROUND_TRIP_EFFICIENCY_PERMILLE_DEFAULT
}

/// The owner's battery settings, `[agent.battery]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatterySettings {
    /// Never discharge below this state of charge (per mille of the capacity).
    #[serde(default = "default_reserve")]
    pub reserve_soc_permille: u16,
    /// Energy discharged per UTC day stays within this many times the capacity.
    #[serde(default = "default_cycles")]
    pub cycles_per_day_max: u32,
    /// Whether the agent writes setpoints to the battery (opt-in); off, it only plans its orders
    /// around the inverter's own self-consumption.
    #[serde(default)]
    pub control: bool,
    /// Without a book, order update or reject for this long, the battery goes back to self-consumption.
    #[serde(default = "default_fallback")]
    pub no_contact_fallback_ms: i64,
    /// The battery's AC power limit, both ways.
    #[serde(default = "default_power")]
    pub power_w_max: i64,
    #[serde(default = "default_efficiency")]
    pub round_trip_efficiency_permille: i64,
}

impl Default for BatterySettings {
    fn default() -> Self {
        Self {
            reserve_soc_permille: RESERVE_SOC_PERMILLE_DEFAULT,
            cycles_per_day_max: CYCLES_PER_DAY_MAX_DEFAULT,
            control: false,
            no_contact_fallback_ms: NO_CONTACT_FALLBACK_MS_DEFAULT,
            power_w_max: POWER_W_MAX_DEFAULT,
            round_trip_efficiency_permille: ROUND_TRIP_EFFICIENCY_PERMILLE_DEFAULT,
        }
    }
}

impl BatterySettings {
    /// Why the settings are refused, if they are.
    pub fn problem(&self) -> Option<&'static str> {
        if self.reserve_soc_permille > 1000 {
            return Some("battery.reserve_soc_permille is 0 to 1000");
        }
        if !(1..=CYCLES_PER_DAY_LIMIT).contains(&self.cycles_per_day_max) {
            return Some("battery.cycles_per_day_max is 1 to 4");
        }
        if self.no_contact_fallback_ms <= 0 {
            return Some("battery.no_contact_fallback_ms must be positive");
        }
        if self.power_w_max <= 0 {
            return Some("battery.power_w_max must be positive");
        }
        if !(1..=1000).contains(&self.round_trip_efficiency_permille) {
            return Some("battery.round_trip_efficiency_permille is 1 to 1000");
        }
        None
    }
}

/// What the agent hears from the battery (the gateway reads it; the report takes it from the simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatteryObservation {
    pub ts_ms: i64,
    pub soc_permille: i64,
    pub capacity_wh: i64,
    /// Cumulative AC energy charged and discharged (whole Wh).
    pub charged_wh: i64,
    pub discharged_wh: i64,
    /// The household's own net power now (load − PV, positive when it needs energy), if known.
    pub home_net_w: Option<i64>,
}

impl BatteryObservation {
    /// The battery a version 2 reading carries (all four fields present), without the household's
    /// own power (the reading's power is the grid point's, the battery included).
    pub fn from_reading(reading: &protocol::Reading) -> Option<Self> {
        Some(Self {
            ts_ms: reading.ts_ms.0,
            soc_permille: i64::from(reading.battery_soc_permille?),
            capacity_wh: reading.battery_capacity_wh?.0,
            charged_wh: reading.battery_charge_wh?.0,
            discharged_wh: reading.battery_discharge_wh?.0,
            home_net_w: None,
        })
    }

    /// [`BatteryObservation::from_reading`], also for a battery that reports only its state of
    /// charge and capacity (SunSpec 124/802 have no energy counters): its counters are then
    /// estimated from the change of stored energy since `previous` (a rise counts as charged, a fall
    /// as discharged; losses are not seen, so the estimate is low by them).
    pub fn from_reading_after(reading: &protocol::Reading, previous: Option<&BatteryObservation>) -> Option<Self> {
        if let Some(observed) = Self::from_reading(reading) {
            return Some(observed);
        }
        let mut observed = Self {
            ts_ms: reading.ts_ms.0,
            soc_permille: i64::from(reading.battery_soc_permille?),
            capacity_wh: reading.battery_capacity_wh?.0,
            charged_wh: 0,
            discharged_wh: 0,
            home_net_w: None,
        };
        if let Some(previous) = previous {
            let change_wh = observed.stored_wh() - previous.stored_wh();
            observed.charged_wh = previous.charged_wh + change_wh.max(0);
            observed.discharged_wh = previous.discharged_wh + (-change_wh).max(0);
        }
        Some(observed)
    }

    pub fn stored_wh(&self) -> i64 {
        self.capacity_wh * self.soc_permille.clamp(0, 1000) / 1000
    }
}

/// The plan's inputs beyond the forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInputs {
    pub stored_wh: i64,
    pub capacity_wh: i64,
    pub reserve_wh: i64,
    /// AC energy the battery may still discharge today (cycle budget).
    pub budget_wh: i64,
    /// AC energy per slot at the power limit.
    pub slot_limit_wh: i64,
    pub efficiency_permille: i64,
    /// Add the trades (evening sales of energy the sun would overfill, buying to charge) to
    /// self-consumption: only when the agent controls the battery.
    pub trade: bool,
}

/// The battery's planned AC energy per slot (positive charges), for `nets` (the household's forecast
/// net export per slot, the first being the next slot). See the module documentation.
pub fn plan(nets: &[i64], inputs: PlanInputs) -> Vec<i64> {
    let eff = inputs.efficiency_permille.clamp(1, 1000);
    let limit = inputs.slot_limit_wh.max(0);
    // Self-consumption, slot by slot; `stored[i]` is the energy before slot i.
    let mut ac = vec![0; nets.len()];
    let mut stored = vec![0; nets.len() + 1];
    let mut spill = vec![0; nets.len()];
    let mut unmet = vec![0; nets.len()];
    let (mut level, mut budget) = (inputs.stored_wh, inputs.budget_wh.max(0));
    for (i, &net) in nets.iter().enumerate() {
        stored[i] = level;
        if net > 0 {
            let room_ac = (inputs.capacity_wh - level).max(0) * 1000 / eff;
            let charge = net.min(limit).min(room_ac);
            ac[i] = charge;
            spill[i] = net - charge;
            level += charge * eff / 1000;
        } else {
            let discharge = (-net).min(limit).min((level - inputs.reserve_wh).max(0)).min(budget);
            ac[i] = -discharge;
            unmet[i] = -net - discharge;
            level -= discharge;
            budget -= discharge;
        }
    }
    stored[nets.len()] = level;
    if !inputs.trade {
        return ac;
    }
    // The first sunny window: [start, end).
    let Some(start) = nets.iter().position(|net| *net > 0) else { return ac };
    let end = nets[start..].iter().position(|net| *net <= 0).map_or(nets.len(), |offset| start + offset);
    if start > 0 {
        // Before the sun: what is still stored when it rises and would overflow the battery anyway
        // is sold now, spread over the dark slots left (re-planned every few minutes).
        let overflow_stored = spill[start..end].iter().sum::<i64>() * eff / 1000;
        let excess = (stored[start] - inputs.reserve_wh).min(overflow_stored).min(budget).max(0);
        let per_slot = excess / i64::try_from(start).unwrap_or(1).max(1);
        for slot in ac.iter_mut().take(start) {
            let headroom = limit + (*slot).min(0);
            *slot -= per_slot.min(headroom).max(0);
        }
    } else {
        // In the sun: the deficit after it that the battery will not cover, bought now to charge,
        // as far as the room left at sunset allows, spread over the sunny slots left.
        let next_sun = nets[end..].iter().position(|net| *net > 0).map_or(nets.len(), |offset| end + offset);
        let shortfall: i64 = unmet[end..next_sun].iter().sum();
        let room = (inputs.capacity_wh - stored[end]).max(0);
        let buy_ac = shortfall.min(room) * 1000 / eff;
        let per_slot = buy_ac / i64::try_from(end).unwrap_or(1).max(1);
        for slot in ac.iter_mut().take(end) {
            let headroom = limit - (*slot).max(0);
            *slot += per_slot.min(headroom).max(0);
        }
    }
    ac
}

/// The state of charge (‰) at the end of each slot of `plan` (AC energy per slot, positive
/// charges, as [`plan`] returns it), from `stored_wh`: a charge stores `efficiency_permille` of its
/// AC energy, a discharge takes all of it, as [`plan`] assumes; clamped to 0..=1000.
pub fn soc_path_permille(stored_wh: i64, capacity_wh: i64, efficiency_permille: i64, plan: &[i64]) -> Vec<u16> {
    let efficiency = efficiency_permille.clamp(1, 1000);
    let capacity = capacity_wh.max(1);
    let mut level = stored_wh;
    plan.iter()
        .map(|&ac| {
            level += if ac > 0 { ac * efficiency / 1000 } else { ac };
            let permille = (level.clamp(0, capacity) * 1000 / capacity).clamp(0, 1000);
            // In 0..=1000 by the clamp, so it fits.
            u16::try_from(permille).unwrap_or(1000)
        })
        .collect()
}

/// The battery's inputs for the setpoint of the slot being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetpointInputs {
    /// Net sold in the slot (sold − bought, Wh).
    pub position_wh: i64,
    pub slot_len_ms: i64,
    /// The household's net power now (load − PV).
    pub home_net_w: i64,
    pub stored_wh: i64,
    pub reserve_wh: i64,
    pub budget_wh: i64,
    pub power_w_max: i64,
    /// How long until the next setpoint (the plan's period): the discharge allowed is what keeps the
    /// battery above the reserve and within the budget until then.
    pub period_ms: i64,
}

/// The mode for the slot being delivered: self-consumption when nothing traded and the reserve and
/// budget are far; otherwise the power that makes the meter follow the trades (positive charges).
pub fn setpoint(inputs: SetpointInputs) -> BatteryMode {
    let period_ms = inputs.period_ms.max(1);
    let spare_wh = (inputs.stored_wh - inputs.reserve_wh).min(inputs.budget_wh).max(0);
    let discharge_w_max = (spare_wh * MS_PER_HOUR / period_ms).min(inputs.power_w_max).max(0);
    if inputs.position_wh == 0 && discharge_w_max >= inputs.power_w_max {
        return BatteryMode::SelfConsumption;
    }
    let position_w = inputs.position_wh * MS_PER_HOUR / inputs.slot_len_ms.max(1);
    let power_w = (-inputs.home_net_w - position_w).clamp(-discharge_w_max, inputs.power_w_max);
    BatteryMode::Setpoint { power_w }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planned_state_of_charge_follows_the_plan_with_the_charging_loss() {
        // 5 kWh of 10 kWh; charge 1 kWh at 90 % (stores 900 Wh), discharge 2.9 kWh, discharge beyond empty.
        let path = soc_path_permille(5_000, 10_000, 900, &[1_000, -2_900, -9_000]);
        assert_eq!(path, vec![590, 300, 0]);
    }

    fn inputs(stored_wh: i64, trade: bool) -> PlanInputs {
        PlanInputs {
            stored_wh,
            capacity_wh: 10_000,
            reserve_wh: 1_000,
            budget_wh: 10_000,
            slot_limit_wh: 1_250,
            efficiency_permille: 900,
            trade,
        }
    }

    /// Evening (4 slots of 500 Wh deficit), then sun (4 slots of 2 000 Wh surplus), then night.
    fn evening_then_sun() -> Vec<i64> {
        let mut nets = vec![-500; 4];
        nets.extend([2_000; 4]);
        nets.extend([-400; 8]);
        nets
    }

    #[test]
    fn self_consumption_stores_surplus_and_covers_deficits_but_never_below_the_reserve() {
        // 1 600 Wh stored, 1 000 reserved: only 600 Wh can cover the evening.
        let ac = plan(&evening_then_sun(), inputs(1_600, false));
        assert_eq!(&ac[..4], &[-500, -100, 0, 0]);
        // Sun: charge at most the power limit per slot, until full.
        assert!(ac[4..8].iter().all(|wh| (0..=1_250).contains(wh)), "{ac:?}");
        assert_eq!(ac[4], 1_250);
    }

    #[test]
    fn energy_the_sun_would_overflow_is_sold_before_sunrise_within_the_power_limit() {
        // Full battery: 2 000 Wh of evening deficit leaves 8 000 Wh at sunrise, and 4 × 2 000 Wh of sun
        // overflows it; the excess is discharged on top of the home's own deficit.
        let nets = evening_then_sun();
        let own = plan(&nets, inputs(10_000, false));
        let traded = plan(&nets, inputs(10_000, true));
        for slot in 0..4 {
            assert!(traded[slot] < own[slot], "slot {slot}: {traded:?}");
            assert!(traded[slot] >= -1_250, "power limit: {traded:?}");
        }
        // Never below the reserve: the total discharged before sunrise leaves at least 1 000 Wh.
        let discharged: i64 = traded[..4].iter().map(|wh| -wh).sum();
        assert!(10_000 - discharged >= 1_000);
    }

    #[test]
    fn in_the_sun_the_nights_shortfall_is_bought_to_charge_when_the_own_surplus_cannot_fill_it() {
        // A small surplus (300 Wh for 2 slots) and a long night of 800 Wh deficits.
        let mut nets = vec![300; 2];
        nets.extend([-800; 10]);
        let own = plan(&nets, inputs(1_000, false));
        let traded = plan(&nets, inputs(1_000, true));
        assert!(traded[0] > own[0] && traded[1] > own[1], "{traded:?}");
        assert!(traded[0] <= 1_250, "power limit");
        // Without a trade budget (control off), nothing is bought.
        assert_eq!(own[0], 300);
    }

    #[test]
    fn the_cycle_budget_stops_discharging() {
        let nets = vec![-500; 8];
        let ac = plan(&nets, PlanInputs { budget_wh: 700, ..inputs(10_000, true) });
        assert_eq!(ac.iter().map(|wh| -wh).sum::<i64>(), 700);
    }

    fn setpoint_inputs() -> SetpointInputs {
        SetpointInputs {
            position_wh: 0,
            slot_len_ms: 900_000,
            home_net_w: -2_000,
            stored_wh: 5_000,
            reserve_wh: 1_000,
            budget_wh: 10_000,
            power_w_max: 5_000,
            period_ms: 60_000,
        }
    }

    #[test]
    fn without_trades_the_battery_is_left_in_self_consumption() {
        assert_eq!(setpoint(setpoint_inputs()), BatteryMode::SelfConsumption);
    }

    #[test]
    fn a_sale_is_delivered_by_the_battery_and_a_purchase_charges_it() {
        // Sold 1 000 Wh in the slot (4 kW) while the home makes 2 kW: discharge 2 kW.
        let sold = setpoint(SetpointInputs { position_wh: 1_000, ..setpoint_inputs() });
        assert_eq!(sold, BatteryMode::Setpoint { power_w: -2_000 });
        // Bought 500 Wh (2 kW) while making 2 kW: charge 4 kW.
        let bought = setpoint(SetpointInputs { position_wh: -500, ..setpoint_inputs() });
        assert_eq!(bought, BatteryMode::Setpoint { power_w: 4_000 });
    }

    #[test]
    fn at_the_reserve_or_out_of_budget_the_battery_only_charges() {
        let at_reserve = SetpointInputs { stored_wh: 1_000, home_net_w: 1_500, ..setpoint_inputs() };
        assert_eq!(setpoint(at_reserve), BatteryMode::Setpoint { power_w: 0 });
        let spent = SetpointInputs { budget_wh: 0, home_net_w: 1_500, position_wh: 200, ..setpoint_inputs() };
        assert_eq!(setpoint(spent), BatteryMode::Setpoint { power_w: 0 });
        // Just above the reserve: no more than what keeps it above the reserve until the next setpoint.
        let near = SetpointInputs { stored_wh: 1_010, home_net_w: 3_000, ..setpoint_inputs() };
        assert_eq!(setpoint(near), BatteryMode::Setpoint { power_w: -600 });
    }

    #[test]
    fn a_v2_reading_gives_the_battery_and_a_v1_reading_nothing() {
        let key = protocol::testing::signing_key(5);
        let observed = BatteryObservation::from_reading(&protocol::testing::sample_battery_reading(&key))
            .expect("a v2 reading carries the battery");
        assert_eq!((observed.soc_permille, observed.capacity_wh), (640, 10_000));
        assert_eq!((observed.charged_wh, observed.discharged_wh), (2_345_678, 2_100_000));
        assert_eq!(observed.stored_wh(), 6_400);
        assert_eq!(BatteryObservation::from_reading(&protocol::testing::sample_reading(&key)), None);
    }

    #[test]
    fn settings_are_validated() {
        assert_eq!(BatterySettings::default().problem(), None);
        assert!(BatterySettings { reserve_soc_permille: 1_001, ..Default::default() }.problem().is_some());
        assert!(BatterySettings { cycles_per_day_max: 0, ..Default::default() }.problem().is_some());
        assert!(BatterySettings { no_contact_fallback_ms: 0, ..Default::default() }.problem().is_some());
        let parsed: Result<BatterySettings, _> = toml::from_str("reserve_soc_permille = 200\ncontrol = true\n");
        let parsed = parsed.expect("valid settings");
        assert!(parsed.control && parsed.reserve_soc_permille == 200 && parsed.cycles_per_day_max == 1);
        assert!(toml::from_str::<BatterySettings>("reserve = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn a_battery_that_reports_only_its_state_of_charge_gets_estimated_counters() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut reading = protocol::testing::sample_battery_reading(&key);
        (reading.battery_charge_wh, reading.battery_discharge_wh) = (None, None);
        reading.battery_capacity_wh = Some(protocol::Wh(10_000));
        reading.battery_soc_permille = Some(500);
        assert_eq!(BatteryObservation::from_reading(&reading), None, "not all four fields");
        let first = BatteryObservation::from_reading_after(&reading, None).expect("an observation");
        assert_eq!((first.stored_wh(), first.charged_wh, first.discharged_wh), (5_000, 0, 0));
        reading.battery_soc_permille = Some(620);
        let second = BatteryObservation::from_reading_after(&reading, Some(&first)).expect("an observation");
        assert_eq!((second.charged_wh, second.discharged_wh), (1_200, 0));
        reading.battery_soc_permille = Some(580);
        let third = BatteryObservation::from_reading_after(&reading, Some(&second)).expect("an observation");
        assert_eq!((third.charged_wh, third.discharged_wh), (1_200, 400));
    }
}
