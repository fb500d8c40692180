//! The messages of the wire contract. Field names, types, units and limits are documented in
//! PROTOCOL.md; a change here is a change of the protocol.

use crate::ids::{AccountId, DeviceId, MeterSerial, SlotId, ZoneId};
use crate::reason::Reason;
use crate::units::{MicroMoney, MicroTokens, PowerW, PricePerKwh, TimestampMs, Wh, MAX_SAFE_INTEGER};
use crate::wire::{OperatorSigned, ProtocolError, Signable, Version, WireMessage};
use serde::{Deserialize, Serialize};

/// Largest signed message from a gateway or trader. A reading or order encodes to about 450 bytes;
/// 1 KiB leaves room for long serials without letting a sender make us buffer much.
pub const SIGNED_MESSAGE_BYTES_MAX: usize = 1024;
/// Largest outbound message (a book snapshot of `BOOK_LEVELS_MAX` levels a side).
pub const OUTBOUND_MESSAGE_BYTES_MAX: usize = 16 * 1024;
/// Levels per side in a published book snapshot.
pub const BOOK_LEVELS_MAX: usize = 20;
/// Largest instantaneous power a reading may report: 100 MW is beyond any household connection.
pub const POWER_W_MAX: i64 = 100_000_000;
/// Longest human-readable text in a reject.
pub const REJECT_MESSAGE_LEN_MAX: usize = 256;

fn invalid(field: &str, text: &str) -> ProtocolError {
    ProtocolError::new(Reason::InvalidValue, format!("`{field}` {text}"))
}

fn require(condition: bool, field: &str, text: &str) -> Result<(), ProtocolError> {
    if condition {
        Ok(())
    } else {
        Err(invalid(field, text))
    }
}

fn non_negative_time(ts_ms: TimestampMs) -> Result<(), ProtocolError> {
    require(ts_ms.0 >= 0, "ts_ms", "must be a unix time in milliseconds")
}

/// Largest state of charge: 1000 ‰ is a full battery.
pub const BATTERY_SOC_PERMILLE_MAX: u16 = 1000;

/// A meter reading: cumulative counters at one instant, signed by the device key.
///
/// Sign convention: `import_wh` (energy taken from the grid) and `export_wh` (energy fed into the
/// grid) are separate, non-negative, monotonic counters; `pv_wh` counts PV production.
/// `power_w` is the net power at the grid connection point, positive when importing.
///
/// The `battery_*` fields describe a home battery behind the grid meter; a reading carrying any of
/// them is a version 2 reading ([`Reading::version`]): signed under `gridex/v2/reading\n` and sent
/// on the v2 readings topic (PROTOCOL.md §4.1, §9). Settlement never counts them as grid energy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    pub device: DeviceId,
    pub zone: ZoneId,
    pub meter_serial: MeterSerial,
    /// Per-device sequence number, strictly increasing across readings (restarts do not reset it).
    pub seq: u64,
    pub ts_ms: TimestampMs,
    pub import_wh: Wh,
    pub export_wh: Wh,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv_wh: Option<Wh>,
    pub power_w: PowerW,
    /// Cumulative AC energy into the battery (a counter, like `import_wh`). Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_charge_wh: Option<Wh>,
    /// Cumulative AC energy out of the battery (a counter). Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_discharge_wh: Option<Wh>,
    /// State of charge in per mille, 0..=1000. Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_soc_permille: Option<u16>,
    /// Usable capacity as the device reports it, > 0. Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_capacity_wh: Option<Wh>,
}

impl Reading {
    /// The names of the battery fields, which only a version 2 reading has.
    pub const BATTERY_FIELDS: [&'static str; 4] =
        ["battery_charge_wh", "battery_discharge_wh", "battery_soc_permille", "battery_capacity_wh"];

    /// The version of a reading as encoded (its JSON bytes), from its field names alone: for a
    /// sender that kept only the bytes (a gateway's spool) and must choose the topic, or a receiver
    /// whose channel names no version. Bytes that are not a JSON object are version 1, whose
    /// strict parser then says what is wrong with them.
    pub fn version_of_encoded(bytes: &[u8]) -> Version {
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes) {
            Ok(object) if Self::BATTERY_FIELDS.iter().any(|name| object.contains_key(*name)) => Version::V2,
            _ => Version::V1,
        }
    }

