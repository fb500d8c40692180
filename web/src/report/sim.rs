//! One variant of the simulated community, minute by minute and faster than real time: the demo's
//! homes (simulator physics, fixed seeds) feed their readings to their agents (the gateway's planner,
//! pure), whose commands go straight into the exchange's matching core (one book per slot, with the
//! zone's band and tick, and a call phase when the variant has the closing auction); the agents hear
//! back order updates, rejects and the top of each book as they would over MQTT; after each slot the
//! settlement rules settle it from the metered counters and the trades. No broker, database or clock:
//! the same components, called directly, so a week of 50 homes takes seconds.

use crate::demo::{self, FEED_IN_PER_KWH, GRID_FEE_PER_KWH, PROTOCOL_FEE_BPS, RETAIL_PER_KWH};
use exchange::matching::{BookConfig, Event, NewOrder, OrderBook};
use meter_gateway::agent::battery::{BatteryObservation, BatterySettings};
use meter_gateway::agent::{Action, AgentSettings, Planner, QuotingSettings};
use meter_gateway::battery::MWH_PER_WH;
use meter_gateway::simulator::{Home, HomeSpec};
use protocol::{
    AccountId, BookSnapshot, BookState, DeviceId, Level, MeterSerial, OrderStatus, OrderUpdate, PowerW, PricePerKwh,
    Reading, Reject, SlotId, Statement, TimeInForce, TimestampMs, Wh, ZoneId,
};
use settlement::rules::{self, AccountMeter, SlotInput, Tariff, TradeInput};
use std::collections::{BTreeMap, HashMap};

pub const SLOT_LEN_MS: i64 = 900_000;
pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// The simulation starts at a UTC midnight (2026-09-21, an equinox: twelve hours of sun).
pub const START_MS: i64 = 1_790_035_200_000;
/// The exchange's default tick (µ per kWh).
pub const TICK_PER_KWH: i64 = 1_000;
/// The closing auction's call phase: the last ten minutes before gate closure, the whole time a
/// household agent quotes the nearer of its two slots.
pub const CALL_MS: i64 = 10 * MINUTE_MS;
/// GRID minted per slot: the demo's reward schedule (10 000 GRID a day) over 96 slots.
pub const REWARD_POOL_PER_SLOT: i64 = 10_000_000_000 / 96;
/// The new agent offers this share of its forecast surplus: its forecast is good enough to offer more
/// than today's 80 %, and what it misses is bought back at retail, so not all of it.
pub const NEW_AGENT_SURPLUS_SHARE_PERCENT: u8 = 90;
/// The new agent's caps: 20 kWh of trading and €6 of buying per day, 3 kWh per slot, far above
/// what a home needs on a normal day, so they bind only on odd forecasts.
pub const CAP_QTY_WH_PER_DAY: i64 = 20_000;
pub const CAP_QTY_WH_PER_SLOT: i64 = 3_000;
pub const CAP_SPEND_PER_DAY: i64 = 6_000_000;

/// The new agent's battery settings in the report: control on, at most two cycles a day (a home
/// battery does about one: the budget only stops a runaway plan) and 5 % kept in reserve (the
/// owner's choice; the default is 10 %).
pub const REPORT_BATTERY_CYCLES_PER_DAY_MAX: u32 = 2;
pub const REPORT_BATTERY_RESERVE_SOC_PERMILLE: u16 = 50;

/// Which agent the homes run, whether the zone has a closing auction and whether half of the solar
/// homes have a battery ([`crate::demo::battery`]): driven by the new agent when it is the quoting
/// one, left in the inverter's self-consumption mode under today's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub quoting: bool,
    pub closing_auction: bool,
    pub batteries: bool,
}

/// The six variants of the report, today's agent first.
pub const VARIANTS: [Variant; 6] = [
    Variant { name: "today's agent", quoting: false, closing_auction: false, batteries: false },
    Variant { name: "today's agent + closing auction", quoting: false, closing_auction: true, batteries: false },
    Variant { name: "new agent", quoting: true, closing_auction: false, batteries: false },
    Variant { name: "new agent + closing auction", quoting: true, closing_auction: true, batteries: false },
    Variant { name: "today's agent + batteries", quoting: false, closing_auction: false, batteries: true },
    Variant { name: "new agent + batteries", quoting: true, closing_auction: false, batteries: true },
];

