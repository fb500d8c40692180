//! The GRID emission schedule and how a slot's share of it is worked out.
//!
//! Epoch `e` (of `epoch_len_ms`, counted from `genesis_ms`) allots
//! `initial_emission_per_epoch >> (e / halving_epochs)` micro-GRID: the amount halves (rounding down)
//! every `halving_epochs` epochs. The cumulative schedule `C(t)` is the sum of all whole epochs
//! before `t` plus the elapsed fraction of the current one, rounded down. **A slot's budget is
//! `C(slot end) − C(slot start)`**, so the budgets of an epoch's slots add up to exactly the epoch's
//! emission (they telescope), whatever the slot length. **Zones share the schedule equally:** a zone's
//! part of a budget is [`zone_share`] of it among the zones whose first slot starts at or before the
//! slot (ordered by zone id; the remainder of the division goes to the lower ranks), so with zones of
//! equal slot length the zones' parts add up exactly to the budget. The maximum supply is global.
//!
//! In a slot, the pool (budget + what earlier slots of the zone carried) is shared among sellers in
//! proportion to their delivered peer-to-peer energy, each share rounded down; the undistributed
//! remainder (and the whole pool when nobody delivered) is carried to the zone's next slot. Nothing is
//! minted beyond `max_supply`: the pool is capped by what is left, and the carry never exceeds what
//! is left after the slot's mint.

use serde::{Deserialize, Serialize};

/// The reward parameters (table `reward_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardSchedule {
    pub genesis_ms: i64,
    pub epoch_len_ms: i64,
    /// Micro-GRID minted in each of the first `halving_epochs` epochs.
    pub initial_emission_per_epoch: i64,
    pub halving_epochs: i64,
    /// Micro-GRID that may ever exist.
    pub max_supply: i64,
}

/// One day: the default reward epoch.
pub const EPOCH_LEN_MS_DEFAULT: i64 = 86_400_000;

impl RewardSchedule {
    /// The epoch containing `at_ms`; `None` before genesis.
    pub fn epoch_of(&self, at_ms: i64) -> Option<i64> {
        (at_ms >= self.genesis_ms).then(|| (at_ms - self.genesis_ms) / self.epoch_len_ms)
    }

    /// Micro-GRID allotted to `epoch`.
    pub fn emission_for_epoch(&self, epoch: i64) -> i64 {
        let halvings = (epoch.max(0) / self.halving_epochs).min(63);
        self.initial_emission_per_epoch >> halvings
    }

    /// The first epoch at which the emission halves after `epoch`.
    pub fn next_halving_epoch(&self, epoch: i64) -> i64 {
        (epoch.max(0) / self.halving_epochs + 1) * self.halving_epochs
    }

    /// Cumulative scheduled emission from genesis to `at_ms` (see the module docs), ignoring the cap.
    pub fn cumulative(&self, at_ms: i64) -> i128 {
        let Some(epoch) = self.epoch_of(at_ms) else {
            return 0;
        };
        let mut total: i128 = 0;
        // Whole halving periods before the current epoch: each has `halving_epochs` equal epochs.
        let full_periods = epoch / self.halving_epochs;
        for period in 0..full_periods.min(64) {
            total += i128::from(self.halving_epochs) * i128::from(self.initial_emission_per_epoch >> period);
        }
        let epochs_in_period = epoch - full_periods * self.halving_epochs;
        total += i128::from(epochs_in_period) * i128::from(self.emission_for_epoch(epoch));
        let into_epoch_ms = at_ms - self.genesis_ms - epoch * self.epoch_len_ms;
        total + i128::from(self.emission_for_epoch(epoch)) * i128::from(into_epoch_ms) / i128::from(self.epoch_len_ms)
    }

    /// The scheduled budget of the interval `[start_ms, end_ms)`.
    pub fn budget(&self, start_ms: i64, end_ms: i64) -> i64 {
        let budget = self.cumulative(end_ms) - self.cumulative(start_ms);
        i64::try_from(budget.max(0)).unwrap_or(i64::MAX)
    }
}