    /// True when the reading reports a battery (any `battery_*` field).
    pub fn has_battery(&self) -> bool {
        self.battery_charge_wh.is_some()
            || self.battery_discharge_wh.is_some()
            || self.battery_soc_permille.is_some()
            || self.battery_capacity_wh.is_some()
    }
}

impl WireMessage for Reading {
    const TYPE: &'static str = "reading";
    const SIZE_MAX: usize = SIGNED_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        non_negative_time(self.ts_ms)?;
        require(self.import_wh.0 >= 0, "import_wh", "must not be negative")?;
        require(self.export_wh.0 >= 0, "export_wh", "must not be negative")?;
        require(self.pv_wh.is_none_or(|pv| pv.0 >= 0), "pv_wh", "must not be negative")?;
        require(self.power_w.0.abs() <= POWER_W_MAX, "power_w", "exceeds 100 MW")?;
        require(self.battery_charge_wh.is_none_or(|wh| wh.0 >= 0), "battery_charge_wh", "must not be negative")?;
        require(self.battery_discharge_wh.is_none_or(|wh| wh.0 >= 0), "battery_discharge_wh", "must not be negative")?;
        require(
            self.battery_soc_permille.is_none_or(|soc| soc <= BATTERY_SOC_PERMILLE_MAX),
            "battery_soc_permille",
            "must be at most 1000",
        )?;
        require(self.battery_capacity_wh.is_none_or(|wh| wh.0 > 0), "battery_capacity_wh", "must be positive")
    }

    /// A battery makes the reading version 2 (PROTOCOL.md §9: a new inbound field is a new version).
    fn version(&self) -> Version {
        if self.has_battery() {
            Version::V2
        } else {
            Version::V1
        }
    }

    fn check_version(
        object: &serde_json::Map<String, serde_json::Value>,
        channel: Version,
    ) -> Result<(), ProtocolError> {
        let battery = Self::BATTERY_FIELDS.iter().find(|name| object.contains_key(**name));
        match (channel, battery) {
            (Version::V1, Some(name)) => Err(ProtocolError::new(
                Reason::UnknownField,
                format!("unknown field `{name}`: a reading with a battery is version 2 (gridex/v2)"),
            )),
            (Version::V2, None) => Err(ProtocolError::new(
                Reason::MissingField,
                "a version 2 reading carries at least one `battery_*` field; send it as version 1",
            )),
            _ => Ok(()),
        }
    }
}

impl Signable for Reading {
    fn signer(&self) -> [u8; 32] {
        self.device.0
    }
}

impl crate::wire::Signed<Reading> {
    /// Parses a reading on the version its bytes say ([`Reading::version_of_encoded`]), for bytes
    /// that came by no versioned channel: a stored payload, a direct (HTTP) submission. A reading
    /// with a battery field is then checked against the v2 tag, any other one against the v1 tag.
    pub fn parse_as_encoded(bytes: &[u8]) -> Result<Self, ProtocolError> {
        Self::parse_on(bytes, Reading::version_of_encoded(bytes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// How long an order may rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeInForce {
    /// Good till cancelled: rests until filled, cancelled, or gate closure of its slot.
    Gtc,
    /// Immediate or cancel: trades what it can on arrival, the rest is cancelled.
    Ioc,
    /// Fill or kill: trades in full on arrival or not at all.
    Fok,
}

/// A limit order for one delivery slot, signed by the account key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub account: AccountId,
    pub zone: ZoneId,
    pub slot: SlotId,
    pub side: Side,
    pub price_per_kwh: PricePerKwh,
    pub qty_wh: Wh,
    pub tif: TimeInForce,
    /// Rest only: reject instead of trading on arrival. Only with `gtc`.
    pub post_only: bool,
    /// Per-account nonce, strictly increasing across orders, cancels and replaces. With `account` it
    /// also names the order.
    pub nonce: u64,
    pub ts_ms: TimestampMs,
}

impl Order {
    /// A good-till-cancelled limit order that may trade on arrival (not post-only), what agents and
    /// most clients send; give it its nonce and timestamp with [`Order::at`].
    pub fn gtc(
        account: AccountId,
        zone: ZoneId,
        slot: SlotId,
        side: Side,
        price_per_kwh: PricePerKwh,
        qty_wh: Wh,
    ) -> Self {
        Self {
            account,
            zone,
            slot,
            side,
            price_per_kwh,
            qty_wh,
            tif: TimeInForce::Gtc,
            post_only: false,
            nonce: 0,
            ts_ms: TimestampMs(0),
        }
    }

    /// This order as the account's command `nonce`, made at `ts_ms`.
    pub fn at(self, nonce: u64, ts_ms: TimestampMs) -> Self {
        Self { nonce, ts_ms, ..self }
    }
}

fn validate_price_qty(price: PricePerKwh, qty: Wh) -> Result<(), ProtocolError> {
    require(price.0 > 0, "price_per_kwh", "must be positive")?;
    require(qty.0 > 0, "qty_wh", "must be positive")
}

impl WireMessage for Order {
    const TYPE: &'static str = "order";
    const SIZE_MAX: usize = SIGNED_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        non_negative_time(self.ts_ms)?;
        validate_price_qty(self.price_per_kwh, self.qty_wh)?;
        require(!self.post_only || self.tif == TimeInForce::Gtc, "post_only", "is only allowed with tif gtc")
    }
}

impl Signable for Order {
    fn signer(&self) -> [u8; 32] {
        self.account.0
    }
}

/// Cancels the account's open order `order_nonce` in `slot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    pub account: AccountId,
    pub zone: ZoneId,
    pub slot: SlotId,
    pub order_nonce: u64,
    pub nonce: u64,
    pub ts_ms: TimestampMs,
}

