//! The group commit: the writer stores readings, the command log and refused readings of a group
//! of verified messages in one transaction, retries a failed commit with a capped backoff, and only
//! then acknowledges, answers, and hands committed commands to their zones' owners.

use super::acks::{acknowledge, MqttAck};
use super::events::{shutting_down, Reply};
use super::outlets::{count, reject, Outlets};
use super::zones::ZoneSet;
use super::MarketEvent;
use crate::ingest::{Duplicate, Kind, Origin, Parsed, RefusedReading, Rejection, Verified};
use crate::store::{self, CommandRow, ReadingRow};
use crate::zone::{Committed, ZoneMsg};
use gridex_store::Database;
use protocol::topics;
use protocol::{AccountId, Command, ReadingAck, Reason, ZoneId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// First pause before a failed group commit is tried again: long enough for a lock or a failover
/// to clear, short enough that a passing fault costs little.
const COMMIT_RETRY_DELAY_MS_MIN: u64 = 50;
/// Longest pause between attempts: a database that is down is retried every few seconds without
/// flooding the log.
const COMMIT_RETRY_DELAY_MS_MAX: u64 = 5_000;

/// A verified message waiting for the group commit.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) verified: Verified,
    pub(super) origin: Origin,
    pub(super) reply: Option<Reply>,
    pub(super) ack: Option<MqttAck>,
    pub(super) received_ms: i64,
}

/// The group commit.
pub(super) struct Writer {
    pub(super) db: Database,
    pub(super) outlets: Outlets,
    pub(super) zones: ZoneSet,
    pub(super) delay: Duration,
    pub(super) size_max: usize,
    /// The verification stage's count of messages on their way: while it is zero, waiting for
    /// more would only delay the commit (and, since PUBACK follows the commit, the broker's next
    /// messages), so the group is committed at once.
    pub(super) verifying: Arc<AtomicUsize>,
    pub(super) resync: mpsc::Sender<(Vec<protocol::DeviceId>, Vec<AccountId>)>,
    /// Refused readings to record, from the verification stage.
    pub(super) refused: mpsc::Receiver<Vec<RefusedReading>>,
    /// Ends the retries of a failing commit.
    pub(super) shutdown: watch::Receiver<bool>,
    /// Set when a group was given up at shutdown: no later group may be stored before it.
    pub(super) abandoned: bool,
}

/// The rows one group commit writes and the resends it looks up, shared by its attempts.
#[derive(Debug, Default)]
struct GroupRows {
    readings: Vec<ReadingRow>,
    commands: Vec<CommandRow>,
    /// Readings older than their device's last accepted one: (index in the group, reading).
    to_check: Vec<(usize, protocol::Signed<protocol::Reading>)>,
    /// Commands whose nonce was seen: (index in the group, command).
    seen: Vec<(usize, Command)>,
    /// Refused readings to record (signature valid, so the device sent them).
    refused: Vec<RefusedReading>,
}

/// What the transaction found for each pending message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stored,
    Duplicate,
    Replayed,
}

