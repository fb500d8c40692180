//! The quoting strategy: for each upcoming slot, the quantity is the learned forecast less what already
//! filled (never more than the plan, never beyond the owner's volume and spend caps), and the price
//! starts at the better of the middle of the zone's feed-in/retail band and the best opposite quote,
//! then moves in steps towards the owner's limit as gate closure nears, reaching it before the gate
//! and never going beyond it.
//!
//! An order is never replaced: a replace sets the open quantity outright, so a fill arriving just
//! before it would add to the total. The agent cancels, waits for the exchange's answer (which carries
//! the final filled quantity), and only then places the new order.

use super::battery::{self, PlanInputs, SetpointInputs, HORIZON_SLOTS};
use super::position::{cost_micro, Positions};
use super::{Action, Planner, QuotingSettings, MS_PER_DAY, PLANS_PER_SLOT, REPLACE_THRESHOLD_PERCENT};
use crate::battery::BatteryMode;
use protocol::{Cancel, Order, PricePerKwh, Side, SlotId, TimestampMs, Wh};

/// The ramp reaches the owner's limit after this share (per mille) of the quoting window, so the last
/// part of it before gate closure quotes the limit itself.
pub const RAMP_DONE_PER_MILLE: i64 = 750;
/// The price moves in this many steps across the ramp: each step is one cancel and one new order,
/// so few steps keep the orders resting most of the time.
pub const RAMP_STEPS: i64 = 4;

/// A zone's tariffs: the utility buys at `feed_in` and sells at `retail` (µ per kWh). Peer-to-peer
/// prices inside this band leave both sides better off than the utility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    pub feed_in_per_kwh: i64,
    pub retail_per_kwh: i64,
}

/// The best prices of one slot's book, as last published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Top {
    pub best_bid: Option<i64>,
    pub best_ask: Option<i64>,
}

/// The owner's caps; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub qty_wh_per_slot_max: Option<i64>,
    pub qty_wh_per_day_max: Option<i64>,
    /// Money spent on buying, in micro-units.
    pub spend_per_slot_max: Option<i64>,
    pub spend_per_day_max: Option<i64>,
}

/// The price to quote for `side` with the owner's `limit` (sell: lowest, buy: highest), `progress`
/// per mille through the quoting window; on the `tick` grid, never beyond the limit.
pub fn quote_price(side: Side, limit: i64, band: Band, top: Top, tick: i64, progress_per_mille: i64) -> i64 {
    let tick = tick.max(1);
    let middle = (band.feed_in_per_kwh + band.retail_per_kwh) / 2;
    let step = (progress_per_mille.clamp(0, 1000) * RAMP_STEPS / RAMP_DONE_PER_MILLE).min(RAMP_STEPS);
    match side {
        Side::Sell => {
            let start = middle.max(top.best_bid.unwrap_or(0)).max(limit);
            let price = start - (start - limit) * step / RAMP_STEPS;
            // Round up onto the grid: a sell never goes below its limit.
            price.div_euclid(tick) * tick + if price.rem_euclid(tick) == 0 { 0 } else { tick }
        }
        Side::Buy => {
            let start = middle.min(top.best_ask.unwrap_or(i64::MAX)).min(limit);
            let price = start + (limit - start) * step / RAMP_STEPS;
            // Round down onto the grid: a buy never goes above its limit.
            price.div_euclid(tick) * tick
        }
    }
}

