//! Every vector in `test-vectors.json` behaves as it says: valid ones parse, sign exactly the listed
//! bytes and verify strictly; invalid ones fail with the listed reason.

use protocol::wire::Version;
use protocol::{
    AuctionResult, BookSnapshot, Command, OrderUpdate, Reading, ReadingAck, Reason, Reject, Signed, SlotRoot, Trade,
};
use serde_json::Value;

const VECTORS: &str = include_str!("../test-vectors.json");

/// Parses and verifies `bytes` as a message of `kind` arriving on a channel of `version`, returning
/// the signing bytes and the signer: inbound messages name their signer, outbound ones verify
/// against the pinned operator key `pinned`.
fn check(kind: &str, version: Version, bytes: &[u8], pinned: &[u8; 32]) -> Result<(Vec<u8>, [u8; 32]), Reason> {
    if version != Version::V1 {
        return match kind {
            "reading" => finish(Signed::<Reading>::parse_on(bytes, version).map_err(|e| e.reason)?),
            other => panic!("no version {version} of kind {other}"),
        };
    }
    fn outbound<T: protocol::OperatorSigned>(bytes: &[u8], pinned: &[u8; 32]) -> Result<(Vec<u8>, [u8; 32]), Reason> {
        let signed = Signed::<T>::parse(bytes).map_err(|e| e.reason)?;
        signed.verify_operator(pinned).map_err(|error| error.reason)?;
        Ok((signed.signing_bytes().to_vec(), *pinned))
    }
    fn finish<T: protocol::Signable>(signed: Signed<T>) -> Result<(Vec<u8>, [u8; 32]), Reason> {
        signed.verify().map_err(|error| error.reason)?;
        Ok((signed.signing_bytes().to_vec(), signed.message.signer()))
    }
    match kind {
        "reading" => finish(Signed::<Reading>::parse(bytes).map_err(|e| e.reason)?),
        "slot_root" => finish(Signed::<SlotRoot>::parse(bytes).map_err(|e| e.reason)?),
        "battery_plan" => finish(Signed::<protocol::BatteryPlan>::parse(bytes).map_err(|e| e.reason)?),
        "order" | "cancel" | "replace" | "cancel_all" => match Command::parse(bytes).map_err(|e| e.reason)? {
            Command::Order(signed) => finish(signed),
            Command::Cancel(signed) => finish(signed),
            Command::Replace(signed) => finish(signed),
            Command::CancelAll(signed) => finish(signed),
        },
        "trade" => outbound::<Trade>(bytes, pinned),
        "book" => outbound::<BookSnapshot>(bytes, pinned),
        "order_update" => outbound::<OrderUpdate>(bytes, pinned),
        "reject" => outbound::<Reject>(bytes, pinned),
        "reading_ack" => outbound::<ReadingAck>(bytes, pinned),
        "auction" => outbound::<AuctionResult>(bytes, pinned),
        other => panic!("no parser for kind {other}"),
    }
}

#[test]
fn the_committed_vectors_are_what_the_generator_builds() {
    assert_eq!(
        VECTORS,
        protocol::vectors::vectors_file(),
        "regenerate with: cargo run -p protocol --example gen_vectors > protocol/test-vectors.json"
    );
}

#[test]
fn every_vector_verifies_or_fails_for_its_stated_reason() {
    let vectors: Vec<Value> = serde_json::from_str(VECTORS).expect("the vector file is JSON");
    assert!(vectors.len() >= 12);
    for vector in &vectors {
        let name = vector["name"].as_str().expect("name");
        let kind = vector["kind"].as_str().expect("kind");
        let bytes = serde_json::to_vec(&vector["message"]).expect("message serializes");
        let mut pinned = [0u8; 32];
        hex::decode_to_slice(vector["public_key"].as_str().expect("key"), &mut pinned).expect("64 hex digits");
        let version = match vector.get("version") {
            None => Version::V1,
            Some(number) => {
                let number = number.as_u64().and_then(|n| u8::try_from(n).ok()).expect("a small integer");
                Version::from_number(number).expect("a known version")
            }
        };
        let result = check(kind, version, &bytes, &pinned);
        if vector["valid"] == Value::Bool(true) {
            let (signing_bytes, signer) = result.unwrap_or_else(|reason| panic!("{name}: {reason}"));
            assert_eq!(hex::encode(signing_bytes), vector["signing_bytes_hex"].as_str().expect("hex"), "{name}");
            assert_eq!(hex::encode(signer), vector["public_key"].as_str().expect("key"), "{name}");
        } else {
            let expected = Reason::from_code(vector["reason"].as_str().expect("reason")).expect("known reason");
            assert_eq!(result.err(), Some(expected), "{name}");
        }
    }
}

#[test]
fn the_vectors_cover_the_required_cases() {
    let vectors: Vec<Value> = serde_json::from_str(VECTORS).expect("the vector file is JSON");
    let names: Vec<&str> = vectors.iter().filter_map(|v| v["name"].as_str()).collect();
    for required in [
        "tampered-field",
        "wrong-key",
        "wrong-domain-tag",
        "non-canonical-signing-bytes",
        "float-value",
        "unknown-field",
        "oversized",
        "reading-v2-battery",
        "reading-v1-with-battery-field",
        "reading-v2-without-battery",
        "reading-v2-soc-1001",
        "cancel-all-zone",
        "cancel-all-slot",
        "cancel-all-not-by-its-account",
    ] {
        assert!(names.contains(&required), "missing vector {required}");
    }
    assert!(vectors.iter().filter(|v| v["valid"] == Value::Bool(true)).count() >= 4);
}
