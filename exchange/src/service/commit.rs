//! The group commit: the writer stores readings, the command log and refused readings of a group
//! of verified messages in one transaction, retries a failed commit with a capped backoff, and only
//! then acknowledges, answers, and hands committed commands to their zones' owners. On PostgreSQL
//! every transaction first checks, for each zone among its rows, that this instance still holds the
//! zone's lease with its fencing token (`store::leases::fence`); the rows of a zone taken over are not
//! stored, their MQTT messages are acknowledged unanswered (the sender resends, to the new owner) and
//! an HTTP caller is told the zone moved. It also lets a released lease go, behind the messages
//! verified before the release.

use super::acks::{acknowledge, MqttAck};
use super::events::{shutting_down, Reply};
use super::outlets::{count, reject, Outlets};
use super::ownership::Ownership;
use super::zones::ZoneSet;
use super::MarketEvent;
use crate::ingest::{Duplicate, Kind, Origin, Parsed, RefusedReading, Rejection, Verified};
use crate::store::{self, CommandRow, ReadingRow};
use crate::zone::{Committed, ZoneMsg};
use gridex_store::Database;
use protocol::topics;
use protocol::{AccountId, Command, ReadingAck, Reason, ZoneId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

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

/// What the verification stage hands the group commit, in order.
#[derive(Debug)]
// Nearly every item is a message: boxing it would cost an allocation per message for a rare release.
#[allow(clippy::large_enum_variant)]
pub(super) enum ToCommit {
    Message(Pending),
    /// Let a lease go once every message before it is committed (sent by the lease manager through
    /// the verification stage, after it stopped taking the zone's messages).
    Release(Release),
}

/// What the lease manager tells the verification stage, in order (defined here, beside the release
/// it carries on to the group commit, so the stages import one way: leases, verify → commit).
#[derive(Debug)]
pub(super) enum Notice {
    /// Forget every cached device and account of this zone (another owner may have changed them).
    Forget(ZoneId),
    /// Hand this release to the group commit after every message already verified.
    Release(Release),
}

/// A lease to let go ([`super::leases`]); `done` is answered once it is.
#[derive(Debug)]
pub(super) struct Release {
    pub(super) zone: ZoneId,
    pub(super) token: i64,
    pub(super) done: oneshot::Sender<()>,
}

/// What an HTTP caller is told when its message's zone moved to another instance before it was
/// stored: nothing of it was stored, so a retry is safe (and reaches the new owner).
pub(super) fn zone_moved() -> Rejection {
    Rejection::new(Reason::InternalError, "zone moved to another exchange instance; nothing was stored, retry")
}

/// The group commit.
pub(super) struct Writer {
    pub(super) db: Database,
    pub(super) outlets: Outlets,
    pub(super) zones: ZoneSet,
    /// The zones this instance commits for, with their fencing tokens on PostgreSQL.
    pub(super) ownership: Ownership,
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
    /// The index in the group of each of `commands`.
    command_index: Vec<usize>,
    /// Readings older than their device's last accepted one: (index in the group, reading).
    to_check: Vec<(usize, protocol::Signed<protocol::Reading>)>,
    /// Commands whose nonce was seen: (index in the group, command).
    seen: Vec<(usize, Command)>,
    /// Refused readings to record (signature valid, so the device sent them).
    refused: Vec<RefusedReading>,
    /// With leases: every zone among the rows, with the token this instance holds it with.
    fences: HashMap<ZoneId, Option<i64>>,
}

impl GroupRows {
    /// Notes the token of every zone among the rows (leases only).
    fn fence(&mut self, ownership: &Ownership) {
        if !ownership.leasing() {
            return;
        }
        let zones = (self.readings.iter().map(|row| &row.signed.message.zone))
            .chain(self.commands.iter().map(|row| &row.zone))
            .chain(self.to_check.iter().map(|(_, signed)| &signed.message.zone))
            .chain(self.seen.iter().map(|(_, command)| command.zone()))
            .chain(self.refused.iter().map(|refused| &refused.zone));
        for zone in zones {
            if !self.fences.contains_key(zone) {
                self.fences.insert(zone.clone(), ownership.token(zone));
            }
        }
    }
}

/// What one transaction stored: the numbered commands, the resends it looked up, and the zones it
/// stored nothing of (their leases are another instance's).
type Stored = (Vec<CommandRow>, Vec<(usize, bool)>, HashSet<ZoneId>);

/// What the transaction found for each pending message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stored,
    Duplicate,
    Replayed,
    /// Not stored: the zone's lease is another instance's.
    Moved,
}

