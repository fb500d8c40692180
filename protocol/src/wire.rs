//! Encoding, decoding and signing of wire messages.
//!
//! Every message is a JSON object with a `type` field naming it. Signed messages also carry `sig`:
//! the ed25519 signature over `gridex/v1/<type>\n` followed by the RFC 8785 canonical JSON of the
//! object without `sig` (see PROTOCOL.md, "Signing rule").
//!
//! Versions (PROTOCOL.md §9): a message's [`Version`] follows from its content
//! ([`WireMessage::version`]; only a reading with a battery is version 2) and names both its
//! domain tag (`gridex/v2/reading\n`) and its topic. A receiver parses a message on the version of
//! the channel it came by ([`Signed::parse_on`]): a version 1 channel refuses the version 2 fields
//! as unknown (today's strict parser), a version 2 channel refuses a message that is not version 2.
//! So one message has one encoding, and a version 1 reading signs exactly the bytes it always did.

use crate::canonical::{canonical_bytes, parse_strict};
use crate::reason::Reason;
use crate::strict;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// A message refused at the boundary: a machine-readable reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct ProtocolError {
    pub reason: Reason,
    pub detail: String,
}

impl ProtocolError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// A version of the wire contract: the `vN` in topics and domain tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// Every message type; readings without a battery.
    V1,
    /// Readings that report a home battery (`battery_*` fields, PROTOCOL.md §4.1).
    V2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 2] = [Version::V1, Version::V2];

    /// The version's number: 1 or 2.
    pub const fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    /// The version with this number, if there is one.
    pub const fn from_number(number: u8) -> Option<Version> {
        match number {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }

    /// The topic prefix: `gridex/v1` or `gridex/v2`.
    pub const fn prefix(self) -> &'static str {
        match self {
            Version::V1 => "gridex/v1",
            Version::V2 => "gridex/v2",
        }
    }

    /// The domain tag that prefixes the signed bytes of a message of type `kind` in this version.
    pub fn domain_tag(self, kind: &str) -> String {
        format!("{}/{kind}\n", self.prefix())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.number())
    }
}

/// A message type of the wire contract.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The value of the `type` field; for signed messages also the `<kind>` of the domain tag.
    const TYPE: &'static str;
    /// Largest accepted encoding in bytes.
    const SIZE_MAX: usize;
    /// Checks value domains that the field types alone do not express.
    fn validate(&self) -> Result<(), ProtocolError> {
        Ok(())
    }
    /// The version this message is encoded in: its domain tag and topic. Version 1 unless the
    /// message has fields only a later version defines.
    fn version(&self) -> Version {
        Version::V1
    }
    /// Checks, on the field names alone, that `object` (without `sig`) is a message of the version
    /// of the channel it came by. Types with only version 1 refuse every other channel.
    fn check_version(_object: &Map<String, Value>, channel: Version) -> Result<(), ProtocolError> {
        match channel {
            Version::V1 => Ok(()),
            other => Err(ProtocolError::new(
                Reason::WrongMessageType,
                format!("`{}` has no version {}", Self::TYPE, other.number()),
            )),
        }
    }
}

/// A message that is signed by the key it names.
pub trait Signable: WireMessage {
    /// The public key that must have signed the message.
    fn signer(&self) -> [u8; 32];
}

/// A message the exchange publishes (outbound), signed by the operator's key. A receiver verifies it
/// with [`Signed::verify_operator`] against the operator key it pinned by configuration.
pub trait OperatorSigned: WireMessage {
    /// The operator key the message itself names, if it names one (a slot root does); it must be
    /// the pinned key too.
    fn named_operator(&self) -> Option<[u8; 32]> {
        None
    }
}

/// The `type` of every inbound signed message (gateways and traders sign them) and of every
/// outbound one (the operator signs them). Each is its own domain tag; no type is in both lists.
pub const INBOUND_SIGNED_TYPES: [&str; 6] = ["reading", "order", "cancel", "replace", "battery_plan", "cancel_all"];
/// See [`INBOUND_SIGNED_TYPES`].
pub const OUTBOUND_SIGNED_TYPES: [&str; 7] =
    ["trade", "book", "order_update", "reject", "reading_ack", "auction", "slot_root"];

