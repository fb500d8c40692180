//! The quoting strategy through the planner: prices stay within the owner's limits and the zone's band,
//! fills count against the plan (an order is cancelled and re-placed, never replaced), caps hold over a
//! day of fills, and a restarted agent adopts its open orders instead of placing them again.

use super::*;
use protocol::{testing, MeterSerial, OrderStatus};

const MIN: i64 = 60_000;
const SLOT: i64 = SLOT_LEN_MS_DEFAULT;
const START_MS: i64 = 1_000 * SLOT;

fn quoting(state_file: Option<PathBuf>) -> QuotingSettings {
    QuotingSettings { state_file, ..QuotingSettings::with_tariffs(80_000, 300_000) }
}

fn settings(quoting: QuotingSettings) -> AgentSettings {
    AgentSettings {
        price_per_kwh_buy_max: 260_000,
        surplus_share_percent: 100,
        slot_len_ms: SLOT,
        quoting: Some(quoting),
        ..super::tests::settings()
    }
}

fn account() -> AccountId {
    AccountId::from_verifying_key(&testing::signing_key(3).verifying_key())
}

fn reading(ts_ms: i64, import_wh: i64, export_wh: i64) -> Reading {
    let serial = MeterSerial::parse("SN").expect("valid");
    testing::grid_reading(&testing::signing_key(9), testing::zone(), serial, 1, ts_ms, import_wh, export_wh)
}

/// A planner that has seen `slots` slots of steady export (`wh_per_minute` > 0) or import (< 0).
fn planner(settings: AgentSettings, wh_per_minute: i64, slots: i64) -> Planner {
    let mut planner = Planner::new(settings, account(), testing::zone(), 1);
    for minute in 0..=slots * 15 {
        let (import, export) =
            if wh_per_minute > 0 { (0, minute * wh_per_minute) } else { (-minute * wh_per_minute, 0) };
        planner.observe(&reading(START_MS + minute * MIN, import, export));
    }
    planner
}

fn update(order: &Order, status: OrderStatus, open_wh: i64, filled_wh: i64) -> OrderUpdate {
    OrderUpdate {
        account: order.account,
        zone: order.zone.clone(),
        slot: order.slot,
        order_nonce: order.nonce,
        status,
        price_per_kwh: order.price_per_kwh,
        open_qty_wh: Wh(open_wh),
        filled_qty_wh: Wh(filled_wh),
        ts_ms: order.ts_ms,
    }
}

fn orders(actions: &[Action]) -> Vec<Order> {
    actions
        .iter()
        .filter_map(|action| if let Action::Order(order) = action { Some(order.clone()) } else { None })
        .collect()
}

#[test]
fn quotes_start_inside_the_band_and_move_to_the_owners_floor_but_never_below_it() {
    // 20 Wh a minute: 300 Wh per slot of surplus.
    let mut planner = planner(settings(quoting(None)), 20, 3);
    let mut now_ms = START_MS + 3 * SLOT;
    let mut prices = Vec::new();
    for _ in 0..(4 * PLANS_PER_SLOT) {
        for action in planner.plan(now_ms) {
            match action {
                Action::Order(order) => {
                    assert_eq!(order.side, Side::Sell);
                    assert!(order.price_per_kwh.0 >= 120_000, "below the floor: {order:?}");
                    assert!(order.price_per_kwh.0 <= 300_000, "above the band: {order:?}");
                    assert_eq!(order.price_per_kwh.0 % 1_000, 0, "off the tick");
                    prices.push(order.price_per_kwh.0);
                    planner.observe_update(&update(&order, OrderStatus::Open, order.qty_wh.0, 0));
                }
                Action::Cancel(cancel) => {
                    let order = planner.positions().orders[&cancel.order_nonce];
                    let (price, qty) = (PricePerKwh(order.price_per_kwh), Wh(order.open_qty_wh));
                    let placed = Order::gtc(account(), testing::zone(), order.slot, order.side, price, qty)
                        .at(cancel.order_nonce, cancel.ts_ms);
                    planner.observe_update(&update(&placed, OrderStatus::Cancelled, order.open_qty_wh, 0));
                }
                Action::Replace(replace) => panic!("the quoting agent never replaces: {replace:?}"),
            }
        }
        now_ms += SLOT / PLANS_PER_SLOT;
    }
    // Each slot's quoting starts at the middle of the band (0.19) and steps down as its gate nears.
    assert_eq!(prices.iter().max(), Some(&190_000), "{prices:?}");
    assert!(prices.contains(&120_000), "reaches the floor before the gate: {prices:?}");
}

