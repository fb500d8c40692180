//! The route table: one list that both mounts the handlers and generates the OpenAPI 3 document, so
//! the two cannot drift apart.

use crate::error::ApiError;
use crate::openapi::{TRADER_SCHEME, UTILITY_SCHEME};
use crate::{assets, ledger, ops, public, sse, trader, utility};
use actix_web::{web, HttpResponse, Route};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Public,
    Trader,
    /// Trader signature optional (the live feed: adds the trader's private events).
    OptionalTrader,
    Utility,
}

/// A query parameter: name, JSON schema type, required.
pub type Param = (&'static str, &'static str, bool);

/// One endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    /// actix pattern; `{name}` segments are path parameters.
    pub path: &'static str,
    pub summary: &'static str,
    /// The operation's longer description: for a list, how it pages or why it needs no cursor.
    pub description: Option<&'static str>,
    pub tag: &'static str,
    pub security: Security,
    pub query: &'static [Param],
    /// Name of the request body schema in `components.schemas`.
    pub body: Option<&'static str>,
    pub status: u16,
    pub content: &'static str,
    /// The success response's schema in `components.schemas`, and whether it is a list of it.
    pub response: Option<(&'static str, bool)>,
    pub demo_only: bool,
    /// Answers one page and, when more follow, `X-Next-Cursor` and `Link: <…>; rel="next"`.
    pub paged: bool,
    pub route: fn() -> Route,
}

const JSON: &str = "application/json";

const fn ep(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
    route: fn() -> Route,
) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        description: None,
        tag,
        security: Security::Public,
        query: &[],
        body: None,
        status: 200,
        content: JSON,
        response: None,
        demo_only: false,
        paged: false,
        route,
    }
}

impl Endpoint {
    const fn auth(mut self, security: Security) -> Self {
        self.security = security;
        self
    }
    const fn query(mut self, query: &'static [Param]) -> Self {
        self.query = query;
        self
    }
    const fn body(mut self, schema: &'static str, status: u16) -> Self {
        self.body = Some(schema);
        self.status = status;
        self
    }
    const fn content(mut self, content: &'static str) -> Self {
        self.content = content;
        self
    }
    const fn returns(mut self, schema: &'static str) -> Self {
        self.response = Some((schema, false));
        self
    }
    const fn no_content(mut self) -> Self {
        self.status = 204;
        self
    }
    const fn returns_list(mut self, schema: &'static str) -> Self {
        self.response = Some((schema, true));
        self
    }
    /// A list answered page by page (see [`PAGED`]), with `description` saying its order and key.
    const fn paged(mut self, description: &'static str) -> Self {
        self.paged = true;
        self.description = Some(description);
        self
    }
    /// A list answered whole: `description` says what bounds it.
    const fn bounded(mut self, description: &'static str) -> Self {
        self.description = Some(description);
        self
    }
    const fn demo(mut self) -> Self {
        self.demo_only = true;
        self
    }
}

const RANGE: &[Param] = &[("from_ms", "integer", false), ("to_ms", "integer", false)];
/// The query of a paged list: the page length and the cursor of a page after the first.
const PAGE: &[Param] = &[("limit", "integer", false), ("cursor", "string", false)];

/// How every paged list pages, added to each one's OpenAPI description.
pub const PAGED: &str = "Paged by a keyset cursor: a page with more after it carries `X-Next-Cursor` (opaque; \
pass it back unchanged as `cursor`, with the same other parameters) and `Link: <…>; rel=\"next\"` (this request \
with that cursor); the last page has neither. A page is never cut silently, and a malformed, edited or other \
list's cursor is a 400 `invalid_cursor`.";

