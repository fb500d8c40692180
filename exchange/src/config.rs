//! The exchange's settings, with defaults that need no file.

use ed25519_dalek::SigningKey;
use protocol::{PricePerKwh, Wh, ZoneId};

/// Market timing defaults (defined once, in `protocol`, because gateways assume them too): 15-minute
/// slots (the European intraday standard), books open a day ahead, gate closure five minutes before
/// delivery (time for the grid operator to schedule).
pub use protocol::market::{GATE_CLOSURE_MS_DEFAULT, HORIZON_MS_DEFAULT, SLOT_LEN_MS_DEFAULT};
/// An order older than a minute is more likely a replay than a slow network.
pub const ORDER_AGE_MS_MAX_DEFAULT: i64 = 60 * 1000;
/// Gateways buffer readings while offline; a week of buffering still settles.
pub const READING_AGE_MS_MAX_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Clock skew we tolerate from a sender whose clock runs ahead.
pub const FUTURE_SKEW_MS_MAX_DEFAULT: i64 = 30 * 1000;
/// A group commit waits at most this long for more messages, and only while more are being
/// verified (otherwise it commits at once): a few ms keeps acks fast.
pub const GROUP_COMMIT_DELAY_MS_DEFAULT: u64 = 3;
/// And takes at most this many messages in one transaction.
pub const GROUP_COMMIT_SIZE_MAX_DEFAULT: usize = 1_024;
/// Raw messages waiting for verification; beyond this the exchange answers `overloaded`.
pub const INGEST_QUEUE_LEN_DEFAULT: usize = 8_192;
/// Verified messages waiting for the group commit.
pub const COMMIT_QUEUE_LEN_DEFAULT: usize = 4_096;
/// Committed commands waiting for one zone's books.
pub const ZONE_QUEUE_LEN_DEFAULT: usize = 4_096;
/// Outbound MQTT messages waiting for the publisher.
pub const PUBLISH_QUEUE_LEN_DEFAULT: usize = 16_384;
/// Messages verified together: large enough for batch verification to pay off (~2× at 64).
pub const VERIFY_BATCH_MAX_DEFAULT: usize = 256;
/// Batches whose signatures are verified at once, each on its own blocking thread. Ed25519
/// verification is the exchange's main cost (tens of µs per message), so by default every core
/// may verify; the stateful checks stay on one task, in arrival order.
pub fn verify_workers_default() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
/// How long a zone's lease lasts without renewal (on PostgreSQL): an instance that stops renewing
/// (crashed, paused, cut off from the database) loses its zones after this. Five renewal intervals,
/// so a few slow database round trips never cost a healthy instance its zones, yet a dead owner's
/// zones move within seconds.
pub const LEASE_TTL_MS_DEFAULT: u64 = 5_000;
/// How often an instance heartbeats, renews its leases and takes free ones: once a second is a few
/// cheap statements per instance, and bounds how late a free zone is taken.
pub const LEASE_RENEW_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// How long a gridex server waits for the owner of another instance's zone to answer a command it
/// relayed over the broker (on PostgreSQL): far above a loaded owner's group commit (milliseconds to
/// a few hundred), short enough for an HTTP client to wait. A command relayed to an owner that just
/// died waits in the dead owner's broker session, so its caller is answered only by this timeout
/// and retries, by then at the new owner (failover: `lease_ttl_ms` + `lease_renew_interval_ms`).
pub const RELAY_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// This instance's name in the lease table: the host name, the process id and a random suffix, so
/// two processes on one host, or a restarted one, are never taken for each other.
pub fn instance_id_default() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "exchange".to_owned());
    // std's hasher keys are random per process: a random suffix without a dependency.
    let random = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), std::process::id());
    format!("{host}-{}-{:08x}", std::process::id(), random as u32)
}
/// Market events buffered per `subscribe()` receiver before a slow one starts lagging.
pub const EVENT_BROADCAST_LEN: usize = 4_096;