#[test]
fn after_a_partial_fill_the_agent_never_commits_more_than_its_plan() {
    // 20 Wh a minute of surplus: a plan of 300 Wh per slot.
    let mut planner = planner(settings(quoting(None)), 20, 3);
    let now_ms = START_MS + 3 * SLOT;
    let first = orders(&planner.plan(now_ms));
    assert_eq!(first.len(), 2, "one order per tradable slot");
    // The later slot: its quoting has just begun, so its price will step down.
    let order = &first[1];
    let plan_wh = order.qty_wh.0;
    assert!((280..=320).contains(&plan_wh), "plan {plan_wh}");
    // 200 Wh fill; then the price steps down and the agent cancels (the cancel's answer has the
    // final fill: 250 Wh, as 50 more filled while the cancel travelled).
    planner.observe_update(&update(order, OrderStatus::Open, plan_wh - 200, 200));
    let later_ms = now_ms + SLOT;
    let actions = planner.plan(later_ms);
    assert!(actions.iter().all(|action| !matches!(action, Action::Replace(_))), "{actions:?}");
    assert!(actions.iter().any(|action| matches!(action, Action::Cancel(cancel) if cancel.order_nonce == order.nonce)));
    assert!(orders(&actions).iter().all(|new| new.slot != order.slot), "nothing new before the cancel is answered");
    planner.observe_update(&update(order, OrderStatus::Cancelled, plan_wh - 250, 250));
    let again = orders(&planner.plan(later_ms + MIN));
    let replacement = again.iter().find(|new| new.slot == order.slot).expect("the rest is offered again");
    assert_eq!(replacement.qty_wh.0, plan_wh - 250, "only what the plan has left");
}

#[test]
fn a_daily_spend_cap_holds_however_the_orders_fill() {
    let mut quoting = quoting(None);
    quoting.spend_per_day_max = Some(250_000);
    quoting.qty_wh_per_slot_max = Some(400);
    // 40 Wh a minute of deficit: 600 Wh per slot wanted, capped at 400 a slot, and the day's money.
    let mut planner = planner(settings(quoting), -40, 3);
    let mut now_ms = START_MS + 3 * SLOT;
    let (mut spent, mut bought) = (0i64, std::collections::BTreeMap::<SlotId, i64>::new());
    let day_end_ms = now_ms - now_ms % (24 * 3_600_000) + 24 * 3_600_000 - 3 * SLOT;
    while now_ms < day_end_ms {
        for order in orders(&planner.plan(now_ms)) {
            assert!(order.price_per_kwh.0 <= 260_000, "above the owner's cap: {order:?}");
            // Everything fills at once, at the order's price (the worst case for the budget).
            spent += position::cost_micro(order.price_per_kwh.0, order.qty_wh.0);
            *bought.entry(order.slot).or_default() += order.qty_wh.0;
            planner.observe_update(&update(&order, OrderStatus::Filled, 0, order.qty_wh.0));
        }
        now_ms += SLOT / PLANS_PER_SLOT;
    }
    assert!(spent > 200_000, "the budget is used ({spent})");
    assert!(spent <= 250_000, "the daily spend cap was exceeded: {spent}");
    assert!(bought.values().all(|wh| *wh <= 400), "the slot cap was exceeded: {bought:?}");
}

#[test]
fn a_restarted_agent_adopts_its_open_orders_and_places_none_twice() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("agent-state.json");
    let mut before = planner(settings(quoting(Some(path.clone()))), 20, 3);
    let now_ms = START_MS + 3 * SLOT;
    let placed = orders(&before.plan(now_ms));
    assert_eq!(placed.len(), 2);
    before.positions().save(&path).expect("saved");

    // A new process: a fresh planner (its forecast learns again) adopts the state file.
    let mut after = planner(settings(quoting(Some(path.clone()))), 20, 3);
    after.adopt(Positions::load(&path).expect("loaded"));
    let actions = after.plan(now_ms + MIN);
    assert!(orders(&actions).is_empty(), "placed again after the restart: {actions:?}");
    for order in &placed {
        assert!(after.positions().live_order(order.slot).is_some_and(|(nonce, _)| nonce == order.nonce));
    }
    // New commands use nonces above the remembered ones.
    let next = after.nonce();
    assert!(placed.iter().all(|order| order.nonce < next));
}

fn with_battery(control: bool) -> AgentSettings {
    AgentSettings {
        battery: Some(battery::BatterySettings { control, ..battery::BatterySettings::default() }),
        ..settings(quoting(None))
    }
}

fn observation(ts_ms: i64, soc_permille: i64) -> BatteryObservation {
    BatteryObservation {
        ts_ms,
        soc_permille,
        capacity_wh: 10_000,
        charged_wh: 0,
        discharged_wh: 0,
        home_net_w: Some(-2_000),
    }
}

fn sold_wh(actions: &[Action]) -> i64 {
    actions
        .iter()
        .map(|a| {
            if let Action::Order(o) = a {
                if o.side == Side::Sell {
                    o.qty_wh.0
                } else {
                    0
                }
            } else {
                0
            }
        })
        .sum()
}

