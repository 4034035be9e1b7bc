//! The WireGuard receive path into the netstack, as the gateway runs it: a real peer (a
//! second peer table) completes a handshake and sends fuzzer-chosen IP packets; the
//! gateway's table decrypts them and hands them to a NetStack with a TCP listener and a
//! UDP DNS socket; what the stack sends goes back through the tunnel. Raw datagrams from
//! anywhere hit the gateway's endpoint too, and time passes between steps.
//!
//! Properties: nothing panics; every packet the gateway delivers carries an inner source
//! address the sending peer owns (source spoofing is dropped); a datagram that did not
//! come from the peer's session never delivers a packet.

use arbitrary::{Arbitrary, Unstructured};
use postern_common::netstack::{IpAddress, IpCidr, NetConfig, NetStack};
use postern_common::wireguard::peers::{Action, AllowedIp, PeerTable};
use postern_common::wireguard::{KeyPair, PrivateKey};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::packets::{ip_packet, Transport};

const GW_ENDPOINT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
const CLIENT_ENDPOINT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 40000);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x7375, 0, 0, 0, 0, 0, 2);
const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 65, 1, 2);
const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x7376, 0, 0, 0, 0, 0, 0x102);
const MAX_OPS: usize = 24;

#[derive(Debug, Arbitrary)]
enum Op {
    /// An IP packet sent by the peer through its session, well-formed (checksums right).
    Packet {
        v6: bool,
        /// An inner source the peer does not own, instead of its own address.
        spoofed: Option<[u8; 16]>,
        transport: Transport,
    },
    /// Arbitrary bytes sent by the peer through its session as an IP packet.
    RawPacket(Vec<u8>),
    /// Arbitrary bytes sent to the gateway's UDP endpoint from some address.
    Datagram { from_port: u16, bytes: Vec<u8> },
    /// Time passing: both tables' timers run.
    Tick(u8),
}

fn keys() -> &'static (KeyPair, KeyPair) {
    static KEYS: std::sync::OnceLock<(KeyPair, KeyPair)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        (
            KeyPair::from_private(PrivateKey::from_bytes([0x11; 32])),
            KeyPair::from_private(PrivateKey::from_bytes([0x22; 32])),
        )
    })
}

fn inner_source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::V4(
            <[u8; 4]>::try_from(packet.get(12..16)?).ok()?.into(),
        )),
        6 => Some(IpAddr::V6(
            <[u8; 16]>::try_from(packet.get(8..24)?).ok()?.into(),
        )),
        _ => None,
    }
}

/// The gateway and the peer, wired together in memory.
struct Link {
    gw: PeerTable,
    client: PeerTable,
    now: Instant,
    to_stack: mpsc::Sender<Vec<u8>>,
}

impl Link {
    /// Carries out `actions` of the gateway (`at_gw`) or the peer, and all they cause.
    async fn pump(&mut self, at_gw: bool, actions: Vec<Action>) {
        let mut queue: Vec<(bool, Action)> = actions.into_iter().map(|a| (at_gw, a)).collect();
        let mut steps = 0;
        while let Some((at_gw, action)) = queue.pop() {
            steps += 1;
            assert!(steps < 1000, "datagrams ping-pong without end");
            match action {
                Action::DeliverPacket { packet, .. } if at_gw => {
                    let src = inner_source(&packet).expect("delivered packets are IP");
                    assert!(
                        src == IpAddr::V4(CLIENT_V4) || src == IpAddr::V6(CLIENT_V6),
                        "spoofed source {src} delivered"
                    );
                    let _ = self.to_stack.try_send(packet);
                }
                Action::DeliverPacket { .. } => {}
                Action::SendDatagram { to, bytes } if to == GW_ENDPOINT && !at_gw => {
                    let out = self.gw.handle_datagram(CLIENT_ENDPOINT, &bytes, self.now);
                    queue.extend(out.into_iter().map(|a| (true, a)));
                }
                Action::SendDatagram { to, bytes } if to == CLIENT_ENDPOINT && at_gw => {
                    let out = self.client.handle_datagram(GW_ENDPOINT, &bytes, self.now);
                    queue.extend(out.into_iter().map(|a| (false, a)));
                }
                Action::SendDatagram { .. } => {}
            }
        }
    }
}

