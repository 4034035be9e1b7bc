//! Two stacks wired back to back through channels (a "cable"): the gateway side
//! listens with `any_ip` for 10.100.0.0/16, the agent side (10.0.0.2) dials in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use postern_common::netstack::{IpAddress, IpCidr, NetConfig, NetError, NetStack, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn service(host: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 100, 0, host)), 8080)
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// (gateway side, agent side), joined by two bounded channels.
fn cable_with(gateway: NetConfig, agent: NetConfig) -> (NetStack, NetStack) {
    cable_sized(gateway, agent, 256)
}

fn cable_sized(gateway: NetConfig, agent: NetConfig, packets: usize) -> (NetStack, NetStack) {
    let (a_out, b_in) = mpsc::channel(packets);
    let (b_out, a_in) = mpsc::channel(packets);
    let gw = NetStack::new(gateway, a_in, a_out).expect("gateway stack");
    let ag = NetStack::new(agent, b_in, b_out).expect("agent stack");
    (gw, ag)
}

fn gateway_config() -> NetConfig {
    NetConfig {
        addresses: vec![IpCidr::new(IpAddress::v4(10, 100, 0, 1), 16)],
        any_ip: true,
        ..NetConfig::default()
    }
}

fn agent_config() -> NetConfig {
    NetConfig {
        addresses: vec![IpCidr::new(CLIENT_IP.into(), 32)],
        ..NetConfig::default()
    }
}

fn cable() -> (NetStack, NetStack) {
    cable_with(gateway_config(), agent_config())
}

/// Deterministic bytes that make misordering or loss visible.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

async fn echo(mut s: TcpStream) {
    let (mut r, mut w) = tokio::io::split(&mut s);
    tokio::io::copy(&mut r, &mut w).await.expect("echo copy");
    w.shutdown().await.expect("echo shutdown");
}

async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn echo_one_mebibyte_both_ways() {
    let (gw, ag) = cable();
    echo_one_mebibyte(gw, ag).await;
}

/// A link that holds only 2 packets: the stacks must wait for it, not lose data.
#[tokio::test]
async fn echo_over_a_congested_link() {
    let (gw, ag) = cable_sized(gateway_config(), agent_config(), 2);
    echo_one_mebibyte(gw, ag).await;
}

async fn echo_one_mebibyte(gw: NetStack, ag: NetStack) {
    let listener = gw.listen(any(8080)).expect("listen");
    let server = tokio::spawn(async move {
        let (s, _, _) = listener.accept().await.expect("accept");
        echo(s).await;
    });
    let stream = timed(ag.connect(service(5))).await.expect("connect");
    let data = pattern(1 << 20, 7);
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut got = Vec::new();
    timed(r.read_to_end(&mut got)).await.expect("read");
    writer.await.unwrap();
    server.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(checksum(&got), checksum(&data));
}

#[tokio::test]
async fn accepted_stream_reports_destination_and_source() {
    let (gw, ag) = cable();
    let listener = gw.listen(any(8080)).expect("listen");
    let client = timed(ag.connect(service(5))).await.expect("connect");
    let (server, local, remote) = timed(listener.accept()).await.expect("accept");
    assert_eq!(local, service(5));
    assert_eq!(remote.ip(), IpAddr::V4(CLIENT_IP));
    assert_eq!(remote, client.local_addr());
    assert_eq!(server.local_addr(), local);
    assert_eq!(server.peer_addr(), remote);
    assert_eq!(client.peer_addr(), service(5));
}