/// The version 1 domain tag that prefixes the signed bytes of a message of type `kind`
/// (see [`Version::domain_tag`] for the others).
pub fn domain_tag(kind: &str) -> String {
    Version::V1.domain_tag(kind)
}

/// The bytes a version 1 signature covers: domain tag, then the canonical JSON of `object` (which
/// must not contain `sig`).
pub fn signing_bytes(kind: &str, object: &Map<String, Value>) -> Result<Vec<u8>, ProtocolError> {
    signing_bytes_in(Version::V1, kind, object)
}

/// [`signing_bytes`] under `version`'s domain tag.
pub fn signing_bytes_in(version: Version, kind: &str, object: &Map<String, Value>) -> Result<Vec<u8>, ProtocolError> {
    let canonical = canonical_bytes(&Value::Object(object.clone()))
        .map_err(|reason| ProtocolError::new(reason, "value outside the restricted JSON set"))?;
    let mut bytes = version.domain_tag(kind).into_bytes();
    bytes.extend_from_slice(&canonical);
    Ok(bytes)
}

fn to_object<T: WireMessage>(message: &T) -> Result<Map<String, Value>, ProtocolError> {
    let value =
        serde_json::to_value(message).map_err(|error| ProtocolError::new(Reason::InternalError, error.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(ProtocolError::new(Reason::NotAnObject, "messages serialize to objects"));
    };
    object.insert("type".to_owned(), Value::String(T::TYPE.to_owned()));
    Ok(object)
}

/// Encodes an unsigned message as canonical JSON.
pub fn encode<T: WireMessage>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let object = to_object(message)?;
    canonical_bytes(&Value::Object(object))
        .map_err(|reason| ProtocolError::new(reason, "value outside the restricted JSON set"))
}

/// Parses bytes into a JSON object within the restricted set and returns its `type`.
pub(crate) fn decode_any(bytes: &[u8], size_max: usize) -> Result<(String, Map<String, Value>), ProtocolError> {
    if bytes.len() > size_max {
        return Err(ProtocolError::new(
            Reason::TooLarge,
            format!("{} bytes exceeds the {size_max}-byte limit", bytes.len()),
        ));
    }
    let value = parse_strict(bytes).map_err(|(reason, detail)| ProtocolError::new(reason, detail))?;
    let Value::Object(object) = value else {
        return Err(ProtocolError::new(Reason::NotAnObject, "a message is a JSON object"));
    };
    match object.get("type") {
        None => Err(ProtocolError::new(Reason::MissingField, "missing field `type`")),
        Some(Value::String(found)) => Ok((found.clone(), object)),
        Some(_) => Err(ProtocolError::new(Reason::WrongType, "`type` must be a string")),
    }
}

/// Parses and checks bytes into an object of the given type, leaving `sig` (if any) in place.
fn decode_object(bytes: &[u8], type_name: &str, size_max: usize) -> Result<Map<String, Value>, ProtocolError> {
    let (found, object) = decode_any(bytes, size_max)?;
    if found != type_name {
        return Err(ProtocolError::new(
            Reason::WrongMessageType,
            format!("expected type `{type_name}`, found `{found}`"),
        ));
    }
    Ok(object)
}

/// Converts a checked object (without `sig`) into the typed message and validates it.
fn typed<T: WireMessage>(mut object: Map<String, Value>) -> Result<T, ProtocolError> {
    object.remove("type");
    let message: T = serde_json::from_value(Value::Object(object)).map_err(classify_typed_error)?;
    message.validate()?;
    Ok(message)
}

