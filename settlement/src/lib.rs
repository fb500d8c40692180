//! Settlement: the registry (zones, tariffs, accounts, devices, reward schedule), the double-entry
//! ledger, and the closing of delivery slots against metered delivery.
//!
//! It owns the registry and ledger tables (migration `2026-11-23-000002_ledger`; their diesel
//! schema is declared in `gridex_store::schema`) and is the only crate that writes them; it reaches
//! the database through `gridex-store`, never through the exchange. Closing a slot ([`close_slot`]) reads the slot's trades and the
//! accepted readings around its boundaries, pays trades, grid and protocol fees, settles each
//! household's imbalance with the utility, mints GRID rewards for delivered peer-to-peer energy,
//! writes one statement per household, and signs the Merkle root of the statements, all in one
//! database transaction. [`run`] closes every due slot in order; [`queries`] serves the web API.
//! The same transaction settles the energy of households whose readings resume after "no data"
//! slots and moves their metering cursors ([`gaps`], migration `2026-12-01-000005_metering_cursors`).
//! Home batteries (version 2 readings) are never settled: [`battery`] only reports them (per slot,
//! what a battery earned at the price its household faced, a zone's storage).
//!
//! It must never: write readings, trades or orders (the exchange's); update or delete a ledger entry
//! (a correction is a new transaction); use floats for money or energy; or settle a slot before its
//! metering grace period has passed.
//!
//! Principal types: [`SettlementConfig`], [`SlotOutcome`], [`SlotSettled`], [`rules::Tariff`],
//! [`rewards::RewardSchedule`], [`SettlementError`]. The rules (rounding, imbalance, the "no data"
//! rule, rewards) are documented in [`rules`], [`metering`] and [`rewards`].
//!
//! ```
//! use settlement::rewards::RewardSchedule;
//!
//! let schedule = RewardSchedule {
//!     genesis_ms: 0,
//!     epoch_len_ms: 86_400_000,
//!     initial_emission_per_epoch: 96_000_000,
//!     halving_epochs: 365,
//!     max_supply: 21_000_000_000_000,
//! };
//! // A 15-minute slot of the first day gets 1/96 of the day's emission.
//! assert_eq!(schedule.budget(0, 900_000), 1_000_000);
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod battery;
pub mod close;
pub mod correction;
pub mod gaps;
pub mod intervals;
pub mod metering;
pub mod queries;
pub mod registry;
pub mod rewards;
pub mod rules;
pub mod service;

pub use close::{close_slot, SlotOutcome, SlotSettled};
pub use service::run;

use ed25519_dalek::SigningKey;
use gridex_store::DbError;

/// Default metering grace period: readings that arrive up to five minutes after a slot ends still
/// count (a gateway that lost its broker for a few minutes replays its spool within that time).
/// The web server's `market.settlement_grace_ms` defaults to this same value.
pub const GRACE_MS_DEFAULT: i64 = 300_000;
/// Default widest gap between the two readings around a slot boundary that is still interpolated:
/// 15 minutes; meters report every few seconds to a minute, so a longer gap is an outage.
pub const READING_GAP_MS_MAX_DEFAULT: i64 = 900_000;
/// Default poll interval of [`run`].
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 1_000;

/// How settlement runs.
#[derive(Clone)]
pub struct SettlementConfig {
    /// How long after a slot ends it waits for late readings before it is settled.
    pub grace_ms: i64,
    /// Widest gap between readings that is still interpolated (see [`metering`]).
    pub reading_gap_ms_max: i64,
    /// The operator's key: signs every slot's Merkle root.
    pub operator_key: SigningKey,
    /// How often [`run`] looks for due slots.
    pub poll_interval_ms: u64,
    /// The zones this instance settles; empty settles every zone. Instances that partition the
    /// zones between them (the web server's `market.zones`) each settle only their own.
    pub zones: Vec<protocol::ZoneId>,
}

impl SettlementConfig {
    /// Defaults with the given operator key.
    pub fn new(operator_key: SigningKey) -> Self {
        Self {
            grace_ms: GRACE_MS_DEFAULT,
            reading_gap_ms_max: READING_GAP_MS_MAX_DEFAULT,
            operator_key,
            poll_interval_ms: POLL_INTERVAL_MS_DEFAULT,
            zones: Vec::new(),
        }
    }
}

impl std::fmt::Debug for SettlementConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettlementConfig")
            .field("grace_ms", &self.grace_ms)
            .field("reading_gap_ms_max", &self.reading_gap_ms_max)
            .field("operator", &hex::encode(self.operator_key.verifying_key().to_bytes()))
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("zones", &self.zones)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("unknown zone `{0}`")]
    UnknownZone(String),
    #[error("slot {slot_ms} is not a multiple of the zone's slot length {slot_len_ms} ms")]
    Misaligned { slot_ms: i64, slot_len_ms: i64 },
    #[error("slot {slot_ms} is not due before {due_ms} (slot end + grace period)")]
    NotDue { slot_ms: i64, due_ms: i64 },
    #[error("slots close in order: slot {expected_ms} of the zone is next, not {slot_ms}")]
    OutOfOrder { slot_ms: i64, expected_ms: i64 },
    #[error("zone `{zone}` has no tariff in force at {at_ms}")]
    NoTariff { zone: String, at_ms: i64 },
    #[error("inconsistent stored data: {0}")]
    InvalidData(String),
    #[error("signing the slot root: {0}")]
    Signing(String),
    #[error("correction refused: {0}")]
    Correction(#[from] correction::CorrectionError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for SettlementError {
    fn from(error: diesel::result::Error) -> Self {
        SettlementError::Db(DbError::Query(error))
    }
}
