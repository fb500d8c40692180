//! One builder for a running gridex: the database, the exchange (with its MQTT link), settlement,
//! the live-feed forwarders, the background tasks and the HTTP server, wired the same way for
//! `gridex serve`, `gridex demo` and the tests.
//!
//! [`Application::build`] takes everything from the settings (what `serve` runs);
//! [`Application::builder`] lets the demo and the tests replace one part at a time (a database they
//! made, a simulated clock, a listener on port 0, the demo's exchange or settlement configuration)
//! while the rest of the wiring stays the one `serve` uses. [`Application::shutdown`] stops it all
//! and waits for it.

use crate::live::LiveEvent;
use crate::market::Market;
use crate::server::Transport;
use crate::settings::Settings;
use crate::state::{AppState, DemoHousehold};
use exchange::config::ExchangeConfig;
use exchange::service::ExchangeHandle;
use gridex_store::clock::{Clock, SystemClock};
use gridex_store::Database;
use settlement::SettlementConfig;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest wait for each part (settlement, webhooks, forwarders, the exchange) on shutdown; a part
/// that takes longer is logged and left behind so that stopping stays prompt. The HTTP server has
/// its own grace period ([`crate::server::SHUTDOWN_GRACE_SECS`]).
pub const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a gridex process could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ApplicationError {
    /// The URL is redacted: it may hold a password.
    #[error("cannot open the database {url}")]
    Database {
        url: String,
        #[source]
        source: gridex_store::DbError,
    },
    #[error("invalid MQTT settings")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("cannot load the operator key {} (create it with gridex keygen)", path.display())]
    OperatorKey {
        path: PathBuf,
        #[source]
        source: meter_gateway::keys::KeyError,
    },
    /// Names the setting or the file (one line; never the key's contents).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the exchange did not start")]
    Exchange(#[from] exchange::service::ExchangeError),
    #[error("the web server failed")]
    Server(#[source] std::io::Error),
}

/// Opens (and migrates) the database named by `database.url`.
pub fn open_database(settings: &Settings) -> Result<Database, ApplicationError> {
    let url = settings.database.url.expose();
    Database::open(url, settings.database.pool_size)
        .map_err(|source| ApplicationError::Database { url: gridex_store::redact(url), source })
}

/// Whether the process settles slots, and how.
enum Settlement {
    /// `market.settlement_grace_ms`, `market.zones` and the key at `market.operator_key_path`.
    FromSettings,
    Config(Box<SettlementConfig>),
    /// No settlement loop (tests that settle by hand, or processes that only trade).
    Off,
}

/// Replaces parts of what [`Application::build`] takes from the settings; see [`Application::builder`].
#[must_use]
pub struct ApplicationBuilder {
    settings: Settings,
    database: Option<Database>,
    clock: Option<Arc<dyn Clock>>,
    listener: Option<TcpListener>,
    mqtt: Option<Option<rumqttc::MqttOptions>>,
    exchange: Option<ExchangeConfig>,
    settlement: Settlement,
    clock_speed: u32,
    demo_households: Option<Vec<DemoHousehold>>,
}

impl std::fmt::Debug for ApplicationBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplicationBuilder")
            .field("database", &self.database)
            .field("listener", &self.listener)
            .field("clock_speed", &self.clock_speed)
            .finish_non_exhaustive()
    }
}

impl ApplicationBuilder {
    /// This database instead of opening `database.url`.
    pub fn database(mut self, database: Database) -> Self {
        self.database = Some(database);
        self
    }

    /// This clock instead of the system clock; `speed` is how much faster than real time it runs
    /// (shown on the dashboard).
    pub fn clock(mut self, clock: Arc<dyn Clock>, speed: u32) -> Self {
        self.clock = Some(clock);
        self.clock_speed = speed;
        self
    }

    /// Serve on this listener instead of binding `http.bind`:`http.port`.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The exchange's broker connection (`None`: no broker) instead of the one `mqtt.*` describes.
    pub fn mqtt(mut self, options: Option<rumqttc::MqttOptions>) -> Self {
        self.mqtt = Some(options);
        self
    }

    /// This exchange configuration instead of the one built from `market.*`.
    pub fn exchange_config(mut self, config: ExchangeConfig) -> Self {
        self.exchange = Some(config);
        self
    }

    /// Settle with this configuration instead of the one built from `market.*`.
    pub fn settlement(mut self, config: SettlementConfig) -> Self {
        self.settlement = Settlement::Config(Box::new(config));
        self
    }

    /// No settlement loop.
    pub fn without_settlement(mut self) -> Self {
        self.settlement = Settlement::Off;
        self
    }

    /// Demo mode: mounts `/api/v1/demo/households` with these logins.
    pub fn demo_households(mut self, households: Vec<DemoHousehold>) -> Self {
        self.demo_households = Some(households);
        self
    }

