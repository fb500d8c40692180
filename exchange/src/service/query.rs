//! The query relay between gridex servers (on PostgreSQL, where each zone is owned by one instance
//! at a time): the read queries of [`super::ExchangeHandle`] (a slot's book, the open slots, the
//! closing auctions, an account's open orders) for a zone another instance owns go to the broker on
//! `topics::query(zone, instance, request)`; the owner, subscribed to the query topic of each zone it
//! holds, answers from the zone's owner task on `topics::query_replies(zone, instance)`.
//!
//! Beside the command relay ([`super::relay`]), not on its topics: a relayed command is a trader's
//! signed bytes forwarded verbatim into the order pipeline, a query is the server's own request
//! with no effect; separate topics keep the two from ever being taken for each other. Both ways
//! are signed with the operator key, each under its own domain tag ([`QUERY_DOMAIN`],
//! [`ANSWER_DOMAIN`]; no protocol message and no command relay reply starts with either): a
//! participant who could publish on these topics despite the broker's ACL can neither forge a book
//! nor ask for another trader's open orders. Both go at QoS 0: a query has no effect, so nothing is
//! worth redelivering to a session that was away (its caller has timed out by then and retries).
//!
//! This file holds the wire format and the asking half; `answers.rs` the owner's half. A leaf of the
//! service: of its modules it imports only [`super::events`] and the leaves it shares with the
//! command relay, [`super::envelope`] (the signed payloads) and [`super::pending`] (the waiting
//! callers).

use super::envelope::{Envelope, Framing};
use super::events::{Outbound, SlotInfo};
use super::pending::Pending;
use crate::ingest::Rejection;
use crate::zone::OpenOrder;
use protocol::{AccountId, AuctionResult, BookSnapshot, Reason, SlotId, ZoneId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Relayed queries waiting for their owner's answer at once: each holds an HTTP request open, so
/// this bounds the memory of a burst towards an owner that does not answer (beyond it: `overloaded`).
pub(crate) const QUERIES_PENDING_MAX: usize = 4_096;
/// The domain tag of a relayed query's signature.
pub(crate) const QUERY_DOMAIN: &[u8] = b"gridex-relay-query/1\n";
/// The domain tag of a query answer's signature.
pub(crate) const ANSWER_DOMAIN: &[u8] = b"gridex-relay-answer/1\n";
/// Room in an MQTT packet for its fixed header and topic (a query topic is under 200 bytes).
pub(crate) const PACKET_OVERHEAD_BYTES: usize = 1_024;
/// Largest signed answer (or query) payload: the broker's (and `gridex serve`'s client's) 64 KiB
/// packet limit less [`PACKET_OVERHEAD_BYTES`]; lower when the client's own limit is (see
/// `answers::Desk`). A book is at most
/// `BOOK_LEVELS_MAX` levels a side (a few KiB); the open slots, the auctions kept
/// (`AUCTION_RESULTS_KEPT`) and an account's open orders in one zone (up to
/// `open_orders_per_account_max` per slot, so about 200 of them) may not fit: the owner answers
/// `too_large` rather than a truncated list.
pub(crate) const PAYLOAD_BYTES_MAX: usize = 64 * 1024 - PACKET_OVERHEAD_BYTES;
/// A relayed query on the wire: the signature in hex, a newline, then the body's JSON as signed.
pub(crate) const QUERY: Envelope =
    Envelope { domain: QUERY_DOMAIN, framing: Framing::Line, payload_bytes_max: PAYLOAD_BYTES_MAX };
/// An answer on the wire, framed as a query.
pub(crate) const ANSWER: Envelope = Envelope { domain: ANSWER_DOMAIN, ..QUERY };

/// A read query, as the owner's zone task answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Query {
    Book { slot: SlotId, levels: usize },
    OpenSlots,
    Auctions,
    OpenOrders { account: AccountId },
}

/// An answer: the one matching its query's variant, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Answer {
    Book { book: Option<BookSnapshot> },
    OpenSlots { slots: Vec<SlotInfo> },
    Auctions { auctions: Vec<AuctionResult> },
    OpenOrders { orders: Vec<OpenOrder> },
    Refused { reason: Reason, message: String },
}

/// The signed part of a query: it names its topic's segments, so a captured query cannot be
/// published again for another server to read the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryBody {
    pub zone: ZoneId,
    pub instance: String,
    pub request: String,
    pub query: Query,
}

/// The signed part of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerBody {
    pub request: String,
    pub zone: ZoneId,
    pub answer: Answer,
}

/// What the caller of a relayed query is told when no owner answered in time.
pub(crate) fn no_live_owner(zone: &ZoneId, timeout_ms: u64) -> Rejection {
    Rejection::new(
        Reason::Overloaded,
        format!("zone {zone} has no live owner: no exchange instance answered within {timeout_ms} ms; retry"),
    )
}