/// Every route the server mounts.
pub fn endpoints() -> Vec<Endpoint> {
    use Security::*;
    vec![
        ep("get", "/", "The dashboard", "dashboard", || web::get().to(assets::index)).content("text/html"),
        ep("get", "/static/{path:.*}", "Dashboard assets", "dashboard", || web::get().to(assets::file))
            .content("application/octet-stream"),
        ep("get", "/healthz", "Liveness", "ops", || web::get().to(ops::healthz)).returns("Health"),
        ep("get", "/readyz", "Readiness: database and broker reachable", "ops", || web::get().to(ops::readyz))
            .returns("Readiness"),
        ep("get", "/metrics", "Prometheus metrics", "ops", || web::get().to(ops::metrics)).content("text/plain"),
        ep("get", "/api/v1/openapi.json", "This document", "ops", || web::get().to(openapi)),
        ep("get", "/api/v1/operator-key", "The operator's public key, to pin (PROTOCOL.md §2.1)", "public", || {
            web::get().to(ops::operator_key)
        })
        .returns("OperatorKey"),
        ep("get", "/api/v1/clock", "The market clock (simulated in the demo)", "public", || web::get().to(ops::clock))
            .returns("MarketClock"),
        ep("get", "/api/v1/zones", "Zones and their current tariff", "public", || web::get().to(public::list_zones))
            .query(PAGE)
            .returns_list("Zone")
            .paged("By zone id; `limit` 1..=500 zones a page (default 100)."),
        ep("post", "/api/v1/zones", "Create a zone", "utility", || web::post().to(utility::create_zone))
            .auth(Utility)
            .body("NewZone", 201)
            .returns("NewZone"),
        ep("get", "/api/v1/zones/{zone}/tariffs", "A zone's tariffs", "public", || web::get().to(public::zone_tariffs))
            .query(PAGE)
            .returns_list("Tariff")
            .paged("Oldest first by effective time; `limit` 1..=1000 tariffs a page (default 100)."),
        ep("put", "/api/v1/zones/{zone}/tariffs", "Set a tariff from an effective time", "utility", || {
            web::put().to(utility::set_tariff)
        })
        .auth(Utility)
        .body("Tariff", 200)
        .returns("Tariff"),
        ep("get", "/api/v1/zones/{zone}/slots", "Open books of a zone", "public", || web::get().to(public::zone_slots))
            .returns_list("Slot"),
        ep(
            "get",
            "/api/v1/zones/{zone}/book",
            "Order book depth of a slot (empty for an open slot without orders)",
            "public",
            || web::get().to(public::zone_book),
        )
        .query(&[("slot", "integer", true), ("levels", "integer", false)])
        .returns("BookSnapshot"),
        ep("get", "/api/v1/zones/{zone}/auctions", "Closing auction results, oldest first", "public", || {
            web::get().to(public::zone_auctions)
        })
        .returns_list("AuctionResult")
        .bounded("Not paged: the exchange keeps the zone's last 96 auction results only."),
        ep("get", "/api/v1/zones/{zone}/trades", "Trades, newest first", "public", || {
            web::get().to(public::zone_trades)
        })
        .query(&[("limit", "integer", false), ("slot", "integer", false), ("cursor", "string", false)])
        .returns_list("Trade")
        .paged(
            "Newest first by trade id; `slot` (a slot's start in ms, a multiple of the zone's slot length) keeps \
             that slot's trades only; `limit` 1..=500 trades a page (default 50).",
        ),
        ep("get", "/api/v1/zones/{zone}/prices", "Price history per slot", "public", || {
            web::get().to(public::zone_prices)
        })
        .query(RANGE)
        .returns_list("Candle")
        .bounded("Not paged: one candle per slot of a range of at most 7 days, every trade counted."),
        ep(
            "get",
            "/api/v1/zones/{zone}/roots/{slot}",
            "A settled slot's root, signed by the operator",
            "public",
            || web::get().to(ledger::slot_root),
        )
        .returns("SignedSlotRoot"),
        ep("get", "/api/v1/zones/{zone}/stats", "Zone totals", "public", || web::get().to(ledger::zone_stats))
            .returns("ZoneStats"),
        ep("get", "/api/v1/tokens", "GRID token supply and emission", "public", || web::get().to(ledger::tokens))
            .returns("TokenSupply"),
        ep("get", "/api/v1/stream", "Live feed (Server-Sent Events)", "public", || web::get().to(sse::stream))
            .auth(OptionalTrader)
            .query(&[("zone", "string", true)])
            .content("text/event-stream"),
        ep("post", "/api/v1/orders", "Submit a signed order, cancel, replace or cancel_all", "trader", || {
            web::post().to(trader::submit_order)
        })
        .auth(Trader)
        .body("SignedCommand", 201)
        .returns("OrderReply")
        .bounded(
            "Answered once the command is committed and matched: 201 for a new order, 200 (same body) for a \
             cancel, replace or cancel_all. A refusal is an error with the reason (PROTOCOL.md §7), e.g. 422 \
             `price_out_of_band` stating the slot's band.",
        ),
        ep("get", "/api/v1/me/orders", "My open orders", "trader", || web::get().to(trader::my_orders))
            .auth(Trader)
            .returns_list("OpenOrder")
            .bounded(
                "Not paged: an account rests at most the exchange's open-order limit per book, in the open books.",
            ),
        ep(
            "get",
            "/api/v1/me/readings",
            "My readings as interval data, and the ones refused with their reason",
            "trader",
            || web::get().to(trader::my_readings),
        )
        .auth(Trader)
        .query(&[("from_ms", "integer", false), ("to_ms", "integer", false), ("cursor", "string", false)])
        .returns_list("ReadingEntry")
        .paged(
            "By device and seq, 50,000 readings a page; the refused readings come on the first page. A reading \
             with a home battery (version 2) also has `battery_charge_wh`, `battery_discharge_wh`, \
             `battery_soc_permille`, `battery_capacity_wh` and the interval energy of the two counters.",
        ),
        ep("get", "/api/v1/me/battery", "My home battery per slot and what it earned", "trader", || {
            web::get().to(crate::battery::my_battery)
        })
        .auth(Trader)
        .query(RANGE)
        .returns("HouseholdBattery")
        .bounded(
            "Not paged: one row per slot of a range of at most 7 days (at most 672 slots, the latest), by \
             default the last day; slots without anything known of a battery are left out. `earned` per \
             slot is (discharge − charge) at the price the household faced: its own trades' \
             volume-weighted price in the slot, else retail when it net-imported, feed-in when it \
             net-exported; rounded down once per slot. Never part of the ledger.",
        ),
        ep("get", "/api/v1/me/plan", "My home battery's latest plan", "trader", || {
            web::get().to(crate::battery::my_plan)
        })
        .auth(Trader)
        .bounded(
            "Not paged: the latest `battery_plan` the household's agent signed (at most 96 slots, PROTOCOL.md \
             §4.7) as `plan`, with `received_ms`; 404 `no_plan` before its agent sent one. Information only: \
             never an order, never part of the ledger.",
        ),
        ep("get", "/api/v1/me/statements", "My settlement statements", "trader", || {
            web::get().to(ledger::my_statements)
        })
        .auth(Trader)
        .query(PAGE)
        .returns_list("Statement")
        .paged("Newest slot first, zones by id within a slot; `limit` 1..=500 statements a page (default 100)."),
        ep("get", "/api/v1/me/statements/{zone}/{slot}", "My statement with its Merkle proof", "trader", || {
            web::get().to(ledger::my_statement)
        })
        .auth(Trader)
        .returns("StatementProof"),
        ep("get", "/api/v1/me/balances", "My money and GRID balances", "trader", || web::get().to(ledger::my_balances))
            .auth(Trader)
            .returns("Balances"),
        ep("post", "/api/v1/accounts", "Register a household account", "utility", || {
            web::post().to(utility::register_account)
        })
        .auth(Utility)
        .body("NewAccount", 201)
        .returns("NewAccount"),
        ep("post", "/api/v1/devices", "Register a metering device", "utility", || {
            web::post().to(utility::register_device)
        })
        .auth(Utility)
        .body("DeviceRegistration", 201)
        .returns("DeviceRegistration"),
        ep("post", "/api/v1/devices/{device}/replacements", "Register a meter replacement", "utility", || {
            web::post().to(utility::register_replacement)
        })
        .auth(Utility)
        .body("NewReplacement", 201)
        .returns("MeterReplacement"),
        ep("get", "/api/v1/zones/{zone}/devices/silent", "Devices without a reading for too long", "utility", || {
            web::get().to(utility::zone_silent_devices)
        })
        .auth(Utility)
        .query(PAGE)
        .returns_list("SilentDevice")
        .paged("Longest silent first, then by device id; `limit` 1..=1000 devices a page (default 500)."),
        ep("get", "/api/v1/zones/{zone}/storage", "Home batteries of a zone", "utility", || {
            web::get().to(crate::battery::zone_storage_report)
        })
        .auth(Utility)
        .query(&[("slots", "integer", false)])
        .returns("ZoneStorage")
        .bounded(
            "Not paged: the batteries that reported in the last hour (count, capacity, stored energy) and \
             the zone's charge and discharge in its latest `slots` complete slots, 1..=96 (default 24).",
        ),
        ep("get", "/api/v1/reports/{zone}/{slot}", "Settlement report of a slot", "utility", || {
            web::get().to(ledger::slot_report)
        })
        .auth(Utility)
        .query(&[("format", "string", false)])
        .returns("SlotReport")
        .bounded("JSON by default; `format=csv` answers the same report as CSV (`text/csv`)."),
        ep("get", "/api/v1/export/readings", "Meter interval data (CSV)", "utility", || {
            web::get().to(utility::export_readings)
        })
        .auth(Utility)
        .query(&[
            ("zone", "string", false),
            ("device", "string", false),
            ("from_ms", "integer", false),
            ("to_ms", "integer", false),
            ("cursor", "string", false),
        ])
        .content("text/csv")
        .paged("By device and seq, 50,000 readings a page."),
        ep("get", "/api/v1/export/espi", "Meter interval data (Green Button ESPI Atom feed)", "utility", || {
            web::get().to(crate::espi::export_espi)
        })
        .auth(Utility)
        .query(&[
            ("zone", "string", true),
            ("device", "string", false),
            ("from_ms", "integer", false),
            ("to_ms", "integer", false),
        ])
        .content("application/atom+xml")
        .bounded(
            "Not paged: the slots starting in the range, at most 672 (a week of 15-minute slots), and at most \
             100800 device-slots (devices × slots); per device a UsagePoint with a forward (import) and a reverse \
             (export) MeterReading, ReadingType and IntervalBlock of integer Wh per slot (PROTOCOL.md §11).",
        ),
        ep(
            "post",
            "/api/v1/zones/{zone}/reconcile",
            "Reconcile the utility's meter data (CSV) with gridex's",
            "utility",
            || web::post().to(crate::reconcile::reconcile_zone),
        )
        .auth(Utility)
        .returns("ReconcileReport")
        .bounded(
            "Body: CSV `device_id,slot_start,import_wh,export_wh` (text/csv, at most 8388608 bytes and 100000 rows, \
             the last line ending with a line break); a broken row is a 400 `invalid_csv` naming its line. Answers \
             the differences per device and slot, the rows only one side has and totals; nothing is stored \
             (PROTOCOL.md §11).",
        ),
        ep("post", "/api/v1/webhooks", "Register a settlement webhook", "utility", || {
            web::post().to(utility::create_webhook)
        })
        .auth(Utility)
        .body("NewWebhook", 201)
        .returns("WebhookCreated"),
        ep("get", "/api/v1/webhooks", "Registered webhooks, with their pending deliveries", "utility", || {
            web::get().to(utility::list_webhooks)
        })
        .auth(Utility)
        .returns_list("Webhook")
        .bounded("Not paged: at most 100 webhooks can be registered."),
        ep("delete", "/api/v1/webhooks/{webhook}", "Delete a webhook and its pending deliveries", "utility", || {
            web::delete().to(utility::delete_webhook)
        })
        .auth(Utility)
        .no_content(),
        ep("get", "/api/v1/demo/households", "Demo household logins", "demo", || web::get().to(ops::demo_households))
            .returns_list("DemoHousehold")
            .demo(),
    ]
}