impl WireMessage for Cancel {
    const TYPE: &'static str = "cancel";
    const SIZE_MAX: usize = SIGNED_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        non_negative_time(self.ts_ms)
    }
}

impl Signable for Cancel {
    fn signer(&self) -> [u8; 32] {
        self.account.0
    }
}

/// Cancels every resting order of the account in one zone, or only in one slot of it (PROTOCOL.md
/// §4.8). A zone is the unit one exchange process owns, so "all zones" is the client sending one
/// per zone it trades in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAll {
    pub account: AccountId,
    pub zone: ZoneId,
    /// Only this delivery slot's book; every open book of the zone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotId>,
    pub nonce: u64,
    pub ts_ms: TimestampMs,
}

impl WireMessage for CancelAll {
    const TYPE: &'static str = "cancel_all";
    const SIZE_MAX: usize = SIGNED_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        non_negative_time(self.ts_ms)
    }
}

impl Signable for CancelAll {
    fn signer(&self) -> [u8; 32] {
        self.account.0
    }
}

/// Changes the price and/or open quantity of the account's open order `order_nonce`. Reducing the
/// quantity at the same price keeps the order's time priority; any other change loses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    pub account: AccountId,
    pub zone: ZoneId,
    pub slot: SlotId,
    pub order_nonce: u64,
    pub price_per_kwh: PricePerKwh,
    /// The new open quantity.
    pub qty_wh: Wh,
    pub nonce: u64,
    pub ts_ms: TimestampMs,
}

impl WireMessage for Replace {
    const TYPE: &'static str = "replace";
    const SIZE_MAX: usize = SIGNED_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        non_negative_time(self.ts_ms)?;
        validate_price_qty(self.price_per_kwh, self.qty_wh)
    }
}

impl Signable for Replace {
    fn signer(&self) -> [u8; 32] {
        self.account.0
    }
}

/// A trade: `qty_wh` delivered by `seller` to `buyer` in `slot` at the resting order's price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trade {
    /// Exchange-wide, strictly increasing trade id.
    pub trade_id: u64,
    pub zone: ZoneId,
    pub slot: SlotId,
    pub price_per_kwh: PricePerKwh,
    pub qty_wh: Wh,
    pub buyer: AccountId,
    pub seller: AccountId,
    pub buy_nonce: u64,
    pub sell_nonce: u64,
    /// The side of the inbound order that caused the trade.
    pub aggressor: Side,
    pub ts_ms: TimestampMs,
}

impl OperatorSigned for Trade {}

impl WireMessage for Trade {
    const TYPE: &'static str = "trade";
    const SIZE_MAX: usize = OUTBOUND_MESSAGE_BYTES_MAX;
}

/// Why the exchange refused a message; sent on the sender's reject topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// The `type` of the refused message, or `unknown` when it could not be parsed that far.
    pub of: String,
    /// The refused message's sequence number or nonce, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub reason: Reason,
    pub message: String,
    pub ts_ms: TimestampMs,
}

impl OperatorSigned for Reject {}

impl WireMessage for Reject {
    const TYPE: &'static str = "reject";
    const SIZE_MAX: usize = OUTBOUND_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        require(self.message.len() <= REJECT_MESSAGE_LEN_MAX, "message", "is too long")
    }
}

