//! The tunnel's HTTP Services meet the front door's limits (`Settings::client_limits`): a
//! connection that sends no request is closed at the header time, and a request with too
//! many header fields gets 431.

use super::loopback_tests::{agent, gateway_with, login, upstream, Agent, RESOURCES};
use super::{Tunnel, TunnelOptions};
use crate::frontdoor::limits::Limits;
use crate::state::Settings;
use postern_common::api::ApplyFile;
use postern_common::wireguard::KeyPair;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` to `addr` through the agent's stack; everything the server sent back before
/// closing, and how long it took to close.
async fn exchange(agent: &Agent, addr: SocketAddr, raw: &[u8]) -> (String, Duration) {
    let mut s = tokio::time::timeout(Duration::from_secs(5), agent.stack.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let start = Instant::now();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_http_services_apply_the_client_limits() {
    let dir = std::env::temp_dir().join(format!("postern-tunnel-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = Settings {
        client_limits: Limits {
            header_read: Duration::from_secs(1),
            max_headers: 8,
            ..Limits::default()
        },
        ..Settings::default()
    };
    let gw = gateway_with(&dir, settings).await;
    let up = upstream().await;
    gw.apply(
        &[ApplyFile {
            file: "t.yaml".into(),
            content: RESOURCES.replace("UPSTREAM", &up.to_string()),
        }],
        false,
    )
    .unwrap();
    let tunnel = Tunnel::start(
        gw.clone(),
        TunnelOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_endpoint: "postern.test:51820".into(),
            key_path: dir.join("wg.key"),
            idle_timeout: Duration::from_secs(600),
            keepalive: 25,
        },
    )
    .await
    .unwrap();
    let alice = login(&gw, "alice");
    let keys = KeyPair::generate();
    let conn = tunnel
        .connect(&gw, &alice, &keys.public.to_base64())
        .unwrap();
    let web = SocketAddr::new(conn.services[0].address.parse().unwrap(), 80);
    let a = agent(keys, &conn, tunnel.local_addr().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ok = b"GET /x HTTP/1.1\r\nhost: web.local\r\nconnection: close\r\n\r\n";
    let (answer, _) = exchange(&a, web, ok).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut many = String::from("GET /x HTTP/1.1\r\nhost: web.local\r\nconnection: close\r\n");
    for i in 0..12 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (answer, _) = exchange(&a, web, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let (answer, took) = exchange(&a, web, b"GET /x HTTP/1.1\r\nhost: web").await;
    assert!(answer.is_empty(), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "a slow head was closed after {took:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
