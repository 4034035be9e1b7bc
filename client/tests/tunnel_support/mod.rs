//! A fake gateway for the tunnel tests: common's WireGuard [`Endpoint`] and an any-IP
//! [`NetStack`] behind it, with a tiny HTTP responder on every service address (port 80)
//! and a DNS server on 100.65.0.53, plus the fake HTTPS control API answering
//! `POST /api/v1/tunnel/connect` by adding the agent's key as a peer.

#![allow(dead_code)]

use crate::fake_gateway::{FakeGateway, HOST};
use postern_common::netstack::{IpAddress, IpCidr, NetConfig, NetStack};
use postern_common::wireguard::{AllowedIp, Endpoint, EndpointConfig, KeyPair, PublicKey};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The agent's tunnel address.
pub const AGENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// The Service `svc`.
pub const SVC: Ipv4Addr = Ipv4Addr::new(100, 65, 0, 7);
/// What the DNS server answers for every name that is not `svc`.
pub const OTHER: Ipv4Addr = Ipv4Addr::new(100, 65, 0, 9);

/// The running fake gateway.
pub struct TunnelGateway {
    pub api: FakeGateway,
    /// When set, `tunnel/connect` answers this instead (a revoked Session, a failing gateway).
    pub refuse: Arc<std::sync::Mutex<Option<(u16, serde_json::Value)>>>,
    pub endpoint: Endpoint,
    pub stack: Arc<NetStack>,
    pub home: PathBuf,
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "postern-tunnel-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TunnelGateway {
    /// Starts everything; WireGuard listens on `wg_bind`.
    pub async fn start(tag: &str, wg_bind: SocketAddr) -> TunnelGateway {
        let home = temp_dir(tag);
        let keys = KeyPair::generate();
        let gw_public = keys.public.to_base64();
        let (endpoint, mut from_agents) = Endpoint::bind(
            keys,
            EndpointConfig {
                bind: wg_bind,
                tick_interval: Duration::from_millis(100),
                ..EndpointConfig::default()
            },
        )
        .await
        .unwrap();
        let (in_tx, in_rx) = mpsc::channel(1024);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1024);
        let stack = Arc::new(
            NetStack::new(
                NetConfig {
                    addresses: vec![IpCidr::new(IpAddress::v4(100, 65, 0, 1), 16)],
                    any_ip: true,
                    ..NetConfig::default()
                },
                in_rx,
                out_tx,
            )
            .unwrap(),
        );
        tokio::spawn(async move {
            while let Some(d) = from_agents.recv().await {
                let _ = in_tx.send(d.packet).await;
            }
        });
        let handle = endpoint.handle();
        tokio::spawn(async move {
            while let Some(p) = out_rx.recv().await {
                let _ = handle.send_packet(&p).await;
            }
        });
        tokio::spawn(http_responder(stack.clone()));
        tokio::spawn(dns_server(stack.clone()));