/// How much more of `side` the agent may commit in `slot` at `price`: the plan less what filled, then
/// cut to the volume caps (filled and open, both sides) and, for buys, the spend caps.
/// `except` is an order about to be replaced: its open quantity does not count.
pub fn allowed_qty_wh(
    positions: &Positions,
    slot: SlotId,
    side: Side,
    plan_wh: i64,
    price: i64,
    caps: Caps,
    except: Option<u64>,
) -> i64 {
    let mut qty = plan_wh - positions.filled_wh(slot, side);
    if let Some(cap) = caps.qty_wh_per_slot_max {
        qty = qty.min(cap - positions.committed_slot_wh(slot, except));
    }
    if let Some(cap) = caps.qty_wh_per_day_max {
        qty = qty.min(cap - positions.committed_day_wh(slot, except));
    }
    if side == Side::Buy && price > 0 {
        let affordable = |budget: i64| i64::try_from(i128::from(budget.max(0)) * 1000 / i128::from(price)).unwrap_or(0);
        if let Some(cap) = caps.spend_per_slot_max {
            qty = qty.min(affordable(cap - positions.committed_slot_spend(slot, except)));
        }
        if let Some(cap) = caps.spend_per_day_max {
            qty = qty.min(affordable(cap - positions.committed_day_spend(slot, except)));
        }
        // Rounding the cost up could still overshoot by a micro-unit: step down until it fits.
        while qty > 0 && !fits_spend(positions, slot, price, qty, caps, except) {
            qty -= 1;
        }
    }
    qty.max(0)
}

fn fits_spend(positions: &Positions, slot: SlotId, price: i64, qty: i64, caps: Caps, except: Option<u64>) -> bool {
    let cost = cost_micro(price, qty);
    let slot_ok = caps.spend_per_slot_max.is_none_or(|cap| positions.committed_slot_spend(slot, except) + cost <= cap);
    let day_ok = caps.spend_per_day_max.is_none_or(|cap| positions.committed_day_spend(slot, except) + cost <= cap);
    slot_ok && day_ok
}

impl Planner {
    /// The quoting strategy (see the module documentation).
    pub(super) fn plan_quoting(&mut self, now_ms: i64, quoting: &QuotingSettings) -> Vec<Action> {
        let gate_ms = self.settings.gate_closure_ms;
        // The daily caps count the slots of a UTC day: earlier days' orders are done with.
        let today_ms = now_ms - now_ms.rem_euclid(MS_PER_DAY);
        self.positions.settle_before(|slot| slot.start_ms() - gate_ms <= now_ms, today_ms);
        self.tops.retain(|slot, _| slot.start_ms() - gate_ms > now_ms);
        self.plan_battery(now_ms, quoting);
        let mut actions = Vec::new();
        for slot in self.tradable_slots(now_ms) {
            let wanted = self.quote(slot, now_ms, quoting);
            let live = self.positions.live_order(slot);
            match (live, wanted) {
                // A cancel is on its way: wait for its answer before anything else.
                (Some((_, order)), _) if order.cancel_nonce.is_some() => {}
                (Some((nonce, order)), Some((side, price, qty))) => {
                    let threshold = (order.open_qty_wh * REPLACE_THRESHOLD_PERCENT / 100).max(self.settings.qty_min_wh);
                    let same = order.side == side
                        && order.price_per_kwh == price
                        && (qty - order.open_qty_wh).abs() <= threshold;
                    if !same {
                        actions.push(self.cancel_tracked(slot, nonce, now_ms));
                    }
                }
                (Some((nonce, _)), None) => actions.push(self.cancel_tracked(slot, nonce, now_ms)),
                (None, Some((side, price, qty))) => {
                    let nonce = self.nonce();
                    self.positions.placed(nonce, slot, side, price, qty);
                    actions.push(Action::Order(
                        Order::gtc(self.account, self.zone.clone(), slot, side, PricePerKwh(price), Wh(qty))
                            .at(nonce, TimestampMs(now_ms)),
                    ));
                }
                (None, None) => {}
            }
        }
        actions
    }

