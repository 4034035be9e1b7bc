//! Unit tests of the peer table, driven in memory without sockets.
use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A minimal IPv4/UDP packet; boringtun only reads version, length and addresses.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&1000u16.to_be_bytes());
    p[22..24].copy_from_slice(&2000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 59; // no next header
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..].copy_from_slice(payload);
    p
}

const GW: usize = 0;
const C1: usize = 1;
const C2: usize = 2;
const C1_V4: [u8; 4] = [10, 0, 0, 2];
const C2_V4: [u8; 4] = [10, 0, 0, 3];
const SVC_V4: [u8; 4] = [10, 1, 0, 5];

fn c1_v6() -> Ipv6Addr {
    "fd00::2".parse().unwrap()
}
fn svc_v6() -> Ipv6Addr {
    "fd00:1::5".parse().unwrap()
}

/// Tables wired together in memory: datagrams to a node's address reach its table.
struct Net {
    nodes: Vec<(SocketAddr, PeerTable)>,
    delivered: Vec<Vec<(PeerId, Vec<u8>)>>,
    /// Every datagram sent, as (from node, to address).
    sent: Vec<(usize, SocketAddr)>,
    lost: usize,
}

impl Net {
    /// A gateway with peers C1 and C2, and both clients configured for the gateway.
    fn new(client_keepalive: Option<u16>) -> Net {
        let now = Instant::now();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let keys: Vec<KeyPair> = (0..3).map(|_| KeyPair::generate()).collect();
        let mut gw = PeerTable::new(keys[GW].clone());
        gw.add_peer(
            keys[C1].public,
            &[IpAddr::from(C1_V4).into(), IpAddr::V6(c1_v6()).into()],
            None,
            None,
            now,
        )
        .unwrap();
        gw.add_peer(
            keys[C2].public,
            &[IpAddr::from(C2_V4).into()],
            None,
            None,
            now,
        )
        .unwrap();
        let mut nodes = vec![(addr(51820), gw)];
        for (i, key) in keys.iter().enumerate().skip(1) {
            let mut client = PeerTable::new(key.clone());
            client
                .add_peer(
                    keys[GW].public,
                    &[
                        AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap(),
                        AllowedIp::new(IpAddr::V6("fd00:1::".parse().unwrap()), 64).unwrap(),
                    ],
                    Some(addr(51820)),
                    client_keepalive,
                    now,
                )
                .unwrap();
            nodes.push((addr(40000 + i as u16), client));
        }
        Net {
            delivered: vec![Vec::new(); nodes.len()],
            nodes,
            sent: Vec::new(),
            lost: 0,
        }
    }

    fn t(&self, node: usize) -> &PeerTable {
        &self.nodes[node].1
    }

    fn table(&mut self, node: usize) -> &mut PeerTable {
        &mut self.nodes[node].1
    }

    /// Performs `actions` produced by `node`, and everything they cause, until quiet.
    fn run(&mut self, node: usize, actions: Vec<Action>) {
        let mut queue: Vec<(usize, Action)> = actions.into_iter().map(|a| (node, a)).collect();
        while !queue.is_empty() {
            let (from_node, action) = queue.remove(0);
            match action {
                Action::DeliverPacket { peer, packet } => {
                    self.delivered[from_node].push((peer, packet))
                }
                Action::SendDatagram { to, bytes } => {
                    self.sent.push((from_node, to));
                    let from = self.nodes[from_node].0;
                    let Some(target) = self.nodes.iter().position(|(a, _)| *a == to) else {
                        self.lost += 1;
                        continue;
                    };
                    let out = self.nodes[target]
                        .1
                        .handle_datagram(from, &bytes, Instant::now());
                    queue.extend(out.into_iter().map(|a| (target, a)));
                }
            }
        }
    }

    fn send(&mut self, node: usize, packet: &[u8]) {
        let action = self
            .table(node)
            .send_packet(packet, Instant::now())
            .unwrap();
        self.run(node, action.into_iter().collect());
    }

    fn take_delivered(&mut self, node: usize) -> Vec<(PeerId, Vec<u8>)> {
        std::mem::take(&mut self.delivered[node])
    }