        let wg_port = endpoint.local_addr().unwrap().port();
        let peers = endpoint.handle();
        let refuse: Arc<std::sync::Mutex<Option<(u16, serde_json::Value)>>> = Arc::default();
        let refusal = refuse.clone();
        let api = FakeGateway::start(&home, move |req| match req.path.as_str() {
            "/api/v1/tunnel/connect" => {
                if let Some(answer) = refusal.lock().unwrap().clone() {
                    return answer;
                }
                let key =
                    PublicKey::from_base64(req.json()["publicKey"].as_str().unwrap()).unwrap();
                // A check-in with the key already there keeps the peer, as posternd does.
                let new_peer = peers
                    .add_peer(key, &[AllowedIp::host(IpAddr::V4(AGENT))], None, None)
                    .is_ok();
                (
                    200,
                    json!({
                        "address": format!("{AGENT}/32"), "address6": "",
                        "gatewayPublicKey": gw_public,
                        "endpoint": format!("{HOST}:{wg_port}"),
                        "serviceRange": "100.65.0.0/16", "serviceRange6": "",
                        "dns": "100.65.0.53", "dnsDomain": "local", "keepaliveSeconds": 25,
                        "services": [{"name": "svc", "address": SVC.to_string(), "port": 80, "mode": "HTTP"}],
                        "newPeer": new_peer
                    }),
                )
            }
            "/api/v1/login" => (
                200,
                json!({"accessToken": "acc-2", "expiresIn": 3600, "session": "sess-2", "user": "sidecar"}),
            ),
            _ => (200, json!({})),
        });
        let session = json!({"domain": api.domain(), "accessToken": "acc-1", "session": "sess-1",
                             "user": "dev", "expiresAt": "2099-01-01T00:00:00Z", "caFile": api.ca_file});
        std::fs::write(home.join("session.json"), session.to_string()).unwrap();
        TunnelGateway {
            api,
            refuse,
            endpoint,
            stack,
            home,
        }
    }

    /// `postern connect ARGS`, its stderr shown in the test's output.
    pub fn connect(&self, args: &[&str], api_addr: SocketAddr) -> Child {
        let mut cmd = self.postern(&[&["connect"], args].concat(), api_addr);
        cmd.stderr(Stdio::inherit()).spawn().unwrap()
    }

    /// `postern ARGS` with this home and POSTERN_GATEWAY_ADDRESS set to `api_addr`.
    pub fn postern(&self, args: &[&str], api_addr: SocketAddr) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
        cmd.args(args)
            .env("POSTERN_HOME", &self.home)
            .env("POSTERN_GATEWAY_ADDRESS", api_addr.to_string())
            .env_remove("POSTERN_DOMAIN")
            .env_remove("POSTERN_AUTH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Waits until `tunnel.json` appears and returns it (panics with the agent's stderr if
    /// it exits first).
    pub async fn wait_state(&self, child: &mut Child) -> serde_json::Value {
        let path = self.home.join("tunnel.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(v) = serde_json::from_str(&text) {
                    return v;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("postern connect exited with {status} (its stderr is above)");
            }
            assert!(Instant::now() < deadline, "no tunnel.json after 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TunnelGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Waits for the child to exit, up to `limit`.
pub async fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "postern connect did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM.
pub fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// `GET /` over an established stream; returns the body.
pub async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
) -> String {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut resp))
        .await
        .expect("response timed out")
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

async fn http_responder(stack: Arc<NetStack>) {
    let listener = stack.listen(SocketAddr::from(([0, 0, 0, 0], 80))).unwrap();
    loop {
        let Ok((mut s, local, remote)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = format!("hello from {local} to {}", remote.ip());
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Answers every A query: `svc.local` with [`SVC`], anything else with [`OTHER`].
async fn dns_server(stack: Arc<NetStack>) {
    let socket = stack
        .bind_udp(SocketAddr::from(([100, 65, 0, 53], 53)))
        .unwrap();
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let q = &buf[..n];
        let mut name = Vec::new();
        let mut pos = 12;
        while pos < n && q[pos] != 0 {
            let l = q[pos] as usize;
            name.push(String::from_utf8_lossy(&q[pos + 1..pos + 1 + l]).to_string());
            pos += 1 + l;
        }
        let qtype = u16::from_be_bytes([q[pos + 1], q[pos + 2]]);
        let ip = if name.join(".") == "svc.local" {
            SVC
        } else {
            OTHER
        };
        let mut a = q[..pos + 5].to_vec();
        a[2] = 0x81;
        a[3] = 0x80;
        a[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        if qtype == 1 {
            a[7] = 1;
            a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
            a.extend_from_slice(&ip.octets());
        }
        let _ = socket.send_to(&a, from).await;
    }
}

/// The home directory's tunnel.json path.
pub fn state_path(home: &Path) -> PathBuf {
    home.join("tunnel.json")
}