/// One home's energy over the run, from the simulator's exact counters (mWh).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnergyBalance {
    pub pv_mwh: i64,
    pub import_mwh: i64,
    pub export_mwh: i64,
    pub load_mwh: i64,
    /// Battery: AC energy in and out, the change of what it stores, and its losses.
    pub charged_mwh: i64,
    pub discharged_mwh: i64,
    pub stored_change_mwh: i64,
    pub losses_mwh: i64,
}

impl EnergyBalance {
    fn of(home: &Home) -> Self {
        let state = home.state();
        let battery = state.battery.unwrap_or_default();
        Self {
            pv_mwh: state.pv_mwh,
            import_mwh: state.import_mwh,
            export_mwh: state.export_mwh,
            load_mwh: state.load_mwh,
            charged_mwh: battery.charged_mwh,
            discharged_mwh: battery.discharged_mwh,
            stored_change_mwh: battery.stored_mwh,
            losses_mwh: battery.losses_mwh,
        }
    }

    /// What happened between `start` and `self`.
    fn since(self, start: EnergyBalance) -> Self {
        Self {
            pv_mwh: self.pv_mwh - start.pv_mwh,
            import_mwh: self.import_mwh - start.import_mwh,
            export_mwh: self.export_mwh - start.export_mwh,
            load_mwh: self.load_mwh - start.load_mwh,
            charged_mwh: self.charged_mwh - start.charged_mwh,
            discharged_mwh: self.discharged_mwh - start.discharged_mwh,
            stored_change_mwh: self.stored_change_mwh - start.stored_change_mwh,
            losses_mwh: self.losses_mwh - start.losses_mwh,
        }
    }
}

/// One household's totals over the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Household {
    pub account: AccountId,
    pub sell_min_per_kwh: i64,
    pub buy_max_per_kwh: i64,
    pub metered_import_wh: i64,
    pub metered_export_wh: i64,
    pub bought_wh: i64,
    pub sold_wh: i64,
    /// Money received minus paid, over every statement (micro-units).
    pub net: i64,
    /// What the utility alone would have given: export at feed-in minus import at retail.
    pub utility_only_net: i64,
    /// The same for the home without its battery (equal to `utility_only_net` for a home without
    /// one): the baseline of households' savings, so that savings include what the battery brings.
    pub no_battery_utility_net: i64,
    /// Sales minus what the same energy would have earned at feed-in.
    pub sales_over_feed_in: i64,
    pub tokens: i64,
    /// Largest volume traded (bought + sold) and bought value in one slot and one day.
    pub slot_traded_wh_max: i64,
    pub day_traded_wh_max: i64,
    pub day_spend_max: i64,
    pub has_battery: bool,
    /// The home's physics over the run (see `report::check`).
    pub energy: EnergyBalance,
}

impl Household {
    fn new(account: AccountId, sell_min_per_kwh: i64, buy_max_per_kwh: i64) -> Self {
        Self {
            account,
            sell_min_per_kwh,
            buy_max_per_kwh,
            metered_import_wh: 0,
            metered_export_wh: 0,
            bought_wh: 0,
            sold_wh: 0,
            net: 0,
            utility_only_net: 0,
            no_battery_utility_net: 0,
            sales_over_feed_in: 0,
            tokens: 0,
            slot_traded_wh_max: 0,
            day_traded_wh_max: 0,
            day_spend_max: 0,
            has_battery: false,
            energy: EnergyBalance::default(),
        }
    }
}

/// Everything measured in one variant.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub households: Vec<Household>,
    pub load_wh: i64,
    pub pv_wh: i64,
    pub metered_import_wh: i64,
    pub metered_export_wh: i64,
    pub traded_wh: i64,
    pub traded_value: i64,
    pub delivered_p2p_wh: i64,
    /// What could at most be traded peer to peer: per slot, the smaller of the homes' summed export
    /// and summed import.
    pub p2p_potential_wh: i64,
    pub utility_supplied_wh: i64,
    pub utility_absorbed_wh: i64,
    pub grid_fees: i64,
    pub protocol_fees: i64,
    /// Paid by households to the utility for shortfalls, and by the utility for surpluses.
    pub utility_supplied_value: i64,
    pub utility_absorbed_value: i64,
    pub purchases: i64,
    pub sales: i64,
    pub household_savings: i64,
    pub tokens_emitted: i64,
    pub trades: i64,
    /// `(slot start, volume-weighted price, volume)` of every slot with trades.
    pub slot_prices: Vec<(i64, i64, i64)>,
    /// Trade `(price, qty)` pairs, for the price spread.
    pub trade_prices: Vec<(i64, i64)>,
    /// Ledger transactions that did not sum to zero (must stay 0).
    pub unbalanced_transactions: i64,
    /// Trades outside a party's own limit (must stay 0).
    pub limit_violations: i64,
    /// The closing auction replayed on this variant's own orders: volume and the continuous volume.
    pub same_orders_auction_wh: i64,
    pub same_orders_continuous_wh: i64,
}