#[test]
fn with_a_battery_the_agent_sells_only_the_surplus_its_battery_will_not_store() {
    // A steady 2 kW of export: 500 Wh a slot.
    let now = START_MS + 8 * SLOT;
    let mut plain = planner(settings(quoting(None)), 33, 8);
    let without_battery = sold_wh(&plain.plan(now));
    assert!(without_battery > 300, "the surplus is sold: {without_battery}");
    // Half full: the battery takes the whole surplus of the next slots, nothing is left to sell.
    let mut storing = planner(with_battery(false), 33, 8);
    storing.observe_battery(observation(now, 500));
    assert_eq!(sold_wh(&storing.plan(now)), 0);
    let planned: Vec<i64> = storing.battery_plan().values().take(2).copied().collect();
    assert!(planned.iter().all(|wh| *wh > 300), "the plan stores the surplus: {planned:?}");
    assert_eq!(storing.battery_mode(), None, "without control the agent writes no setpoint");
    // Full: the whole surplus is sold, as without a battery.
    let mut full = planner(with_battery(false), 33, 8);
    full.observe_battery(observation(now, 1_000));
    assert_eq!(sold_wh(&full.plan(now)), without_battery);
}

#[test]
fn without_word_from_the_exchange_the_battery_falls_back_to_self_consumption() {
    let now = START_MS + 8 * SLOT;
    let mut agent = planner(with_battery(true), 33, 8);
    // Just above the 10 % reserve: under control, a setpoint that keeps it there.
    agent.observe_battery(observation(now, 101));
    agent.plan(now);
    assert!(matches!(agent.battery_mode(), Some(BatteryMode::Setpoint { .. })), "{:?}", agent.battery_mode());
    assert!(!agent.battery_fallback());
    let silent = now + battery::NO_CONTACT_FALLBACK_MS_DEFAULT + MIN;
    agent.plan(silent);
    assert_eq!(agent.battery_mode(), Some(BatteryMode::SelfConsumption));
    assert!(agent.battery_fallback(), "the fallback is visible");
    // A book is heard again: control resumes.
    let slot = agent.tradable_slots(silent)[0];
    agent.observe_book(&open_book(slot, silent, None));
    agent.plan(silent + MIN);
    assert!(!agent.battery_fallback());
    assert!(matches!(agent.battery_mode(), Some(BatteryMode::Setpoint { .. })));
}

#[test]
fn battery_settings_need_the_quoting_strategy_and_valid_limits() {
    assert!(with_battery(true).validate().is_ok());
    let limit_strategy = AgentSettings { quoting: None, ..with_battery(true) };
    assert!(limit_strategy.validate().is_err());
    let no_budget = AgentSettings {
        battery: Some(battery::BatterySettings { cycles_per_day_max: 0, ..Default::default() }),
        ..settings(quoting(None))
    };
    assert!(no_budget.validate().is_err());
}

/// An empty open book of `slot` as the exchange publishes it, with the band it accepts if any.
fn open_book(slot: SlotId, ts_ms: i64, price_band: Option<PriceBand>) -> protocol::BookSnapshot {
    protocol::BookSnapshot {
        zone: testing::zone(),
        slot,
        seq: 1,
        state: protocol::BookState::Open,
        bids: Vec::new(),
        asks: Vec::new(),
        ts_ms: TimestampMs(ts_ms),
        call_phase: None,
        price_band,
    }
}

/// An empty book of `slot` with the band `min_per_kwh..=max_per_kwh`.
fn banded_book(slot: SlotId, ts_ms: i64, min_per_kwh: i64, max_per_kwh: i64) -> protocol::BookSnapshot {
    let band = PriceBand { min_per_kwh: PricePerKwh(min_per_kwh), max_per_kwh: PricePerKwh(max_per_kwh) };
    open_book(slot, ts_ms, Some(band))
}

#[test]
fn a_time_of_use_band_in_the_book_keeps_the_quotes_inside_the_slots_band() {
    // The configured tariffs are 0.08..0.30 (middle 0.19). A peak slot's book accepts 0.20..0.40: a
    // seller quoting by the configured tariffs would ask at most 0.19 there and be refused. An
    // off-peak slot's book accepts 0.06..0.15: a buyer quoting by them would bid above 0.15.
    let now_ms = START_MS + 3 * SLOT;
    let price_in = |orders: &[Order], slot| orders.iter().find(|order| order.slot == slot).map(|o| o.price_per_kwh.0);

    let mut seller = planner(settings(quoting(None)), 20, 3);
    let slots = seller.tradable_slots(now_ms);
    let (peak, flat) = (slots[0], slots[1]);
    seller.observe_book(&banded_book(peak, now_ms, 200_000, 400_000));
    let sells = orders(&seller.plan(now_ms));
    let peak_price = price_in(&sells, peak).expect("sells in the peak slot");
    assert!((200_000..=400_000).contains(&peak_price), "inside the peak slot's band: {peak_price}");
    let flat_price = price_in(&sells, flat).expect("sells in the unheard slot");
    assert!(
        (120_000..=190_000).contains(&flat_price),
        "a slot whose book is unheard quotes by the configured tariffs, down to the owner's floor: {flat_price}"
    );

    let mut buyer = planner(settings(quoting(None)), -20, 3);
    let off_peak = buyer.tradable_slots(now_ms)[0];
    buyer.observe_book(&banded_book(off_peak, now_ms, 60_000, 150_000));
    let buys = orders(&buyer.plan(now_ms));
    let off_peak_price = price_in(&buys, off_peak).expect("buys in the off-peak slot");
    assert!((60_000..=150_000).contains(&off_peak_price), "inside the off-peak slot's band: {off_peak_price}");
}
