//! The test vectors of `protocol/test-vectors.json`, built from fixed seeds so that anyone can
//! regenerate them: `cargo run -p protocol --example gen_vectors > protocol/test-vectors.json`.
//! A test checks that the committed file equals what this module builds.

use crate::messages::{AuctionResult, Cancel, CancelAll, Order, Reading, Replace, Side, SlotRoot, TimeInForce, Trade};
use crate::testing::{
    sample_battery_plan, sample_battery_reading, sample_book, sample_order, sample_order_update, sample_reading,
    sample_reading_ack, sample_reject, sample_trade, signing_key,
};
use crate::units::{PricePerKwh, TimestampMs, Wh};
use crate::wire::{domain_tag, OperatorSigned, Signable, Signed, Version, WireMessage};
use crate::{forge, AccountId};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Map, Value};

fn object_of<T: WireMessage>(message: &T) -> Map<String, Value> {
    let mut object = match serde_json::to_value(message) {
        Ok(Value::Object(object)) => object,
        _ => unreachable!("messages serialize to objects"),
    };
    object.insert("type".to_owned(), Value::String(T::TYPE.to_owned()));
    object
}

fn valid<T: Signable>(name: &str, message: T, key: &SigningKey) -> Value {
    #[allow(clippy::expect_used)]
    let signed = Signed::sign(message, key).expect("sample messages are valid");
    #[allow(clippy::expect_used)]
    let sent: Value = serde_json::from_slice(&signed.to_json()).expect("our own JSON");
    let vector = json!({
        "name": name,
        "kind": T::TYPE,
        "public_key": hex::encode(key.verifying_key().to_bytes()),
        "message": sent,
        "signing_bytes_hex": hex::encode(signed.signing_bytes()),
        "valid": true,
    });
    on_channel(vector, signed.version())
}

/// Names the version of the channel a vector's message arrives on (`"version": 2`); version 1
/// vectors, which were all there were, omit it.
fn on_channel(mut vector: Value, version: Version) -> Value {
    if let (Value::Object(object), Version::V2) = (&mut vector, version) {
        object.insert("version".to_owned(), json!(version.number()));
    }
    vector
}

/// An outbound message signed by the operator: `public_key` is the key a receiver pins, not a field.
fn valid_outbound<T: OperatorSigned>(name: &str, message: T, operator: &SigningKey) -> Value {
    #[allow(clippy::expect_used)]
    let signed = Signed::sign_operator(message, operator).expect("sample messages are valid");
    #[allow(clippy::expect_used)]
    let sent: Value = serde_json::from_slice(&signed.to_json()).expect("our own JSON");
    json!({
        "name": name,
        "kind": T::TYPE,
        "public_key": hex::encode(operator.verifying_key().to_bytes()),
        "message": sent,
        "signing_bytes_hex": hex::encode(signed.signing_bytes()),
        "valid": true,
    })
}

fn invalid(name: &str, kind: &str, public_key: &[u8; 32], message: Value, reason: &str) -> Value {
    json!({
        "name": name,
        "kind": kind,
        "public_key": hex::encode(public_key),
        "message": message,
        "valid": false,
        "reason": reason,
    })
}

/// Signs arbitrary bytes and returns the object with `sig` set.
fn with_sig(mut object: Map<String, Value>, key: &SigningKey, signed_bytes: &[u8]) -> Value {
    object.insert("sig".to_owned(), Value::String(hex::encode(key.sign(signed_bytes).to_bytes())));
    Value::Object(object)
}

fn canonical_signing_bytes(kind: &str, object: &Map<String, Value>) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    crate::wire::signing_bytes(kind, object).expect("restricted values")
}

/// `object` signed by `key` over its own canonical signing bytes as a `kind`.
fn signed_canonically(kind: &str, object: Map<String, Value>, key: &SigningKey) -> Value {
    let bytes = canonical_signing_bytes(kind, &object);
    with_sig(object, key, &bytes)
}

