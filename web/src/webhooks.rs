//! Webhooks: a utility registers a URL and receives an HMAC-SHA256 signed POST whenever a slot is
//! settled, retried with exponential backoff (capped) until the receiver answers 2xx or the
//! registration is deleted.
//!
//! Registrations and the outbox of unacknowledged deliveries are database rows (`webhooks`,
//! `webhook_deliveries`), so a restart forgets neither: a delivery is written to the outbox before
//! its first attempt, deleted once acknowledged, and the dispatcher picks up whatever is due when it
//! starts. Which settled slots have been written to the outbox is itself stored (`webhook_cursor`,
//! in `settlement_slots` order), so a slot settled while the server was down, or one a lagging live
//! feed missed, is still delivered, and an acknowledged one is never delivered again.
//! Several servers may share the database: a delivery is claimed before it is attempted (its next
//! attempt moved past the attempt's timeout, if nobody moved it first), so one server posts it at a
//! time; if that server dies mid-attempt the delivery is due again once the claim runs out. A
//! receiver may still see a delivery twice (an acknowledgement lost on the way back), so it should
//! deduplicate by `X-Gridex-Delivery`.
//! Registrations, outbox rows and concurrent attempts are bounded. Secrets are never logged,
//! and never returned after registration.

use crate::live::{LiveEvent, SlotSettled};
use crate::settings::WebhookSettings;
use crate::webhook_targets::{CheckedResolver, TargetPolicy};
use diesel::prelude::*;
use gridex_store::schema::{webhook_cursor, webhook_deliveries, webhooks};
use gridex_store::{Database, DbConnection, DbError};
use hmac::{Hmac, Mac};
use protocol::{SlotId, ZoneId};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinSet;

/// Settled slots written to the outbox per catch-up transaction, at most.
pub const CATCH_UP_BATCH_LEN_MAX: i64 = 64;
/// Catch up with settled slots every this many outbox polls even without a live event.
const CATCH_UP_EVERY_POLLS: u32 = 20;

/// Registered webhooks at most: each settled slot fans out to all of them.
pub const WEBHOOKS_MAX: i64 = 100;
/// Longest accepted URL.
pub const WEBHOOK_URL_LEN_MAX: usize = 2_048;
/// Unacknowledged deliveries at most. A body is a few hundred bytes, so this caps the outbox at tens
/// of megabytes; it is a day of 15-minute slots for a thousand dead receivers. Beyond it new
/// deliveries are dropped, counted (`result="dropped"`) and logged.
pub const OUTBOX_LEN_MAX: i64 = 100_000;
/// HTTP attempts in flight at most: one slow receiver must not hold up the others, and a hundred
/// dead ones must not open a hundred sockets at once.
pub const ATTEMPTS_IN_FLIGHT_MAX: usize = 16;
/// Due deliveries read per look at the outbox.
pub const DUE_BATCH_LEN_MAX: i64 = 64;
/// How often the dispatcher looks at the outbox when nothing woke it: the granularity of retries.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest error text kept with a delivery.
pub const LAST_ERROR_LEN_MAX: usize = 200;
/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, see [`signature`].
pub const SIGNATURE_HEADER: &str = "X-Gridex-Signature";
/// How far a delivery's signed time may be from the receiver's clock in the documented check
/// ([`verify_signature`]): five minutes cover clock skew and a slow attempt (at most `timeout_ms`),
/// while a captured delivery replayed later than that is refused.
pub const SIGNATURE_TOLERANCE_S: i64 = 300;
/// A claim on a delivery lasts the attempt's timeout and this much more.
pub const CLAIM_MARGIN_MS: i64 = 5_000;

