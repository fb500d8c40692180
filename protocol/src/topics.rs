//! MQTT topic names, QoS and retain flags: the one place they are spelled out.
//!
//! | topic | publisher | QoS | retain |
//! |---|---|---|---|
//! | `gridex/v1/{zone}/readings/{device}` | gateway (readings without a battery) | 1 | no |
//! | `gridex/v2/{zone}/readings/{device}` | gateway (readings with a battery, version 2) | 1 | no |
//! | `gridex/v1/{zone}/orders/{account}` | trader (order, cancel, replace, cancel_all) | 1 | no |
//! | `gridex/v1/{zone}/plans/{account}` | trading agent (battery_plan) | 1 | no |
//! | `gridex/v1/{zone}/trades` | exchange | 1 | no |
//! | `gridex/v1/{zone}/book` | exchange | 0 | yes |
//! | `gridex/v1/{zone}/auction` | exchange (closing auction results) | 1 | yes |
//! | `gridex/v1/{zone}/events/{sender}` | exchange (order updates, reading acks) | 1 | no |
//! | `gridex/v1/{zone}/rejects/{sender}` | exchange | 1 | no |
//! | `gridex/v1/status/{device}` | gateway (and its last will) | 1 | yes |
//! | `gridex/v1/{zone}/relay/{instance}/{request}` | a gridex server (a command it relays to the zone's owner) | 1 | no |
//! | `gridex/v1/{zone}/relay-replies/{instance}` | exchange (the outcome of a relayed command) | 1 | no |
//! | `gridex/v1/{zone}/query/{instance}/{request}` | a gridex server (a read query it relays to the zone's owner) | 0 | no |
//! | `gridex/v1/{zone}/query-replies/{instance}` | exchange (the answer to a relayed read query) | 0 | no |

//!
//! Every topic is version 1 but the readings of a device with a battery: a reading goes on the
//! topic of its version ([`readings_for`]).

use crate::ids::ZoneId;
use crate::messages::Reading;
use crate::wire::{Version, WireMessage};

/// The version 1 prefix, of every topic but version 2 readings.
pub const PREFIX: &str = "gridex/v1";

/// QoS levels as plain numbers, so this crate needs no MQTT client.
pub const QOS_AT_MOST_ONCE: u8 = 0;
pub const QOS_AT_LEAST_ONCE: u8 = 1;

/// The version 1 readings topic of `device` (readings without a battery).
pub fn readings(zone: &ZoneId, device: &impl std::fmt::Display) -> String {
    readings_in(Version::V1, zone, device)
}
/// The readings topic of `device` in `version`.
pub fn readings_in(version: Version, zone: &ZoneId, device: &impl std::fmt::Display) -> String {
    format!("{}/{zone}/readings/{device}", version.prefix())
}
/// The topic `reading` is published on: its zone and device, in its version.
pub fn readings_for(reading: &Reading) -> String {
    readings_in(reading.version(), &reading.zone, &reading.device)
}
pub fn orders(zone: &ZoneId, account: &impl std::fmt::Display) -> String {
    format!("{PREFIX}/{zone}/orders/{account}")
}
/// The account's home-battery plans (`battery_plan`, signed by the account).
pub fn plans(zone: &ZoneId, account: &impl std::fmt::Display) -> String {
    format!("{PREFIX}/{zone}/plans/{account}")
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

/// A command that gridex server `instance` relays, as request `request`, to the instance that owns
/// `zone` (its payload is the command's signed bytes, exactly as the server received them). Between
/// gridex servers only: traders and gateways never publish or read relay topics (PROTOCOL.md §4).
pub fn relay(zone: &ZoneId, instance: &str, request: &str) -> String {
    format!("{PREFIX}/{zone}/relay/{instance}/{request}")
}
/// The filter of every relayed command of `zone`: what its owner subscribes to.
pub fn relay_filter(zone: &ZoneId) -> String {
    format!("{PREFIX}/{zone}/relay/+/+")
}
/// Where the owner of `zone` answers the commands relayed by gridex server `instance`.
pub fn relay_replies(zone: &ZoneId, instance: &str) -> String {
    format!("{PREFIX}/{zone}/relay-replies/{instance}")
}
/// The filter of every answer to gridex server `instance`'s relayed commands, in every zone.
pub fn relay_replies_filter(instance: &str) -> String {
    format!("{PREFIX}/+/relay-replies/{instance}")
}

/// The segments of a `{PREFIX}/{zone}/{channel}/…` topic with exactly `N` segments after
/// `channel`: the zone and those, unparsed; `None` for any other topic.
fn channel_segments<'a, const N: usize>(topic: &'a str, channel: &str) -> Option<(&'a str, [&'a str; N])> {
    let mut parts = topic.strip_prefix(PREFIX)?.strip_prefix('/')?.split('/');
    let zone = parts.next()?;
    if parts.next()? != channel {
        return None;
    }
    let mut after = [""; N];
    for segment in &mut after {
        *segment = parts.next()?;
    }
    parts.next().is_none().then_some((zone, after))
}

