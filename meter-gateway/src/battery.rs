//! A home battery's physics, for the simulator and the market report: usable capacity, charge and
//! discharge power limits, round-trip efficiency and standby loss, in exact integer energy
//! (milliwatt-hours), so that every step balances to the last mWh:
//!
//! `stored after = stored before + charged − discharged − losses`
//!
//! where `charged` and `discharged` are AC energy at the battery's inverter terminals (what a home's
//! grid meter sees) and `losses` are the conversion and standby losses. The whole conversion loss is
//! taken on the way in (a kWh charged stores `round_trip_efficiency` kWh, which comes out whole), so a
//! full cycle returns exactly the round-trip efficiency and there is one rounding per step, in the
//! battery's disfavour.
//!
//! What it must never do: store more than its capacity, go below zero, or exceed its power limits,
//! whatever it is asked (asserted after every step).

/// Milliwatt-hours per watt-hour.
pub const MWH_PER_WH: i64 = 1_000;
/// Milliseconds per hour over milliwatt-hours per watt-hour: `mWh = W × ms / MS_PER_MWH_AT_1W`.
pub const MS_PER_MWH_AT_1W: i64 = 3_600;
/// The per-mille scale of state of charge and efficiency.
pub const PERMILLE: i64 = 1_000;

/// Energy in mWh of `power_w` held for `step_ms` (truncated towards zero).
pub fn energy_mwh(power_w: i64, step_ms: i64) -> i64 {
    power_w.saturating_mul(step_ms) / MS_PER_MWH_AT_1W
}

/// What a battery is and can do. Validated by [`BatterySpec::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatterySpec {
    /// Usable energy between empty and full.
    pub capacity_wh: i64,
    /// Most AC power it takes while charging.
    pub charge_w_max: i64,
    /// Most AC power it gives while discharging.
    pub discharge_w_max: i64,
    /// AC energy out per AC energy in over a full cycle, per mille (e.g. 900 = 90 %).
    pub round_trip_efficiency_permille: i64,
    /// Energy lost per hour while it sits (electronics, self-discharge).
    pub standby_loss_w: i64,
}

/// Why a battery specification is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatterySpecError {
    #[error("capacity_wh must be positive")]
    Capacity,
    #[error("charge_w_max and discharge_w_max must be positive")]
    Power,
    #[error("round_trip_efficiency_permille must be 1 to 1000")]
    Efficiency,
    #[error("standby_loss_w must not be negative")]
    Standby,
}

impl BatterySpec {
    /// A common home battery: 10 kWh, 5 kW both ways, 90 % round trip, 5 W standby.
    pub const HOME_10_KWH: BatterySpec = BatterySpec {
        capacity_wh: 10_000,
        charge_w_max: 5_000,
        discharge_w_max: 5_000,
        round_trip_efficiency_permille: 900,
        standby_loss_w: 5,
    };

    pub fn validate(&self) -> Result<(), BatterySpecError> {
        if self.capacity_wh <= 0 {
            return Err(BatterySpecError::Capacity);
        }
        if self.charge_w_max <= 0 || self.discharge_w_max <= 0 {
            return Err(BatterySpecError::Power);
        }
        if !(1..=PERMILLE).contains(&self.round_trip_efficiency_permille) {
            return Err(BatterySpecError::Efficiency);
        }
        if self.standby_loss_w < 0 {
            return Err(BatterySpecError::Standby);
        }
        Ok(())
    }

    pub fn capacity_mwh(&self) -> i64 {
        self.capacity_wh * MWH_PER_WH
    }
}

/// How the battery is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatteryMode {
    /// The inverter's own mode: charge from the home's surplus, discharge to cover its deficit, so
    /// the grid meter sees as little as the limits allow. What a battery does when nobody controls it.
    #[default]
    SelfConsumption,
    /// A fixed AC power setpoint: positive charges (from the home's surplus or the grid), negative
    /// discharges (to the home or the grid). Clamped to the limits and the stored energy.
    Setpoint { power_w: i64 },
}

/// Cumulative counters and the stored energy; every field only changes through [`Battery::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatteryCounters {
    /// Energy stored now.
    pub stored_mwh: i64,
    /// AC energy taken in, since the battery was installed.
    pub charged_mwh: i64,
    /// AC energy given out, since the battery was installed.
    pub discharged_mwh: i64,
    /// Conversion and standby losses, since the battery was installed.
    pub losses_mwh: i64,
}