/// A household places a handful of orders per slot; a hundred leaves room for trading bots.
pub const OPEN_ORDERS_PER_ACCOUNT_MAX_DEFAULT: usize = 100;
/// A household's agent sends a few commands per slot and a quoting bot a few per second when the
/// book moves; 20 per second per account is far above either, yet a flood from one account is then
/// a few tenths of a percent of what the exchange applies (6–12k orders/s, exchange/BENCHMARKS.md).
pub const ORDER_COMMANDS_PER_ACCOUNT_PER_S_DEFAULT: u32 = 20;
/// Commands one account may send at once before the sustained rate applies: room to place or
/// replace an order in each of a day's 96 quarter-hour slots at once.
pub const ORDER_COMMANDS_BURST_DEFAULT: u32 = 100;
/// Gate closures are checked five times a second: a 15-minute slot closes within 200 ms of its gate.
pub const TICK_INTERVAL_MS_DEFAULT: u64 = 200;
/// Book price band when a zone has no tariff and none is configured: one tick to a thousand ticks.
pub const FALLBACK_BAND_TICKS: i64 = 1_000;

/// A zone whose slots end in a closing auction: for the last `call_ms` before gate closure orders rest
/// without trading, and at gate closure they cross at one uniform price (see `matching::auction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosingAuction {
    pub zone: ZoneId,
    /// Length of the call phase, ending at gate closure.
    pub call_ms: i64,
}

/// Everything the service needs to know besides the database, the clock and the broker.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// The operator's key: it signs everything the exchange publishes (PROTOCOL.md §2.1), the same
    /// key settlement signs slot roots with. Receivers pin its public half.
    pub operator_key: SigningKey,
    /// Zones served; empty means every zone in the registry.
    pub zones: Vec<ZoneId>,
    /// Slot length used when a zone does not set its own (zones' `slot_len_ms` wins).
    pub slot_len_ms: i64,
    pub horizon_ms: i64,
    pub gate_closure_ms: i64,
    /// Price increment in µ/kWh.
    pub tick: PricePerKwh,
    pub qty_min: Wh,
    pub qty_max: Wh,
    /// Price band for every zone instead of the tariff's feed-in..retail (both ends included).
    pub price_band: Option<(PricePerKwh, PricePerKwh)>,
    pub order_age_ms_max: i64,
    pub reading_age_ms_max: i64,
    pub future_skew_ms_max: i64,
    pub group_commit_delay_ms: u64,
    pub group_commit_size_max: usize,
    pub ingest_queue_len: usize,
    pub commit_queue_len: usize,
    pub zone_queue_len: usize,
    pub publish_queue_len: usize,
    pub verify_batch_max: usize,
    /// Verification batches in flight at once, each on a blocking thread (at least 1).
    pub verify_workers: usize,
    /// Most orders one account may rest in one book.
    pub open_orders_per_account_max: usize,
    /// New commands (orders, cancels, replaces) one account may send per second, sustained, on the
    /// exchange's clock (at least 1); more are refused `rate_limited` before they are logged.
    pub order_commands_per_account_per_s: u32,
    /// And at once, before the sustained rate applies (at least 1).
    pub order_commands_burst: u32,
    /// How often the zone owners look at the clock for gate closures and new slots.
    pub tick_interval_ms: u64,
    /// Zones with a closing auction (none by default: continuous trading up to gate closure).
    pub closing_auctions: Vec<ClosingAuction>,
    /// On PostgreSQL: how long a zone's lease lasts without renewal (see [`Self::failover_bound_ms`]).
    pub lease_ttl_ms: u64,
    /// On PostgreSQL: how often leases are renewed and free ones taken (below `lease_ttl_ms`).
    pub lease_renew_interval_ms: u64,
    /// On PostgreSQL: how long a command relayed to another instance (the zone's owner) waits for
    /// its answer before the caller is told the zone has no live owner ([`RELAY_TIMEOUT_MS_DEFAULT`]).
    pub relay_timeout_ms: u64,
    /// This instance's name in the lease table; unique among the instances sharing a database.
    pub instance_id: String,
    /// Also subscribe (QoS 0) to every zone's trades and book and every participant's events on the
    /// broker, and hand them to [`crate::service::ExchangeHandle::subscribe_feed`]: a web server's
    /// live feed then shows every zone, whichever instance owns it.
    pub market_feed: bool,
    /// `false`: a web server that owns no zone (PostgreSQL only): it takes no lease, is not counted
    /// in the zones' fair share, and relays every command to the zone's owner.
    pub takes_zones: bool,
}