type Waiting = oneshot::Sender<Answer>;

/// The asking half of the query relay; cheap to clone. Off without a broker or leases.
#[derive(Clone, Default, Debug)]
pub(crate) struct QueryClient {
    inner: Option<Arc<Pending<Waiting>>>,
}

/// Forgets a pending query when its caller stops waiting (answered, timed out or dropped).
struct PendingGuard<'a> {
    inner: &'a Pending<Waiting>,
    request: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.take(&self.request);
    }
}

impl QueryClient {
    /// A client publishing through `publish` as `name` (already one topic segment).
    pub(crate) fn new(name: String, publish: mpsc::Sender<Outbound>, operator: [u8; 32], timeout_ms: u64) -> Self {
        QueryClient { inner: Some(Arc::new(Pending::new(name, publish, operator, timeout_ms, QUERIES_PENDING_MAX))) }
    }

    /// This server's segment of the query topics; `None` when relaying is off.
    pub(crate) fn name(&self) -> Option<&str> {
        self.inner.as_ref().map(|inner| inner.name.as_str())
    }

    /// Asks `zone`'s owner `query` and waits for its answer, at most the relay timeout. `None` when
    /// relaying is off (SQLite, or no broker).
    pub(crate) async fn ask(&self, zone: &ZoneId, query: Query) -> Option<Result<Answer, Rejection>> {
        let inner = self.inner.as_ref()?;
        Some(Self::ask_on(inner, zone, query).await)
    }

    async fn ask_on(inner: &Pending<Waiting>, zone: &ZoneId, query: Query) -> Result<Answer, Rejection> {
        let (sender, receiver) = oneshot::channel();
        let Ok(request) = inner.wait(sender) else {
            return Err(Rejection::new(
                Reason::Overloaded,
                "too many queries wait for another instance's answer; retry later",
            ));
        };
        let _guard = PendingGuard { inner, request: request.clone() };
        let topic = protocol::topics::query(zone, &inner.name, &request);
        let body = QueryBody { zone: zone.clone(), instance: inner.name.clone(), request, query };
        let sign: super::events::Sign = Box::new(move |key| {
            QUERY
                .seal(key, &body)
                .map_err(|error| protocol::ProtocolError::new(Reason::InternalError, error.to_string()))
        });
        let outbound = Outbound { topic, sign, qos: rumqttc::QoS::AtMostOnce, retain: false };
        if inner.publish.try_send(outbound).is_err() {
            return Err(Rejection::new(Reason::Overloaded, "the publish queue is full; retry later"));
        }
        metrics::counter!("gridex_relayed_queries_total", "result" => "sent").increment(1);
        match tokio::time::timeout(inner.timeout, receiver).await {
            Ok(Ok(answer)) => {
                metrics::counter!("gridex_relayed_queries_total", "result" => "answered").increment(1);
                Ok(answer)
            }
            // Timed out (or the sender was dropped, which only a timeout's clean-up does).
            _ => {
                metrics::counter!("gridex_relayed_queries_total", "result" => "timed_out").increment(1);
                Err(no_live_owner(zone, inner.timeout_ms()))
            }
        }
    }

    /// An answer arrived on this server's answer topic: hands it to its waiting caller, if any (an
    /// answer after the timeout, a duplicate or one that does not verify is dropped).
    pub(crate) fn answer(&self, payload: &[u8]) {
        let Some(inner) = &self.inner else { return };
        match ANSWER.open::<AnswerBody>(&inner.operator, payload) {
            Ok(body) => {
                if let Some(waiting) = inner.take(&body.request) {
                    let _ = waiting.send(body.answer);
                }
            }
            Err(error) => {
                metrics::counter!("gridex_query_answers_dropped_total").increment(1);
                tracing::warn!(%error, "a relayed query's answer was dropped");
            }
        }
    }

    /// Whether a caller waits for `request` (tests).
    #[cfg(test)]
    fn waits_for(&self, request: &str) -> bool {
        self.inner.as_ref().is_some_and(|inner| inner.waits_for(request))
    }
}

#[cfg(test)]
mod tests {
    use super::super::envelope::OpenError;
    use super::*;
    use ed25519_dalek::SigningKey;

    fn zone() -> ZoneId {
        ZoneId::parse("north").expect("valid")
    }

    fn book_answer(request: &str) -> AnswerBody {
        let book = BookSnapshot {
            zone: zone(),
            slot: SlotId::new(900_000).expect("slot"),
            seq: 3,
            state: protocol::BookState::Open,
            bids: vec![protocol::Level {
                price_per_kwh: protocol::PricePerKwh(120_000),
                qty_wh: protocol::Wh(100),
                orders: 1,
            }],
            asks: Vec::new(),
            ts_ms: protocol::TimestampMs(1),
            call_phase: None,
            price_band: None,
        };
        AnswerBody { request: request.to_owned(), zone: zone(), answer: Answer::Book { book: Some(book) } }
    }

