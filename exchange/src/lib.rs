//! The gridex exchange: verified ingest of signed readings and orders, a continuous double auction
//! per (zone, delivery slot), and the storage layer that the market and the ledger share.
//!
//! It owns: the order books (`matching`, pure, no I/O), ingest (MQTT and the same path for HTTP
//! submissions), the order command log from which books are rebuilt after a crash, accepted readings
//! and trades (`db`, `schema`). It must never write the ledger (that is `settlement`'s), never
//! acknowledge an order before it is committed, and never block the MQTT event loop.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod config;
pub mod ingest;
pub mod matching;
pub mod service;
pub mod store;
pub mod zone;
