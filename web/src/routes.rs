//! The route table: one list that both mounts the handlers and generates the OpenAPI 3 document, so
//! the two cannot drift apart.

use crate::error::ApiError;
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
        ep("get", "/healthz", "Liveness", "ops", || web::get().to(ops::healthz)),
        ep("get", "/readyz", "Readiness: database and broker reachable", "ops", || web::get().to(ops::readyz)),
        ep("get", "/metrics", "Prometheus metrics", "ops", || web::get().to(ops::metrics)).content("text/plain"),
        ep("get", "/api/v1/openapi.json", "This document", "ops", || web::get().to(openapi)),
        ep("get", "/api/v1/operator-key", "The operator's public key, to pin (PROTOCOL.md §2.1)", "public", || {
            web::get().to(ops::operator_key)
        }),
        ep("get", "/api/v1/clock", "The market clock (simulated in the demo)", "public", || web::get().to(ops::clock)),
        ep("get", "/api/v1/zones", "Zones and their current tariff", "public", || web::get().to(public::list_zones))
            .query(PAGE)
            .paged("By zone id; `limit` 1..=500 zones a page (default 100)."),
        ep("post", "/api/v1/zones", "Create a zone", "utility", || web::post().to(utility::create_zone))
            .auth(Utility)
            .body("NewZone", 201),
        ep("get", "/api/v1/zones/{zone}/tariffs", "A zone's tariffs", "public", || web::get().to(public::zone_tariffs))
            .query(PAGE)
            .paged("Oldest first by effective time; `limit` 1..=1000 tariffs a page (default 100)."),
        ep("put", "/api/v1/zones/{zone}/tariffs", "Set a tariff from an effective time", "utility", || {
            web::put().to(utility::set_tariff)
        })
        .auth(Utility)
        .body("Tariff", 200),
        ep("get", "/api/v1/zones/{zone}/slots", "Open books of a zone", "public", || web::get().to(public::zone_slots)),
        ep(
            "get",
            "/api/v1/zones/{zone}/book",
            "Order book depth of a slot (empty for an open slot without orders)",
            "public",
            || web::get().to(public::zone_book),
        )
        .query(&[("slot", "integer", true), ("levels", "integer", false)]),
        ep("get", "/api/v1/zones/{zone}/auctions", "Closing auction results, oldest first", "public", || {
            web::get().to(public::zone_auctions)
        })
        .bounded("Not paged: the exchange keeps the zone's last 96 auction results only."),
        ep("get", "/api/v1/zones/{zone}/trades", "Trades, newest first", "public", || {
            web::get().to(public::zone_trades)
        })
        .query(&[("limit", "integer", false), ("slot", "integer", false), ("cursor", "string", false)])
        .paged(
            "Newest first by trade id; `slot` (a slot's start in ms, a multiple of the zone's slot length) keeps \
             that slot's trades only; `limit` 1..=500 trades a page (default 50).",
        ),
        ep("get", "/api/v1/zones/{zone}/prices", "Price history per slot", "public", || {
            web::get().to(public::zone_prices)
        })
        .query(RANGE)
        .bounded("Not paged: one candle per slot of a range of at most 7 days, every trade counted."),
        ep(
            "get",
            "/api/v1/zones/{zone}/roots/{slot}",
            "A settled slot's root, signed by the operator",
            "public",
            || web::get().to(ledger::slot_root),
        ),
        ep("get", "/api/v1/zones/{zone}/stats", "Zone totals", "public", || web::get().to(ledger::zone_stats)),
        ep("get", "/api/v1/tokens", "GRID token supply and emission", "public", || web::get().to(ledger::tokens)),
        ep("get", "/api/v1/stream", "Live feed (Server-Sent Events)", "public", || web::get().to(sse::stream))
            .auth(OptionalTrader)
            .query(&[("zone", "string", true)])
            .content("text/event-stream"),
        ep("post", "/api/v1/orders", "Submit a signed order, cancel or replace", "trader", || {
            web::post().to(trader::submit_order)
        })
        .auth(Trader)
        .body("SignedCommand", 201)
        .returns("OrderReply")
        .bounded(
            "Answered once the command is committed and matched: 201 for a new order, 200 (same body) for a \
             cancel or replace. A refusal is an error with the reason (PROTOCOL.md §7), e.g. 422 \
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
        .paged("Newest slot first, zones by id within a slot; `limit` 1..=500 statements a page (default 100)."),
        ep("get", "/api/v1/me/statements/{zone}/{slot}", "My statement with its Merkle proof", "trader", || {
            web::get().to(ledger::my_statement)
        })
        .auth(Trader),
        ep("get", "/api/v1/me/balances", "My money and GRID balances", "trader", || web::get().to(ledger::my_balances))
            .auth(Trader),
        ep("post", "/api/v1/accounts", "Register a household account", "utility", || {
            web::post().to(utility::register_account)
        })
        .auth(Utility)
        .body("NewAccount", 201),
        ep("post", "/api/v1/devices", "Register a metering device", "utility", || {
            web::post().to(utility::register_device)
        })
        .auth(Utility)
        .body("NewDevice", 201),
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
        .bounded(
            "Not paged: the batteries that reported in the last hour (count, capacity, stored energy) and \
             the zone's charge and discharge in its latest `slots` complete slots, 1..=96 (default 24).",
        ),
        ep("get", "/api/v1/reports/{zone}/{slot}", "Settlement report of a slot", "utility", || {
            web::get().to(ledger::slot_report)
        })
        .auth(Utility)
        .query(&[("format", "string", false)]),
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
                          "pattern": "^[a-z0-9-]{1,32}$", "description": "A zone id" }),
        "slot" => json!({ "type": "integer", "format": "int64", "minimum": 0,
                          "description": "A delivery slot's start (unix ms), aligned to the zone's slot length" }),
        "device" => json!({ "type": "string", "pattern": "^[0-9a-f]{64}$",
                            "description": "A device id: its ed25519 public key in lowercase hex" }),
        _ => json!({ "type": "string" }),
    }
}

