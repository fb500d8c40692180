//! The home trading agent: within the owner's limits it forecasts the next slots' surplus or deficit
//! and keeps one order per upcoming slot in line with the forecast, publishing signed `Order`, `Cancel`
//! and `Replace` messages on the account's orders topic.
//!
//! Two strategies. *Limit* (the default, kept for comparison): a trailing one-hour forecast and orders
//! at the owner's limit prices, blind to the market. *Quoting* (`[agent.quoting]`, see [`quoting`]): a
//! forecast learned by time of day ([`forecast`]), prices from the public book and the zone's tariffs
//! that move towards the owner's limit as gate closure nears, its own fills read from the exchange's
//! order updates ([`position`]) so it never commits more than its plan or its volume and spend caps,
//! and a state file so that a restart adopts its open orders instead of placing them again.
//!
//! The planner ([`Planner`]) is pure: readings, books and order updates in, commands out. [`run`] adds
//! the clock, signing with the ACCOUNT key (never the device key), MQTT and the state file.

pub mod battery;
pub mod forecast;
pub mod position;
pub mod quoting;
#[cfg(test)]
mod quoting_tests;

use crate::battery::BatteryMode;
use crate::clock::SimClock;
use crate::publisher::{mqtt_options, MqttLogin, MqttSettings};
use battery::{BatteryObservation, BatterySettings};
use forecast::Forecaster;
use position::Positions;
use protocol::{
    topics, AccountId, BatteryPlan, BookSnapshot, Cancel, Order, OrderUpdate, PlannedSlot, PriceBand, PricePerKwh,
    Reading, Reject, Replace, Side, Signed, SlotId, TimestampMs, Wh, ZoneId,
};
use quoting::{Band, Caps, Top};
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub use protocol::market::{GATE_CLOSURE_MS_DEFAULT, SLOT_LEN_MS_DEFAULT};
/// Default number of upcoming slots traded.
pub const SLOTS_AHEAD_DEFAULT: u32 = 2;
/// Most slots the agent trades at once: bounds open orders per account.
pub const SLOTS_AHEAD_MAX: u32 = 16;
/// Smallest order: below this the fees outweigh the trade.
pub const QTY_MIN_WH_DEFAULT: i64 = 50;
/// Readings the forecast looks back over by default: one hour.
pub const FORECAST_WINDOW_MS_DEFAULT: i64 = 60 * 60 * 1000;
/// Shortest history that gives a forecast: shorter spans are dominated by a single cloud.
pub const FORECAST_SPAN_MIN_MS: i64 = 60 * 1000;
/// Readings kept for the forecast (an hour at a 1 s poll).
pub const HISTORY_LEN_MAX: usize = 3_600;
/// A forecast change smaller than this share of the open quantity does not replace the order.
pub const REPLACE_THRESHOLD_PERCENT: i64 = 10;
/// Commands buffered towards MQTT.
pub const READINGS_CHANNEL_CAPACITY: usize = 64;
/// Messages from the exchange (books, updates, rejects) waiting for the planner.
pub const HEARD_CHANNEL_CAPACITY: usize = 256;
/// How many times per slot the agent re-plans.
pub const PLANS_PER_SLOT: i64 = 15;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Mqtt(#[from] crate::publisher::PublishError),
    #[error(transparent)]
    State(#[from] position::StateError),
}

fn default_share() -> u8 {
    80
}
fn default_slot_len() -> i64 {
    SLOT_LEN_MS_DEFAULT
}
fn default_gate() -> i64 {
    GATE_CLOSURE_MS_DEFAULT
}
fn default_slots_ahead() -> u32 {
    SLOTS_AHEAD_DEFAULT
}
fn default_qty_min() -> i64 {
    QTY_MIN_WH_DEFAULT
}
fn default_window() -> i64 {
    FORECAST_WINDOW_MS_DEFAULT
}
fn default_true() -> bool {
    true
}

/// The owner's limits and the market's timing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// The ACCOUNT key file; orders are signed with it.
    pub key: PathBuf,
    /// Lowest price to sell at (micro-money per kWh).
    pub price_per_kwh_sell_min: i64,
    /// Highest price to buy at.
    pub price_per_kwh_buy_max: i64,
    /// Share of the forecast surplus offered, 0–100.
    #[serde(default = "default_share")]
    pub surplus_share_percent: u8,
    /// Whether a forecast deficit is bought on the market.
    #[serde(default = "default_true")]
    pub buy_deficit: bool,
    #[serde(default = "default_slot_len")]
    pub slot_len_ms: i64,
    #[serde(default = "default_gate")]
    pub gate_closure_ms: i64,
    #[serde(default = "default_slots_ahead")]
    pub slots_ahead: u32,
    #[serde(default = "default_qty_min")]
    pub qty_min_wh: i64,
    #[serde(default = "default_window")]
    pub forecast_window_ms: i64,
    /// The agent's own broker login (`[agent.mqtt]`: its account id as username and the password
    /// `gridex broker-credentials ACCOUNT` prints); needed when the gateway's `[mqtt]` has a
    /// username, as the gateway logs in as its device. The URL and CA file are the gateway's.
    #[serde(default)]
    pub mqtt: Option<MqttLogin>,
    /// The quoting strategy and its settings; absent: the limit strategy.
    #[serde(default)]
    pub quoting: Option<QuotingSettings>,
    /// The home battery's plan and the owner's limits for it (`[agent.battery]`, quoting only).
    #[serde(default)]
    pub battery: Option<BatterySettings>,
}