/// A home of the community: its physics, its agent and what it has bought and sold.
struct Member {
    home: Home,
    planner: Planner,
    account: AccountId,
    sell_min: i64,
    buy_max: i64,
    /// Counters (import, export, pv) at the start of the current slot.
    slot_start_counters: (i64, i64, i64),
    /// The exact counters at the start of the run.
    start: EnergyBalance,
    /// Whether the agent drives the battery.
    controls_battery: bool,
    /// The same home without its battery (same weather and load), for the savings' baseline, and
    /// its counters (import, export) at the start of the current slot.
    shadow: Option<(Home, (i64, i64))>,
}

/// One slot's book and the commands it received, kept for the same-orders comparison.
struct SlotBook {
    book: OrderBook,
    seq: u64,
    /// Filled quantity per order, from trades (the `Filled` event does not carry it).
    filled: HashMap<(AccountId, u64), i64>,
    commands: Vec<(i64, Action)>,
    trades: Vec<TradeInput>,
}

fn book_config() -> BookConfig {
    BookConfig {
        tick: PricePerKwh(TICK_PER_KWH),
        qty_min: Wh(1),
        qty_max: Wh(1_000_000),
        price_min: PricePerKwh(FEED_IN_PER_KWH),
        price_max: PricePerKwh(RETAIL_PER_KWH),
        open_orders_per_account_max: 100,
    }
}

fn tariff() -> Tariff {
    Tariff {
        effective_from_ms: 0,
        retail_price_per_kwh: PricePerKwh(RETAIL_PER_KWH),
        feed_in_price_per_kwh: PricePerKwh(FEED_IN_PER_KWH),
        grid_fee_per_kwh: PricePerKwh(GRID_FEE_PER_KWH),
        protocol_fee_bps: PROTOCOL_FEE_BPS,
    }
}

fn zone() -> ZoneId {
    // A literal that is a valid zone id.
    ZoneId::parse(demo::DEMO_ZONE).unwrap_or_else(|_| unreachable!("the demo zone id is valid"))
}

fn agent_settings(variant: Variant, sell_min: i64, buy_max: i64, battery: bool) -> AgentSettings {
    AgentSettings {
        key: std::path::PathBuf::from("unused: the report does not sign"),
        price_per_kwh_sell_min: sell_min,
        price_per_kwh_buy_max: buy_max,
        surplus_share_percent: if variant.quoting { NEW_AGENT_SURPLUS_SHARE_PERCENT } else { 80 },
        buy_deficit: true,
        slot_len_ms: SLOT_LEN_MS,
        gate_closure_ms: demo::GATE_CLOSURE_MS,
        slots_ahead: 2,
        qty_min_wh: 50,
        forecast_window_ms: 30 * MINUTE_MS,
        mqtt: None,
        battery: (battery && variant.quoting).then(|| BatterySettings {
            control: true,
            cycles_per_day_max: REPORT_BATTERY_CYCLES_PER_DAY_MAX,
            reserve_soc_permille: REPORT_BATTERY_RESERVE_SOC_PERMILLE,
            ..BatterySettings::default()
        }),
        quoting: variant.quoting.then_some(QuotingSettings {
            feed_in_price_per_kwh: FEED_IN_PER_KWH,
            retail_price_per_kwh: RETAIL_PER_KWH,
            tick_per_kwh: TICK_PER_KWH,
            grid_fee_per_kwh: GRID_FEE_PER_KWH,
            protocol_fee_bps: PROTOCOL_FEE_BPS,
            qty_wh_per_slot_max: Some(CAP_QTY_WH_PER_SLOT),
            qty_wh_per_day_max: Some(CAP_QTY_WH_PER_DAY),
            spend_per_slot_max: None,
            spend_per_day_max: Some(CAP_SPEND_PER_DAY),
            state_file: None,
        }),
    }
}

