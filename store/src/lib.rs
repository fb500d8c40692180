//! gridex storage: the one place that knows how the data is kept.
//!
//! It owns the connection type over SQLite (embedded default, WAL mode) and PostgreSQL
//! (production) with its pool ([`Database`], [`DbConnection`], [`Backend`], [`DatabaseUrl`],
//! [`DbError`], [`redact`]), the diesel [`schema`] of every table (each section names the crate that
//! writes it), the embedded migrations of `migrations/` ([`migrate`]), the [`clock`] every component
//! reads, a zone's tariffs with their time-of-use bands ([`tariff`]), and, behind the cargo feature
//! `testing`, fresh test databases (`testing::TestDb`).
//!
//! It must never hold a business rule (what may be registered, how a slot settles), speak MQTT or
//! HTTP, or match orders: those are `settlement`'s, `exchange`'s and `web`'s. It depends on no other
//! gridex crate but `protocol` (units, identifiers, and the pure rule of a slot's prices that
//! [`tariff::tariff_for_slot`] applies for the exchange and settlement alike).
//!
//! ```
//! use gridex_store::{Backend, DatabaseUrl};
//!
//! assert_eq!(DatabaseUrl::parse("sqlite://data/gridex.sqlite").unwrap().backend(), Backend::Sqlite);
//! assert!(DatabaseUrl::parse("mysql://db.example/gridex").is_err());
//! assert_eq!(gridex_store::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod clock;
mod db;
pub mod schema;
pub mod tariff;
#[cfg(feature = "testing")]
pub mod testing;

pub use db::{
    migrate, redact, Backend, Database, DatabaseUrl, DbConnection, DbError, DbPool, PooledDb, WriterLock,
    POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS,
};
