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
//! service: of its modules it imports only [`super::events`].

use super::events::{Outbound, SlotInfo};
use crate::ingest::Rejection;
use crate::zone::OpenOrder;
use ed25519_dalek::{Signer, SigningKey};
use protocol::{AccountId, AuctionResult, BookSnapshot, Reason, SlotId, ZoneId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

/// Hex digits of the signature that opens a payload.
const SIG_HEX_LEN: usize = 128;

fn signed_bytes(domain: &[u8], body: &str) -> Vec<u8> {
    let mut bytes = domain.to_vec();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// `body`, signed with `key` under `domain`, as it goes on the wire: the operator's signature over
/// domain ‖ body in hex, a newline, then the body's JSON exactly as signed (not escaped into an
/// envelope: a book or a list keeps its size).
pub(crate) fn seal(key: &SigningKey, domain: &[u8], body: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_string(body)?;
    let sig = hex::encode(key.sign(&signed_bytes(domain, &body)).to_bytes());
    Ok(format!("{sig}\n{body}").into_bytes())
}

/// Why a relayed query or answer was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum OpenError {
    #[error("the payload does not parse or is too large")]
    Malformed,
    #[error("the payload is not signed by the operator key")]
    BadSignature,
}

/// The body of `payload`, once its signature under `domain` verified against `operator`.
pub(crate) fn open<T: DeserializeOwned>(operator: &[u8; 32], domain: &[u8], payload: &[u8]) -> Result<T, OpenError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(OpenError::Malformed);
    }
    let (sig, body) = match (payload.get(..SIG_HEX_LEN), payload.get(SIG_HEX_LEN), payload.get(SIG_HEX_LEN + 1..)) {
        (Some(sig), Some(b'\n'), Some(body)) => (sig, body),
        _ => return Err(OpenError::Malformed),
    };
    let body = std::str::from_utf8(body).map_err(|_| OpenError::Malformed)?;
    let sig: [u8; 64] = hex::decode(sig).ok().and_then(|bytes| bytes.try_into().ok()).ok_or(OpenError::Malformed)?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(operator).map_err(|_| OpenError::BadSignature)?;
    key.verify_strict(&signed_bytes(domain, body), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| OpenError::BadSignature)?;
    serde_json::from_str(body).map_err(|_| OpenError::Malformed)
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
#[derive(Clone, Default)]
pub(crate) struct QueryClient {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// This server's segment of the query topics (as the command relay's: `relay::topic_segment`).
    name: String,
    publish: mpsc::Sender<Outbound>,
    operator: [u8; 32],
    timeout: Duration,
    pending: Mutex<HashMap<String, Waiting>>,
    /// Request ids: a per-process random prefix and a counter.
    prefix: u64,
    next: AtomicU64,
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for QueryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryClient").field("name", &self.name()).finish_non_exhaustive()
    }
}

/// Forgets a pending query when its caller stops waiting (answered, timed out or dropped).
struct PendingGuard<'a> {
    inner: &'a Inner,
    request: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending().remove(&self.request);
    }
}

