//! Documentation mirrors of the `protocol` and `settlement` types that web answers with. `protocol`
//! stays free of utoipa (it is the wire contract with third-party gateways); each mirror here has the
//! same name and fields as the type it stands for, and a test serializes the real type and compares
//! the field names, so a change there fails here.
//!
//! `settlement`'s query results whose fields are all plain numbers and strings on the wire
//! (`queries::Balances`, `GapLine`, `ZoneStats`, `rules::SlotTotals`) need no mirror: they derive their schema themselves
//! behind settlement's `openapi` feature, which web enables.

use utoipa::ToSchema;

/// A zone id: 1–32 characters of `[a-z0-9-]`.
pub const ZONE_PATTERN: &str = "^[a-z0-9-]{1,32}$";
/// An account or device id: its ed25519 public key, 64 lowercase hex digits.
pub const KEY_PATTERN: &str = "^[0-9a-f]{64}$";
/// A meter serial: 1–64 characters of `[A-Za-z0-9._:-]`.
pub const SERIAL_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

/// Order or trade side.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Only its schema is used.
pub enum Side {
    Buy,
    Sell,
}

/// Where an order stands.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OrderStatus {
    Open,
    Filled,
    Cancelled,
    Expired,
}

/// Time in force.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TimeInForce {
    Gtc,
    Ioc,
    Fok,
}

/// A change of one of the sender's orders (`protocol::OrderUpdate`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct OrderUpdate {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    /// The slot's start, unix ms.
    #[schema(minimum = 0)]
    slot: i64,
    /// The nonce of the order (not of the command that changed it).
    order_nonce: u64,
    status: OrderStatus,
    price_per_kwh: i64,
    /// Left to trade.
    #[schema(minimum = 0)]
    open_qty_wh: i64,
    /// Traded so far.
    #[schema(minimum = 0)]
    filled_qty_wh: i64,
    ts_ms: i64,
}

/// A trade (`protocol::Trade`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Trade {
    /// Exchange-wide, strictly increasing.
    trade_id: u64,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0)]
    slot: i64,
    price_per_kwh: i64,
    #[schema(minimum = 0)]
    qty_wh: i64,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    buyer: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    seller: String,
    buy_nonce: u64,
    sell_nonce: u64,
    /// The side of the inbound order that caused the trade.
    aggressor: Side,
    ts_ms: i64,
}

/// A meter's counters (`settlement::registry::MeterCounters`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct MeterCounters {
    #[schema(minimum = 0)]
    import_wh: i64,
    #[schema(minimum = 0)]
    export_wh: i64,
    #[schema(minimum = 0)]
    pv_wh: Option<i64>,
}

/// A registered meter replacement (`settlement::registry::MeterReplacement`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct MeterReplacement {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    device_id: String,
    replaced_at_ms: i64,
    /// The old meter's final counters.
    old: MeterCounters,
    /// The new meter's initial counters.
    new: MeterCounters,
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    new_meter_serial: String,
    /// The utility's reference for the swap (a work order).
    reference: String,
    registered_ms: i64,
}

/// A signed protocol order, cancel, replace or cancel_all (PROTOCOL.md §4.2–4.4, §4.8): the message's fields and its
/// ed25519 `sig` (128 hex digits) by the account's key over `gridex/v1/<type>\n` + the canonical JSON of
/// the other fields. At most 1024 bytes; integers only (a float such as `1.0` is refused).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum SignedCommand {
    Order(SignedOrder),
    Cancel(SignedCancel),
    Replace(SignedReplace),
    CancelAll(SignedCancelAll),
}

/// A new order.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SignedOrder {
    #[schema(pattern = "^order$")]
    r#type: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    /// The slot's start, unix ms, aligned to the zone's slot length.
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    slot: i64,
    side: Side,
    /// Micro-units of money per kWh.
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_i64)]
    price_per_kwh: i64,
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_i64)]
    qty_wh: i64,
    tif: TimeInForce,
    /// Rest only: refused instead of trading on arrival. Only with `gtc`.
    post_only: bool,
    /// Strictly increasing per account across orders, cancels and replaces; names the order.
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    nonce: i64,
    /// The market clock's time (`GET /api/v1/clock`), unix ms.
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    ts_ms: i64,
    #[schema(pattern = "^[0-9a-f]{128}$")]
    sig: String,
}