fn default_tick() -> i64 {
    QUOTE_TICK_PER_KWH_DEFAULT
}

/// The exchange's default price tick (µ per kWh): quotes must lie on it.
pub const QUOTE_TICK_PER_KWH_DEFAULT: i64 = 1_000;
const MS_PER_DAY: i64 = 24 * 60 * 60 * 1000;

/// The quoting strategy's inputs beyond the owner's limits: the zone's tariffs, the price tick, the
/// owner's caps and where the agent keeps its orders across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotingSettings {
    /// The zone's feed-in tariff (µ per kWh): what the utility pays for surplus.
    pub feed_in_price_per_kwh: i64,
    /// The zone's retail price (µ per kWh): what the utility charges.
    pub retail_price_per_kwh: i64,
    #[serde(default = "default_tick")]
    pub tick_per_kwh: i64,
    /// The zone's grid fee (µ per kWh) and protocol fee (basis points of the trade value), both paid by
    /// the buyer: the agent never buys above `retail − fees`, where buying from the utility is cheaper.
    #[serde(default)]
    pub grid_fee_per_kwh: i64,
    #[serde(default)]
    pub protocol_fee_bps: i64,
    #[serde(default)]
    pub qty_wh_per_slot_max: Option<i64>,
    #[serde(default)]
    pub qty_wh_per_day_max: Option<i64>,
    /// Most money (micro-units) spent buying in one slot.
    #[serde(default)]
    pub spend_per_slot_max: Option<i64>,
    #[serde(default)]
    pub spend_per_day_max: Option<i64>,
    /// The agent's orders and next nonce, rewritten after each change; read back at start.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

impl QuotingSettings {
    /// The settings of a zone's two tariffs alone, as a config that names only them reads: the
    /// default tick, no fees, no caps and no state file.
    pub fn with_tariffs(feed_in_price_per_kwh: i64, retail_price_per_kwh: i64) -> QuotingSettings {
        QuotingSettings {
            feed_in_price_per_kwh,
            retail_price_per_kwh,
            tick_per_kwh: QUOTE_TICK_PER_KWH_DEFAULT,
            grid_fee_per_kwh: 0,
            protocol_fee_bps: 0,
            qty_wh_per_slot_max: None,
            qty_wh_per_day_max: None,
            spend_per_slot_max: None,
            spend_per_day_max: None,
            state_file: None,
        }
    }

    fn band(&self) -> Band {
        Band { feed_in_per_kwh: self.feed_in_price_per_kwh, retail_per_kwh: self.retail_price_per_kwh }
    }

    /// The highest price at which buying from a neighbour still beats the utility's retail price
    /// (`retail_per_kwh`: the slot's, where its book says it, else the configured one).
    fn buy_break_even_per_kwh(&self, retail_per_kwh: i64) -> i64 {
        let after_grid_fee = retail_per_kwh - self.grid_fee_per_kwh;
        // price × (1 + bps / 10 000) <= retail − grid fee, rounded down.
        after_grid_fee * 10_000 / (10_000 + self.protocol_fee_bps.max(0))
    }

    fn caps(&self) -> Caps {
        Caps {
            qty_wh_per_slot_max: self.qty_wh_per_slot_max,
            qty_wh_per_day_max: self.qty_wh_per_day_max,
            spend_per_slot_max: self.spend_per_slot_max,
            spend_per_day_max: self.spend_per_day_max,
        }
    }
}

impl AgentSettings {
    pub fn validate(&self) -> Result<(), AgentError> {
        let fail = |text: &str| Err(AgentError::Settings(text.to_owned()));
        if self.price_per_kwh_sell_min <= 0 || self.price_per_kwh_buy_max <= 0 {
            return fail("prices must be positive");
        }
        if self.surplus_share_percent > 100 {
            return fail("surplus_share_percent is 0 to 100");
        }
        if self.slot_len_ms <= 0 || self.gate_closure_ms < 0 || self.gate_closure_ms >= self.slot_len_ms * 96 {
            return fail("slot_len_ms must be positive and gate_closure_ms non-negative");
        }
        if self.slots_ahead == 0 || self.slots_ahead > SLOTS_AHEAD_MAX {
            return fail("slots_ahead is 1 to 16");
        }
        if self.qty_min_wh <= 0 || self.forecast_window_ms < FORECAST_SPAN_MIN_MS {
            return fail("qty_min_wh must be positive and forecast_window_ms at least a minute");
        }
        if let Some(battery) = &self.battery {
            if let Some(problem) = battery.problem() {
                return fail(problem);
            }
            if self.quoting.is_none() {
                return fail("[agent.battery] needs the quoting strategy ([agent.quoting])");
            }
        }
        if let Some(quoting) = &self.quoting {
            if quoting.feed_in_price_per_kwh < 0 || quoting.retail_price_per_kwh <= quoting.feed_in_price_per_kwh {
                return fail("the tariffs must satisfy 0 <= feed_in < retail");
            }
            if quoting.tick_per_kwh <= 0 {
                return fail("tick_per_kwh must be positive");
            }
            let caps = [
                quoting.qty_wh_per_slot_max,
                quoting.qty_wh_per_day_max,
                quoting.spend_per_slot_max,
                quoting.spend_per_day_max,
            ];
            if caps.iter().flatten().any(|cap| *cap < 0) {
                return fail("caps must not be negative");
            }
        }
        Ok(())
    }
}