    fn key(&self, node: usize) -> PublicKey {
        self.nodes[node].1.public_key()
    }
}

#[test]
fn handshake_then_data_both_ways_for_two_peers() {
    let mut net = Net::new(None);
    let c1_id = net.t(GW).peer_id(&net.key(C1)).unwrap();
    let c2_id = net.t(GW).peer_id(&net.key(C2)).unwrap();
    assert_ne!(c1_id, c2_id);

    // The first packet starts the handshake and is sent once it completes.
    let up = ipv4(C1_V4, SVC_V4, b"hello");
    net.send(C1, &up);
    assert_eq!(net.take_delivered(GW), vec![(c1_id, up)]);
    let stats = net.t(GW).peer_stats(&net.key(C1)).unwrap();
    assert!(stats.last_handshake.is_some());
    assert_eq!(stats.endpoint, Some(net.nodes[C1].0));

    // The gateway answers by destination address, to the endpoint it learnt.
    let down = ipv4(SVC_V4, C1_V4, b"world");
    net.send(GW, &down);
    let gw_peer_at_c1 = net.t(C1).peer_id(&net.key(GW)).unwrap();
    assert_eq!(net.take_delivered(C1), vec![(gw_peer_at_c1, down)]);

    // IPv6 inside the same session.
    let up6 = ipv6(c1_v6(), svc_v6(), b"six");
    net.send(C1, &up6);
    assert_eq!(net.take_delivered(GW), vec![(c1_id, up6)]);

    // The second peer gets its own session on the same gateway table.
    let up2 = ipv4(C2_V4, SVC_V4, b"second");
    net.send(C2, &up2);
    assert_eq!(net.take_delivered(GW), vec![(c2_id, up2)]);
    let down2 = ipv4(SVC_V4, C2_V4, b"back");
    net.send(GW, &down2);
    assert_eq!(net.take_delivered(C2).len(), 1);
    assert!(net.take_delivered(C1).is_empty());
    assert_eq!(net.lost, 0);

    let stats = net.table(GW).stats();
    assert_eq!(stats.peers.len(), 2);
    assert!(stats.peers.iter().all(|p| p.rx_bytes > 0 && p.tx_bytes > 0));
    assert_eq!(stats.counters, TableCounters::default());
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let mut net = Net::new(None);
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"ok"));
    assert_eq!(net.take_delivered(GW).len(), 1);
    // C1 claims C2's address, then an address nobody owns.
    net.send(C1, &ipv4(C2_V4, SVC_V4, b"spoof"));
    net.send(C1, &ipv4([192, 168, 1, 1], SVC_V4, b"spoof"));
    assert!(net.take_delivered(GW).is_empty());
    let stats = net.table(GW).stats();
    assert_eq!(stats.counters.spoofed_dropped, 2);
    let c1 = net.t(GW).peer_stats(&net.key(C1)).unwrap();
    assert_eq!(c1.spoofed_dropped, 2);
}

#[test]
fn roaming_client_keeps_working_and_replies_follow() {
    let mut net = Net::new(None);
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"before"));
    assert_eq!(net.take_delivered(GW).len(), 1);

    let new_addr = SocketAddr::from(([127, 0, 0, 9], 40999));
    net.nodes[C1].0 = new_addr;
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"after"));
    assert_eq!(net.take_delivered(GW).len(), 1);
    assert_eq!(
        net.t(GW).peer_stats(&net.key(C1)).unwrap().endpoint,
        Some(new_addr)
    );

    net.sent.clear();
    net.send(GW, &ipv4(SVC_V4, C1_V4, b"reply"));
    assert_eq!(net.sent, vec![(GW, new_addr)]);
    assert_eq!(net.take_delivered(C1).len(), 1);
}

