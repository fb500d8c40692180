//! The verification stage of ingest: strict parse, topic check, registered key, batch signature
//! verification, timestamp window, sequence numbers and nonces, the plausibility of readings and
//! the per-account command rate limit.
//!
//! It is pure apart from the in-memory [`Directory`] it keeps (registered keys and per-sender
//! high-water marks); the service fills missing entries from storage before calling
//! [`Verifier::check`], so the same code runs in the benchmark without a database.

use crate::config::ExchangeConfig;
use protocol::{
    verify_batch, AccountId, Cancel, CancelAll, Command, DeviceId, Order, ProtocolError, Reading, Reason, Replace,
    Signed, SlotId, Version, ZoneId,
};
use std::collections::HashMap;

mod meter;
mod plan;
mod rate;
use meter::{accept_reading, counters_check};
pub use meter::{BatteryMark, BatteryMarks, Counters, Replacement};
pub use plan::{check_plan, PlanContext};
pub use rate::{RateLimit, TokenBucket};

/// Why the exchange refused a message: the protocol reason code and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

impl From<ProtocolError> for Rejection {
    fn from(error: ProtocolError) -> Self {
        Self { reason: error.reason, message: error.detail }
    }
}

/// Which channel a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reading,
    Command,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reading => "reading",
            Kind::Command => "command",
        }
    }
}

/// Where a raw message came from: an MQTT topic (whose zone and sender must match the message, and
/// whose version the message is parsed on: `gridex/v2/…/readings/…` for a reading with a battery)
/// or a direct submission (HTTP), which has no topic (a reading is parsed on the version its own
/// fields say, `Signed::parse_as_encoded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Mqtt { version: Version, zone: String, sender: String },
    Direct,
}

/// A message that passed strict parsing and the topic check but is not verified yet.
#[derive(Debug, Clone)]
pub enum Parsed {
    Reading(Signed<Reading>, String),
    Command(Command, String),
}

impl Parsed {
    pub fn zone(&self) -> &ZoneId {
        match self {
            Parsed::Reading(signed, _) => &signed.message.zone,
            Parsed::Command(command, _) => command.zone(),
        }
    }
    pub fn sender_hex(&self) -> String {
        match self {
            Parsed::Reading(signed, _) => signed.message.device.to_hex(),
            Parsed::Command(command, _) => command.account().to_hex(),
        }
    }
    pub fn seq(&self) -> u64 {
        match self {
            Parsed::Reading(signed, _) => signed.message.seq,
            Parsed::Command(command, _) => command.nonce(),
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            Parsed::Reading(..) => <Reading as protocol::WireMessage>::TYPE,
            Parsed::Command(command, _) => command.type_name(),
        }
    }
}

/// Whether an accepted reading repeats one accepted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    /// New: store it.
    No,
    /// Identical to the device's last accepted reading: acknowledge again, store nothing.
    OfLast,
    /// Older than the last accepted reading: storage decides (same payload stored → acknowledge
    /// again; otherwise `replayed`).
    CheckStorage,
}

/// A message that passed every check of this stage, ready for the group commit.
#[derive(Debug, Clone)]
pub enum Verified {
    Reading {
        signed: Signed<Reading>,
        payload: String,
        duplicate: Duplicate,
    },
    Command {
        command: Command,
        slot: SlotId,
        payload: String,
    },
    /// A command whose nonce is not above the account's last accepted one. Storage decides: the
    /// same signed command stored under that nonce makes it a `duplicate` (a resend, such as a
    /// broker's redelivery after a restart), anything else a `replayed`. Neither is applied.
    CommandSeen {
        command: Command,
        payload: String,
    },
}

impl Verified {
    /// The zone the message is for.
    pub fn zone(&self) -> &ZoneId {
        match self {
            Verified::Reading { signed, .. } => &signed.message.zone,
            Verified::Command { command, .. } | Verified::CommandSeen { command, .. } => command.zone(),
        }
    }
}

