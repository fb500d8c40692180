//! The gridex server (`gridex` binary): the dashboard, the public/trader/utility REST API, the live
//! feed (Server-Sent Events), health and metrics endpoints, webhooks, and the one-command demo.
//!
//! It owns HTTP: routing, authentication (trader request signatures, utility API keys), request
//! limits, error shapes and the OpenAPI document, plus wiring the other crates into one process.
//! It must never match orders (that is `exchange`'s), never write the ledger or the registry (that is
//! `settlement`'s), never run SQL on another crate's tables (it calls `exchange::queries`,
//! `settlement::registry` and `settlement::queries`; its own SQL touches only its webhook tables),
//! and never log a secret.
//!
//! ```no_run
//! # async fn example(state: web::state::AppState) -> std::io::Result<()> {
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! web::server::run(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod assets;
pub mod auth;
pub mod broker;
pub mod demo;
pub mod error;
pub mod ledger;
pub mod market;
pub mod metrics;
pub mod ops;
pub mod public;
pub mod registry;
pub mod report;
pub mod routes;
pub mod server;
pub mod settings;
pub mod sse;
pub mod state;
pub mod trader;
pub mod utility;
pub mod webhook_targets;
pub mod webhooks;

pub use settings::Settings;
pub use state::{AppState, LiveEvent};