/// Every vector, in file order.
pub fn vectors() -> Value {
    let device = signing_key(1);
    let trader = signing_key(3);
    let operator = signing_key(9);
    let mut out = Vec::new();

    // --- valid ---
    out.push(valid("reading", sample_reading(&device), &device));
    let mut no_pv = sample_reading(&signing_key(2));
    no_pv.pv_wh = None;
    no_pv.seq = 1;
    out.push(valid("reading-without-pv", no_pv, &signing_key(2)));
    out.push(valid("order-sell-gtc", sample_order(&trader), &trader));
    let mut buy = sample_order(&signing_key(4));
    buy.side = Side::Buy;
    buy.tif = TimeInForce::Ioc;
    buy.price_per_kwh = PricePerKwh(305_000);
    buy.nonce = 1;
    out.push(valid("order-buy-ioc", buy, &signing_key(4)));
    let order = sample_order(&trader);
    out.push(valid(
        "cancel",
        Cancel {
            account: order.account,
            zone: order.zone.clone(),
            slot: order.slot,
            order_nonce: 7,
            nonce: 8,
            ts_ms: TimestampMs(1_790_000_001_000),
        },
        &trader,
    ));
    out.push(valid(
        "replace",
        Replace {
            account: order.account,
            zone: order.zone.clone(),
            slot: order.slot,
            order_nonce: 7,
            price_per_kwh: PricePerKwh(175_000),
            qty_wh: Wh(1_000),
            nonce: 9,
            ts_ms: TimestampMs(1_790_000_002_000),
        },
        &trader,
    ));
    out.push(valid(
        "slot-root",
        SlotRoot {
            zone: order.zone.clone(),
            slot: order.slot,
            root: hex::encode([0xab; 32]),
            statements: 20,
            operator: AccountId::from_verifying_key(&operator.verifying_key()),
            ts_ms: TimestampMs(1_790_001_900_000),
        },
        &operator,
    ));
    // Outbound messages, signed by the operator and verified against the pinned operator key.
    out.push(valid_outbound("trade", sample_trade(), &operator));
    out.push(valid_outbound("book", sample_book(), &operator));
    out.push(valid_outbound("order-update", sample_order_update(), &operator));
    out.push(valid_outbound("reject", sample_reject(), &operator));
    out.push(valid_outbound("reading-ack", sample_reading_ack(), &operator));
    out.push(valid_outbound(
        "auction",
        AuctionResult {
            zone: order.zone.clone(),
            slot: order.slot,
            price_per_kwh: Some(PricePerKwh(182_000)),
            qty_wh: Wh(3_000),
            trades: 2,
            ts_ms: TimestampMs(1_790_000_900_000),
        },
        &operator,
    ));
    // A message sent with its fields in another order and whitespace: the signature covers the
    // canonical form, so it is still valid.
    let mut shuffled = valid("reading-fields-in-any-order", sample_reading(&device), &device);
    if let Some(Value::Object(message)) = shuffled.get_mut("message") {
        let mut reversed: Vec<(String, Value)> = std::mem::take(message).into_iter().collect();
        reversed.reverse();
        *message = reversed.into_iter().collect();
    }
    out.push(shuffled);

    // --- invalid ---
    let device_pub = device.verifying_key().to_bytes();
    let reading_object = object_of(&sample_reading(&device));
    let reading_bytes = canonical_signing_bytes(Reading::TYPE, &reading_object);

    let mut tampered = with_sig(reading_object.clone(), &device, &reading_bytes);
    tampered["import_wh"] = json!(1_234_568);
    out.push(invalid("tampered-field", "reading", &device_pub, tampered, "bad_signature"));

    // Names device 1 but is signed by device 5.
    out.push(invalid(
        "wrong-key",
        "reading",
        &device_pub,
        with_sig(reading_object.clone(), &signing_key(5), &reading_bytes),
        "bad_signature",
    ));

    let mut wrong_tag = domain_tag(Order::TYPE).into_bytes();
    wrong_tag.extend_from_slice(&reading_bytes[domain_tag(Reading::TYPE).len()..]);
    out.push(invalid(
        "wrong-domain-tag",
        "reading",
        &device_pub,
        with_sig(reading_object.clone(), &device, &wrong_tag),
        "bad_signature",
    ));

    // Signed over the fields in declaration order (serde's output), not the canonical order.
    let mut non_canonical = domain_tag(Reading::TYPE).into_bytes();
    #[allow(clippy::expect_used)]
    non_canonical.extend_from_slice(&serde_json::to_vec(&sample_reading(&device)).expect("serializes"));
    out.push(invalid(
        "non-canonical-signing-bytes",
        "reading",
        &device_pub,
        with_sig(reading_object.clone(), &device, &non_canonical),
        "bad_signature",
    ));

    let mut float = with_sig(reading_object.clone(), &device, &reading_bytes);
    float["import_wh"] = json!(1234.5);
    out.push(invalid("float-value", "reading", &device_pub, float, "float_not_allowed"));

    let mut unknown_object = reading_object.clone();
    unknown_object.insert("note".to_owned(), json!("hello"));
    out.push(invalid(
        "unknown-field",
        "reading",
        &device_pub,
        signed_canonically(Reading::TYPE, unknown_object, &device),
        "unknown_field",
    ));

    let mut oversized_object = reading_object.clone();
    oversized_object.insert("note".to_owned(), json!("x".repeat(1100)));
    out.push(invalid(
        "oversized",
        "reading",
        &device_pub,
        signed_canonically(Reading::TYPE, oversized_object, &device),
        "too_large",
    ));

    let mut big_object = reading_object.clone();
    big_object.insert("seq".to_owned(), json!(1_u64 << 53));
    // Out of the restricted set, so the canonical form is spelled by hand from the valid one.
    let big_bytes = String::from_utf8_lossy(&reading_bytes)
        .replace("\"seq\":42,", &format!("\"seq\":{},", 1_u64 << 53))
        .into_bytes();
    out.push(invalid(
        "integer-beyond-2^53",
        "reading",
        &device_pub,
        with_sig(big_object, &device, &big_bytes),
        "integer_out_of_range",
    ));

    let mut negative_object = reading_object.clone();
    negative_object.insert("export_wh".to_owned(), json!(-1));
    out.push(invalid(
        "negative-counter",
        "reading",
        &device_pub,
        signed_canonically(Reading::TYPE, negative_object, &device),
        "invalid_value",
    ));

    out.push(invalid(
        "missing-sig",
        "reading",
        &device_pub,
        Value::Object(reading_object.clone()),
        "missing_signature",
    ));

    let mut uppercase = with_sig(reading_object.clone(), &device, &reading_bytes);
    if let Some(Value::String(sig)) = uppercase.get_mut("sig") {
        *sig = sig.to_uppercase();
    }
    out.push(invalid("uppercase-sig", "reading", &device_pub, uppercase, "malformed_signature"));

    // s + L: the same signature in a non-canonical encoding (malleability); strict verification refuses it.
    let s_plus_l = forge::s_plus_l(&device.sign(&reading_bytes).to_bytes());
    let mut malleated = reading_object.clone();
    malleated.insert("sig".to_owned(), Value::String(hex::encode(s_plus_l)));
    out.push(invalid("non-canonical-s", "reading", &device_pub, Value::Object(malleated), "bad_signature"));

    // The identity point as a key with R = identity and s = 0 passes a non-strict verifier for any
    // message; strict verification rejects the small-order key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut small_order_object = object_of(&sample_order(&trader));
    small_order_object.insert("account".to_owned(), Value::String(hex::encode(identity)));
    let mut forged_sig = [0u8; 64];
    forged_sig[0] = 1;
    small_order_object.insert("sig".to_owned(), Value::String(hex::encode(forged_sig)));
    out.push(invalid("small-order-key", "order", &identity, Value::Object(small_order_object), "invalid_public_key"));

    // A neighbour on the broker signs a trade with its own key: refused under the pinned operator key.
    let operator_pub = operator.verifying_key().to_bytes();
    let trade_object = object_of(&sample_trade());
    let trade_bytes = canonical_signing_bytes(Trade::TYPE, &trade_object);
    out.push(invalid(
        "trade-not-by-the-operator",
        Trade::TYPE,
        &operator_pub,
        with_sig(trade_object.clone(), &signing_key(5), &trade_bytes),
        "bad_signature",
    ));
    // The operator's signature over the same fields under another type's tag.
    let mut book_tag = domain_tag("book").into_bytes();
    book_tag.extend_from_slice(&trade_bytes[domain_tag(Trade::TYPE).len()..]);
    out.push(invalid(
        "trade-under-another-tag",
        Trade::TYPE,
        &operator_pub,
        with_sig(trade_object.clone(), &operator, &book_tag),
        "bad_signature",
    ));
    out.push(invalid("unsigned-trade", Trade::TYPE, &operator_pub, Value::Object(trade_object), "missing_signature"));

    out.extend(signature_encoding_vectors(&trader));
    out.extend(battery_vectors(&device));
    out.extend(battery_plan_vectors(&trader));
    out.extend(cancel_all_vectors(&trader));

    Value::Array(out)
}