#[test]
fn removed_peer_gets_nothing_delivered() {
    let mut net = Net::new(None);
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"one"));
    assert_eq!(net.take_delivered(GW).len(), 1);

    let key = net.key(C1);
    assert!(net.table(GW).remove_peer(&key).is_some());
    assert!(net.table(GW).remove_peer(&key).is_none());
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"two"));
    assert!(net.take_delivered(GW).is_empty());
    assert_eq!(net.table(GW).stats().counters.unknown_peer_dropped, 1);
    assert_eq!(
        net.table(GW)
            .send_packet(&ipv4(SVC_V4, C1_V4, b"x"), Instant::now()),
        Err(SendError::NoRoute(IpAddr::from(C1_V4)))
    );
    // Its address is free for the next session.
    let again = KeyPair::generate().public;
    net.table(GW)
        .add_peer(
            again,
            &[IpAddr::from(C1_V4).into()],
            None,
            None,
            Instant::now(),
        )
        .unwrap();
}

#[test]
fn persistent_keepalive_comes_from_tick() {
    let mut net = Net::new(Some(1));
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"x"));
    assert_eq!(net.take_delivered(GW).len(), 1);
    let before = net.t(GW).peer_stats(&net.key(C1)).unwrap().rx_bytes;
    // Nothing to send right away.
    assert!(net.table(C2).tick(Instant::now()).len() <= 1);
    std::thread::sleep(Duration::from_millis(1100));
    let actions = net.table(C1).tick(Instant::now());
    assert_eq!(actions.len(), 1, "{actions:?}");
    let Action::SendDatagram { to, bytes } = &actions[0] else {
        panic!("expected a datagram")
    };
    assert_eq!(*to, net.nodes[GW].0);
    assert_eq!(bytes.len(), 32, "an empty data packet is a keepalive");
    net.run(C1, actions);
    assert!(net.take_delivered(GW).is_empty());
    let after = net.t(GW).peer_stats(&net.key(C1)).unwrap().rx_bytes;
    assert_eq!(after, before + 32);
    // The gateway peer has no keepalive configured: its tick stays quiet.
    assert!(net.table(GW).tick(Instant::now()).is_empty());
}

#[test]
fn tampered_datagram_is_dropped_and_does_not_move_the_endpoint() {
    let mut net = Net::new(None);
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"x"));
    assert_eq!(net.take_delivered(GW).len(), 1);
    let Some(Action::SendDatagram { mut bytes, .. }) = net
        .table(C1)
        .send_packet(&ipv4(C1_V4, SVC_V4, b"payload"), Instant::now())
        .unwrap()
    else {
        panic!("expected a datagram")
    };
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let attacker = SocketAddr::from(([127, 0, 0, 66], 666));
    let out = net
        .table(GW)
        .handle_datagram(attacker, &bytes, Instant::now());
    assert!(out.is_empty());
    assert_eq!(net.table(GW).stats().counters.invalid_dropped, 1);
    assert_eq!(
        net.t(GW).peer_stats(&net.key(C1)).unwrap().endpoint,
        Some(net.nodes[C1].0)
    );
    // Garbage is dropped too.
    assert!(net
        .table(GW)
        .handle_datagram(attacker, b"\x04junk", Instant::now())
        .is_empty());
    assert_eq!(net.table(GW).stats().counters.invalid_dropped, 2);
}

#[test]
fn initiation_from_unknown_key_is_ignored() {
    let mut net = Net::new(None);
    let stranger = KeyPair::generate();
    let mut table = PeerTable::new(stranger);
    table
        .add_peer(
            net.key(GW),
            &[AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap()],
            Some(net.nodes[GW].0),
            None,
            Instant::now(),
        )
        .unwrap();
    let init = table
        .send_packet(&ipv4([10, 0, 0, 7], SVC_V4, b"x"), Instant::now())
        .unwrap()
        .unwrap();
    let Action::SendDatagram { bytes, .. } = init else {
        panic!()
    };
    let from = SocketAddr::from(([127, 0, 0, 7], 7));
    assert!(net
        .table(GW)
        .handle_datagram(from, &bytes, Instant::now())
        .is_empty());
    assert_eq!(net.table(GW).stats().counters.unknown_peer_dropped, 1);
}

