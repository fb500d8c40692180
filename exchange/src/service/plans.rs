//! The battery plan stage (PROTOCOL.md §4.7): takes `battery_plan` messages from the plans topics,
//! verifies them (strict parse, topic, the account's signature, registry, timing, a per-account
//! rate) and stores each account's latest one (`store::plans`). A plan is information for the
//! household, not a command: it never reaches the verifier's order path, a book or the ledger, so
//! it has its own small stage beside them. Like every inbound message its PUBACK goes out only once
//! its fate is final: stored, or refused with a signed `reject` on the account's rejects topic.
//! A failed write is retried (never refused); at shutdown it is left unacknowledged, for redelivery.

use super::acks::{acknowledge, MqttAck};
use super::events::MarketEvent;
use super::outlets::Outlets;
use crate::ingest::{check_plan, Limits, RateLimit, Rejection, TokenBucket};
use crate::store::plans::{plan_context, store_plan, PlanStored};
use gridex_store::Database;
use protocol::{topics, AccountId, BatteryPlan, Reason, Reject, Signed, TimestampMs, ZoneId};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Plans an account may have stored: one a second, ten at once. An agent sends one a slot or when
/// its plan changes; this bounds what a registered account's flood costs in writes. Buckets are
/// kept for registered accounts only (after the registry check), so memory is bounded by the registry.
const PLAN_RATE: RateLimit = RateLimit { per_s: 1, burst: 10 };
/// Plans waiting for the stage. A full queue makes the MQTT listener reconnect (the broker
/// redelivers), as for the ingest queue; an agent sends one a slot, so this is never reached in use.
pub(super) const PLANS_QUEUE_LEN: usize = 256;
/// First and longest pause before a failed write is tried again.
const RETRY_DELAY_MS_MIN: u64 = 50;
const RETRY_DELAY_MS_MAX: u64 = 5_000;

/// A `battery_plan` as it arrived on `gridex/v1/{zone}/plans/{account}`.
#[derive(Debug)]
pub(crate) struct RawPlan {
    pub(super) zone: String,
    pub(super) account: String,
    pub(super) bytes: Vec<u8>,
    pub(super) ack: Option<MqttAck>,
}

/// The stage: one task, plans in arrival order.
pub(super) struct PlanStage {
    pub(super) db: Database,
    pub(super) outlets: Outlets,
    pub(super) limits: Limits,
    pub(super) buckets: HashMap<AccountId, TokenBucket>,
}

/// A plan's fate.
enum Verdict {
    Stored,
    Same,
    /// Refused, with the plan's nonce when it verified.
    Refused(Option<u64>, Rejection),
}