/// Cancels the account's order `order_nonce`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SignedCancel {
    #[schema(pattern = "^cancel$")]
    r#type: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    slot: i64,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    order_nonce: i64,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    nonce: i64,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    ts_ms: i64,
    #[schema(pattern = "^[0-9a-f]{128}$")]
    sig: String,
}

/// Cancels every resting order of the account in `zone` (or only in `slot`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SignedCancelAll {
    #[schema(pattern = "^cancel_all$")]
    r#type: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    /// Only this delivery slot's book; every open book of the zone when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    slot: Option<i64>,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    nonce: i64,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    ts_ms: i64,
    #[schema(pattern = "^[0-9a-f]{128}$")]
    sig: String,
}

/// Changes the price and open quantity of the account's order `order_nonce`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SignedReplace {
    #[schema(pattern = "^replace$")]
    r#type: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    slot: i64,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    order_nonce: i64,
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_i64)]
    price_per_kwh: i64,
    /// The new open quantity.
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_i64)]
    qty_wh: i64,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    nonce: i64,
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    ts_ms: i64,
    #[schema(pattern = "^[0-9a-f]{128}$")]
    sig: String,
}

/// A household's settlement statement of a slot (`protocol::Statement`). Money is in micro-units:
/// positive amounts are what the account receives, negative what it pays.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Statement {
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0)]
    slot: i64,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
    metered_import_wh: i64,
    metered_export_wh: i64,
    bought_wh: i64,
    sold_wh: i64,
    /// Metered net export − traded net sales.
    imbalance_wh: i64,
    purchases: i64,
    sales: i64,
    grid_fees: i64,
    protocol_fees: i64,
    utility_net: i64,
    /// Sum of the money lines above.
    net: i64,
    tokens_earned: i64,
    /// True when a device of the account had no readings around a slot boundary.
    no_data: bool,
}

/// Which side of the path a proof step's sibling is on.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SiblingSide {
    Left,
    Right,
}

/// One step of a Merkle inclusion proof (`protocol::merkle::ProofStep`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ProofStep {
    /// The sibling hash, 64 hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    sibling: String,
    side: SiblingSide,
}

/// A household's statement with its inclusion proof in the slot's signed root
/// (`settlement::queries::StatementProof`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct StatementProof {
    statement: Statement,
    leaf_index: u64,
    proof: Vec<ProofStep>,
    root: String,
    root_signature: String,
    operator: String,
    /// The protocol `slot_root` message as the operator signed it (JSON text).
    signed_root: String,
}

/// One price level of a book side (`protocol::Level`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Level {
    #[schema(minimum = 1)]
    price_per_kwh: i64,
    #[schema(minimum = 0)]
    qty_wh: i64,
    orders: u32,
}

/// Whether a book takes orders.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum BookState {
    Open,
    Closed,
}

/// The top of one slot's book, best first on each side (`protocol::BookSnapshot`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BookSnapshot {
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0)]
    slot: i64,
    /// Increases with every change of this book.
    seq: u64,
    state: BookState,
    bids: Vec<Level>,
    asks: Vec<Level>,
    ts_ms: i64,
    /// Present (true) while the zone's closing auction is calling.
    call_phase: Option<bool>,
    /// The prices the book accepts, fixed when it opened (absent on a closed book's last snapshot).
    price_band: Option<PriceBand>,
}

/// A book's accepted prices, inclusive, µ per kWh (`protocol::PriceBand`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PriceBand {
    #[schema(minimum = 1)]
    min_per_kwh: i64,
    #[schema(minimum = 1)]
    max_per_kwh: i64,
}