fn classify_typed_error(error: serde_json::Error) -> ProtocolError {
    let detail = error.to_string();
    let reason = if detail.contains("unknown field") {
        Reason::UnknownField
    } else if detail.contains("missing field") {
        Reason::MissingField
    } else if detail.contains("invalid type") {
        Reason::WrongType
    } else {
        Reason::InvalidValue
    };
    ProtocolError::new(reason, detail)
}

/// Decodes an unsigned message.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let object = decode_object(bytes, T::TYPE, T::SIZE_MAX)?;
    if object.contains_key("sig") {
        return Err(ProtocolError::new(Reason::UnknownField, "unknown field `sig` on an unsigned message"));
    }
    typed(object)
}

/// A parsed signed message whose signature has not been checked yet. Call [`Signed::verify`] (or
/// [`verify_batch`]) before trusting it.
#[derive(Clone, PartialEq, Eq)]
pub struct Signed<T> {
    pub message: T,
    pub signature: [u8; 64],
    signing_bytes: Vec<u8>,
}

impl<T: fmt::Debug> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("message", &self.message)
            .field("signature", &hex::encode(self.signature))
            .finish()
    }
}

impl<T: WireMessage> Signed<T> {
    /// Parses a signed message of version 1 strictly: size, JSON, restricted values, type, `sig`
    /// format, fields. The same as [`Signed::parse_on`] with [`Version::V1`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        Self::parse_on(bytes, Version::V1)
    }

    /// Parses a signed message that came by a channel (topic) of version `channel`: a field of
    /// another version is refused (`unknown_field` on version 1, `missing_field` when a version 2
    /// message lacks what makes it one), and the signature covers `channel`'s domain tag.
    pub fn parse_on(bytes: &[u8], channel: Version) -> Result<Self, ProtocolError> {
        Self::from_object(decode_object(bytes, T::TYPE, T::SIZE_MAX)?, channel)
    }

    /// Finishes parsing an object already checked to be of type `T::TYPE`.
    pub(crate) fn from_object(mut object: Map<String, Value>, channel: Version) -> Result<Self, ProtocolError> {
        let signature = match object.remove("sig") {
            None => return Err(ProtocolError::new(Reason::MissingSignature, "missing field `sig`")),
            Some(Value::String(text)) => parse_signature_hex(&text)?,
            Some(_) => return Err(ProtocolError::new(Reason::MalformedSignature, "`sig` must be a string")),
        };
        T::check_version(&object, channel)?;
        let signing_bytes = signing_bytes_in(channel, T::TYPE, &object)?;
        let message = typed::<T>(object)?;
        debug_assert_eq!(message.version(), channel, "check_version admits only the channel's version");
        Ok(Self { message, signature, signing_bytes })
    }

    /// The version the message is encoded in (its domain tag and topic).
    pub fn version(&self) -> Version {
        self.message.version()
    }

    /// `message` with a signature made elsewhere (by a hardware key, or a malformed one for a
    /// test). Nothing is checked but the message's fields; verify it before trusting it.
    pub fn with_signature(message: T, signature: [u8; 64]) -> Result<Self, ProtocolError> {
        message.validate()?;
        let signing_bytes = signing_bytes_in(message.version(), T::TYPE, &to_object(&message)?)?;
        Ok(Self { message, signature, signing_bytes })
    }

    /// Signs `message` with `key`, whoever the key belongs to (the callers check that).
    fn sign_unchecked(message: T, key: &SigningKey) -> Result<Self, ProtocolError> {
        message.validate()?;
        let object = to_object(&message)?;
        let signing_bytes = signing_bytes_in(message.version(), T::TYPE, &object)?;
        let signature = key.sign(&signing_bytes).to_bytes();
        Ok(Self { message, signature, signing_bytes })
    }

    /// The exact bytes the signature covers.
    pub fn signing_bytes(&self) -> &[u8] {
        &self.signing_bytes
    }

    /// The message as sent on the wire: canonical JSON including `sig`.
    pub fn to_json(&self) -> Vec<u8> {
        let tag_len = self.version().domain_tag(T::TYPE).len();
        let body = &self.signing_bytes[tag_len..];
        // Re-canonicalize with `sig` added so the output is canonical whatever the field names.
        #[allow(clippy::expect_used)]
        let mut value: Value = serde_json::from_slice(body).expect("cannot fail: canonical JSON we produced");
        if let Value::Object(object) = &mut value {
            object.insert("sig".to_owned(), Value::String(hex::encode(self.signature)));
        }
        canonical_bytes(&value).unwrap_or_default()
    }
}

