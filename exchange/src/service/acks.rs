//! The ordered acknowledgement queue: an inbound MQTT message's PUBACK is owed once its fate is
//! final (stored, or refused with a reason), and PUBACKs leave in arrival order. A leaf.

use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The broker's acknowledgement (PUBACK) of one inbound MQTT message, owed once its fate is final.
/// Dropping it without [`MqttAck::done`] leaves the message (and every later one) unacknowledged:
/// the broker redelivers them to the exchange's persistent session on the next connection.
pub(crate) struct MqttAck {
    queue: Arc<std::sync::Mutex<AckQueue>>,
    epoch: u64,
    seq: u64,
}

impl std::fmt::Debug for MqttAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttAck").field("seq", &self.seq).finish()
    }
}

impl MqttAck {
    /// Marks the message done; sends its PUBACK and those of the done messages after it that were
    /// waiting for it.
    fn done(self) {
        let mut queue = match self.queue.lock() {
            Ok(queue) => queue,
            Err(poisoned) => poisoned.into_inner(),
        };
        queue.done(self.epoch, self.seq);
    }
}

/// Inbound messages waiting for their PUBACK, in arrival order. MQTT 3.1.1 (§4.6) has a client send
/// PUBACKs in the order the messages arrived, and brokers such as rumqttd refuse any other order, so
/// a message finished early waits for the ones before it.
pub(super) struct AckQueue {
    /// Bumped at every new connection: packet ids of an earlier connection are void (the broker
    /// redelivers those messages).
    epoch: u64,
    /// Arrival number of `pending[0]`.
    base_seq: u64,
    /// Packet id of each message not yet acknowledged, and whether its fate is final.
    pending: VecDeque<(u16, bool)>,
    /// To the task that sends the PUBACKs, in order.
    acks: mpsc::UnboundedSender<u16>,
}

impl AckQueue {
    /// An empty queue whose released packet ids go to `acks` (read by [`acker`]).
    pub(super) fn new(acks: mpsc::UnboundedSender<u16>) -> Arc<std::sync::Mutex<Self>> {
        Arc::new(std::sync::Mutex::new(AckQueue { epoch: 0, base_seq: 0, pending: VecDeque::new(), acks }))
    }

    pub(super) fn take(queue: &Arc<std::sync::Mutex<Self>>, pkid: u16) -> MqttAck {
        let mut guard = match queue.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.pending.push_back((pkid, false));
        let seq = guard.base_seq + guard.pending.len() as u64 - 1;
        MqttAck { queue: queue.clone(), epoch: guard.epoch, seq }
    }

    fn done(&mut self, epoch: u64, seq: u64) {
        if epoch != self.epoch || seq < self.base_seq {
            return;
        }
        if let Some(entry) = self.pending.get_mut((seq - self.base_seq) as usize) {
            entry.1 = true;
        }
        while let Some(&(pkid, true)) = self.pending.front() {
            self.pending.pop_front();
            self.base_seq += 1;
            // The acker ends only after the listener and every MqttAck are gone.
            let _ = self.acks.send(pkid);
        }
    }

    pub(super) fn reconnected(queue: &Arc<std::sync::Mutex<Self>>) {
        let mut guard = match queue.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.epoch += 1;
        guard.base_seq += guard.pending.len() as u64;
        guard.pending.clear();
    }
}

/// Sends PUBACKs in the order the queue releases them.
pub(super) async fn acker(client: rumqttc::AsyncClient, mut acks: mpsc::UnboundedReceiver<u16>) {
    while let Some(pkid) = acks.recv().await {
        let mut bare = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::<u8>::new());
        bare.pkid = pkid;
        if let Err(error) = client.ack(&bare).await {
            tracing::warn!(%error, "cannot acknowledge an MQTT message; the broker redelivers it");
        }
    }
}

/// Acknowledges `ack` if there is one.
pub(super) fn acknowledge(ack: Option<MqttAck>) {
    if let Some(ack) = ack {
        ack.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (Arc<std::sync::Mutex<AckQueue>>, mpsc::UnboundedReceiver<u16>) {
        let (acks, receiver) = mpsc::unbounded_channel();
        let queue = AckQueue { epoch: 0, base_seq: 0, pending: VecDeque::new(), acks };
        (Arc::new(std::sync::Mutex::new(queue)), receiver)
    }

    fn released(receiver: &mut mpsc::UnboundedReceiver<u16>) -> Vec<u16> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    #[test]
    fn pubacks_leave_in_arrival_order_whatever_order_messages_finish_in() {
        let (queue, mut receiver) = queue();
        let (a, b, c) = (AckQueue::take(&queue, 7), AckQueue::take(&queue, 8), AckQueue::take(&queue, 9));
        c.done();
        assert_eq!(released(&mut receiver), Vec::<u16>::new(), "9 waits for 7 and 8");
        a.done();
        assert_eq!(released(&mut receiver), vec![7]);
        b.done();
        assert_eq!(released(&mut receiver), vec![8, 9]);
        let d = AckQueue::take(&queue, 10);
        d.done();
        assert_eq!(released(&mut receiver), vec![10]);
    }

    #[test]
    fn a_reconnection_voids_the_pending_acks_of_the_old_connection() {
        let (queue, mut receiver) = queue();
        let (old_first, old_second) = (AckQueue::take(&queue, 1), AckQueue::take(&queue, 2));
        old_second.done();
        AckQueue::reconnected(&queue);
        // The broker redelivers 1 and 2 on the new connection; the old handles are void.
        let (new_first, new_second) = (AckQueue::take(&queue, 1), AckQueue::take(&queue, 2));
        old_first.done();
        assert_eq!(released(&mut receiver), Vec::<u16>::new());
        new_first.done();
        new_second.done();
        assert_eq!(released(&mut receiver), vec![1, 2]);
    }

    #[test]
    fn a_message_never_finished_holds_back_every_later_puback() {
        let (queue, mut receiver) = queue();
        let (lost, later) = (AckQueue::take(&queue, 3), AckQueue::take(&queue, 4));
        drop(lost);
        later.done();
        assert_eq!(released(&mut receiver), Vec::<u16>::new(), "4 waits: the broker will redeliver both");
    }
}