/// A registration as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub registered_by: String,
    pub created_ms: i64,
    /// Deliveries not acknowledged yet.
    pub pending_deliveries: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the URL must be http:// or https:// and at most 2048 characters")]
    BadUrl,
    #[error("at most 100 webhooks can be registered")]
    TooMany,
    /// The URL's host is (or resolves to) a loopback, private, link-local or other non-public
    /// address that the allow list does not name.
    #[error("refused webhook target: {0}")]
    RefusedTarget(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The `X-Gridex-Signature` of `body` sent at `unix_s`: `t=<unix_s>,v1=<hex>` where the hex is
/// HMAC-SHA256(secret, "<unix_s>.<body>"). Signing the time lets a receiver refuse a captured
/// delivery replayed later ([`verify_signature`]); every attempt is signed afresh.
pub fn signature(secret: &str, unix_s: i64, body: &[u8]) -> String {
    format!("t={unix_s},v1={}", hex::encode(mac(secret, unix_s, body).finalize().into_bytes()))
}

fn mac(secret: &str, unix_s: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a receiver refuses a delivery's signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not t=<unix seconds>,v1=<64 hex digits>")]
    Malformed,
    #[error("the signed time is more than the tolerance away from now: a replay or a skewed clock")]
    OutsideTolerance,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// The receiver's check, as documented in README and PROTOCOL.md: parse `t` and `v1`, refuse a
/// `t` more than `tolerance_s` from `now_s`, recompute the HMAC over `"<t>.<body>"` and compare in
/// constant time. (Deduplicating by `X-Gridex-Delivery` is the receiver's other half.)
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let (mut unix_s, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => unix_s = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(unix_s), Some(v1)) = (unix_s, v1) else { return Err(SignatureError::Malformed) };
    if unix_s.abs_diff(now_s) > tolerance_s.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance);
    }
    // `verify_slice` compares in constant time.
    mac(secret, unix_s, body).verify_slice(&v1).map_err(|_| SignatureError::Mismatch)
}

/// Wait before attempt `attempts + 1` after `attempts` failed ones: the initial backoff doubling per
/// failure, capped at `backoff_max_ms`.
pub fn backoff_ms(settings: &WebhookSettings, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(63);
    settings.backoff_initial_ms.saturating_mul(1_u64 << doublings).min(settings.backoff_max_ms)
}

/// Wall-clock unix milliseconds: retries wait for the receiver in real time, whatever the market
/// clock does (the demo runs it faster).
fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The registry, outbox and dispatcher. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    db: Database,
    settings: WebhookSettings,
    /// Where deliveries may go (public addresses and the allow list).
    targets: TargetPolicy,
    /// Wakes the dispatcher when deliveries were added.
    added: Arc<Notify>,
    stop: Arc<watch::Sender<bool>>,
}

/// A due delivery with what an attempt needs.
#[derive(Clone)]
struct Due {
    webhook_id: String,
    event_id: String,
    url: String,
    secret: String,
    body: String,
    attempts: i64,
    /// When it became due, as read: the claim succeeds only if nobody changed it since.
    next_attempt_ms: i64,
}

