//! The command relay between gridex servers (on PostgreSQL, where each zone is owned by one instance
//! at a time): a server that takes a command over HTTP for a zone another instance owns forwards its
//! signed bytes, exactly as received, to the broker on `topics::relay(zone, instance, request)`; the
//! owner, subscribed to the relay topic of each zone it holds, feeds them to the same verify → commit
//! → match pipeline as its own HTTP commands and answers on `topics::relay_replies(zone, instance)`
//! with the outcome the caller would have had from the owner itself.
//!
//! Nothing is trusted because it was relayed: the owner verifies the command's signature, nonce and
//! rate limit as always. The reply is an envelope internal to gridex servers (not part of
//! `protocol`: no trader or gateway ever reads it), signed with the operator key under its own
//! domain tag ([`REPLY_DOMAIN`]) and verified against the operator key the server runs with, so a
//! participant who could publish on a reply topic despite the broker's ACL still cannot forge an
//! outcome. A leaf of the service: of its modules it imports only [`super::events`] and the leaves
//! it shares with the query relay, [`super::envelope`] (the signed reply) and [`super::pending`] (the
//! waiting callers).

use super::envelope::{Envelope, Framing, OpenError};
use super::events::{CommandAck, Outbound};
use super::pending::Pending;
use crate::ingest::Rejection;
use ed25519_dalek::SigningKey;
use protocol::{topics, OrderUpdate, Reason, Trade, ZoneId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Relayed commands waiting for their owner's answer at once: each holds an HTTP request open, so
/// this bounds the memory of a burst towards an owner that does not answer (beyond it: `overloaded`).
pub(crate) const RELAY_PENDING_MAX: usize = 4_096;
/// The domain tag of a relay reply's signature: no protocol message's signed bytes start with it,
/// so no operator signature on a published message is ever a valid reply, nor the reverse.
pub(crate) const REPLY_DOMAIN: &[u8] = b"gridex-relay-reply/1\n";
/// Largest reply body accepted: a command's updates and trades are bounded by the book's open orders
/// per account; the broker's packet limit (64 KiB) bounds it anyway.
const REPLY_BYTES_MAX: usize = 64 * 1024;
/// A relay reply on the wire: the body's JSON as a string (so the signed bytes are exactly what is
/// parsed) and the operator's signature over [`REPLY_DOMAIN`] ‖ body, in hex.
const REPLY: Envelope = Envelope { domain: REPLY_DOMAIN, framing: Framing::Json, payload_bytes_max: REPLY_BYTES_MAX };

/// What a relayed command's caller waits on.
pub(crate) type Answer = oneshot::Sender<Result<CommandAck, Rejection>>;

/// The signed part of a relay reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    /// The request id of the relay topic the command came on.
    request: String,
    zone: ZoneId,
    outcome: Outcome,
}

/// The outcome of a relayed command: what `ExchangeHandle::submit_command` returns at the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
enum Outcome {
    Accepted { command_seq: u64, updates: Vec<OrderUpdate>, trades: Vec<Trade> },
    Refused { reason: Reason, message: String },
}

/// The payload of the reply to `request`: its outcome, signed with the operator key.
pub(crate) fn sign_reply(
    key: &SigningKey,
    request: &str,
    zone: &ZoneId,
    result: &Result<CommandAck, Rejection>,
) -> Result<Vec<u8>, serde_json::Error> {
    let outcome = match result {
        Ok(ack) => {
            Outcome::Accepted { command_seq: ack.command_seq, updates: ack.updates.clone(), trades: ack.trades.clone() }
        }
        Err(rejection) => Outcome::Refused { reason: rejection.reason, message: rejection.message.clone() },
    };
    REPLY.seal(key, &ReplyBody { request: request.to_owned(), zone: zone.clone(), outcome })
}

/// Why a relay reply was dropped: an [`OpenError`], in the words the relay's log has always used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ReplyError {
    #[error("the reply does not parse")]
    Malformed,
    #[error("the reply is not signed by the operator key")]
    BadSignature,
}

impl From<OpenError> for ReplyError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Malformed => ReplyError::Malformed,
            OpenError::BadSignature => ReplyError::BadSignature,
        }
    }
}

