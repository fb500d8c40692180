//! Read queries answered wherever a zone's owner runs: [`Queries`] asks the zone's owner task when
//! this instance owns the zone, and its owner through the broker ([`super::query`]) when another
//! instance does (on PostgreSQL with leases); [`Desk`] is the owner's half, which answers the
//! queries other servers relay here from the zone's owner task. On SQLite one exchange owns every
//! zone it serves and nothing is relayed.

use super::events::Outbound;
use super::query::{self, Answer, AnswerBody, Query, QueryBody, QueryClient};
use super::zones::{Found, ZoneSet};
use crate::ingest::Rejection;
use crate::store;
use crate::zone::{OpenOrder, ZoneMsg};
use gridex_store::Database;
use protocol::{AccountId, AuctionResult, BookSnapshot, Reason, SlotId, ZoneId};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// Relayed queries received and not yet taken by the desk; beyond it they are dropped (QoS 0:
/// their callers time out and retry), so a burst never holds the MQTT event loop.
pub(crate) const QUERIES_QUEUE_LEN: usize = 1_024;
/// Relayed queries the desk answers at once (each waits for a zone owner's reply).
const QUERIES_IN_FLIGHT_MAX: usize = 64;

/// A query another server relayed here, as the MQTT listener took it: the topic's segments,
/// unparsed, and the signed payload.
#[derive(Debug)]
pub(crate) struct RawQuery {
    pub zone: String,
    pub instance: String,
    pub request: String,
    pub payload: bytes::Bytes,
}

/// Asks `owner` (a zone owner task of this instance) `query`. `None` when the owner stopped
/// before answering (its lease was just lost or released).
async fn ask_local(owner: &mpsc::Sender<ZoneMsg>, query: Query) -> Option<Answer> {
    async fn ask<T>(owner: &mpsc::Sender<ZoneMsg>, make: impl FnOnce(oneshot::Sender<T>) -> ZoneMsg) -> Option<T> {
        let (sender, receiver) = oneshot::channel();
        owner.send(make(sender)).await.ok()?;
        receiver.await.ok()
    }
    Some(match query {
        Query::Book { slot, levels } => {
            let levels = levels.clamp(1, protocol::messages::BOOK_LEVELS_MAX);
            Answer::Book { book: ask(owner, |reply| ZoneMsg::Book { slot, levels, reply }).await? }
        }
        Query::OpenSlots => Answer::OpenSlots { slots: ask(owner, |reply| ZoneMsg::OpenSlots { reply }).await? },
        Query::Auctions => Answer::Auctions { auctions: ask(owner, |reply| ZoneMsg::Auctions { reply }).await? },
        Query::OpenOrders { account } => {
            Answer::OpenOrders { orders: ask(owner, |reply| ZoneMsg::OpenOrders { account, reply }).await? }
        }
    })
}

fn storage_error(error: impl std::fmt::Display) -> Rejection {
    tracing::error!(%error, "a read query failed on storage");
    Rejection::new(Reason::InternalError, "storage failed; retry later")
}

fn unexpected(answer: Answer) -> Rejection {
    match answer {
        Answer::Refused { reason, message } => Rejection::new(reason, message),
        _ => Rejection::new(Reason::InternalError, "the zone's owner answered another query"),
    }
}

/// The read queries of the exchange handle, answered locally or by the zone's owner. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Queries {
    pub zones: ZoneSet,
    pub client: QueryClient,
    pub db: Database,
}

impl Queries {
    /// `query`'s answer from `zone`'s owner: this instance's zone task, or the owner's through the
    /// broker. `None` for a zone not in storage, or owned elsewhere while relaying is off.
    async fn answer(&self, zone: &ZoneId, query: Query) -> Result<Option<Answer>, Rejection> {
        match self.zones.find(zone).await.map_err(storage_error)? {
            Found::Here(owner) => Ok(ask_local(&owner, query).await),
            Found::Elsewhere => self.client.ask(zone, query).await.transpose(),
            Found::Unknown => Ok(None),
        }
    }

    pub(crate) async fn book(
        &self,
        zone: &ZoneId,
        slot: SlotId,
        levels: usize,
    ) -> Result<Option<BookSnapshot>, Rejection> {
        match self.answer(zone, Query::Book { slot, levels }).await? {
            None => Ok(None),
            Some(Answer::Book { book }) => Ok(book),
            Some(other) => Err(unexpected(other)),
        }
    }

