//! Which addresses a webhook may be delivered to: public unicast addresses only, unless the
//! settings' allow list (`webhooks.allowed_private_networks`) names the network. Without this a
//! utility key could make the server probe loopback, private and link-local services (cloud
//! metadata at 169.254.169.254, admin ports on 127.0.0.1) and read the answer from
//! `pending_deliveries`.
//!
//! The check runs at registration (IP literals, and every address a host name resolves to) and
//! again at every delivery, against the addresses actually connected to: the delivery client
//! resolves names through [`CheckedResolver`], so a name that resolves to a public address at
//! registration and to 127.0.0.1 later (DNS rebinding) is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a registration's host name to resolve: the utility's request waits on it, and
/// a working resolver answers in milliseconds.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// An IP network `address/prefix` of the allow list; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix_len: u8,
}

impl Network {
    /// Parses `10.1.2.3`, `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(text: &str) -> Result<Network, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr =
            address.trim().parse().map_err(|_| format!("`{text}` is not an IP address or network"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| format!("`{text}` has a malformed prefix"))?,
            None => bits,
        };
        if prefix_len > bits {
            return Err(format!("`{text}` has a prefix longer than {bits} bits"));
        }
        Ok(Network { address, prefix_len })
    }

    /// Whether `address` lies in this network (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                prefix_eq(&network.octets(), &address.octets(), self.prefix_len)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_eq(&network.octets(), &address.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix_len: u8) -> bool {
    let (whole, rest) = (usize::from(prefix_len / 8), prefix_len % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xff_u8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

/// IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) addresses as the IPv4 address
/// they reach; anything else unchanged.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [_, _, _, _, _, _, high, low] = segments;
                return IpAddr::V4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
            }
            IpAddr::V6(v6)
        }
        IpAddr::V4(_) => address,
    }
}

/// Why an address is not public, or `None` for a public unicast address.
pub fn non_public_kind(address: IpAddr) -> Option<&'static str> {
    match canonical(address) {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    if address.is_unspecified() || a == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if address.is_loopback() {
        Some("loopback (127.0.0.0/8)")
    } else if address.is_private() {
        Some("private (RFC 1918)")
    } else if address.is_link_local() {
        Some("link-local (169.254.0.0/16)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared carrier-grade NAT (100.64.0.0/10)")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol assignment (192.0.0.0/24)")
    } else if address.is_documentation() {
        Some("documentation")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking (198.18.0.0/15)")
    } else if address.is_multicast() {
        Some("multicast")
    } else if a >= 240 {
        Some("reserved or broadcast (240.0.0.0/4)")
    } else {
        None
    }
}

fn non_public_v6(address: Ipv6Addr) -> Option<&'static str> {
    let first = address.segments()[0];
    if address.is_unspecified() {
        Some("unspecified (::)")
    } else if address.is_loopback() {
        Some("loopback (::1)")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique local (fc00::/7)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local (fe80::/10)")
    } else if first & 0xffc0 == 0xfec0 {
        Some("site-local (fec0::/10)")
    } else if address.is_multicast() {
        Some("multicast (ff00::/8)")
    } else if first == 0x2001 && address.segments()[1] == 0x0db8 {
        Some("documentation (2001:db8::/32)")
    } else if address.segments()[..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible (::/96)")
    } else {
        None
    }
}

/// The allow list and the check every target address passes. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    allowed: Arc<Vec<Network>>,
}

impl TargetPolicy {
    /// A policy from the settings' allow list; a malformed entry is an error naming it.
    pub fn new(allowed: &[String]) -> Result<TargetPolicy, String> {
        let networks = allowed.iter().map(|entry| Network::parse(entry)).collect::<Result<Vec<_>, _>>()?;
        Ok(TargetPolicy { allowed: Arc::new(networks) })
    }

    /// `Err` with a sentence for the caller when `address` is not public and not allowed.
    pub fn check(&self, address: IpAddr) -> Result<(), String> {
        let Some(kind) = non_public_kind(address) else { return Ok(()) };
        if self.allowed.iter().any(|network| network.contains(address)) {
            return Ok(());
        }
        Err(format!(
            "{address} is a {kind} address; webhooks go to public addresses only, unless \
             webhooks.allowed_private_networks names it"
        ))
    }

    /// Checks a URL's host: an IP literal directly, a name by every address it resolves to (all
    /// must pass: the client may connect to any of them).
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let host = url.host_str().ok_or_else(|| "the URL has no host".to_owned())?;
        let port = url.port_or_known_default().unwrap_or(80);
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = literal.parse::<IpAddr>() {
            return self.check(address);
        }
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)));
        let addresses: Vec<SocketAddr> = match lookup.await {
            Ok(Ok(addresses)) => addresses.collect(),
            _ => return Err(format!("the host {host} does not resolve")),
        };
        if addresses.is_empty() {
            return Err(format!("the host {host} does not resolve"));
        }
        addresses.iter().try_for_each(|address| self.check(address.ip()))
    }
}

/// The delivery client's resolver: the system's, keeping only addresses the policy accepts, so a
/// name that now resolves to a refused address fails the attempt instead of reaching it.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    pub policy: TargetPolicy,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port on the addresses it gets back.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| match policy.check(address.ip()) {
                    Ok(()) => true,
                    Err(reason) => {
                        refusal = Some(reason);
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                let reason = refusal.unwrap_or_else(|| format!("{host} does not resolve"));
                return Err(Box::new(std::io::Error::other(reason)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        TargetPolicy::default().check(text.parse().expect("an address")).is_err()
    }

    #[test]
    fn loopback_private_link_local_and_unspecified_addresses_are_refused() {
        for address in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(address), "{address} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in ["8.8.8.8", "172.32.0.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!refused(address), "{address} is public");
        }
    }

    #[test]
    fn the_allow_list_admits_exactly_the_networks_it_names() {
        let policy = TargetPolicy::new(&["127.0.0.1".to_owned(), "10.1.0.0/16".to_owned()]).expect("valid");
        let ok = |text: &str| policy.check(text.parse().expect("an address")).is_ok();
        assert!(ok("127.0.0.1") && ok("::ffff:127.0.0.1") && ok("10.1.200.3"));
        assert!(!ok("127.0.0.2") && !ok("10.2.0.1") && !ok("::1"));
        assert!(TargetPolicy::new(&["10.0.0.0/33".to_owned()]).is_err());
        assert!(TargetPolicy::new(&["localhost".to_owned()]).is_err());
    }
}