impl<T: Signable> Signed<T> {
    /// Signs `message` with `key`. Fails if `key` is not the message's signer.
    pub fn sign(message: T, key: &SigningKey) -> Result<Self, ProtocolError> {
        if key.verifying_key().to_bytes() != message.signer() {
            return Err(ProtocolError::new(Reason::BadSignature, "the key is not the message's signer"));
        }
        Self::sign_unchecked(message, key)
    }

    /// Verification under the acceptance rule of PROTOCOL.md §2 (see [`strict`]): the same
    /// verdict as [`verify_batch`] gives this message in any batch.
    pub fn verify(&self) -> Result<(), ProtocolError> {
        let signer = self.message.signer();
        strict::verify_one(&item_of(self, &signer))
    }
}

impl<T: OperatorSigned> Signed<T> {
    /// Signs an outbound message with the operator's key.
    pub fn sign_operator(message: T, operator: &SigningKey) -> Result<Self, ProtocolError> {
        if let Some(named) = message.named_operator() {
            if named != operator.verifying_key().to_bytes() {
                return Err(ProtocolError::new(Reason::BadSignature, "the key is not the operator the message names"));
            }
        }
        Self::sign_unchecked(message, operator)
    }

    /// Verifies an outbound message against the operator key the receiver pinned (never a key taken
    /// from the message): refused as `bad_signature` when another key signed it, when it names
    /// another operator, or when it was signed under another type's domain tag.
    pub fn verify_operator(&self, pinned: &[u8; 32]) -> Result<(), ProtocolError> {
        if let Some(named) = self.message.named_operator() {
            if &named != pinned {
                return Err(ProtocolError::new(Reason::BadSignature, "the message names another operator"));
            }
        }
        strict::verify_one(&strict::Item {
            signer: pinned,
            signed_bytes: &self.signing_bytes,
            signature: &self.signature,
        })
    }
}

/// Parses `sig`: exactly 128 lowercase hex digits.
fn parse_signature_hex(text: &str) -> Result<[u8; 64], ProtocolError> {
    let lowercase_hex = text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut signature = [0u8; 64];
    if text.len() != 128 || !lowercase_hex || hex::decode_to_slice(text, &mut signature).is_err() {
        return Err(ProtocolError::new(Reason::MalformedSignature, "`sig` is 128 lowercase hex digits"));
    }
    Ok(signature)
}

/// The verifying key for `bytes` under the acceptance rule (PROTOCOL.md §2): refused as
/// `invalid_public_key` when it is not the canonical encoding of a curve point, is of small order or
/// has a torsion component. Registration uses it to refuse keys that could never sign.
pub fn verifying_key(bytes: [u8; 32]) -> Result<VerifyingKey, ProtocolError> {
    strict::strict_verifying_key(&bytes)
}

fn item_of<'a, T: Signable>(signed: &'a Signed<T>, signer: &'a [u8; 32]) -> strict::Item<'a> {
    strict::Item { signer, signed_bytes: signed.signing_bytes(), signature: &signed.signature }
}