/// The refusal of a command the log already holds (`Duplicate`) or whose nonce is not above the
/// last one logged (any other outcome).
fn command_seen_rejection(outcome: Outcome) -> Rejection {
    if outcome == Outcome::Duplicate {
        Rejection::new(Reason::Duplicate, "this command was accepted before; it is not applied again")
    } else {
        Rejection::new(Reason::Replayed, "the nonce is not greater than the last accepted one")
    }
}

impl Writer {
    pub(super) async fn run(mut self, mut pending: mpsc::Receiver<ToCommit>) {
        loop {
            // A group starts with a message to commit or with refused readings to record.
            let (mut group, mut refused) = tokio::select! {
                first = pending.recv() => match first {
                    Some(ToCommit::Message(first)) => (vec![first], Vec::new()),
                    Some(ToCommit::Release(release)) => {
                        self.release(release).await;
                        continue;
                    }
                    None => break,
                },
                Some(refused) = self.refused.recv() => (Vec::new(), refused),
            };
            let deadline = tokio::time::Instant::now() + self.delay;
            // A release ends the group: it goes after the messages verified before it.
            let mut release = None;
            while group.len() < self.size_max {
                let next = match pending.try_recv() {
                    Ok(next) => next,
                    Err(_) if self.verifying.load(Ordering::Relaxed) == 0 => break,
                    Err(_) => match tokio::time::timeout_at(deadline, pending.recv()).await {
                        Ok(Some(next)) => next,
                        _ => break,
                    },
                };
                match next {
                    ToCommit::Message(item) => group.push(item),
                    ToCommit::Release(next) => {
                        release = Some(next);
                        break;
                    }
                }
            }
            while let Ok(more) = self.refused.try_recv() {
                refused.extend(more);
            }
            self.commit(group, refused).await;
            if let Some(release) = release {
                self.release(release).await;
            }
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

    /// Lets a lease go (if this instance still holds it with that token); if that fails, it
    /// expires. Either way the lease manager may forget the zone: every message taken for it is
    /// committed.
    async fn release(&self, release: Release) {
        let Release { zone, token, done } = release;
        let instance = self.ownership.instance_id().to_owned();
        let asked = zone.clone();
        if let Err(error) = self.db.run(move |conn| crate::store::leases::release(conn, &asked, &instance, token)).await
        {
            tracing::warn!(%error, %zone, "cannot release the zone's lease; it expires");
        }
        let _ = done.send(());
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
                    rows.command_index.push(index);
                    rows.commands.push(CommandRow {
                        // Numbered inside the transaction (`store::take_command_seqs`).
                        command_seq: 0,
                        zone: command.zone().clone(),
                        slot: *slot,
                        account: command.account(),
                        nonce: command.nonce(),
                        kind: store::log_kind(command).to_owned(),
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
        rows.fence(&self.ownership);
        let fences = rows.fences.clone();
        match self.commit_until_stored(Arc::new(rows)).await {
            Some((commands, checked, moved)) => {
                let mut outcomes = vec![Outcome::Stored; group.len()];
                for (index, same) in checked {
                    outcomes[index] = if same { Outcome::Duplicate } else { Outcome::Replayed };
                }
                for (index, item) in group.iter().enumerate() {
                    if moved.contains(item.verified.zone()) {
                        outcomes[index] = Outcome::Moved;
                    }
                }
                for zone in &moved {
                    metrics::counter!("gridex_zone_fenced_commits_total").increment(1);
                    tracing::warn!(%zone, "the zone's lease is another instance's: its messages were not stored");
                    self.ownership.lost(zone, fences.get(zone).copied().flatten());
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
    async fn commit_until_stored(&mut self, rows: Arc<GroupRows>) -> Option<Stored> {
        let mut delay_ms = COMMIT_RETRY_DELAY_MS_MIN;
        while !self.abandoned {
            let started = std::time::Instant::now();
            let attempt = rows.clone();
            let instance = self.ownership.instance_id().to_owned();
            let result = self
                .db
                .write(move |conn| {
                    // First, and under a lock on each lease row until the commit: see `fence`.
                    let moved: HashSet<ZoneId> = if attempt.fences.is_empty() {
                        HashSet::new()
                    } else {
                        store::leases::fence(conn, &instance, &attempt.fences)?.into_iter().collect()
                    };
                    let kept = |zone: &ZoneId| !moved.contains(zone);
                    let readings: Vec<ReadingRow> =
                        attempt.readings.iter().filter(|row| kept(&row.signed.message.zone)).cloned().collect();
                    store::insert_readings(conn, &readings)?;
                    let mut checked = Vec::with_capacity(attempt.to_check.len() + attempt.seen.len());
                    let kept_commands: Vec<(usize, CommandRow)> = attempt
                        .command_index
                        .iter()
                        .zip(&attempt.commands)
                        .filter(|(_, row)| kept(&row.zone))
                        .map(|(index, row)| (*index, row.clone()))
                        .collect();
                    // With leases, nonces are checked per instance: see `store::logged_nonces`.
                    let logged = if attempt.fences.is_empty() {
                        Vec::new()
                    } else {
                        let rows: Vec<CommandRow> = kept_commands.iter().map(|(_, row)| row.clone()).collect();
                        store::logged_nonces(conn, &rows)?
                    };
                    for (position, same) in &logged {
                        checked.push((kept_commands[*position].0, *same));
                    }
                    let to_number: Vec<&CommandRow> = kept_commands
                        .iter()
                        .enumerate()
                        .filter(|(position, _)| !logged.iter().any(|(logged, _)| logged == position))
                        .map(|(_, (_, row))| row)
                        .collect();
                    let seqs = store::take_command_seqs(conn, to_number.len())?;
                    let commands: Vec<CommandRow> = to_number
                        .into_iter()
                        .zip(seqs)
                        .map(|(row, command_seq)| CommandRow { command_seq, ..row.clone() })
                        .collect();
                    store::insert_commands(conn, &commands)?;
                    let refused: Vec<RefusedReading> =
                        attempt.refused.iter().filter(|refused| kept(&refused.zone)).cloned().collect();
                    store::insert_rejections(conn, &refused)?;
                    for (index, signed) in attempt.to_check.iter().filter(|(_, signed)| kept(&signed.message.zone)) {
                        checked.push((*index, store::same_reading_stored(conn, signed)?));
                    }
                    for (index, command) in attempt.seen.iter().filter(|(_, command)| kept(command.zone())) {
                        checked.push((*index, store::same_command_stored(conn, command)?));
                    }
                    Ok((commands, checked, moved))
                })
                .await;
            metrics::histogram!("gridex_group_commit_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(stored) => {
                    return Some(stored);
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
        let (mut stale_devices, mut stale_accounts) = (Vec::new(), Vec::new());
        for (item, outcome) in group.into_iter().zip(outcomes) {
            // Committed (or found to be a replay): final, so the broker may forget it. A message of
            // a zone that moved is final for this instance too: acknowledged unanswered, so its
            // sender resends it, and the resend reaches the zone's new owner.
            acknowledge(item.ack);
            if outcome == Outcome::Moved {
                metrics::counter!("gridex_moved_messages_total").increment(1);
                match &item.verified {
                    Verified::Reading { signed, .. } => stale_devices.push(signed.message.device),
                    Verified::Command { command, .. } | Verified::CommandSeen { command, .. } => {
                        stale_accounts.push(command.account())
                    }
                }
                if let Some(reply) = item.reply {
                    reply.reject(zone_moved());
                }
                continue;
            }
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
                    let parsed = Parsed::Command(command, payload);
                    let rejection = command_seen_rejection(outcome);
                    reject(&self.outlets, Kind::Command, &item.origin, Some(&parsed), item.reply, rejection);
                }
                Verified::Command { command, payload, .. } if outcome != Outcome::Stored => {
                    // Its nonce was logged by another instance meanwhile: refused as a resend would be.
                    stale_accounts.push(command.account());
                    let parsed = Parsed::Command(command, payload);
                    let rejection = command_seen_rejection(outcome);
                    reject(&self.outlets, Kind::Command, &item.origin, Some(&parsed), item.reply, rejection);
                }
                Verified::Command { command, .. } => {
                    let Some(row) = commands.next() else { continue };
                    let committed = Committed { row, command, reply: item.reply.and_then(Reply::into_command) };
                    per_zone.entry(committed.row.zone.clone()).or_default().push(committed);
                }
            }
        }
        // The verifier advanced these senders' high-water marks for messages that were not stored.
        if (!stale_devices.is_empty() || !stale_accounts.is_empty())
            && self.resync.try_send((stale_devices, stale_accounts)).is_err()
        {
            tracing::error!("the resync queue is full");
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
