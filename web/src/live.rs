//! The live-event hub's vocabulary: what the exchange and settlement announce to the live feed
//! (SSE) and to webhooks. A leaf module: the state, the feed, the forwarders and the webhooks all
//! use it, and it uses none of them.

use protocol::{BookSnapshot, OrderUpdate, Signed, SlotId, Trade, ZoneId};
use serde::Serialize;

/// Live events buffered per subscriber before a slow SSE client starts missing some (it is told
/// with a `lagged` event). A second of a busy market's book changes.
pub const LIVE_EVENTS_BUFFER_LEN: usize = 4_096;

/// A settled slot, as announced on the live feed and to webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SlotSettled {
    pub zone: ZoneId,
    pub slot: SlotId,
    /// Merkle root of the slot's statements (hex).
    pub root: String,
    /// How many statements the slot has.
    pub statements: u64,
}

/// One event of the live feed. The exchange's messages are sent as the operator signed them (the
/// protocol message with `type` and `sig`, PROTOCOL.md §2.1), so the dashboard verifies them against
/// the key pinned in its page.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Book(Box<Signed<BookSnapshot>>),
    Trade(Box<Signed<Trade>>),
    OrderUpdate(Box<Signed<OrderUpdate>>),
    Settlement(SlotSettled),
}

impl LiveEvent {
    pub fn zone(&self) -> &ZoneId {
        match self {
            LiveEvent::Book(book) => &book.message.zone,
            LiveEvent::Trade(trade) => &trade.message.zone,
            LiveEvent::OrderUpdate(update) => &update.message.zone,
            LiveEvent::Settlement(settled) => &settled.zone,
        }
    }
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::Book(_) => "book",
            LiveEvent::Trade(_) => "trade",
            LiveEvent::OrderUpdate(_) => "order_update",
            LiveEvent::Settlement(_) => "settlement",
        }
    }
    pub fn to_json(&self) -> String {
        let signed = match self {
            LiveEvent::Book(book) => book.to_json(),
            LiveEvent::Trade(trade) => trade.to_json(),
            LiveEvent::OrderUpdate(update) => update.to_json(),
            LiveEvent::Settlement(settled) => {
                return serde_json::to_string(settled).unwrap_or_else(|_| "{}".to_owned())
            }
        };
        String::from_utf8(signed).unwrap_or_else(|_| "{}".to_owned())
    }
}