impl QueryClient {
    /// A client publishing through `publish` as `name` (already one topic segment).
    pub(crate) fn new(name: String, publish: mpsc::Sender<Outbound>, operator: [u8; 32], timeout_ms: u64) -> Self {
        let prefix = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), &name);
        QueryClient {
            inner: Some(Arc::new(Inner {
                name,
                publish,
                operator,
                timeout: Duration::from_millis(timeout_ms),
                pending: Mutex::new(HashMap::new()),
                prefix,
                next: AtomicU64::new(0),
            })),
        }
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

    async fn ask_on(inner: &Inner, zone: &ZoneId, query: Query) -> Result<Answer, Rejection> {
        let request = format!("{:016x}{:016x}", inner.prefix, inner.next.fetch_add(1, Ordering::Relaxed));
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = inner.pending();
            if pending.len() >= QUERIES_PENDING_MAX {
                return Err(Rejection::new(
                    Reason::Overloaded,
                    "too many queries wait for another instance's answer; retry later",
                ));
            }
            pending.insert(request.clone(), sender);
        }
        let _guard = PendingGuard { inner, request: request.clone() };
        let topic = protocol::topics::query(zone, &inner.name, &request);
        let body = QueryBody { zone: zone.clone(), instance: inner.name.clone(), request, query };
        let sign: super::events::Sign = Box::new(move |key| {
            seal(key, QUERY_DOMAIN, &body)
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
                Err(no_live_owner(zone, inner.timeout.as_millis() as u64))
            }
        }
    }

    /// An answer arrived on this server's answer topic: hands it to its waiting caller, if any (an
    /// answer after the timeout, a duplicate or one that does not verify is dropped).
    pub(crate) fn answer(&self, payload: &[u8]) {
        let Some(inner) = &self.inner else { return };
        match open::<AnswerBody>(&inner.operator, ANSWER_DOMAIN, payload) {
            Ok(body) => {
                if let Some(waiting) = inner.pending().remove(&body.request) {
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
        self.inner.as_ref().is_some_and(|inner| inner.pending().contains_key(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let payload = seal(&key, QUERY_DOMAIN, &query).expect("signs");
        assert_eq!(open::<QueryBody>(&pinned, QUERY_DOMAIN, &payload), Ok(query));
        let answer = book_answer("r1");
        let payload = seal(&key, ANSWER_DOMAIN, &answer).expect("signs");
        assert_eq!(open::<AnswerBody>(&pinned, ANSWER_DOMAIN, &payload), Ok(answer));
    }

    /// A neighbour on the broker (one without ACLs) forges a book, or passes a signed query off as
    /// an answer (or the reverse): every one is refused.
    #[test]
    fn an_answer_signed_by_another_key_altered_or_under_another_domain_is_refused() {
        let key = protocol::testing::operator_key();
        let pinned = key.verifying_key().to_bytes();
        let answer = book_answer("r1");
        let forged = seal(&SigningKey::from_bytes(&[77; 32]), ANSWER_DOMAIN, &answer).expect("signs");
        assert_eq!(open::<AnswerBody>(&pinned, ANSWER_DOMAIN, &forged), Err(OpenError::BadSignature));
        let genuine = String::from_utf8(seal(&key, ANSWER_DOMAIN, &answer).expect("signs")).expect("utf-8");
        let altered = genuine.replace("120000", "999999");
        assert!(genuine.contains("\"price_per_kwh\":120000"), "not escaped: {genuine}");
        assert_ne!(altered, genuine);
        assert_eq!(open::<AnswerBody>(&pinned, ANSWER_DOMAIN, altered.as_bytes()), Err(OpenError::BadSignature));
        let as_query = seal(&key, QUERY_DOMAIN, &answer).expect("signs");
        assert_eq!(open::<AnswerBody>(&pinned, ANSWER_DOMAIN, &as_query), Err(OpenError::BadSignature));
        let command_reply_domain = seal(&key, super::super::relay::REPLY_DOMAIN, &answer).expect("signs");
        assert_eq!(open::<AnswerBody>(&pinned, ANSWER_DOMAIN, &command_reply_domain), Err(OpenError::BadSignature));
        assert_eq!(open::<AnswerBody>(&pinned, ANSWER_DOMAIN, b"{}"), Err(OpenError::Malformed));
        let huge = vec![b' '; PAYLOAD_BYTES_MAX + 1];
        assert_eq!(open::<AnswerBody>(&pinned, ANSWER_DOMAIN, &huge), Err(OpenError::Malformed));
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
        let query: QueryBody =
            open(&key.verifying_key().to_bytes(), QUERY_DOMAIN, &(outbound.sign)(&key).expect("signs"))
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
        client.answer(&seal(&SigningKey::from_bytes(&[77; 32]), ANSWER_DOMAIN, &forged_answer).expect("signs"));
        assert!(client.waits_for(&request), "a forged answer must not answer the caller");
        let genuine = book_answer(&request);
        client.answer(&seal(&key, ANSWER_DOMAIN, &genuine).expect("signs"));
        let answered = asking.await.expect("joins").expect("relaying is on").expect("answered");
        assert_eq!(answered, genuine.answer);
        assert!(!client.waits_for(&request));
    }
}
