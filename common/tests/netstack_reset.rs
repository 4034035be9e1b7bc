//! `NetStack::reset_connections`: the gateway cuts a revoked Session's connections with an
//! RST that reaches the other end at once, instead of leaving them to stall.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use postern_common::netstack::{IpAddress, IpCidr, NetConfig, NetStack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn cable() -> (NetStack, NetStack) {
    let (a_out, b_in) = mpsc::channel(256);
    let (b_out, a_in) = mpsc::channel(256);
    let gw = NetStack::new(
        NetConfig {
            addresses: vec![IpCidr::new(IpAddress::v4(10, 100, 0, 1), 16)],
            any_ip: true,
            ..NetConfig::default()
        },
        a_in,
        a_out,
    )
    .expect("gateway stack");
    let ag = NetStack::new(
        NetConfig {
            addresses: vec![IpCidr::new(CLIENT_IP.into(), 32)],
            ..NetConfig::default()
        },
        b_in,
        b_out,
    )
    .expect("agent stack");
    (gw, ag)
}

#[tokio::test]
async fn reset_reaches_the_client_and_ends_the_server_side() {
    let (gw, ag) = cable();
    let listener = gw.listen("0.0.0.0:8080".parse().unwrap()).unwrap();
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 100, 0, 5)), 8080);
    let mut client = ag.connect(target).await.expect("connect");
    let (mut server, _, remote) = listener.accept().await.expect("accept");
    assert_eq!(remote.ip(), IpAddr::V4(CLIENT_IP));
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();

    // Another address's connections are not touched.
    assert_eq!(gw.reset_connections(&["10.0.0.3".parse().unwrap()]), 0);

    let t0 = Instant::now();
    assert_eq!(gw.reset_connections(&[IpAddr::V4(CLIENT_IP)]), 1);
    assert!(
        gw.resets_sent(&[IpAddr::V4(CLIENT_IP)], Duration::from_secs(1))
            .await,
        "the RST was handed to the link"
    );
    // The idle client, which would otherwise wait forever, sees the reset, as a kernel
    // socket reports it (not as an orderly end of stream).
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(1), client.read_to_end(&mut rest))
        .await
        .expect("the client saw the reset within a second");
    assert_eq!(
        n.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    // The gateway's side ends too: reads end, writes fail.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(1), server.read_to_end(&mut rest))
        .await
        .expect("the server side ended");
    assert_eq!(
        n.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert!(server.write_all(b"late").await.is_err());
    // Nothing left to reset.
    assert_eq!(gw.reset_connections(&[IpAddr::V4(CLIENT_IP)]), 0);
}

#[tokio::test]
async fn an_orderly_close_is_still_an_end_of_stream() {
    let (gw, ag) = cable();
    let listener = gw.listen("0.0.0.0:8080".parse().unwrap()).unwrap();
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 100, 0, 5)), 8080);
    let mut client = ag.connect(target).await.expect("connect");
    let (mut server, _, _) = listener.accept().await.expect("accept");
    server.write_all(b"bye").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut got))
        .await
        .expect("the FIN arrived")
        .expect("a FIN is the end of the stream, not an error");
    assert_eq!(got, b"bye");
}
