//! The verification stage: parse and batch-verify signatures on a pool of blocking threads, then
//! the stateful checks (keys, freshness, seq, nonces, plausibility, the per-account command rate
//! limit) in arrival order, and hand what passes to the group commit ([`super::commit`]). A message
//! for a zone this instance does not own (on PostgreSQL: whose lease it does not hold) is dropped
//! first: acknowledged unanswered over MQTT (its sender resends, to the owner); a command taken over
//! HTTP is relayed to the zone's owner through the broker ([`super::relay`]), and refused only
//! without a broker.

use super::acks::{acknowledge, MqttAck};
use super::commit::{zone_moved, Notice, Pending, Release, ToCommit};
use super::events::{shutting_down, Reply};
use super::outlets::{reject, Outlets};
use super::ownership::Ownership;
use super::relay::Relay;
use crate::ingest::{self, Kind, Origin, Parsed, RefusedReading, Rejection, Verifier};
use crate::store;
use gridex_store::Database;
use protocol::{AccountId, Reason, ZoneId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Keys looked up in storage per verification batch; a flood of unknown keys costs at most this.
const KEY_LOOKUPS_PER_BATCH_MAX: usize = 256;
/// Smallest batch the verification stage splits the queue into: batch verification pays off
/// from a few dozen signatures on (~1.7× at 64), so spreading fewer over the workers is slower.
const VERIFY_BATCH_MIN: usize = 32;

/// A message as it arrives, before verification.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(super) kind: Kind,
    pub(super) origin: Origin,
    pub(super) bytes: Vec<u8>,
    pub(super) reply: Option<Reply>,
    pub(super) ack: Option<MqttAck>,
    /// Relayed here by another instance (`topics::relay`): never relayed again.
    pub(super) relayed: bool,
}

/// A batch after the stateless checks (strict parse, topic, signatures), done on a blocking thread.
#[derive(Debug)]
struct Prepared {
    batch: Vec<Raw>,
    parsed: Vec<Result<Parsed, Rejection>>,
    signatures: Vec<Option<Rejection>>,
}

/// Parses and batch-verifies the signatures of `batch`: pure CPU work, run off the async workers.
fn prepare(batch: Vec<Raw>) -> Prepared {
    prepare_with(batch, ingest::parse, ingest::verify_signatures)
}

/// [`prepare`] with its two steps given. Both are meant never to panic (they are fuzzed), but a
/// panic here would lose the whole batch, and with it the PUBACKs every later message waits for
/// (they go out in arrival order): the exchange would stall until it reconnected, and the broker
/// would then redeliver the poison message first. So a panic costs only the message that caused
/// it: it is refused as `internal_error` (and acknowledged, never retried), the others go on.
fn prepare_with(
    batch: Vec<Raw>,
    parse: impl Fn(Kind, &Origin, &[u8]) -> Result<Parsed, Rejection>,
    verify: impl Fn(&[Result<Parsed, Rejection>]) -> Vec<Option<Rejection>>,
) -> Prepared {
    let mut parsed: Vec<Result<Parsed, Rejection>> =
        batch.iter().map(|raw| guarded(|| parse(raw.kind, &raw.origin, &raw.bytes)).unwrap_or_else(Err)).collect();
    let signatures = match guarded(|| verify(&parsed)) {
        Ok(signatures) => signatures,
        // One message at a time, to find the one that panics.
        Err(_) => parsed
            .iter_mut()
            .map(|item| match guarded(|| verify(std::slice::from_ref(item))) {
                Ok(mut verdict) => verdict.pop().flatten(),
                Err(rejection) => {
                    *item = Err(rejection);
                    None
                }
            })
            .collect(),
    };
    Prepared { batch, parsed, signatures }
}

/// Runs `step`, turning a panic into an `internal_error` rejection.
fn guarded<T>(step: impl FnOnce() -> T) -> Result<T, Rejection> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|_| {
        tracing::error!("a message made verification panic; it is refused as internal_error");
        Rejection::new(Reason::InternalError, "the exchange failed on this message; it was not accepted")
    })
}