/// The state of an order after an event, sent on the account's events topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted and durable; resting in the book with `open_qty_wh` left.
    Open,
    Filled,
    Cancelled,
    /// Removed at gate closure.
    Expired,
}

/// An acknowledgement that a command was committed, with the resulting state of the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderUpdate {
    pub account: AccountId,
    pub zone: ZoneId,
    pub slot: SlotId,
    /// The nonce of the order (not of the command that changed it).
    pub order_nonce: u64,
    pub status: OrderStatus,
    pub price_per_kwh: PricePerKwh,
    pub open_qty_wh: Wh,
    pub filled_qty_wh: Wh,
    pub ts_ms: TimestampMs,
}

impl OperatorSigned for OrderUpdate {}

impl WireMessage for OrderUpdate {
    const TYPE: &'static str = "order_update";
    const SIZE_MAX: usize = OUTBOUND_MESSAGE_BYTES_MAX;
}

/// Acknowledges that a reading was accepted and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingAck {
    pub device: DeviceId,
    pub seq: u64,
    pub ts_ms: TimestampMs,
}

impl OperatorSigned for ReadingAck {}

impl WireMessage for ReadingAck {
    const TYPE: &'static str = "reading_ack";
    const SIZE_MAX: usize = OUTBOUND_MESSAGE_BYTES_MAX;
}

/// One price level of a book snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    pub price_per_kwh: PricePerKwh,
    pub qty_wh: Wh,
    pub orders: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookState {
    Open,
    /// Gate closure has passed; no more orders.
    Closed,
}

/// The top of one slot's book: best first on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookSnapshot {
    pub zone: ZoneId,
    pub slot: SlotId,
    /// Increases with every change of this book; a consumer drops snapshots older than one it has.
    pub seq: u64,
    pub state: BookState,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
    pub ts_ms: TimestampMs,
    /// Present (true) while the zone's closing auction is calling: orders rest without trading, so the
    /// bids and asks may cross until gate closure uncrosses them at one price. Omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_phase: Option<bool>,
    /// The prices this book accepts, fixed when it opened: the slot's feed-in..retail tariff on the
    /// tick grid (PROTOCOL.md, "Price band"). Omitted by exchanges that predate it and on a closed
    /// book's last snapshot; a trading agent quotes inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_band: Option<PriceBand>,
}

/// A book's accepted prices, inclusive, in micro-units per kWh on the book's tick grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBand {
    pub min_per_kwh: PricePerKwh,
    pub max_per_kwh: PricePerKwh,
}

impl OperatorSigned for BookSnapshot {}

impl WireMessage for BookSnapshot {
    const TYPE: &'static str = "book";
    const SIZE_MAX: usize = OUTBOUND_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        require(self.bids.len() <= BOOK_LEVELS_MAX, "bids", "has too many levels")?;
        require(self.asks.len() <= BOOK_LEVELS_MAX, "asks", "has too many levels")?;
        match self.price_band {
            Some(band) => require(
                0 < band.min_per_kwh.get() && band.min_per_kwh <= band.max_per_kwh,
                "price_band",
                "must satisfy 0 < min_per_kwh <= max_per_kwh",
            ),
            None => Ok(()),
        }
    }
}

/// The outcome of a zone's closing auction for one slot, published once at gate closure (retained):
/// the uniform price every auction trade of the slot used and the volume and number of those trades.
/// `price_per_kwh` is omitted when no bid reached any ask (then `qty_wh` and `trades` are 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuctionResult {
    pub zone: ZoneId,
    pub slot: SlotId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_kwh: Option<PricePerKwh>,
    pub qty_wh: Wh,
    pub trades: u64,
    pub ts_ms: TimestampMs,
}

impl OperatorSigned for AuctionResult {}

impl WireMessage for AuctionResult {
    const TYPE: &'static str = "auction";
    const SIZE_MAX: usize = OUTBOUND_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        require(self.qty_wh.0 >= 0, "qty_wh", "must not be negative")?;
        require(self.price_per_kwh.is_some() || self.qty_wh.0 == 0, "price_per_kwh", "is required when qty_wh > 0")
    }
}

/// A device's retained presence on `gridex/v1/status/{device}`; the broker publishes the offline
/// form as the gateway's last will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub device: DeviceId,
    pub online: bool,
}

impl WireMessage for Status {
    const TYPE: &'static str = "status";
    const SIZE_MAX: usize = SIGNED_MESSAGE_BYTES_MAX;
}