    pub(crate) async fn open_slots(&self, zone: &ZoneId) -> Result<Vec<super::SlotInfo>, Rejection> {
        match self.answer(zone, Query::OpenSlots).await? {
            None => Ok(Vec::new()),
            Some(Answer::OpenSlots { slots }) => Ok(slots),
            Some(other) => Err(unexpected(other)),
        }
    }

    pub(crate) async fn auctions(&self, zone: &ZoneId) -> Result<Vec<AuctionResult>, Rejection> {
        match self.answer(zone, Query::Auctions).await? {
            None => Ok(Vec::new()),
            Some(Answer::Auctions { auctions }) => Ok(auctions),
            Some(other) => Err(unexpected(other)),
        }
    }

    /// The account's open orders in every zone it may trade in (its registered zone, or every zone
    /// for an account without one) and every zone this instance owns, by zone. A zone whose owner
    /// does not answer fails the whole query: never a silently partial list.
    pub(crate) async fn open_orders(&self, account: AccountId) -> Result<Vec<OpenOrder>, Rejection> {
        let mut zones: Vec<ZoneId> = self.zones.all().into_iter().map(|(zone, _)| zone).collect();
        let db_account = account;
        let registered =
            self.db.run(move |conn| store::account_zone(conn, &db_account)).await.map_err(storage_error)?;
        match registered {
            Some(Some(zone)) => zones.push(zone),
            Some(None) => {
                let all = self.db.run(|conn| store::load_zones(conn, &[])).await.map_err(storage_error)?;
                zones.extend(all.into_keys());
            }
            None => {}
        }
        zones.sort();
        zones.dedup();
        let mut asked = tokio::task::JoinSet::new();
        for zone in zones {
            let queries = self.clone();
            asked.spawn(async move {
                let answer = queries.answer(&zone, Query::OpenOrders { account }).await;
                (zone, answer)
            });
        }
        let mut by_zone = BTreeMap::new();
        while let Some(joined) = asked.join_next().await {
            let (zone, answer) = joined.map_err(|_| Rejection::new(Reason::InternalError, "a query task failed"))?;
            match answer? {
                None => {}
                Some(Answer::OpenOrders { orders }) => {
                    by_zone.insert(zone, orders);
                }
                Some(other) => return Err(unexpected(other)),
            }
        }
        Ok(by_zone.into_values().flatten().collect())
    }
}

/// The owner's half: verifies the queries relayed to this instance, answers those for zones it
/// owns from their zone tasks and publishes the signed answers. A query for a zone it does not own
/// (left from an earlier lease) is not answered: the zone's owner answers it.
pub(crate) struct Desk {
    pub zones: ZoneSet,
    pub key: Arc<ed25519_dalek::SigningKey>,
    pub publish: mpsc::Sender<Outbound>,
    /// Largest answer payload: [`query::PAYLOAD_BYTES_MAX`], less if this client's own packet
    /// limit is lower (so an answer it could not send is refused `too_large`, not lost).
    pub payload_bytes_max: usize,
}

impl Desk {
    /// The largest answer payload a client with `options` sends (and, configured alike, receives).
    pub(crate) fn payload_bytes_max(options: &rumqttc::MqttOptions) -> usize {
        query::PAYLOAD_BYTES_MAX.min(options.max_packet_size().saturating_sub(query::PACKET_OVERHEAD_BYTES))
    }

