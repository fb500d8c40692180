//! What the agent knows of its own orders: each order's side, price, open and filled quantity as the
//! exchange last reported them (`order_update`, `reject`), and from that the volume and money already
//! committed per slot and per day, against which the owner's caps are checked. Saved to a state file
//! so that a restarted agent adopts its open orders instead of placing them again.

use protocol::{OrderStatus, OrderUpdate, Reject, Side, SlotId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const MS_PER_DAY: i64 = 24 * 60 * 60 * 1000;
/// Orders remembered at most: a week of slots with a few orders each bounds the state file.
pub const ORDERS_KEPT_MAX: usize = 4_096;
/// Largest state file read back: far above `ORDERS_KEPT_MAX` orders of ~200 bytes, so a damaged or
/// foreign file cannot make the agent allocate without bound.
pub const STATE_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// One order as the agent believes it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedOrder {
    pub slot: SlotId,
    pub side: Side,
    pub price_per_kwh: i64,
    pub open_qty_wh: i64,
    pub filled_qty_wh: i64,
    /// Still resting (or not yet answered) as far as the agent knows.
    pub live: bool,
    /// The nonce of a cancel sent for it, until the exchange answers.
    pub cancel_nonce: Option<u64>,
}

/// The agent's orders by nonce, and the next nonce to use. This is what the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub next_nonce: u64,
    pub orders: BTreeMap<u64, TrackedOrder>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("agent state file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("agent state file {path} is larger than {STATE_FILE_BYTES_MAX} bytes")]
    TooLarge { path: String },
    #[error("agent state file {path} does not parse: {source}")]
    Parse { path: String, source: serde_json::Error },
}

/// `price × energy` in micro-money, rounded up: the agent overestimates what it spends.
pub fn cost_micro(price_per_kwh: i64, qty_wh: i64) -> i64 {
    let product = i128::from(price_per_kwh) * i128::from(qty_wh);
    i64::try_from((product + 999) / 1000).unwrap_or(i64::MAX)
}

fn day_of(slot: SlotId) -> i64 {
    slot.start_ms().div_euclid(MS_PER_DAY)
}

impl Positions {
    /// Records an order just sent; it counts as open in full until the exchange says otherwise.
    pub fn placed(&mut self, nonce: u64, slot: SlotId, side: Side, price_per_kwh: i64, qty_wh: i64) {
        let order = TrackedOrder {
            slot,
            side,
            price_per_kwh,
            open_qty_wh: qty_wh,
            filled_qty_wh: 0,
            live: true,
            cancel_nonce: None,
        };
        self.orders.insert(nonce, order);
    }

    /// Records a cancel sent for `order_nonce`.
    pub fn cancelling(&mut self, order_nonce: u64, cancel_nonce: u64) {
        if let Some(order) = self.orders.get_mut(&order_nonce) {
            order.cancel_nonce = Some(cancel_nonce);
        }
    }

    /// Applies the exchange's word on one of the orders (quantities in updates are cumulative).
    pub fn on_update(&mut self, update: &OrderUpdate) {
        let Some(order) = self.orders.get_mut(&update.order_nonce) else { return };
        if update.slot != order.slot {
            return;
        }
        order.open_qty_wh = update.open_qty_wh.0;
        order.filled_qty_wh = update.filled_qty_wh.0;
        order.live = update.status == OrderStatus::Open;
        if !order.live {
            order.open_qty_wh = 0;
            order.cancel_nonce = None;
        }
    }

    /// Applies a reject of one of the agent's commands: a refused order never rested; a refused cancel
    /// means the order had already left the book, so its open quantity is taken as filled until an
    /// update says what it really was (the cautious reading for the caps).
    pub fn on_reject(&mut self, reject: &Reject) {
        let Some(nonce) = reject.seq else { return };
        if reject.of == "order" {
            if let Some(order) = self.orders.get_mut(&nonce) {
                if order.filled_qty_wh == 0 && order.live {
                    order.live = false;
                    order.open_qty_wh = 0;
                }
            }
            return;
        }
        if reject.of == "cancel" {
            if let Some(order) = self.orders.values_mut().find(|order| order.cancel_nonce == Some(nonce)) {
                order.filled_qty_wh += order.open_qty_wh;
                order.open_qty_wh = 0;
                order.live = false;
                order.cancel_nonce = None;
            }
        }
    }