/// A relay topic's segments: `(zone, instance, request)` of [`relay`], unparsed.
pub fn parse_relay(topic: &str) -> Option<(&str, &str, &str)> {
    let (zone, [instance, request]) = channel_segments(topic, "relay")?;
    Some((zone, instance, request))
}
/// A relay reply topic's segments: `(zone, instance)` of [`relay_replies`], unparsed.
pub fn parse_relay_replies(topic: &str) -> Option<(&str, &str)> {
    let (zone, [instance]) = channel_segments(topic, "relay-replies")?;
    Some((zone, instance))
}

/// A read query (book, slots, auctions, an account's open orders) that gridex server `instance`
/// relays, as request `request`, to the instance that owns `zone`. Between gridex servers only,
/// like [`relay`]; its payload is signed with the operator key.
pub fn query(zone: &ZoneId, instance: &str, request: &str) -> String {
    format!("{PREFIX}/{zone}/query/{instance}/{request}")
}
/// The filter of every relayed read query of `zone`: what its owner subscribes to.
pub fn query_filter(zone: &ZoneId) -> String {
    format!("{PREFIX}/{zone}/query/+/+")
}
/// Where the owner of `zone` answers the read queries relayed by gridex server `instance`.
pub fn query_replies(zone: &ZoneId, instance: &str) -> String {
    format!("{PREFIX}/{zone}/query-replies/{instance}")
}
/// The filter of every answer to gridex server `instance`'s relayed read queries, in every zone.
pub fn query_replies_filter(instance: &str) -> String {
    format!("{PREFIX}/+/query-replies/{instance}")
}
/// A read query topic's segments: `(zone, instance, request)` of [`query`], unparsed.
pub fn parse_query(topic: &str) -> Option<(&str, &str, &str)> {
    let (zone, [instance, request]) = channel_segments(topic, "query")?;
    Some((zone, instance, request))
}
/// A read query answer topic's segments: `(zone, instance)` of [`query_replies`], unparsed.
pub fn parse_query_replies(topic: &str) -> Option<(&str, &str)> {
    let (zone, [instance]) = channel_segments(topic, "query-replies")?;
    Some((zone, instance))
}

/// Subscription filters for the exchange: inbound messages of every zone.
pub const ALL_READINGS: &str = "gridex/v1/+/readings/+";
/// Version 2 readings (with a battery) of every zone.
pub const ALL_READINGS_V2: &str = "gridex/v2/+/readings/+";
pub const ALL_ORDERS: &str = "gridex/v1/+/orders/+";
/// Battery plans of every zone.
pub const ALL_PLANS: &str = "gridex/v1/+/plans/+";

/// Subscription filters for a server's live feed (PROTOCOL.md §3): every zone's public market data
/// and every participant's events (order updates; reading acks are skipped by the reader).
pub const MARKET_FEED_FILTERS: [&str; 3] = ["gridex/v1/+/trades", "gridex/v1/+/book", "gridex/v1/+/events/+"];

/// A topic the exchange publishes market data on, with its zone segment still unparsed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound<'a> {
    Trades {
        zone: &'a str,
    },
    Book {
        zone: &'a str,
    },
    /// A participant's events: order updates for an account, reading acks for a device.
    Events {
        zone: &'a str,
        recipient: &'a str,
    },
}

/// Splits a topic of [`MARKET_FEED_FILTERS`]; `None` for any other.
pub fn parse_outbound(topic: &str) -> Option<Outbound<'_>> {
    let mut parts = topic.strip_prefix(PREFIX)?.strip_prefix('/')?.split('/');
    let (zone, channel) = (parts.next()?, parts.next()?);
    let found = match (channel, parts.next()) {
        ("trades", None) => Outbound::Trades { zone },
        ("book", None) => Outbound::Book { zone },
        ("events", Some(recipient)) => Outbound::Events { zone, recipient },
        _ => return None,
    };
    parts.next().is_none().then_some(found)
}

/// An inbound topic the exchange understands, with its segments still unparsed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A readings topic of either version; the reading is parsed on `version` (`Signed::parse_on`).
    Readings {
        version: Version,
        zone: &'a str,
        device: &'a str,
    },
    Orders {
        zone: &'a str,
        account: &'a str,
    },
    /// An account's battery plans (version 1 only).
    Plans {
        zone: &'a str,
        account: &'a str,
    },
}