/// The verification stage's task. The stateless, CPU-heavy part (parse, signatures) runs on up to
/// `workers` blocking threads at once, one batch each; the stateful checks (registered keys,
/// freshness, seq, nonces, plausibility) run here, batch by batch in the order the batches were
/// taken from the ingest queue, so every sender's messages are checked in arrival order.
pub(super) struct VerifyStage {
    pub(super) verifier: Verifier,
    pub(super) db: Database,
    pub(super) outlets: Outlets,
    pub(super) batch_max: usize,
    pub(super) workers: usize,
    /// Messages taken from the ingest queue and not yet handed to the commit (or refused).
    pub(super) verifying: Arc<AtomicUsize>,
    pub(super) commit: mpsc::Sender<ToCommit>,
    pub(super) resync: mpsc::Receiver<(Vec<protocol::DeviceId>, Vec<AccountId>)>,
    /// Refused readings with a valid signature, for the group commit to record.
    pub(super) refused: mpsc::Sender<Vec<RefusedReading>>,
    /// Which zones this instance owns now.
    pub(super) ownership: Ownership,
    /// From the lease manager: zones to forget, leases to release (after what is verified).
    pub(super) notices: mpsc::UnboundedReceiver<Notice>,
    /// Forwards HTTP commands of zones another instance owns to their owner.
    pub(super) relay: Relay,
}

/// A batch on a blocking thread, with its number of messages.
type InFlight = (usize, JoinHandle<Prepared>);

impl VerifyStage {
    pub(super) async fn run(mut self, mut ingest: mpsc::Receiver<Raw>, mut shutdown: watch::Receiver<bool>) {
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(self.workers);
        let mut taking = true;
        while taking || !in_flight.is_empty() {
            tokio::select! {
                biased;
                // Only the oldest batch is awaited: batches finish in the order they were taken.
                prepared = oldest(&mut in_flight), if !in_flight.is_empty() => {
                    let taken = in_flight.pop_front().map_or(0, |(messages, _)| messages);
                    self.finish(prepared).await;
                    self.verifying.fetch_sub(taken, Ordering::Relaxed);
                }
                raw = ingest.recv(), if taking && in_flight.len() < self.workers => match raw {
                    Some(first) => self.dispatch(first, &mut ingest, &mut in_flight),
                    None => taking = false,
                },
                Some(notice) = self.notices.recv() => {
                    let mut releases = Vec::new();
                    self.notice(notice, &mut releases);
                    self.hand_on(releases).await;
                }
                _ = shutdown.changed(), if taking => taking = false,
            }
        }
        // Drain what was queued before the stop, so nothing already taken is silently lost.
        ingest.close();
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Ok(raw) = ingest.try_recv() {
            batch.push(raw);
            if batch.len() == self.batch_max {
                self.finish(Some(prepare(std::mem::take(&mut batch)))).await;
            }
        }
        if !batch.is_empty() {
            self.finish(Some(prepare(batch))).await;
        }
    }