#[test]
fn cookie_reply_under_load() {
    let keys = KeyPair::generate();
    let client_keys = KeyPair::generate();
    let now = Instant::now();
    let mut gw = PeerTable::with_rate_limit(keys.clone(), 1);
    gw.add_peer(
        client_keys.public,
        &[IpAddr::from(C1_V4).into()],
        None,
        None,
        now,
    )
    .unwrap();
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], 51820));
    let mut client = PeerTable::new(client_keys);
    client
        .add_peer(
            keys.public,
            &[IpAddr::from(SVC_V4).into()],
            Some(gw_addr),
            None,
            now,
        )
        .unwrap();
    let Some(Action::SendDatagram { bytes: init, .. }) =
        client.send_packet(&ipv4(C1_V4, SVC_V4, b"x"), now).unwrap()
    else {
        panic!()
    };
    let from = SocketAddr::from(([127, 0, 0, 2], 40000));
    // Within the limit: answered with a handshake response.
    let first = gw.handle_datagram(from, &init, now);
    assert!(matches!(&first[..], [Action::SendDatagram { bytes, .. }] if bytes.len() == 92));
    // Over the limit: a cookie reply (64 bytes), before any Diffie-Hellman.
    let second = gw.handle_datagram(from, &init, now);
    let [Action::SendDatagram { to, bytes: cookie }] = &second[..] else {
        panic!("{second:?}")
    };
    assert_eq!(*to, from);
    assert_eq!(cookie.len(), 64);
    assert_eq!(gw.stats().counters.cookie_replies, 1);
    // The initiator accepts the cookie (it will add MAC2 to its next initiation).
    assert!(client.handle_datagram(gw_addr, cookie, now).is_empty());
    assert_eq!(client.stats().counters, TableCounters::default());
}

#[test]
fn cookie_from_second_limiter_check_does_not_move_endpoint() {
    let keys = KeyPair::generate();
    let client_keys = KeyPair::generate();
    let now = Instant::now();
    let mut gw = PeerTable::with_rate_limit(keys.clone(), 1);
    let configured = SocketAddr::from(([192, 0, 2, 1], 51820));
    gw.add_peer(
        client_keys.public,
        &[IpAddr::from(C1_V4).into()],
        Some(configured),
        None,
        now,
    )
    .unwrap();
    let init = |k: KeyPair| {
        let mut t = PeerTable::new(k);
        t.add_peer(
            keys.public,
            &[IpAddr::from(SVC_V4).into()],
            Some(configured),
            None,
            now,
        )
        .unwrap();
        match t.send_packet(&ipv4(C1_V4, SVC_V4, b"x"), now).unwrap() {
            Some(Action::SendDatagram { bytes, .. }) => bytes,
            other => panic!("{other:?}"),
        }
    };
    let from = SocketAddr::from(([127, 0, 0, 2], 40000));
    // A stranger's initiation uses up the pre-check's budget...
    assert!(gw
        .handle_datagram(from, &init(KeyPair::generate()), now)
        .is_empty());
    // ...so this one passes our check but boringtun's own check answers with a cookie.
    let out = gw.handle_datagram(from, &init(client_keys.clone()), now);
    assert!(matches!(&out[..], [Action::SendDatagram { bytes, .. }] if bytes.len() == 64));
    let stats = gw.peer_stats(&client_keys.public).unwrap();
    assert_eq!(stats.endpoint, Some(configured));
    assert_eq!(stats.last_rx, None);
}

#[test]
fn idle_peers_expire() {
    let mut net = Net::new(None);
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"x"));
    let later = Instant::now() + Duration::from_secs(120);
    // C2 never spoke, C1 spoke just now: with 60 s both are idle two minutes later.
    let mut expired = net.table(GW).expire_idle(later, Duration::from_secs(60));
    expired.sort();
    let mut expected = vec![net.key(C1), net.key(C2)];
    expected.sort();
    assert_eq!(expired, expected);
    assert!(net.table(GW).is_empty());
    // A fresh peer is not idle yet.
    let k = KeyPair::generate().public;
    net.table(GW)
        .add_peer(k, &[], None, None, Instant::now())
        .unwrap();
    assert!(net
        .table(GW)
        .expire_idle(Instant::now(), Duration::from_secs(60))
        .is_empty());
}