/// An order the agent believes is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOrder {
    pub nonce: u64,
    pub side: Side,
    pub qty_wh: i64,
    pub price_per_kwh: i64,
}

/// A command to sign and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Order(Order),
    Cancel(Cancel),
    Replace(Replace),
}

/// Forecasts and decides; no I/O.
#[derive(Debug)]
pub struct Planner {
    settings: AgentSettings,
    account: AccountId,
    zone: ZoneId,
    history: VecDeque<(i64, i64, i64)>,
    open: BTreeMap<SlotId, OpenOrder>,
    next_nonce: u64,
    /// The quoting strategy's state (unused by the limit strategy).
    forecaster: Forecaster,
    positions: Positions,
    /// Per open slot: the last book snapshot's seq, its top and the band it accepts (when it says).
    tops: BTreeMap<SlotId, (u64, Top, Option<PriceBand>)>,
    /// The battery plan's state (unused without `[agent.battery]`).
    battery: BatteryState,
}

/// What the planner knows of the home battery and what it decided.
#[derive(Debug, Default)]
struct BatteryState {
    observed: Option<BatteryObservation>,
    /// The latest time stamp heard from the exchange (book, order update or reject).
    last_contact_ms: Option<i64>,
    fallback: bool,
    /// When the battery plan first ran (the exchange's silence counts from then).
    started_ms: Option<i64>,
    /// UTC day and the discharge counter at its start (for the cycle budget).
    day: Option<(i64, i64)>,
    /// Planned AC energy per upcoming slot (positive charges).
    plan: BTreeMap<SlotId, i64>,
    mode: Option<BatteryMode>,
}

impl Planner {
    /// `first_nonce` must be above any nonce this account used before (see [`nonce_base`]).
    pub fn new(settings: AgentSettings, account: AccountId, zone: ZoneId, first_nonce: u64) -> Self {
        let forecaster = Forecaster::new(settings.slot_len_ms);
        Self {
            settings,
            account,
            zone,
            history: VecDeque::new(),
            open: BTreeMap::new(),
            next_nonce: first_nonce,
            forecaster,
            positions: Positions::default(),
            tops: BTreeMap::new(),
            battery: BatteryState::default(),
        }
    }

    /// Takes what the gateway read from the home battery. Call it before [`Planner::observe`] with
    /// the reading of the same moment: the forecast then learns the household's own load, not the
    /// battery's charging.
    pub fn observe_battery(&mut self, observation: BatteryObservation) {
        self.battery.observed = Some(observation);
    }

    /// The battery mode the agent wants now: `None` without `[agent.battery]` with `control` on, or
    /// before anything was planned. After `no_contact_fallback_ms` without a word from the exchange,
    /// self-consumption (see [`Planner::battery_fallback`]).
    pub fn battery_mode(&self) -> Option<BatteryMode> {
        self.battery.mode
    }

    /// Whether the battery fell back to self-consumption because the exchange was not heard.
    pub fn battery_fallback(&self) -> bool {
        self.battery.fallback
    }

    /// The planned AC energy of the battery per upcoming slot (positive charges).
    pub fn battery_plan(&self) -> &BTreeMap<SlotId, i64> {
        &self.battery.plan
    }

    /// The battery plan as the agent publishes it (PROTOCOL.md §4.7): each upcoming slot's energy
    /// and the state of charge it leads to. `None` until a plan was made from an observed battery.
    pub fn battery_plan_message(&self, nonce: u64, ts_ms: i64) -> Option<BatteryPlan> {
        let (Some(settings), Some(observed)) = (&self.settings.battery, self.battery.observed) else { return None };
        if self.battery.plan.is_empty() {
            return None;
        }
        let energies: Vec<i64> =
            self.battery.plan.values().take(protocol::plan::BATTERY_PLAN_SLOTS_MAX).copied().collect();
        let path = battery::soc_path_permille(
            observed.stored_wh(),
            observed.capacity_wh,
            settings.round_trip_efficiency_permille,
            &energies,
        );
        let slots = self
            .battery
            .plan
            .keys()
            .zip(energies.iter().zip(path))
            .map(|(slot, (charge_wh, soc_permille_end))| PlannedSlot {
                slot: *slot,
                charge_wh: Wh(*charge_wh),
                soc_permille_end,
            })
            .collect();
        Some(BatteryPlan { account: self.account, zone: self.zone.clone(), nonce, ts_ms: TimestampMs(ts_ms), slots })
    }

