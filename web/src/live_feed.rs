//! The live feed from the broker: when several instances share the zones (PostgreSQL, leases), a
//! web server's own exchange owns only some of them, so its live feed (SSE) takes every zone's
//! trades, books and order updates from the broker as their owners published them
//! (`market.live_feed`, ARCHITECTURE.md "Scale-out").
//!
//! Nothing is shown because it came from the broker: each message must parse strictly, carry the
//! operator's signature (the key this server runs with), and name the zone (and, for an order update,
//! the account) of the topic it came on; anything else is dropped, counted
//! (`gridex_live_feed_refused_total`) and logged. Reading acknowledgements share the `events` topics
//! with order updates and are skipped unparsed.

use crate::live::LiveEvent;
use exchange::service::{ExchangeHandle, FeedMessage};
use protocol::topics::{self, Outbound};
use protocol::{BookSnapshot, OperatorSigned, OrderUpdate, Signed, Trade, WireMessage};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Why a feed message is not shown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedError {
    #[error("not a market feed topic")]
    Topic,
    #[error("{0}")]
    Message(String),
    #[error("the message names zone {found}, its topic zone {topic}")]
    ZoneMismatch { found: String, topic: String },
    #[error("the order update names another account than its topic")]
    AccountMismatch,
}

/// Where `market.live_feed` says the live feed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveFeedSource {
    /// The broker on PostgreSQL with a broker configured (instances may share the zones), else
    /// the exchange.
    #[default]
    Auto,
    /// Every zone's events from the broker, whichever instance owns the zone.
    Broker,
    /// This process's own exchange: the zones it owns.
    Exchange,
}

impl LiveFeedSource {
    /// Whether the live feed comes from the broker, for a process on `backend` with or without a
    /// broker (without one, it never does).
    pub fn from_broker(self, backend: gridex_store::Backend, broker: bool) -> bool {
        broker
            && match self {
                LiveFeedSource::Auto => backend == gridex_store::Backend::Postgres,
                LiveFeedSource::Broker => true,
                LiveFeedSource::Exchange => false,
            }
    }
}

/// The live event of one feed message: `Ok(None)` for what the live feed does not show (reading
/// acknowledgements), an error for a message that is malformed, not signed by `operator`, or not
/// about its topic's zone (or account).
pub fn live_event(message: &FeedMessage, operator: &[u8; 32]) -> Result<Option<LiveEvent>, FeedError> {
    match topics::parse_outbound(&message.topic).ok_or(FeedError::Topic)? {
        Outbound::Trades { zone } => {
            let trade = checked::<Trade>(&message.payload, operator)?;
            same_zone(trade.message.zone.as_str(), zone)?;
            Ok(Some(LiveEvent::Trade(Box::new(trade))))
        }
        Outbound::Book { zone } => {
            let book = checked::<BookSnapshot>(&message.payload, operator)?;
            same_zone(book.message.zone.as_str(), zone)?;
            Ok(Some(LiveEvent::Book(Box::new(book))))
        }
        Outbound::Events { zone, recipient } => {
            #[derive(serde::Deserialize)]
            struct Kind<'a> {
                #[serde(rename = "type", borrow)]
                kind: &'a str,
            }
            let kind = serde_json::from_slice::<Kind<'_>>(&message.payload)
                .map_err(|error| FeedError::Message(format!("not a message: {error}")))?;
            if kind.kind != OrderUpdate::TYPE {
                return Ok(None);
            }
            let update = checked::<OrderUpdate>(&message.payload, operator)?;
            same_zone(update.message.zone.as_str(), zone)?;
            if update.message.account.to_hex() != recipient {
                return Err(FeedError::AccountMismatch);
            }
            Ok(Some(LiveEvent::OrderUpdate(Box::new(update))))
        }
    }
}

fn checked<T: OperatorSigned>(payload: &[u8], operator: &[u8; 32]) -> Result<Signed<T>, FeedError> {
    let signed = Signed::<T>::parse(payload).map_err(|error| FeedError::Message(error.to_string()))?;
    signed.verify_operator(operator).map_err(|error| FeedError::Message(error.to_string()))?;
    Ok(signed)
}

fn same_zone(found: &str, topic: &str) -> Result<(), FeedError> {
    if found == topic {
        Ok(())
    } else {
        Err(FeedError::ZoneMismatch { found: found.to_owned(), topic: topic.to_owned() })
    }
}