/// Battery plans (PROTOCOL.md §4.7), signed by the account: a valid one of four slots, one signed by
/// another key (a device's, say), and one of 97 slots (more than a plan may name).
fn battery_plan_vectors(trader: &SigningKey) -> Vec<Value> {
    use crate::plan::{BatteryPlan, BATTERY_PLAN_SLOTS_MAX};
    let trader_pub = trader.verifying_key().to_bytes();
    let mut out = vec![valid("battery-plan", sample_battery_plan(trader, 4), trader)];
    let object = object_of(&sample_battery_plan(trader, 4));
    out.push(invalid(
        "battery-plan-not-by-its-account",
        BatteryPlan::TYPE,
        &trader_pub,
        signed_canonically(BatteryPlan::TYPE, object, &signing_key(1)),
        "bad_signature",
    ));
    let object = object_of(&sample_battery_plan(trader, BATTERY_PLAN_SLOTS_MAX + 1));
    out.push(invalid(
        "battery-plan-too-many-slots",
        BatteryPlan::TYPE,
        &trader_pub,
        signed_canonically(BatteryPlan::TYPE, object, trader),
        "invalid_value",
    ));
    out
}

/// Cancel-alls (PROTOCOL.md §4.8), signed by the account: one for a whole zone (no `slot`), one for
/// one slot, one signed by another key, and one whose signature is over the same fields under the
/// `cancel` tag (a signature for one command type is never one for another).
fn cancel_all_vectors(trader: &SigningKey) -> Vec<Value> {
    let trader_pub = trader.verifying_key().to_bytes();
    let order = sample_order(trader);
    let whole_zone = CancelAll {
        account: order.account,
        zone: order.zone.clone(),
        slot: None,
        nonce: 10,
        ts_ms: TimestampMs(1_790_000_003_000),
    };
    let one_slot =
        CancelAll { slot: Some(order.slot), nonce: 11, ts_ms: TimestampMs(1_790_000_004_000), ..whole_zone.clone() };
    let mut out =
        vec![valid("cancel-all-zone", whole_zone.clone(), trader), valid("cancel-all-slot", one_slot, trader)];
    let object = object_of(&whole_zone);
    let bytes = canonical_signing_bytes(CancelAll::TYPE, &object);
    out.push(invalid(
        "cancel-all-not-by-its-account",
        CancelAll::TYPE,
        &trader_pub,
        with_sig(object.clone(), &signing_key(4), &bytes),
        "bad_signature",
    ));
    let mut cancel_tag = domain_tag(Cancel::TYPE).into_bytes();
    cancel_tag.extend_from_slice(&bytes[domain_tag(CancelAll::TYPE).len()..]);
    out.push(invalid(
        "cancel-all-under-the-cancel-tag",
        CancelAll::TYPE,
        &trader_pub,
        with_sig(object, trader, &cancel_tag),
        "bad_signature",
    ));
    out
}

