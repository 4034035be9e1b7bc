//! The gateway's connect answer, checked and parsed into what the tunnel needs.

use super::error::TunnelError;
use postern_common::api::{TunnelConnectResponse, TunnelService};
use postern_common::wireguard::{AllowedIp, PublicKey};
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// An address with a prefix length, `100.64.0.2/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address (for a range, its first address).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        AllowedIp::new(self.addr, self.prefix).is_ok_and(|a| a.contains(ip))
    }

    /// The same range as a WireGuard allowed IP.
    pub fn allowed_ip(&self) -> Result<AllowedIp, TunnelError> {
        Ok(AllowedIp::new(self.addr, self.prefix)?)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        let (addr, prefix) = match input.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (input, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{input:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{input:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Everything the tunnel needs, checked.
#[derive(Debug, Clone)]
pub struct TunnelPlan {
    /// This agent's tunnel address (IPv4).
    pub address: Cidr,
    /// This agent's IPv6 tunnel address, when the gateway gave one.
    pub address6: Option<Cidr>,
    /// The gateway's WireGuard key.
    pub gateway_key: PublicKey,
    /// The endpoint as the gateway wrote it (`host:port`).
    pub endpoint: String,
    /// The service ranges to route into the tunnel (IPv4, then IPv6 if any).
    pub routes: Vec<Cidr>,
    /// The tunnel's DNS server.
    pub dns: IpAddr,
    /// The DNS suffix of Service names (`local`).
    pub dns_domain: String,
    /// Persistent keepalive in seconds (0: none).
    pub keepalive: u16,
    /// The Services visible to this user.
    pub services: Vec<TunnelService>,
}

impl TunnelPlan {
    /// Checks the gateway's answer.
    pub fn from_response(r: &TunnelConnectResponse) -> Result<Self, TunnelError> {
        let bad = TunnelError::BadResponse;
        let address: Cidr = r.address.parse().map_err(bad)?;
        if !address.addr.is_ipv4() {
            return Err(bad(format!("address {} is not IPv4", r.address)));
        }
        let address6 = optional(&r.address6)?;
        let mut routes = vec![r.service_range.parse::<Cidr>().map_err(bad)?];
        routes.extend(optional(&r.service_range6)?);
        let dns: IpAddr = r
            .dns
            .parse()
            .map_err(|_| bad(format!("dns {:?} is not an IP address", r.dns)))?;
        for s in &r.services {
            s.address.parse::<IpAddr>().map_err(|_| {
                bad(format!(
                    "Service {} has an invalid address {:?}",
                    s.name, s.address
                ))
            })?;
        }
        Ok(TunnelPlan {
            address,
            address6,
            gateway_key: PublicKey::from_base64(&r.gateway_public_key)?,
            endpoint: r.endpoint.clone(),
            routes,
            dns,
            dns_domain: r.dns_domain.trim_matches('.').to_ascii_lowercase(),
            keepalive: r.keepalive_seconds,
            services: r.services.clone(),
        })
    }

    /// The gateway peer's allowed IPs: the service ranges, plus the DNS server when it lies
    /// outside them.
    pub fn allowed_ips(&self) -> Result<Vec<AllowedIp>, TunnelError> {
        let mut ips = self
            .routes
            .iter()
            .map(Cidr::allowed_ip)
            .collect::<Result<Vec<_>, _>>()?;
        if !self.routes.iter().any(|r| r.contains(self.dns)) {
            ips.push(AllowedIp::host(self.dns));
        }
        Ok(ips)
    }

    /// The Service a host name or address in the tunnel refers to: `svc`, `svc.local`,
    /// `svc.local.<domain>` (case-insensitive, trailing dot allowed).
    pub fn service_named(&self, host: &str) -> Option<&TunnelService> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let suffix = format!(".{}", self.dns_domain);
        let name = match host.split_once(&suffix) {
            Some((name, rest)) if rest.is_empty() || rest.starts_with('.') => name,
            _ => host.as_str(),
        };
        self.services
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// Where to send WireGuard datagrams: the endpoint's host resolved, or the IP of
    /// `override_addr` (POSTERN_GATEWAY_ADDRESS) with the endpoint's port.
    pub fn resolve_endpoint(
        &self,
        override_addr: Option<SocketAddr>,
    ) -> Result<SocketAddr, TunnelError> {
        resolve_endpoint(&self.endpoint, override_addr)
    }
}

fn optional(text: &str) -> Result<Option<Cidr>, TunnelError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(TunnelError::BadResponse)
}

/// See [`TunnelPlan::resolve_endpoint`].
pub fn resolve_endpoint(
    endpoint: &str,
    override_addr: Option<SocketAddr>,
) -> Result<SocketAddr, TunnelError> {
    let bad = || TunnelError::BadResponse(format!("endpoint {endpoint:?} is not host:port"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if let Some(o) = override_addr {
        return Ok(SocketAddr::new(o.ip(), port));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| TunnelError::io(format!("cannot resolve the gateway endpoint {endpoint}"), e))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(bad)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn response() -> TunnelConnectResponse {
        TunnelConnectResponse {
            address: "100.64.0.2/32".into(),
            address6: "fd70:7374::2/128".into(),
            gateway_public_key: postern_common::wireguard::KeyPair::generate()
                .public
                .to_base64(),
            endpoint: "gw.example.com:51820".into(),
            service_range: "100.65.0.0/16".into(),
            service_range6: "fd70:7375::/64".into(),
            dns: "100.65.0.53".into(),
            dns_domain: "local".into(),
            keepalive_seconds: 25,
            services: vec![TunnelService {
                name: "internal-api".into(),
                address: "100.65.0.3".into(),
                port: 8080,
                mode: "HTTP".into(),
            }],
            new_peer: true,
        }
    }

    #[test]
    fn parses_the_connect_response() {
        let plan = TunnelPlan::from_response(&response()).unwrap();
        assert_eq!(plan.address.to_string(), "100.64.0.2/32");
        assert_eq!(plan.address6.unwrap().to_string(), "fd70:7374::2/128");
        assert_eq!(plan.routes.len(), 2);
        // The DNS server is inside the service range: no extra allowed IP.
        assert_eq!(plan.allowed_ips().unwrap().len(), 2);
        let mut r = response();
        r.dns = "100.66.0.53".into();
        r.address6 = String::new();
        r.service_range6 = String::new();
        let plan = TunnelPlan::from_response(&r).unwrap();
        assert_eq!(plan.allowed_ips().unwrap().len(), 2);
        assert!(plan.address6.is_none());
    }

    #[test]
    fn rejects_bad_responses() {
        let mut r = response();
        r.address = "nope".into();
        assert!(TunnelPlan::from_response(&r).is_err());
        let mut r = response();
        r.gateway_public_key = "short".into();
        assert!(TunnelPlan::from_response(&r).is_err());
        let mut r = response();
        r.service_range = "100.65.0.0/40".into();
        assert!(TunnelPlan::from_response(&r).is_err());
    }

    #[test]
    fn finds_services_by_tunnel_names() {
        let plan = TunnelPlan::from_response(&response()).unwrap();
        for name in [
            "internal-api",
            "INTERNAL-API.local",
            "internal-api.local.",
            "internal-api.local.example.com",
        ] {
            assert_eq!(
                plan.service_named(name).unwrap().address,
                "100.65.0.3",
                "{name}"
            );
        }
        assert!(plan.service_named("other.local").is_none());
        assert!(plan.service_named("internal-api.localhost").is_none());
    }

    #[test]
    fn the_override_keeps_the_endpoint_port() {
        let o: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(
            resolve_endpoint("gw.example.com:51820", Some(o)).unwrap(),
            "127.0.0.1:51820".parse().unwrap()
        );
        assert_eq!(
            resolve_endpoint("127.0.0.2:9", None).unwrap(),
            "127.0.0.2:9".parse().unwrap()
        );
        assert!(resolve_endpoint("no-port", None).is_err());
    }
}