    /// The live order of `slot`, if any (the agent keeps at most one per slot).
    pub fn live_order(&self, slot: SlotId) -> Option<(u64, TrackedOrder)> {
        self.orders.iter().find(|(_, order)| order.slot == slot && order.live).map(|(nonce, order)| (*nonce, *order))
    }

    /// Filled energy of `slot` on `side`.
    pub fn filled_wh(&self, slot: SlotId, side: Side) -> i64 {
        self.orders
            .values()
            .filter(|order| order.slot == slot && order.side == side)
            .map(|order| order.filled_qty_wh)
            .sum()
    }

    /// What an order commits: its filled quantity, plus its open quantity unless it is `except` (an
    /// order about to be replaced by another).
    fn committed_qty(nonce: u64, order: &TrackedOrder, except: Option<u64>) -> i64 {
        order.filled_qty_wh + if Some(nonce) == except { 0 } else { order.open_qty_wh }
    }

    /// Filled plus open energy of `slot`, both sides (the open quantity of `except` left out).
    pub fn committed_slot_wh(&self, slot: SlotId, except: Option<u64>) -> i64 {
        self.committed(|order| order.slot == slot, except, |_, qty| qty)
    }

    /// Filled plus open energy of every slot delivered on `slot`'s day.
    pub fn committed_day_wh(&self, slot: SlotId, except: Option<u64>) -> i64 {
        let day = day_of(slot);
        self.committed(|order| day_of(order.slot) == day, except, |_, qty| qty)
    }

    /// What buying could cost at most in `slot` (filled and open buys at their limit prices).
    pub fn committed_slot_spend(&self, slot: SlotId, except: Option<u64>) -> i64 {
        self.committed(|order| order.slot == slot && order.side == Side::Buy, except, cost_micro)
    }

    /// The same over `slot`'s day.
    pub fn committed_day_spend(&self, slot: SlotId, except: Option<u64>) -> i64 {
        let day = day_of(slot);
        self.committed(|order| day_of(order.slot) == day && order.side == Side::Buy, except, cost_micro)
    }

    /// Sums `measure(price, committed quantity)` over the orders `include` selects.
    fn committed(
        &self,
        include: impl Fn(&TrackedOrder) -> bool,
        except: Option<u64>,
        measure: impl Fn(i64, i64) -> i64,
    ) -> i64 {
        self.orders
            .iter()
            .filter(|(_, order)| include(order))
            .map(|(nonce, order)| measure(order.price_per_kwh, Self::committed_qty(*nonce, order, except)))
            .fold(0i64, i64::saturating_add)
    }

    /// Orders of slots whose gate closed are done: no longer live. Orders of days before
    /// `keep_from_ms` are forgotten, and the oldest beyond [`ORDERS_KEPT_MAX`].
    pub fn settle_before(&mut self, gate_passed: impl Fn(SlotId) -> bool, keep_from_ms: i64) {
        for order in self.orders.values_mut() {
            if gate_passed(order.slot) {
                order.live = false;
                order.open_qty_wh = 0;
                order.cancel_nonce = None;
            }
        }
        self.orders.retain(|_, order| order.slot.start_ms() >= keep_from_ms);
        while self.orders.len() > ORDERS_KEPT_MAX {
            let Some(oldest) = self.orders.keys().next().copied() else { break };
            self.orders.remove(&oldest);
        }
    }

    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Positions, StateError> {
        let name = || path.display().to_string();
        match std::fs::metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Positions::default()),
            Err(source) => return Err(StateError::Io { path: name(), source }),
            Ok(meta) if meta.len() > STATE_FILE_BYTES_MAX => return Err(StateError::TooLarge { path: name() }),
            Ok(_) => {}
        }
        let bytes = std::fs::read(path).map_err(|source| StateError::Io { path: name(), source })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path: name(), source })
    }

    /// Writes the state file atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let name = || path.display().to_string();
        let temporary = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).map_err(|source| StateError::Parse { path: name(), source })?;
        std::fs::write(&temporary, bytes).map_err(|source| StateError::Io { path: name(), source })?;
        std::fs::rename(&temporary, path).map_err(|source| StateError::Io { path: name(), source })
    }
}