/// The request id and outcome of a reply, once its signature verified against `operator`.
pub(crate) fn open_reply(
    operator: &[u8; 32],
    payload: &[u8],
) -> Result<(String, ZoneId, Result<CommandAck, Rejection>), ReplyError> {
    let body: ReplyBody = REPLY.open(operator, payload)?;
    let result = match body.outcome {
        Outcome::Accepted { command_seq, updates, trades } => Ok(CommandAck { command_seq, updates, trades }),
        Outcome::Refused { reason, message } => Err(Rejection::new(reason, message)),
    };
    Ok((body.request, body.zone, result))
}

/// What the caller of a relayed command is told when no owner answered in time.
pub(crate) fn no_live_owner(zone: &ZoneId, timeout_ms: u64) -> Rejection {
    Rejection::new(
        Reason::Overloaded,
        format!(
            "zone {zone} has no live owner: no exchange instance answered within {timeout_ms} ms; retry. \
             The command may still have been committed: send the same signed command again (with a new \
             request signature); if it was, it is refused as `duplicate` (or `replayed`) and appears in \
             GET /api/v1/me/orders"
        ),
    )
}

/// The relay client and the owner's answering half; cheap to clone. Off without a broker or leases.
#[derive(Clone, Default, Debug)]
pub(crate) struct Relay {
    /// Named by this server's broker username, or its instance id.
    inner: Option<Arc<Pending<Answer>>>,
}

/// `name` as one topic segment: characters outside `[A-Za-z0-9._-]` become `_`.
pub(crate) fn topic_segment(name: &str) -> String {
    let segment: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if segment.is_empty() {
        "exchange".to_owned()
    } else {
        segment
    }
}

impl Relay {
    /// A relay publishing through `publish` as `name` (see [`topic_segment`]).
    pub(crate) fn new(name: &str, publish: mpsc::Sender<Outbound>, operator: [u8; 32], timeout_ms: u64) -> Relay {
        Relay {
            inner: Some(Arc::new(Pending::new(topic_segment(name), publish, operator, timeout_ms, RELAY_PENDING_MAX))),
        }
    }

    /// This server's segment of the relay topics; `None` when relaying is off.
    pub(crate) fn name(&self) -> Option<&str> {
        self.inner.as_ref().map(|inner| inner.name.as_str())
    }

    /// Forwards a command for `zone` to its owner and answers `answer` with the owner's reply, or
    /// with [`no_live_owner`] after the timeout. `refused`: what to answer when relaying is off.
    pub(crate) fn forward(&self, zone: &ZoneId, bytes: Vec<u8>, answer: Answer, refused: Rejection) {
        let Some(inner) = &self.inner else {
            let _ = answer.send(Err(refused));
            return;
        };
        let request = match inner.wait(answer) {
            Ok(request) => request,
            Err(answer) => {
                let _ = answer.send(Err(Rejection::new(
                    Reason::Overloaded,
                    "too many commands wait for another instance's answer; retry later",
                )));
                return;
            }
        };
        let topic = topics::relay(zone, &inner.name, &request);
        // Exactly the bytes received: the owner verifies them as it verifies its own.
        let outbound =
            Outbound { topic, sign: Box::new(move |_| Ok(bytes)), qos: rumqttc::QoS::AtLeastOnce, retain: false };
        if inner.publish.try_send(outbound).is_err() {
            if let Some(answer) = inner.take(&request) {
                let _ = answer.send(Err(Rejection::new(Reason::Overloaded, "the publish queue is full; retry later")));
            }
            return;
        }
        metrics::counter!("gridex_relayed_commands_total", "result" => "sent").increment(1);
        let inner = inner.clone();
        let zone = zone.clone();
        tokio::spawn(async move {
            tokio::time::sleep(inner.timeout).await;
            if let Some(answer) = inner.take(&request) {
                metrics::counter!("gridex_relayed_commands_total", "result" => "timed_out").increment(1);
                let _ = answer.send(Err(no_live_owner(&zone, inner.timeout_ms())));
            }
        });
    }

