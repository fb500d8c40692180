//! Outlets: what every task of the service (and every zone owner) shares to tell the world — the
//! MQTT publish queue, the in-process event broadcast, the clock — and the one way to refuse a
//! message. Imports only the leaf [`super::events`].

use super::events::{MarketEvent, Outbound, Reply, Sign};
use crate::ingest::{Kind, Origin, Parsed, Rejection};
use gridex_store::clock::Clock;
use protocol::topics;
use protocol::{OperatorSigned, Reject, Signed, TimestampMs, ZoneId};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// What every task shares: where to publish, the event broadcast, the clock.
#[derive(Clone)]
pub(crate) struct Outlets {
    pub publish: Option<mpsc::Sender<Outbound>>,
    pub events: broadcast::Sender<MarketEvent>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Outlets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlets").finish_non_exhaustive()
    }
}

impl Outlets {
    /// Queues an MQTT message without waiting; a full queue drops it (counted), never blocks. The
    /// publisher task signs it with the operator's key (PROTOCOL.md §2.1) before sending.
    pub fn publish<T>(&self, topic: String, message: T, qos: rumqttc::QoS, retain: bool)
    where
        T: OperatorSigned + Send + 'static,
    {
        if let Some(publish) = &self.publish {
            let sign: Sign = Box::new(move |key| Signed::sign_operator(message, key).map(|signed| signed.to_json()));
            if publish.try_send(Outbound { topic, sign, qos, retain }).is_err() {
                metrics::counter!("gridex_publish_dropped_total").increment(1);
            }
        }
    }
    /// Queues a message already signed elsewhere by the operator key (a slot root from settlement).
    pub fn publish_presigned(&self, topic: String, payload: Vec<u8>, qos: rumqttc::QoS, retain: bool) {
        if let Some(publish) = &self.publish {
            let sign: Sign = Box::new(move |_| Ok(payload));
            if publish.try_send(Outbound { topic, sign, qos, retain }).is_err() {
                metrics::counter!("gridex_publish_dropped_total").increment(1);
            }
        }
    }
    /// Publishes a message to the broker (QoS 1, not retained), signed by the operator.
    pub fn publish_message<T>(&self, topic: String, message: &T)
    where
        T: OperatorSigned + Clone + Send + 'static,
    {
        if self.publish.is_some() {
            self.publish(topic, message.clone(), rumqttc::QoS::AtLeastOnce, false);
        }
    }
    pub fn event(&self, event: MarketEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

pub(super) fn count(kind: Kind, result: &'static str) {
    match kind {
        Kind::Reading => metrics::counter!("gridex_readings_total", "result" => result).increment(1),
        Kind::Command => metrics::counter!("gridex_orders_total", "result" => result).increment(1),
    }
}

/// Refuses a message: counts it, publishes a `Reject` to the sender's reject topic, tells in-process
/// subscribers and the waiting caller.
pub(super) fn reject(
    outlets: &Outlets,
    kind: Kind,
    origin: &Origin,
    parsed: Option<&Parsed>,
    reply: Option<Reply>,
    rejection: Rejection,
) {
    count(kind, rejection.reason.code());
    let mut message = rejection.message.clone();
    message.truncate(protocol::messages::REJECT_MESSAGE_LEN_MAX);
    let of = parsed.map_or_else(|| "unknown".to_owned(), |parsed| parsed.type_name().to_owned());
    let reject = Reject {
        of,
        seq: parsed.map(Parsed::seq),
        reason: rejection.reason,
        message,
        ts_ms: TimestampMs(outlets.now_ms()),
    };
    let (zone, sender) = match (origin, parsed) {
        (Origin::Mqtt { zone, sender, .. }, _) => (ZoneId::parse(zone).ok(), Some(sender.clone())),
        (Origin::Direct, Some(parsed)) => (Some(parsed.zone().clone()), Some(parsed.sender_hex())),
        (Origin::Direct, None) => (None, None),
    };
    if let (Origin::Mqtt { .. }, Some(zone), Some(sender)) = (origin, &zone, &sender) {
        outlets.publish_message(topics::rejects(zone, sender), &reject);
    }
    outlets.event(MarketEvent::Rejected { zone, sender, reject });
    if let Some(reply) = reply {
        reply.reject(rejection);
    }
}
