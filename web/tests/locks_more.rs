//! More locks of issue 12 through the real HTTP server: a signed trader request is accepted once,
//! list endpoints hand out cursors instead of truncating, and one client opens only so many live
//! streams.

use ed25519_dalek::SigningKey;
use exchange::clock::{Clock, SystemClock};
use exchange::db::testing::TestDb;
use protocol::AccountId;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::oneshot;
use web::auth::sign_request;
use web::settings::Settings;
use web::state::AppState;

const ZONE: &str = "lock-zone";
const SLOT_LEN_MS: i64 = 900_000;

struct TestApp {
    address: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _db: TestDb,
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

fn account(key: &SigningKey) -> AccountId {
    AccountId::from_verifying_key(&key.verifying_key())
}

/// A server on a fresh database with one zone and `household` registered in it (no exchange:
/// these locks sit in front of it).
async fn spawn_app(household: &SigningKey) -> TestApp {
    let test_db = TestDb::any();
    let alice = account(household);
    settlement::registry::write(&test_db.db, move |conn| {
        let zone = protocol::ZoneId::parse(ZONE).expect("valid zone");
        web::registry::create_zone(conn, &zone, "Lock zone", SLOT_LEN_MS, now_ms())?;
        web::registry::register_account(conn, &alice, "Alice", &zone, 0)
    })
    .await
    .expect("seed the registry");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = AppState::new(test_db.db.clone(), clock, &Settings::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let address = format!("http://{}", listener.local_addr().expect("local address"));
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(web::server::run(listener, state, async move {
        let _ = stop.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder().no_proxy().build().expect("client"),
        shutdown: Some(shutdown),
        server: Some(server),
        _db: test_db,
    }
}

impl TestApp {
    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Sends exactly these signature headers (a captured request is sent again byte for byte).
    async fn send_signed(&self, path: &str, headers: &[(String, String); 3]) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_replayed_trader_request_is_refused() {
    let alice = protocol::testing::signing_key(41);
    let app = spawn_app(&alice).await;
    let path = "/api/v1/me/readings";
    let captured = sign_request(&alice, "GET", path, b"", now_ms());

    let (status, first) = app.send_signed(path, &captured).await;
    assert_eq!(status, 200, "the first request is served: {first}");

    // The same signed request again, well within its 60 s window: an eavesdropper's replay.
    let (status, replay) = app.send_signed(path, &captured).await;
    assert_eq!(status, 409, "a replay is refused: {replay}");
    assert_eq!(replay["error"], "replayed_request", "with a clear JSON error: {replay}");

    // A request signed anew (another timestamp) is a new request and is served.
    let mut fresh = sign_request(&alice, "GET", path, b"", now_ms());
    if fresh == captured {
        fresh = sign_request(&alice, "GET", path, b"", now_ms() + 1);
    }
    let (status, again) = app.send_signed(path, &fresh).await;
    assert_eq!(status, 200, "a freshly signed request is served: {again}");
    app.stop().await;
}