/// What the verifier remembers of an accepted reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReading {
    pub seq: u64,
    pub ts_ms: i64,
    pub import_wh: i64,
    pub export_wh: i64,
    pub pv_wh: Option<i64>,
    /// The home battery's counters, when the reading (version 2) has them.
    pub battery_charge_wh: Option<i64>,
    pub battery_discharge_wh: Option<i64>,
    /// The signed bytes, to recognise a resend of this very reading.
    pub signing_bytes: Vec<u8>,
}

impl LastReading {
    pub fn of(signed: &Signed<Reading>) -> Self {
        let reading = &signed.message;
        Self {
            seq: reading.seq,
            ts_ms: reading.ts_ms.0,
            import_wh: reading.import_wh.0,
            export_wh: reading.export_wh.0,
            pv_wh: reading.pv_wh.map(|pv| pv.0),
            battery_charge_wh: reading.battery_charge_wh.map(|wh| wh.0),
            battery_discharge_wh: reading.battery_discharge_wh.map(|wh| wh.0),
            signing_bytes: signed.signing_bytes().to_vec(),
        }
    }

    pub fn counters(&self) -> Counters {
        Counters { import_wh: self.import_wh, export_wh: self.export_wh, pv_wh: self.pv_wh }
    }
}

/// A registered device, its high-water mark and the meter replacements registered after it.
#[derive(Debug, Clone)]
pub struct DeviceState {
    pub zone: ZoneId,
    pub nameplate_w: i64,
    pub last: Option<LastReading>,
    /// Replacements later than `last` (none is consumed until a reading after it is accepted),
    /// oldest first.
    pub replacements: Vec<Replacement>,
    /// The battery counters of the latest accepted readings that had them (not necessarily `last`:
    /// a reading may lack them), which the next ones must continue from.
    pub battery: BatteryMarks,
}

impl DeviceState {
    /// Keeps the replacements a reading after `last` could still continue from.
    pub fn set_replacements(&mut self, mut replacements: Vec<Replacement>) {
        let after_ms = self.last.as_ref().map_or(i64::MIN, |last| last.ts_ms);
        replacements.retain(|replacement| replacement.replaced_at_ms > after_ms);
        replacements.sort_by_key(|replacement| replacement.replaced_at_ms);
        self.replacements = replacements;
    }
}

/// A registered account, its nonce high-water mark and its command rate bucket.
#[derive(Debug, Clone)]
pub struct AccountState {
    /// The zone the account trades in; `None` lets it trade in any zone served.
    pub zone: Option<ZoneId>,
    pub nonce_max: Option<u64>,
    /// Its commands' token bucket ([`Limits::order_commands`]), full when the account is cached.
    /// It lives as long as the account's cache entry, so buckets are bounded by the registered
    /// accounts; an account forgotten after a failed commit comes back with a full bucket.
    pub commands: TokenBucket,
}

/// A zone the exchange knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneInfo {
    pub slot_len_ms: i64,
}

/// Registered keys, zones and per-sender high-water marks, kept in memory. Entries are added from
/// storage on a miss (only registered keys are ever cached, so it is bounded by the registry).
#[derive(Debug, Default, Clone)]
pub struct Directory {
    pub devices: HashMap<DeviceId, DeviceState>,
    pub accounts: HashMap<AccountId, AccountState>,
    pub zones: HashMap<ZoneId, ZoneInfo>,
}

impl Directory {
    /// Keys named by `parsed` that are not cached yet.
    pub fn missing(&self, parsed: &[Result<Parsed, Rejection>]) -> (Vec<DeviceId>, Vec<AccountId>) {
        let mut devices = Vec::new();
        let mut accounts = Vec::new();
        for item in parsed.iter().flatten() {
            match item {
                Parsed::Reading(signed, _) if !self.devices.contains_key(&signed.message.device) => {
                    devices.push(signed.message.device)
                }
                Parsed::Command(command, _) if !self.accounts.contains_key(&command.account()) => {
                    accounts.push(command.account())
                }
                _ => {}
            }
        }
        devices.sort();
        devices.dedup();
        accounts.sort();
        accounts.dedup();
        (devices, accounts)
    }