/// Splits an inbound topic. Segment contents are checked by the caller against the message.
/// Readings topics exist in versions 1 and 2, orders and plans topics in version 1 only.
pub fn parse_inbound(topic: &str) -> Option<Inbound<'_>> {
    let (version, rest) = Version::ALL
        .into_iter()
        .find_map(|version| Some((version, topic.strip_prefix(version.prefix())?.strip_prefix('/')?)))?;
    let mut parts = rest.split('/');
    let (zone, channel, sender) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    match (version, channel) {
        (_, "readings") => Some(Inbound::Readings { version, zone, device: sender }),
        (Version::V1, "orders") => Some(Inbound::Orders { zone, account: sender }),
        (Version::V1, "plans") => Some(Inbound::Plans { zone, account: sender }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_topics_round_trip() {
        let zone = ZoneId::parse("north").expect("valid");
        assert_eq!(
            parse_inbound(&readings(&zone, &"ab")),
            Some(Inbound::Readings { version: Version::V1, zone: "north", device: "ab" })
        );
        assert_eq!(
            parse_inbound(&readings_in(Version::V2, &zone, &"ab")),
            Some(Inbound::Readings { version: Version::V2, zone: "north", device: "ab" })
        );
        assert_eq!(parse_inbound(&orders(&zone, &"cd")), Some(Inbound::Orders { zone: "north", account: "cd" }));
        assert_eq!(parse_inbound(&plans(&zone, &"cd")), Some(Inbound::Plans { zone: "north", account: "cd" }));
        assert_eq!(parse_inbound("gridex/v2/north/plans/cd"), None);
        assert_eq!(parse_inbound("gridex/v1/north/trades"), None);
        assert_eq!(parse_inbound("gridex/v1/north/orders/cd/extra"), None);
        assert_eq!(parse_inbound("other/v1/north/orders/cd"), None);
    }

    #[test]
    fn market_feed_topics_round_trip() {
        let zone = ZoneId::parse("north").expect("valid");
        assert_eq!(parse_outbound(&trades(&zone)), Some(Outbound::Trades { zone: "north" }));
        assert_eq!(parse_outbound(&book(&zone)), Some(Outbound::Book { zone: "north" }));
        assert_eq!(parse_outbound(&events(&zone, &"ab")), Some(Outbound::Events { zone: "north", recipient: "ab" }));
        assert_eq!(parse_outbound("gridex/v1/north/trades/x"), None);
        assert_eq!(parse_outbound("gridex/v1/north/events"), None);
        assert_eq!(parse_outbound("gridex/v1/north/events/ab/c"), None);
        assert_eq!(parse_outbound(&orders(&zone, &"ab")), None);
        assert_eq!(parse_outbound("gridex/v2/north/book"), None);
    }

    #[test]
    fn relay_topics_round_trip_and_are_no_inbound_topic() {
        let zone = ZoneId::parse("north").expect("valid");
        assert_eq!(parse_relay(&relay(&zone, "web-a", "r1")), Some(("north", "web-a", "r1")));
        assert_eq!(parse_relay_replies(&relay_replies(&zone, "web-a")), Some(("north", "web-a")));
        assert_eq!(parse_inbound(&relay(&zone, "web-a", "r1")), None);
        assert_eq!(parse_inbound(&relay_replies(&zone, "web-a")), None);
        assert_eq!(parse_relay("gridex/v1/north/relay/web-a"), None);
        assert_eq!(parse_relay("gridex/v1/north/orders/web-a/r1"), None);
        assert_eq!(parse_relay_replies("gridex/v1/north/relay-replies/web-a/x"), None);
        assert_eq!(parse_query(&query(&zone, "web-a", "r1")), Some(("north", "web-a", "r1")));
        assert_eq!(parse_query_replies(&query_replies(&zone, "web-a")), Some(("north", "web-a")));
        assert_eq!(parse_relay(&query(&zone, "web-a", "r1")), None);
        assert_eq!(parse_query(&relay(&zone, "web-a", "r1")), None);
        assert_eq!(parse_inbound(&query(&zone, "web-a", "r1")), None);
        assert_eq!(parse_inbound(&query_replies(&zone, "web-a")), None);
        assert_eq!(parse_outbound(&query_replies(&zone, "web-a")), None);
    }

    #[test]
    fn orders_have_no_version_2_topic_and_there_is_no_version_3() {
        assert_eq!(parse_inbound("gridex/v2/north/orders/cd"), None);
        assert_eq!(parse_inbound("gridex/v3/north/readings/ab"), None);
        assert_eq!(parse_inbound("gridex/v2north/readings/ab"), None);
    }

    #[test]
    fn a_reading_goes_on_the_topic_of_its_version() {
        let key = crate::testing::signing_key(1);
        let plain = crate::testing::sample_reading(&key);
        let device = plain.device.to_string();
        assert_eq!(readings_for(&plain), format!("gridex/v1/test-zone/readings/{device}"));
        let battery = crate::testing::sample_battery_reading(&key);
        assert_eq!(readings_for(&battery), format!("gridex/v2/test-zone/readings/{device}"));
    }
}
