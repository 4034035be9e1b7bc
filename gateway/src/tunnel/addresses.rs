//! Tunnel addressing, pure and deterministic: the choice of a client address (one pair per
//! connected Session) and the service map (one stable address pair per Service).
//!
//! Both ranges are /16s; an address is identified by its 16-bit *index* inside the range,
//! and the IPv6 address carries the same index in its last 16 bits, so `100.65.1.7` and
//! `fd70:7376::107` are the same Service.
//!
//! Service addresses: the index is the first two bytes of SHA-256 of the Service name.
//! Reserved indices (0, 1, 53 for DNS, 65535) and collisions move to the next free index
//! (linear probing, wrapping). Names are placed in order of (hash index, name), so the
//! result depends only on the set of names: a Service keeps its address across restarts
//! and gateways, and only a Service that collides with another can move when names are
//! added or removed (about one chance in 65,000 per pair).

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The client range (connected Sessions), IPv4.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The client range (connected Sessions), IPv6 (/64; indices use the last 16 bits).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x7374, 0, 0, 0, 0, 0, 0);
/// The service range, IPv4.
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 65, 0, 0);
/// The service range, IPv6.
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x7376, 0, 0, 0, 0, 0, 0);
/// The index of the tunnel's DNS server in the service range (`100.65.0.53`).
pub const DNS_INDEX: u16 = 53;
/// The index of the gateway's own address in both ranges (`.0.1`, `::1`).
pub const GATEWAY_INDEX: u16 = 1;

/// `100.65.0.0/16` and the like, as the connect response shows them.
pub fn range_text() -> (String, String, String, String) {
    (
        format!("{CLIENT_V4}/16"),
        format!("{CLIENT_V6}/64"),
        format!("{SERVICE_V4}/16"),
        format!("{SERVICE_V6}/64"),
    )
}

fn v4_at(base: Ipv4Addr, index: u16) -> Ipv4Addr {
    let [a, b, _, _] = base.octets();
    let [hi, lo] = index.to_be_bytes();
    Ipv4Addr::new(a, b, hi, lo)
}

fn v6_at(base: Ipv6Addr, index: u16) -> Ipv6Addr {
    let mut s = base.segments();
    s[7] = index;
    Ipv6Addr::from(s)
}

/// The index of `ip` inside the range starting at `v4`/`v6`, if it is inside.
fn index_in(ip: IpAddr, v4: Ipv4Addr, v6: Ipv6Addr) -> Option<u16> {
    match ip {
        IpAddr::V4(a) => {
            let [x, y, hi, lo] = a.octets();
            let [bx, by, _, _] = v4.octets();
            (x == bx && y == by).then(|| u16::from_be_bytes([hi, lo]))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            (s[..6] == v6.segments()[..6] && s[6] == 0).then_some(s[7])
        }
    }
}

fn reserved(index: u16) -> bool {
    matches!(index, 0 | GATEWAY_INDEX | DNS_INDEX | u16::MAX)
}

/// A pair of tunnel addresses that belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressPair {
    pub index: u16,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl AddressPair {
    fn client(index: u16) -> Self {
        AddressPair {
            index,
            v4: v4_at(CLIENT_V4, index),
            v6: v6_at(CLIENT_V6, index),
        }
    }

    fn service(index: u16) -> Self {
        AddressPair {
            index,
            v4: v4_at(SERVICE_V4, index),
            v6: v6_at(SERVICE_V6, index),
        }
    }
}

/// The DNS server's addresses (`100.65.0.53`, `fd70:7376::35`).
pub fn dns_addresses() -> AddressPair {
    AddressPair::service(DNS_INDEX)
}

/// The gateway's own addresses inside the tunnel (`100.65.0.1`, `fd70:7376::1`).
pub fn gateway_addresses() -> AddressPair {
    AddressPair::service(GATEWAY_INDEX)
}

/// The index SHA-256 of `name` points at before collisions are resolved.
pub fn preferred_index(name: &str) -> u16 {
    let digest = Sha256::digest(name.as_bytes());
    u16::from_be_bytes([digest[0], digest[1]])
}

/// Every Service's tunnel addresses, both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceMap {
    by_name: BTreeMap<String, AddressPair>,
    by_index: HashMap<u16, String>,
}

impl ServiceMap {
    /// Places every name (see the module docs). More names than free indices are left out.
    pub fn build<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut wanted: Vec<(u16, &str)> =
            names.into_iter().map(|n| (preferred_index(n), n)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut map = ServiceMap::default();
        for (start, name) in wanted {
            let mut index = start;
            loop {
                if !reserved(index) && !map.by_index.contains_key(&index) {
                    map.by_index.insert(index, name.to_string());
                    map.by_name
                        .insert(name.to_string(), AddressPair::service(index));
                    break;
                }
                index = index.wrapping_add(1);
                if index == start {
                    tracing::warn!(service = name, "service range full; no tunnel address");
                    break;
                }
            }
        }
        map
    }

    /// The addresses of Service `name`.
    pub fn get(&self, name: &str) -> Option<AddressPair> {
        self.by_name.get(name).copied()
    }

    /// The Service that owns `ip`.
    pub fn service_at(&self, ip: IpAddr) -> Option<&str> {
        let index = index_in(ip, SERVICE_V4, SERVICE_V6)?;
        self.by_index.get(&index).map(String::as_str)
    }

    /// Number of Services placed.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no Service is placed.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Why no client address could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the client address range is exhausted")]
    Exhausted,
}

/// The address pair of client index `index`.
pub fn client_pair(index: u16) -> AddressPair {
    AddressPair::client(index)
}