    /// Cached devices in `parsed` with a new reading that their cached state would refuse for its
    /// counters (lower than the last accepted reading's, or beyond the nameplate): a meter
    /// replacement may have been registered since they were cached (by another process), so the
    /// caller reloads their replacements from storage before checking. Rare, so it costs little.
    pub fn stale_replacements(&self, parsed: &[Result<Parsed, Rejection>]) -> Vec<DeviceId> {
        let mut stale: Vec<DeviceId> = Vec::new();
        for item in parsed.iter().flatten() {
            let Parsed::Reading(signed, _) = item else { continue };
            let Some(device) = self.devices.get(&signed.message.device) else { continue };
            let next = LastReading::of(signed);
            let newer = device.last.as_ref().is_some_and(|last| next.seq > last.seq && next.ts_ms > last.ts_ms);
            if newer && counters_check(device, &next).is_err() {
                stale.push(signed.message.device);
            }
        }
        stale.sort();
        stale.dedup();
        stale
    }

    /// Forgets every cached device of `zone` and every cached account that may trade in it (its own,
    /// or any zone), so they are reloaded from storage: another instance owned the zone until now.
    pub fn forget_zone(&mut self, zone: &ZoneId) {
        self.devices.retain(|_, device| device.zone != *zone);
        self.accounts.retain(|_, account| account.zone.as_ref().is_some_and(|own| own != zone));
    }

    /// Forgets what it knows of these senders, so it is reloaded from storage (after a failed commit).
    pub fn forget(&mut self, devices: &[DeviceId], accounts: &[AccountId]) {
        for device in devices {
            self.devices.remove(device);
        }
        for account in accounts {
            self.accounts.remove(account);
        }
    }
}

/// A reading refused although its signature was valid: the device really sent it, so it is recorded
/// (`reading_rejections`) and its household is shown why its meter data is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedReading {
    pub device: DeviceId,
    /// The zone the reading names: its record is stored only by the zone's owner (on PostgreSQL,
    /// while it holds the zone's lease).
    pub zone: ZoneId,
    pub seq: u64,
    pub ts_ms: i64,
    pub rejection: Rejection,
    pub received_ms: i64,
}

/// The record of a refusal worth showing the household: a reading (`parsed`) whose signature was
/// valid, of a registered device, refused for what it says. Not refusals that say nothing about the
/// reading (`overloaded`, `internal_error`) nor ones of keys or zones this exchange does not know.
pub fn refused_reading(
    parsed: Option<&Parsed>,
    signature_valid: bool,
    rejection: &Rejection,
    received_ms: i64,
) -> Option<RefusedReading> {
    let Some(Parsed::Reading(signed, _)) = parsed else { return None };
    let unrecorded = [Reason::UnknownKey, Reason::UnknownZone, Reason::Overloaded, Reason::InternalError];
    if !signature_valid || unrecorded.contains(&rejection.reason) {
        return None;
    }
    let reading = &signed.message;
    Some(RefusedReading {
        device: reading.device,
        zone: reading.zone.clone(),
        seq: reading.seq,
        ts_ms: reading.ts_ms.0,
        rejection: rejection.clone(),
        received_ms,
    })
}

/// Strict parse of one raw message and the check that its topic names its zone and sender.
pub fn parse(kind: Kind, origin: &Origin, bytes: &[u8]) -> Result<Parsed, Rejection> {
    // Strict parsing accepted the bytes as UTF-8 JSON, so the lossy conversion never replaces anything.
    let payload = || String::from_utf8_lossy(bytes).into_owned();
    let parsed = match kind {
        Kind::Reading => Parsed::Reading(
            match origin {
                Origin::Mqtt { version, .. } => Signed::<Reading>::parse_on(bytes, *version)?,
                Origin::Direct => Signed::<Reading>::parse_as_encoded(bytes)?,
            },
            payload(),
        ),
        Kind::Command => Parsed::Command(Command::parse(bytes)?, payload()),
    };
    if let Origin::Mqtt { zone, sender, .. } = origin {
        if parsed.zone().as_str() != zone {
            return Err(Rejection::new(Reason::TopicMismatch, "the topic names a different zone"));
        }
        if parsed.sender_hex() != *sender {
            return Err(Rejection::new(Reason::TopicMismatch, "the topic names a different sender"));
        }
    }
    Ok(parsed)
}