/// Lets the stack's poll loop and the socket tasks run.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn serve(stack: &NetStack) {
    let listener = stack
        .listen(SocketAddr::from(([0, 0, 0, 0], 80)))
        .expect("listen");
    tokio::spawn(async move {
        while let Ok((mut stream, _, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 2048];
                if let Ok(n) = stream.read(&mut buf).await {
                    let _ = stream.write_all(&buf[..n]).await;
                }
            });
        }
    });
    let dns = stack
        .bind_udp(SocketAddr::from(([100, 65, 0, 53], 53)))
        .expect("bind");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from, to)) = dns.recv_from_to(&mut buf).await {
            let reply = postern_gateway::tunnel::dns::respond(&buf[..n], "postern.test", 30, |l| {
                (l == "web").then_some((SERVICE_V4, SERVICE_V6))
            });
            if let Some(reply) = reply {
                let _ = dns.send_from_to(&reply, from, to).await;
            }
        }
    });
}

async fn drive(ops: Vec<Op>) {
    let (gw_keys, client_keys) = keys().clone();
    let now = Instant::now();
    let mut gw = PeerTable::new(gw_keys.clone());
    gw.add_peer(
        client_keys.public,
        &[IpAddr::V4(CLIENT_V4).into(), IpAddr::V6(CLIENT_V6).into()],
        None,
        None,
        now,
    )
    .expect("gateway peer");
    let mut client = PeerTable::new(client_keys);
    client
        .add_peer(
            gw_keys.public,
            &[
                AllowedIp::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("v4 range"),
                AllowedIp::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("v6 range"),
            ],
            Some(GW_ENDPOINT),
            None,
            now,
        )
        .expect("client peer");
    let (to_stack, from_link) = mpsc::channel::<Vec<u8>>(64);
    let (stack_out, mut from_stack) = mpsc::channel::<Vec<u8>>(64);
    let config = NetConfig {
        addresses: vec![
            IpCidr::new(
                IpAddress::from(IpAddr::V4(Ipv4Addr::new(100, 65, 0, 1))),
                16,
            ),
            IpCidr::new(
                IpAddress::from(IpAddr::V6(Ipv6Addr::new(0xfd70, 0x7376, 0, 0, 0, 0, 0, 1))),
                64,
            ),
        ],
        any_ip: true,
        max_tcp_sockets: 64,
        tcp_buffer: 8 * 1024,
        ..NetConfig::default()
    };
    let stack = NetStack::new(config, from_link, stack_out).expect("stack");
    serve(&stack).await;
    let mut link = Link {
        gw,
        client,
        now,
        to_stack,
    };
    for op in ops.into_iter().take(MAX_OPS) {
        match op {
            Op::Packet {
                v6,
                spoofed,
                transport,
            } => {
                let (src, dst) = match (v6, spoofed) {
                    (false, None) => (IpAddr::V4(CLIENT_V4), IpAddr::V4(SERVICE_V4)),
                    (true, None) => (IpAddr::V6(CLIENT_V6), IpAddr::V6(SERVICE_V6)),
                    (false, Some(s)) => (
                        IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3])),
                        IpAddr::V4(SERVICE_V4),
                    ),
                    (true, Some(s)) => (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(SERVICE_V6)),
                };
                let packet = ip_packet(src, dst, &transport);
                if let Ok(Some(a)) = link.client.send_packet(&packet, link.now) {
                    link.pump(false, vec![a]).await;
                }
            }
            Op::RawPacket(bytes) => {
                if let Ok(Some(a)) = link.client.send_packet(&bytes, link.now) {
                    link.pump(false, vec![a]).await;
                }
            }
            Op::Datagram { from_port, bytes } => {
                let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), from_port);
                let out = link.gw.handle_datagram(from, &bytes, link.now);
                assert!(
                    !out.iter()
                        .any(|a| matches!(a, Action::DeliverPacket { .. })),
                    "a stranger's datagram delivered a packet"
                );
                link.pump(true, out).await;
            }
            Op::Tick(n) => {
                link.now += Duration::from_millis(100 * u64::from(n));
                let a = link.gw.tick(link.now);
                link.pump(true, a).await;
                let a = link.client.tick(link.now);
                link.pump(false, a).await;
            }
        }
        settle().await;
        while let Ok(out) = from_stack.try_recv() {
            if let Ok(Some(a)) = link.gw.send_packet(&out, link.now) {
                link.pump(true, vec![a]).await;
            }
        }
    }
    stack.shutdown();
}

pub fn run(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(drive(ops));
}