/// Version 2 readings (a home battery, PROTOCOL.md §4.1, §9): one valid, and one refusal for each
/// way a reading can sit in the wrong version.
fn battery_vectors(device: &SigningKey) -> Vec<Value> {
    let device_pub = device.verifying_key().to_bytes();
    let mut out = vec![valid("reading-v2-battery", sample_battery_reading(device), device)];
    let battery_object = object_of(&sample_battery_reading(device));
    // Signed under the v1 tag and sent on a v1 channel: the v1 parser knows no battery field.
    let v1_bytes = crate::wire::signing_bytes_in(Version::V1, Reading::TYPE, &battery_object);
    #[allow(clippy::expect_used)]
    let v1_bytes = v1_bytes.expect("restricted values");
    out.push(invalid(
        "reading-v1-with-battery-field",
        Reading::TYPE,
        &device_pub,
        with_sig(battery_object.clone(), device, &v1_bytes),
        "unknown_field",
    ));
    // The same signature on a v2 channel: v2 readings are signed under `gridex/v2/reading\n`.
    out.push(on_channel(
        invalid(
            "reading-v2-signed-under-the-v1-tag",
            Reading::TYPE,
            &device_pub,
            with_sig(battery_object.clone(), device, &v1_bytes),
            "bad_signature",
        ),
        Version::V2,
    ));
    // A reading without a battery on a v2 channel: one reading has one encoding, and that is v1.
    let plain_object = object_of(&sample_reading(device));
    let plain_v2_bytes = v2_signing_bytes(&plain_object);
    out.push(on_channel(
        invalid(
            "reading-v2-without-battery",
            Reading::TYPE,
            &device_pub,
            with_sig(plain_object, device, &plain_v2_bytes),
            "missing_field",
        ),
        Version::V2,
    ));
    let mut overfull_object = battery_object;
    overfull_object.insert("battery_soc_permille".to_owned(), json!(1001));
    let overfull_bytes = v2_signing_bytes(&overfull_object);
    out.push(on_channel(
        invalid(
            "reading-v2-soc-1001",
            Reading::TYPE,
            &device_pub,
            with_sig(overfull_object, device, &overfull_bytes),
            "invalid_value",
        ),
        Version::V2,
    ));
    out
}