    /// `(side, price, open quantity)` the agent wants resting in `slot` now, if anything: the
    /// forecast (less its running error: a kWh sold and not delivered is bought back at retail, one
    /// bought and not used goes back at feed-in) less what filled, within the caps, at the quoted price inside the zone's band.
    fn quote(&mut self, slot: SlotId, now_ms: i64, quoting: &QuotingSettings) -> Option<(Side, i64, i64)> {
        let confident_wh = self.forecaster.confident_net_export_wh(slot)?;
        // The slot's band as its book states it (a time-of-use tariff moves it from slot to slot),
        // else the configured tariffs.
        let slot_band = self.tops.get(&slot).and_then(|(_, _, band)| *band);
        let band = match slot_band {
            Some(band) => Band { feed_in_per_kwh: band.min_per_kwh.get(), retail_per_kwh: band.max_per_kwh.get() },
            None => quoting.band(),
        };
        // With a battery: the home's position after the battery's plan, less the same margin.
        let (net_wh, charging) = match (self.settings.battery.is_some(), self.battery.plan.get(&slot)) {
            (true, Some(&battery_wh)) => {
                let net = self.forecaster.net_export_wh(slot)? - battery_wh;
                let margin = self.forecaster.error_wh().unwrap_or(0);
                (net.signum() * (net.abs() - margin).max(0), battery_wh > 0)
            }
            _ => (confident_wh, false),
        };
        let (side, plan_wh, limit) = if net_wh > 0 {
            (
                Side::Sell,
                net_wh * i64::from(self.settings.surplus_share_percent) / 100,
                self.settings.price_per_kwh_sell_min,
            )
        } else if self.settings.buy_deficit {
            let mut limit =
                self.settings.price_per_kwh_buy_max.min(quoting.buy_break_even_per_kwh(band.retail_per_kwh));
            if charging {
                // Energy bought to store must beat retail after the round trip's loss.
                limit = limit.min(self.storage_break_even_per_kwh(quoting));
            }
            (Side::Buy, -net_wh, limit)
        } else {
            return None;
        };
        let tick = quoting.tick_per_kwh;
        // The exchange's band: the tariffs moved inwards onto the tick grid.
        let (band_low, band_high) = match slot_band {
            Some(_) => (band.feed_in_per_kwh, band.retail_per_kwh),
            None => ((band.feed_in_per_kwh + tick - 1) / tick * tick, band.retail_per_kwh / tick * tick),
        };
        let window_ms = i64::from(self.settings.slots_ahead) * self.settings.slot_len_ms;
        let window_start_ms = slot.start_ms() - self.settings.gate_closure_ms - window_ms;
        let progress = (now_ms - window_start_ms) * 1000 / window_ms.max(1);
        let top = self.tops.get(&slot).map(|(_, top, _)| *top).unwrap_or_default();
        let price = quote_price(side, limit, band, top, tick, progress);
        let price = match side {
            Side::Sell if price > band_high => return None,
            Side::Buy if price < band_low => return None,
            _ => price.clamp(band_low, band_high),
        };
        // The caps and the plan are checked as if the live order were not there (it is to be replaced).
        let live = self.positions.live_order(slot).map(|(nonce, _)| nonce);
        let qty = allowed_qty_wh(&self.positions, slot, side, plan_wh, price, quoting.caps(), live);
        (qty >= self.settings.qty_min_wh).then_some((side, price, qty))
    }

    /// The highest price at which a kWh bought to store, returned at the round trip's efficiency,
    /// still beats buying it at retail later (fees included).
    fn storage_break_even_per_kwh(&self, quoting: &QuotingSettings) -> i64 {
        let efficiency = self.settings.battery.as_ref().map_or(0, |b| b.round_trip_efficiency_permille);
        let returned = quoting.retail_price_per_kwh * efficiency / 1000 - quoting.grid_fee_per_kwh;
        returned * 10_000 / (10_000 + quoting.protocol_fee_bps.max(0))
    }