impl ExchangeConfig {
    /// The call phase length of `zone`'s closing auction, if it has one.
    pub fn auction_call_ms(&self, zone: &ZoneId) -> Option<i64> {
        self.closing_auctions.iter().find(|auction| auction.zone == *zone).map(|auction| auction.call_ms.max(0))
    }

    /// The failover bound: a dead owner's zones are taken by a live instance within this many
    /// milliseconds (its leases expire, then the next renewal round takes them), plus the time to
    /// replay their open books from the command log.
    pub fn failover_bound_ms(&self) -> u64 {
        self.lease_ttl_ms.saturating_add(self.lease_renew_interval_ms)
    }

    /// Whether an instance with this configuration may serve `zone` (on PostgreSQL, only while it
    /// holds the zone's lease).
    pub fn serves(&self, zone: &ZoneId) -> bool {
        self.zones.is_empty() || self.zones.contains(zone)
    }
}

impl ExchangeConfig {
    /// The default limits, signing with `operator_key`.
    pub fn new(operator_key: SigningKey) -> Self {
        Self {
            operator_key,
            zones: Vec::new(),
            slot_len_ms: SLOT_LEN_MS_DEFAULT,
            horizon_ms: HORIZON_MS_DEFAULT,
            gate_closure_ms: GATE_CLOSURE_MS_DEFAULT,
            tick: PricePerKwh(1_000),
            qty_min: Wh(1),
            qty_max: Wh(1_000_000),
            price_band: None,
            order_age_ms_max: ORDER_AGE_MS_MAX_DEFAULT,
            reading_age_ms_max: READING_AGE_MS_MAX_DEFAULT,
            future_skew_ms_max: FUTURE_SKEW_MS_MAX_DEFAULT,
            group_commit_delay_ms: GROUP_COMMIT_DELAY_MS_DEFAULT,
            group_commit_size_max: GROUP_COMMIT_SIZE_MAX_DEFAULT,
            ingest_queue_len: INGEST_QUEUE_LEN_DEFAULT,
            commit_queue_len: COMMIT_QUEUE_LEN_DEFAULT,
            zone_queue_len: ZONE_QUEUE_LEN_DEFAULT,
            publish_queue_len: PUBLISH_QUEUE_LEN_DEFAULT,
            verify_batch_max: VERIFY_BATCH_MAX_DEFAULT,
            verify_workers: verify_workers_default(),
            open_orders_per_account_max: OPEN_ORDERS_PER_ACCOUNT_MAX_DEFAULT,
            order_commands_per_account_per_s: ORDER_COMMANDS_PER_ACCOUNT_PER_S_DEFAULT,
            order_commands_burst: ORDER_COMMANDS_BURST_DEFAULT,
            tick_interval_ms: TICK_INTERVAL_MS_DEFAULT,
            closing_auctions: Vec::new(),
            lease_ttl_ms: LEASE_TTL_MS_DEFAULT,
            lease_renew_interval_ms: LEASE_RENEW_INTERVAL_MS_DEFAULT,
            relay_timeout_ms: RELAY_TIMEOUT_MS_DEFAULT,
            instance_id: instance_id_default(),
            market_feed: false,
            takes_zones: true,
        }
    }
}
