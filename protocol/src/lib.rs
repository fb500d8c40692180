//! The gridex wire contract: the messages that gateways, traders and the exchange exchange, their
//! units, the canonical bytes that are signed, the reason codes of rejections and the MQTT topics.
//!
//! This crate owns the format that third-party gateways implement (PROTOCOL.md is its prose form and
//! `test-vectors.json` its executable form). It must never do I/O, run async code, or depend on
//! another gridex crate; a change to any type here is a protocol change and needs a version bump.
//!
//! Principal types: [`Reading`], [`Order`], [`Cancel`], [`Replace`], [`CancelAll`] (signed, inbound);
//! [`BatteryPlan`] (signed by the account, information only: a home battery's plan);
//! [`Trade`], [`Reject`], [`BookSnapshot`], [`OrderUpdate`] (outbound); [`Signed`] (a parsed,
//! not yet verified signed message); the unit newtypes [`Wh`], [`PricePerKwh`], [`MicroMoney`],
//! [`MicroTokens`]; the identifiers [`DeviceId`], [`AccountId`], [`ZoneId`], [`SlotId`].
//!
//! ```
//! use protocol::{Reading, Signed, testing};
//!
//! let key = testing::signing_key(1);
//! let reading = testing::sample_reading(&key);
//! let bytes = Signed::sign(reading, &key).unwrap().to_json();
//!
//! let received = Signed::<Reading>::parse(&bytes).unwrap();
//! received.verify().unwrap();
//! assert_eq!(received.message.seq, 42);
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod canonical;
pub mod forge;
pub mod ids;
pub mod market;
pub mod merkle;
pub mod messages;
pub mod plan;
pub mod reason;
pub mod role;
pub mod rules;
pub mod strict;
pub mod tariff;
pub mod testing;
pub mod topics;
pub mod units;
pub mod vectors;
pub mod wire;

pub use ids::{AccountId, DeviceId, IdError, MeterSerial, SlotId, ZoneId};
pub use messages::{
    AuctionResult, BookSnapshot, BookState, Cancel, CancelAll, Command, Level, Order, OrderStatus, OrderUpdate,
    PriceBand, Reading, ReadingAck, Reject, Replace, Side, SlotRoot, Statement, Status, TimeInForce, Trade,
};
pub use plan::{BatteryPlan, PlannedSlot};
pub use reason::Reason;
pub use role::DeviceRole;
pub use units::{MicroMoney, MicroTokens, PowerW, PricePerKwh, Rounding, TimestampMs, Wh};
pub use wire::{decode, encode, verify_batch, OperatorSigned, ProtocolError, Signable, Signed, Version, WireMessage};