fn counters(home: &Home) -> (i64, i64, i64) {
    let state = home.state();
    // Truncated to whole Wh, as the meter registers are.
    (state.import_wh(), state.export_wh(), state.pv_wh())
}

fn reading(home: &Home, seq: u64) -> Reading {
    let (import_wh, export_wh, pv_wh) = counters(home);
    Reading {
        device: DeviceId([0; 32]),
        zone: zone(),
        meter_serial: MeterSerial::parse("SIM").unwrap_or_else(|_| unreachable!("a valid literal serial")),
        seq,
        ts_ms: TimestampMs(home.state().sim_ms),
        import_wh: Wh(import_wh),
        export_wh: Wh(export_wh),
        pv_wh: Some(Wh(pv_wh)),
        power_w: PowerW(home.state().net_w().round() as i64),
        battery_charge_wh: None,
        battery_discharge_wh: None,
        battery_soc_permille: None,
        battery_capacity_wh: None,
    }
}

fn members(homes: usize, variant: Variant) -> Vec<Member> {
    (0..homes)
        .map(|index| {
            let (spec, sell_min, buy_max) = demo::home(index);
            let key = ed25519_dalek::SigningKey::from_bytes(&[(index % 251) as u8 + 1; 32]);
            let mut bytes = AccountId::from_verifying_key(&key.verifying_key()).0;
            // Unique beyond 251 homes too.
            bytes[31] ^= (index / 251) as u8;
            let account = AccountId(bytes);
            let mut spec = spec;
            if variant.batteries {
                spec.battery = demo::battery(index);
            }
            let has_battery = spec.battery.is_some();
            let shadow = has_battery.then(|| {
                let shadow = Home::new(HomeSpec { battery: None, ..spec.clone() }, START_MS);
                let (import_wh, export_wh, _) = counters(&shadow);
                (shadow, (import_wh, export_wh))
            });
            let home = Home::new(spec, START_MS);
            let settings = agent_settings(variant, sell_min, buy_max, has_battery);
            let controls_battery = settings.battery.as_ref().is_some_and(|battery| battery.control);
            let planner = Planner::new(settings, account, zone(), 1);
            let slot_start_counters = counters(&home);
            let start = EnergyBalance::of(&home);
            Member { home, planner, account, sell_min, buy_max, slot_start_counters, start, controls_battery, shadow }
        })
        .collect()
}

/// Runs `variant` for `homes` homes and `days` days.
pub fn simulate(homes: usize, days: i64, variant: Variant) -> Outcome {
    let mut members = members(homes, variant);
    let index_of: HashMap<AccountId, usize> = members.iter().enumerate().map(|(i, m)| (m.account, i)).collect();
    let mut outcome = Outcome {
        households: members.iter().map(|m| Household::new(m.account, m.sell_min, m.buy_max)).collect(),
        ..Outcome::default()
    };
    let mut books: BTreeMap<SlotId, SlotBook> = BTreeMap::new();
    let mut closed: BTreeMap<SlotId, Vec<TradeInput>> = BTreeMap::new();
    let mut day_traded: HashMap<(usize, i64), (i64, i64)> = HashMap::new();
    let mut carry = 0;
    let end_ms = START_MS + days * DAY_MS;
    let mut seq = 0u64;
    let mut now_ms = START_MS;
    while now_ms <= end_ms {
        seq += 1;
        for member in &mut members {
            member.home.advance(now_ms);
            if let Some((shadow, _)) = &mut member.shadow {
                shadow.advance(now_ms);
            }
            if member.controls_battery {
                if let Some(observation) = battery_observation(&member.home) {
                    member.planner.observe_battery(observation);
                }
            }
            let reading = reading(&member.home, seq);
            member.planner.observe(&reading);
        }
        let mut same_orders = (outcome.same_orders_auction_wh, outcome.same_orders_continuous_wh);
        close_due(&mut books, &mut closed, &mut members, &index_of, now_ms, variant, &mut same_orders);
        (outcome.same_orders_auction_wh, outcome.same_orders_continuous_wh) = same_orders;
        if now_ms % SLOT_LEN_MS == 0 && now_ms > START_MS {
            let slot = SlotId::containing(TimestampMs(now_ms - SLOT_LEN_MS), SLOT_LEN_MS);
            let trades = closed.remove(&slot).unwrap_or_default();
            carry = settle(&mut outcome, &mut members, slot, trades, carry, &mut day_traded);
        }
        if now_ms < end_ms {
            trade_minute(&mut books, &mut members, &index_of, now_ms, seq, variant);
        }
        now_ms += MINUTE_MS;
    }
    for (household, member) in outcome.households.iter_mut().zip(&members) {
        household.has_battery = member.home.battery().is_some();
        household.energy = EnergyBalance::of(&member.home).since(member.start);
    }
    outcome.load_wh = outcome.households.iter().map(|h| h.energy.load_mwh).sum::<i64>() / MWH_PER_WH;
    outcome
}

