//! The tunnel's DNS server on `100.65.0.53:53` and `[fd70:7376::35]:53` (UDP). It answers
//! A and AAAA for `<svc>.local`, `<svc>.local.<domain>` and `<svc>` with the Service's
//! tunnel addresses, for Services the asking Session may see ([`super::visible`]);
//! other names of its zone are NXDOMAIN, names outside it REFUSED ([`dns::respond`]).
//! Nothing is forwarded upstream: the agent routes only the `local` domain here.

use super::addresses::dns_addresses;
use super::dns;
use super::{visible, Tunnel};
use crate::state::Gateway;
use postern_common::netstack::{NetError, UdpSocket};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// TTL of answers, in seconds: short, since Services can be deleted.
const TTL: u32 = 30;

/// Binds both DNS sockets and starts their loops.
pub(super) fn start(gw: Arc<Gateway>, tunnel: Arc<Tunnel>) -> Result<(), NetError> {
    let a = dns_addresses();
    for ip in [IpAddr::V4(a.v4), IpAddr::V6(a.v6)] {
        let socket = tunnel.stack().bind_udp(SocketAddr::new(ip, 53))?;
        tokio::spawn(serve(gw.clone(), tunnel.clone(), socket));
    }
    Ok(())
}

async fn serve(gw: Arc<Gateway>, tunnel: Arc<Tunnel>, socket: UdpSocket) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, from, to) = match socket.recv_from_to(&mut buf).await {
            Ok(r) => r,
            Err(NetError::DatagramTooLarge(_)) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "tunnel DNS stopped");
                return;
            }
        };
        let reply = dns::respond(&buf[..n], &gw.domain, TTL, |label| {
            lookup(&gw, &tunnel, label, from.ip())
        });
        match reply {
            Some(reply) => {
                if let Err(e) = socket.send_from_to(&reply, from, to).await {
                    tracing::debug!(%from, error = %e, "DNS answer not sent");
                }
            }
            None => tracing::debug!(%from, "not a DNS query; ignored"),
        }
    }
}

/// The tunnel addresses of Service `label`, if it exists and the Session at tunnel address
/// `asker` may see it.
fn lookup(
    gw: &Gateway,
    tunnel: &Tunnel,
    label: &str,
    asker: IpAddr,
) -> Option<(Ipv4Addr, Ipv6Addr)> {
    let snap = gw.snapshot();
    let service = snap.services.get(label)?;
    let principal = tunnel.principal_at(gw, asker).ok()?;
    if !visible(&snap, service, &principal) {
        return None;
    }
    let pair = tunnel.services(&snap).get(&service.name)?;
    Some((pair.v4, pair.v6))
}