/// The slot a command is for; `None` for a cancel-all of the whole zone.
pub fn command_slot(command: &Command) -> Option<SlotId> {
    match command {
        Command::Order(signed) => Some(signed.message.slot),
        Command::Cancel(signed) => Some(signed.message.slot),
        Command::Replace(signed) => Some(signed.message.slot),
        Command::CancelAll(signed) => signed.message.slot,
    }
}

/// The slot a whole-zone cancel-all is logged under (the log has a slot per command): one slot
/// beyond the last slot an order may name at `now_ms`. Recovery loads the commands of slots after a
/// cut-off, so a row logged under a slot no earlier than any book it touched is replayed whenever
/// one of those books is rebuilt; the extra slot covers a clock that stepped back a little between
/// an order's check and the cancel-all's.
pub fn zone_wide_log_slot(slot_len_ms: i64, limits: &Limits, now_ms: i64) -> SlotId {
    SlotId::containing(protocol::TimestampMs(now_ms.saturating_add(limits.horizon_ms)), slot_len_ms).next(slot_len_ms)
}

/// The limits the checks apply, taken from [`ExchangeConfig`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub order_age_ms_max: i64,
    pub reading_age_ms_max: i64,
    pub future_skew_ms_max: i64,
    pub horizon_ms: i64,
    pub gate_closure_ms: i64,
    /// New commands (orders, cancels, replaces, cancel-alls) one account may send.
    pub order_commands: RateLimit,
}

impl From<&ExchangeConfig> for Limits {
    fn from(config: &ExchangeConfig) -> Self {
        Self {
            order_age_ms_max: config.order_age_ms_max,
            reading_age_ms_max: config.reading_age_ms_max,
            future_skew_ms_max: config.future_skew_ms_max,
            horizon_ms: config.horizon_ms,
            gate_closure_ms: config.gate_closure_ms,
            order_commands: RateLimit {
                per_s: config.order_commands_per_account_per_s,
                burst: config.order_commands_burst,
            },
        }
    }
}

/// The verification stage. Feed it parsed messages in arrival order.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub directory: Directory,
    pub limits: Limits,
}

impl Verifier {
    pub fn new(limits: Limits) -> Self {
        Self { directory: Directory::default(), limits }
    }

    /// Checks a batch: registered keys, signatures (batch-verified), freshness, plausibility. The
    /// result has one entry per input, in order. Accepted messages advance the high-water marks.
    pub fn check(&mut self, parsed: Vec<Result<Parsed, Rejection>>, now_ms: i64) -> Vec<Result<Verified, Rejection>> {
        let signatures = verify_signatures(&parsed);
        self.check_signed(parsed, signatures, now_ms)
    }

    /// The stateful half of [`Verifier::check`], for messages whose signatures
    /// [`verify_signatures`] already checked (`signatures` has one entry per input): registered
    /// key, then the signature's verdict, then freshness and plausibility, the same order of
    /// reasons as `check`. Feed batches in arrival order: this is where sequence numbers and
    /// nonces advance.
    pub fn check_signed(
        &mut self,
        parsed: Vec<Result<Parsed, Rejection>>,
        signatures: Vec<Option<Rejection>>,
        now_ms: i64,
    ) -> Vec<Result<Verified, Rejection>> {
        assert_eq!(parsed.len(), signatures.len(), "one signature verdict per message");
        parsed
            .into_iter()
            .zip(signatures)
            .map(|(item, signature)| {
                let parsed = self.check_key(item?)?;
                match signature {
                    Some(rejection) => Err(rejection),
                    None => self.check_fresh(parsed, now_ms),
                }
            })
            .collect()
    }

    fn check_key(&self, parsed: Parsed) -> Result<Parsed, Rejection> {
        let zone = parsed.zone();
        if !self.directory.zones.contains_key(zone) {
            return Err(Rejection::new(Reason::UnknownZone, format!("zone `{zone}` is not served here")));
        }
        let registered_zone = match &parsed {
            Parsed::Reading(signed, _) => match self.directory.devices.get(&signed.message.device) {
                Some(device) => Some(&device.zone),
                None => return Err(Rejection::new(Reason::UnknownKey, "the device is not registered")),
            },
            Parsed::Command(command, _) => match self.directory.accounts.get(&command.account()) {
                Some(account) => account.zone.as_ref(),
                None => return Err(Rejection::new(Reason::UnknownKey, "the account is not registered")),
            },
        };
        match registered_zone {
            Some(registered) if registered != zone => {
                Err(Rejection::new(Reason::ZoneMismatch, format!("the key is registered to zone `{registered}`")))
            }
            _ => Ok(parsed),
        }
    }

