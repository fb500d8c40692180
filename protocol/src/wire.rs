//! Encoding, decoding and signing of wire messages.
//!
//! Every message is a JSON object with a `type` field naming it. Signed messages also carry `sig`:
//! the ed25519 signature over `gridex/v1/<type>\n` followed by the RFC 8785 canonical JSON of the
//! object without `sig` (see PROTOCOL.md, "Signing rule").

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
}

/// A message that is signed by the key it names.
pub trait Signable: WireMessage {
    /// The public key that must have signed the message.
    fn signer(&self) -> [u8; 32];
}

/// The domain tag that prefixes the signed bytes of a message of type `kind`.
pub fn domain_tag(kind: &str) -> String {
    format!("gridex/v1/{kind}\n")
}

/// The bytes a signature covers: domain tag, then the canonical JSON of `object` (which must not
/// contain `sig`).
pub fn signing_bytes(kind: &str, object: &Map<String, Value>) -> Result<Vec<u8>, ProtocolError> {
    let canonical = canonical_bytes(&Value::Object(object.clone()))
        .map_err(|reason| ProtocolError::new(reason, "value outside the restricted JSON set"))?;
    let mut bytes = domain_tag(kind).into_bytes();
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

impl<T: Signable> Signed<T> {
    /// Parses a signed message strictly: size, JSON, restricted values, type, `sig` format, fields.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        Self::from_object(decode_object(bytes, T::TYPE, T::SIZE_MAX)?)
    }

    /// Finishes parsing an object already checked to be of type `T::TYPE`.
    pub(crate) fn from_object(mut object: Map<String, Value>) -> Result<Self, ProtocolError> {
        let signature = match object.remove("sig") {
            None => return Err(ProtocolError::new(Reason::MissingSignature, "missing field `sig`")),
            Some(Value::String(text)) => parse_signature_hex(&text)?,
            Some(_) => return Err(ProtocolError::new(Reason::MalformedSignature, "`sig` must be a string")),
        };
        let signing_bytes = signing_bytes(T::TYPE, &object)?;
        let message = typed::<T>(object)?;
        Ok(Self { message, signature, signing_bytes })
    }

    /// Signs `message` with `key`. Fails if `key` is not the message's signer.
    pub fn sign(message: T, key: &SigningKey) -> Result<Self, ProtocolError> {
        if key.verifying_key().to_bytes() != message.signer() {
            return Err(ProtocolError::new(Reason::BadSignature, "the key is not the message's signer"));
        }
        message.validate()?;
        let object = to_object(&message)?;
        let signing_bytes = signing_bytes(T::TYPE, &object)?;
        let signature = key.sign(&signing_bytes).to_bytes();
        Ok(Self { message, signature, signing_bytes })
    }

    /// `message` with a signature made elsewhere (by a hardware key, or a malformed one for a
    /// test). Nothing is checked but the message's fields; call [`Signed::verify`] before trusting it.
    pub fn with_signature(message: T, signature: [u8; 64]) -> Result<Self, ProtocolError> {
        message.validate()?;
        let signing_bytes = signing_bytes(T::TYPE, &to_object(&message)?)?;
        Ok(Self { message, signature, signing_bytes })
    }

    /// The exact bytes the signature covers.
    pub fn signing_bytes(&self) -> &[u8] {
        &self.signing_bytes
    }

    /// Verification under the acceptance rule of PROTOCOL.md §2 (see [`strict`]): the same
    /// verdict as [`verify_batch`] gives this message in any batch.
    pub fn verify(&self) -> Result<(), ProtocolError> {
        let signer = self.message.signer();
        strict::verify_one(&item_of(self, &signer))
    }

    /// The message as sent on the wire: canonical JSON including `sig`.
    pub fn to_json(&self) -> Vec<u8> {
        let tag_len = domain_tag(T::TYPE).len();
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
    fn an_oversized_message_is_refused_before_parsing() {
        let padding = " ".repeat(Reading::SIZE_MAX);
        let bytes = format!("{{{padding}}}");
        assert_eq!(Signed::<Reading>::parse(bytes.as_bytes()).unwrap_err().reason, Reason::TooLarge);
    }
}
