//! The web server's link to the exchange service: order entry and book queries, with the exchange's
//! answers turned into API shapes and errors. A server may run without an exchange (`Market::none`),
//! in which case these endpoints answer 503.

use crate::error::ApiError;
use crate::live::LiveEvent;
use exchange::service::{ExchangeHandle, MarketEvent};
use protocol::{AccountId, BookSnapshot, OrderStatus, PricePerKwh, Side, SlotId, TimeInForce, Wh, ZoneId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// One open book of a zone, as listed by `GET /zones/{zone}/slots`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = Slot)]
pub struct SlotView {
    /// The slot's start, unix ms.
    #[schema(value_type = i64, minimum = 0)]
    pub slot: SlotId,
    pub gate_closure_ms: i64,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_bid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_ask: Option<i64>,
}

/// One of a trader's resting orders, as listed by `GET /me/orders`: the exchange's live state of the
/// order (open and filled quantity, current price) with the terms it rests with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OpenOrder {
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub account: AccountId,
    #[schema(value_type = String, pattern = "^[a-z0-9-]{1,32}$")]
    pub zone: ZoneId,
    #[schema(value_type = i64, minimum = 0)]
    pub slot: SlotId,
    pub order_nonce: u64,
    #[schema(value_type = crate::openapi::wire::OrderStatus)]
    pub status: OrderStatus,
    #[schema(value_type = crate::openapi::wire::Side)]
    pub side: Side,
    /// Always GTC: IOC and FOK orders never rest.
    #[schema(value_type = crate::openapi::wire::TimeInForce)]
    pub tif: TimeInForce,
    pub post_only: bool,
    /// The current limit price (a replace may have changed it).
    #[schema(value_type = i64)]
    pub price_per_kwh: PricePerKwh,
    /// What is left to trade.
    #[schema(value_type = i64, minimum = 0)]
    pub open_qty_wh: Wh,
    /// What has traded so far.
    #[schema(value_type = i64, minimum = 0)]
    pub filled_qty_wh: Wh,
    /// The order's own signed time (market clock), when it was placed.
    pub placed_ms: i64,
    /// The time of this view.
    pub ts_ms: i64,
}

impl From<exchange::zone::OpenOrder> for OpenOrder {
    fn from(order: exchange::zone::OpenOrder) -> OpenOrder {
        let update = order.update;
        OpenOrder {
            account: update.account,
            zone: update.zone,
            slot: update.slot,
            order_nonce: update.order_nonce,
            status: update.status,
            side: order.side,
            tif: TimeInForce::Gtc,
            post_only: order.post_only,
            price_per_kwh: update.price_per_kwh,
            open_qty_wh: update.open_qty_wh,
            filled_qty_wh: update.filled_qty_wh,
            placed_ms: order.placed_ms.0,
            ts_ms: update.ts_ms.0,
        }
    }
}

/// The answer to a committed order, cancel, replace or cancel-all (`POST /api/v1/orders`): what happened to
/// the order the command names, then every change of the sender's orders and the trades it caused.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OrderReply {
    /// Always `accepted`: the command is in the log (refusals are errors).
    #[schema(value_type = String, pattern = "^accepted$")]
    pub status: &'static str,
    /// Where the named order stands now.
    pub outcome: Outcome,
    /// The command's position in the exchange's log.
    pub command_seq: u64,
    /// The order the command is about.
    pub order_nonce: Option<u64>,
    /// The sender's orders after the command, in event order (the named order first).
    #[schema(value_type = Vec<crate::openapi::wire::OrderUpdate>)]
    pub updates: Vec<protocol::OrderUpdate>,
    /// The trades the command caused.
    #[schema(value_type = Vec<crate::openapi::wire::Trade>)]
    pub trades: Vec<protocol::Trade>,
}

impl OrderReply {
    /// The reply to a `cancel_all`, which names no order: `order_nonce` is null, `outcome` is
    /// `cancelled` (every order it names, the account's resting ones in its scope, is), and
    /// `updates` lists each order it cancelled (PROTOCOL.md §4.8).
    pub fn of_cancel_all(self) -> OrderReply {
        OrderReply { outcome: Outcome::Cancelled, order_nonce: None, ..self }
    }
}

/// Where the order a command names stands after it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Open in the book, nothing traded yet.
    Resting,
    /// Open in the book with part of it traded.
    PartiallyFilled,
    /// Traded in full.
    Filled,
    /// Out of the book: cancelled by request, or an IOC remainder.
    Cancelled,
    /// Removed at gate closure.
    Expired,
    /// No order update came back (never for a committed command; kept for forward compatibility).
    Unknown,
}

impl Outcome {
    fn of(update: Option<&protocol::OrderUpdate>) -> Outcome {
        let Some(update) = update else { return Outcome::Unknown };
        match update.status {
            OrderStatus::Open if update.filled_qty_wh.0 > 0 => Outcome::PartiallyFilled,
            OrderStatus::Open => Outcome::Resting,
            OrderStatus::Filled => Outcome::Filled,
            OrderStatus::Cancelled => Outcome::Cancelled,
            OrderStatus::Expired => Outcome::Expired,
        }
    }
}