    #[test]
    fn a_query_and_its_answer_round_trip() {
        let key = protocol::testing::operator_key();
        let pinned = key.verifying_key().to_bytes();
        let query = QueryBody {
            zone: zone(),
            instance: "web-a".to_owned(),
            request: "r1".to_owned(),
            query: Query::OpenOrders { account: AccountId::from_verifying_key(&key.verifying_key()) },
        };
        let payload = QUERY.seal(&key, &query).expect("signs");
        assert_eq!(QUERY.open::<QueryBody>(&pinned, &payload), Ok(query));
        let answer = book_answer("r1");
        let payload = ANSWER.seal(&key, &answer).expect("signs");
        assert_eq!(ANSWER.open::<AnswerBody>(&pinned, &payload), Ok(answer));
    }

    /// A neighbour on the broker (one without ACLs) forges a book, or passes a signed query off as
    /// an answer (or the reverse): every one is refused.
    #[test]
    fn an_answer_signed_by_another_key_altered_or_under_another_domain_is_refused() {
        let key = protocol::testing::operator_key();
        let pinned = key.verifying_key().to_bytes();
        let answer = book_answer("r1");
        let forged = ANSWER.seal(&SigningKey::from_bytes(&[77; 32]), &answer).expect("signs");
        assert_eq!(ANSWER.open::<AnswerBody>(&pinned, &forged), Err(OpenError::BadSignature));
        let genuine = String::from_utf8(ANSWER.seal(&key, &answer).expect("signs")).expect("utf-8");
        let altered = genuine.replace("120000", "999999");
        assert!(genuine.contains("\"price_per_kwh\":120000"), "not escaped: {genuine}");
        assert_ne!(altered, genuine);
        assert_eq!(ANSWER.open::<AnswerBody>(&pinned, altered.as_bytes()), Err(OpenError::BadSignature));
        let as_query = QUERY.seal(&key, &answer).expect("signs");
        assert_eq!(ANSWER.open::<AnswerBody>(&pinned, &as_query), Err(OpenError::BadSignature));
        let command_reply_domain =
            Envelope { domain: super::super::relay::REPLY_DOMAIN, ..ANSWER }.seal(&key, &answer).expect("signs");
        assert_eq!(ANSWER.open::<AnswerBody>(&pinned, &command_reply_domain), Err(OpenError::BadSignature));
        assert_eq!(ANSWER.open::<AnswerBody>(&pinned, b"{}"), Err(OpenError::Malformed));
        let huge = vec![b' '; PAYLOAD_BYTES_MAX + 1];
        assert_eq!(ANSWER.open::<AnswerBody>(&pinned, &huge), Err(OpenError::Malformed));
    }

    /// The same, through the client: a forged answer on the reply topic does not answer the caller,
    /// who then gets the genuine one.
    #[tokio::test]
    async fn a_forged_answer_on_the_reply_topic_is_ignored() {
        let key = protocol::testing::operator_key();
        let (publish, mut published) = mpsc::channel(4);
        let client = QueryClient::new("web-a".to_owned(), publish, key.verifying_key().to_bytes(), 30_000);
        let asking = tokio::spawn({
            let client = client.clone();
            async move { client.ask(&zone(), Query::Book { slot: SlotId::new(900_000).expect("slot"), levels: 5 }).await }
        });
        let outbound = published.recv().await.expect("the query is published");
        let (topic_zone, instance, request) = protocol::topics::parse_query(&outbound.topic)
            .map(|(z, i, r)| (z.to_owned(), i.to_owned(), r.to_owned()))
            .expect("a query topic");
        assert_eq!((topic_zone.as_str(), instance.as_str()), ("north", "web-a"));
        let query: QueryBody = QUERY
            .open(&key.verifying_key().to_bytes(), &(outbound.sign)(&key).expect("signs"))
            .expect("signed by the operator");
        assert_eq!(query.request, request);

        let mut forged_answer = book_answer(&request);
        if let Answer::Book { book: Some(book) } = &mut forged_answer.answer {
            book.asks.push(protocol::Level {
                price_per_kwh: protocol::PricePerKwh(1),
                qty_wh: protocol::Wh(1_000_000),
                orders: 1,
            });
        }
        client.answer(&ANSWER.seal(&SigningKey::from_bytes(&[77; 32]), &forged_answer).expect("signs"));
        assert!(client.waits_for(&request), "a forged answer must not answer the caller");
        let genuine = book_answer(&request);
        client.answer(&ANSWER.seal(&key, &genuine).expect("signs"));
        let answered = asking.await.expect("joins").expect("relaying is on").expect("answered");
        assert_eq!(answered, genuine.answer);
        assert!(!client.waits_for(&request));
    }
}