/// Forwards the broker's market feed to the live feed (`live`) until the exchange stops; `None` when
/// the exchange does not take the feed (`ExchangeConfig::market_feed`, a broker).
pub fn spawn_forwarder(handle: &ExchangeHandle, live: broadcast::Sender<LiveEvent>) -> Option<JoinHandle<()>> {
    let mut feed = handle.subscribe_feed()?;
    let operator = handle.operator_key();
    Some(tokio::spawn(async move {
        loop {
            let message = match feed.recv().await {
                Ok(message) => message,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the live feed lagged behind the broker");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match live_event(&message, &operator) {
                // A send with no subscriber is fine.
                Ok(Some(event)) => drop(live.send(event)),
                Ok(None) => {}
                Err(error) => {
                    metrics::counter!("gridex_live_feed_refused_total").increment(1);
                    tracing::warn!(topic = %message.topic, %error, "refused a market feed message");
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use protocol::{AccountId, OrderStatus, SlotId, TimestampMs, ZoneId};

    fn operator() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn update(zone: &str, account: &SigningKey) -> OrderUpdate {
        OrderUpdate {
            account: AccountId::from_verifying_key(&account.verifying_key()),
            zone: ZoneId::parse(zone).expect("a zone"),
            slot: SlotId::containing(TimestampMs(1_800_000_000_000), 900_000),
            order_nonce: 3,
            status: OrderStatus::Open,
            price_per_kwh: protocol::PricePerKwh(100_000),
            open_qty_wh: protocol::Wh(1_000),
            filled_qty_wh: protocol::Wh(0),
            ts_ms: TimestampMs(1_800_000_000_000),
        }
    }

    fn message(topic: String, payload: Vec<u8>) -> FeedMessage {
        FeedMessage { topic, payload: payload.into() }
    }

    #[test]
    fn an_order_update_signed_by_the_operator_is_shown_on_its_zone_and_account() {
        let (operator, account) = (operator(), SigningKey::from_bytes(&[9; 32]));
        let signed = Signed::sign_operator(update("north", &account), &operator).expect("signs");
        let zone = ZoneId::parse("north").expect("a zone");
        let topic = topics::events(&zone, &signed.message.account.to_hex());
        let shown = live_event(&message(topic, signed.to_json()), &operator.verifying_key().to_bytes());
        assert!(matches!(shown, Ok(Some(LiveEvent::OrderUpdate(_)))), "{shown:?}");
    }

    #[test]
    fn a_neighbour_forging_an_order_update_on_the_feed_is_not_shown() {
        let (operator, neighbour, account) =
            (operator(), SigningKey::from_bytes(&[8; 32]), SigningKey::from_bytes(&[9; 32]));
        let forged = Signed::sign_operator(update("north", &account), &neighbour).expect("signs");
        let zone = ZoneId::parse("north").expect("a zone");
        let topic = topics::events(&zone, &forged.message.account.to_hex());
        let shown = live_event(&message(topic, forged.to_json()), &operator.verifying_key().to_bytes());
        assert!(matches!(shown, Err(FeedError::Message(_))), "{shown:?}");
    }

    #[test]
    fn a_message_replayed_on_another_zones_or_accounts_topic_is_not_shown() {
        let (operator, account) = (operator(), SigningKey::from_bytes(&[9; 32]));
        let signed = Signed::sign_operator(update("north", &account), &operator).expect("signs");
        let pinned = operator.verifying_key().to_bytes();
        let south = ZoneId::parse("south").expect("a zone");
        let other_zone =
            live_event(&message(topics::events(&south, &signed.message.account.to_hex()), signed.to_json()), &pinned);
        assert!(matches!(other_zone, Err(FeedError::ZoneMismatch { .. })), "{other_zone:?}");
        let north = ZoneId::parse("north").expect("a zone");
        let other_account = live_event(&message(topics::events(&north, &"ab".repeat(32)), signed.to_json()), &pinned);
        assert_eq!(other_account.err(), Some(FeedError::AccountMismatch));
    }

    #[test]
    fn reading_acks_on_the_events_topic_are_skipped_and_garbage_is_refused() {
        let pinned = operator().verifying_key().to_bytes();
        let north = ZoneId::parse("north").expect("a zone");
        let ack = br#"{"type":"reading_ack","device":"ab","seq":1}"#.to_vec();
        assert!(matches!(live_event(&message(topics::events(&north, &"ab"), ack), &pinned), Ok(None)));
        let truncated = br#"{"type":"order_upd"#.to_vec();
        assert!(live_event(&message(topics::events(&north, &"ab"), truncated), &pinned).is_err());
        assert!(live_event(&message(topics::trades(&north), b"{}".to_vec()), &pinned).is_err());
        assert_eq!(
            live_event(&message(topics::orders(&north, &"ab"), b"{}".to_vec()), &pinned).err(),
            Some(FeedError::Topic)
        );
    }
}