impl PlanStage {
    /// Takes plans until `shutdown`, then what was queued before it, and ends (the listener, which
    /// holds the sender, ends only after the core tasks).
    pub(super) async fn run(mut self, mut plans: mpsc::Receiver<RawPlan>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                raw = plans.recv() => match raw {
                    Some(raw) => self.one(raw, &shutdown).await,
                    None => return,
                },
                _ = shutdown.changed() => break,
            }
        }
        plans.close();
        while let Ok(raw) = plans.try_recv() {
            self.one(raw, &shutdown).await;
        }
    }

    async fn one(&mut self, raw: RawPlan, shutdown: &watch::Receiver<bool>) {
        // `None`: shutting down with the write still failing; unacknowledged, so redelivered.
        let Some(verdict) = self.decide(&raw, shutdown).await else { return };
        match verdict {
            Verdict::Stored => metrics::counter!("gridex_battery_plans_total", "result" => "stored").increment(1),
            Verdict::Same => metrics::counter!("gridex_battery_plans_total", "result" => "same").increment(1),
            Verdict::Refused(nonce, rejection) => self.refuse(&raw, nonce, rejection),
        }
        acknowledge(raw.ack);
    }

    /// What becomes of `raw`; `None` only when the database keeps failing until shutdown.
    async fn decide(&mut self, raw: &RawPlan, shutdown: &watch::Receiver<bool>) -> Option<Verdict> {
        let signed = match parse(raw) {
            Ok(signed) => signed,
            Err(rejection) => return Some(Verdict::Refused(None, rejection)),
        };
        let mut delay_ms = RETRY_DELAY_MS_MIN;
        loop {
            match self.check_and_store(&signed, raw).await {
                Ok(Ok(stored)) => return Some(stored),
                Ok(Err(rejection)) => return Some(Verdict::Refused(Some(signed.message.nonce), rejection)),
                Err(error) => {
                    tracing::error!(%error, "cannot store a battery plan; retrying");
                    if *shutdown.borrow() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    delay_ms = (delay_ms * 2).min(RETRY_DELAY_MS_MAX);
                }
            }
        }
    }

    /// The registry and timing checks, the rate, then the write (which decides on the nonce).
    async fn check_and_store(
        &mut self,
        signed: &Signed<BatteryPlan>,
        raw: &RawPlan,
    ) -> Result<Result<Verdict, Rejection>, gridex_store::DbError> {
        let plan = signed.message.clone();
        let context = self.db.run(move |conn| plan_context(conn, &plan)).await?;
        let now_ms = self.outlets.now_ms();
        if let Err(rejection) = check_plan(&signed.message, &context, &self.limits, now_ms) {
            return Ok(Err(rejection));
        }
        let bucket = self.buckets.entry(signed.message.account).or_default();
        if let Err(wait_ms) = bucket.take(now_ms, PLAN_RATE) {
            let message = format!("more than {} plans a second; retry in {wait_ms} ms", PLAN_RATE.per_s);
            return Ok(Err(Rejection::new(Reason::RateLimited, message)));
        }
        let to_store = signed.clone();
        let payload = String::from_utf8_lossy(&raw.bytes).into_owned();
        let stored = self.db.write(move |conn| store_plan(conn, &to_store, &payload, now_ms)).await?;
        Ok(match stored {
            PlanStored::Stored => Ok(Verdict::Stored),
            PlanStored::Same => Ok(Verdict::Same),
            PlanStored::Replayed { stored_nonce } => Err(Rejection::new(
                Reason::Replayed,
                format!("nonce {} is not above the stored plan's {stored_nonce}", signed.message.nonce),
            )),
        })
    }

    /// Publishes a signed `reject` on the account's rejects topic (the topic's account: a plan
    /// that does not parse names none) and tells in-process subscribers.
    fn refuse(&self, raw: &RawPlan, nonce: Option<u64>, rejection: Rejection) {
        metrics::counter!("gridex_battery_plans_total", "result" => rejection.reason.code()).increment(1);
        let mut message = rejection.message;
        message.truncate(protocol::messages::REJECT_MESSAGE_LEN_MAX);
        let reject = Reject {
            of: <BatteryPlan as protocol::WireMessage>::TYPE.to_owned(),
            seq: nonce,
            reason: rejection.reason,
            message,
            ts_ms: TimestampMs(self.outlets.now_ms()),
        };
        let zone = ZoneId::parse(&raw.zone).ok();
        if let Some(zone) = &zone {
            self.outlets.publish_message(topics::rejects(zone, &raw.account), &reject);
        }
        self.outlets.event(MarketEvent::Rejected { zone, sender: Some(raw.account.clone()), reject });
    }
}

/// Strict parse, the topic check (its zone and account are the plan's) and the signature.
fn parse(raw: &RawPlan) -> Result<Signed<BatteryPlan>, Rejection> {
    let signed = Signed::<BatteryPlan>::parse(&raw.bytes)?;
    if signed.message.zone.as_str() != raw.zone {
        return Err(Rejection::new(Reason::TopicMismatch, "the topic names a different zone"));
    }
    if signed.message.account.to_hex() != raw.account {
        return Err(Rejection::new(Reason::TopicMismatch, "the topic names a different account"));
    }
    signed.verify()?;
    Ok(signed)
}