/// One account's settlement statement for one slot: the leaf of the slot's Merkle tree.
/// Money is in micro-units: positive amounts are what the account receives, negative what it pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub zone: ZoneId,
    pub slot: SlotId,
    pub account: AccountId,
    pub metered_import_wh: Wh,
    pub metered_export_wh: Wh,
    pub bought_wh: Wh,
    pub sold_wh: Wh,
    /// Metered net export − traded net sales: positive was sold to the utility at the feed-in
    /// tariff, negative was bought from it at the retail price.
    pub imbalance_wh: Wh,
    pub purchases: MicroMoney,
    pub sales: MicroMoney,
    pub grid_fees: MicroMoney,
    pub protocol_fees: MicroMoney,
    pub utility_net: MicroMoney,
    /// Sum of the money lines above.
    pub net: MicroMoney,
    pub tokens_earned: MicroTokens,
    /// True when a device of the account had no readings around a slot boundary.
    pub no_data: bool,
}

impl WireMessage for Statement {
    const TYPE: &'static str = "statement";
    const SIZE_MAX: usize = OUTBOUND_MESSAGE_BYTES_MAX;
}

/// The operator's signed commitment to a settled slot's statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRoot {
    pub zone: ZoneId,
    pub slot: SlotId,
    /// Merkle root of the slot's statements, 64 lowercase hex digits.
    pub root: String,
    pub statements: u64,
    pub operator: AccountId,
    pub ts_ms: TimestampMs,
}

impl WireMessage for SlotRoot {
    const TYPE: &'static str = "slot_root";
    const SIZE_MAX: usize = SIGNED_MESSAGE_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        let hex_ok =
            self.root.len() == 64 && self.root.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        require(hex_ok, "root", "is 64 lowercase hex digits")
    }
}

impl OperatorSigned for SlotRoot {
    fn named_operator(&self) -> Option<[u8; 32]> {
        Some(self.operator.0)
    }
}

impl Signable for SlotRoot {
    fn signer(&self) -> [u8; 32] {
        self.operator.0
    }
}

/// Any order-entry command, as carried on an account's orders topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Order(crate::wire::Signed<Order>),
    Cancel(crate::wire::Signed<Cancel>),
    Replace(crate::wire::Signed<Replace>),
    CancelAll(crate::wire::Signed<CancelAll>),
}

impl Command {
    /// Parses an order, cancel, replace or cancel-all by its `type` field.
    pub fn parse(bytes: &[u8]) -> Result<Command, ProtocolError> {
        use crate::wire::{decode_any, Signed};
        let (type_name, object) = decode_any(bytes, SIGNED_MESSAGE_BYTES_MAX)?;
        match type_name.as_str() {
            Order::TYPE => Signed::from_object(object, Version::V1).map(Command::Order),
            Cancel::TYPE => Signed::from_object(object, Version::V1).map(Command::Cancel),
            Replace::TYPE => Signed::from_object(object, Version::V1).map(Command::Replace),
            CancelAll::TYPE => Signed::from_object(object, Version::V1).map(Command::CancelAll),
            other => Err(ProtocolError::new(
                Reason::WrongMessageType,
                format!("expected order, cancel, replace or cancel_all, found `{other}`"),
            )),
        }
    }
    pub fn account(&self) -> AccountId {
        match self {
            Command::Order(signed) => signed.message.account,
            Command::Cancel(signed) => signed.message.account,
            Command::Replace(signed) => signed.message.account,
            Command::CancelAll(signed) => signed.message.account,
        }
    }
    pub fn zone(&self) -> &ZoneId {
        match self {
            Command::Order(signed) => &signed.message.zone,
            Command::Cancel(signed) => &signed.message.zone,
            Command::Replace(signed) => &signed.message.zone,
            Command::CancelAll(signed) => &signed.message.zone,
        }
    }
    pub fn nonce(&self) -> u64 {
        match self {
            Command::Order(signed) => signed.message.nonce,
            Command::Cancel(signed) => signed.message.nonce,
            Command::Replace(signed) => signed.message.nonce,
            Command::CancelAll(signed) => signed.message.nonce,
        }
    }
    pub fn ts_ms(&self) -> TimestampMs {
        match self {
            Command::Order(signed) => signed.message.ts_ms,
            Command::Cancel(signed) => signed.message.ts_ms,
            Command::Replace(signed) => signed.message.ts_ms,
            Command::CancelAll(signed) => signed.message.ts_ms,
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::Order(_) => Order::TYPE,
            Command::Cancel(_) => Cancel::TYPE,
            Command::Replace(_) => Replace::TYPE,
            Command::CancelAll(_) => CancelAll::TYPE,
        }
    }
    pub fn verify(&self) -> Result<(), ProtocolError> {
        match self {
            Command::Order(signed) => signed.verify(),
            Command::Cancel(signed) => signed.verify(),
            Command::Replace(signed) => signed.verify(),
            Command::CancelAll(signed) => signed.verify(),
        }
    }
    /// The bytes the signature covers (domain tag and canonical JSON).
    pub fn signing_bytes(&self) -> &[u8] {
        match self {
            Command::Order(signed) => signed.signing_bytes(),
            Command::Cancel(signed) => signed.signing_bytes(),
            Command::Replace(signed) => signed.signing_bytes(),
            Command::CancelAll(signed) => signed.signing_bytes(),
        }
    }
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Command::Order(signed) => signed.to_json(),
            Command::Cancel(signed) => signed.to_json(),
            Command::Replace(signed) => signed.to_json(),
            Command::CancelAll(signed) => signed.to_json(),
        }
    }
}

