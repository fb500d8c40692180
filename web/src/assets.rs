//! The dashboard's files (`web/static/**`), embedded at build time by `build.rs`.

use actix_web::{web, HttpResponse};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/static_files.rs"));
}

/// Every embedded file: path relative to `static/`, and its bytes.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    embedded::FILES
}

pub fn get(path: &str) -> Option<&'static [u8]> {
    files().iter().find(|(name, _)| *name == path).map(|(_, bytes)| *bytes)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

const PLACEHOLDER: &str = "<!doctype html><meta charset=utf-8><title>gridex</title>\
<p>The dashboard is not built into this binary. The API is at <a href=/api/v1/openapi.json>/api/v1/openapi.json</a>.";

/// Where the page pins the operator key (`web/static/index.html`).
const OPERATOR_KEY_META: &str = r#"<meta name="gridex-operator-key" content="">"#;

/// Where the page takes its display settings (`web/static/index.html`).
const DISPLAY_META: &str = r#"<meta name="gridex-display" content="">"#;

/// `[display]` as the page reads it: JSON in an attribute, HTML-escaped (the settings refuse markup
/// in the symbol; escaping keeps the page whole whatever they hold).
fn display_meta(display: &crate::settings::DisplaySettings) -> String {
    let json =
        serde_json::json!({ "currency": display.currency, "symbol": display.symbol(), "locale": display.locale });
    let escaped = json
        .to_string()
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;");
    format!(r#"<meta name="gridex-display" content="{escaped}">"#)
}

/// The dashboard, with the operator key pinned in the page itself (a setting of the page, not a
/// response the page then verifies against: PROTOCOL.md §2.1).
pub async fn index(state: web::Data<crate::state::AppState>) -> HttpResponse {
    match get("index.html") {
        Some(bytes) => {
            let page = String::from_utf8_lossy(bytes);
            let operator = state.market.handle().map(|exchange| hex::encode(exchange.operator_key()));
            let pinned = format!(r#"<meta name="gridex-operator-key" content="{}">"#, operator.unwrap_or_default());
            let display = display_meta(&state.display);
            let page = page.replacen(OPERATOR_KEY_META, &pinned, 1).replacen(DISPLAY_META, &display, 1);
            HttpResponse::Ok().content_type(content_type("index.html")).body(page)
        }
        None => HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PLACEHOLDER),
    }
}

pub async fn file(path: web::Path<String>) -> Result<HttpResponse, crate::error::ApiError> {
    let path = path.into_inner();
    let bytes = get(&path).ok_or_else(|| crate::error::ApiError::not_found("not_found", "no such file"))?;
    Ok(HttpResponse::Ok().content_type(content_type(&path)).insert_header(("Cache-Control", "no-cache")).body(bytes))
}
