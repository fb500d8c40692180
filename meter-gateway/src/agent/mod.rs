//! The home trading agent: within the owner's limits it forecasts the next slots' surplus or deficit
//! from recent readings and keeps one order per upcoming slot in line with the forecast, publishing
//! signed `Order`, `Cancel` and `Replace` messages on the account's orders topic.
//!
//! The planner ([`Planner`]) is pure: readings in, commands out. [`run`] adds the clock, signing with
//! the ACCOUNT key (never the device key) and MQTT.

pub mod forecast;

use crate::clock::SimClock;
use crate::publisher::{mqtt_options, MqttSettings};
use protocol::{
    topics, AccountId, Cancel, Order, PricePerKwh, Reading, Replace, Side, Signed, SlotId, TimeInForce, TimestampMs,
    Wh, ZoneId,
};
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Default delivery slot: 15 minutes.
pub const SLOT_LEN_DEFAULT_MS: i64 = 15 * 60 * 1000;
/// Default gate closure: orders for a slot close 5 minutes before it starts.
pub const GATE_CLOSURE_DEFAULT_MS: i64 = 5 * 60 * 1000;
/// Default number of upcoming slots traded.
pub const SLOTS_AHEAD_DEFAULT: u32 = 2;
/// Most slots the agent trades at once: bounds open orders per account.
pub const SLOTS_AHEAD_MAX: u32 = 16;
/// Smallest order: below this the fees outweigh the trade.
pub const QTY_MIN_DEFAULT_WH: i64 = 50;
/// Readings the forecast looks back over by default: one hour.
pub const FORECAST_WINDOW_DEFAULT_MS: i64 = 60 * 60 * 1000;
/// Shortest history that gives a forecast: shorter spans are dominated by a single cloud.
pub const FORECAST_SPAN_MIN_MS: i64 = 60 * 1000;
/// Readings kept for the forecast (an hour at a 1 s poll).
pub const HISTORY_LEN_MAX: usize = 3_600;
/// A forecast change smaller than this share of the open quantity does not replace the order.
pub const REPLACE_THRESHOLD_PERCENT: i64 = 10;
/// Commands buffered towards MQTT.
pub const READINGS_CHANNEL_CAPACITY: usize = 64;
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
}

fn default_share() -> u8 {
    80
}
fn default_slot_len() -> i64 {
    SLOT_LEN_DEFAULT_MS
}
fn default_gate() -> i64 {
    GATE_CLOSURE_DEFAULT_MS
}
fn default_slots_ahead() -> u32 {
    SLOTS_AHEAD_DEFAULT
}
fn default_qty_min() -> i64 {
    QTY_MIN_DEFAULT_WH
}
fn default_window() -> i64 {
    FORECAST_WINDOW_DEFAULT_MS
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
}

impl Planner {
    /// `first_nonce` must be above any nonce this account used before (see [`nonce_base`]).
    pub fn new(settings: AgentSettings, account: AccountId, zone: ZoneId, first_nonce: u64) -> Self {
        Self { settings, account, zone, history: VecDeque::new(), open: BTreeMap::new(), next_nonce: first_nonce }
    }

    pub fn open_orders(&self) -> &BTreeMap<SlotId, OpenOrder> {
        &self.open
    }

    pub fn observe(&mut self, reading: &Reading) {
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

    /// Brings the open orders in line with the forecast.
    pub fn plan(&mut self, now_ms: i64) -> Vec<Action> {
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
        Action::Order(Order {
            account: self.account,
            zone: self.zone.clone(),
            slot,
            side,
            price_per_kwh: PricePerKwh(price),
            qty_wh: Wh(qty),
            tif: TimeInForce::Gtc,
            post_only: false,
            nonce,
            ts_ms,
        })
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

/// Runs the agent: readings arrive on `readings` (the gateway feeds its own), commands go to
/// `gridex/v1/{zone}/orders/{account}`. Returns when `shutdown` turns true or the readings end.
pub async fn run(
    settings: AgentSettings,
    zone: ZoneId,
    mqtt: MqttSettings,
    clock: SimClock,
    mut readings: mpsc::Receiver<Reading>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    settings.validate()?;
    let key = crate::keys::load(&settings.key)?;
    let account = AccountId::from_verifying_key(&key.verifying_key());
    let options = mqtt_options(&mqtt, &format!("gridex-agent-{}", &account.to_hex()[..16]), None)?;
    let (client, mut eventloop) = AsyncClient::new(options, crate::publisher::REQUEST_CHANNEL_CAPACITY);
    // The event loop gets its own task; rumqttc reconnects on the next poll after an error.
    let poller = tokio::spawn(async move {
        loop {
            if let Err(error) = eventloop.poll().await {
                tracing::debug!(%error, "agent mqtt connection down");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let topic = topics::orders(&zone, &account);
    let plan_every_ms = clock.real_ms_for(settings.slot_len_ms / PLANS_PER_SLOT).max(100);
    let mut planner = Planner::new(settings, account, zone, nonce_base());
    let mut tick = tokio::time::interval(Duration::from_millis(plan_every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(%account, "trading agent started");
    loop {
        tokio::select! {
            reading = readings.recv() => match reading {
                Some(reading) => planner.observe(&reading),
                None => break,
            },
            _ = tick.tick() => {
                for action in planner.plan(clock.now_ms()) {
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
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    poller.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{testing, DeviceId, MeterSerial, PowerW};

    const MIN: i64 = 60_000;

    fn settings() -> AgentSettings {
        AgentSettings {
            key: PathBuf::from("unused"),
            price_per_kwh_sell_min: 120_000,
            price_per_kwh_buy_max: 300_000,
            surplus_share_percent: 50,
            buy_deficit: true,
            slot_len_ms: SLOT_LEN_DEFAULT_MS,
            gate_closure_ms: GATE_CLOSURE_DEFAULT_MS,
            slots_ahead: 2,
            qty_min_wh: QTY_MIN_DEFAULT_WH,
            forecast_window_ms: 30 * MIN,
        }
    }

    fn reading(ts_ms: i64, import_wh: i64, export_wh: i64) -> Reading {
        let key = testing::signing_key(9);
        Reading {
            device: DeviceId::from_verifying_key(&key.verifying_key()),
            zone: testing::zone(),
            meter_serial: MeterSerial::parse("SN").expect("valid"),
            seq: u64::try_from(ts_ms).expect("positive"),
            ts_ms: TimestampMs(ts_ms),
            import_wh: Wh(import_wh),
            export_wh: Wh(export_wh),
            pv_wh: None,
            power_w: PowerW(0),
        }
    }

    fn planner() -> Planner {
        let account = AccountId::from_verifying_key(&testing::signing_key(3).verifying_key());
        Planner::new(settings(), account, testing::zone(), 1)
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
            assert!(order.slot.start_ms() - GATE_CLOSURE_DEFAULT_MS > now, "gate still open");
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
        let now = 100 * SLOT_LEN_DEFAULT_MS + 11 * MIN;
        let slots = planner.tradable_slots(now);
        assert_eq!(slots[0].start_ms(), 102 * SLOT_LEN_DEFAULT_MS);
        assert_eq!(slots[1].start_ms(), 103 * SLOT_LEN_DEFAULT_MS);
    }

    #[test]
    fn without_enough_history_nothing_is_ordered() {
        let mut planner = planner();
        planner.observe(&reading(0, 0, 0));
        assert!(planner.plan(MIN).is_empty());
    }
}