/// The endpoints mounted in this mode.
pub fn mounted(demo: bool) -> Vec<Endpoint> {
    endpoints().into_iter().filter(|endpoint| demo || !endpoint.demo_only).collect()
}

/// 405 with the `Allow` header naming the methods the path serves (RFC 9110 §15.5.6).
fn method_not_allowed(allow: &str) -> HttpResponse {
    let error = ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method not allowed; this path serves {allow}"),
    );
    let mut response = actix_web::ResponseError::error_response(&error);
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(allow) {
        response.headers_mut().insert(actix_web::http::header::ALLOW, value);
    }
    response
}

/// Mounts every endpoint, one resource per path.
pub fn configure(config: &mut web::ServiceConfig, demo: bool) {
    let endpoints = mounted(demo);
    let mut paths: Vec<&'static str> = Vec::new();
    for endpoint in &endpoints {
        if !paths.contains(&endpoint.path) {
            paths.push(endpoint.path);
        }
    }
    for path in paths {
        let allow = endpoints
            .iter()
            .filter(|endpoint| endpoint.path == path)
            .map(|endpoint| endpoint.method.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(", ");
        let mut resource = web::resource(path).default_service(web::to(move || {
            let response = method_not_allowed(&allow);
            async move { response }
        }));
        for endpoint in endpoints.iter().filter(|endpoint| endpoint.path == path) {
            resource = resource.route((endpoint.route)());
        }
        config.service(resource);
    }
}

/// `{name:regex}` → `{name}`.
pub fn openapi_path(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let (mut in_brace, mut in_regex) = (false, false);
    for ch in pattern.chars() {
        match ch {
            '{' if !in_brace => {
                in_brace = true;
                out.push(ch);
            }
            '}' if in_brace => {
                (in_brace, in_regex) = (false, false);
                out.push(ch);
            }
            ':' if in_brace => in_regex = true,
            _ if in_regex => {}
            _ => out.push(ch),
        }
    }
    out
}

/// What the server accepts in a path parameter (and a `zone` query parameter), so a generated client (or a fuzzer) knows it.
fn path_param_schema(name: &str) -> Value {
    match name {
        "zone" => json!({ "type": "string", "minLength": 1, "maxLength": protocol::ids::ZONE_ID_LEN_MAX,
                          "pattern": crate::openapi::wire::ZONE_PATTERN, "description": "A zone id" }),
        "slot" => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": protocol::units::MAX_SAFE_INTEGER,
                          "description": "A delivery slot's start (unix ms), aligned to the zone's slot length" })
        }
        "device" => json!({ "type": "string", "pattern": crate::openapi::wire::KEY_PATTERN,
                            "description": "A device id: its ed25519 public key in lowercase hex" }),
        _ => json!({ "type": "string" }),
    }
}

