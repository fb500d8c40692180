//! What the stages of the service hand each other and tell the outside: command acknowledgements,
//! market events, slot summaries, a caller's reply channel and outbound MQTT messages.
//!
//! **A leaf:** it imports no other module of the service or the zone owner, so every stage (and
//! [`crate::zone`]) can use it without an import cycle.

use crate::ingest::Rejection;
use protocol::{BookSnapshot, OrderUpdate, ReadingAck, Reason, Reject, SlotId, Trade, ZoneId};
use tokio::sync::oneshot;

/// The acknowledgement of a committed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAck {
    /// The command's position in the log.
    pub command_seq: u64,
    /// The state of the order(s) of the sender after the command, in event order.
    pub updates: Vec<OrderUpdate>,
    /// Trades the command caused.
    pub trades: Vec<Trade>,
}

/// Something that happened in the market, for in-process subscribers (the web server's stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarketEvent {
    Trade(Trade),
    Book(BookSnapshot),
    OrderUpdate(OrderUpdate),
    ReadingAccepted {
        zone: ZoneId,
        ack: ReadingAck,
    },
    Rejected {
        zone: Option<ZoneId>,
        sender: Option<String>,
        reject: Reject,
    },
    /// A zone's closing auction at gate closure (zones with a closing auction only).
    Auction(protocol::AuctionResult),
}

/// A message of the broker's market feed ([`crate::config::ExchangeConfig::market_feed`]), as it
/// arrived: its topic (one of `protocol::topics::MARKET_FEED_FILTERS`) and payload, not verified.
#[derive(Debug, Clone)]
pub struct FeedMessage {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// Feed messages buffered per subscriber before a slow one misses some (it is told: `Lagged`).
pub const FEED_BROADCAST_LEN: usize = 4_096;

/// One open (or just closed) slot of a zone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotInfo {
    pub slot: SlotId,
    pub gate_closure_ms: i64,
    pub state: protocol::BookState,
    pub best_bid: Option<protocol::PricePerKwh>,
    pub best_ask: Option<protocol::PricePerKwh>,
}

/// How a caller waits for the outcome of its message.
#[derive(Debug)]
pub(crate) enum Reply {
    Reading(oneshot::Sender<Result<(), Rejection>>),
    Command(oneshot::Sender<Result<CommandAck, Rejection>>),
}

impl Reply {
    pub(crate) fn reject(self, rejection: Rejection) {
        // A caller that stopped waiting does not need the answer.
        match self {
            Reply::Reading(sender) => drop(sender.send(Err(rejection))),
            Reply::Command(sender) => drop(sender.send(Err(rejection))),
        }
    }

    pub(crate) fn into_command(self) -> Option<oneshot::Sender<Result<CommandAck, Rejection>>> {
        match self {
            Reply::Command(sender) => Some(sender),
            Reply::Reading(_) => None,
        }
    }
}

/// Makes an outbound message's payload: signs it with the operator's key (PROTOCOL.md §2.1).
pub(crate) type Sign = Box<dyn FnOnce(&ed25519_dalek::SigningKey) -> Result<Vec<u8>, protocol::ProtocolError> + Send>;

/// An MQTT message to send. It is signed by the publisher task, off the zone owners' path.
pub(crate) struct Outbound {
    pub topic: String,
    pub sign: Sign,
    pub qos: rumqttc::QoS,
    pub retain: bool,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("topic", &self.topic).field("retain", &self.retain).finish_non_exhaustive()
    }
}

/// What a caller is told when the exchange stops before its message's fate is final.
pub(crate) fn shutting_down() -> Rejection {
    Rejection::new(Reason::InternalError, "the exchange is shutting down")
}
