//! MQTT topic names, QoS and retain flags: the one place they are spelled out.
//!
//! | topic | publisher | QoS | retain |
//! |---|---|---|---|
//! | `gridex/v1/{zone}/readings/{device}` | gateway | 1 | no |
//! | `gridex/v1/{zone}/orders/{account}` | trader (order, cancel, replace) | 1 | no |
//! | `gridex/v1/{zone}/trades` | exchange | 1 | no |
//! | `gridex/v1/{zone}/book` | exchange | 0 | yes |
//! | `gridex/v1/{zone}/auction` | exchange (closing auction results) | 1 | yes |
//! | `gridex/v1/{zone}/events/{sender}` | exchange (order updates, reading acks) | 1 | no |
//! | `gridex/v1/{zone}/rejects/{sender}` | exchange | 1 | no |
//! | `gridex/v1/status/{device}` | gateway (and its last will) | 1 | yes |

use crate::ids::ZoneId;

pub const PREFIX: &str = "gridex/v1";

/// QoS levels as plain numbers, so this crate needs no MQTT client.
pub const QOS_AT_MOST_ONCE: u8 = 0;
pub const QOS_AT_LEAST_ONCE: u8 = 1;

pub fn readings(zone: &ZoneId, device: &impl std::fmt::Display) -> String {
    format!("{PREFIX}/{zone}/readings/{device}")
}
pub fn orders(zone: &ZoneId, account: &impl std::fmt::Display) -> String {
    format!("{PREFIX}/{zone}/orders/{account}")
}
pub fn trades(zone: &ZoneId) -> String {
    format!("{PREFIX}/{zone}/trades")
}
pub fn book(zone: &ZoneId) -> String {
    format!("{PREFIX}/{zone}/book")
}
/// The zone's closing auction results (`auction`), retained: the last one.
pub fn auction(zone: &ZoneId) -> String {
    format!("{PREFIX}/{zone}/auction")
}
/// The zone's settled slot roots (`slot_root`, signed by the operator), retained: the latest.
pub fn slot_root(zone: &ZoneId) -> String {
    format!("{PREFIX}/{zone}/roots")
}
pub fn events(zone: &ZoneId, sender: &impl std::fmt::Display) -> String {
    format!("{PREFIX}/{zone}/events/{sender}")
}
pub fn rejects(zone: &ZoneId, sender: &impl std::fmt::Display) -> String {
    format!("{PREFIX}/{zone}/rejects/{sender}")
}
pub fn status(device: &impl std::fmt::Display) -> String {
    format!("{PREFIX}/status/{device}")
}

/// Subscription filters for the exchange: inbound messages of every zone.
pub const ALL_READINGS: &str = "gridex/v1/+/readings/+";
pub const ALL_ORDERS: &str = "gridex/v1/+/orders/+";

/// An inbound topic the exchange understands, with its segments still unparsed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    Readings { zone: &'a str, device: &'a str },
    Orders { zone: &'a str, account: &'a str },
}

/// Splits an inbound topic. Segment contents are checked by the caller against the message.
pub fn parse_inbound(topic: &str) -> Option<Inbound<'_>> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (zone, channel, sender) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    match channel {
        "readings" => Some(Inbound::Readings { zone, device: sender }),
        "orders" => Some(Inbound::Orders { zone, account: sender }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_topics_round_trip() {
        let zone = ZoneId::parse("north").expect("valid");
        assert_eq!(parse_inbound(&readings(&zone, &"ab")), Some(Inbound::Readings { zone: "north", device: "ab" }));
        assert_eq!(parse_inbound(&orders(&zone, &"cd")), Some(Inbound::Orders { zone: "north", account: "cd" }));
        assert_eq!(parse_inbound("gridex/v1/north/trades"), None);
        assert_eq!(parse_inbound("gridex/v1/north/orders/cd/extra"), None);
        assert_eq!(parse_inbound("other/v1/north/orders/cd"), None);
    }
}