/// What the gateway would read from the battery, and the household's own net power.
fn battery_observation(home: &Home) -> Option<BatteryObservation> {
    let battery = home.battery()?;
    let counters = battery.counters();
    let state = home.state();
    Some(BatteryObservation {
        ts_ms: state.sim_ms,
        soc_permille: battery.soc_permille(),
        capacity_wh: battery.spec.capacity_wh,
        charged_wh: counters.charged_mwh / MWH_PER_WH,
        discharged_wh: counters.discharged_mwh / MWH_PER_WH,
        home_net_w: Some(state.load_w.round() as i64 - state.pv_w.round() as i64),
    })
}

/// One minute of trading: each agent plans (in an order that rotates every minute, so no home is
/// always first) and its commands go to the books; then everyone sees the books' tops.
fn trade_minute(
    books: &mut BTreeMap<SlotId, SlotBook>,
    members: &mut [Member],
    index_of: &HashMap<AccountId, usize>,
    now_ms: i64,
    minute: u64,
    variant: Variant,
) {
    let count = members.len();
    for offset in 0..count {
        let index = (offset + minute as usize) % count;
        let actions = members[index].planner.plan(now_ms);
        let member = &mut members[index];
        if member.controls_battery {
            if let (Some(mode), Some(battery)) = (member.planner.battery_mode(), member.home.battery_mut()) {
                battery.mode = mode;
            }
        }
        for action in actions {
            let slot = action_slot(&action);
            if slot.start_ms() - demo::GATE_CLOSURE_MS <= now_ms {
                continue;
            }
            let slot_book = books.entry(slot).or_insert_with(|| SlotBook {
                book: OrderBook::new(book_config()),
                seq: 0,
                filled: HashMap::new(),
                commands: Vec::new(),
                trades: Vec::new(),
            });
            if variant.closing_auction && now_ms >= slot.start_ms() - demo::GATE_CLOSURE_MS - CALL_MS {
                slot_book.book.begin_call();
            }
            slot_book.commands.push((now_ms, action.clone()));
            let mut events = Vec::new();
            let (reject_of, command_nonce) = apply(&mut slot_book.book, &action, &mut events);
            slot_book.seq += 1;
            slot_book.trades.extend(trade_inputs(&events));
            deliver(slot_book, slot, &events, members, index_of, reject_of, command_nonce, now_ms);
        }
    }
    for (slot, slot_book) in books.iter() {
        let (bids, asks) = slot_book.book.depth(1);
        let snapshot = snapshot(*slot, slot_book.seq, bids, asks, now_ms);
        for member in members.iter_mut() {
            member.planner.observe_book(&snapshot);
        }
    }
}

fn snapshot(slot: SlotId, seq: u64, bids: Vec<Level>, asks: Vec<Level>, now_ms: i64) -> BookSnapshot {
    BookSnapshot {
        zone: zone(),
        slot,
        seq,
        state: BookState::Open,
        bids,
        asks,
        ts_ms: TimestampMs(now_ms),
        call_phase: None,
        price_band: None,
    }
}

fn action_slot(action: &Action) -> SlotId {
    match action {
        Action::Order(order) => order.slot,
        Action::Cancel(cancel) => cancel.slot,
        Action::Replace(replace) => replace.slot,
    }
}