impl std::fmt::Debug for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Due")
            .field("webhook_id", &self.webhook_id)
            .field("event_id", &self.event_id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// A malformed entry of `settings.allowed_private_networks` is logged and ignored (it admits
    /// nothing); [`crate::settings::Settings::load`] refuses such settings at start.
    pub fn new(db: Database, settings: WebhookSettings) -> Webhooks {
        let targets = TargetPolicy::new(&settings.allowed_private_networks).unwrap_or_else(|error| {
            tracing::error!(%error, "webhooks.allowed_private_networks is malformed; allowing no private network");
            TargetPolicy::default()
        });
        Webhooks { db, settings, targets, added: Arc::new(Notify::new()), stop: Arc::new(watch::channel(false).0) }
    }

    /// Registers `url`; returns the registration and its secret (shown once).
    pub async fn register(&self, url: &str, registered_by: &str) -> Result<(Webhook, String), WebhookError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| WebhookError::BadUrl)?;
        let valid = url.len() <= WEBHOOK_URL_LEN_MAX
            && (url.starts_with("http://") || url.starts_with("https://"))
            && parsed.host_str().is_some();
        if !valid {
            return Err(WebhookError::BadUrl);
        }
        self.targets.check_url(&parsed).await.map_err(WebhookError::RefusedTarget)?;
        let mut rng = rand::rng();
        let id: [u8; 8] = rng.random();
        let secret: [u8; 32] = rng.random();
        let hook = Webhook {
            id: hex::encode(id),
            url: url.to_owned(),
            registered_by: registered_by.to_owned(),
            created_ms: wall_ms(),
            pending_deliveries: 0,
        };
        let (row, secret) = (hook.clone(), hex::encode(secret));
        let stored_secret = secret.clone();
        let registered = self
            .db
            .write(move |conn| {
                let count: i64 = webhooks::table.count().get_result(conn)?;
                if count >= WEBHOOKS_MAX {
                    return Ok(false);
                }
                diesel::insert_into(webhooks::table)
                    .values((
                        webhooks::webhook_id.eq(&row.id),
                        webhooks::url.eq(&row.url),
                        webhooks::secret.eq(&stored_secret),
                        webhooks::registered_by.eq(&row.registered_by),
                        webhooks::created_ms.eq(row.created_ms),
                    ))
                    .execute(conn)?;
                Ok(true)
            })
            .await?;
        if !registered {
            return Err(WebhookError::TooMany);
        }
        Ok((hook, secret))
    }

    /// Every registration, oldest first, with its count of pending deliveries.
    pub async fn list(&self) -> Result<Vec<Webhook>, DbError> {
        self.db
            .run(|conn| {
                let rows: Vec<(String, String, String, i64)> = webhooks::table
                    .order((webhooks::created_ms.asc(), webhooks::webhook_id.asc()))
                    .select((webhooks::webhook_id, webhooks::url, webhooks::registered_by, webhooks::created_ms))
                    .load(conn)?;
                let pending: Vec<(String, i64)> = webhook_deliveries::table
                    .group_by(webhook_deliveries::webhook_id)
                    .select((webhook_deliveries::webhook_id, diesel::dsl::count_star()))
                    .load(conn)?;
                Ok(rows
                    .into_iter()
                    .map(|(id, url, registered_by, created_ms)| {
                        let pending_deliveries =
                            pending.iter().find(|(hook, _)| *hook == id).map_or(0, |(_, count)| *count);
                        Webhook { id, url, registered_by, created_ms, pending_deliveries }
                    })
                    .collect())
            })
            .await
    }

    /// The registrations of `utility` ([`Webhooks::list`] filtered by `registered_by`).
    pub async fn list_registered_by(&self, utility: &str) -> Result<Vec<Webhook>, DbError> {
        let mut hooks = self.list().await?;
        hooks.retain(|hook| hook.registered_by == utility);
        Ok(hooks)
    }

    /// Deletes a registration of `utility` and its pending deliveries; `false` if `utility` has no
    /// such registration (another utility's is left alone, and answers as if there were none).
    pub async fn delete_registered_by(&self, id: &str, utility: &str) -> Result<bool, DbError> {
        let (id, utility) = (id.to_owned(), utility.to_owned());
        self.db
            .write(move |conn| {
                let owned: i64 = webhooks::table
                    .filter(webhooks::webhook_id.eq(&id))
                    .filter(webhooks::registered_by.eq(&utility))
                    .count()
                    .get_result(conn)?;
                if owned == 0 {
                    return Ok(false);
                }
                diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::webhook_id.eq(&id)))
                    .execute(conn)?;
                let deleted = diesel::delete(webhooks::table.find(&id)).execute(conn)?;
                Ok(deleted > 0)
            })
            .await
    }

    /// Deletes a registration and its pending deliveries; `false` if there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, DbError> {
        let id = id.to_owned();
        self.db
            .write(move |conn| {
                diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::webhook_id.eq(&id)))
                    .execute(conn)?;
                let deleted = diesel::delete(webhooks::table.find(&id)).execute(conn)?;
                Ok(deleted > 0)
            })
            .await
    }

    /// Unacknowledged deliveries.
    pub async fn pending(&self) -> Result<i64, DbError> {
        self.db.run(|conn| Ok(webhook_deliveries::table.count().get_result(conn)?)).await
    }

    /// Writes the deliveries of every slot settled since the last one written (one per registration
    /// and slot) and wakes the dispatcher. Returns how many deliveries were added.
    pub async fn catch_up(&self) -> Result<usize, DbError> {
        let mut added = 0;
        loop {
            let now_ms = wall_ms();
            let (batch_added, dropped, more) = self.db.write(move |conn| catch_up_batch(conn, now_ms)).await?;
            added += batch_added;
            if dropped > 0 {
                metrics::counter!("gridex_webhook_deliveries_total", "result" => "dropped").increment(dropped as u64);
                tracing::warn!(dropped, "webhook deliveries dropped: the outbox is full");
            }
            if !more {
                break;
            }
        }
        if added > 0 {
            self.added.notify_one();
        }
        Ok(added)
    }

    /// Stops the dispatcher ([`Webhooks::run`]); attempts in flight are abandoned and stay in the
    /// outbox for the next start.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Writes every settlement of `events` to the outbox and delivers the outbox until stopped.
    pub async fn run(self, mut events: broadcast::Receiver<LiveEvent>) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_millis(self.settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf, past the address check.
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { policy: self.targets.clone() }))
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "webhooks disabled: cannot build the HTTP client");
                return;
            }
        };
        let stopped = stopped(self.stop.subscribe());
        tokio::pin!(stopped);
        let mut attempts: JoinSet<(String, String)> = JoinSet::new();
        let mut in_flight: HashSet<(String, String)> = HashSet::new();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events_open = true;
        // The first tick catches up with what was settled while the server was down.
        let mut polls: u32 = 0;
        loop {
            tokio::select! {
                () = &mut stopped => break,
                event = events.recv(), if events_open => match event {
                    Ok(LiveEvent::Settlement(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.catch_up_logged().await;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                Some(done) = attempts.join_next() => {
                    if let Ok(key) = done {
                        in_flight.remove(&key);
                    }
                }
                () = self.added.notified() => self.dispatch(&client, &mut attempts, &mut in_flight).await,
                _ = poll.tick() => {
                    polls = polls.wrapping_add(1);
                    if polls % CATCH_UP_EVERY_POLLS == 1 {
                        self.catch_up_logged().await;
                    }
                    self.dispatch(&client, &mut attempts, &mut in_flight).await;
                }
            }
        }
        attempts.shutdown().await;
    }

    async fn catch_up_logged(&self) {
        if let Err(error) = self.catch_up().await {
            tracing::error!(%error, "cannot write webhook deliveries of settled slots");
        }
    }

    /// Starts attempts for due deliveries that are not in flight, up to the concurrency limit.
    async fn dispatch(
        &self,
        client: &reqwest::Client,
        attempts: &mut JoinSet<(String, String)>,
        in_flight: &mut HashSet<(String, String)>,
    ) {
        let free = ATTEMPTS_IN_FLIGHT_MAX.saturating_sub(in_flight.len());
        if free == 0 {
            return;
        }
        let now_ms = wall_ms();
        let due = match self.db.run(move |conn| load_due(conn, now_ms)).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read the webhook outbox");
                return;
            }
        };
        let startable: Vec<Due> = due
            .into_iter()
            .filter(|due| !in_flight.contains(&(due.webhook_id.clone(), due.event_id.clone())))
            .take(free)
            .collect();
        let until_ms = now_ms
            .saturating_add(i64::try_from(self.settings.timeout_ms).unwrap_or(i64::MAX))
            .saturating_add(CLAIM_MARGIN_MS);
        let claimed = match self.db.write(move |conn| claim(conn, startable, until_ms)).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "cannot claim webhook deliveries");
                return;
            }
        };
        for due in claimed {
            in_flight.insert((due.webhook_id.clone(), due.event_id.clone()));
            let (client, this) = (client.clone(), self.clone());
            attempts.spawn(async move {
                let outcome = attempt(&client, &this.targets, &due).await;
                this.record(&due, outcome).await;
                (due.webhook_id, due.event_id)
            });
        }
    }

    /// Deletes an acknowledged delivery, or schedules the next attempt of a failed one.
    async fn record(&self, due: &Due, outcome: Result<(), String>) {
        let (webhook_id, event_id) = (due.webhook_id.clone(), due.event_id.clone());
        let key = move || {
            webhook_deliveries::table
                .filter(webhook_deliveries::webhook_id.eq(webhook_id))
                .filter(webhook_deliveries::event_id.eq(event_id))
        };
        let attempts = due.attempts.saturating_add(1);
        let written = match outcome {
            Ok(()) => {
                metrics::counter!("gridex_webhook_deliveries_total", "result" => "delivered").increment(1);
                self.db.write(move |conn| Ok(diesel::delete(key()).execute(conn)?)).await
            }
            Err(mut error) => {
                metrics::counter!("gridex_webhook_deliveries_total", "result" => "retried").increment(1);
                let wait_ms = backoff_ms(&self.settings, u32::try_from(attempts).unwrap_or(u32::MAX));
                tracing::info!(webhook = %due.webhook_id, event = %due.event_id, attempts, wait_ms, %error,
                    "webhook delivery failed; retrying");
                truncate_at_char(&mut error, LAST_ERROR_LEN_MAX);
                let next_ms = wall_ms().saturating_add(i64::try_from(wait_ms).unwrap_or(i64::MAX));
                self.db
                    .write(move |conn| {
                        Ok(diesel::update(key())
                            .set((
                                webhook_deliveries::attempts.eq(attempts),
                                webhook_deliveries::next_attempt_ms.eq(next_ms),
                                webhook_deliveries::last_error.eq(Some(error)),
                            ))
                            .execute(conn)?)
                    })
                    .await
            }
        };
        if let Err(error) = written {
            // The row stays as it was: the delivery is attempted again (at most once more than needed).
            tracing::warn!(webhook = %due.webhook_id, %error, "cannot record a webhook attempt");
        }
    }
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One catch-up transaction: the deliveries of up to [`CATCH_UP_BATCH_LEN_MAX`] slots settled after
/// the cursor, and the cursor moved past them. Returns (added, dropped, more slots may follow).
/// Without registrations the cursor jumps to the last settled slot: history is never replayed to a
/// receiver registered later.
fn catch_up_batch(conn: &mut DbConnection, now_ms: i64) -> Result<(usize, usize, bool), DbError> {
    conn.transaction(|conn| {
        let cursor: Option<(i64, String, i64)> = webhook_cursor::table
            .select((webhook_cursor::closed_ms, webhook_cursor::zone_id, webhook_cursor::slot_start_ms))
            .first(conn)
            .optional()?;
        let hooks: i64 = webhooks::table.count().get_result(conn)?;
        let rows = settlement::queries::settled_slots_after(conn, cursor.clone(), hooks == 0, CATCH_UP_BATCH_LEN_MAX)?;
        let Some(last) = rows.last().cloned() else { return Ok((0, 0, false)) };
        let (mut added, mut dropped) = (0, 0);
        if hooks > 0 {
            for (_, zone_id, slot_ms, root, statements) in &rows {
                let (Ok(zone), Ok(slot)) = (ZoneId::parse(zone_id), SlotId::new(*slot_ms)) else {
                    return Err(DbError::Invalid(format!("settled slot {zone_id}/{slot_ms} is malformed")));
                };
                let settled = SlotSettled {
                    zone,
                    slot,
                    root: root.clone(),
                    statements: u64::try_from(*statements).unwrap_or_default(),
                };
                let event_id = format!("slot_settled/{zone_id}/{slot_ms}");
                let body = serde_json::json!({ "event": "slot_settled", "data": settled }).to_string();
                let utility = zone_utility(conn, &settled.zone)?;
                let (batch_added, batch_dropped) =
                    insert_deliveries_for(conn, &event_id, &body, Some(&utility), now_ms)?;
                added += batch_added;
                dropped += batch_dropped;
            }
        }
        let (closed_ms, zone_id, slot_ms, _, _) = last;
        let values = (
            webhook_cursor::closed_ms.eq(closed_ms),
            webhook_cursor::zone_id.eq(zone_id),
            webhook_cursor::slot_start_ms.eq(slot_ms),
        );
        if cursor.is_some() {
            diesel::update(webhook_cursor::table).set(values).execute(conn)?;
        } else {
            diesel::insert_into(webhook_cursor::table).values((webhook_cursor::id.eq(1_i64), values)).execute(conn)?;
        }
        let more = hooks > 0 && rows.len() as i64 == CATCH_UP_BATCH_LEN_MAX;
        Ok((added, dropped, more))
    })
}

