//! Builds the actix application and runs it on a given listener, over plain HTTP or HTTPS, until a
//! shutdown future resolves (tests bind port 0; `gridex` binds the configured address).

use crate::state::AppState;
use actix_web::http::header;
use actix_web::{middleware, web, App, HttpServer};
use std::future::Future;
use std::net::TcpListener;
use tokio::task::JoinHandle;

/// HTTP worker threads: the machine has few cores and handlers mostly wait on the database.
pub const HTTP_WORKERS: usize = 2;
/// Seconds given to in-flight requests on shutdown (SSE streams are cut after this).
pub const SHUTDOWN_GRACE_SECS: u64 = 5;

/// How the listener's connections are served.
#[derive(Debug)]
pub enum Transport {
    /// Plain HTTP: on loopback, or behind a TLS-terminating proxy.
    Http,
    /// HTTPS with this rustls configuration ([`crate::tls::server_config`]); with `hsts`, every
    /// response carries `Strict-Transport-Security`.
    Https { config: Box<rustls::ServerConfig>, hsts: bool },
}

impl Transport {
    /// `http` or `https`, for URLs and the log.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Https { .. } => "https",
        }
    }
}

/// Serves `state` on `listener` over `transport` until `shutdown` resolves, then stops gracefully.
pub async fn run(
    listener: TcpListener,
    transport: Transport,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::metrics::install();
    let demo = state.demo_households.is_some();
    let hsts = matches!(transport, Transport::Https { hsts: true, .. });
    let state_webhooks = state.webhooks.clone();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(crate::error::query_config())
            .app_data(crate::error::path_config())
            .wrap(middleware::from_fn(crate::metrics::track))
            .wrap(middleware::Condition::new(
                hsts,
                middleware::DefaultHeaders::new()
                    .add((header::STRICT_TRANSPORT_SECURITY, crate::tls::HSTS_HEADER_VALUE)),
            ))
            .configure(|config| crate::routes::configure(config, demo))
            .default_service(web::to(crate::routes::not_found_json))
    })
    .workers(HTTP_WORKERS)
    .shutdown_timeout(SHUTDOWN_GRACE_SECS)
    .disable_signals();
    let server = match transport {
        Transport::Http => server.listen(listener)?,
        Transport::Https { config, .. } => server.listen_rustls_0_23(listener, *config)?,
    }
    .run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    shutdown.await;
    // Deliveries not acknowledged yet stay in the outbox for the next start.
    state_webhooks.stop();
    handle.stop(true).await;
    server.await.map_err(std::io::Error::other)?
}

/// The background tasks of [`spawn_background`].
#[derive(Debug)]
pub struct Background {
    /// Ends once [`run`] has stopped the webhooks (on shutdown).
    pub webhooks: JoinHandle<()>,
    /// Loops for the life of the process; `None` without a metrics recorder.
    pub metrics_upkeep: Option<JoinHandle<()>>,
}

/// Starts the background tasks the server needs besides HTTP: webhook delivery and metrics upkeep.
pub fn spawn_background(state: &AppState) -> Background {
    let metrics_upkeep = crate::metrics::spawn_upkeep();
    let events = state.live.subscribe();
    Background { webhooks: tokio::spawn(state.webhooks.clone().run(events)), metrics_upkeep }
}