/// Largest sequence number or nonce: the largest safe JSON integer.
pub const SEQ_MAX: u64 = MAX_SAFE_INTEGER as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    fn result(price: Option<i64>, qty_wh: i64) -> AuctionResult {
        AuctionResult {
            zone: ZoneId::parse("north").expect("a valid zone"),
            slot: SlotId::new(1_800_000).expect("a valid slot"),
            price_per_kwh: price.map(PricePerKwh),
            qty_wh: Wh(qty_wh),
            trades: 2,
            ts_ms: TimestampMs(1_500_000),
        }
    }

    #[test]
    fn an_auction_result_round_trips_and_omits_a_missing_price() {
        let traded = result(Some(150_000), 500);
        assert_eq!(decode::<AuctionResult>(&encode(&traded).expect("encodes")).expect("decodes"), traded);
        let empty = AuctionResult { trades: 0, ..result(None, 0) };
        let bytes = encode(&empty).expect("encodes");
        assert!(!String::from_utf8_lossy(&bytes).contains("price_per_kwh"));
        assert_eq!(decode::<AuctionResult>(&bytes).expect("decodes"), empty);
    }

    fn cancel_all(slot: Option<SlotId>) -> CancelAll {
        let key = crate::testing::signing_key(3);
        CancelAll {
            account: AccountId::from_verifying_key(&key.verifying_key()),
            zone: ZoneId::parse("north").expect("a valid zone"),
            slot,
            nonce: 12,
            ts_ms: TimestampMs(1_790_000_000_000),
        }
    }

    #[test]
    fn a_cancel_all_parses_as_a_command_with_or_without_a_slot() {
        let key = crate::testing::signing_key(3);
        for slot in [None, Some(SlotId::new(1_800_000).expect("a valid slot"))] {
            let signed = crate::wire::Signed::sign(cancel_all(slot), &key).expect("signs");
            assert!(signed.signing_bytes().starts_with(b"gridex/v1/cancel_all\n{"));
            let json = signed.to_json();
            assert_eq!(String::from_utf8_lossy(&json).contains("\"slot\""), slot.is_some());
            let Command::CancelAll(parsed) = Command::parse(&json).expect("parses") else { panic!("not a cancel_all") };
            parsed.verify().expect("verifies");
            assert_eq!(parsed.message, cancel_all(slot));
        }
    }

    #[test]
    fn a_cancel_all_signed_by_another_key_is_refused() {
        let key = crate::testing::signing_key(3);
        let forged = crate::wire::Signed::with_signature(cancel_all(None), [7u8; 64]).expect("well-formed");
        let command = Command::parse(&forged.to_json()).expect("parses");
        assert_eq!(command.verify().unwrap_err().reason, Reason::BadSignature);
        let other = crate::testing::signing_key(4);
        assert_eq!(crate::wire::Signed::sign(cancel_all(None), &other).unwrap_err().reason, Reason::BadSignature);
        crate::wire::Signed::sign(cancel_all(None), &key).expect("its own key signs");
    }

    #[test]
    fn an_auction_result_with_volume_but_no_price_is_refused() {
        let bytes = encode(&result(None, 500)).expect("encodes");
        let error = decode::<AuctionResult>(&bytes).expect_err("a reader refuses it");
        assert_eq!(error.reason, Reason::InvalidValue);
    }
}
