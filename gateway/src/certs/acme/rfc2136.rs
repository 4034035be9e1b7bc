//! DNS-01 by RFC 2136 dynamic updates signed with TSIG (RFC 8945): the ACME manager puts the
//! `_acme-challenge` TXT record into the operator's zone on a DNS server it already runs
//! (BIND, Knot, PowerDNS...) and deletes it after validation, with the key the operator made
//! with `tsig-keygen`. The messages are built and checked in [`message`] and the key file read
//! in [`keyfile`] (both pure); this module only resolves the server and moves bytes.

mod keyfile;
mod message;

use hickory_proto::rr::Name;
use message::{Change, Context, SoaAnswer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub use keyfile::TsigKey;

/// How long one try waits for the server's answer.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a UDP question is sent before giving up.
const TRIES: u32 = 3;
/// Largest UDP answer read; answers to these questions are a few hundred bytes.
const UDP_BUFFER: usize = 4096;

/// Why a DNS-01 record could not be set up or removed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Rfc2136Error {
    #[error(
        "--acme-dns-rfc2136 {0}: expected SERVER,KEY_NAME,KEY_FILE, e.g. \
         ns1.example.com:53,postern-acme,/etc/postern/acme.key"
    )]
    Flag(String),
    #[error("cannot read the TSIG key file {path}: {source}")]
    KeyFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    KeyFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot update {name}: {reason}")]
    Name { name: String, reason: String },
    #[error(
        "a TXT value must be 1 to 255 printable ASCII characters (an ACME DNS-01 value is 43)"
    )]
    Value,
    #[error("cannot sign the update: {0}")]
    Sign(String),
    #[error("cannot resolve the DNS server {server}: {reason}; check the SERVER part of --acme-dns-rfc2136")]
    Resolve { server: String, reason: String },
    #[error(
        "no answer from the DNS server {server} over {transport} ({tries} × {secs} s): check \
         that it listens there and that no firewall drops DNS (UDP and TCP)"
    )]
    Timeout {
        server: String,
        transport: &'static str,
        tries: u32,
        secs: u64,
    },
    #[error(
        "talking to the DNS server {server}: {source}; check the SERVER part of \
         --acme-dns-rfc2136 and that the server listens there"
    )]
    Io {
        server: String,
        source: std::io::Error,
    },
    #[error(
        "the DNS server {server} is authoritative for no zone containing {name} (no SOA record \
         in its answers): point --acme-dns-rfc2136 at the primary server of that zone"
    )]
    NoZone { server: String, name: String },
    #[error(
        "the DNS server {server} answered {rcode} to the update of {name} in zone {zone}: {hint}"
    )]
    Rejected {
        server: String,
        name: String,
        zone: String,
        rcode: String,
        hint: &'static str,
    },
    #[error(
        "the DNS server {server} rejected the TSIG signature with key {key} ({error}): {hint}"
    )]
    Tsig {
        server: String,
        key: String,
        error: String,
        hint: String,
    },
    #[error(
        "the answer from {server} carries no valid TSIG signature with key {key} ({reason}), so \
         it may be forged and the update is not taken as done: check that the server signs its \
         answers with the same key"
    )]
    Unverified {
        server: String,
        key: String,
        reason: String,
    },
    #[error("malformed answer from the DNS server {server}: {reason}")]
    Malformed { server: String, reason: String },
}

/// The `--acme-dns-rfc2136` updater: which server to send updates to and the TSIG key that
/// signs them. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Rfc2136 {
    server: String,
    key: TsigKey,
}

impl fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("key", &self.key)
            .finish()
    }
}