#[test]
fn allowed_ips_and_routing() {
    let a = AllowedIp::new(IpAddr::from([10, 1, 2, 3]), 16).unwrap();
    assert_eq!(a.to_string(), "10.1.0.0/16");
    assert!(a.contains(IpAddr::from([10, 1, 255, 1])));
    assert!(!a.contains(IpAddr::from([10, 2, 0, 1])));
    assert!(!a.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert!(AllowedIp::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        .unwrap()
        .contains(IpAddr::from([8, 8, 8, 8])));
    assert!(matches!(
        AllowedIp::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 33),
        Err(PeerError::PrefixLength { .. })
    ));

    let now = Instant::now();
    let mut t = PeerTable::new(KeyPair::generate());
    let wide = t
        .add_peer(
            KeyPair::generate().public,
            &[AllowedIp::new(IpAddr::from([10, 0, 0, 0]), 8).unwrap()],
            None,
            None,
            now,
        )
        .unwrap();
    let narrow = t
        .add_peer(
            KeyPair::generate().public,
            &[AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap()],
            None,
            None,
            now,
        )
        .unwrap();
    let host_key = KeyPair::generate().public;
    let host = t
        .add_peer(
            host_key,
            &[IpAddr::from([10, 1, 0, 1]).into()],
            None,
            None,
            now,
        )
        .unwrap();
    assert!(wide.0 <= MAX_INDEX && narrow.0 <= MAX_INDEX && host.0 <= MAX_INDEX);
    assert_eq!(t.route(IpAddr::from([10, 1, 0, 1])), Some(host));
    assert_eq!(t.route(IpAddr::from([10, 1, 0, 2])), Some(narrow));
    assert_eq!(t.route(IpAddr::from([10, 2, 0, 2])), Some(wide));
    assert_eq!(t.route(IpAddr::from([11, 0, 0, 1])), None);
    assert_eq!(
        t.add_peer(host_key, &[], None, None, now),
        Err(PeerError::DuplicatePeer(host_key))
    );
    assert_eq!(
        t.add_peer(
            KeyPair::generate().public,
            &[IpAddr::from([10, 1, 0, 1]).into()],
            None,
            None,
            now
        ),
        Err(PeerError::AddressInUse(IpAddr::from([10, 1, 0, 1]).into()))
    );
    // No endpoint yet: the packet waits in boringtun, the caller learns why nothing went out.
    assert_eq!(
        t.send_packet(&ipv4([10, 0, 0, 1], [10, 1, 0, 1], b""), now),
        Err(SendError::NoEndpoint(host))
    );
    assert_eq!(t.send_packet(b"\x45", now), Err(SendError::NotIp));
}

/// The initiation a fresh client table sends for its first packet.
fn first_initiation(table: &mut PeerTable, packet: &[u8]) -> Vec<u8> {
    match table.send_packet(packet, Instant::now()).unwrap() {
        Some(Action::SendDatagram { bytes, .. }) => bytes,
        other => panic!("expected an initiation, got {other:?}"),
    }
}

#[test]
fn registered_peers_hold_no_state_until_their_first_handshake() {
    let mut net = Net::new(None);
    // The clients' gateway peer (configured endpoint) has its state from the start.
    assert_eq!(net.t(C1).peers_with_state(), 1);
    assert_eq!(net.t(GW).peers_with_state(), 0);
    assert_eq!(net.t(GW).len(), 2);

    let up = ipv4(C1_V4, SVC_V4, b"first");
    net.send(C1, &up);
    assert_eq!(net.take_delivered(GW).len(), 1);
    assert_eq!(net.t(GW).peers_with_state(), 1);
    net.send(GW, &ipv4(SVC_V4, C1_V4, b"back"));
    assert_eq!(net.take_delivered(C1).len(), 1);
    assert_eq!(net.table(GW).stats().counters, TableCounters::default());
    // A peer without state is its key, addresses and counters: small.
    assert!(
        std::mem::size_of::<Peer>() <= 256,
        "{}",
        std::mem::size_of::<Peer>()
    );
}