    fn check_fresh(&mut self, parsed: Parsed, now_ms: i64) -> Result<Verified, Rejection> {
        match parsed {
            Parsed::Reading(signed, payload) => self.check_reading(signed, payload, now_ms),
            Parsed::Command(command, payload) => self.check_command(command, payload, now_ms),
        }
    }

    fn check_window(&self, ts_ms: i64, age_ms_max: i64, now_ms: i64) -> Result<(), Rejection> {
        if ts_ms < now_ms.saturating_sub(age_ms_max) {
            return Err(Rejection::new(Reason::TimestampTooOld, format!("older than {age_ms_max} ms")));
        }
        if ts_ms > now_ms.saturating_add(self.limits.future_skew_ms_max) {
            return Err(Rejection::new(Reason::TimestampInFuture, "the timestamp is ahead of the exchange's clock"));
        }
        Ok(())
    }

    fn check_reading(&mut self, signed: Signed<Reading>, payload: String, now_ms: i64) -> Result<Verified, Rejection> {
        let device = self
            .directory
            .devices
            .get(&signed.message.device)
            .ok_or_else(|| Rejection::new(Reason::UnknownKey, "the device is not registered"))?;
        // A resend of an accepted reading is answered before the window: it was fresh when accepted.
        if let Some(last) = &device.last {
            if signed.message.seq == last.seq {
                return if last.signing_bytes == signed.signing_bytes() {
                    Ok(Verified::Reading { signed, payload, duplicate: Duplicate::OfLast })
                } else {
                    Err(Rejection::new(Reason::Replayed, "a different reading with this seq was accepted"))
                };
            }
            if signed.message.seq < last.seq {
                return Ok(Verified::Reading { signed, payload, duplicate: Duplicate::CheckStorage });
            }
        }
        self.check_window(signed.message.ts_ms.0, self.limits.reading_age_ms_max, now_ms)?;
        let device = self
            .directory
            .devices
            .get_mut(&signed.message.device)
            .ok_or_else(|| Rejection::new(Reason::UnknownKey, "the device is not registered"))?;
        accept_reading(device, LastReading::of(&signed))?;
        Ok(Verified::Reading { signed, payload, duplicate: Duplicate::No })
    }

    fn check_command(&mut self, command: Command, payload: String, now_ms: i64) -> Result<Verified, Rejection> {
        // A resend of an accepted command is recognised before the window and the slot checks: it
        // was fresh when accepted, and "duplicate" tells its sender more than "gate_closed".
        let seen = self.directory.accounts.get(&command.account()).and_then(|account| account.nonce_max);
        if seen.is_some_and(|max| command.nonce() <= max) {
            return Ok(Verified::CommandSeen { command, payload });
        }
        self.check_window(command.ts_ms().0, self.limits.order_age_ms_max, now_ms)?;
        let zone = self
            .directory
            .zones
            .get(command.zone())
            .copied()
            .ok_or_else(|| Rejection::new(Reason::UnknownZone, "the zone is not served here"))?;
        let slot = match command_slot(&command) {
            Some(slot) => {
                check_slot(slot, zone.slot_len_ms, &self.limits, now_ms)?;
                slot
            }
            None => zone_wide_log_slot(zone.slot_len_ms, &self.limits, now_ms),
        };
        let account = self
            .directory
            .accounts
            .get_mut(&command.account())
            .ok_or_else(|| Rejection::new(Reason::UnknownKey, "the account is not registered"))?;
        // Last, so only a command that would be logged takes a token; a refused one leaves the
        // nonce where it was, so the same signed command may be sent again once there is room.
        let limit = self.limits.order_commands;
        account.commands.take(now_ms, limit).map_err(|wait_ms| {
            Rejection::new(
                Reason::RateLimited,
                format!(
                    "more than {} commands per second ({} at once) from this account; retry in {wait_ms} ms",
                    limit.per_s, limit.burst
                ),
            )
        })?;
        account.nonce_max = Some(command.nonce());
        Ok(Verified::Command { command, slot, payload })
    }
}