    pub(crate) async fn run(self, mut queries: mpsc::Receiver<RawQuery>, mut shutdown: watch::Receiver<bool>) {
        let desk = Arc::new(self);
        let in_flight = Arc::new(Semaphore::new(QUERIES_IN_FLIGHT_MAX));
        loop {
            let raw = tokio::select! {
                raw = queries.recv() => match raw { Some(raw) => raw, None => return },
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
            let desk = desk.clone();
            tokio::spawn(async move {
                desk.answer(raw).await;
                drop(permit);
            });
        }
    }

    async fn answer(&self, raw: RawQuery) {
        let operator = self.key.verifying_key().to_bytes();
        let body: QueryBody = match query::QUERY.open(&operator, &raw.payload) {
            Ok(body) => body,
            Err(error) => {
                metrics::counter!("gridex_relayed_queries_refused_total").increment(1);
                tracing::warn!(%error, "a relayed query was dropped");
                return;
            }
        };
        // The signed body names the topic it was sent on: a query replayed on another server's topic
        // (to read its answer there) is dropped.
        if body.zone.as_str() != raw.zone || body.instance != raw.instance || body.request != raw.request {
            metrics::counter!("gridex_relayed_queries_refused_total").increment(1);
            tracing::warn!("a relayed query was dropped: its body does not match its topic");
            return;
        }
        let owner = match self.zones.find(&body.zone).await {
            Ok(Found::Here(owner)) => owner,
            Ok(_) => return,
            Err(error) => {
                tracing::error!(%error, "cannot find a zone's owner for a relayed query");
                return;
            }
        };
        let Some(answer) = ask_local(&owner, body.query).await else { return };
        let Some(payload) = self.seal(&body.request, &body.zone, answer) else { return };
        let topic = protocol::topics::query_replies(&body.zone, &body.instance);
        let outbound =
            Outbound { topic, sign: Box::new(move |_| Ok(payload)), qos: rumqttc::QoS::AtMostOnce, retain: false };
        // Waits for room: the answer is what a caller is waiting for (and this is not the event loop).
        if self.publish.send(outbound).await.is_err() {
            tracing::warn!("the publisher stopped before a query's answer was sent");
        }
    }

    fn seal(&self, request: &str, zone: &ZoneId, answer: Answer) -> Option<Vec<u8>> {
        seal_answer(&self.key, self.payload_bytes_max, request, zone, answer)
    }
}

/// The signed answer to `request`; one longer than `payload_bytes_max` becomes a `too_large`
/// refusal (never a truncated list).
fn seal_answer(
    key: &ed25519_dalek::SigningKey,
    payload_bytes_max: usize,
    request: &str,
    zone: &ZoneId,
    answer: Answer,
) -> Option<Vec<u8>> {
    let body = AnswerBody { request: request.to_owned(), zone: zone.clone(), answer };
    let refusal = match query::ANSWER.seal(key, &body) {
        Ok(payload) if payload.len() <= payload_bytes_max => return Some(payload),
        Ok(payload) => Answer::Refused {
            reason: Reason::TooLarge,
            message: format!(
                "the answer from zone {zone}'s owner is {} bytes, more than one relayed answer holds ({} \
                 bytes, under the broker's packet limit); ask the server of the instance that owns the zone",
                payload.len(),
                payload_bytes_max
            ),
        },
        Err(error) => {
            tracing::error!(%error, "cannot serialize a query's answer");
            Answer::Refused { reason: Reason::InternalError, message: "the zone's owner failed".to_owned() }
        }
    };
    let body = AnswerBody { answer: refusal, ..body };
    query::ANSWER.seal(key, &body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer longer than a packet holds is refused as a whole, never cut to fit.
    #[test]
    fn an_answer_too_large_for_one_packet_is_refused_too_large_not_truncated() {
        let key = protocol::testing::operator_key();
        let zone = ZoneId::parse("north").expect("zone");
        let result = |slot_ms: i64| AuctionResult {
            zone: zone.clone(),
            slot: SlotId::new(slot_ms).expect("slot"),
            price_per_kwh: Some(protocol::PricePerKwh(120_000)),
            qty_wh: protocol::Wh(500),
            trades: 2,
            ts_ms: protocol::TimestampMs(slot_ms),
        };
        let auctions: Vec<AuctionResult> = (1..=1_000).map(|n| result(n * 900_000)).collect();
        let payload =
            seal_answer(&key, query::PAYLOAD_BYTES_MAX, "r1", &zone, Answer::Auctions { auctions }).expect("sealed");
        assert!(payload.len() <= query::PAYLOAD_BYTES_MAX);
        let opened: AnswerBody = query::ANSWER.open(&key.verifying_key().to_bytes(), &payload).expect("verifies");
        match opened.answer {
            Answer::Refused { reason, message } => {
                assert_eq!(reason, Reason::TooLarge);
                assert!(message.contains("zone north"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let few = Answer::Auctions { auctions: vec![result(900_000)] };
        let payload = seal_answer(&key, query::PAYLOAD_BYTES_MAX, "r2", &zone, few.clone()).expect("sealed");
        let opened: AnswerBody = query::ANSWER.open(&key.verifying_key().to_bytes(), &payload).expect("verifies");
        assert_eq!(opened.answer, few);
    }
}