fn path_params(path: &str) -> Vec<String> {
    path.split('{').skip(1).filter_map(|part| part.split('}').next()).map(str::to_owned).collect()
}

fn schemas() -> Value {
    let int = json!({ "type": "integer", "format": "int64" });
    let string = json!({ "type": "string" });
    json!({
        "Error": { "type": "object", "required": ["error", "message"],
                   "properties": { "error": string, "message": string } },
        "NewZone": { "type": "object", "required": ["zone_id", "name"],
                     "properties": { "zone_id": string, "name": string, "slot_len_ms": int } },
        "Tariff": { "type": "object",
                    "required": ["effective_from_ms", "retail_price_per_kwh", "feed_in_price_per_kwh", "grid_fee_per_kwh", "protocol_fee_bps"],
                    "properties": { "effective_from_ms": int, "retail_price_per_kwh": int, "feed_in_price_per_kwh": int,
                                    "grid_fee_per_kwh": int, "protocol_fee_bps": int, "utc_offset_minutes": int,
                                    "bands": { "type": "array", "items": { "$ref": "#/components/schemas/TariffBand" } } } },
        "TariffBand": { "type": "object",
                        "required": ["days", "start_minute", "end_minute", "retail_price_per_kwh", "feed_in_price_per_kwh", "grid_fee_per_kwh"],
                        "properties": { "days": int, "start_minute": int, "end_minute": int, "retail_price_per_kwh": int,
                                        "feed_in_price_per_kwh": int, "grid_fee_per_kwh": int } },
        "NewAccount": { "type": "object", "required": ["account_id", "display_name", "zone"],
                        "properties": { "account_id": string, "display_name": string, "zone": string } },
        "NewDevice": { "type": "object", "required": ["device_id", "account_id", "zone", "meter_serial", "nameplate_w"],
                       "properties": { "device_id": string, "account_id": string, "zone": string,
                                       "meter_serial": string, "nameplate_w": int } },
        "MeterCounters": { "type": "object", "required": ["import_wh", "export_wh"],
                           "properties": { "import_wh": int, "export_wh": int, "pv_wh": int } },
        "NewReplacement": { "type": "object", "required": ["replaced_at_ms", "old", "new", "new_meter_serial", "reference"],
                            "description": "A meter swap: the old meter's final and the new meter's initial counters",
                            "properties": { "replaced_at_ms": int,
                                            "old": { "$ref": "#/components/schemas/MeterCounters" },
                                            "new": { "$ref": "#/components/schemas/MeterCounters" },
                                            "new_meter_serial": string, "reference": string } },
        "MeterReplacement": { "type": "object",
                              "required": ["device_id", "replaced_at_ms", "old", "new", "new_meter_serial", "reference", "registered_ms"],
                              "properties": { "device_id": string, "replaced_at_ms": int,
                                              "old": { "$ref": "#/components/schemas/MeterCounters" },
                                              "new": { "$ref": "#/components/schemas/MeterCounters" },
                                              "new_meter_serial": string, "reference": string, "registered_ms": int } },
        "SilentDevice": { "type": "object", "required": ["device_id", "account_id", "meter_serial", "silent_for_ms"],
                          "properties": { "device_id": string, "account_id": string, "meter_serial": string,
                                          "last_received_ms": int, "silent_for_ms": int } },
        "NewWebhook": { "type": "object", "required": ["url"], "properties": { "url": { "type": "string", "format": "uri" } } },
        "WebhookCreated": { "type": "object", "required": ["id", "url", "secret"],
                            "properties": { "id": string, "url": string,
                                            "secret": { "type": "string", "description": "The HMAC-SHA256 key of the deliveries' X-Gridex-Signature; shown only here" } } },
        "Webhook": { "type": "object", "required": ["id", "url", "registered_by", "created_ms", "pending_deliveries"],
                     "properties": { "id": string, "url": string, "registered_by": string, "created_ms": int,
                                     "pending_deliveries": { "type": "integer", "format": "int64",
                                                             "description": "Deliveries not acknowledged yet" } } },
        "OpenOrder": { "type": "object",
                       "description": "A resting order: the exchange's live state with the terms it rests with (always GTC)",
                       "required": ["account", "zone", "slot", "order_nonce", "status", "side", "tif", "post_only",
                                    "price_per_kwh", "open_qty_wh", "filled_qty_wh", "placed_ms", "ts_ms"],
                       "properties": { "account": string, "zone": string, "slot": int, "order_nonce": int,
                                       "status": { "type": "string", "enum": ["open", "filled", "cancelled", "expired"] },
                                       "side": { "type": "string", "enum": ["buy", "sell"] },
                                       "tif": { "type": "string", "enum": ["gtc", "ioc", "fok"] },
                                       "post_only": { "type": "boolean" },
                                       "price_per_kwh": int,
                                       "open_qty_wh": { "type": "integer", "format": "int64", "description": "Left to trade" },
                                       "filled_qty_wh": { "type": "integer", "format": "int64", "description": "Traded so far" },
                                       "placed_ms": { "type": "integer", "format": "int64",
                                                      "description": "The order's signed time (market clock)" },
                                       "ts_ms": int } },
        "OrderUpdate": { "type": "object",
                         "required": ["account", "zone", "slot", "order_nonce", "status", "price_per_kwh", "open_qty_wh", "filled_qty_wh", "ts_ms"],
                         "properties": { "account": string, "zone": string, "slot": int, "order_nonce": int,
                                         "status": { "type": "string", "enum": ["open", "filled", "cancelled", "expired"] },
                                         "price_per_kwh": int, "open_qty_wh": int, "filled_qty_wh": int, "ts_ms": int } },
        "Trade": { "type": "object",
                   "required": ["trade_id", "zone", "slot", "price_per_kwh", "qty_wh", "buyer", "seller", "buy_nonce", "sell_nonce", "aggressor", "ts_ms"],
                   "properties": { "trade_id": int, "zone": string, "slot": int, "price_per_kwh": int, "qty_wh": int,
                                   "buyer": string, "seller": string, "buy_nonce": int, "sell_nonce": int,
                                   "aggressor": { "type": "string", "enum": ["buy", "sell"] }, "ts_ms": int } },
        "OrderReply": { "type": "object", "required": ["status", "outcome", "command_seq", "updates", "trades"],
                        "description": "What a committed order, cancel or replace did",
                        "properties": { "status": { "type": "string", "enum": ["accepted"] },
                                        "outcome": { "type": "string",
                                                     "enum": ["resting", "partially_filled", "filled", "cancelled", "expired", "unknown"],
                                                     "description": "Where the order the command names stands now" },
                                        "command_seq": int,
                                        "order_nonce": { "type": "integer", "format": "int64", "nullable": true },
                                        "updates": { "type": "array", "items": { "$ref": "#/components/schemas/OrderUpdate" } },
                                        "trades": { "type": "array", "items": { "$ref": "#/components/schemas/Trade" } } } },
        "SignedCommand": { "type": "object", "required": ["type", "account", "sig"],
                           "description": "A signed protocol order, cancel or replace (see PROTOCOL.md)",
                           "properties": { "type": { "type": "string", "enum": ["order", "cancel", "replace"] },
                                           "account": string, "sig": string } },
    })
}