/// Applies one command to its book; returns the command's type and nonce (for a reject).
fn apply(book: &mut OrderBook, action: &Action, events: &mut Vec<Event>) -> (&'static str, u64) {
    match action {
        Action::Order(order) => {
            let new_order = NewOrder { tif: TimeInForce::Gtc, ..NewOrder::from(order) };
            book.submit(new_order, events);
            ("order", order.nonce)
        }
        Action::Cancel(cancel) => {
            book.cancel(cancel.account, cancel.order_nonce, events);
            ("cancel", cancel.nonce)
        }
        Action::Replace(replace) => {
            book.replace(replace.account, replace.order_nonce, replace.price_per_kwh, replace.qty_wh, events);
            ("replace", replace.nonce)
        }
    }
}

/// An order an event named, with its final status and open quantity if the event ended it.
type Touched = (AccountId, u64, Option<(OrderStatus, i64)>);

/// Tells the agents what a command (or an uncross and close) did to their orders, as the exchange's
/// `order_update` and `reject` messages would.
#[allow(clippy::too_many_arguments)]
fn deliver(
    slot_book: &mut SlotBook,
    slot: SlotId,
    events: &[Event],
    members: &mut [Member],
    index_of: &HashMap<AccountId, usize>,
    reject_of: &str,
    command_nonce: u64,
    now_ms: i64,
) {
    let mut touched: Vec<Touched> = Vec::new();
    for event in events {
        match *event {
            Event::Rejected { account, reason, .. } => {
                if let Some(&index) = index_of.get(&account) {
                    let reject = Reject {
                        of: reject_of.to_owned(),
                        seq: Some(command_nonce),
                        reason,
                        message: String::new(),
                        ts_ms: TimestampMs(now_ms),
                    };
                    members[index].planner.observe_reject(&reject);
                }
            }
            Event::Trade { qty, buyer, buy_nonce, seller, sell_nonce, .. } => {
                for key in [(buyer, buy_nonce), (seller, sell_nonce)] {
                    *slot_book.filled.entry(key).or_default() += qty.get();
                    touched.push((key.0, key.1, None));
                }
            }
            Event::Accepted { account, nonce, .. } | Event::Rested { account, nonce, .. } => {
                touched.push((account, nonce, None))
            }
            Event::Replaced { account, nonce, .. } => touched.push((account, nonce, None)),
            Event::Cancelled { account, nonce, open_qty, .. } => {
                touched.push((account, nonce, Some((OrderStatus::Cancelled, open_qty.get()))))
            }
            Event::Expired { account, nonce, open_qty, .. } => {
                touched.push((account, nonce, Some((OrderStatus::Expired, open_qty.get()))))
            }
            Event::Filled { account, nonce } => touched.push((account, nonce, Some((OrderStatus::Filled, 0)))),
        }
    }
    let mut seen = Vec::new();
    for (account, nonce, _) in &touched {
        if seen.contains(&(*account, *nonce)) {
            continue;
        }
        seen.push((*account, *nonce));
        let final_state =
            touched.iter().rev().find_map(|(a, n, state)| ((a, n) == (account, nonce)).then_some(*state).flatten());
        let filled = slot_book.filled.get(&(*account, *nonce)).copied().unwrap_or(0);
        let (status, open, price) = match (slot_book.book.order(*account, *nonce), final_state) {
            (Some(view), _) => (OrderStatus::Open, view.open_qty.get(), view.price.get()),
            (None, Some((status, open))) => (status, open, 0),
            (None, None) => continue,
        };
        let Some(&index) = index_of.get(account) else { continue };
        let update = OrderUpdate {
            account: *account,
            zone: zone(),
            slot,
            order_nonce: *nonce,
            status,
            price_per_kwh: PricePerKwh(price),
            open_qty_wh: Wh(open),
            filled_qty_wh: Wh(filled),
            ts_ms: TimestampMs(now_ms),
        };
        members[index].planner.observe_update(&update);
    }
}