#[test]
fn idle_state_is_dropped_and_both_sides_can_start_over() {
    let mut net = Net::new(None);
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"x"));
    assert_eq!(net.take_delivered(GW).len(), 1);
    let before = net.t(GW).peer_stats(&net.key(C1)).unwrap();
    let now = Instant::now();

    // Not yet idle long enough: the session stays.
    let _ = net
        .table(GW)
        .tick(now + STATE_IDLE_DROP - Duration::from_secs(5));
    assert_eq!(net.t(GW).peers_with_state(), 1);
    // Past it: the state goes, the peer, its counters and its endpoint stay.
    let _ = net
        .table(GW)
        .tick(now + STATE_IDLE_DROP + Duration::from_secs(1));
    assert_eq!(net.t(GW).peers_with_state(), 0);
    assert_eq!(net.t(GW).len(), 2);
    let after = net.t(GW).peer_stats(&net.key(C1)).unwrap();
    assert_eq!(
        (after.endpoint, after.rx_bytes),
        (before.endpoint, before.rx_bytes)
    );

    // Data of the old session has nothing to decrypt it, and creates no state.
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"stale"));
    assert!(net.take_delivered(GW).is_empty());
    assert_eq!(net.t(GW).peers_with_state(), 0);
    assert_eq!(net.table(GW).stats().counters.invalid_dropped, 1);

    // The gateway can start over towards the endpoint it knows: it initiates, and the
    // queued packet follows the handshake.
    let down = ipv4(SVC_V4, C1_V4, b"gateway first");
    net.send(GW, &down);
    let gw_at_c1 = net.t(C1).peer_id(&net.key(GW)).unwrap();
    assert_eq!(net.take_delivered(C1), vec![(gw_at_c1, down)]);
    assert_eq!(net.t(GW).peers_with_state(), 1);
    net.send(C1, &ipv4(C1_V4, SVC_V4, b"again"));
    assert_eq!(net.take_delivered(GW).len(), 1);

    // And a client that starts over (a new agent with the same key) handshakes as usual.
    let _ = net
        .table(GW)
        .tick(Instant::now() + STATE_IDLE_DROP + Duration::from_secs(1));
    assert_eq!(net.t(GW).peers_with_state(), 0);
    let gw_key = net.key(GW);
    let gw_addr = net.nodes[GW].0;
    let c1 = net.table(C1);
    c1.remove_peer(&gw_key).unwrap();
    c1.add_peer(
        gw_key,
        &[AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap()],
        Some(gw_addr),
        None,
        Instant::now(),
    )
    .unwrap();
    let up = ipv4(C1_V4, SVC_V4, b"new agent");
    net.send(C1, &up);
    let c1_id = net.t(GW).peer_id(&net.key(C1)).unwrap();
    assert_eq!(net.take_delivered(GW), vec![(c1_id, up)]);
}

#[test]
fn replayed_initiation_to_a_fresh_state_does_not_move_the_endpoint() {
    let mut net = Net::new(None);
    let init = first_initiation(net.table(C1), &ipv4(C1_V4, SVC_V4, b"x"));
    let c1_addr = net.nodes[C1].0;
    // The genuine handshake: the key-confirmation packet sets the endpoint.
    let out = net
        .table(GW)
        .handle_datagram(c1_addr, &init, Instant::now());
    assert_eq!(
        net.t(GW).peer_stats(&net.key(C1)).unwrap().endpoint,
        None,
        "an initiation alone does not set it"
    );
    net.run(GW, out);
    assert_eq!(net.take_delivered(GW).len(), 1);
    let genuine = net.t(GW).peer_stats(&net.key(C1)).unwrap();
    assert_eq!(genuine.endpoint, Some(c1_addr));

    // Much later the state is dropped; an attacker replays the recorded initiation.
    let later = Instant::now() + STATE_IDLE_DROP + Duration::from_secs(1);
    let _ = net.table(GW).tick(later);
    assert_eq!(net.t(GW).peers_with_state(), 0);
    let attacker = SocketAddr::from(([127, 0, 0, 66], 666));
    let answer = net.table(GW).handle_datagram(attacker, &init, later);
    // It gets a response it cannot use, but the peer does not move to it.
    assert!(matches!(&answer[..], [Action::SendDatagram { to, .. }] if *to == attacker));
    let stats = net.t(GW).peer_stats(&net.key(C1)).unwrap();
    assert_eq!(stats.endpoint, Some(c1_addr));
    assert_eq!(stats.last_rx, genuine.last_rx);
}