/// A closing auction's result (`protocol::AuctionResult`); no price when nothing crossed.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AuctionResult {
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0)]
    slot: i64,
    price_per_kwh: Option<i64>,
    #[schema(minimum = 0)]
    qty_wh: i64,
    trades: u64,
    ts_ms: i64,
}

/// The GRID reward parameters (`settlement::rewards::RewardSchedule`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RewardSchedule {
    genesis_ms: i64,
    epoch_len_ms: i64,
    /// Micro-GRID minted in each of the first `halving_epochs` epochs.
    initial_emission_per_epoch: i64,
    halving_epochs: i64,
    /// Micro-GRID that may ever exist.
    max_supply: i64,
}

/// GRID token supply and emission (`settlement::queries::TokenSupply`), in micro-GRID.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TokenSupply {
    supply: i64,
    max_supply: i64,
    epoch: i64,
    emission_per_epoch: i64,
    next_halving_epoch: i64,
    schedule: Option<RewardSchedule>,
}

/// A settled slot's root as the operator signed it (the protocol `slot_root` message, PROTOCOL.md §2.1):
/// verify `sig` against the pinned operator key.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SignedSlotRoot {
    #[schema(pattern = "^slot_root$")]
    r#type: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    #[schema(minimum = 0)]
    slot: i64,
    /// Merkle root of the slot's statements, 64 hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    root: String,
    statements: u64,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    operator: String,
    ts_ms: i64,
    #[schema(pattern = "^[0-9a-f]{128}$")]
    sig: String,
}

/// Which price a household faced in a slot (`settlement::battery::PriceBasis`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum PriceBasis {
    P2p,
    Retail,
    FeedIn,
}

/// A household's battery in one slot (`settlement::battery::BatterySlot`); `null` where not known.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BatterySlot {
    #[schema(minimum = 0)]
    slot: i64,
    charge_wh: Option<i64>,
    discharge_wh: Option<i64>,
    soc_permille: Option<u16>,
    capacity_wh: Option<i64>,
    price_per_kwh: Option<i64>,
    price_basis: Option<PriceBasis>,
    /// (discharge − charge) at that price, rounded down once per slot; never part of the ledger.
    earned: Option<i64>,
}

/// A household's battery now: its latest reading with a battery (`settlement::battery::BatteryNow`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BatteryNow {
    ts_ms: i64,
    soc_permille: Option<u16>,
    capacity_wh: Option<i64>,
    stored_wh: Option<i64>,
}

/// A household's battery over a range of slots (`settlement::battery::HouseholdBattery`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct HouseholdBattery {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    slot_len_ms: i64,
    now: Option<BatteryNow>,
    slots: Vec<BatterySlot>,
    charge_wh: i64,
    discharge_wh: i64,
    earned: i64,
}

/// A zone's storage in one slot (`settlement::battery::StorageSlot`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct StorageSlot {
    #[schema(minimum = 0)]
    slot: i64,
    charge_wh: i64,
    discharge_wh: i64,
    batteries: u64,
}