    /// Starts everything: checks what can fail first (TLS files, database, broker settings,
    /// operator key, listener), then the exchange, the forwarders, settlement and the HTTP server.
    pub async fn build(self) -> Result<Application, ApplicationError> {
        let mut settings = self.settings;
        let transport = transport_from(&settings)?;
        let database_given = self.database.is_some();
        let db = match self.database {
            Some(db) => db,
            None => open_database(&settings)?,
        };
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let mqtt = match self.mqtt {
            Some(options) => options,
            None => {
                let options = crate::broker::mqtt_options(&crate::broker::login(&settings)?)?;
                if let Some(broker) = crate::broker::address(&settings.mqtt)? {
                    tracing::info!(host = %broker.host, port = broker.port, tls = broker.tls, "connecting to the MQTT broker");
                }
                options
            }
        };
        if !settings.market.trade && mqtt.is_none() {
            return Err(ApplicationError::Exchange(exchange::service::ExchangeError::Config(
                "market.trade = false (a web server only) needs a broker (mqtt.url) to reach the zones' owners"
                    .to_owned(),
            )));
        }
        let settlement_config = match self.settlement {
            // A web server only settles nothing.
            Settlement::FromSettings if !settings.market.trade => None,
            Settlement::FromSettings => Some(settlement_from(&settings)?),
            Settlement::Config(config) => Some(*config),
            Settlement::Off => None,
        };
        let listener = match self.listener {
            Some(listener) => listener,
            None => {
                let address = format!("{}:{}", settings.http.bind, settings.http.port);
                TcpListener::bind(&address).map_err(|source| ApplicationError::Listen { address, source })?
            }
        };
        let address = listener.local_addr().map_err(|source| ApplicationError::Listen {
            address: format!("{}:{}", settings.http.bind, settings.http.port),
            source,
        })?;
        // Several instances may share the zones: the live feed then comes from the broker.
        let feed_from_broker = settings.market.live_feed.from_broker(db.backend(), mqtt.is_some());
        let mut exchange_config = match self.exchange {
            Some(config) => config,
            // The operator key signs what the exchange publishes, as it signs slot roots.
            None => ExchangeConfig {
                gate_closure_ms: settings.market.gate_closure_ms,
                horizon_ms: settings.market.horizon_ms,
                zones: settings.market.zones.clone(),
                order_commands_per_account_per_s: settings.market.order_commands_per_account_per_s,
                order_commands_burst: settings.market.order_commands_burst,
                lease_ttl_ms: settings.market.lease_ttl_ms,
                lease_renew_interval_ms: settings.market.lease_renew_interval_ms,
                relay_timeout_ms: settings.market.relay_timeout_ms,
                // Stable across restarts when configured, like the MQTT session (see the setting).
                instance_id: [&settings.market.instance_id, settings.mqtt.client_id.as_ref().unwrap_or(&String::new())]
                    .into_iter()
                    .find(|id| !id.is_empty())
                    .cloned()
                    .unwrap_or_else(exchange::config::instance_id_default),
                ..ExchangeConfig::new(operator_key_from(&settings)?)
            },
        };

        exchange_config.market_feed = feed_from_broker;
        exchange_config.takes_zones = settings.market.trade;
        let exchange = exchange::service::start(exchange_config, db.clone(), clock.clone(), mqtt).await?;
        let mut state = AppState::new(db.clone(), clock.clone(), &settings).with_market(Market::new(exchange.clone()));
        // The state holds the keys' hashes; the keys themselves are not kept.
        settings.api_keys.clear();
        state.clock_speed = self.clock_speed;
        state.demo_households = self.demo_households.map(Arc::new);
        let background = crate::server::spawn_background(&state);
        let (stop, stop_rx) = watch::channel(false);
        let (settlement, settled_forwarder) = match settlement_config {
            Some(config) => {
                let settled = settlement::service::settled_channel();
                let forwarder = crate::ledger::spawn_settled_forwarder(&state, settled.subscribe());
                let shutdown = stopped(stop_rx.clone());
                let settlement = tokio::spawn(settlement::run(db.clone(), clock.clone(), config, settled, shutdown));
                (Some(settlement), Some(forwarder))
            }
            None => (None, None),
        };
        let tasks = Tasks {
            settlement,
            settled_forwarder,
            market_forwarder: if feed_from_broker {
                crate::live_feed::spawn_forwarder(&exchange, state.live.clone())
            } else {
                state.market.spawn_forwarder(state.live.clone())
            },
            webhooks: Some(background.webhooks),
            metrics_upkeep: background.metrics_upkeep,
        };
        let scheme = transport.scheme();
        log_transport(address, &transport, settings.http.hsts);
        tracing::info!(%address, scheme, database = %db_name(&settings, database_given), "gridex serving {scheme}");
        let server = tokio::spawn(crate::server::run(listener, transport, state.clone(), stopped(stop_rx)));
        Ok(Application { address, scheme, state, exchange, stop, server, tasks })
    }
}

/// HTTPS when `http.tls_cert_file` and `http.tls_key_file` are set (both read and checked now),
/// else plain HTTP.
fn transport_from(settings: &Settings) -> Result<Transport, ApplicationError> {
    Ok(match crate::tls::server_config(&settings.http)? {
        Some(config) => Transport::Https { config: Box::new(config), hsts: settings.http.hsts },
        None => Transport::Http,
    })
}