    /// The battery's plan over the next day of slots (what the quotes account for) and, with
    /// `control` on, its mode for the slot being delivered (see [`battery`]).
    fn plan_battery(&mut self, now_ms: i64, quoting: &QuotingSettings) {
        let (Some(settings), Some(observed)) = (self.settings.battery.clone(), self.battery.observed) else {
            return;
        };
        let len = self.settings.slot_len_ms;
        let day = now_ms.div_euclid(MS_PER_DAY);
        let day_start_discharged_wh = match self.battery.day {
            Some((known, at)) if known == day => at,
            _ => {
                self.battery.day = Some((day, observed.discharged_wh));
                observed.discharged_wh
            }
        };
        let budget_wh = i64::from(settings.cycles_per_day_max) * observed.capacity_wh
            - (observed.discharged_wh - day_start_discharged_wh);
        let reserve_wh = observed.capacity_wh * i64::from(settings.reserve_soc_permille) / 1000;
        let current = SlotId::containing(TimestampMs(now_ms), len);
        let mut slots = Vec::with_capacity(HORIZON_SLOTS);
        let mut nets = Vec::with_capacity(HORIZON_SLOTS);
        let mut slot = current;
        for _ in 0..HORIZON_SLOTS {
            slot = slot.next(len);
            slots.push(slot);
            nets.push(self.forecaster.net_export_wh(slot).unwrap_or(0));
        }
        // Buying to charge only pays while stored energy beats retail.
        let trade = settings.control && self.storage_break_even_per_kwh(quoting) > quoting.feed_in_price_per_kwh;
        let inputs = PlanInputs {
            stored_wh: observed.stored_wh(),
            capacity_wh: observed.capacity_wh,
            reserve_wh,
            budget_wh,
            slot_limit_wh: settings.power_w_max * len / 3_600_000,
            efficiency_permille: settings.round_trip_efficiency_permille,
            trade,
        };
        self.battery.plan = slots.into_iter().zip(battery::plan(&nets, inputs)).collect();
        if !settings.control {
            self.battery.mode = None;
            return;
        }
        let since_ms = *self.battery.started_ms.get_or_insert(now_ms);
        let last_heard_ms = self.battery.last_contact_ms.unwrap_or(since_ms).max(since_ms);
        if now_ms - last_heard_ms > settings.no_contact_fallback_ms {
            if !self.battery.fallback {
                tracing::warn!(
                    silent_ms = now_ms - last_heard_ms,
                    "agent: nothing heard from the exchange; the battery falls back to self-consumption"
                );
            }
            self.battery.fallback = true;
            self.battery.mode = Some(BatteryMode::SelfConsumption);
            return;
        }
        if self.battery.fallback {
            tracing::info!("agent: the exchange is heard again; battery control resumes");
        }
        self.battery.fallback = false;
        let position_wh = self.positions.filled_wh(current, Side::Sell) - self.positions.filled_wh(current, Side::Buy);
        let home_net_w = observed
            .home_net_w
            .unwrap_or_else(|| -self.forecaster.net_export_wh(current).unwrap_or(0) * 3_600_000 / len.max(1));
        self.battery.mode = Some(battery::setpoint(SetpointInputs {
            position_wh,
            slot_len_ms: len,
            home_net_w,
            stored_wh: observed.stored_wh(),
            reserve_wh,
            budget_wh,
            power_w_max: settings.power_w_max,
            period_ms: len / PLANS_PER_SLOT,
        }));
    }