/// The page length `limit` a paged list accepts: 1 to its maximum.
fn limit_max(path: &str) -> Option<i64> {
    match path {
        "/api/v1/zones" => Some(crate::public::ZONES_LIMIT_MAX),
        "/api/v1/zones/{zone}/tariffs" => Some(crate::public::TARIFFS_LIMIT_MAX),
        "/api/v1/zones/{zone}/trades" => Some(crate::public::TRADES_LIMIT_MAX),
        "/api/v1/me/statements" => Some(crate::ledger::STATEMENTS_LIMIT_MAX),
        "/api/v1/zones/{zone}/devices/silent" => Some(crate::utility::SILENT_DEVICES_LIMIT_MAX),
        _ => None,
    }
}

/// What the server accepts in a query parameter: limits and patterns where it checks them.
fn query_param_schema(path: &str, name: &str, kind: &str) -> Value {
    let int = json!({ "type": "integer", "format": "int64" });
    match (name, limit_max(path)) {
        ("zone" | "device", _) => path_param_schema(name),
        ("limit", Some(max)) => json!({ "type": "integer", "format": "int64", "minimum": 1, "maximum": max }),
        ("slot", _) => path_param_schema("slot"),
        ("levels", _) => json!({ "type": "integer", "minimum": 1, "maximum": protocol::messages::BOOK_LEVELS_MAX,
                                 "description": "Price levels a side; more are cut to the maximum" }),
        ("slots", _) => json!({ "type": "integer", "minimum": 1, "maximum": settlement::battery::STORAGE_SLOTS_MAX }),
        ("format", _) => json!({ "type": "string", "enum": ["json", "csv"] }),
        ("from_ms" | "to_ms", _) => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "description": "Unix ms; `from_ms` ≤ `to_ms`" })
        }
        ("cursor", _) => json!({ "type": "string", "description": "The `X-Next-Cursor` of the previous page" }),
        (_, _) if kind == "integer" => int,
        (_, _) => json!({ "type": kind }),
    }
}