/// A battery in operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Battery {
    pub spec: BatterySpec,
    pub mode: BatteryMode,
    counters: BatteryCounters,
}

impl Battery {
    /// A battery holding `soc_permille` of its capacity, in self-consumption mode.
    pub fn new(spec: BatterySpec, soc_permille: i64) -> Self {
        let stored_mwh = spec.capacity_mwh() * soc_permille.clamp(0, PERMILLE) / PERMILLE;
        Self { spec, mode: BatteryMode::default(), counters: BatteryCounters { stored_mwh, ..Default::default() } }
    }

    pub fn counters(&self) -> BatteryCounters {
        self.counters
    }

    /// State of charge, per mille of the usable capacity (rounded down).
    pub fn soc_permille(&self) -> i64 {
        self.counters.stored_mwh * PERMILLE / self.spec.capacity_mwh()
    }

    /// Runs one step of `step_ms` with the home's own net demand `home_net_w` (load − PV, positive
    /// when the home would import) and returns the AC energy the battery exchanged in mWh: positive
    /// when it charged, negative when it discharged. The grid meter sees `home_net + returned`.
    pub fn step(&mut self, home_net_w: i64, step_ms: i64) -> i64 {
        debug_assert!(step_ms >= 0, "time runs forward");
        let request_w = match self.mode {
            BatteryMode::SelfConsumption => -home_net_w,
            BatteryMode::Setpoint { power_w } => power_w,
        };
        let before = self.counters;
        let ac_mwh = if request_w > 0 {
            self.charge(energy_mwh(request_w.min(self.spec.charge_w_max), step_ms))
        } else {
            -self.discharge(energy_mwh(request_w.saturating_neg().min(self.spec.discharge_w_max), step_ms))
        };
        self.standby(step_ms);
        let after = self.counters;
        debug_assert_eq!(
            after.stored_mwh - before.stored_mwh,
            (after.charged_mwh - before.charged_mwh)
                - (after.discharged_mwh - before.discharged_mwh)
                - (after.losses_mwh - before.losses_mwh),
            "every step balances"
        );
        debug_assert!(after.stored_mwh >= 0, "never below empty");
        debug_assert!(after.stored_mwh <= self.spec.capacity_mwh(), "never above full");
        ac_mwh
    }

    /// Takes in up to `ac_mwh`, as much as fits; returns what it took.
    fn charge(&mut self, ac_mwh: i64) -> i64 {
        let efficiency = self.spec.round_trip_efficiency_permille;
        let room_mwh = self.spec.capacity_mwh() - self.counters.stored_mwh;
        // The AC energy whose stored part just fills the room, rounded down.
        let ac_mwh = ac_mwh.min(room_mwh * PERMILLE / efficiency).max(0);
        let stored_mwh = ac_mwh * efficiency / PERMILLE;
        self.counters.charged_mwh += ac_mwh;
        self.counters.stored_mwh += stored_mwh;
        self.counters.losses_mwh += ac_mwh - stored_mwh;
        ac_mwh
    }

    /// Gives out up to `ac_mwh`, as much as is stored; returns what it gave.
    fn discharge(&mut self, ac_mwh: i64) -> i64 {
        let ac_mwh = ac_mwh.min(self.counters.stored_mwh).max(0);
        self.counters.discharged_mwh += ac_mwh;
        self.counters.stored_mwh -= ac_mwh;
        ac_mwh
    }

