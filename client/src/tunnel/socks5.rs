//! The SOCKS5 protocol (RFC 1928) as far as the agent serves it: no authentication, CONNECT
//! only. Reading is generic over `AsyncRead`, so it is tested on byte slices and fuzzed
//! (`scripts/fuzz socks5`). Kept by hand rather than taken from a crate: `fast-socks5` runs
//! the negotiation on the socket itself and brings `async-trait`, `socket2`, `tokio-stream`
//! and `thiserror` 1 for these hundred lines, and `socks5-impl` parses much more than CONNECT
//! without authentication (BIND, UDP ASSOCIATE, username/password), surface a local client
//! could reach for nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 1;

/// Reply codes the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Connected.
    Succeeded = 0,
    /// Any other failure.
    GeneralFailure = 1,
    /// The target does not answer or is not in the tunnel.
    HostUnreachable = 4,
    /// The target refused the connection.
    ConnectionRefused = 5,
    /// Not CONNECT.
    CommandNotSupported = 7,
    /// Unknown address type.
    AddressTypeNotSupported = 8,
}

/// Where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A host name to resolve, and a port.
    Domain(String, u16),
}

/// What can go wrong while talking SOCKS5.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// Not SOCKS version 5.
    #[error("not a SOCKS5 client (version byte {0})")]
    Version(u8),
    /// The client does not offer "no authentication".
    #[error("the SOCKS5 client offers no usable authentication method")]
    NoAcceptableMethod,
    /// A command other than CONNECT; the reply to send is attached.
    #[error("unsupported SOCKS5 command {0} (only CONNECT)")]
    Command(u8),
    /// An address type other than IPv4, domain or IPv6.
    #[error("unsupported SOCKS5 address type {0}")]
    AddressType(u8),
    /// The domain name is not UTF-8.
    #[error("the SOCKS5 domain name is not valid text")]
    BadDomain,
    /// The connection broke.
    #[error("SOCKS5 connection: {0}")]
    Io(#[from] std::io::Error),
}

impl Socks5Error {
    /// The reply to send before closing, if the protocol allows one.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Socks5Error::Command(_) => Some(Reply::CommandNotSupported),
            Socks5Error::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            Socks5Error::BadDomain => Some(Reply::GeneralFailure),
            _ => None,
        }
    }
}

/// Reads the greeting and returns the method-selection answer to send. On
/// [`Socks5Error::NoAcceptableMethod`] the caller sends [`refuse_methods`] and closes.
pub async fn read_greeting<R: AsyncRead + Unpin>(r: &mut R) -> Result<[u8; 2], Socks5Error> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Socks5Error::Version(head[0]));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    r.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        return Err(Socks5Error::NoAcceptableMethod);
    }
    Ok([VERSION, NO_AUTH])
}

/// The answer to a greeting without "no authentication".
pub fn refuse_methods() -> [u8; 2] {
    [VERSION, NO_ACCEPTABLE]
}

/// Reads a request; only CONNECT is accepted.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Target, Socks5Error> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Socks5Error::Version(head[0]));
    }
    // Read the address even for a refused command, so the reply is well-formed.
    let target = match head[3] {
        1 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).await?;
            Target::Addr(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(b)),
                read_port(r).await?,
            ))
        }
        4 => {
            let mut b = [0u8; 16];
            r.read_exact(&mut b).await?;
            Target::Addr(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(b)),
                read_port(r).await?,
            ))
        }
        3 => {
            let len = r.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            r.read_exact(&mut name).await?;
            let port = read_port(r).await?;
            let name = String::from_utf8(name).map_err(|_| Socks5Error::BadDomain)?;
            if name.is_empty() {
                return Err(Socks5Error::BadDomain);
            }
            Target::Domain(name, port)
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    if head[1] != CMD_CONNECT {
        return Err(Socks5Error::Command(head[1]));
    }
    Ok(target)
}

async fn read_port<R: AsyncRead + Unpin>(r: &mut R) -> Result<u16, Socks5Error> {
    Ok(r.read_u16().await?)
}

/// A reply with the bound address (`0.0.0.0:0` when there is none to report).
pub fn reply(code: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut out = vec![VERSION, code as u8, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn greeting_accepts_no_auth_only() {
        assert_eq!(
            read_greeting(&mut &[5u8, 2, 2, 0][..]).await.unwrap(),
            [5, 0]
        );
        assert!(matches!(
            read_greeting(&mut &[5u8, 1, 2][..]).await,
            Err(Socks5Error::NoAcceptableMethod)
        ));
        assert!(matches!(
            read_greeting(&mut &[4u8, 1, 0][..]).await,
            Err(Socks5Error::Version(4))
        ));
        assert!(matches!(
            read_greeting(&mut &[5u8, 3, 0][..]).await,
            Err(Socks5Error::Io(_))
        ));
        assert_eq!(refuse_methods(), [5, 0xff]);
    }

    #[tokio::test]
    async fn requests_parse_every_address_type() {
        let v4 = [5u8, 1, 0, 1, 100, 65, 0, 3, 0x1f, 0x90];
        assert_eq!(
            read_request(&mut &v4[..]).await.unwrap(),
            Target::Addr("100.65.0.3:8080".parse().unwrap())
        );
        let mut domain = vec![5u8, 1, 0, 3, 16];
        domain.extend_from_slice(b"internal-api.loc");
        domain.extend_from_slice(&[0, 80]);
        assert_eq!(
            read_request(&mut &domain[..]).await.unwrap(),
            Target::Domain("internal-api.loc".into(), 80)
        );
        let mut v6 = vec![5u8, 1, 0, 4];
        v6.extend_from_slice(&"fd70::3".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[1, 0]);
        assert_eq!(
            read_request(&mut &v6[..]).await.unwrap(),
            Target::Addr("[fd70::3]:256".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn unsupported_requests_say_which_reply_to_send() {
        let bind = [5u8, 2, 0, 1, 1, 2, 3, 4, 0, 80];
        let err = read_request(&mut &bind[..]).await.unwrap_err();
        assert!(matches!(err, Socks5Error::Command(2)));
        assert_eq!(err.reply(), Some(Reply::CommandNotSupported));
        let err = read_request(&mut &[5u8, 1, 0, 9][..]).await.unwrap_err();
        assert_eq!(err.reply(), Some(Reply::AddressTypeNotSupported));
        let err = read_request(&mut &[5u8, 1, 0, 3, 0, 0, 80][..])
            .await
            .unwrap_err();
        assert!(matches!(err, Socks5Error::BadDomain));
    }

    #[test]
    fn replies_carry_the_bound_address() {
        assert_eq!(
            reply(Reply::Succeeded, Some("100.64.0.2:40000".parse().unwrap())),
            vec![5, 0, 0, 1, 100, 64, 0, 2, 0x9c, 0x40]
        );
        assert_eq!(
            reply(Reply::HostUnreachable, None),
            vec![5, 4, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            reply(Reply::Succeeded, Some("[::1]:1".parse().unwrap())).len(),
            22
        );
    }
}
