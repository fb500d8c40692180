//! The operator key a gateway and its agent pin (`[mqtt] operator_key = "<64 hex>"`), and the check
//! of every message the exchange sends them (PROTOCOL.md §2.1): parsed as a `Signed<T>` and verified
//! against the pinned key, never against a key taken from the message. What does not verify is
//! dropped with a warning and counted ([`unverified_total`]), never acted on.

use protocol::{OperatorSigned, Signed};
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages from the exchange dropped because they did not verify against the pinned key.
static UNVERIFIED: AtomicU64 = AtomicU64::new(0);

/// How many messages this process dropped because they did not verify against the pinned key.
pub fn unverified_total() -> u64 {
    UNVERIFIED.load(Ordering::Relaxed)
}

/// Parses the pinned operator key: 64 lowercase hex digits of a valid ed25519 public key.
pub fn parse_pinned(text: &str) -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    let lowercase_hex = text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if text.len() != 64 || !lowercase_hex || hex::decode_to_slice(text, &mut key).is_err() {
        return Err("operator_key is 64 lowercase hex digits (GET /api/v1/operator-key)".to_owned());
    }
    protocol::wire::verifying_key(key).map_err(|error| format!("operator_key: {error}"))?;
    Ok(key)
}

/// The message of `payload` if it is a `T` the pinned operator signed; otherwise `None`, counted
/// and logged once per message.
pub fn verified<T: OperatorSigned>(pinned: &[u8; 32], topic: &str, payload: &[u8]) -> Option<T> {
    match Signed::<T>::parse(payload).and_then(|signed| signed.verify_operator(pinned).map(|()| signed.message)) {
        Ok(message) => Some(message),
        Err(error) => {
            UNVERIFIED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%topic, %error, "dropped a message that is not signed by the pinned operator key");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::testing::{operator_key, sample_trade, signing_key};

    #[test]
    fn only_the_pinned_operators_messages_are_heard() {
        let pinned = operator_key().verifying_key().to_bytes();
        let good = Signed::sign_operator(sample_trade(), &operator_key()).expect("signs").to_json();
        assert_eq!(verified::<protocol::Trade>(&pinned, "t", &good), Some(sample_trade()));
        let before = unverified_total();
        let forged = Signed::sign_operator(sample_trade(), &signing_key(5)).expect("signs").to_json();
        assert_eq!(verified::<protocol::Trade>(&pinned, "t", &forged), None);
        let unsigned = protocol::encode(&sample_trade()).expect("encodes");
        assert_eq!(verified::<protocol::Trade>(&pinned, "t", &unsigned), None);
        assert!(unverified_total() >= before + 2);
    }

    #[test]
    fn a_pinned_key_must_be_a_valid_key_in_lowercase_hex() {
        let hex_key = hex::encode(operator_key().verifying_key().to_bytes());
        assert!(parse_pinned(&hex_key).is_ok());
        assert!(parse_pinned(&hex_key.to_uppercase()).is_err());
        assert!(parse_pinned("abcd").is_err());
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_pinned(&hex::encode(identity)).is_err(), "a small-order key never verifies anything");
    }
}
