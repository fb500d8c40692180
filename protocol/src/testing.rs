//! Deterministic keys and sample messages for tests in this and other crates. Not for production:
//! the keys come from public seeds.

use crate::ids::{AccountId, DeviceId, MeterSerial, SlotId, ZoneId};
use crate::messages::{
    BookSnapshot, BookState, Level, Order, OrderStatus, OrderUpdate, Reading, ReadingAck, Reject, Side, Statement,
    TimeInForce, Trade,
};
use crate::reason::Reason;
use crate::units::{MicroMoney, MicroTokens, PowerW, PricePerKwh, TimestampMs, Wh};
use ed25519_dalek::SigningKey;

/// A signing key from a fixed seed: 32 bytes of `seed`.
pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn zone() -> ZoneId {
    ZoneId::parse("test-zone").expect("a valid literal")
}

pub fn sample_reading(key: &SigningKey) -> Reading {
    let meter_serial = MeterSerial::parse("SN-0001").expect("a valid literal");
    Reading {
        pv_wh: Some(Wh(9_000_000)),
        power_w: PowerW(-2_500),
        ..grid_reading(key, zone(), meter_serial, 42, 1_790_000_000_000, 1_234_567, 7_654_321)
    }
}

/// A version 1 reading of `key`'s device with grid counters only: no PV, no battery, power 0.
/// Tests change a field with struct update syntax (`Reading { pv_wh: …, ..grid_reading(…) }`).
pub fn grid_reading(
    key: &SigningKey,
    zone: ZoneId,
    meter_serial: MeterSerial,
    seq: u64,
    ts_ms: i64,
    import_wh: i64,
    export_wh: i64,
) -> Reading {
    Reading {
        device: DeviceId::from_verifying_key(&key.verifying_key()),
        zone,
        meter_serial,
        seq,
        ts_ms: TimestampMs(ts_ms),
        import_wh: Wh(import_wh),
        export_wh: Wh(export_wh),
        pv_wh: None,
        power_w: PowerW(0),
        battery_charge_wh: None,
        battery_discharge_wh: None,
        battery_soc_permille: None,
        battery_capacity_wh: None,
    }
}

/// [`sample_reading`] with a home battery: a version 2 reading.
pub fn sample_battery_reading(key: &SigningKey) -> Reading {
    Reading {
        battery_charge_wh: Some(Wh(2_345_678)),
        battery_discharge_wh: Some(Wh(2_100_000)),
        battery_soc_permille: Some(640),
        battery_capacity_wh: Some(Wh(10_000)),
        ..sample_reading(key)
    }
}

pub fn sample_order(key: &SigningKey) -> Order {
    Order {
        account: AccountId::from_verifying_key(&key.verifying_key()),
        zone: zone(),
        slot: SlotId::new(1_790_000_900_000 - 1_790_000_900_000 % 900_000).expect("a valid literal"),
        side: Side::Sell,
        price_per_kwh: PricePerKwh(180_000),
        qty_wh: Wh(1_500),
        tif: TimeInForce::Gtc,
        post_only: false,
        nonce: 7,
        ts_ms: TimestampMs(1_790_000_000_000),
    }
}

pub fn sample_statement(index: u8) -> Statement {
    Statement {
        zone: zone(),
        slot: SlotId::new(900_000).expect("a valid literal"),
        account: AccountId::from_verifying_key(&signing_key(index.wrapping_add(1)).verifying_key()),
        metered_import_wh: Wh(100),
        metered_export_wh: Wh(i64::from(index) * 10),
        bought_wh: Wh(0),
        sold_wh: Wh(i64::from(index) * 10),
        imbalance_wh: Wh(0),
        purchases: MicroMoney(0),
        sales: MicroMoney(i64::from(index) * 1_800),
        grid_fees: MicroMoney(0),
        protocol_fees: MicroMoney(-9),
        utility_net: MicroMoney(-25_000),
        net: MicroMoney(i64::from(index) * 1_800 - 25_009),
        tokens_earned: MicroTokens(i64::from(index)),
        no_data: false,
    }
}

/// The operator key of the tests: public seed 9, as in the test vectors.
pub fn operator_key() -> SigningKey {
    signing_key(9)
}

pub fn sample_trade() -> Trade {
    let order = sample_order(&signing_key(3));
    Trade {
        trade_id: 17,
        zone: zone(),
        slot: order.slot,
        price_per_kwh: PricePerKwh(180_000),
        qty_wh: Wh(1_500),
        buyer: AccountId::from_verifying_key(&signing_key(4).verifying_key()),
        seller: order.account,
        buy_nonce: 1,
        sell_nonce: 7,
        aggressor: Side::Buy,
        ts_ms: TimestampMs(1_790_000_003_000),
    }
}

pub fn sample_order_update() -> OrderUpdate {
    let order = sample_order(&signing_key(3));
    OrderUpdate {
        account: order.account,
        zone: zone(),
        slot: order.slot,
        order_nonce: 7,
        status: OrderStatus::Filled,
        price_per_kwh: PricePerKwh(180_000),
        open_qty_wh: Wh(0),
        filled_qty_wh: Wh(1_500),
        ts_ms: TimestampMs(1_790_000_003_000),
    }
}

pub fn sample_book() -> BookSnapshot {
    BookSnapshot {
        zone: zone(),
        slot: sample_order(&signing_key(3)).slot,
        seq: 12,
        state: BookState::Open,
        bids: vec![Level { price_per_kwh: PricePerKwh(170_000), qty_wh: Wh(2_000), orders: 2 }],
        asks: vec![Level { price_per_kwh: PricePerKwh(190_000), qty_wh: Wh(500), orders: 1 }],
        ts_ms: TimestampMs(1_790_000_004_000),
        call_phase: None,
        price_band: None,
    }
}

pub fn sample_reject() -> Reject {
    Reject {
        of: "order".to_owned(),
        seq: Some(8),
        reason: Reason::TimestampTooOld,
        message: "the order is older than 60 s".to_owned(),
        ts_ms: TimestampMs(1_790_000_005_000),
    }
}

pub fn sample_reading_ack() -> ReadingAck {
    ReadingAck {
        device: DeviceId::from_verifying_key(&signing_key(1).verifying_key()),
        seq: 42,
        ts_ms: TimestampMs(1_790_000_000_500),
    }
}

/// A battery plan of `slots` consecutive 15-minute slots from the sample order's slot, signed by
/// `key`'s account: charging in the first half, discharging after.
pub fn sample_battery_plan(key: &SigningKey, slots: usize) -> crate::plan::BatteryPlan {
    let first = sample_order(key).slot.start().0;
    let mut soc_permille: i64 = 500;
    let planned = (0..slots)
        .map(|index| {
            let offset = i64::try_from(index).unwrap_or(0);
            let charge_wh = if index < slots / 2 { 400 } else { -300 };
            soc_permille = (soc_permille + charge_wh / 10).clamp(0, 1000);
            crate::plan::PlannedSlot {
                slot: SlotId::new(first + offset * 900_000).expect("an aligned slot"),
                charge_wh: Wh(charge_wh),
                soc_permille_end: u16::try_from(soc_permille).unwrap_or(0),
            }
        })
        .collect();
    crate::plan::BatteryPlan {
        account: AccountId::from_verifying_key(&key.verifying_key()),
        zone: zone(),
        nonce: 11,
        ts_ms: TimestampMs(1_790_000_000_000),
        slots: planned,
    }
}