/// The utility whose webhooks hear of `zone`: the name in its account `utility:<name>`.
fn zone_utility(conn: &mut DbConnection, zone: &ZoneId) -> Result<String, DbError> {
    let found = settlement::registry::zone(conn, zone).map_err(|error| match error {
        settlement::registry::RegistryError::Db(error) => error,
        other => DbError::Invalid(other.to_string()),
    })?;
    let account = found.map(|zone| zone.utility_account).unwrap_or_default();
    Ok(account.strip_prefix("utility:").unwrap_or_default().to_owned())
}

/// Inserts the missing deliveries of `event_id`; returns (added, dropped because the outbox is full).
#[cfg(test)]
fn insert_deliveries(
    conn: &mut DbConnection,
    event_id: &str,
    body: &str,
    now_ms: i64,
) -> Result<(usize, usize), DbError> {
    insert_deliveries_for(conn, event_id, body, None, now_ms)
}

/// Like [`insert_deliveries`], to the registrations of `utility` only when given (a zone's events
/// go to its own utility's webhooks, never to another utility's).
fn insert_deliveries_for(
    conn: &mut DbConnection,
    event_id: &str,
    body: &str,
    utility: Option<&str>,
    now_ms: i64,
) -> Result<(usize, usize), DbError> {
    let mut query = webhooks::table.select(webhooks::webhook_id).order(webhooks::webhook_id.asc()).into_boxed();
    if let Some(utility) = utility {
        query = query.filter(webhooks::registered_by.eq(utility.to_owned()));
    }
    let hooks: Vec<String> = query.load(conn)?;
    let existing: Vec<String> = webhook_deliveries::table
        .filter(webhook_deliveries::event_id.eq(event_id))
        .select(webhook_deliveries::webhook_id)
        .load(conn)?;
    let missing: Vec<&String> = hooks.iter().filter(|hook| !existing.contains(hook)).collect();
    let queued: i64 = webhook_deliveries::table.count().get_result(conn)?;
    let room = usize::try_from(OUTBOX_LEN_MAX.saturating_sub(queued)).unwrap_or(0);
    let added = missing.len().min(room);
    // One row per registration (at most WEBHOOKS_MAX), once per settled slot: not a hot path.
    for hook in &missing[..added] {
        diesel::insert_into(webhook_deliveries::table)
            .values((
                webhook_deliveries::webhook_id.eq(hook.as_str()),
                webhook_deliveries::event_id.eq(event_id),
                webhook_deliveries::body.eq(body),
                webhook_deliveries::attempts.eq(0_i64),
                webhook_deliveries::next_attempt_ms.eq(now_ms),
                webhook_deliveries::created_ms.eq(now_ms),
                webhook_deliveries::last_error.eq(None::<String>),
            ))
            .execute(conn)?;
    }
    Ok((added, missing.len() - added))
}