/// Handle on the exchange service, or nothing.
#[derive(Clone, Default)]
pub struct Market {
    inner: Option<ExchangeHandle>,
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market").field("connected", &self.inner.is_some()).finish()
    }
}

fn rejected(rejection: exchange::ingest::Rejection) -> ApiError {
    ApiError::from_reason(rejection.reason, rejection.message)
}

fn no_exchange() -> ApiError {
    ApiError::unavailable("the exchange is not running in this process")
}

impl Market {
    pub fn none() -> Market {
        Market { inner: None }
    }

    pub fn is_connected(&self) -> bool {
        self.inner.is_some()
    }

    pub fn new(handle: ExchangeHandle) -> Market {
        Market { inner: Some(handle) }
    }

    pub fn handle(&self) -> Option<&ExchangeHandle> {
        self.inner.as_ref()
    }

    fn exchange(&self) -> Result<&ExchangeHandle, ApiError> {
        self.inner.as_ref().ok_or_else(no_exchange)
    }

    /// Submits a signed order, cancel, replace or cancel-all exactly as received over MQTT; answers once the
    /// command is committed. A command for a zone another instance owns (PostgreSQL) is relayed to
    /// that owner through the broker and answered as the owner answers it; 503 when none answers
    /// in `market.relay_timeout_ms` (ARCHITECTURE.md, "The command relay").
    pub async fn submit_command(&self, bytes: Vec<u8>) -> Result<OrderReply, ApiError> {
        let ack = self
            .exchange()?
            .submit_command(bytes)
            .await
            .map_err(|rejection| ApiError::from_reason(rejection.reason, rejection.message))?;
        let order_nonce = ack.updates.first().map(|update| update.order_nonce);
        let outcome = Outcome::of(ack.updates.first());
        Ok(OrderReply {
            status: "accepted",
            outcome,
            command_seq: ack.command_seq,
            order_nonce,
            updates: ack.updates,
            trades: ack.trades,
        })
    }

    /// A slot's book, from the zone's owner wherever it runs: a zone another instance owns is asked
    /// through the broker, 503 when no owner answers in `market.relay_timeout_ms` (ARCHITECTURE.md,
    /// "The command relay"). So are the slots, auctions and open orders below.
    pub async fn book(&self, zone: &ZoneId, slot: SlotId, levels: usize) -> Result<Option<BookSnapshot>, ApiError> {
        self.exchange()?.book(zone, slot, levels).await.map_err(rejected)
    }

    pub async fn open_slots(&self, zone: &ZoneId) -> Result<Vec<SlotView>, ApiError> {
        let slots = self.exchange()?.open_slots(zone).await.map_err(rejected)?;
        Ok(slots
            .into_iter()
            .map(|info| SlotView {
                slot: info.slot,
                gate_closure_ms: info.gate_closure_ms,
                state: match info.state {
                    protocol::BookState::Open => "open".to_owned(),
                    protocol::BookState::Closed => "closed".to_owned(),
                },
                best_bid: info.best_bid.map(|price| price.0),
                best_ask: info.best_ask.map(|price| price.0),
            })
            .collect())
    }

    /// The zone's recent closing auction results, oldest first.
    pub async fn auctions(&self, zone: &ZoneId) -> Result<Vec<protocol::AuctionResult>, ApiError> {
        self.exchange()?.auctions(zone).await.map_err(rejected)
    }

    /// The account's resting orders with their side, time in force and post-only flag.
    pub async fn open_orders(&self, account: AccountId) -> Result<Vec<OpenOrder>, ApiError> {
        let orders = self.exchange()?.open_orders(account).await.map_err(rejected)?;
        Ok(orders.into_iter().map(OpenOrder::from).collect())
    }

    /// Forwards the exchange's market events to the live feed (`live`) until the exchange stops; `None`
    /// without an exchange.
    pub fn spawn_forwarder(&self, live: broadcast::Sender<LiveEvent>) -> Option<JoinHandle<()>> {
        let handle = self.inner.as_ref()?;
        let mut events = handle.subscribe();
        let handle = handle.clone();
        Some(tokio::spawn(async move {
            loop {
                // Signed here, off the exchange's zone owners, as its MQTT publisher signs them.
                let signed = match events.recv().await {
                    Ok(MarketEvent::Trade(trade)) => handle.sign_operator(trade).map(|s| LiveEvent::Trade(Box::new(s))),
                    Ok(MarketEvent::Book(book)) => handle.sign_operator(book).map(|s| LiveEvent::Book(Box::new(s))),
                    Ok(MarketEvent::OrderUpdate(update)) => {
                        handle.sign_operator(update).map(|s| LiveEvent::OrderUpdate(Box::new(s)))
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the live feed lagged behind the exchange");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let event = match signed {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::error!(%error, "cannot sign a live event");
                        continue;
                    }
                };
                // A send with no subscriber is fine.
                let _ = live.send(event);
            }
        }))
    }
}