/// The OpenAPI 3 document of the routes mounted in this mode.
pub fn openapi_document(demo: bool) -> Value {
    let mut paths = Map::new();
    for endpoint in mounted(demo) {
        let path = openapi_path(endpoint.path);
        let mut parameters: Vec<Value> = path_params(&path)
            .into_iter()
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_param_schema(&name) }))
            .collect();
        parameters.extend(endpoint.query.iter().map(|(name, kind, required)| {
            let schema = if *name == "zone" { path_param_schema(name) } else { json!({ "type": kind }) };
            json!({ "name": name, "in": "query", "required": required, "schema": schema })
        }));
        let schema = match endpoint.response {
            None => json!({}),
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
        let mut operation = json!({
            "summary": endpoint.summary,
            "operationId": format!("{}_{}", endpoint.method, path.trim_matches('/').replace(['/', '{', '}', '.'], "_")),
            "tags": [endpoint.tag],
            "parameters": parameters,
            "responses": {
                endpoint.status.to_string(): success,
                "default": { "description": "An error",
                             "content": { JSON: { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        });
        if let Some(description) = description {
            operation["description"] = json!(description);
        }
        if endpoint.method == "post" && endpoint.path == "/api/v1/orders" {
            // A cancel or replace answers the same body with 200.
            operation["responses"]["200"] = operation["responses"]["201"].clone();
        }
        if let Some(schema) = endpoint.body {
            operation["requestBody"] = json!({ "required": true, "content": {
                JSON: { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
        }
        match endpoint.security {
            Security::Public => {}
            Security::Trader => operation["security"] = json!([{ "traderSignature": [] }]),
            Security::OptionalTrader => operation["security"] = json!([{}, { "traderSignature": [] }]),
            Security::Utility => operation["security"] = json!([{ "utilityKey": [] }]),
        }
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[endpoint.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "gridex API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Peer-to-peer energy market: public market data, trader order entry and statements, utility administration." },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "traderSignature": { "type": "apiKey", "in": "header", "name": "X-Gridex-Signature",
                    "description": "ed25519 signature of the account key over `gridex/v1/request\\n` + canonical JSON of {account, body_sha256, method, path, ts_ms}; also send X-Gridex-Account and X-Gridex-Timestamp" },
                "utilityKey": { "type": "http", "scheme": "bearer", "description": "An API key with the utility role" },
            },
        },
    })
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
        let pairs: [(&str, Vec<i64>); 11] = [
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

    #[test]
    fn regex_segments_become_plain_parameters() {
        assert_eq!(openapi_path("/static/{path:.*}"), "/static/{path}");
        assert_eq!(openapi_path("/api/v1/zones/{zone}/book"), "/api/v1/zones/{zone}/book");
    }
}