    fn cancel_tracked(&mut self, slot: SlotId, order_nonce: u64, now_ms: i64) -> Action {
        let nonce = self.nonce();
        self.positions.cancelling(order_nonce, nonce);
        Action::Cancel(Cancel {
            account: self.account,
            zone: self.zone.clone(),
            slot,
            order_nonce,
            nonce,
            ts_ms: TimestampMs(now_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{OrderStatus, OrderUpdate, TimestampMs, Wh};

    const BAND: Band = Band { feed_in_per_kwh: 80_000, retail_per_kwh: 300_000 };

    fn slot(n: i64) -> SlotId {
        SlotId::new(n * 900_000).expect("a slot")
    }

    #[test]
    fn a_seller_starts_in_the_middle_of_the_band_and_reaches_its_floor_before_the_gate() {
        let prices: Vec<i64> = [0, 200, 400, 600, 750, 1000]
            .iter()
            .map(|&p| quote_price(Side::Sell, 120_000, BAND, Top::default(), 1_000, p))
            .collect();
        assert_eq!(prices[0], 190_000, "the middle of 0.08..0.30");
        assert!(prices.windows(2).all(|pair| pair[1] <= pair[0]), "{prices:?}");
        assert_eq!(prices[4], 120_000);
        assert_eq!(prices[5], 120_000, "never below the floor");
    }

    #[test]
    fn a_buyer_starts_at_the_best_ask_when_it_is_below_the_middle_and_never_exceeds_its_cap() {
        let top = Top { best_bid: None, best_ask: Some(150_500) };
        assert_eq!(quote_price(Side::Buy, 260_000, BAND, top, 1_000, 0), 150_000, "rounded down onto the grid");
        assert_eq!(quote_price(Side::Buy, 260_000, BAND, top, 1_000, 1000), 260_000);
        // A cap below the middle: the buyer never quotes above it.
        for progress in [0, 500, 1000] {
            assert!(quote_price(Side::Buy, 100_500, BAND, Top::default(), 1_000, progress) <= 100_500);
        }
        // A floor off the grid rounds up: a sell never goes below it.
        assert_eq!(quote_price(Side::Sell, 120_500, BAND, Top::default(), 1_000, 1000), 121_000);
    }

    #[test]
    fn a_high_bid_lifts_the_sellers_start() {
        let top = Top { best_bid: Some(240_000), best_ask: None };
        assert_eq!(quote_price(Side::Sell, 120_000, BAND, top, 1_000, 0), 240_000);
    }

    fn filled(positions: &mut Positions, nonce: u64, at: SlotId, filled_wh: i64, status: OrderStatus) {
        let update = OrderUpdate {
            account: protocol::AccountId([1; 32]),
            zone: protocol::testing::zone(),
            slot: at,
            order_nonce: nonce,
            status,
            price_per_kwh: protocol::PricePerKwh(200_000),
            open_qty_wh: Wh(0),
            filled_qty_wh: Wh(filled_wh),
            ts_ms: TimestampMs(0),
        };
        positions.on_update(&update);
    }

    #[test]
    fn fills_count_against_the_plan_and_the_caps() {
        let mut positions = Positions::default();
        positions.placed(1, slot(1), Side::Buy, 200_000, 600);
        filled(&mut positions, 1, slot(1), 400, OrderStatus::Cancelled);
        // Plan 1000 Wh, 400 filled: at most 600 more.
        assert_eq!(allowed_qty_wh(&positions, slot(1), Side::Buy, 1_000, 200_000, Caps::default(), None), 600);
        // A slot cap of 700 Wh leaves 300.
        let caps = Caps { qty_wh_per_slot_max: Some(700), ..Caps::default() };
        assert_eq!(allowed_qty_wh(&positions, slot(1), Side::Buy, 1_000, 200_000, caps, None), 300);
        // A daily spend cap of 0.10: 0.08 spent (400 Wh at 0.20), 0.02 left buys 100 Wh at 0.20.
        let caps = Caps { spend_per_day_max: Some(100_000), ..Caps::default() };
        assert_eq!(allowed_qty_wh(&positions, slot(2), Side::Buy, 1_000, 200_000, caps, None), 100);
        // A daily volume cap counts every slot of the day.
        let caps = Caps { qty_wh_per_day_max: Some(450), ..Caps::default() };
        assert_eq!(allowed_qty_wh(&positions, slot(3), Side::Sell, 1_000, 200_000, caps, None), 50);
    }

    #[test]
    fn a_cancel_refused_because_the_order_left_counts_its_open_quantity_as_filled() {
        let mut positions = Positions::default();
        positions.placed(1, slot(1), Side::Sell, 150_000, 500);
        positions.cancelling(1, 2);
        positions.on_reject(&protocol::Reject {
            of: "cancel".to_owned(),
            seq: Some(2),
            reason: protocol::Reason::UnknownOrder,
            message: String::new(),
            ts_ms: TimestampMs(0),
        });
        assert_eq!(positions.live_order(slot(1)), None);
        assert_eq!(allowed_qty_wh(&positions, slot(1), Side::Sell, 500, 150_000, Caps::default(), None), 0);
        // The update that follows says what really filled.
        filled(&mut positions, 1, slot(1), 200, OrderStatus::Cancelled);
        assert_eq!(allowed_qty_wh(&positions, slot(1), Side::Sell, 500, 150_000, Caps::default(), None), 300);
    }
}