    fn heard_at(&mut self, ts_ms: i64) {
        self.battery.last_contact_ms = Some(self.battery.last_contact_ms.map_or(ts_ms, |last| last.max(ts_ms)));
    }

    /// Adopts orders remembered from before a restart (quoting strategy): they count as open until
    /// the exchange says otherwise, so none is placed twice; nonces continue above the remembered ones.
    pub fn adopt(&mut self, positions: Positions) {
        self.next_nonce = self.next_nonce.max(positions.next_nonce);
        self.positions = positions;
    }

    /// The quoting strategy's view of its orders (what the state file holds).
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Takes a published book snapshot (older ones than a slot's last are ignored).
    pub fn observe_book(&mut self, book: &BookSnapshot) {
        if book.zone == self.zone {
            self.heard_at(book.ts_ms.0);
        }
        if book.zone != self.zone || self.tops.get(&book.slot).is_some_and(|(seq, _, _)| *seq >= book.seq) {
            return;
        }
        let top = Top {
            best_bid: book.bids.first().map(|level| level.price_per_kwh.0),
            best_ask: book.asks.first().map(|level| level.price_per_kwh.0),
        };
        self.tops.insert(book.slot, (book.seq, top, book.price_band));
    }

    /// Takes an order update of this account.
    pub fn observe_update(&mut self, update: &OrderUpdate) {
        if update.account == self.account {
            self.heard_at(update.ts_ms.0);
            self.positions.on_update(update);
        }
    }

    /// Takes a reject of one of this account's commands.
    pub fn observe_reject(&mut self, reject: &Reject) {
        self.heard_at(reject.ts_ms.0);
        self.positions.on_reject(reject);
        if reject.reason == protocol::Reason::Replayed {
            // Another client of this account (its owner's dashboard signs with the same key) has used
            // nonces above ours: continue above the wall clock's microseconds, as a restart would.
            self.next_nonce = self.next_nonce.max(nonce_base());
            self.positions.next_nonce = self.next_nonce;
        }
    }

    pub fn open_orders(&self) -> &BTreeMap<SlotId, OpenOrder> {
        &self.open
    }

    pub fn observe(&mut self, reading: &Reading) {
        if let Some(observation) = BatteryObservation::from_reading_after(reading, self.battery.observed.as_ref()) {
            // A v2 reading carries the battery: it is the freshest word on it.
            self.battery.observed = Some(observation);
        }
        match (&self.settings.battery, self.battery.observed) {
            // The household's own flows: what the battery took counts as export, what it gave as import.
            (Some(_), Some(battery)) => {
                let mut household = reading.clone();
                household.import_wh = Wh(reading.import_wh.0 + battery.discharged_wh);
                household.export_wh = Wh(reading.export_wh.0 + battery.charged_wh);
                self.forecaster.observe(&household);
            }
            _ => self.forecaster.observe(reading),
        }
        if self.history.back().is_some_and(|(ts, _, _)| *ts >= reading.ts_ms.0) {
            return;
        }
        self.history.push_back((reading.ts_ms.0, reading.import_wh.0, reading.export_wh.0));
        let oldest_kept = reading.ts_ms.0 - self.settings.forecast_window_ms;
        while self.history.len() > HISTORY_LEN_MAX || self.history.front().is_some_and(|(ts, _, _)| *ts < oldest_kept) {
            self.history.pop_front();
        }
    }

    /// Forecast net export per slot in Wh (negative: a deficit), from the average over the window.
    pub fn forecast_net_export_wh(&self) -> Option<i64> {
        let (first, last) = (self.history.front()?, self.history.back()?);
        let span_ms = last.0 - first.0;
        if span_ms < FORECAST_SPAN_MIN_MS {
            return None;
        }
        let net_wh = (last.2 - first.2) - (last.1 - first.1);
        i64::try_from(i128::from(net_wh) * i128::from(self.settings.slot_len_ms) / i128::from(span_ms)).ok()
    }

    fn nonce(&mut self) -> u64 {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.positions.next_nonce = self.next_nonce;
        nonce
    }

    fn desired(&self) -> Option<(Side, i64, i64)> {
        let forecast = self.forecast_net_export_wh()?;
        let (side, qty, price) = if forecast > 0 {
            let qty = forecast * i64::from(self.settings.surplus_share_percent) / 100;
            (Side::Sell, qty, self.settings.price_per_kwh_sell_min)
        } else if self.settings.buy_deficit {
            (Side::Buy, -forecast, self.settings.price_per_kwh_buy_max)
        } else {
            return None;
        };
        (qty >= self.settings.qty_min_wh).then_some((side, qty, price))
    }

    /// The slots still open for orders at `now_ms`, nearest first.
    pub fn tradable_slots(&self, now_ms: i64) -> Vec<SlotId> {
        let len = self.settings.slot_len_ms;
        let mut slot = SlotId::containing(TimestampMs(now_ms), len).next(len);
        while slot.start_ms() - self.settings.gate_closure_ms <= now_ms {
            slot = slot.next(len);
        }
        (0..self.settings.slots_ahead)
            .map(|i| SlotId::containing(TimestampMs(slot.start_ms() + i64::from(i) * len), len))
            .collect()
    }

    /// Brings the open orders in line with the forecast (and, quoting, with the market).
    pub fn plan(&mut self, now_ms: i64) -> Vec<Action> {
        match self.settings.quoting.clone() {
            Some(quoting) => self.plan_quoting(now_ms, &quoting),
            None => self.plan_limit(now_ms),
        }
    }

    /// The limit strategy: the trailing forecast at the owner's limit prices.
    fn plan_limit(&mut self, now_ms: i64) -> Vec<Action> {
        let gate = self.settings.gate_closure_ms;
        // Orders whose gate closed are the exchange's business now (filled or expired).
        self.open.retain(|slot, _| slot.start_ms() - gate > now_ms);
        let desired = self.desired();
        let mut actions = Vec::new();
        let ts_ms = TimestampMs(now_ms);
        for slot in self.tradable_slots(now_ms) {
            let current = self.open.get(&slot).copied();
            match (current, desired) {
                (None, None) => {}
                (Some(open), None) => {
                    actions.push(self.cancel(slot, open, ts_ms));
                }
                (None, Some(want)) => actions.push(self.order(slot, want, ts_ms)),
                (Some(open), Some((side, qty, price))) if open.side == side => {
                    let threshold = (open.qty_wh * REPLACE_THRESHOLD_PERCENT / 100).max(self.settings.qty_min_wh);
                    if (qty - open.qty_wh).abs() > threshold || price != open.price_per_kwh {
                        let nonce = self.nonce();
                        actions.push(Action::Replace(Replace {
                            account: self.account,
                            zone: self.zone.clone(),
                            slot,
                            order_nonce: open.nonce,
                            price_per_kwh: PricePerKwh(price),
                            qty_wh: Wh(qty),
                            nonce,
                            ts_ms,
                        }));
                        self.open.insert(slot, OpenOrder { qty_wh: qty, price_per_kwh: price, ..open });
                    }
                }
                (Some(open), Some(want)) => {
                    actions.push(self.cancel(slot, open, ts_ms));
                    actions.push(self.order(slot, want, ts_ms));
                }
            }
        }
        actions
    }

    fn cancel(&mut self, slot: SlotId, open: OpenOrder, ts_ms: TimestampMs) -> Action {
        self.open.remove(&slot);
        let nonce = self.nonce();
        Action::Cancel(Cancel {
            account: self.account,
            zone: self.zone.clone(),
            slot,
            order_nonce: open.nonce,
            nonce,
            ts_ms,
        })
    }

    fn order(&mut self, slot: SlotId, (side, qty, price): (Side, i64, i64), ts_ms: TimestampMs) -> Action {
        let nonce = self.nonce();
        self.open.insert(slot, OpenOrder { nonce, side, qty_wh: qty, price_per_kwh: price });
        Action::Order(
            Order::gtc(self.account, self.zone.clone(), slot, side, PricePerKwh(price), Wh(qty)).at(nonce, ts_ms),
        )
    }
}

/// A nonce above any used before by this account on this machine: wall-clock microseconds. Nonces then
/// increase by one per command, far slower than a microsecond each.
pub fn nonce_base() -> u64 {
    u64::try_from(crate::clock::wall_clock_ms()).unwrap_or(0) * 1_000
}

/// Signs an action with the account key and returns its JSON.
pub fn sign(action: Action, key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, protocol::ProtocolError> {
    Ok(match action {
        Action::Order(order) => Signed::sign(order, key)?.to_json(),
        Action::Cancel(cancel) => Signed::sign(cancel, key)?.to_json(),
        Action::Replace(replace) => Signed::sign(replace, key)?.to_json(),
    })
}

/// What the quoting agent hears from the exchange.
#[derive(Debug)]
enum Heard {
    Book(BookSnapshot),
    Update(OrderUpdate),
    Reject(Reject),
}

/// Decodes a message on one of the topics the agent subscribes to: only what the pinned operator
/// signed is heard (see [`crate::operator`]).
fn heard(topic: &str, payload: &[u8], zone: &ZoneId, account: &AccountId, pinned: &[u8; 32]) -> Option<Heard> {
    if topic == topics::book(zone) {
        return crate::operator::verified::<BookSnapshot>(pinned, topic, payload).map(Heard::Book);
    }
    if topic == topics::events(zone, account) {
        return crate::operator::verified::<OrderUpdate>(pinned, topic, payload).map(Heard::Update);
    }
    if topic == topics::rejects(zone, account) {
        return crate::operator::verified::<Reject>(pinned, topic, payload).map(Heard::Reject);
    }
    None
}

/// The pinned operator key the agent needs: it never trades on market data it cannot verify.
fn pinned_operator(mqtt: &MqttSettings) -> Result<[u8; 32], AgentError> {
    mqtt.pinned_operator().map_err(AgentError::Settings)?.ok_or_else(|| {
        AgentError::Settings(
            "no operator key pinned: set operator_key = \"<64 hex>\" in [mqtt] (from GET /api/v1/operator-key); \
             the agent does not trade on messages it cannot verify"
                .to_owned(),
        )
    })
}

/// The gateway's broker settings with the agent's own login and client id: never the device's, or
/// the two would take each other's session over (the broker binds the client id to the username).
fn agent_login(mut mqtt: MqttSettings, login: Option<&MqttLogin>) -> Result<MqttSettings, AgentError> {
    mqtt.client_id = None;
    match login {
        Some(login) => {
            mqtt.username = Some(login.username.clone());
            mqtt.password = Some(login.password.clone());
        }
        None if mqtt.username.is_some() => {
            return Err(AgentError::Settings(
                "the gateway logs in to the broker as its device: give the agent its own login in [agent.mqtt] \
                 (username = the account id, password from gridex broker-credentials)"
                    .to_owned(),
            ));
        }
        None => {}
    }
    Ok(mqtt)
}

/// The agent's link to the home battery (see [`run_with_battery`]): what the gateway reads from the
/// battery comes in, the modes the agent wants go out.
#[derive(Debug)]
pub struct BatteryLink {
    /// Observations beyond what readings carry (a v2 reading's battery fields are taken as well).
    pub observations: Option<mpsc::Receiver<BatteryObservation>>,
    /// Only used with `[agent.battery]` `control = true`; a mode is sent when it changes.
    pub modes: mpsc::Sender<BatteryMode>,
}

/// [`run_with_battery`] without a battery.
pub async fn run(
    settings: AgentSettings,
    zone: ZoneId,
    mqtt: MqttSettings,
    clock: SimClock,
    readings: mpsc::Receiver<Reading>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    run_with_battery(settings, zone, mqtt, clock, readings, shutdown, None).await
}

async fn next_observation(link: &mut Option<BatteryLink>) -> Option<BatteryObservation> {
    match link {
        Some(BatteryLink { observations: Some(observations), .. }) => observations.recv().await,
        _ => std::future::pending().await,
    }
}

/// Runs the agent: readings arrive on `readings` (the gateway feeds its own), commands go to
/// `gridex/v1/{zone}/orders/{account}`. With a `battery` link, the battery's observations feed the
/// plan (send each one just before the reading of the same moment) and, with `control` on, the
/// battery mode for the slot being delivered goes out on `modes` whenever it changes (after
/// `no_contact_fallback_ms` without a word from the exchange: self-consumption). The quoting strategy also subscribes to the zone's book and
/// the account's events and rejects, in a persistent MQTT session (so updates sent while the agent
/// was away arrive when it is back). Returns when `shutdown` turns true or the readings end.
pub async fn run_with_battery(
    settings: AgentSettings,
    zone: ZoneId,
    mqtt: MqttSettings,
    clock: SimClock,
    mut readings: mpsc::Receiver<Reading>,
    mut shutdown: watch::Receiver<bool>,
    mut battery: Option<BatteryLink>,
) -> Result<(), AgentError> {
    settings.validate()?;
    let pinned = pinned_operator(&mqtt)?;
    let key = crate::keys::load(&settings.key)?;
    let account = AccountId::from_verifying_key(&key.verifying_key());
    let state_file = settings.quoting.as_ref().and_then(|quoting| quoting.state_file.clone());
    let quoting = settings.quoting.is_some();
    let mqtt = agent_login(mqtt, settings.mqtt.as_ref())?;
    let mut options = mqtt_options(&mqtt, &format!("gridex-agent-{}", &account.to_hex()[..16]), None)?;
    options.set_clean_session(!quoting);
    let (client, mut eventloop) = AsyncClient::new(options, crate::publisher::REQUEST_CHANNEL_CAPACITY);
    let (heard_tx, mut heard_rx) = mpsc::channel(HEARD_CHANNEL_CAPACITY);
    let (poll_zone, poll_account) = (zone.clone(), account);
    // The event loop gets its own task; rumqttc reconnects on the next poll after an error.
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                    if let Some(message) = heard(&publish.topic, &publish.payload, &poll_zone, &poll_account, &pinned) {
                        // When the planner lags, a book snapshot or update is dropped rather than the
                        // connection stalled; the next one carries the cumulative state.
                        let _ = heard_tx.try_send(message);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "agent mqtt connection down");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    if quoting {
        for topic in [topics::book(&zone), topics::events(&zone, &account), topics::rejects(&zone, &account)] {
            client.subscribe(topic, QoS::AtLeastOnce).await.map_err(|error| AgentError::Settings(error.to_string()))?;
        }
    }
    let topic = topics::orders(&zone, &account);
    let zone_of_plans = zone.clone();
    let plan_every_ms = clock.real_ms_for(settings.slot_len_ms / PLANS_PER_SLOT).max(100);
    let mut planner = Planner::new(settings, account, zone, nonce_base());
    if let Some(path) = &state_file {
        planner.adopt(Positions::load(path)?);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(plan_every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(%account, quoting, "trading agent started");
    let mut sent_mode: Option<BatteryMode> = None;
    // The battery plan goes out (PROTOCOL.md §4.7) when it changed, so at least once a slot (its
    // window moves on); plan nonces are their own sequence, above any this account used before.
    let plans_topic = topics::plans(&zone_of_plans, &account);
    let mut plan_nonce = nonce_base();
    let mut sent_plan: Option<Vec<PlannedSlot>> = None;
    loop {
        tokio::select! {
            Some(observation) = next_observation(&mut battery) => planner.observe_battery(observation),
            reading = readings.recv() => match reading {
                Some(reading) => planner.observe(&reading),
                None => break,
            },
            Some(message) = heard_rx.recv() => {
                match message {
                    Heard::Book(book) => planner.observe_book(&book),
                    Heard::Update(update) => planner.observe_update(&update),
                    // A refused plan is no refused order (plan nonces are their own sequence).
                    Heard::Reject(reject) if reject.of == <BatteryPlan as protocol::WireMessage>::TYPE => {
                        tracing::warn!(reason = %reject.reason, message = %reject.message, "agent: battery plan refused");
                        if reject.reason == protocol::Reason::Replayed {
                            plan_nonce = plan_nonce.max(nonce_base());
                        }
                    }
                    Heard::Reject(reject) => planner.observe_reject(&reject),
                }
            }
            _ = tick.tick() => {
                let now_ms = clock.now_ms();
                let actions = planner.plan(now_ms);
                if let (Some(_), Some(plan)) = (&battery, planner.battery_plan_message(plan_nonce, now_ms)) {
                    if sent_plan.as_ref() != Some(&plan.slots) {
                        let slots = plan.slots.clone();
                        match Signed::sign(plan, &key) {
                            Ok(signed) => {
                                if client.try_publish(&plans_topic, QoS::AtLeastOnce, false, signed.to_json()).is_ok() {
                                    sent_plan = Some(slots);
                                    plan_nonce += 1;
                                } else {
                                    tracing::warn!("agent: mqtt request queue full, battery plan not sent");
                                }
                            }
                            Err(error) => tracing::error!(%error, "agent: cannot sign its battery plan"),
                        }
                    }
                }
                if let (Some(link), Some(mode)) = (&battery, planner.battery_mode()) {
                    if sent_mode != Some(mode) {
                        match link.modes.try_send(mode) {
                            Ok(()) => sent_mode = Some(mode),
                            Err(error) => tracing::warn!(%error, "agent: the battery's mode was not taken"),
                        }
                    }
                }
                // The state is written before the commands leave, so a crash right after sending
                // still remembers them (a remembered order that never arrived is refused on cancel).
                if let (Some(path), false) = (&state_file, actions.is_empty()) {
                    if let Err(error) = planner.positions().save(path) {
                        tracing::error!(%error, "agent: cannot save its state; not sending");
                        continue;
                    }
                }
                for action in actions {
                    match sign(action, &key) {
                        // Orders are not spooled: a stale order is worth less than none.
                        Ok(json) => if client.try_publish(&topic, QoS::AtLeastOnce, false, json).is_err() {
                            tracing::warn!("agent: mqtt request queue full, order dropped");
                        },
                        Err(error) => tracing::error!(%error, "agent: cannot sign"),
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some(path) = &state_file {
        if let Err(error) = planner.positions().save(path) {
            tracing::error!(%error, "agent: cannot save its state");
        }
    }
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    poller.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{testing, MeterSerial};

    const MIN: i64 = 60_000;

    #[test]
    fn the_agent_logs_in_as_its_account_never_as_the_gateways_device() {
        let gateway = MqttSettings {
            username: Some("device".into()),
            password: Some("device-pw".into()),
            client_id: Some("device".into()),
            ..MqttSettings::default()
        };
        let login = MqttLogin { username: "account".into(), password: "account-pw".into() };
        let agent = agent_login(gateway.clone(), Some(&login)).expect("its own login");
        assert_eq!((agent.username.as_deref(), agent.password.as_deref()), (Some("account"), Some("account-pw")));
        assert_eq!(agent.client_id, None, "the client id follows the agent's username");
        assert_eq!(agent.url, gateway.url);
        assert!(matches!(agent_login(gateway, None), Err(AgentError::Settings(_))), "the device's login is refused");
        assert_eq!(agent_login(MqttSettings::default(), None).expect("anonymous").username, None);
    }

    /// The owner's limits the agent's tests start from (`quoting_tests` adjusts them).
    pub(super) fn settings() -> AgentSettings {
        AgentSettings {
            key: PathBuf::from("unused"),
            price_per_kwh_sell_min: 120_000,
            price_per_kwh_buy_max: 300_000,
            surplus_share_percent: 50,
            buy_deficit: true,
            slot_len_ms: SLOT_LEN_MS_DEFAULT,
            gate_closure_ms: GATE_CLOSURE_MS_DEFAULT,
            slots_ahead: 2,
            qty_min_wh: QTY_MIN_WH_DEFAULT,
            forecast_window_ms: 30 * MIN,
            mqtt: None,
            battery: None,
            quoting: None,
        }
    }

    fn reading(ts_ms: i64, import_wh: i64, export_wh: i64) -> Reading {
        let (key, serial) = (testing::signing_key(9), MeterSerial::parse("SN").expect("valid"));
        let seq = u64::try_from(ts_ms).expect("positive");
        testing::grid_reading(&key, testing::zone(), serial, seq, ts_ms, import_wh, export_wh)
    }

    fn planner() -> Planner {
        let account = AccountId::from_verifying_key(&testing::signing_key(3).verifying_key());
        Planner::new(settings(), account, testing::zone(), 1)
    }

    #[test]
    fn after_its_owner_used_the_account_elsewhere_a_replayed_agent_continues_above_the_clock() {
        // The owner's dashboard signs with the same account key, from the wall clock in µs; the
        // agent's next command is then refused `replayed` and it must not stay behind forever.
        let mut agent = planner();
        let before = agent.nonce();
        let reject = Reject {
            of: "order".into(),
            seq: Some(before),
            reason: protocol::Reason::Replayed,
            message: "the nonce is not greater than the last accepted one".into(),
            ts_ms: TimestampMs(0),
        };
        let floor = nonce_base();
        agent.observe_reject(&reject);
        assert!(agent.nonce() >= floor, "the next nonce starts above the clock's microseconds");
        // Any other refusal leaves the numbering alone.
        let mut other = planner();
        let first = other.nonce();
        other.observe_reject(&Reject { reason: protocol::Reason::GateClosed, ..reject });
        assert_eq!(other.nonce(), first + 1);
    }

    #[test]
    fn a_forecast_surplus_is_offered_at_the_owners_lowest_price_for_the_next_open_slots() {
        let mut planner = planner();
        // Exporting 2 kW for 10 minutes: 500 Wh per 15-minute slot, half of it offered.
        for minute in 0..=10 {
            planner.observe(&reading(minute * MIN, 1_000, 10_000 + minute * 2_000 / 60));
        }
        let now = 10 * MIN;
        let actions = planner.plan(now);
        assert_eq!(actions.len(), 2);
        for action in &actions {
            let Action::Order(order) = action else { panic!("expected orders, got {action:?}") };
            assert_eq!(order.side, Side::Sell);
            assert_eq!(order.price_per_kwh, PricePerKwh(120_000));
            assert!((240..=260).contains(&order.qty_wh.0), "qty {}", order.qty_wh.0);
            assert!(order.slot.start_ms() - GATE_CLOSURE_MS_DEFAULT > now, "gate still open");
            Signed::sign(order.clone(), &testing::signing_key(3)).expect("signs with the account key");
        }
        // Same forecast: nothing to change.
        assert!(planner.plan(now + MIN).is_empty());
    }

    #[test]
    fn a_changed_forecast_replaces_and_a_flipped_one_cancels_and_reorders() {
        let mut planner = planner();
        for minute in 0..=10 {
            planner.observe(&reading(minute * MIN, 0, minute * 2_000 / 60));
        }
        let first = planner.plan(10 * MIN);
        assert_eq!(first.len(), 2);
        // The export quadruples: replace, keeping side (the same two slots are still open at minute 20).
        for minute in 11..=20 {
            planner.observe(&reading(minute * MIN, 0, 333 + (minute - 10) * 8_000 / 60));
        }
        let replaced = planner.plan(20 * MIN);
        assert!(replaced.iter().all(|a| matches!(a, Action::Replace(_))), "{replaced:?}");
        assert!(replaced.iter().any(|a| matches!(a, Action::Replace(r) if r.qty_wh.0 > 400)), "{replaced:?}");
        // Then the home imports heavily: cancel sells, place buys at the highest price.
        for minute in 21..=24 {
            planner.observe(&reading(minute * MIN, (minute - 20) * 30_000 / 60, 1_666));
        }
        let flipped = planner.plan(24 * MIN);
        assert!(flipped.iter().any(|a| matches!(a, Action::Cancel(_))), "{flipped:?}");
        assert!(flipped
            .iter()
            .any(|a| matches!(a, Action::Order(o) if o.side == Side::Buy && o.price_per_kwh.0 == 300_000)));
        let nonces: Vec<u64> = flipped
            .iter()
            .map(|a| match a {
                Action::Order(o) => o.nonce,
                Action::Cancel(c) => c.nonce,
                Action::Replace(r) => r.nonce,
            })
            .collect();
        assert!(nonces.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn slots_past_gate_closure_are_not_traded() {
        let planner = planner();
        // 11 minutes into a slot: the next slot starts in 4 minutes, inside the 5-minute gate.
        let now = 100 * SLOT_LEN_MS_DEFAULT + 11 * MIN;
        let slots = planner.tradable_slots(now);
        assert_eq!(slots[0].start_ms(), 102 * SLOT_LEN_MS_DEFAULT);
        assert_eq!(slots[1].start_ms(), 103 * SLOT_LEN_MS_DEFAULT);
    }

    #[test]
    fn without_enough_history_nothing_is_ordered() {
        let mut planner = planner();
        planner.observe(&reading(0, 0, 0));
        assert!(planner.plan(MIN).is_empty());
    }
}
