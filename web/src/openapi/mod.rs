//! The OpenAPI document's parts that do not come from the route table: the schemas, derived with
//! utoipa from the request and response types the handlers read and answer (`#[derive(ToSchema)]`
//! next to each type), the mirrors of `protocol`/`settlement` types ([`wire`]), and the security
//! schemes. [`crate::routes::openapi_document`] adds the paths from the route table.
//!
//! A handler's new body or response type gets into the document by deriving `utoipa::ToSchema`,
//! being listed in [`components`], and being named in its route table entry (`.body(..)`,
//! `.returns(..)`); a test checks every name the routes use is a schema here.

pub mod wire;

use utoipa::openapi::security::SecurityScheme;
use utoipa::openapi::{Components, ComponentsBuilder};
use utoipa::ToSchema;

/// The name of the trader request-signature scheme in `components.securitySchemes`.
pub const TRADER_SCHEME: &str = "traderSignature";
/// The name of the utility API-key scheme.
pub const UTILITY_SCHEME: &str = "utilityKey";

/// Every schema and security scheme the document refers to.
pub fn components() -> Components {
    Schemas(ComponentsBuilder::new())
        .schema::<crate::error::ErrorBody>()
        .schema::<crate::utility::NewZone>()
        .schema::<crate::public::TariffView>()
        .schema::<crate::public::TariffBandView>()
        .schema::<crate::public::ZoneView>()
        .schema::<crate::public::Candle>()
        .schema::<crate::market::SlotView>()
        .schema::<crate::market::OpenOrder>()
        .schema::<crate::market::OrderReply>()
        .schema::<crate::utility::NewAccount>()
        .schema::<crate::registry::NewDevice>()
        .schema::<crate::registry::DeviceRegistration>()
        .schema::<crate::reconcile::ReconcileReport>()
        .schema::<crate::reconcile::Difference>()
        .schema::<crate::reconcile::OneSided>()
        .schema::<crate::reconcile::Totals>()
        .schema::<crate::utility::NewReplacement>()
        .schema::<crate::utility::SilentDevice>()
        .schema::<crate::utility::NewWebhook>()
        .schema::<crate::utility::WebhookCreated>()
        .schema::<crate::webhooks::Webhook>()
        .schema::<crate::trader::IntervalReading>()
        .schema::<crate::trader::RefusedReading>()
        .schema::<wire::SignedCommand>()
        .schema::<wire::MeterReplacement>()
        .schema::<wire::Trade>()
        .schema::<SlotReport>()
        .schema::<wire::Statement>()
        .schema::<wire::StatementProof>()
        .schema::<settlement::queries::Balances>()
        .schema::<settlement::queries::ZoneStats>()
        .schema::<wire::BookSnapshot>()
        .schema::<wire::AuctionResult>()
        .schema::<wire::TokenSupply>()
        .schema::<wire::SignedSlotRoot>()
        .schema::<wire::HouseholdBattery>()
        .schema::<wire::ZoneStorage>()
        .schema::<crate::trader::ReadingEntry>()
        .schema::<crate::state::DemoHousehold>()
        .schema::<crate::ops::Health>()
        .schema::<crate::ops::Readiness>()
        .schema::<crate::ops::MarketClock>()
        .schema::<crate::ops::OperatorKey>()
        .0
        .security_scheme(TRADER_SCHEME, trader_scheme())
        .security_scheme(UTILITY_SCHEME, utility_scheme())
        .build()
}

/// Adds a type's schema with every schema it refers to (utoipa's `schema_from` adds the type alone).
struct Schemas(ComponentsBuilder);

impl Schemas {
    fn schema<T: ToSchema>(self) -> Schemas {
        let mut referenced = Vec::new();
        T::schemas(&mut referenced);
        Schemas(self.0.schema_from::<T>().schemas_from_iter(referenced))
    }
}

fn trader_scheme() -> SecurityScheme {
    let key = utoipa::openapi::security::ApiKeyValue::with_description(
        "X-Gridex-Signature",
        "ed25519 signature (128 hex digits) of the account key over `gridex/v1/request\\n` + the canonical JSON \
         of {account, body_sha256, method, path (with the query), ts_ms}; the request also carries \
         X-Gridex-Account (64 hex digits) and X-Gridex-Timestamp (unix ms, within ±60 s of the server's clock). \
         Each signed request is accepted once.",
    );
    SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(key))
}

fn utility_scheme() -> SecurityScheme {
    let mut http = utoipa::openapi::security::Http::new(utoipa::openapi::security::HttpAuthScheme::Bearer);
    http.description = Some("An API key with the utility role (`gridex api-key create`, or the settings)".to_owned());
    SecurityScheme::Http(http)
}

/// A settled slot's report (`settlement::queries::SlotReport`) with the zone's devices that were
/// silent at the end of the slot.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SlotReport {
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0)]
    slot: i64,
    slot_len_ms: i64,
    closed_ms: i64,
    /// Merkle root of the statements, 64 hex digits.
    root: String,
    root_signature: String,
    operator: String,
    // `SlotTotals` and `GapLine` derive their schemas in settlement and only serialize; this mirror is
    // never read, and derives `Deserialize` only for `deny_unknown_fields` (`additionalProperties: false`).
    #[schema(value_type = settlement::rules::SlotTotals)]
    totals: serde::de::IgnoredAny,
    /// In Merkle leaf order (account id).
    statements: Vec<wire::Statement>,
    #[schema(value_type = Vec<settlement::queries::GapLine>)]
    gaps: Vec<serde::de::IgnoredAny>,
    silent_devices: Vec<crate::utility::SilentDevice>,
}