/// The stateless half of verification: batch-verifies the signatures of the messages that parsed
/// (a message's signer is its key, so no registry is needed). One entry per input: the rejection
/// of a bad signature, `None` for a good one or an input that did not parse. Pure, so any thread
/// may run it on any batch; [`Verifier::check_signed`] then applies the verdicts in arrival order.
pub fn verify_signatures(parsed: &[Result<Parsed, Rejection>]) -> Vec<Option<Rejection>> {
    let mut readings: Vec<(usize, &Signed<Reading>)> = Vec::new();
    let mut orders: Vec<(usize, &Signed<Order>)> = Vec::new();
    let mut cancels: Vec<(usize, &Signed<Cancel>)> = Vec::new();
    let mut replaces: Vec<(usize, &Signed<Replace>)> = Vec::new();
    let mut cancel_alls: Vec<(usize, &Signed<CancelAll>)> = Vec::new();
    for (index, item) in parsed.iter().enumerate() {
        match item {
            Ok(Parsed::Reading(signed, _)) => readings.push((index, signed)),
            Ok(Parsed::Command(Command::Order(signed), _)) => orders.push((index, signed)),
            Ok(Parsed::Command(Command::Cancel(signed), _)) => cancels.push((index, signed)),
            Ok(Parsed::Command(Command::Replace(signed), _)) => replaces.push((index, signed)),
            Ok(Parsed::Command(Command::CancelAll(signed), _)) => cancel_alls.push((index, signed)),
            Err(_) => {}
        }
    }
    let mut verdicts: Vec<Option<Rejection>> = vec![None; parsed.len()];
    let failures = failed(&readings)
        .into_iter()
        .chain(failed(&orders))
        .chain(failed(&cancels))
        .chain(failed(&replaces))
        .chain(failed(&cancel_alls));
    for (index, error) in failures {
        verdicts[index] = Some(error.into());
    }
    verdicts
}

fn failed<T: protocol::Signable>(batch: &[(usize, &Signed<T>)]) -> Vec<(usize, ProtocolError)> {
    if batch.is_empty() {
        return Vec::new();
    }
    let refs: Vec<&Signed<T>> = batch.iter().map(|(_, signed)| *signed).collect();
    verify_batch(&refs)
        .into_iter()
        .zip(batch)
        .filter_map(|(result, (index, _))| result.err().map(|error| (*index, error)))
        .collect()
}

