//! The closing auction's price rule: one uniform price at which the resting orders of a call phase
//! cross. Pure arithmetic over the book's price levels; [`OrderBook::uncross`](super::OrderBook::uncross)
//! allocates the fills.
//!
//! # Rule
//! For a price level `p`, demand `D(p)` is the open quantity of the bids at `p` or higher, supply
//! `S(p)` that of the asks at `p` or lower, and the executable volume `V(p) = min(D(p), S(p))`.
//! Among all levels from the best ask to the best bid (not only those where an order rests), the
//! clearing level
//! 1. maximises `V(p)`;
//! 2. then minimises the imbalance `|D(p) − S(p)|`;
//! 3. then, if every remaining level has more demand than supply, is the highest of them (buyers
//!    press the price up); if every one has more supply, the lowest;
//! 4. otherwise is the remaining level nearest the midpoint of the lowest and highest remaining
//!    levels, the lower one when two are equally near.
//!
//! At the clearing price every bid above it and every ask below it fills completely; at the price
//! itself the side with the excess fills in time priority. The rest of the book is then uncrossed: a
//! bid and an ask left over that still crossed would raise `V` at the ask's price.

use protocol::{PricePerKwh, Wh};

/// What one closing auction did: its uniform price (none when nothing crossed), the volume that
/// changed hands at it and the number of trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuctionOutcome {
    pub price: Option<PricePerKwh>,
    pub volume: Wh,
    pub trades: u64,
}

impl AuctionOutcome {
    /// Nothing crossed.
    pub const NONE: AuctionOutcome = AuctionOutcome { price: None, volume: Wh(0), trades: 0 };
}

/// Where a call phase's orders cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clearing {
    /// The clearing price's level index, `(price - price_min) / tick`.
    pub level: u32,
    /// What trades: `min(demand, supply)` at the level, in Wh.
    pub volume_wh: i128,
    /// Open bid quantity at the level or higher, in Wh.
    pub demand_wh: i128,
    /// Open ask quantity at the level or lower, in Wh.
    pub supply_wh: i128,
}

impl Clearing {
    fn imbalance_wh(&self) -> i128 {
        (self.demand_wh - self.supply_wh).abs()
    }
}

/// The clearing level of bids and asks given as `(level, open quantity in Wh)`, bids from the
/// highest level down and asks from the lowest up (each level at most once); `None` when no bid
/// reaches any ask.
pub fn clearing(bids: &[(u32, i64)], asks: &[(u32, i64)]) -> Option<Clearing> {
    let (&(best_bid, _), &(best_ask, _)) = (bids.first()?, asks.first()?);
    if best_bid < best_ask {
        return None;
    }
    let candidates = candidate_levels(bids, asks, best_ask, best_bid);
    let best_volume = candidates.iter().map(|candidate| candidate.volume_wh).max()?;
    let with_volume = candidates.iter().filter(|candidate| candidate.volume_wh == best_volume);
    let least_imbalance = with_volume.clone().map(Clearing::imbalance_wh).min()?;
    let tied: Vec<Clearing> =
        with_volume.filter(|candidate| candidate.imbalance_wh() == least_imbalance).copied().collect();
    tie_break(&tied)
}

/// `D`, `S` and `V` at every level of `[low, high]`, lowest first: bids rest at `high` or lower and
/// asks at `low` or higher, so only those inside the range count at any of its levels.
fn candidate_levels(bids: &[(u32, i64)], asks: &[(u32, i64)], low: u32, high: u32) -> Vec<Clearing> {
    let span = (high - low) as usize + 1;
    let (mut bid_wh, mut ask_wh) = (vec![0i128; span], vec![0i128; span]);
    for &(level, qty) in bids.iter().filter(|bid| bid.0 >= low) {
        bid_wh[(level - low) as usize] += i128::from(qty);
    }
    for &(level, qty) in asks.iter().filter(|ask| ask.0 <= high) {
        ask_wh[(level - low) as usize] += i128::from(qty);
    }
    // Demand at a level is the bid quantity at it and above: a running sum from the top.
    let mut demand_wh = bid_wh;
    for offset in (0..span.saturating_sub(1)).rev() {
        demand_wh[offset] += demand_wh[offset + 1];
    }
    let mut supply_wh = 0;
    (0..span)
        .map(|offset| {
            supply_wh += ask_wh[offset];
            let demand_wh = demand_wh[offset];
            Clearing { level: low + offset as u32, volume_wh: demand_wh.min(supply_wh), demand_wh, supply_wh }
        })
        .collect()
}

/// Steps 3 and 4 of the rule, over levels that tie on volume and imbalance (lowest first).
fn tie_break(tied: &[Clearing]) -> Option<Clearing> {
    let (lowest, highest) = (*tied.first()?, *tied.last()?);
    if tied.iter().all(|candidate| candidate.demand_wh > candidate.supply_wh) {
        return Some(highest);
    }
    if tied.iter().all(|candidate| candidate.supply_wh > candidate.demand_wh) {
        return Some(lowest);
    }
    // Twice the midpoint, so it stays an integer; `min_by_key` keeps the first (lower) of equals.
    let midpoint_twice = i64::from(lowest.level) + i64::from(highest.level);
    tied.iter().min_by_key(|candidate| (2 * i64::from(candidate.level) - midpoint_twice).abs()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_clearing_when_the_best_bid_is_below_the_best_ask() {
        assert_eq!(clearing(&[(3, 10)], &[(4, 10)]), None);
        assert_eq!(clearing(&[], &[(4, 10)]), None);
    }

    #[test]
    fn the_level_with_the_most_volume_wins() {
        // Bids 10 at 5, 10 at 3; asks 15 at 2, 10 at 4. V: at 2 → 15? D(2)=20, S(2)=15 → 15;
        // at 3 → D=20, S=15 → 15; at 4 → D=10, S=25 → 10; at 5 → D=10, S=25 → 10.
        let found = clearing(&[(5, 10), (3, 10)], &[(2, 15), (4, 10)]).expect("crosses");
        assert_eq!(found.volume_wh, 15);
        // Levels 2 and 3 tie on volume and imbalance (5), both with more demand: the higher one.
        assert_eq!(found.level, 3);
    }

    #[test]
    fn a_balanced_tie_takes_the_level_nearest_the_middle_and_the_lower_of_two() {
        // One bid 10 at 7, one ask 10 at 2: every level 2..=7 executes 10 with no imbalance; the
        // midpoint is 4.5, and 4 and 5 are equally near → 4.
        let found = clearing(&[(7, 10)], &[(2, 10)]).expect("crosses");
        assert_eq!((found.level, found.volume_wh), (4, 10));
    }

    #[test]
    fn a_level_where_no_order_rests_can_have_the_least_imbalance() {
        // Bids 10 at 6, 3 at 2; asks 10 at 2, 4 at 6. V is 10 at every level 2..=6, the imbalance is
        // 3 at 2, 0 at 3..=5 and 4 at 6: the middle of 3..=5 is 4.
        let found = clearing(&[(6, 10), (2, 3)], &[(2, 10), (6, 4)]).expect("crosses");
        assert_eq!((found.level, found.volume_wh, found.demand_wh, found.supply_wh), (4, 10, 10, 10));
    }
}