/// The home batteries of a zone (`settlement::battery::ZoneStorage`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ZoneStorage {
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    zone: String,
    slot_len_ms: i64,
    at_ms: i64,
    batteries: u64,
    capacity_wh: i64,
    stored_wh: i64,
    soc_permille: Option<u16>,
    slots: Vec<StorageSlot>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{MicroMoney, MicroTokens, PricePerKwh, SlotId, Wh};
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// `real` serialized reads back as its mirror: no field the mirror lacks (`deny_unknown_fields`),
    /// none it requires missing, every type alike.
    fn mirrors<M: DeserializeOwned + std::fmt::Debug>(real: &impl Serialize) {
        let json = serde_json::to_value(real).expect("serializes");
        if let Err(error) = serde_json::from_value::<M>(json.clone()) {
            panic!("{} does not mirror {json}: {error}", std::any::type_name::<M>());
        }
    }

    /// A type whose schema is derived on the type itself, `value_type` standing for its `protocol`
    /// newtypes: `real` serialized has exactly the schema's properties, every required one, each of
    /// the JSON type the schema names.
    fn fits_its_schema<T: ToSchema + Serialize>(real: &T) {
        let name = std::any::type_name::<T>();
        let json = serde_json::to_value(real).expect("serializes");
        let fields = json.as_object().expect("serializes as an object");
        let schema = serde_json::to_value(T::schema()).expect("schema as JSON");
        let properties = schema["properties"].as_object().expect("an object schema");
        let names = |map: &serde_json::Map<String, serde_json::Value>| map.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(fields), names(properties), "{name}: the fields and the schema's properties");
        for required in schema["required"].as_array().expect("required fields") {
            let required = required.as_str().expect("a field name");
            assert!(!fields[required].is_null(), "{name}: required {required} is absent or null");
        }
        for (field, value) in fields {
            let json_type = match value {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "boolean",
                serde_json::Value::Number(number) if number.is_f64() => "number",
                serde_json::Value::Number(_) => "integer",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "object",
            };
            let types = match &properties[field]["type"] {
                serde_json::Value::String(one) => vec![one.as_str()],
                serde_json::Value::Array(some) => some.iter().filter_map(serde_json::Value::as_str).collect(),
                other => panic!("{name}.{field}: no type in the schema ({other})"),
            };
            assert!(types.contains(&json_type), "{name}.{field}: {value} is not of the schema's type {types:?}");
        }
    }

    #[test]
    fn the_protocol_mirrors_have_the_fields_of_the_protocol_types() {
        mirrors::<OrderUpdate>(&protocol::testing::sample_order_update());
        mirrors::<Trade>(&protocol::testing::sample_trade());
        mirrors::<Statement>(&protocol::testing::sample_statement(1));
        let key = protocol::testing::signing_key(1);
        let order = protocol::Signed::sign(protocol::testing::sample_order(&key), &key).expect("signs");
        let order: serde_json::Value = serde_json::from_slice(&order.to_json()).expect("json");
        mirrors::<SignedOrder>(&order);
        mirrors::<SignedCommand>(&order);
        for slot in [None, Some(SlotId::new(900_000).expect("slot"))] {
            let cancel_all = protocol::CancelAll {
                account: protocol::AccountId::from_verifying_key(&key.verifying_key()),
                zone: protocol::testing::zone(),
                slot,
                nonce: 9,
                ts_ms: protocol::TimestampMs(5),
            };
            let signed = protocol::Signed::sign(cancel_all, &key).expect("signs").to_json();
            let signed: serde_json::Value = serde_json::from_slice(&signed).expect("json");
            mirrors::<SignedCancelAll>(&signed);
            mirrors::<SignedCommand>(&signed);
        }
        mirrors::<BookSnapshot>(&protocol::testing::sample_book());
        let band = protocol::PriceBand { min_per_kwh: PricePerKwh(1_000), max_per_kwh: PricePerKwh(250_000) };
        mirrors::<BookSnapshot>(&protocol::BookSnapshot { price_band: Some(band), ..protocol::testing::sample_book() });
        let operator = protocol::testing::operator_key();
        let root = protocol::SlotRoot {
            zone: protocol::testing::zone(),
            slot: SlotId::new(900_000).expect("slot"),
            root: "cd".repeat(32),
            statements: 2,
            operator: protocol::AccountId::from_verifying_key(&operator.verifying_key()),
            ts_ms: protocol::TimestampMs(5),
        };
        let root = protocol::Signed::sign(root, &operator).expect("signs").to_json();
        mirrors::<SignedSlotRoot>(&serde_json::from_slice::<serde_json::Value>(&root).expect("json"));
        mirrors::<AuctionResult>(&protocol::AuctionResult {
            zone: protocol::testing::zone(),
            slot: SlotId::new(900_000).expect("slot"),
            price_per_kwh: Some(PricePerKwh(5)),
            qty_wh: Wh(6),
            trades: 7,
            ts_ms: protocol::TimestampMs(8),
        });
        mirrors::<ProofStep>(&protocol::merkle::ProofStep {
            sibling: "ab".repeat(32),
            side: protocol::merkle::SiblingSide::Left,
        });
    }

    #[test]
    fn the_settlement_mirrors_have_the_fields_of_the_settlement_types() {
        let counters = settlement::registry::MeterCounters { import_wh: 1, export_wh: 2, pv_wh: Some(3) };
        mirrors::<MeterCounters>(&counters);
        mirrors::<MeterReplacement>(&settlement::registry::MeterReplacement {
            device_id: protocol::DeviceId::from_verifying_key(&protocol::testing::signing_key(2).verifying_key()),
            replaced_at_ms: 10,
            old: counters,
            new: settlement::registry::MeterCounters { import_wh: 0, export_wh: 0, pv_wh: None },
            new_meter_serial: protocol::MeterSerial::parse("SN-1").expect("serial"),
            reference: "WO-1".to_owned(),
            registered_ms: 11,
        });
        let slot = SlotId::new(900_000).expect("slot");
        mirrors::<HouseholdBattery>(&settlement::battery::HouseholdBattery {
            account: "ab".repeat(32),
            zone: protocol::testing::zone(),
            slot_len_ms: 900_000,
            now: Some(settlement::battery::BatteryNow {
                ts_ms: 1,
                soc_permille: Some(500),
                capacity_wh: Some(Wh(10_000)),
                stored_wh: None,
            }),
            slots: vec![settlement::battery::BatterySlot {
                slot,
                charge_wh: Some(Wh(1)),
                discharge_wh: None,
                soc_permille: Some(2),
                capacity_wh: Some(Wh(3)),
                price_per_kwh: Some(PricePerKwh(4)),
                price_basis: Some(settlement::battery::PriceBasis::FeedIn),
                earned: Some(MicroMoney(-5)),
            }],
            charge_wh: Wh(1),
            discharge_wh: Wh(0),
            earned: MicroMoney(-5),
        });
        mirrors::<ZoneStorage>(&settlement::battery::ZoneStorage {
            zone: protocol::testing::zone(),
            slot_len_ms: 900_000,
            at_ms: 2,
            batteries: 3,
            capacity_wh: Wh(4),
            stored_wh: Wh(5),
            soc_permille: None,
            slots: vec![settlement::battery::StorageSlot { slot, charge_wh: Wh(6), discharge_wh: Wh(7), batteries: 1 }],
        });
        mirrors::<TokenSupply>(&settlement::queries::TokenSupply {
            supply: MicroTokens(1),
            max_supply: MicroTokens(2),
            epoch: 3,
            emission_per_epoch: MicroTokens(4),
            next_halving_epoch: 5,
            schedule: Some(settlement::rewards::RewardSchedule {
                genesis_ms: 0,
                epoch_len_ms: 86_400_000,
                initial_emission_per_epoch: 10,
                halving_epochs: 365,
                max_supply: 21,
            }),
        });
        fits_its_schema(&settlement::queries::Balances {
            account: "ab".repeat(32),
            money: MicroMoney(-5),
            grid: MicroTokens(7),
        });
        fits_its_schema(&settlement::queries::ZoneStats {
            zone: protocol::testing::zone(),
            self_sufficiency_bps: 1,
            p2p_wh: Wh(2),
            traded_wh: Wh(3),
            utility_supplied_wh: Wh(4),
            utility_absorbed_wh: Wh(5),
            household_savings: MicroMoney(6),
            tokens_emitted: MicroTokens(7),
            settled_slots: 8,
            last_settled_slot: SlotId::new(900_000).ok(),
        });
        fits_its_schema(&settlement::queries::GapLine {
            zone: protocol::testing::zone(),
            slot: SlotId::new(900_000).expect("slot"),
            account: "ab".repeat(32),
            gap_start_ms: 0,
            import_wh: Wh(1),
            export_wh: Wh(2),
            bought_wh: Wh(3),
            retail_price_per_kwh: PricePerKwh(4),
            feed_in_price_per_kwh: PricePerKwh(5),
            charged: MicroMoney(-6),
            credited: MicroMoney(7),
            tx_id: 8,
        });
        fits_its_schema(&settlement::rules::SlotTotals::default());
    }
}
