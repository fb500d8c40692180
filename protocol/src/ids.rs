//! Identifiers: keys that name devices and accounts, zones, and delivery slots.

use crate::units::TimestampMs;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why an identifier string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("a public key is 64 lowercase hex digits")]
    BadKeyHex,
    #[error("a zone id is 1 to 32 characters of [a-z0-9-]")]
    BadZone,
    #[error("a meter serial is 1 to 64 characters of [A-Za-z0-9._:-]")]
    BadSerial,
    #[error("a delivery slot is a non-negative unix time in milliseconds")]
    BadSlot,
}

fn parse_key_hex(text: &str) -> Result<[u8; 32], IdError> {
    let lowercase_hex = text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if text.len() != 64 || !lowercase_hex {
        return Err(IdError::BadKeyHex);
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).map_err(|_| IdError::BadKeyHex)?;
    Ok(key)
}

macro_rules! key_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Parses 64 lowercase hex digits. Whether the bytes are a valid curve point is checked
            /// when a signature is verified (`Reason::InvalidPublicKey`).
            pub fn parse(text: &str) -> Result<Self, IdError> {
                parse_key_hex(text).map(Self)
            }
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn from_verifying_key(key: &ed25519_dalek::VerifyingKey) -> Self {
                Self(key.to_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

key_id!(
    /// A metering device, named by its ed25519 public key (readings are signed with it).
    DeviceId
);
key_id!(
    /// A trading account, named by its ed25519 public key (orders are signed with it).
    AccountId
);

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $valid:expr, $error:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let valid: fn(&str) -> bool = $valid;
                if valid(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err($error)
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Longest zone id: short enough for topic names and database keys.
pub const ZONE_ID_LEN_MAX: usize = 32;
/// Longest meter serial: covers every manufacturer format we have seen (SunSpec's is 32).
pub const METER_SERIAL_LEN_MAX: usize = 64;

string_id!(
    /// A grid zone (the unit of market partitioning): 1–32 characters of `[a-z0-9-]`.
    ZoneId,
    |text| {
        (1..=ZONE_ID_LEN_MAX).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    },
    IdError::BadZone
);
string_id!(
    /// A meter's serial number as the device reports it: 1–64 characters of `[A-Za-z0-9._:-]`.
    MeterSerial,
    |text| {
        (1..=METER_SERIAL_LEN_MAX).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    },
    IdError::BadSerial
);

/// A delivery slot, named by the unix time in milliseconds at which delivery starts. The slot's length
/// is the zone's (15 minutes by default); a slot start must be a multiple of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SlotId(i64);

impl SlotId {
    pub fn new(start_ms: i64) -> Result<Self, IdError> {
        if (0..=crate::units::MAX_SAFE_INTEGER).contains(&start_ms) {
            Ok(Self(start_ms))
        } else {
            Err(IdError::BadSlot)
        }
    }
    /// The slot of length `slot_len_ms` that contains `at`.
    pub fn containing(at: TimestampMs, slot_len_ms: i64) -> Self {
        assert!(slot_len_ms > 0, "slot length must be positive");
        Self(at.0.max(0) - at.0.max(0).rem_euclid(slot_len_ms))
    }
    pub const fn start_ms(self) -> i64 {
        self.0
    }
    pub fn start(self) -> TimestampMs {
        TimestampMs(self.0)
    }
    pub fn end(self, slot_len_ms: i64) -> TimestampMs {
        TimestampMs(self.0 + slot_len_ms)
    }
    pub fn next(self, slot_len_ms: i64) -> Self {
        Self(self.0 + slot_len_ms)
    }
    pub fn is_aligned(self, slot_len_ms: i64) -> bool {
        slot_len_ms > 0 && self.0 % slot_len_ms == 0
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for SlotId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let start_ms = i64::deserialize(deserializer)?;
        SlotId::new(start_ms).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_ids_are_short_lowercase_slugs() {
        assert!(ZoneId::parse("north-1").is_ok());
        assert_eq!(ZoneId::parse(""), Err(IdError::BadZone));
        assert_eq!(ZoneId::parse("North"), Err(IdError::BadZone));
        assert_eq!(ZoneId::parse("a/b"), Err(IdError::BadZone));
        assert_eq!(ZoneId::parse(&"a".repeat(33)), Err(IdError::BadZone));
    }

    #[test]
    fn keys_are_lowercase_hex_only() {
        let lower = "ab".repeat(32);
        assert!(DeviceId::parse(&lower).is_ok());
        assert_eq!(DeviceId::parse(&"AB".repeat(32)), Err(IdError::BadKeyHex));
        assert_eq!(DeviceId::parse(&"ab".repeat(31)), Err(IdError::BadKeyHex));
    }

    #[test]
    fn slot_containing_rounds_down_to_the_slot_start() {
        let slot = SlotId::containing(TimestampMs(1_800_000 + 59), 900_000);
        assert_eq!(slot.start_ms(), 1_800_000);
        assert!(slot.is_aligned(900_000));
        assert_eq!(slot.next(900_000).start_ms(), 2_700_000);
    }
}