    /// A reply arrived on this server's reply topic: answers its waiting caller, if any (a reply
    /// after the timeout, a duplicate or one that does not verify is dropped).
    pub(crate) fn answer(&self, payload: &[u8]) {
        let Some(inner) = &self.inner else { return };
        match open_reply(&inner.operator, payload) {
            Ok((request, _, result)) => {
                if let Some(answer) = inner.take(&request) {
                    metrics::counter!("gridex_relayed_commands_total", "result" => "answered").increment(1);
                    let _ = answer.send(result);
                }
            }
            Err(error) => {
                metrics::counter!("gridex_relay_replies_dropped_total").increment(1);
                tracing::warn!(%error, "a relay reply was dropped");
            }
        }
    }

    /// The owner's half: once `outcome` is final (committed and applied, or refused), publishes it,
    /// signed, to the relaying server `instance`. An outcome never given (shutting down) is not
    /// answered: the relaying server times out, and the broker redelivers the command.
    pub(crate) fn reply_later(
        &self,
        zone: ZoneId,
        instance: String,
        request: String,
        outcome: oneshot::Receiver<Result<CommandAck, Rejection>>,
    ) {
        let Some(inner) = &self.inner else { return };
        let publish = inner.publish.clone();
        tokio::spawn(async move {
            let Ok(result) = outcome.await else { return };
            let topic = topics::relay_replies(&zone, &instance);
            let sign: super::events::Sign = Box::new(move |key| {
                sign_reply(key, &request, &zone, &result)
                    .map_err(|error| protocol::ProtocolError::new(Reason::InternalError, error.to_string()))
            });
            // Waits for room: the reply is what a caller is waiting for (and is not the event loop).
            if publish.send(Outbound { topic, sign, qos: rumqttc::QoS::AtLeastOnce, retain: false }).await.is_err() {
                tracing::warn!("the publisher stopped before a relay reply was sent");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> ZoneId {
        ZoneId::parse("north").expect("valid")
    }

    #[test]
    fn a_reply_round_trips_with_its_outcome() {
        let key = protocol::testing::operator_key();
        let pinned = key.verifying_key().to_bytes();
        let ack = CommandAck { command_seq: 7, updates: Vec::new(), trades: Vec::new() };
        let payload = sign_reply(&key, "r1", &zone(), &Ok(ack.clone())).expect("signs");
        assert_eq!(open_reply(&pinned, &payload), Ok(("r1".to_owned(), zone(), Ok(ack))));
        let refused = Err(Rejection::new(Reason::Duplicate, "seen"));
        let payload = sign_reply(&key, "r2", &zone(), &refused).expect("signs");
        assert_eq!(open_reply(&pinned, &payload), Ok(("r2".to_owned(), zone(), refused)));
    }

    /// A participant that reached a reply topic (a broker without ACLs) forges an acceptance.
    #[test]
    fn a_relay_reply_signed_by_another_key_or_altered_is_dropped() {
        let key = protocol::testing::operator_key();
        let pinned = key.verifying_key().to_bytes();
        let ack = Ok(CommandAck { command_seq: 7, updates: Vec::new(), trades: Vec::new() });
        let forged = sign_reply(&SigningKey::from_bytes(&[77; 32]), "r1", &zone(), &ack).expect("signs");
        assert_eq!(open_reply(&pinned, &forged), Err(ReplyError::BadSignature));
        let genuine = String::from_utf8(sign_reply(&key, "r1", &zone(), &ack).expect("signs")).expect("utf-8");
        let altered = genuine.replace("\\\"command_seq\\\":7", "\\\"command_seq\\\":8");
        assert_ne!(altered, genuine);
        assert_eq!(open_reply(&pinned, altered.as_bytes()), Err(ReplyError::BadSignature));
        assert_eq!(open_reply(&pinned, b"{}"), Err(ReplyError::Malformed));
    }

    #[test]
    fn a_name_becomes_one_topic_segment() {
        assert_eq!(topic_segment("web-a.1_x"), "web-a.1_x");
        assert_eq!(topic_segment("a/b+#c"), "a_b__c");
        assert_eq!(topic_segment(""), "exchange");
    }
}
