//! The gridex server (`gridex` binary): the dashboard, the public/trader/utility REST API, the live
//! feed (Server-Sent Events), health and metrics endpoints, webhooks, and the one-command demo.
//!
//! It owns HTTP: routing, authentication (trader request signatures, utility API keys), request
//! limits, error shapes, the OpenAPI document and TLS when it serves HTTPS itself ([`tls`]), the
//! broker's logins and ACLs generated from the registry ([`broker_config`]), plus wiring the other
//! crates into one process.
//! It must never match orders (that is `exchange`'s), never write the ledger or the registry (that is
//! `settlement`'s), never run SQL on another crate's tables (it calls `exchange::queries`,
//! `settlement::registry` and `settlement::queries`; its own SQL touches only its webhook and API key tables),
//! and never log a secret.
//!
//! A process is wired in one place, [`application::Application`], for `gridex serve`, the demo and
//! the tests alike:
//!
//! ```no_run
//! # async fn example() -> Result<(), web::ApplicationError> {
//! let app = web::Application::build(web::Settings::load(None).expect("settings")).await?;
//! println!("serving on {}", app.address());
//! let _ = tokio::signal::ctrl_c().await;
//! app.shutdown().await
//! # }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod api_keys;
pub mod application;
pub mod assets;
pub mod auth;
pub mod battery;
pub mod broker;
pub mod broker_config;
pub mod demo;
pub mod error;
pub mod espi;
pub mod ledger;
pub mod live;
pub mod live_feed;
pub mod market;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod paging;
pub mod public;
pub mod reconcile;
pub mod registry;
pub mod report;
pub mod routes;
pub mod server;
pub mod settings;
pub mod sse;
pub mod sse_clients;
pub mod state;
pub mod tls;
pub mod trader;
pub mod utility;
pub mod webhook_targets;
pub mod webhooks;

pub use application::{Application, ApplicationError};
pub use live::LiveEvent;
pub use settings::Settings;
pub use state::AppState;
