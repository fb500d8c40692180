//! Machine-readable reason codes for rejected messages. The code strings are part of the wire
//! contract (PROTOCOL.md lists them); add new ones, never rename or reuse one.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// Why a message was rejected.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The code as it appears on the wire.
            pub const fn code(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// Looks a code up; `None` for a code this version does not know.
            pub fn from_code(code: &str) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // --- framing and parsing ---
    /// The payload is larger than the limit for its kind.
    TooLarge => "too_large",
    /// The payload is not valid UTF-8 JSON.
    MalformedJson => "malformed_json",
    /// The top-level JSON value is not an object.
    NotAnObject => "not_an_object",
    /// An object has the same key twice.
    DuplicateKey => "duplicate_key",
    /// A number has a fraction or an exponent.
    FloatNotAllowed => "float_not_allowed",
    /// A value is `null`; optional fields are omitted instead.
    NullNotAllowed => "null_not_allowed",
    /// An integer's magnitude exceeds 2^53 − 1.
    IntegerOutOfRange => "integer_out_of_range",
    /// Nesting is deeper than the limit.
    TooDeep => "too_deep",
    /// The message has a field this version does not define.
    UnknownField => "unknown_field",
    /// A required field is absent.
    MissingField => "missing_field",
    /// A field has the wrong JSON type.
    WrongType => "wrong_type",
    /// A field has the right type but a value outside its domain.
    InvalidValue => "invalid_value",
    /// The `type` field names a different message than the channel carries.
    WrongMessageType => "wrong_message_type",
    // --- signatures and identity ---
    /// The `sig` field is absent.
    MissingSignature => "missing_signature",
    /// The `sig` field is not 128 lowercase hex digits.
    MalformedSignature => "malformed_signature",
    /// The signature does not verify under the signer's key.
    BadSignature => "bad_signature",
    /// The signer's key is not a valid, non-small-order ed25519 point.
    InvalidPublicKey => "invalid_public_key",
    /// The signer's key is not registered with the exchange.
    UnknownKey => "unknown_key",
    /// The topic names a different zone or sender than the message.
    TopicMismatch => "topic_mismatch",
    /// The key is registered to a different zone.
    ZoneMismatch => "zone_mismatch",
    // --- freshness ---
    /// The sequence number or nonce is not greater than the last accepted one.
    Replayed => "replayed",
    /// This very command (the same signed bytes) was accepted before; it is not applied again. A
    /// resend, for instance a broker redelivering a command whose acknowledgement was lost.
    Duplicate => "duplicate",
    /// The timestamp is older than the accepted window.
    TimestampTooOld => "timestamp_too_old",
    /// The timestamp is further in the future than the accepted window.
    TimestampInFuture => "timestamp_in_future",
    /// A reading's timestamp is not after the device's previous accepted reading: readings are
    /// strictly ordered in time as in `seq`, so a reading cannot be backdated.
    TimestampNotIncreasing => "timestamp_not_increasing",
    // --- readings ---
    /// A cumulative counter is lower than in the previous accepted reading.
    CounterWentBackwards => "counter_went_backwards",
    /// The energy since the previous reading exceeds what the nameplate power allows.
    ImplausibleEnergy => "implausible_energy",
    // --- orders ---
    /// The exchange does not serve this zone.
    UnknownZone => "unknown_zone",
    /// The delivery slot is not open for trading (too far ahead or already delivered).
    SlotNotOpen => "slot_not_open",
    /// Gate closure for the slot has passed.
    GateClosed => "gate_closed",
    /// The slot start is not aligned to the zone's slot length.
    SlotMisaligned => "slot_misaligned",
    /// The price is outside the zone's price band.
    PriceOutOfBand => "price_out_of_band",
    /// The price is not a multiple of the tick size.
    PriceOffTick => "price_off_tick",
    /// The quantity is below the minimum.
    QuantityTooSmall => "quantity_too_small",
    /// The quantity is above the maximum.
    QuantityTooLarge => "quantity_too_large",
    /// A post-only order would have traded on arrival.
    PostOnlyWouldCross => "post_only_would_cross",
    /// A fill-or-kill order could not be filled in full.
    FokNotFillable => "fok_not_fillable",
    /// The order to cancel or replace is not open.
    UnknownOrder => "unknown_order",
    /// The account has the maximum number of open orders.
    TooManyOpenOrders => "too_many_open_orders",
    /// The order would only trade with the same account's resting orders.
    SelfTradePrevented => "self_trade_prevented",
    // --- operations ---
    /// The exchange is shedding load; retry later.
    Overloaded => "overloaded",
    /// The account sent commands faster than its rate limit allows; the command was not logged.
    /// Retry later (the same signed command may be sent again while its timestamp is fresh).
    RateLimited => "rate_limited",
    /// Something failed inside the exchange; the message was not accepted.
    InternalError => "internal_error",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_serde() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_code(reason.code()), Some(*reason));
            let json = serde_json::to_string(reason).expect("a reason serializes");
            assert_eq!(json, format!("\"{}\"", reason.code()));
        }
    }

    /// PROTOCOL.md §7 is the list third-party gateways and traders read: every code is in it.
    #[test]
    fn protocol_md_lists_every_reason_code() {
        let protocol_md = include_str!("../../PROTOCOL.md");
        let section = protocol_md.split("## 7. Reason codes").nth(1).expect("PROTOCOL.md has §7");
        let section = section.split("\n## ").next().unwrap_or(section);
        for reason in Reason::ALL {
            assert!(section.contains(&format!("`{}`", reason.code())), "PROTOCOL.md §7 lacks `{reason}`");
        }
    }
}