#[tokio::test]
async fn half_close_keeps_the_other_direction() {
    let (gw, ag) = cable();
    let listener = gw.listen(any(8080)).expect("listen");
    let server = tokio::spawn(async move {
        let (mut s, _, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("server read");
        assert_eq!(got, b"request");
        // The client's FIN closed only its half: answering still works.
        s.write_all(b"response after FIN")
            .await
            .expect("server write");
        s.shutdown().await.expect("server shutdown");
    });
    let mut c = timed(ag.connect(service(9))).await.expect("connect");
    c.write_all(b"request").await.expect("write");
    c.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    timed(c.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"response after FIN");
    server.await.unwrap();
}

/// On a multi-threaded runtime, so wakers cross threads as they will in the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_connections() {
    let (gw, ag) = cable();
    let listener = gw.listen(any(8080)).expect("listen");
    tokio::spawn(async move {
        while let Ok((s, _, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    let ag = std::sync::Arc::new(ag);
    let mut tasks = Vec::new();
    for i in 0..50u8 {
        let ag = ag.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = ag.connect(service(10 + i)).await.expect("connect");
            let data = pattern(20_000, u32::from(i));
            s.write_all(&data).await.expect("write");
            s.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            assert_eq!(checksum(&got), checksum(&data), "connection {i}");
        }));
    }
    for t in tasks {
        timed(t).await.unwrap();
    }
}

#[tokio::test]
async fn dropping_a_stream_closes_the_peer() {
    let (gw, ag) = cable();
    let listener = gw.listen(any(8080)).expect("listen");
    let mut client = timed(ag.connect(service(5))).await.expect("connect");
    let (mut server, _, _) = timed(listener.accept()).await.expect("accept");
    drop(client_side_write(&mut client).await);
    drop(client);
    let mut got = Vec::new();
    timed(server.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"bye");

    // And the other way round: the server drops, the client sees end of stream.
    let mut client = timed(ag.connect(service(6))).await.expect("connect");
    let (server, _, _) = timed(listener.accept()).await.expect("accept");
    drop(server);
    let mut buf = [0u8; 16];
    assert_eq!(timed(client.read(&mut buf)).await.expect("read"), 0);
}

async fn client_side_write(c: &mut TcpStream) -> std::io::Result<()> {
    c.write_all(b"bye").await
}

#[tokio::test]
async fn connect_without_listener_is_refused() {
    let (_gw, ag) = cable();
    let err = timed(ag.connect(service(5)))
        .await
        .expect_err("no listener");
    assert!(matches!(err, NetError::ConnectionRefused(_)), "{err}");
}

#[tokio::test]
async fn socket_limit_is_enforced() {
    let gateway = NetConfig {
        max_tcp_sockets: 4,
        listen_backlog: 2,
        ..gateway_config()
    };
    let (gw, _ag) = cable_with(gateway, agent_config());
    let _a = gw.listen(any(80)).expect("first listener");
    let _b = gw.listen(any(81)).expect("second listener");
    let err = gw.listen(any(82)).err().expect("limit");
    assert!(matches!(err, NetError::TooManyTcpSockets(4)), "{err}");
    assert!(matches!(
        gw.listen(any(80)).err(),
        Some(NetError::AddrInUse(_))
    ));
}

#[tokio::test]
async fn udp_request_and_response() {
    let (gw, ag) = cable();
    let dns = gw.bind_udp(any(53)).expect("bind server");
    let client = ag
        .bind_udp(SocketAddr::new(IpAddr::V4(CLIENT_IP), 5353))
        .expect("bind client");
    let resolver = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 100, 0, 53)), 53);
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let (n, from, to) = dns.recv_from_to(&mut buf).await.expect("recv");
        assert_eq!(to, resolver.ip());
        let mut answer = b"answer:".to_vec();
        answer.extend_from_slice(&buf[..n]);
        dns.send_from_to(&answer, from, to).await.expect("send");
    });
    client.send_to(b"query", resolver).await.expect("send");
    let mut buf = [0u8; 512];
    let (n, from) = timed(client.recv_from(&mut buf)).await.expect("recv");
    assert_eq!(&buf[..n], b"answer:query");
    assert_eq!(from, resolver);
    server.await.unwrap();
}

#[tokio::test]
async fn throughput_micro_check() {
    let (gw, ag) = cable();
    let listener = gw.listen(any(8080)).expect("listen");
    let size = 32usize << 20;
    let sink = tokio::spawn(async move {
        let (mut s, _, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break total;
            }
            total += n;
        }
    });
    let mut c = timed(ag.connect(service(5))).await.expect("connect");
    let chunk = vec![0x5a; 64 * 1024];
    let start = Instant::now();
    for _ in 0..size / chunk.len() {
        c.write_all(&chunk).await.expect("write");
    }
    c.shutdown().await.expect("shutdown");
    let total = timed(sink).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, size);
    println!(
        "netstack throughput: {} MiB in {secs:.2} s = {:.1} MiB/s ({:.0} Mbit/s)",
        size >> 20,
        (size >> 20) as f64 / secs,
        size as f64 * 8.0 / secs / 1e6
    );
}

#[tokio::test]
async fn dropping_the_stack_ends_its_connections() {
    let (gw, ag) = cable();
    let listener = gw.listen(any(8080)).expect("listen");
    let mut client = timed(ag.connect(service(5))).await.expect("connect");
    let (mut server, _, _) = timed(listener.accept()).await.expect("accept");
    drop(gw);
    let mut buf = [0u8; 8];
    assert!(server.read(&mut buf).await.is_err(), "gateway handles fail");
    assert!(matches!(
        listener.accept().await.err(),
        Some(NetError::StackClosed)
    ));
    // The agent sees a reset (end of stream) or, once its link is gone, an error.
    let read = timed(client.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[test]
fn a_stack_needs_a_runtime() {
    let (tx, rx) = mpsc::channel(1);
    let err = NetStack::new(gateway_config(), rx, tx)
        .err()
        .expect("no runtime");
    assert!(matches!(err, NetError::NoRuntime));
}

#[tokio::test]
async fn ipv6_connections_work_alongside_ipv4() {
    let v6 = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap();
    let mut gateway = gateway_config();
    gateway
        .addresses
        .push(IpCidr::new(IpAddress::Ipv6(v6("fd10::1")), 64));
    let mut agent = agent_config();
    agent
        .addresses
        .push(IpCidr::new(IpAddress::Ipv6(v6("fd00::2")), 128));
    let (gw, ag) = cable_with(gateway, agent);
    let listener = gw
        .listen(SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            443,
        ))
        .expect("listen");
    let target = SocketAddr::new(IpAddr::V6(v6("fd10::5")), 443);
    let mut c = timed(ag.connect(target)).await.expect("connect");
    let (mut s, local, remote) = timed(listener.accept()).await.expect("accept");
    assert_eq!(local, target);
    assert_eq!(remote.ip(), IpAddr::V6(v6("fd00::2")));
    c.write_all(b"over v6").await.expect("write");
    c.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    timed(s.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"over v6");
}