/// The client index a new Session gets: the lowest one that is not reserved and not in
/// `taken` (claimed by any gateway sharing the store, or still busy here), passing over
/// `skip` free ones first. A connect that lost the race for an index tries again with a
/// larger `skip`, so two gateways claiming at the same moment part ways instead of
/// choosing the same next index over and over.
pub fn lowest_free_client_index(taken: &BTreeSet<u16>, skip: usize) -> Result<u16, PoolError> {
    let mut left = skip;
    let mut taken = taken.range(2..).peekable();
    for index in 2..u16::MAX {
        while taken.next_if(|t| **t < index).is_some() {}
        if reserved(index) || taken.next_if_eq(&&index).is_some() {
            continue;
        }
        if left == 0 {
            return Ok(index);
        }
        left -= 1;
    }
    Err(PoolError::Exhausted)
}

/// The client index of `ip`, if it is in the client range.
pub fn client_index(ip: IpAddr) -> Option<u16> {
    index_in(ip, CLIENT_V4, CLIENT_V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_index_skips_taken_and_reserved_ones() {
        let set = |v: &[u16]| v.iter().copied().collect::<BTreeSet<u16>>();
        assert_eq!(lowest_free_client_index(&set(&[]), 0), Ok(2));
        assert_eq!(client_pair(2).v4, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(
            client_pair(2).v6,
            "fd70:7374::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(lowest_free_client_index(&set(&[2, 3, 5]), 0), Ok(4));
        // A gap below the taken ones is found; the reserved ones never count as free.
        assert_eq!(lowest_free_client_index(&set(&[3, 4]), 0), Ok(2));
        let to_dns: Vec<u16> = (2..53).collect();
        assert_eq!(lowest_free_client_index(&set(&to_dns), 0), Ok(54));
        let mut with_dns = to_dns.clone();
        with_dns.extend([53, 54, 56]);
        assert_eq!(lowest_free_client_index(&set(&with_dns), 0), Ok(55));
        // Indices outside the client range (0, 1, 65535) in the set change nothing.
        assert_eq!(lowest_free_client_index(&set(&[0, 1, 65535]), 0), Ok(2));
        // Passing over free ones: the second and third free index.
        assert_eq!(lowest_free_client_index(&set(&[2, 4]), 1), Ok(5));
        assert_eq!(lowest_free_client_index(&set(&[2, 4]), 2), Ok(6));
        let b = client_pair(3);
        assert_eq!(client_index(IpAddr::V4(b.v4)), Some(3));
        assert_eq!(client_index(IpAddr::V6(b.v6)), Some(3));
        assert_eq!(client_index("100.65.0.3".parse().unwrap()), None);
    }

    #[test]
    fn the_client_range_exhausts_after_every_unreserved_index() {
        let none = BTreeSet::new();
        // 65,532 usable indices: 2..=65534 without 53.
        assert_eq!(lowest_free_client_index(&none, 65531), Ok(65534));
        assert_eq!(
            lowest_free_client_index(&none, 65532),
            Err(PoolError::Exhausted)
        );
        let mut taken: BTreeSet<u16> = (0..=u16::MAX).collect();
        assert_eq!(
            lowest_free_client_index(&taken, 0),
            Err(PoolError::Exhausted)
        );
        taken.remove(&40000);
        assert_eq!(lowest_free_client_index(&taken, 0), Ok(40000));
        assert_eq!(
            lowest_free_client_index(&taken, 1),
            Err(PoolError::Exhausted)
        );
        taken.remove(&DNS_INDEX);
        assert_eq!(lowest_free_client_index(&taken, 0), Ok(40000));
    }

    #[test]
    fn service_addresses_are_stable_and_independent_of_order() {
        let a = ServiceMap::build(["web", "db", "api"]);
        let b = ServiceMap::build(["api", "web", "db", "api"]);
        assert_eq!(a, b);
        let web = a.get("web").unwrap();
        assert_eq!(web.index, preferred_index("web"));
        assert_eq!(a.service_at(IpAddr::V4(web.v4)), Some("web"));
        assert_eq!(a.service_at(IpAddr::V6(web.v6)), Some("web"));
        // Adding an unrelated name does not move existing ones.
        let c = ServiceMap::build(["web", "db", "api", "grafana"]);
        assert_eq!(c.get("web"), a.get("web"));
        assert_eq!(c.get("db"), a.get("db"));
        assert_eq!(c.len(), 4);
        assert!(a.service_at("100.64.0.2".parse().unwrap()).is_none());
    }

    #[test]
    fn collisions_probe_deterministically() {
        // Find two names that hash to the same index.
        let mut seen = HashMap::new();
        let (x, y) = (0..)
            .map(|i| format!("svc{i}"))
            .find_map(|n| {
                let i = preferred_index(&n);
                seen.insert(i, n.clone()).map(|other| (other, n))
            })
            .unwrap();
        let m = ServiceMap::build([x.as_str(), y.as_str()]);
        let (px, py) = (m.get(&x).unwrap(), m.get(&y).unwrap());
        assert_ne!(px, py);
        let (first, second) = if x < y { (px, py) } else { (py, px) };
        assert_eq!(first.index, preferred_index(&x));
        assert_eq!(second.index, first.index.wrapping_add(1));
        assert_eq!(m, ServiceMap::build([y.as_str(), x.as_str()]));
    }

    #[test]
    fn reserved_indices_are_never_services() {
        assert!(reserved(0) && reserved(1) && reserved(53) && reserved(65535));
        assert_eq!(dns_addresses().v4, Ipv4Addr::new(100, 65, 0, 53));
        assert_eq!(
            dns_addresses().v6,
            "fd70:7376::35".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(gateway_addresses().v4, Ipv4Addr::new(100, 65, 0, 1));
    }
}