/// Claims each of `due` until `until_ms` (moves its next attempt there) unless another server moved
/// it since it was read; returns the claimed ones.
fn claim(conn: &mut DbConnection, due: Vec<Due>, until_ms: i64) -> Result<Vec<Due>, DbError> {
    let mut claimed = Vec::with_capacity(due.len());
    for due in due {
        let updated = diesel::update(
            webhook_deliveries::table
                .filter(webhook_deliveries::webhook_id.eq(&due.webhook_id))
                .filter(webhook_deliveries::event_id.eq(&due.event_id))
                .filter(webhook_deliveries::next_attempt_ms.eq(due.next_attempt_ms)),
        )
        .set(webhook_deliveries::next_attempt_ms.eq(until_ms))
        .execute(conn)?;
        if updated == 1 {
            claimed.push(due);
        }
    }
    Ok(claimed)
}

/// The deliveries due at `now_ms`, soonest first, with their registration's URL and secret.
fn load_due(conn: &mut DbConnection, now_ms: i64) -> Result<Vec<Due>, DbError> {
    let rows: Vec<(String, String, String, i64, i64, String, String)> = webhook_deliveries::table
        .inner_join(webhooks::table)
        .filter(webhook_deliveries::next_attempt_ms.le(now_ms))
        .order((webhook_deliveries::next_attempt_ms.asc(), webhook_deliveries::created_ms.asc()))
        .limit(DUE_BATCH_LEN_MAX)
        .select((
            webhook_deliveries::webhook_id,
            webhook_deliveries::event_id,
            webhook_deliveries::body,
            webhook_deliveries::attempts,
            webhook_deliveries::next_attempt_ms,
            webhooks::url,
            webhooks::secret,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(webhook_id, event_id, body, attempts, next_attempt_ms, url, secret)| Due {
            webhook_id,
            event_id,
            url,
            secret,
            body,
            attempts,
            next_attempt_ms,
        })
        .collect())
}

