//! `postern connect --userspace` end to end: the built binary against a fake gateway made
//! of real WireGuard and a netstack; `-p` and `--socks5` reach a Service; `status` shows
//! it; SIGTERM and `postern disconnect` end it cleanly.

#[allow(dead_code)] // shared with cli.rs; these tests use part of it
mod fake_gateway;
mod tunnel_support;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_support::{http_get, sigterm, state_path, wait_exit, TunnelGateway, OTHER, SVC};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_reaches_the_service_and_sigterm_cleans_up() {
    let gw = TunnelGateway::start("publish", loopback()).await;
    let mut child = gw.connect(&["--userspace", "-p", "0:svc:80"], gw.api.addr);
    let state = gw.wait_state(&mut child).await;
    assert_eq!(state["mode"], "userspace");
    assert_eq!(state["address"], "100.64.0.2/32");
    let port = state["published"][0]["localPort"].as_u64().unwrap() as u16;
    assert_ne!(port, 0);
    let mode = std::fs::metadata(state_path(&gw.home)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    for _ in 0..3 {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let body = http_get(s, "svc.local").await;
        assert_eq!(body, format!("hello from {SVC}:80 to 100.64.0.2"));
    }

    let connect = gw
        .api
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v1/tunnel/connect")
        .unwrap();
    assert_eq!(connect.header("authorization"), Some("Bearer acc-1"));

    // status sees the handshake once the state has been refreshed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = gw.postern(&["status"], gw.api.addr).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("100.64.0.2/32"), "{text}");
    assert!(
        text.contains("svc") && text.contains("100.65.0.7:80"),
        "{text}"
    );
    assert!(text.contains(" ago"), "handshake age missing: {text}");
    assert!(!text.contains("Bytes:     0 in"), "{text}");

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert!(!state_path(&gw.home).exists(), "tunnel.json left behind");
    assert!(gw
        .api
        .requests()
        .iter()
        .any(|r| r.path == "/api/v1/tunnel/disconnect"));
    let out = gw.postern(&["status"], gw.api.addr).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not connected"));
}

async fn socks5_connect(proxy: SocketAddr, host: &str, port: u16) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0]);
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[..2], [5, 0], "SOCKS5 reply for {host}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn socks5_resolves_names_in_the_tunnel_and_disconnect_stops_it() {
    let gw = TunnelGateway::start("socks", loopback()).await;
    let mut child = gw.connect(&["--userspace", "--socks5", "127.0.0.1:0"], gw.api.addr);
    let state = gw.wait_state(&mut child).await;
    let proxy: SocketAddr = state["socks5"].as_str().unwrap().parse().unwrap();

    // From the Services list, then through the tunnel's DNS server.
    let body = http_get(socks5_connect(proxy, "svc.local", 80).await, "svc.local").await;
    assert_eq!(body, format!("hello from {SVC}:80 to 100.64.0.2"));
    let body = http_get(
        socks5_connect(proxy, "other.local", 80).await,
        "other.local",
    )
    .await;
    assert_eq!(body, format!("hello from {OTHER}:80 to 100.64.0.2"));

    let out = gw.postern(&["disconnect"], gw.api.addr).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Disconnected"));
    let status = wait_exit(&mut child, Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status}");
    assert!(!state_path(&gw.home).exists());
    let out = gw.postern(&["disconnect"], gw.api.addr).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Not connected"));
}

#[test]
fn flags_are_checked_before_connecting() {
    let bin = env!("CARGO_BIN_EXE_postern");
    let home = tunnel_support::temp_dir("flags");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .env("POSTERN_HOME", &home)
            .env_remove("POSTERN_DOMAIN")
            .env_remove("POSTERN_AUTH_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(&["connect", "-p", "80:svc:80"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--userspace"));
    let out = run(&["connect", "--userspace", "-p", "bad"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOCAL:SERVICE:PORT"));
    let out = run(&["connect", "--userspace"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("-p LOCAL:SERVICE:PORT or --socks5"));
    let out = run(&["connect", "--userspace", "-p", "0:svc:80"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_logs_in_from_the_environment() {
    let gw = TunnelGateway::start("sidecar", loopback()).await;
    std::fs::remove_file(gw.home.join("session.json")).unwrap();
    let mut child = gw
        .postern(
            &["connect", "--userspace", "-p", "0:svc.local:80"],
            gw.api.addr,
        )
        .env("POSTERN_DOMAIN", gw.api.domain())
        .env("POSTERN_AUTH_TOKEN", "tok-1")
        .env("POSTERN_CA_FILE", &gw.api.ca_file)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let state = gw.wait_state(&mut child).await;
    let port = state["published"][0]["localPort"].as_u64().unwrap() as u16;
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(
        http_get(s, "svc").await,
        format!("hello from {SVC}:80 to 100.64.0.2")
    );
    let requests = gw.api.requests();
    assert_eq!(requests[0].path, "/api/v1/login");
    assert_eq!(requests[0].json()["authToken"], "tok-1");
    assert_eq!(requests[1].header("authorization"), Some("Bearer acc-2"));
    assert!(gw.home.join("session.json").exists());
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15))
        .await
        .success());
}
