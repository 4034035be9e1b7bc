//! Two WireGuard endpoints over real UDP sockets on 127.0.0.1 exchange IP packets.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_common::wireguard::{AllowedIp, Endpoint, EndpointConfig, KeyPair};
use tokio::time::timeout;

fn ipv4_udp(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&5353u16.to_be_bytes());
    p[22..24].copy_from_slice(&53u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const SERVICE: [u8; 4] = [10, 1, 0, 7];

fn loopback() -> EndpointConfig {
    EndpointConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        tick_interval: Duration::from_millis(100),
        ..EndpointConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_exchange_packets_over_udp() {
    let gw_keys = KeyPair::generate();
    let client_keys = KeyPair::generate();
    let (gateway, mut gw_rx) = Endpoint::bind(gw_keys.clone(), loopback()).await.unwrap();
    let (client, mut client_rx) = Endpoint::bind(client_keys.clone(), loopback())
        .await
        .unwrap();

    gateway
        .add_peer(
            client_keys.public,
            &[AllowedIp::host(IpAddr::from(CLIENT))],
            None,
            None,
        )
        .unwrap();
    client
        .add_peer(
            gw_keys.public,
            &[AllowedIp::new(IpAddr::from([10, 1, 0, 0]), 16).unwrap()],
            Some(gateway.local_addr().unwrap()),
            Some(25),
        )
        .unwrap();

    // Up: the first packet triggers the handshake and arrives once it completes.
    let up = ipv4_udp(CLIENT, SERVICE, b"query");
    client.send_packet(&up).await.unwrap();
    let got = timeout(Duration::from_secs(5), gw_rx.recv())
        .await
        .expect("gateway received nothing")
        .unwrap();
    assert_eq!(got.packet, up);
    assert_eq!(got.public_key, client_keys.public);

    // Down, and a burst both ways from another task through a cloned handle.
    let down = ipv4_udp(SERVICE, CLIENT, b"answer");
    gateway.send_packet(&down).await.unwrap();
    let got = timeout(Duration::from_secs(5), client_rx.recv())
        .await
        .expect("client received nothing")
        .unwrap();
    assert_eq!(got.packet, down);
    assert_eq!(got.public_key, gw_keys.public);

    let handle = client.handle();
    let sender = tokio::spawn(async move {
        for i in 0..50u8 {
            handle
                .send_packet(&ipv4_udp(CLIENT, SERVICE, &[i; 100]))
                .await
                .unwrap();
        }
    });
    for i in 0..50u8 {
        gateway
            .send_packet(&ipv4_udp(SERVICE, CLIENT, &[i; 200]))
            .await
            .unwrap();
    }
    sender.await.unwrap();
    let mut up_count = 0;
    while up_count < 50 {
        match timeout(Duration::from_secs(2), gw_rx.recv()).await {
            Ok(Some(_)) => up_count += 1,
            _ => break,
        }
    }
    let mut down_count = 0;
    while down_count < 50 {
        match timeout(Duration::from_secs(2), client_rx.recv()).await {
            Ok(Some(_)) => down_count += 1,
            _ => break,
        }
    }
    // Loopback UDP does not lose packets at this rate.
    assert_eq!((up_count, down_count), (50, 50));

    let stats = gateway.peer_stats(&client_keys.public).unwrap();
    assert_eq!(stats.endpoint, Some(client.local_addr().unwrap()));
    assert!(stats.last_handshake.is_some());
    assert!(stats.rx_bytes > 50 * 100);

    // Deleting the session removes the peer at once: nothing more is delivered.
    assert!(gateway.remove_peer(&client_keys.public).is_some());
    client
        .send_packet(&ipv4_udp(CLIENT, SERVICE, b"late"))
        .await
        .unwrap();
    assert!(timeout(Duration::from_millis(400), gw_rx.recv())
        .await
        .is_err());
    assert!(gateway.stats().counters.unknown_peer_dropped >= 1);
}