/// One POST; `Ok` on a 2xx answer. Errors carry no URL (it may hold a token). An IP literal is
/// checked here; a name is checked by the client's resolver, on the addresses it connects to.
async fn attempt(client: &reqwest::Client, targets: &TargetPolicy, due: &Due) -> Result<(), String> {
    let url = reqwest::Url::parse(&due.url).map_err(|_| "the stored URL does not parse".to_owned())?;
    if let Some(address) = url.host_str().and_then(|host| host.trim_matches(['[', ']']).parse().ok()) {
        targets.check(address)?;
    }
    let unix_s = wall_ms().div_euclid(1_000);
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(&due.secret, unix_s, due.body.as_bytes()))
        .header("X-Gridex-Event", "slot_settled")
        .header("X-Gridex-Delivery", &due.event_id)
        .header("X-Gridex-Delivery-Attempt", due.attempts.saturating_add(1).to_string())
        .body(due.body.clone())
        .send()
        .await
        .map_err(|error| error.without_url().to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}

fn truncate_at_char(text: &mut String, len_max: usize) {
    if text.len() > len_max {
        let mut end = len_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_time_a_dot_and_the_body() {
        // HMAC-SHA256("Jefe", "1700000000.what do ya want for nothing?"), computed independently
        // (Python's hmac module): the key of RFC 4231 test case 2 with the time prepended.
        let header = signature("Jefe", 1_700_000_000, b"what do ya want for nothing?");
        assert_eq!(header, "t=1700000000,v1=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e");
        let check = |body: &[u8], now_s| verify_signature("Jefe", &header, body, now_s, SIGNATURE_TOLERANCE_S);
        assert_eq!(check(b"what do ya want for nothing?", 1_700_000_000 + 300), Ok(()));
        assert_eq!(check(b"what do ya want for nothing?", 1_700_000_000 + 301), Err(SignatureError::OutsideTolerance));
        assert_eq!(check(b"what do ya want for nothing!", 1_700_000_000), Err(SignatureError::Mismatch));
        let forged_time = header.replace("t=1700000000", "t=1700000600");
        let check_forged = verify_signature("Jefe", &forged_time, b"what do ya want for nothing?", 1_700_000_600, 300);
        assert_eq!(check_forged, Err(SignatureError::Mismatch), "the time is signed too");
        assert_eq!(verify_signature("Jefe", "sha256=00", b"", 0, 300), Err(SignatureError::Malformed));
    }

    #[test]
    fn the_backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let settings = WebhookSettings { backoff_initial_ms: 1_000, backoff_max_ms: 600_000, ..Default::default() };
        let waits: Vec<u64> = (1..=12).map(|attempts| backoff_ms(&settings, attempts)).collect();
        assert_eq!(&waits[..4], &[1_000, 2_000, 4_000, 8_000]);
        assert_eq!(waits[9], 512_000);
        assert_eq!(waits[10], 600_000, "capped");
        assert_eq!(backoff_ms(&settings, u32::MAX), 600_000, "no overflow after very many failures");
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let mut text = "é".repeat(150);
        truncate_at_char(&mut text, LAST_ERROR_LEN_MAX);
        assert!(text.len() <= LAST_ERROR_LEN_MAX && text.chars().all(|ch| ch == 'é'));
    }

    /// Two servers read the same due delivery; only the first claim wins, and the claim holds the
    /// delivery back until it runs out.
    #[tokio::test]
    async fn a_due_delivery_is_claimed_by_one_server_only() {
        for test_db in gridex_store::testing::TestDb::all() {
            let hooks = Webhooks::new(test_db.db.clone(), loopback_allowed());
            hooks.register("http://127.0.0.1:9/hook", "u").await.expect("registered");
            let now_ms = 1_000_000;
            let read = |now_ms| test_db.db.run(move |conn| load_due(conn, now_ms));
            test_db
                .db
                .write(move |conn| insert_deliveries(conn, "slot_settled/z/0", "{}", now_ms))
                .await
                .expect("queued");
            let (first, second) = (read(now_ms).await.expect("due"), read(now_ms).await.expect("due"));
            assert_eq!((first.len(), second.len()), (1, 1), "both servers see it due");
            let until_ms = now_ms + 40_000;
            let won = test_db.db.write(move |conn| claim(conn, first, until_ms)).await.expect("claims");
            let lost = test_db.db.write(move |conn| claim(conn, second, until_ms)).await.expect("claims");
            assert_eq!((won.len(), lost.len()), (1, 0));
            assert!(read(until_ms - 1).await.expect("due").is_empty(), "held while claimed");
            assert_eq!(read(until_ms).await.expect("due").len(), 1, "due again once the claim runs out");
        }
    }

    #[tokio::test]
    async fn only_http_urls_are_accepted() {
        let db = gridex_store::testing::TestDb::sqlite();
        let hooks = Webhooks::new(db.db.clone(), loopback_allowed());
        assert!(matches!(hooks.register("ftp://x", "u").await, Err(WebhookError::BadUrl)));
        assert!(hooks.register("http://127.0.0.1:9/x", "u").await.is_ok());
    }

    fn loopback_allowed() -> WebhookSettings {
        WebhookSettings { allowed_private_networks: vec!["127.0.0.1".to_owned()], ..WebhookSettings::default() }
    }

    /// The check at delivery time: a registration stored while its target was allowed (or whose
    /// name resolved elsewhere then) is not posted once the target is refused; nothing connects.
    #[tokio::test]
    async fn a_delivery_to_a_refused_address_is_not_attempted() {
        let receiver = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        receiver.set_nonblocking(true).expect("non-blocking");
        let port = receiver.local_addr().expect("address").port();
        // A deadline only so that a wrong build fails instead of hanging on the silent listener.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { policy: TargetPolicy::default() }))
            .build()
            .expect("client");
        for url in [format!("http://127.0.0.1:{port}/hook"), format!("http://localhost:{port}/hook")] {
            let due = Due {
                webhook_id: "w".into(),
                event_id: "e".into(),
                url,
                secret: "s".into(),
                body: "{}".into(),
                attempts: 0,
                next_attempt_ms: 0,
            };
            let error = attempt(&client, &TargetPolicy::default(), &due).await.expect_err("refused");
            assert!(receiver.accept().is_err(), "no connection was made ({error})");
        }
    }

    /// The checked resolver keeps the URL's port: a name resolving to an allowed address is reached.
    #[tokio::test]
    async fn a_name_resolving_to_an_allowed_address_is_reached_on_its_port() {
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = receiver.local_addr().expect("address").port();
        let policy = TargetPolicy::new(&["127.0.0.1".to_owned(), "::1".to_owned()]).expect("valid");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { policy: policy.clone() }))
            .build()
            .expect("client");
        let answer = tokio::spawn(async move {
            let (mut socket, _) = receiver.accept().await.expect("a connection");
            let mut buffer = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await;
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, reply).await;
        });
        let due = Due {
            webhook_id: "w".into(),
            event_id: "e".into(),
            url: format!("http://localhost:{port}/hook"),
            secret: "s".into(),
            body: "{}".into(),
            attempts: 0,
            next_attempt_ms: 0,
        };
        assert_eq!(attempt(&client, &policy, &due).await, Ok(()));
        answer.await.expect("the receiver answered");
    }
}