/// Verifies many messages at once, with exactly the verdicts [`Signed::verify`] gives each of them,
/// whatever else shares the batch: the same deterministic computation per message (see
/// [`strict`]), sharing only the field inversions.
pub fn verify_batch<T: Signable>(messages: &[&Signed<T>]) -> Vec<Result<(), ProtocolError>> {
    let signers: Vec<[u8; 32]> = messages.iter().map(|signed| signed.message.signer()).collect();
    let items: Vec<strict::Item<'_>> =
        messages.iter().zip(&signers).map(|(signed, signer)| item_of(signed, signer)).collect();
    strict::verify_many(&items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Order, Reading};
    use crate::testing::{sample_order, sample_reading, signing_key};

    #[test]
    fn a_signed_reading_round_trips_and_verifies() {
        let key = signing_key(1);
        let signed = Signed::sign(sample_reading(&key), &key).expect("signs");
        let parsed = Signed::<Reading>::parse(&signed.to_json()).expect("parses");
        assert_eq!(parsed, signed);
        parsed.verify().expect("verifies");
    }

    #[test]
    fn a_tampered_field_fails_verification() {
        let key = signing_key(1);
        let json = Signed::sign(sample_reading(&key), &key).expect("signs").to_json();
        let tampered = String::from_utf8(json).expect("utf-8").replace("\"import_wh\":", "\"import_wh\":1");
        let parsed = Signed::<Reading>::parse(tampered.as_bytes()).expect("still well-formed");
        assert_eq!(parsed.verify().unwrap_err().reason, Reason::BadSignature);
    }

    #[test]
    fn signing_with_someone_elses_key_is_refused() {
        let key = signing_key(1);
        let other = signing_key(2);
        assert!(Signed::sign(sample_reading(&key), &other).is_err());
    }

    #[test]
    fn a_reading_on_the_order_channel_is_the_wrong_type() {
        let key = signing_key(1);
        let json = Signed::sign(sample_reading(&key), &key).expect("signs").to_json();
        assert_eq!(Signed::<Order>::parse(&json).unwrap_err().reason, Reason::WrongMessageType);
    }

    #[test]
    fn batch_verification_finds_the_one_bad_signature() {
        let keys: Vec<SigningKey> = (1..=5).map(signing_key).collect();
        let mut signed: Vec<Signed<Order>> =
            keys.iter().map(|key| Signed::sign(sample_order(key), key).expect("signs")).collect();
        signed[3].signature[10] ^= 1;
        let refs: Vec<&Signed<Order>> = signed.iter().collect();
        let results = verify_batch(&refs);
        assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_ok() && results[4].is_ok());
        assert_eq!(results[3].as_ref().unwrap_err().reason, Reason::BadSignature);
    }

    #[test]
    fn a_batch_with_a_small_order_key_refuses_it_every_time_and_cached_keys_change_no_verdict() {
        let keys: Vec<SigningKey> = (1..=3).map(signing_key).collect();
        let mut signed: Vec<Signed<Order>> =
            keys.iter().map(|key| Signed::sign(sample_order(key), key).expect("signs")).collect();
        // The identity point as the signer, R = identity and s = 0: a forgery a non-strict check accepts.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        signed[1].message.account = crate::AccountId::parse(&hex::encode(identity)).expect("64 hex digits");
        signed[1].signature = [0u8; 64];
        signed[1].signature[0] = 1;
        for round in 0..3 {
            let refs: Vec<&Signed<Order>> = signed.iter().collect();
            let results = verify_batch(&refs);
            assert!(results[0].is_ok() && results[2].is_ok(), "round {round}: the good ones verify (keys cached)");
            assert_eq!(results[1].as_ref().unwrap_err().reason, Reason::InvalidPublicKey, "round {round}");
        }
        // A cached key does not make a bad signature verify.
        signed[2].signature[5] ^= 1;
        let refs: Vec<&Signed<Order>> = signed.iter().collect();
        assert_eq!(verify_batch(&refs)[2].as_ref().unwrap_err().reason, Reason::BadSignature);
    }

    #[test]
    fn every_signed_type_has_its_own_domain_tag_and_no_outbound_type_is_inbound() {
        use crate::messages::{AuctionResult, BookSnapshot, Cancel, OrderUpdate, ReadingAck, Reject, Replace, Trade};
        let inbound =
            [Reading::TYPE, Order::TYPE, Cancel::TYPE, Replace::TYPE, crate::BatteryPlan::TYPE, crate::CancelAll::TYPE];
        let outbound = [
            Trade::TYPE,
            BookSnapshot::TYPE,
            OrderUpdate::TYPE,
            Reject::TYPE,
            ReadingAck::TYPE,
            AuctionResult::TYPE,
            crate::SlotRoot::TYPE,
        ];
        assert_eq!(inbound, INBOUND_SIGNED_TYPES);
        assert_eq!(outbound, OUTBOUND_SIGNED_TYPES);
        let tags: std::collections::BTreeSet<String> =
            inbound.iter().chain(&outbound).map(|kind| domain_tag(kind)).collect();
        assert_eq!(tags.len(), inbound.len() + outbound.len(), "one tag per type");
    }

    #[test]
    fn an_outbound_message_verifies_against_the_pinned_operator_key_only() {
        use crate::testing::{operator_key, sample_trade};
        let operator = operator_key();
        let pinned = operator.verifying_key().to_bytes();
        let json = Signed::sign_operator(sample_trade(), &operator).expect("signs").to_json();
        let parsed = Signed::<crate::Trade>::parse(&json).expect("parses");
        parsed.verify_operator(&pinned).expect("verifies against the pinned key");
        // A neighbour signs its own trade with its own key: refused under the pinned key.
        let forged = Signed::sign_operator(sample_trade(), &signing_key(5)).expect("signs").to_json();
        let forged = Signed::<crate::Trade>::parse(&forged).expect("well-formed");
        assert_eq!(forged.verify_operator(&pinned).unwrap_err().reason, Reason::BadSignature);
        // An unsigned (old-style) trade is not a signed one.
        let unsigned = encode(&sample_trade()).expect("encodes");
        assert_eq!(Signed::<crate::Trade>::parse(&unsigned).unwrap_err().reason, Reason::MissingSignature);
    }

    #[test]
    fn a_message_signed_under_one_tag_never_verifies_under_another() {
        use crate::testing::{operator_key, sample_order_update};
        let operator = operator_key();
        let pinned = operator.verifying_key().to_bytes();
        let object = to_object(&sample_order_update()).expect("an object");
        let signed = Signed::sign_operator(sample_order_update(), &operator).expect("signs");
        for kind in INBOUND_SIGNED_TYPES.iter().chain(&OUTBOUND_SIGNED_TYPES).filter(|kind| **kind != "order_update") {
            let bytes = signing_bytes(kind, &object).expect("restricted values");
            let item = strict::Item { signer: &pinned, signed_bytes: &bytes, signature: &signed.signature };
            assert_eq!(strict::verify_one(&item).unwrap_err().reason, Reason::BadSignature, "under {kind}");
        }
        signed.verify_operator(&pinned).expect("verifies under its own tag");
    }

    #[test]
    fn a_slot_root_naming_another_operator_is_refused() {
        use crate::testing::operator_key;
        let operator = operator_key();
        let root = crate::SlotRoot {
            zone: crate::testing::zone(),
            slot: crate::SlotId::new(900_000).expect("a slot"),
            root: hex::encode([1u8; 32]),
            statements: 1,
            operator: crate::AccountId::from_verifying_key(&signing_key(5).verifying_key()),
            ts_ms: crate::TimestampMs(1),
        };
        assert!(Signed::sign_operator(root.clone(), &operator).is_err(), "not the operator it names");
        let by_other = Signed::sign_operator(root, &signing_key(5)).expect("signs as the key it names");
        by_other.verify().expect("self-consistent");
        let pinned = operator.verifying_key().to_bytes();
        assert_eq!(by_other.verify_operator(&pinned).unwrap_err().reason, Reason::BadSignature);
    }

    #[test]
    fn a_battery_reading_is_signed_under_the_v2_tag_and_parses_on_a_v2_channel_only() {
        use crate::testing::sample_battery_reading;
        let key = signing_key(1);
        let signed = Signed::sign(sample_battery_reading(&key), &key).expect("signs");
        assert_eq!(signed.version(), Version::V2);
        assert!(signed.signing_bytes().starts_with(b"gridex/v2/reading\n{"));
        let json = signed.to_json();
        let parsed = Signed::<Reading>::parse_on(&json, Version::V2).expect("parses on v2");
        assert_eq!(parsed, signed);
        parsed.verify().expect("verifies");
        let on_v1 = Signed::<Reading>::parse(&json).expect_err("v1 knows no battery field");
        assert_eq!(on_v1.reason, Reason::UnknownField);
    }

    #[test]
    fn a_battery_reading_signed_under_the_v1_tag_is_refused_on_both_channels() {
        use crate::testing::sample_battery_reading;
        let key = signing_key(1);
        let object = to_object(&sample_battery_reading(&key)).expect("an object");
        let v1_bytes = signing_bytes(Reading::TYPE, &object).expect("restricted values");
        let mut sent = object;
        sent.insert("sig".to_owned(), Value::String(hex::encode(key.sign(&v1_bytes).to_bytes())));
        let json = canonical_bytes(&Value::Object(sent)).expect("canonical");
        assert_eq!(Signed::<Reading>::parse(&json).unwrap_err().reason, Reason::UnknownField);
        let on_v2 = Signed::<Reading>::parse_on(&json, Version::V2).expect("well-formed v2");
        assert_eq!(on_v2.verify().unwrap_err().reason, Reason::BadSignature, "the v2 tag is not what was signed");
    }

    #[test]
    fn a_reading_without_a_battery_keeps_its_v1_bytes_and_is_refused_on_a_v2_channel() {
        let key = signing_key(1);
        let signed = Signed::sign(sample_reading(&key), &key).expect("signs");
        assert_eq!(signed.version(), Version::V1);
        assert!(signed.signing_bytes().starts_with(b"gridex/v1/reading\n{"));
        let error = Signed::<Reading>::parse_on(&signed.to_json(), Version::V2).expect_err("not a v2 reading");
        assert_eq!(error.reason, Reason::MissingField);
    }

    #[test]
    fn only_readings_have_a_version_2() {
        let key = signing_key(3);
        let json = Signed::sign(sample_order(&key), &key).expect("signs").to_json();
        assert_eq!(Signed::<Order>::parse_on(&json, Version::V2).unwrap_err().reason, Reason::WrongMessageType);
        assert_eq!(Version::from_number(2), Some(Version::V2));
        assert_eq!(Version::from_number(3), None);
        assert_eq!(Version::V2.domain_tag("reading"), "gridex/v2/reading\n");
    }

    #[test]
    fn battery_fields_out_of_their_domain_are_invalid_values() {
        use crate::testing::sample_battery_reading;
        let key = signing_key(1);
        type Spoil = fn(&mut Reading);
        let cases: [(&str, Spoil); 4] = [
            ("soc 1001", |reading| reading.battery_soc_permille = Some(1001)),
            ("negative charge", |reading| reading.battery_charge_wh = Some(crate::Wh(-1))),
            ("negative discharge", |reading| reading.battery_discharge_wh = Some(crate::Wh(-1))),
            ("zero capacity", |reading| reading.battery_capacity_wh = Some(crate::Wh(0))),
        ];
        for (name, spoil) in cases {
            let mut reading = sample_battery_reading(&key);
            spoil(&mut reading);
            assert_eq!(Signed::sign(reading, &key).unwrap_err().reason, Reason::InvalidValue, "{name}");
        }
        let mut full = sample_battery_reading(&key);
        full.battery_soc_permille = Some(1000);
        Signed::sign(full, &key).expect("1000 per mille is a full battery");
    }

    #[test]
    fn an_oversized_message_is_refused_before_parsing() {
        let padding = " ".repeat(Reading::SIZE_MAX);
        let bytes = format!("{{{padding}}}");
        assert_eq!(Signed::<Reading>::parse(bytes.as_bytes()).unwrap_err().reason, Reason::TooLarge);
    }
}