/// Warns about plain HTTP reachable from the network (legitimate only behind a TLS-terminating
/// proxy) and about `http.hsts` without HTTPS.
fn log_transport(address: SocketAddr, transport: &Transport, hsts: bool) {
    let tls = matches!(transport, Transport::Https { .. });
    if crate::tls::plain_http_exposed(address, tls) {
        tracing::warn!(
            %address,
            "serving plain HTTP on a non-loopback address: API keys and signed requests cross the network in clear \
             unless a TLS-terminating proxy is in front; set http.tls_cert_file and http.tls_key_file to serve HTTPS"
        );
    }
    if hsts && !tls {
        tracing::warn!(
            "http.hsts is ignored without HTTPS (http.tls_cert_file, http.tls_key_file); let the proxy send it"
        );
    }
}

/// What the log names as the database: the redacted URL when it came from the settings.
fn db_name(settings: &Settings, given: bool) -> String {
    if given {
        "(given by the caller)".to_owned()
    } else {
        gridex_store::redact(settings.database.url.expose())
    }
}

/// The operator's key file (`market.operator_key_path`): it signs slot roots and outbound messages.
fn operator_key_from(settings: &Settings) -> Result<ed25519_dalek::SigningKey, ApplicationError> {
    let path = PathBuf::from(&settings.market.operator_key_path);
    meter_gateway::keys::load(&path).map_err(|source| ApplicationError::OperatorKey { path, source })
}

/// Settlement as `serve` runs it: the settings' grace period and zones, the operator's key file.
fn settlement_from(settings: &Settings) -> Result<SettlementConfig, ApplicationError> {
    let mut config = SettlementConfig::new(operator_key_from(settings)?);
    config.grace_ms = settings.market.settlement_grace_ms;
    config.zones = settings.market.zones.clone();
    Ok(config)
}

async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// The tasks besides the HTTP server, each awaited (or, for endless loops, aborted) on shutdown.
struct Tasks {
    settlement: Option<JoinHandle<()>>,
    settled_forwarder: Option<JoinHandle<()>>,
    market_forwarder: Option<JoinHandle<()>>,
    webhooks: Option<JoinHandle<()>>,
    metrics_upkeep: Option<JoinHandle<()>>,
}

/// A running gridex: HTTP on [`Application::address`], the exchange, settlement and the background
/// tasks. Stop it with [`Application::shutdown`].
pub struct Application {
    address: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    state: AppState,
    exchange: ExchangeHandle,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    tasks: Tasks,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("address", &self.address)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Starts gridex as `gridex serve` does, everything from `settings`.
    pub async fn build(settings: Settings) -> Result<Application, ApplicationError> {
        Application::builder(settings).build().await
    }

    /// A builder starting from `settings`, to replace parts before [`ApplicationBuilder::build`].
    pub fn builder(settings: Settings) -> ApplicationBuilder {
        ApplicationBuilder {
            settings,
            database: None,
            clock: None,
            listener: None,
            mqtt: None,
            exchange: None,
            settlement: Settlement::FromSettings,
            clock_speed: 1,
            demo_households: None,
        }
    }

    /// The bound HTTP address (the real port when the settings asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://ADDRESS`, or `https://ADDRESS` when serving HTTPS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address)
    }

    /// `http` or `https`: whether the server terminates TLS itself.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The state the handlers share (database, clock, live hub, webhooks).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn db(&self) -> &Database {
        &self.state.db
    }

    pub fn exchange(&self) -> &ExchangeHandle {
        &self.exchange
    }

    /// Subscribes to the live feed (what SSE clients and webhooks see).
    pub fn live(&self) -> tokio::sync::broadcast::Receiver<LiveEvent> {
        self.state.live.subscribe()
    }

    /// Stops settlement, the HTTP server (in-flight requests get their grace period), webhook
    /// delivery, the forwarders and the exchange, in that order, and waits for each.
    pub async fn shutdown(self) -> Result<(), ApplicationError> {
        let Application { state, exchange, stop, server, mut tasks, .. } = self;
        let _ = stop.send(true);
        wait("settlement", tasks.settlement.take()).await;
        // Settlement dropped its sender: the forwarder has announced every closed slot and ends.
        wait("the settlement forwarder", tasks.settled_forwarder.take()).await;
        let served = server.await;
        // `server::run` has told webhook delivery to stop; what is not delivered stays in the outbox.
        wait("webhook delivery", tasks.webhooks.take()).await;
        // These two loop for as long as their source lives (the exchange handle, the process).
        for task in [tasks.market_forwarder.take(), tasks.metrics_upkeep.take()].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        drop(state);
        if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, exchange.shutdown()).await.is_err() {
            tracing::warn!("the exchange did not stop in time");
        }
        match served {
            Ok(result) => result.map_err(ApplicationError::Server),
            Err(join) => Err(ApplicationError::Server(std::io::Error::other(join))),
        }
    }
}

async fn wait(part: &str, task: Option<JoinHandle<()>>) {
    let Some(task) = task else { return };
    match tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, task).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(part, %error, "the task failed"),
        Err(_) => tracing::warn!(part, "did not stop in time"),
    }
}
