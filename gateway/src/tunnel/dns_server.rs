//! The tunnel's DNS server on `100.65.0.53:53` and `[fd70:7376::35]:53` (UDP). It answers
//! A and AAAA for `<svc>.local`, `<svc>.local.<domain>` and `<svc>` with the Service's
//! tunnel addresses, for Services the asking Session may see ([`super::visible`]);
//! every other name is NXDOMAIN. Nothing is forwarded upstream: the agent routes only the
//! `local` domain here.

use super::addresses::dns_addresses;
use super::dns::{self, Query};
use super::{visible, Tunnel};
use crate::state::Gateway;
use postern_common::netstack::{NetError, UdpSocket};
use std::net::{IpAddr, SocketAddr};
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
        let msg = &buf[..n];
        let reply = match dns::parse_query(msg) {
            Ok(q) => Some(answer(&gw, &tunnel, &q, from.ip())),
            Err(e) => {
                tracing::debug!(%from, error = %e, "bad DNS query");
                dns::build_error(msg, dns::RCODE_FORMERR)
            }
        };
        if let Some(reply) = reply {
            if let Err(e) = socket.send_from_to(&reply, from, to).await {
                tracing::debug!(%from, error = %e, "DNS answer not sent");
            }
        }
    }
}

/// The answer to `q` asked from tunnel address `asker`.
fn answer(gw: &Gateway, tunnel: &Tunnel, q: &Query, asker: IpAddr) -> Vec<u8> {
    if q.opcode() != 0 {
        return dns::build_answer(q, dns::RCODE_NOTIMP, &[], TTL);
    }
    let snap = gw.snapshot();
    let found = dns::service_label(&q.name, &gw.domain)
        .and_then(|label| snap.services.get(label))
        .filter(|s| {
            tunnel
                .principal_at(gw, asker)
                .is_ok_and(|p| visible(&snap, s, &p))
        })
        .and_then(|s| tunnel.services(&snap).get(&s.name));
    match found {
        Some(pair) => dns::build_answer(
            q,
            dns::RCODE_OK,
            &[IpAddr::V4(pair.v4), IpAddr::V6(pair.v6)],
            TTL,
        ),
        None if !dns::in_zone(&q.name, &gw.domain) => {
            dns::build_answer(q, dns::RCODE_REFUSED, &[], TTL)
        }
        None => dns::build_answer(q, dns::RCODE_NXDOMAIN, &[], TTL),
    }
}