fn path_params(path: &str) -> Vec<String> {
    path.split('{').skip(1).filter_map(|part| part.split('}').next()).map(str::to_owned).collect()
}

/// The paths of the routes mounted in this mode, as OpenAPI path items (JSON, checked by utoipa's
/// types when the document is built).
fn openapi_paths(demo: bool) -> Map<String, Value> {
    let mut paths = Map::new();
    for endpoint in mounted(demo) {
        let path = openapi_path(endpoint.path);
        let mut parameters: Vec<Value> = path_params(&path)
            .into_iter()
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_param_schema(&name) }))
            .collect();
        parameters.extend(endpoint.query.iter().map(|(name, kind, required)| {
            json!({ "name": name, "in": "query", "required": required,
                    "schema": query_param_schema(endpoint.path, name, kind) })
        }));
        let schema = match endpoint.response {
            // Not typed yet: any JSON (the handler builds it in place).
            None if endpoint.content == JSON => json!({}),
            None => json!({ "type": "string" }),
            Some((name, false)) => json!({ "$ref": format!("#/components/schemas/{name}") }),
            Some((name, true)) => {
                json!({ "type": "array", "items": { "$ref": format!("#/components/schemas/{name}") } })
            }
        };
        let mut success = if endpoint.status == 204 {
            json!({ "description": endpoint.summary })
        } else {
            json!({ "description": endpoint.summary, "content": { endpoint.content: { "schema": schema } } })
        };
        if endpoint.paged {
            success["headers"] = json!({
                "X-Next-Cursor": { "description": "The next page's `cursor` (absent on the last page); opaque",
                                   "schema": { "type": "string" } },
                "Link": { "description": "`<path?…&cursor=…>; rel=\"next\"` when a next page exists",
                          "schema": { "type": "string" } },
            });
        }
        let description = match (endpoint.description, endpoint.paged) {
            (Some(description), true) => Some(format!("{description} {PAGED}")),
            (description, _) => description.map(str::to_owned),
        };
        let error = json!({ "$ref": "#/components/schemas/Error" });
        let mut responses = json!({
            endpoint.status.to_string(): success,
            "default": { "description": "An error: `error` is a stable code, `message` says why",
                         "content": { JSON: { "schema": error } } },
        });
        if endpoint.method == "post" && endpoint.path == "/api/v1/orders" {
            // A cancel or replace answers the same body with 200.
            responses["200"] = responses["201"].clone();
        }
        if endpoint.path == "/readyz" {
            // Not ready: the same body with 503.
            responses["503"] = responses["200"].clone();
            responses["503"]["description"] = json!("Not ready: the database or the broker does not answer");
        }
        if endpoint.path == "/api/v1/reports/{zone}/{slot}" {
            // `format=csv`: the same report as CSV.
            responses["200"]["content"]["text/csv"] = json!({ "schema": { "type": "string" } });
        }
        let mut operation = json!({
            "summary": endpoint.summary,
            "operationId": format!("{}_{}", endpoint.method, path.trim_matches('/').replace(['/', '{', '}', '.'], "_")),
            "tags": [endpoint.tag],
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(description) = description {
            operation["description"] = json!(description);
        }
        if let Some(schema) = endpoint.body {
            operation["requestBody"] = json!({ "required": true, "content": {
                JSON: { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
        }
        match endpoint.security {
            Security::Public => {}
            Security::Trader => operation["security"] = json!([{ TRADER_SCHEME: [] }]),
            Security::OptionalTrader => operation["security"] = json!([{}, { TRADER_SCHEME: [] }]),
            Security::Utility => operation["security"] = json!([{ UTILITY_SCHEME: [] }]),
        }
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[endpoint.method] = operation;
    }
    paths
}

/// The OpenAPI 3.1 document of the routes mounted in this mode: utoipa's document with the schemas
/// derived from the Rust types ([`crate::openapi::components`]), and the paths from the route table.
pub fn openapi_document(demo: bool) -> Value {
    let mut info = utoipa::openapi::Info::new("gridex API", env!("CARGO_PKG_VERSION"));
    info.description = Some(
        "Peer-to-peer energy market: public market data, trader order entry and statements, utility administration. \
         Every error is `{ \"error\": code, \"message\": text }` (schema `Error`); a method a path does not serve \
         is a 405 with `Allow`."
            .to_owned(),
    );
    let spec = utoipa::openapi::OpenApiBuilder::new().info(info).components(Some(crate::openapi::components())).build();
    // Serializing utoipa's own types cannot fail (string keys, no maps with other keys).
    let mut document = serde_json::to_value(spec).unwrap_or_default();
    // The path items are JSON: utoipa's `Paths` cannot hold an unconstrained schema (`{}`).
    document["paths"] = Value::Object(openapi_paths(demo));
    document
}

/// `GET /api/v1/openapi.json`: the document generated from this table.
pub async fn openapi(state: web::Data<crate::state::AppState>) -> HttpResponse {
    HttpResponse::Ok().json(openapi_document(state.demo_households.is_some()))
}

pub async fn not_found_json() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::not_found("no_route", "no such endpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptions name page lengths and bounds as numbers; they must be the constants'.
    #[test]
    fn list_descriptions_name_the_limits_in_force() {
        let described = |path: &str| {
            let endpoint = endpoints().into_iter().find(|e| e.path == path && e.method == "get").expect("mounted");
            endpoint.description.expect("a list says how it pages or what bounds it").replace(',', "")
        };
        let pairs: [(&str, Vec<i64>); 12] = [
            ("/api/v1/zones", vec![crate::public::ZONES_LIMIT_MAX, crate::public::ZONES_LIMIT_DEFAULT]),
            (
                "/api/v1/zones/{zone}/tariffs",
                vec![crate::public::TARIFFS_LIMIT_MAX, crate::public::TARIFFS_LIMIT_DEFAULT],
            ),
            ("/api/v1/zones/{zone}/trades", vec![crate::public::TRADES_LIMIT_MAX, crate::public::TRADES_LIMIT_DEFAULT]),
            (
                "/api/v1/me/statements",
                vec![crate::ledger::STATEMENTS_LIMIT_MAX, crate::ledger::STATEMENTS_LIMIT_DEFAULT],
            ),
            (
                "/api/v1/zones/{zone}/devices/silent",
                vec![crate::utility::SILENT_DEVICES_LIMIT_MAX, crate::utility::SILENT_DEVICES_LIMIT_DEFAULT],
            ),
            ("/api/v1/me/readings", vec![crate::trader::READINGS_ROWS_MAX]),
            ("/api/v1/export/readings", vec![crate::trader::READINGS_ROWS_MAX]),
            ("/api/v1/export/espi", vec![settlement::intervals::INTERVAL_SLOTS_MAX, crate::espi::DEVICE_SLOTS_MAX]),
            ("/api/v1/webhooks", vec![crate::webhooks::WEBHOOKS_MAX]),
            ("/api/v1/zones/{zone}/auctions", vec![exchange::zone::AUCTION_RESULTS_KEPT as i64]),
            ("/api/v1/me/battery", vec![settlement::battery::BATTERY_SLOTS_MAX]),
            (
                "/api/v1/zones/{zone}/storage",
                vec![settlement::battery::STORAGE_SLOTS_MAX, crate::battery::STORAGE_SLOTS_DEFAULT],
            ),
        ];
        for (path, numbers) in pairs {
            let description = described(path);
            for number in numbers {
                assert!(description.contains(&number.to_string()), "{path}: {description} names {number}");
            }
        }
        let days = crate::public::PRICE_RANGE_MS_MAX / 86_400_000;
        assert!(described("/api/v1/zones/{zone}/prices").contains(&format!("{days} days")));
        assert!(described("/api/v1/me/orders").contains("open-order limit"));
        assert!(described("/api/v1/me/plan").contains(&protocol::plan::BATTERY_PLAN_SLOTS_MAX.to_string()));
    }

    /// Every `$ref` in the document, in the paths and inside the schemas, names a schema it has: a
    /// type that refers to another pulls that one in (utoipa's `schema_from` alone would not).
    #[test]
    fn every_schema_reference_resolves() {
        for demo in [false, true] {
            let document = openapi_document(demo);
            let schemas = document["components"]["schemas"].as_object().expect("schemas");
            let text = document.to_string();
            let references: Vec<&str> = text
                .split("\"$ref\":\"#/components/schemas/")
                .skip(1)
                .map(|rest| rest.split('"').next().expect("name"))
                .collect();
            assert!(references.len() > 20, "{references:?}");
            for name in references {
                assert!(schemas.contains_key(name), "missing schema {name}");
            }
        }
    }

    /// The schemas come from the Rust types: a body's required fields are the fields without a default,
    /// with the patterns the parsers check.
    #[test]
    fn schemas_are_derived_from_the_request_types_with_their_patterns() {
        let document = openapi_document(false);
        let device = &document["components"]["schemas"]["DeviceRegistration"];
        let mut required: Vec<&str> =
            device["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
        required.sort_unstable();
        assert_eq!(
            required,
            ["account_id", "device_id", "meter_serial", "nameplate_w", "zone"],
            "role defaults to grid"
        );
        assert_eq!(device["properties"]["role"]["pattern"], "^(grid|pv|battery|submeter)$");
        assert_eq!(device["properties"]["zone"]["pattern"], crate::openapi::wire::ZONE_PATTERN);
        assert_eq!(device["properties"]["device_id"]["pattern"], crate::openapi::wire::KEY_PATTERN);
        assert_eq!(device["properties"]["meter_serial"]["pattern"], crate::openapi::wire::SERIAL_PATTERN);
        let zone = &document["components"]["schemas"]["NewZone"];
        assert!(!zone["required"].as_array().expect("required").contains(&json!("slot_len_ms")), "{zone}");
        let error = &document["components"]["schemas"]["Error"];
        assert_eq!(error["required"], json!(["error", "message"]));
        // Every operation answers its errors with the Error body (as `default`).
        let orders = &document["paths"]["/api/v1/orders"]["post"];
        assert_eq!(
            orders["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
        assert_eq!(orders["security"], json!([{ "traderSignature": [] }]));
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes["traderSignature"]["name"], "X-Gridex-Signature");
        assert_eq!(schemes["utilityKey"]["scheme"], "bearer");
        let limit = &document["paths"]["/api/v1/zones"]["get"]["parameters"][0];
        assert_eq!(
            (limit["name"].as_str(), limit["schema"]["maximum"].as_i64()),
            (Some("limit"), Some(crate::public::ZONES_LIMIT_MAX))
        );
    }

    #[test]
    fn regex_segments_become_plain_parameters() {
        assert_eq!(openapi_path("/static/{path:.*}"), "/static/{path}");
        assert_eq!(openapi_path("/api/v1/zones/{zone}/book"), "/api/v1/zones/{zone}/book");
    }
}