impl Writer {
    pub(super) async fn run(mut self, mut pending: mpsc::Receiver<Pending>) {
        loop {
            // A group starts with a message to commit or with refused readings to record.
            let (mut group, mut refused) = tokio::select! {
                first = pending.recv() => match first {
                    Some(first) => (vec![first], Vec::new()),
                    None => break,
                },
                Some(refused) = self.refused.recv() => (Vec::new(), refused),
            };
            let deadline = tokio::time::Instant::now() + self.delay;
            while group.len() < self.size_max {
                match pending.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) if self.verifying.load(Ordering::Relaxed) == 0 => break,
                    Err(_) => match tokio::time::timeout_at(deadline, pending.recv()).await {
                        Ok(Some(item)) => group.push(item),
                        _ => break,
                    },
                }
            }
            while let Ok(more) = self.refused.try_recv() {
                refused.extend(more);
            }
            self.commit(group, refused).await;
        }
        // The verification stage has stopped: record the refusals it sent last.
        let mut refused = Vec::new();
        while let Ok(more) = self.refused.try_recv() {
            refused.extend(more);
        }
        if !refused.is_empty() {
            self.commit(Vec::new(), refused).await;
        }
        for (_, owner) in self.zones.all() {
            let _ = owner.send(ZoneMsg::Stop).await;
        }
    }

    async fn commit(&mut self, group: Vec<Pending>, refused: Vec<RefusedReading>) {
        let mut rows = GroupRows { refused, ..GroupRows::default() };
        for (index, item) in group.iter().enumerate() {
            match &item.verified {
                Verified::Reading { signed, payload, duplicate: Duplicate::No } => rows.readings.push(ReadingRow {
                    signed: signed.clone(),
                    payload: payload.clone(),
                    received_ms: item.received_ms,
                }),
                Verified::Reading { signed, duplicate: Duplicate::CheckStorage, .. } => {
                    rows.to_check.push((index, signed.clone()))
                }
                Verified::Reading { duplicate: Duplicate::OfLast, .. } => {}
                Verified::CommandSeen { command, .. } => rows.seen.push((index, command.clone())),
                Verified::Command { command, slot, payload } => {
                    rows.commands.push(CommandRow {
                        // Numbered inside the transaction (`store::take_command_seqs`).
                        command_seq: 0,
                        zone: command.zone().clone(),
                        slot: *slot,
                        account: command.account(),
                        nonce: command.nonce(),
                        kind: command.type_name().to_owned(),
                        payload: payload.clone(),
                        received_ms: item.received_ms,
                    });
                }
            }
        }
        // A zone's owner recovers its books from the log when it starts, so a zone's first commands
        // must be committed after that, or they would be applied twice.
        let mut zones: Vec<&ZoneId> = rows.commands.iter().map(|row| &row.zone).collect();
        zones.dedup();
        for zone in zones {
            if let Err(error) = self.zones.get_or_start(zone).await {
                tracing::error!(%zone, %error, "cannot start the zone's owner");
            }
        }
        match self.commit_until_stored(Arc::new(rows)).await {
            Some((commands, checked)) => {
                let mut outcomes = vec![Outcome::Stored; group.len()];
                for (index, same) in checked {
                    outcomes[index] = if same { Outcome::Duplicate } else { Outcome::Replayed };
                }
                self.after_commit(group, outcomes, commands).await;
            }
            None => self.abandon(group),
        }
    }

    /// Runs the group's transaction until it commits, retrying a failure after a capped backoff:
    /// a failed commit is never an answer to the senders (their messages are valid), and later groups
    /// wait, so what is stored stays in arrival order and the verifier's high-water marks (which
    /// assumed this group stored) stay true. `None` once the exchange is stopping while the commit
    /// still fails, or after an earlier group was abandoned.
    async fn commit_until_stored(&mut self, rows: Arc<GroupRows>) -> Option<(Vec<CommandRow>, Vec<(usize, bool)>)> {
        let mut delay_ms = COMMIT_RETRY_DELAY_MS_MIN;
        while !self.abandoned {
            let started = std::time::Instant::now();
            let attempt = rows.clone();
            let result = self
                .db
                .write(move |conn| {
                    store::insert_readings(conn, &attempt.readings)?;
                    let seqs = store::take_command_seqs(conn, attempt.commands.len())?;
                    let commands: Vec<CommandRow> = attempt
                        .commands
                        .iter()
                        .zip(seqs)
                        .map(|(row, command_seq)| CommandRow { command_seq, ..row.clone() })
                        .collect();
                    store::insert_commands(conn, &commands)?;
                    store::insert_rejections(conn, &attempt.refused)?;
                    let mut checked = Vec::with_capacity(attempt.to_check.len() + attempt.seen.len());
                    for (index, signed) in &attempt.to_check {
                        checked.push((*index, store::same_reading_stored(conn, signed)?));
                    }
                    for (index, command) in &attempt.seen {
                        checked.push((*index, store::same_command_stored(conn, command)?));
                    }
                    Ok((commands, checked))
                })
                .await;
            metrics::histogram!("gridex_group_commit_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok((commands, checked)) => {
                    return Some((commands, checked));
                }
                Err(error) => {
                    metrics::counter!("gridex_group_commit_failures_total").increment(1);
                    tracing::error!(%error, retry_in_ms = delay_ms, "group commit failed; retrying");
                }
            }
            if *self.shutdown.borrow() {
                self.abandoned = true;
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                _ = self.shutdown.changed() => {}
            }
            delay_ms = (delay_ms * 2).min(COMMIT_RETRY_DELAY_MS_MAX);
        }
        None
    }

    /// The exchange stops while storage fails: the group is not stored and not answered over MQTT.
    /// Its messages (and every later one: PUBACKs go in arrival order) stay unacknowledged, so the
    /// broker redelivers them to the exchange's session; an HTTP caller is told to retry.
    fn abandon(&self, group: Vec<Pending>) {
        let mut devices = Vec::new();
        let mut accounts = Vec::new();
        for item in group {
            match &item.verified {
                Verified::Reading { signed, .. } => devices.push(signed.message.device),
                Verified::Command { command, .. } | Verified::CommandSeen { command, .. } => {
                    accounts.push(command.account())
                }
            }
            if let Some(reply) = item.reply {
                reply.reject(Rejection::new(Reason::InternalError, "storing the message failed; retry"));
            }
            // `item.ack` is dropped undone: no PUBACK.
        }
        // The verifier advanced these senders' high-water marks; make it reload them from storage.
        if self.resync.try_send((devices, accounts)).is_err() {
            tracing::error!("the resync queue is full");
        }
    }

    async fn after_commit(&self, group: Vec<Pending>, outcomes: Vec<Outcome>, commands: Vec<CommandRow>) {
        let mut commands = commands.into_iter();
        let mut per_zone: HashMap<ZoneId, Vec<Committed>> = HashMap::new();
        for (item, outcome) in group.into_iter().zip(outcomes) {
            // Committed (or found to be a replay): final, so the broker may forget it.
            acknowledge(item.ack);
            match item.verified {
                Verified::Reading { signed, payload, .. } => {
                    if outcome == Outcome::Replayed {
                        let rejection =
                            Rejection::new(Reason::Replayed, "a different reading with this seq was stored");
                        let parsed = Parsed::Reading(signed, payload);
                        reject(&self.outlets, Kind::Reading, &item.origin, Some(&parsed), item.reply, rejection);
                        continue;
                    }
                    count(Kind::Reading, if outcome == Outcome::Duplicate { "duplicate" } else { "accepted" });
                    let reading = signed.message;
                    let ack = ReadingAck { device: reading.device, seq: reading.seq, ts_ms: reading.ts_ms };
                    self.outlets.publish_message(topics::events(&reading.zone, &reading.device), &ack);
                    self.outlets.event(MarketEvent::ReadingAccepted { zone: reading.zone, ack });
                    if let Some(Reply::Reading(reply)) = item.reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                Verified::CommandSeen { command, payload } => {
                    let rejection = if outcome == Outcome::Duplicate {
                        Rejection::new(Reason::Duplicate, "this command was accepted before; it is not applied again")
                    } else {
                        Rejection::new(Reason::Replayed, "the nonce is not greater than the last accepted one")
                    };
                    let parsed = Parsed::Command(command, payload);
                    reject(&self.outlets, Kind::Command, &item.origin, Some(&parsed), item.reply, rejection);
                }
                Verified::Command { command, .. } => {
                    let Some(row) = commands.next() else { continue };
                    let committed = Committed { row, command, reply: item.reply.and_then(Reply::into_command) };
                    per_zone.entry(committed.row.zone.clone()).or_default().push(committed);
                }
            }
        }
        for (zone, batch) in per_zone {
            let owner = match self.zones.get_or_start(&zone).await {
                Ok(Some(owner)) => owner,
                // Verified against a zone in storage, so this is a storage failure: the command is
                // in the log and the zone's books pick it up when its owner recovers.
                Ok(None) | Err(_) => {
                    tracing::error!(%zone, "cannot start the zone's owner; its commands wait in the log");
                    for committed in batch {
                        if let Some(reply) = committed.reply {
                            let _ = reply.send(Err(Rejection::new(Reason::InternalError, "the zone is unavailable")));
                        }
                    }
                    continue;
                }
            };
            if let Err(mpsc::error::SendError(ZoneMsg::Apply(batch))) = owner.send(ZoneMsg::Apply(batch)).await {
                for committed in batch {
                    if let Some(reply) = committed.reply {
                        let _ = reply.send(Err(shutting_down()));
                    }
                }
            }
        }
    }
}
