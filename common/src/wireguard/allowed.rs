//! Address ranges of peers: what each may use as inner source address, and what routes to it
//! (WireGuard's cryptokey routing).

use std::net::IpAddr;

use super::peers::PeerError;

/// An address range a peer may use as inner source and that routes to it (cryptokey routing).
///
/// The gateway gives each session a /32 and a /128; the agent gives the gateway whole ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowedIp {
    pub(crate) addr: IpAddr,
    pub(crate) prefix_len: u8,
}

impl AllowedIp {
    /// A range; host bits of `addr` are cleared so equal ranges compare equal.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, PeerError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(PeerError::PrefixLength { addr, prefix_len });
        }
        Ok(AllowedIp {
            addr: mask(addr, prefix_len),
            prefix_len,
        })
    }

    /// A single address (/32 or /128), the usual allowance for a client session.
    pub fn host(addr: IpAddr) -> Self {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        AllowedIp { addr, prefix_len }
    }

    /// Whether `ip` falls in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }

    pub(crate) fn is_host(&self) -> bool {
        self.prefix_len == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix_len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix_len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix_len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl From<IpAddr> for AllowedIp {
    fn from(addr: IpAddr) -> Self {
        AllowedIp::host(addr)
    }
}

impl std::fmt::Display for AllowedIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}