/// Gate closure of every book whose gate has come: the auction (if any), then expiry. Also replays the
/// slot's commands the other way (auction or continuous) for the same-orders comparison.
fn close_due(
    books: &mut BTreeMap<SlotId, SlotBook>,
    closed: &mut BTreeMap<SlotId, Vec<TradeInput>>,
    members: &mut [Member],
    index_of: &HashMap<AccountId, usize>,
    now_ms: i64,
    variant: Variant,
    same_orders: &mut (i64, i64),
) {
    let due: Vec<SlotId> =
        books.keys().copied().filter(|slot| slot.start_ms() - demo::GATE_CLOSURE_MS <= now_ms).collect();
    for slot in due {
        let Some(mut slot_book) = books.remove(&slot) else { continue };
        let mut events = Vec::new();
        if variant.closing_auction {
            slot_book.book.uncross(&mut events);
        }
        slot_book.book.close(&mut events);
        deliver(&mut slot_book, slot, &events, members, index_of, "order", 0, now_ms);
        slot_book.trades.extend(trade_inputs(&events));
        // The same commands under the other rule, for the comparison of the two.
        let other: i64 =
            run_book(&slot_book.commands, slot, !variant.closing_auction).iter().map(|t| t.qty_wh.get()).sum();
        let own: i64 = slot_book.trades.iter().map(|t| t.qty_wh.get()).sum();
        let (auction, continuous) = if variant.closing_auction { (own, other) } else { (other, own) };
        same_orders.0 += auction;
        same_orders.1 += continuous;
        closed.insert(slot, std::mem::take(&mut slot_book.trades));
    }
}

fn trade_inputs(events: &[Event]) -> Vec<TradeInput> {
    events
        .iter()
        .filter_map(|event| match *event {
            Event::Trade { trade_seq, price, qty, buyer, seller, .. } => Some(TradeInput {
                trade_id: i64::try_from(trade_seq).unwrap_or(i64::MAX),
                price_per_kwh: price,
                qty_wh: qty,
                buyer,
                seller,
            }),
            _ => None,
        })
        .collect()
}

/// Feeds `commands` to a fresh book, with or without the call phase, and returns its trades.
pub(crate) fn run_book(commands: &[(i64, Action)], slot: SlotId, closing_auction: bool) -> Vec<TradeInput> {
    let mut book = OrderBook::new(book_config());
    let mut events = Vec::new();
    for (at_ms, action) in commands {
        if closing_auction && *at_ms >= slot.start_ms() - demo::GATE_CLOSURE_MS - CALL_MS {
            book.begin_call();
        }
        apply(&mut book, action, &mut events);
    }
    if closing_auction {
        book.uncross(&mut events);
    }
    book.close(&mut events);
    trade_inputs(&events)
}

/// Settles one slot from the homes' counters and the slot's trades; returns the reward carry.
fn settle(
    outcome: &mut Outcome,
    members: &mut [Member],
    slot: SlotId,
    trades: Vec<TradeInput>,
    carry: i64,
    day_traded: &mut HashMap<(usize, i64), (i64, i64)>,
) -> i64 {
    let mut meters = BTreeMap::new();
    let (mut slot_import_wh, mut slot_export_wh) = (0, 0);
    for (index, member) in members.iter_mut().enumerate() {
        let now = counters(&member.home);
        let before = std::mem::replace(&mut member.slot_start_counters, now);
        let (import_wh, export_wh, pv_wh) = (now.0 - before.0, now.1 - before.1, now.2 - before.2);
        let (baseline_import_wh, baseline_export_wh) = match &mut member.shadow {
            Some((shadow, start)) => {
                let (import_now, export_now, _) = counters(shadow);
                let before = std::mem::replace(start, (import_now, export_now));
                (import_now - before.0, export_now - before.1)
            }
            None => (import_wh, export_wh),
        };
        if let Some(household) = outcome.households.get_mut(index) {
            household.no_battery_utility_net +=
                PricePerKwh(FEED_IN_PER_KWH).value_of(Wh(baseline_export_wh), protocol::Rounding::Floor).0
                    - PricePerKwh(RETAIL_PER_KWH).value_of(Wh(baseline_import_wh), protocol::Rounding::Floor).0;
        }
        outcome.pv_wh += pv_wh;
        meters.insert(member.account, AccountMeter { import_wh, export_wh, no_data: false });
        slot_import_wh += import_wh;
        slot_export_wh += export_wh;
    }
    outcome.p2p_potential_wh += slot_import_wh.min(slot_export_wh);
    check_limits(outcome, members, &trades);
    let input = SlotInput {
        zone: zone(),
        slot,
        tariff: tariff(),
        utility_account: format!("utility:{}", demo::DEMO_ZONE),
        trades: trades.clone(),
        meters,
        reward_pool: REWARD_POOL_PER_SLOT + carry,
    };
    let settled = rules::settle(&input);
    for transaction in &settled.transactions {
        if transaction.sums() != (0, 0) {
            outcome.unbalanced_transactions += 1;
        }
    }
    let totals = settled.totals;
    outcome.metered_import_wh += totals.metered_import_wh.get();
    outcome.metered_export_wh += totals.metered_export_wh.get();
    outcome.traded_wh += totals.traded_wh.get();
    outcome.traded_value += totals.traded_value.get();
    outcome.delivered_p2p_wh += totals.delivered_p2p_wh.get();
    outcome.utility_supplied_wh += totals.utility_supplied_wh.get();
    outcome.utility_absorbed_wh += totals.utility_absorbed_wh.get();
    outcome.grid_fees += totals.grid_fees.get();
    outcome.utility_supplied_value += totals.utility_supplied_value.get();
    outcome.utility_absorbed_value += totals.utility_absorbed_value.get();
    outcome.protocol_fees += totals.protocol_fees.get();
    outcome.household_savings += totals.household_savings.get();
    outcome.tokens_emitted += totals.tokens_emitted.get();
    outcome.trades += totals.trades;
    let (volume, value): (i64, i128) = trades.iter().fold((0, 0), |(v, p), t| {
        (v + t.qty_wh.get(), p + i128::from(t.price_per_kwh.get()) * i128::from(t.qty_wh.get()))
    });
    if volume > 0 {
        outcome.slot_prices.push((slot.start_ms(), i64::try_from(value / i128::from(volume)).unwrap_or(0), volume));
    }
    outcome.trade_prices.extend(trades.iter().map(|t| (t.price_per_kwh.get(), t.qty_wh.get())));
    for statement in &settled.statements {
        record_statement(outcome, statement, slot, day_traded);
    }
    totals.tokens_carry.get()
}

