//! The operator-signed envelope of the messages gridex servers send one another through the broker
//! (a command relay's reply, a relayed query and its answer): a body's JSON signed with the operator
//! key over domain tag ‖ body, and verified against the operator key the receiving server runs with,
//! so a participant who could publish on these topics despite the broker's ACL can forge none.
//!
//! Each kind of message is one [`Envelope`]: its own domain tag (no protocol message's signed bytes,
//! and no other kind's, start with it, so no signature is ever valid as another kind), its framing
//! on the wire and its largest payload. Not part of `protocol`: no trader or gateway reads them. A
//! leaf of the service: it imports none of its modules.

use ed25519_dalek::{Signer, SigningKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// How a signed payload lays out its signature and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `{"body": <the body's JSON as a string>, "sig": <hex>}`: the signed bytes are exactly the
    /// string that is parsed.
    Json,
    /// The signature in hex, a newline, then the body's JSON exactly as signed (not escaped into an
    /// envelope: a book or a list keeps its size).
    Line,
}

/// One kind of signed message between gridex servers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope {
    /// The domain tag the signature covers before the body.
    pub domain: &'static [u8],
    pub framing: Framing,
    /// Largest payload opened; a longer one is [`OpenError::Malformed`].
    pub payload_bytes_max: usize,
}

/// Why a signed payload was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum OpenError {
    #[error("the payload does not parse or is too large")]
    Malformed,
    #[error("the payload is not signed by the operator key")]
    BadSignature,
}

/// The [`Framing::Json`] layout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFrame {
    body: String,
    sig: String,
}

/// Hex digits of an ed25519 signature.
const SIG_HEX_LEN: usize = 128;

impl Envelope {
    fn signed_bytes(&self, body: &str) -> Vec<u8> {
        let mut bytes = self.domain.to_vec();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }

    /// `body`, signed with `key` under this envelope's domain tag, as it goes on the wire.
    pub(crate) fn seal(&self, key: &SigningKey, body: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
        let body = serde_json::to_string(body)?;
        let sig = hex::encode(key.sign(&self.signed_bytes(&body)).to_bytes());
        match self.framing {
            Framing::Json => serde_json::to_vec(&JsonFrame { body, sig }),
            Framing::Line => Ok(format!("{sig}\n{body}").into_bytes()),
        }
    }

    /// The body of `payload`, once its signature under this envelope's domain tag verified against
    /// `operator`.
    pub(crate) fn open<T: DeserializeOwned>(&self, operator: &[u8; 32], payload: &[u8]) -> Result<T, OpenError> {
        if payload.len() > self.payload_bytes_max {
            return Err(OpenError::Malformed);
        }
        let (sig, body) = self.split(payload).ok_or(OpenError::Malformed)?;
        let sig: [u8; 64] =
            hex::decode(sig.as_ref()).ok().and_then(|bytes| bytes.try_into().ok()).ok_or(OpenError::Malformed)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(operator).map_err(|_| OpenError::BadSignature)?;
        key.verify_strict(&self.signed_bytes(&body), &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| OpenError::BadSignature)?;
        serde_json::from_str(&body).map_err(|_| OpenError::Malformed)
    }

    /// The signature (hex) and the body of `payload`, as its framing lays them out.
    fn split<'a>(&self, payload: &'a [u8]) -> Option<(Cow<'a, [u8]>, Cow<'a, str>)> {
        match self.framing {
            Framing::Json => {
                let frame: JsonFrame = serde_json::from_slice(payload).ok()?;
                Some((Cow::Owned(frame.sig.into_bytes()), Cow::Owned(frame.body)))
            }
            Framing::Line => {
                match (payload.get(..SIG_HEX_LEN), payload.get(SIG_HEX_LEN), payload.get(SIG_HEX_LEN + 1..)) {
                    (Some(sig), Some(b'\n'), Some(body)) => {
                        Some((Cow::Borrowed(sig), Cow::Borrowed(std::str::from_utf8(body).ok()?)))
                    }
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: Envelope = Envelope { domain: b"gridex-test/1\n", framing: Framing::Line, payload_bytes_max: 1_024 };
    const JSON: Envelope = Envelope { framing: Framing::Json, ..LINE };

    /// The wire layout of each framing, built here by hand: the signature covers domain ‖ body.
    #[test]
    fn each_framing_lays_out_the_signature_over_domain_and_body() {
        let key = protocol::testing::operator_key();
        let body = serde_json::json!({ "request": "r1", "zone": "north" });
        let text = body.to_string();
        let sig = hex::encode(key.sign(&[LINE.domain, text.as_bytes()].concat()).to_bytes());
        assert_eq!(LINE.seal(&key, &body).expect("signs"), format!("{sig}\n{text}").into_bytes());
        let escaped = serde_json::to_string(&text).expect("a string");
        assert_eq!(
            JSON.seal(&key, &body).expect("signs"),
            format!("{{\"body\":{escaped},\"sig\":\"{sig}\"}}").into_bytes()
        );
    }

    #[test]
    fn a_payload_opens_only_under_its_own_framing_domain_and_key() {
        let key = protocol::testing::operator_key();
        let pinned = key.verifying_key().to_bytes();
        let body = serde_json::json!({ "request": "r1" });
        for envelope in [LINE, JSON] {
            let payload = envelope.seal(&key, &body).expect("signs");
            assert_eq!(envelope.open::<serde_json::Value>(&pinned, &payload), Ok(body.clone()));
            let other_domain = Envelope { domain: b"gridex-other/1\n", ..envelope };
            assert_eq!(other_domain.open::<serde_json::Value>(&pinned, &payload), Err(OpenError::BadSignature));
            let other_key = SigningKey::from_bytes(&[77; 32]).verifying_key().to_bytes();
            assert_eq!(envelope.open::<serde_json::Value>(&other_key, &payload), Err(OpenError::BadSignature));
            let small = Envelope { payload_bytes_max: payload.len() - 1, ..envelope };
            assert_eq!(small.open::<serde_json::Value>(&pinned, &payload), Err(OpenError::Malformed));
        }
        let line = LINE.seal(&key, &body).expect("signs");
        assert_eq!(JSON.open::<serde_json::Value>(&pinned, &line), Err(OpenError::Malformed));
        let json = JSON.seal(&key, &body).expect("signs");
        assert_eq!(LINE.open::<serde_json::Value>(&pinned, &json), Err(OpenError::Malformed));
    }
}