impl Rfc2136 {
    /// From the flag value `SERVER,KEY_NAME,KEY_FILE` (SERVER host:port, port 53 by default;
    /// an IPv6 address with a port in brackets). Reads the key file now, so a wrong flag
    /// stops the gateway at start rather than at the first order.
    pub fn from_flag(spec: &str) -> Result<Self, Rfc2136Error> {
        let mut parts = spec.splitn(3, ',');
        let (Some(server), Some(key_name), Some(key_file)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Rfc2136Error::Flag(format!(
                "{spec:?} has fewer than 3 parts"
            )));
        };
        let (server, key_name, key_file) = (server.trim(), key_name.trim(), key_file.trim());
        if key_name.is_empty() || key_file.is_empty() {
            return Err(Rfc2136Error::Flag(format!("{spec:?} has an empty part")));
        }
        let server = server_address(server).map_err(Rfc2136Error::Flag)?;
        let path = Path::new(key_file);
        let text = std::fs::read_to_string(path).map_err(|source| Rfc2136Error::KeyFileRead {
            path: path.to_path_buf(),
            source,
        })?;
        let key = keyfile::parse(&text, path, key_name)?;
        Ok(Self { server, key })
    }

    /// The server as `host:port`, for logs.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Adds `fqdn 60 IN TXT "value"` to the zone that holds `fqdn`; other TXT records of the
    /// name stay (a wildcard and its apex are validated with two values at once).
    pub async fn add_txt(&self, fqdn: &str, value: &str) -> Result<(), Rfc2136Error> {
        self.change(fqdn, value, Change::Add).await
    }

    /// Deletes exactly the record [`Rfc2136::add_txt`] added; deleting what is gone succeeds.
    pub async fn remove_txt(&self, fqdn: &str, value: &str) -> Result<(), Rfc2136Error> {
        self.change(fqdn, value, Change::Remove).await
    }

    async fn change(&self, fqdn: &str, value: &str, change: Change) -> Result<(), Rfc2136Error> {
        let name = message::owner_name(fqdn)?;
        let txt = message::txt_value(value)?;
        let addrs = self.resolve().await?;
        let (addr, zone) = self.find_zone_at_any(&addrs, &name).await?;
        let update = message::update(&zone, &name, txt, change)?;
        let id = update.metadata.id;
        let (bytes, mut verifier) = message::sign(update, &self.key, unix_now())?;
        let answer = self.exchange(addr, &bytes, id).await?;
        let cx = Context {
            server: &self.server,
            key: &self.key,
            zone: &zone,
            name: &name,
        };
        message::check_update_answer(&answer, id, &mut verifier, &cx)?;
        tracing::debug!(
            "RFC 2136: {} TXT of {} in zone {} at {}",
            if change == Change::Add {
                "added"
            } else {
                "removed"
            },
            name,
            zone,
            self.server
        );
        Ok(())
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, Rfc2136Error> {
        let err = |reason: String| Rfc2136Error::Resolve {
            server: self.server.clone(),
            reason,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.server.as_str())
            .await
            .map_err(|e| err(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(err("no address".into()));
        }
        Ok(addrs)
    }

    /// The first of the server's addresses that answers (a name such as `localhost` may
    /// resolve to an address the server does not listen on), and the zone it names.
    async fn find_zone_at_any(
        &self,
        addrs: &[SocketAddr],
        name: &Name,
    ) -> Result<(SocketAddr, Name), Rfc2136Error> {
        let mut last = None;
        for &addr in addrs {
            match self.find_zone(addr, name).await {
                Ok(zone) => return Ok((addr, zone)),
                Err(e @ Rfc2136Error::Io { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Rfc2136Error::Resolve {
            server: self.server.clone(),
            reason: "no address".into(),
        }))
    }

    /// The zone enclosing `name` on the server: the SOA owner the server names when asked for
    /// `name`'s SOA, walking up one label at a time while it names none.
    async fn find_zone(&self, addr: SocketAddr, name: &Name) -> Result<Name, Rfc2136Error> {
        let mut asked = name.clone();
        while !asked.is_root() {
            let query = message::soa_query(&asked);
            let id = query.metadata.id;
            let bytes = query
                .to_vec()
                .map_err(|e| Rfc2136Error::Sign(e.to_string()))?;
            let answer = self.exchange(addr, &bytes, id).await?;
            match message::soa_answer(&answer, id, name) {
                Ok(SoaAnswer::Zone(zone)) => return Ok(zone),
                Ok(SoaAnswer::NotHere) => asked = asked.base_name(),
                Err(reason) => {
                    return Err(Rfc2136Error::Malformed {
                        server: self.server.clone(),
                        reason,
                    })
                }
            }
        }
        Err(Rfc2136Error::NoZone {
            server: self.server.clone(),
            name: name.to_ascii(),
        })
    }

    /// Sends a question and returns the answer: over UDP, up to [`TRIES`] times
    /// [`TRY_TIMEOUT`], and again over TCP when the UDP answer is truncated.
    async fn exchange(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
        id: u16,
    ) -> Result<Vec<u8>, Rfc2136Error> {
        let io = |source: std::io::Error| Rfc2136Error::Io {
            server: self.server.clone(),
            source,
        };
        let local: SocketAddr = if addr.is_ipv4() {
            (IpAddr::from([0u8; 4]), 0).into()
        } else {
            (IpAddr::from([0u16; 8]), 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(addr).await.map_err(io)?;
        let mut buf = vec![0u8; UDP_BUFFER];
        for _ in 0..TRIES {
            socket.send(bytes).await.map_err(io)?;
            let deadline = tokio::time::Instant::now() + TRY_TIMEOUT;
            loop {
                let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(received) => received.map_err(io)?,
                };
                match message::answers(&buf[..n], id) {
                    None => continue,
                    Some(false) => return Ok(buf[..n].to_vec()),
                    Some(true) => return self.exchange_tcp(addr, bytes, id).await,
                }
            }
        }
        Err(Rfc2136Error::Timeout {
            server: self.server.clone(),
            transport: "UDP",
            tries: TRIES,
            secs: TRY_TIMEOUT.as_secs(),
        })
    }

    async fn exchange_tcp(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
        id: u16,
    ) -> Result<Vec<u8>, Rfc2136Error> {
        let server = self.server.clone();
        let io = |source: std::io::Error| Rfc2136Error::Io {
            server: server.clone(),
            source,
        };
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.map_err(io)?;
            let len = u16::try_from(bytes.len())
                .map_err(|_| Rfc2136Error::Sign("message too long".into()))?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(bytes);
            stream.write_all(&framed).await.map_err(io)?;
            loop {
                let len = stream.read_u16().await.map_err(io)?;
                let mut answer = vec![0u8; usize::from(len)];
                stream.read_exact(&mut answer).await.map_err(io)?;
                if message::answers(&answer, id).is_some() {
                    return Ok(answer);
                }
            }
        };
        tokio::time::timeout(TRY_TIMEOUT, exchange)
            .await
            .map_err(|_| Rfc2136Error::Timeout {
                server: self.server.clone(),
                transport: "TCP",
                tries: 1,
                secs: TRY_TIMEOUT.as_secs(),
            })?
    }
}

/// `host:port` from SERVER, adding port 53 when none is given; `[v6]:port` or a bare IPv6
/// address.
fn server_address(server: &str) -> Result<String, String> {
    if server.is_empty() {
        return Err("has an empty SERVER".into());
    }
    if server.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(format!("[{server}]:53"));
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => (host, Some(port)),
        _ => (server, None),
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return Err(format!("SERVER {server:?} is not host:port"));
    }
    let port = match port {
        None => 53,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("SERVER {server:?} has an invalid port"))?,
    };
    Ok(format!("{host}:{port}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "rfc2136_tests.rs"]
mod tests;