fn record_statement(
    outcome: &mut Outcome,
    statement: &Statement,
    slot: SlotId,
    day_traded: &mut HashMap<(usize, i64), (i64, i64)>,
) {
    let Some(index) = outcome.households.iter().position(|h| h.account == statement.account) else { return };
    let household = &mut outcome.households[index];
    let feed_in = PricePerKwh(FEED_IN_PER_KWH);
    let retail = PricePerKwh(RETAIL_PER_KWH);
    household.metered_import_wh += statement.metered_import_wh.get();
    household.metered_export_wh += statement.metered_export_wh.get();
    household.bought_wh += statement.bought_wh.get();
    household.sold_wh += statement.sold_wh.get();
    household.net += statement.net.0;
    household.utility_only_net += feed_in.value_of(statement.metered_export_wh, protocol::Rounding::Floor).0
        - retail.value_of(statement.metered_import_wh, protocol::Rounding::Floor).0;
    household.sales_over_feed_in +=
        statement.sales.0 - feed_in.value_of(statement.sold_wh, protocol::Rounding::Floor).0;
    household.tokens += statement.tokens_earned.0;
    outcome.purchases += -statement.purchases.0;
    outcome.sales += statement.sales.0;
    let traded = statement.bought_wh.get() + statement.sold_wh.get();
    household.slot_traded_wh_max = household.slot_traded_wh_max.max(traded);
    let day = slot.start_ms().div_euclid(DAY_MS);
    let entry = day_traded.entry((index, day)).or_default();
    entry.0 += traded;
    entry.1 += -statement.purchases.0;
    household.day_traded_wh_max = household.day_traded_wh_max.max(entry.0);
    household.day_spend_max = household.day_spend_max.max(entry.1);
}

/// Counts trades outside the buyer's cap or the seller's floor.
fn check_limits(outcome: &mut Outcome, members: &[Member], trades: &[TradeInput]) {
    let limits: HashMap<AccountId, (i64, i64)> = members.iter().map(|m| (m.account, (m.sell_min, m.buy_max))).collect();
    for trade in trades {
        let price = trade.price_per_kwh.get();
        if limits.get(&trade.buyer).is_some_and(|(_, buy_max)| price > *buy_max) {
            outcome.limit_violations += 1;
        }
        if limits.get(&trade.seller).is_some_and(|(sell_min, _)| price < *sell_min) {
            outcome.limit_violations += 1;
        }
    }
}
