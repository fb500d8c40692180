//! What every handler shares: the database, the clock, the link to the exchange, the live-event hub,
//! the webhook registry and the settings that matter at request time.

use crate::live::{LiveEvent, LIVE_EVENTS_BUFFER_LEN};
use crate::market::Market;
use crate::settings::Settings;
use crate::sse_clients::ClientStreams;
use crate::webhooks::Webhooks;
use gridex_store::clock::Clock;
use gridex_store::Database;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A simulated household's login, shown only in demo mode.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DemoHousehold {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub account: String,
    pub name: String,
    /// The account's ed25519 seed (64 hex digits): the demo's households are for trying the market.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub secret_key_hex: String,
}

/// Shared state of the web server. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub clock: Arc<dyn Clock>,
    /// Speed of the clock relative to real time (1 in production), for the dashboard.
    pub clock_speed: u32,
    pub market: Market,
    pub live: broadcast::Sender<LiveEvent>,
    pub webhooks: Webhooks,
    /// The settings' keys (hashed) and the `api_keys` table.
    pub api_keys: Arc<crate::api_keys::ApiKeys>,
    /// Signed trader requests accepted within the window, each accepted once.
    pub used_signatures: Arc<crate::auth::UsedSignatures>,
    /// Live-feed streams open per client address, capped by `http.sse_streams_per_client_max`.
    pub sse_clients: Arc<ClientStreams>,
    pub json_body_bytes_max: usize,
    /// `market.silent_device_ms`: a device without a reading for longer is reported silent.
    pub silent_device_ms: i64,
    /// `host:port` of the MQTT broker, probed by `/readyz`.
    pub broker_address: Option<(String, u16)>,
    /// `[display]`: the currency and locale the dashboard shows amounts in.
    pub display: crate::settings::DisplaySettings,
    /// `Some` only in demo mode: mounts `/api/v1/demo/households`.
    pub demo_households: Option<Arc<Vec<DemoHousehold>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db", &self.db)
            .field("clock_speed", &self.clock_speed)
            .field("api_keys", &self.api_keys)
            .field("demo", &self.demo_households.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State for a server without an exchange link yet; see [`AppState::with_market`].
    pub fn new(db: Database, clock: Arc<dyn Clock>, settings: &Settings) -> AppState {
        // Metrics recorded before the recorder exists are lost: install it before anything runs.
        crate::metrics::install();
        let (live, _) = broadcast::channel(LIVE_EVENTS_BUFFER_LEN);
        let api_keys = Arc::new(crate::api_keys::ApiKeys::new(&settings.api_keys, Some(db.clone())));
        AppState {
            webhooks: Webhooks::new(db.clone(), settings.webhooks.clone()),
            db,
            clock,
            clock_speed: 1,
            market: Market::none(),
            live,
            api_keys,
            used_signatures: Arc::default(),
            sse_clients: Arc::new(ClientStreams::new(settings.http.sse_streams_per_client_max)),
            json_body_bytes_max: settings.http.json_body_bytes_max,
            silent_device_ms: settings.market.silent_device_ms,
            broker_address: crate::broker::address(&settings.mqtt)
                .ok()
                .flatten()
                .map(|address| (address.host, address.port)),
            display: settings.display.clone(),
            demo_households: None,
        }
    }

    pub fn with_market(mut self, market: Market) -> AppState {
        self.market = market;
        self
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Publishes an event to live-feed subscribers and webhooks (a send with no subscriber is fine).
    pub fn publish(&self, event: LiveEvent) {
        let _ = self.live.send(event);
    }
}