    /// Takes `first` and what else is queued, split over the free workers (no batch smaller
    /// than [`VERIFY_BATCH_MIN`] unless that is all there is), and starts them.
    fn dispatch(&self, first: Raw, ingest: &mut mpsc::Receiver<Raw>, in_flight: &mut VecDeque<InFlight>) {
        let free = self.workers - in_flight.len();
        let queued = ingest.len() + 1;
        let share = queued.div_ceil(free).clamp(VERIFY_BATCH_MIN.min(self.batch_max), self.batch_max);
        let mut next = Some(first);
        while in_flight.len() < self.workers {
            let mut batch = Vec::with_capacity(share);
            batch.extend(next.take());
            while batch.len() < share {
                match ingest.try_recv() {
                    Ok(raw) => batch.push(raw),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.verifying.fetch_add(batch.len(), Ordering::Relaxed);
            in_flight.push_back((batch.len(), tokio::task::spawn_blocking(move || prepare(batch))));
        }
        metrics::gauge!("gridex_queue_depth", "queue" => "ingest").set(ingest.len() as f64);
    }

    fn notice(&mut self, notice: Notice, releases: &mut Vec<Release>) {
        match notice {
            Notice::Forget(zone) => self.verifier.directory.forget_zone(&zone),
            Notice::Release(release) => releases.push(release),
        }
    }

    /// Hands releases to the group commit, behind every message verified before them.
    async fn hand_on(&self, releases: Vec<Release>) {
        for release in releases {
            // Closed: shutting down; the lease is let go at shutdown anyway.
            let _ = self.commit.send(ToCommit::Release(release)).await;
        }
    }

    /// Drops the messages of zones this instance does not own (any more): over MQTT acknowledged
    /// unanswered and counted (the sender resends; the zone's owner receives it). A command taken over
    /// HTTP is relayed to the zone's owner ([`Relay::forward`]; the owner
    /// checks everything again), as is one for a zone this instance may never serve (its owner, or
    /// the timeout, answers); a command relayed here is refused `zone moved`, never relayed again.
    fn drop_not_owned(&self, prepared: Prepared) -> Prepared {
        let Prepared { batch, parsed, signatures } = prepared;
        let mut kept = Prepared { batch: Vec::new(), parsed: Vec::new(), signatures: Vec::new() };
        for ((raw, parsed), signature) in batch.into_iter().zip(parsed).zip(signatures) {
            let (owned, relayable) = match &parsed {
                // A zone not in storage is refused for that (`unknown_zone`) by the checks, unless
                // this instance never serves it: then its owner (if any) knows it.
                Ok(parsed) => {
                    let zone = parsed.zone();
                    let known = self.verifier.directory.zones.contains_key(zone);
                    let taken = self.ownership.takes(zone);
                    (taken || !known, !taken && (known || !self.ownership.may_serve(zone)))
                }
                // Refused anyway, for what it is.
                Err(_) => (true, false),
            };
            // Whatever its signature's verdict here: the owner's answer is the one to give.
            let relayable = relayable
                && !raw.relayed
                && matches!(raw.origin, Origin::Direct)
                && matches!(raw.reply, Some(Reply::Command(_)));
            if relayable {
                // `relayable` holds only for a parsed command with a reply.
                if let (Ok(command), Some(Reply::Command(answer))) = (&parsed, raw.reply) {
                    self.relay.forward(command.zone(), raw.bytes, answer, zone_moved());
                }
                continue;
            }
            if owned {
                kept.batch.push(raw);
                kept.parsed.push(parsed);
                kept.signatures.push(signature);
                continue;
            }
            metrics::counter!("gridex_not_owned_messages_total").increment(1);
            if let Some(reply) = raw.reply {
                reply.reject(zone_moved());
            }
            acknowledge(raw.ack);
        }
        kept
    }

    /// The stateful checks of one prepared batch, then hands the accepted messages to the commit.
    async fn finish(&mut self, prepared: Option<Prepared>) {
        let Some(prepared) = prepared else { return };
        // New zones first (on PostgreSQL their leases are taken if free), then ownership, then the
        // lease manager's notices: a zone owned now was announced before it was taken, so its
        // senders are forgotten before any of its messages is checked.
        self.load_missing_zones(&prepared.parsed).await;
        let Prepared { batch, parsed, signatures } =
            if self.ownership.leasing() { self.drop_not_owned(prepared) } else { prepared };
        let mut releases = Vec::new();
        while let Ok(notice) = self.notices.try_recv() {
            self.notice(notice, &mut releases);
        }
        while let Ok((devices, accounts)) = self.resync.try_recv() {
            self.verifier.directory.forget(&devices, &accounts);
        }
        let now_ms = self.outlets.now_ms();
        self.load_missing(&parsed).await;
        let kept: Vec<Option<Parsed>> = parsed.iter().map(|item| item.as_ref().ok().cloned()).collect();
        let signature_valid: Vec<bool> = signatures.iter().map(Option::is_none).collect();
        let results = self.verifier.check_signed(parsed, signatures, now_ms);
        let mut refused = Vec::new();
        for (((raw, result), parsed), signature_valid) in batch.into_iter().zip(results).zip(kept).zip(signature_valid)
        {
            match result {
                Ok(verified) => {
                    let pending =
                        Pending { verified, origin: raw.origin, reply: raw.reply, ack: raw.ack, received_ms: now_ms };
                    if let Err(mpsc::error::SendError(ToCommit::Message(pending))) =
                        self.commit.send(ToCommit::Message(pending)).await
                    {
                        if let Some(reply) = pending.reply {
                            reply.reject(shutting_down());
                        }
                    }
                }
                Err(rejection) => {
                    refused.extend(ingest::refused_reading(parsed.as_ref(), signature_valid, &rejection, now_ms));
                    reject(&self.outlets, raw.kind, &raw.origin, parsed.as_ref(), raw.reply, rejection);
                    acknowledge(raw.ack);
                }
            }
        }
        if !refused.is_empty() && self.refused.try_send(refused).is_err() {
            tracing::warn!("the refused readings queue is full; their records are dropped");
        }
        self.hand_on(releases).await;
        metrics::gauge!("gridex_queue_depth", "queue" => "commit")
            .set((self.commit.max_capacity() - self.commit.capacity()) as f64);
    }

    async fn load_missing(&mut self, parsed: &[Result<Parsed, Rejection>]) {
        self.reload_replacements(parsed).await;
        let (mut devices, mut accounts) = self.verifier.directory.missing(parsed);
        if devices.is_empty() && accounts.is_empty() {
            return;
        }
        devices.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        accounts.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        let loaded = self
            .db
            .run(move |conn| Ok((store::load_devices(conn, &devices)?, store::load_accounts(conn, &accounts)?)))
            .await;
        match loaded {
            Ok((devices, accounts)) => {
                self.verifier.directory.devices.extend(devices);
                self.verifier.directory.accounts.extend(accounts);
            }
            // The keys stay unknown; their messages are refused as `unknown_key` this time.
            Err(error) => tracing::error!(%error, "cannot look keys up"),
        }
    }

    /// Reloads the meter replacements of the cached devices whose readings in the batch their cache
    /// would refuse for their counters ([`Directory::stale_replacements`]): the utility may have
    /// registered one since, possibly from another process.
    async fn reload_replacements(&mut self, parsed: &[Result<Parsed, Rejection>]) {
        let mut stale = self.verifier.directory.stale_replacements(parsed);
        if stale.is_empty() {
            return;
        }
        stale.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        let devices = &self.verifier.directory.devices;
        let ids: Vec<_> = stale
            .into_iter()
            .map(|id| (id, devices.get(&id).and_then(|device| device.last.as_ref()).map(|last| last.ts_ms)))
            .collect();
        match self.db.run(move |conn| store::load_replacements(conn, &ids)).await {
            Ok(found) => {
                for (id, replacements) in found {
                    if let Some(device) = self.verifier.directory.devices.get_mut(&id) {
                        device.set_replacements(replacements);
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot look meter replacements up"),
        }
    }

    /// Zones named by the batch that the verifier does not know yet: a zone registered while the
    /// exchange runs is looked up in storage (once per batch at most).
    async fn load_missing_zones(&mut self, parsed: &[Result<Parsed, Rejection>]) {
        let mut missing: Vec<ZoneId> = Vec::new();
        for item in parsed.iter().flatten() {
            let zone = item.zone();
            let served = self.ownership.may_serve(zone);
            if served && !self.verifier.directory.zones.contains_key(zone) && !missing.contains(zone) {
                missing.push(zone.clone());
            }
        }
        if missing.is_empty() {
            return;
        }
        missing.truncate(KEY_LOOKUPS_PER_BATCH_MAX);
        match self.db.run(move |conn| store::load_zones(conn, &missing)).await {
            Ok(found) => {
                let new: Vec<ZoneId> = found.keys().cloned().collect();
                self.verifier.directory.zones.extend(found);
                // A zone registered while the instances run: the first to see a message takes it.
                self.ownership.take_if_free(new).await;
            }
            Err(error) => tracing::error!(%error, "cannot look zones up"),
        }
    }
}

/// Waits for the oldest batch in flight (never resolves when there is none). A batch whose thread
/// panicked is lost: its callers are told the exchange is shutting down (their replies drop).
async fn oldest(in_flight: &mut VecDeque<InFlight>) -> Option<Prepared> {
    let Some((_, handle)) = in_flight.front_mut() else { return std::future::pending().await };
    match handle.await {
        Ok(prepared) => Some(prepared),
        Err(error) => {
            tracing::error!(%error, "a verification batch failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_reading(seed: u8, seq: u64) -> Raw {
        let key = protocol::testing::signing_key(seed);
        let reading = protocol::Reading { seq, ..protocol::testing::sample_reading(&key) };
        let bytes = protocol::Signed::sign(reading, &key).expect("signs").to_json();
        Raw { kind: Kind::Reading, origin: Origin::Direct, bytes, reply: None, ack: None, relayed: false }
    }

    /// The poison message: the second of three messages makes a step panic.
    #[test]
    fn a_message_that_makes_verification_panic_is_refused_alone_and_the_batch_goes_on() {
        // Message 3 is forged: its verdict shows that verification still ran on the others.
        let batch = || {
            let mut batch: Vec<Raw> = (1..=3).map(|seq| raw_reading(seq as u8, seq)).collect();
            let forged = String::from_utf8_lossy(&batch[2].bytes).replace("\"seq\":3", "\"seq\":4");
            batch[2].bytes = forged.into_bytes();
            batch
        };
        let verdicts = |prepared: &Prepared| -> Vec<Option<Reason>> {
            prepared.signatures.iter().map(|verdict| verdict.as_ref().map(|r| r.reason)).collect()
        };
        let is_poison = |item: &Result<Parsed, Rejection>| matches!(item, Ok(Parsed::Reading(signed, _)) if signed.message.seq == 2);

        let parse_panics = |kind: Kind, origin: &Origin, bytes: &[u8]| {
            let parsed = ingest::parse(kind, origin, bytes);
            assert!(!is_poison(&parsed), "a bug in parsing");
            parsed
        };
        let prepared = prepare_with(batch(), parse_panics, ingest::verify_signatures);
        let reasons: Vec<_> = prepared.parsed.iter().map(|item| item.as_ref().err().map(|r| r.reason)).collect();
        assert_eq!(reasons, vec![None, Some(Reason::InternalError), None]);
        assert_eq!(verdicts(&prepared), vec![None, None, Some(Reason::BadSignature)]);

        let verify_panics = |parsed: &[Result<Parsed, Rejection>]| {
            assert!(!parsed.iter().any(is_poison), "a bug in verification");
            ingest::verify_signatures(parsed)
        };
        let prepared = prepare_with(batch(), ingest::parse, verify_panics);
        let reasons: Vec<_> = prepared.parsed.iter().map(|item| item.as_ref().err().map(|r| r.reason)).collect();
        assert_eq!(reasons, vec![None, Some(Reason::InternalError), None], "only the poison message is refused");
        assert_eq!(verdicts(&prepared), vec![None, None, Some(Reason::BadSignature)], "the others were verified");
        assert_eq!(prepared.batch.len(), 3, "every message is kept, so each one's fate is answered");
    }
}