    fn standby(&mut self, step_ms: i64) {
        let loss_mwh = energy_mwh(self.spec.standby_loss_w, step_ms).min(self.counters.stored_mwh);
        self.counters.stored_mwh -= loss_mwh;
        self.counters.losses_mwh += loss_mwh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE_MS: i64 = 60_000;

    fn lossless() -> BatterySpec {
        BatterySpec { round_trip_efficiency_permille: 1_000, standby_loss_w: 0, ..BatterySpec::HOME_10_KWH }
    }

    #[test]
    fn self_consumption_charges_from_surplus_and_covers_the_deficit() {
        let mut battery = Battery::new(lossless(), 500);
        // 2.1 kW of surplus for an hour: 2.1 kWh in (35 Wh a minute, exactly).
        let charged: i64 = (0..60).map(|_| battery.step(-2_100, MINUTE_MS)).sum();
        assert_eq!(charged, 2_100_000);
        assert_eq!(battery.soc_permille(), 710);
        // 1.2 kW of deficit for an hour: 1.2 kWh out.
        let given: i64 = (0..60).map(|_| battery.step(1_200, MINUTE_MS)).sum();
        assert_eq!(given, -1_200_000);
        assert_eq!(battery.soc_permille(), 590);
    }

    #[test]
    fn power_limits_and_capacity_bound_what_it_takes_and_gives() {
        let mut battery = Battery::new(lossless(), 0);
        battery.mode = BatteryMode::Setpoint { power_w: 9_000 };
        assert_eq!(battery.step(0, 3_600_000), 5_000_000, "at most 5 kW for an hour");
        battery.mode = BatteryMode::Setpoint { power_w: 9_000 };
        assert_eq!(battery.step(0, 3_600_000), 5_000_000);
        assert_eq!(battery.step(0, 3_600_000), 0, "full");
        assert_eq!(battery.soc_permille(), 1_000);
        battery.mode = BatteryMode::Setpoint { power_w: -20_000 };
        assert_eq!(battery.step(0, 3 * 3_600_000), -10_000_000, "empties, no further");
        assert_eq!(battery.step(0, 3_600_000), 0);
    }

    #[test]
    fn a_full_cycle_returns_the_round_trip_efficiency() {
        let spec = BatterySpec { standby_loss_w: 0, ..BatterySpec::HOME_10_KWH };
        let mut battery = Battery::new(spec, 0);
        battery.mode = BatteryMode::Setpoint { power_w: 5_000 };
        let taken: i64 = (0..180).map(|_| battery.step(0, MINUTE_MS)).sum();
        battery.mode = BatteryMode::Setpoint { power_w: -5_000 };
        let given: i64 = -(0..180).map(|_| battery.step(0, MINUTE_MS)).sum::<i64>();
        assert_eq!(battery.counters().stored_mwh, 0);
        // One mWh of rounding in the battery's disfavour where the last charge step met the top.
        assert!((899..=900).contains(&(given * PERMILLE / taken)), "{given} of {taken}");
    }

    #[test]
    fn standby_loss_drains_an_idle_battery() {
        let mut battery = Battery::new(BatterySpec::HOME_10_KWH, 500);
        battery.mode = BatteryMode::Setpoint { power_w: 0 };
        battery.step(0, 24 * 3_600_000);
        assert_eq!(battery.counters().losses_mwh, 120_000, "5 W for a day");
        assert_eq!(battery.counters().stored_mwh, 5_000_000 - 120_000);
    }

    #[test]
    fn invalid_specifications_are_refused() {
        let good = BatterySpec::HOME_10_KWH;
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(BatterySpec { capacity_wh: 0, ..good }.validate(), Err(BatterySpecError::Capacity));
        assert_eq!(BatterySpec { charge_w_max: 0, ..good }.validate(), Err(BatterySpecError::Power));
        assert_eq!(
            BatterySpec { round_trip_efficiency_permille: 1_001, ..good }.validate(),
            Err(BatterySpecError::Efficiency)
        );
        assert_eq!(BatterySpec { standby_loss_w: -1, ..good }.validate(), Err(BatterySpecError::Standby));
    }

    proptest! {
        /// Whatever it is asked, a battery balances to the mWh, stays within empty and full, and never
        /// exceeds its power limits.
        #[test]
        fn every_step_balances_and_stays_within_limits(
            steps in proptest::collection::vec((-20_000i64..20_000, any::<bool>(), 1i64..900_000), 1..200),
            soc in 0i64..=1_000,
        ) {
            let spec = BatterySpec::HOME_10_KWH;
            let mut battery = Battery::new(spec, soc);
            let start = battery.counters();
            for (power_w, setpoint, step_ms) in steps {
                battery.mode = if setpoint { BatteryMode::Setpoint { power_w } } else { BatteryMode::SelfConsumption };
                let ac_mwh = battery.step(power_w, step_ms);
                prop_assert!(ac_mwh <= energy_mwh(spec.charge_w_max, step_ms));
                prop_assert!(-ac_mwh <= energy_mwh(spec.discharge_w_max, step_ms));
                let now = battery.counters();
                prop_assert!((0..=spec.capacity_mwh()).contains(&now.stored_mwh));
                prop_assert_eq!(
                    now.stored_mwh - start.stored_mwh,
                    (now.charged_mwh - start.charged_mwh) - (now.discharged_mwh - start.discharged_mwh)
                        - (now.losses_mwh - start.losses_mwh)
                );
            }
        }
    }
}
