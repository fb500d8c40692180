//! The gridex exchange: verified ingest of signed readings and orders and a continuous double
//! auction per (zone, delivery slot).
//!
//! It owns: the order books (`matching`, pure, no I/O), ingest (MQTT and the same path for HTTP
//! submissions), the order command log from which books are rebuilt after a crash, and the tables
//! it writes: accepted and refused readings and trades (`store` writes them, `queries` reads them
//! for the API; the connection and schema are `gridex_store`'s). It must never write the ledger or
//! the registry (those are `settlement`'s), never acknowledge an order before it is committed, and
//! never block the MQTT event loop.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod config;
pub mod ingest;
pub mod matching;
pub mod queries;
pub mod service;
pub mod store;
pub mod zone;