/// Zone `rank` (0-based) of `zones`' part of `amount`: `⌊amount·(rank+1)/zones⌋ − ⌊amount·rank/zones⌋`.
/// The parts of all ranks add up to `amount` exactly.
pub fn zone_share(amount: i64, rank: usize, zones: usize) -> i64 {
    if zones == 0 || rank >= zones {
        return 0;
    }
    let part = |k: usize| i128::from(amount) * k as i128 / zones as i128;
    i64::try_from(part(rank + 1) - part(rank)).unwrap_or(0)
}

/// The slot's reward pool: budget plus carry, capped so supply never exceeds `max_supply`.
pub fn capped_pool(budget: i64, carry_in: i64, supply: i64, max_supply: i64) -> i64 {
    let left = max_supply.saturating_sub(supply).max(0);
    budget.saturating_add(carry_in).min(left)
}

/// Shares `pool` among `delivered` energies in proportion, each rounded down. Returns the shares
/// (same order) and the undistributed remainder.
pub fn share(pool: i64, delivered: &[i64]) -> (Vec<i64>, i64) {
    let total: i128 = delivered.iter().map(|&wh| i128::from(wh.max(0))).sum();
    if total == 0 || pool <= 0 {
        return (vec![0; delivered.len()], pool.max(0));
    }
    let shares: Vec<i64> = delivered
        .iter()
        .map(|&wh| {
            let exact = i128::from(pool) * i128::from(wh.max(0)) / total;
            // exact <= pool because wh <= total.
            i64::try_from(exact).unwrap_or(0)
        })
        .collect();
    let minted: i64 = shares.iter().sum();
    assert!(minted <= pool, "shares never exceed the pool");
    (shares, pool - minted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RewardSchedule {
        RewardSchedule {
            genesis_ms: 0,
            epoch_len_ms: 86_400_000,
            initial_emission_per_epoch: 1_000_000,
            halving_epochs: 2,
            max_supply: i64::MAX,
        }
    }

    #[test]
    fn emission_halves_every_halving_period() {
        let schedule = schedule();
        assert_eq!(schedule.emission_for_epoch(0), 1_000_000);
        assert_eq!(schedule.emission_for_epoch(1), 1_000_000);
        assert_eq!(schedule.emission_for_epoch(2), 500_000);
        assert_eq!(schedule.emission_for_epoch(5), 250_000);
        assert_eq!(schedule.emission_for_epoch(10_000), 0);
        assert_eq!(schedule.next_halving_epoch(1), 2);
    }

    #[test]
    fn the_slot_budgets_of_an_epoch_add_up_to_its_emission() {
        let schedule = RewardSchedule { initial_emission_per_epoch: 1_000_003, ..schedule() };
        for epoch in 0..5 {
            let start = epoch * schedule.epoch_len_ms;
            let total: i64 =
                (0..96).map(|slot| schedule.budget(start + slot * 900_000, start + (slot + 1) * 900_000)).sum();
            assert_eq!(total, schedule.emission_for_epoch(epoch), "epoch {epoch}");
        }
        assert_eq!(schedule.budget(-900_000, 0), 0);
    }

    #[test]
    fn shares_are_proportional_and_the_remainder_is_returned() {
        assert_eq!(share(10, &[1, 1, 1]), (vec![3, 3, 3], 1));
        assert_eq!(share(10, &[0, 0]), (vec![0, 0], 10));
        assert_eq!(share(100, &[3, 1]), (vec![75, 25], 0));
    }

    #[test]
    fn zone_shares_add_up_to_the_amount() {
        for zones in 1..7 {
            let total: i64 = (0..zones).map(|rank| zone_share(1_000_003, rank, zones)).sum();
            assert_eq!(total, 1_000_003, "{zones} zones");
        }
        assert_eq!(zone_share(10, 0, 3), 3);
        assert_eq!(zone_share(10, 3, 3), 0);
    }

    #[test]
    fn the_pool_never_takes_supply_past_the_maximum() {
        assert_eq!(capped_pool(100, 50, 900, 1_000), 100);
        assert_eq!(capped_pool(100, 50, 1_000, 1_000), 0);
        assert_eq!(capped_pool(100, 50, 1_200, 1_000), 0);
    }
}