fn v2_signing_bytes(object: &Map<String, Value>) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    crate::wire::signing_bytes_in(Version::V2, Reading::TYPE, object).expect("restricted values")
}

/// An order by `trader` signed as `signature(signed bytes)` makes it.
fn forged_order(name: &str, trader: &SigningKey, reason: &str, signature: impl Fn(&[u8]) -> [u8; 64]) -> Value {
    let object = object_of(&sample_order(trader));
    let bytes = canonical_signing_bytes(Order::TYPE, &object);
    let mut message = object;
    message.insert("sig".to_owned(), Value::String(hex::encode(signature(&bytes))));
    invalid(name, Order::TYPE, &trader.verifying_key().to_bytes(), Value::Object(message), reason)
}

/// Signatures that only the key's owner can make and that a non-strict or batch verifier accepts
/// (PROTOCOL.md §2): each breaks exactly one condition of the rule.
fn signature_encoding_vectors(trader: &SigningKey) -> Vec<Value> {
    let mut out = Vec::new();
    // R = rB + T with T of order 2 and s recomputed: the cofactored equation holds (a random-
    // coefficient batch accepted it about half the time), the cofactorless one does not.
    out.push(forged_order("torsion-r", trader, "bad_signature", |bytes| forge::torsion_r(trader, bytes, 4)));
    // R = the identity with y encoded as p + 1 (non-canonical) and s = H(R‖A‖M)·a: a decoder that
    // reduces y and skips the small-order check finds the equation true.
    out.push(forged_order("non-canonical-r", trader, "bad_signature", |bytes| {
        forge::identity_r(trader, bytes, &forge::IDENTITY_AS_P_PLUS_ONE)
    }));
    // R = the identity, canonically encoded: the cofactorless equation holds, R is of small order.
    out.push(forged_order("small-order-r", trader, "bad_signature", |bytes| {
        forge::identity_r(trader, bytes, &forge::identity_bytes())
    }));
    // The trader's point plus a point of order 8 as the key, with a nonce whose challenge is a
    // multiple of 8: the cofactorless equation holds (libsodium's crypto_sign_verify_detached and
    // ed25519-dalek's verify_strict accept it); the key is refused because it has a torsion component.
    let mixed = forge::mixed_order_key(trader);
    let mut object = object_of(&sample_order(trader));
    object.insert("account".to_owned(), Value::String(hex::encode(mixed)));
    let bytes = canonical_signing_bytes(Order::TYPE, &object);
    #[allow(clippy::expect_used)]
    let signature = forge::mixed_order_signature(trader, &bytes).expect("a nonce within the tries");
    object.insert("sig".to_owned(), Value::String(hex::encode(signature)));
    out.push(invalid("mixed-order-key", Order::TYPE, &mixed, Value::Object(object), "invalid_public_key"));
    out
}

/// The file's text: pretty JSON with a trailing newline.
pub fn vectors_file() -> String {
    let mut text = serde_json::to_string_pretty(&vectors()).unwrap_or_default();
    text.push('\n');
    text
}