/// The slot must be aligned, not yet past gate closure, and within the horizon.
pub fn check_slot(slot: SlotId, slot_len_ms: i64, limits: &Limits, now_ms: i64) -> Result<(), Rejection> {
    if !slot.is_aligned(slot_len_ms) {
        return Err(Rejection::new(Reason::SlotMisaligned, format!("slots start at multiples of {slot_len_ms} ms")));
    }
    if slot.start_ms().saturating_add(slot_len_ms) <= now_ms {
        return Err(Rejection::new(Reason::SlotNotOpen, "the slot has been delivered"));
    }
    if slot.start_ms().saturating_sub(limits.gate_closure_ms) <= now_ms {
        return Err(Rejection::new(Reason::GateClosed, "gate closure for the slot has passed"));
    }
    if slot.start_ms() > now_ms.saturating_add(limits.horizon_ms) {
        return Err(Rejection::new(Reason::SlotNotOpen, "the slot is beyond the trading horizon"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An hour's horizon, gate closure 5 minutes before a slot, a minute's age for orders and readings.
    fn limits() -> Limits {
        Limits {
            order_age_ms_max: 60_000,
            reading_age_ms_max: 60_000,
            future_skew_ms_max: 1_000,
            horizon_ms: 3_600_000,
            gate_closure_ms: 300_000,
            order_commands: RateLimit { per_s: 20, burst: 100 },
        }
    }

    fn signed(seq: u64, ts_ms: i64, import_wh: i64) -> Signed<Reading> {
        let key = protocol::testing::signing_key(7);
        let mut reading = protocol::testing::sample_reading(&key);
        reading.seq = seq;
        reading.ts_ms = protocol::TimestampMs(ts_ms);
        reading.import_wh = protocol::Wh(import_wh);
        reading.pv_wh = None;
        Signed::sign(reading, &key).expect("sign")
    }

    #[test]
    fn only_readings_with_a_valid_signature_refused_for_what_they_say_are_recorded() {
        let parsed = Parsed::Reading(signed(3, 1_000, 5), String::new());
        let implausible = Rejection::new(Reason::ImplausibleEnergy, "too much");
        let recorded = refused_reading(Some(&parsed), true, &implausible, 42).expect("recorded");
        assert_eq!((recorded.seq, recorded.ts_ms, recorded.received_ms), (3, 1_000, 42));
        assert_eq!(recorded.rejection, implausible);
        assert!(refused_reading(Some(&parsed), false, &implausible, 42).is_none(), "a forged signature");
        let unknown = Rejection::new(Reason::UnknownKey, "not registered");
        assert!(refused_reading(Some(&parsed), true, &unknown, 42).is_none(), "no device to record it under");
        assert!(refused_reading(None, true, &implausible, 42).is_none(), "did not parse");
    }

    #[test]
    fn a_cached_device_whose_reading_would_be_refused_for_its_counters_is_stale() {
        let first = signed(1, 1_000, 5_000);
        let zone = ZoneId::parse("z").expect("a zone id");
        let mut state = DeviceState {
            zone,
            nameplate_w: 10_000,
            last: None,
            replacements: Vec::new(),
            battery: BatteryMarks::default(),
        };
        state.last = Some(LastReading::of(&first));
        let mut directory = Directory::default();
        directory.devices.insert(first.message.device, state);
        let batch = |reading: Signed<Reading>| vec![Ok(Parsed::Reading(reading, String::new()))];
        assert!(directory.stale_replacements(&batch(signed(2, 2_000, 5_001))).is_empty(), "continues");
        assert!(directory.stale_replacements(&batch(first.clone())).is_empty(), "a resend");
        assert!(directory.stale_replacements(&batch(signed(2, 500, 1))).is_empty(), "refused for its time anyway");
        assert_eq!(directory.stale_replacements(&batch(signed(2, 2_000, 10))), vec![first.message.device]);
    }

    /// Guards recovery of a whole-zone cancel-all: it is replayed only while its logged slot is after
    /// the cut-off, so that slot must be after every slot an order accepted up to then may name.
    #[test]
    fn a_whole_zone_cancel_all_is_logged_after_every_slot_an_order_may_name() {
        let limits = limits();
        let slot_len_ms = 900_000;
        for now_ms in [9_000_000, 9_000_001, 9_899_999] {
            let logged = zone_wide_log_slot(slot_len_ms, &limits, now_ms);
            assert!(logged.is_aligned(slot_len_ms));
            let last_open = (0..200)
                .map(|n| SlotId::new(n * slot_len_ms).expect("a slot"))
                .filter(|slot| check_slot(*slot, slot_len_ms, &limits, now_ms).is_ok())
                .max()
                .expect("some slot is open");
            assert!(logged > last_open, "at {now_ms}: {logged} after {last_open}");
        }
    }

    #[test]
    fn slots_must_be_aligned_open_and_within_the_horizon() {
        let limits = limits();
        let now_ms = 9_000_000;
        let slot = |start_ms| SlotId::new(start_ms).expect("a slot");
        assert!(check_slot(slot(9_900_000), 900_000, &limits, now_ms).is_ok());
        let reason = |start_ms| check_slot(slot(start_ms), 900_000, &limits, now_ms).expect_err("refused").reason;
        assert_eq!(reason(9_900_001), Reason::SlotMisaligned);
        assert_eq!(reason(9_000_000), Reason::GateClosed);
        assert_eq!(reason(8_100_000), Reason::SlotNotOpen);
        assert_eq!(reason(13_500_000), Reason::SlotNotOpen);
    }
}
