//! The tunnel end to end in one process, without root: a real gateway (temporary data
//! directory) with its tunnel on 127.0.0.1, and an agent made of common's WireGuard
//! endpoint and network stack, configured only from the connect response.

use super::{Tunnel, TunnelOptions};
use crate::datadir::{self, DataDir, InitOptions};
use crate::identity::{SecretBox, TokenSigner};
use crate::proxy::upstream::{UpstreamClient, UpstreamOptions};
use crate::state::{Gateway, GatewayParts, Settings};
use crate::store::Store;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::recent::LogFilter;
use crate::telemetry::Telemetry;
use postern_common::api::{ApplyFile, CreateCredentialRequest, TunnelConnectResponse};
use postern_common::netstack::{IpAddress, IpCidr, NetConfig, NetStack};
use postern_common::resources::{CredentialType, Kind};
use postern_common::wireguard::{AllowedIp, Endpoint, EndpointConfig, KeyPair, PublicKey};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

async fn gateway(dir: &std::path::Path) -> Arc<Gateway> {
    gateway_with(dir, Settings::default()).await
}

/// A gateway in `dir` with `settings`.
pub(super) async fn gateway_with(dir: &std::path::Path, settings: Settings) -> Arc<Gateway> {
    datadir::init(
        dir,
        &InitOptions {
            domain: "postern.test".into(),
            tls_cert: None,
            tls_key: None,
            store: None,
        },
    )
    .unwrap();
    let dd = DataDir::new(dir);
    Gateway::open(GatewayParts {
        domain: "postern.test".into(),
        settings,
        store: Store::open(&dd.database()).unwrap(),
        secretbox: SecretBox::load(&dd.secret_key()).unwrap(),
        signer: TokenSigner::load(&dd.signing_key()).unwrap(),
        upstream: UpstreamClient::new(UpstreamOptions {
            extra_ca_pem: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(5),
        })
        .unwrap(),
        telemetry: Telemetry::new(AccessLog::disabled()),
    })
    .unwrap()
}

/// An upstream answering every request with `hello`.
pub(super) async fn upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
    addr
}

/// The agent side: our own WireGuard endpoint and network stack.
pub(super) struct Agent {
    _endpoint: Endpoint,
    pub(super) stack: NetStack,
}

pub(super) async fn agent(
    keys: KeyPair,
    conn: &TunnelConnectResponse,
    gateway: SocketAddr,
) -> Agent {
    let (endpoint, mut delivered) = Endpoint::bind(
        keys,
        EndpointConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..EndpointConfig::default()
        },
    )
    .await
    .unwrap();
    let range = |text: &str| {
        let (a, p) = text.split_once('/').unwrap();
        AllowedIp::new(a.parse().unwrap(), p.parse().unwrap()).unwrap()
    };
    endpoint
        .add_peer(
            PublicKey::from_base64(&conn.gateway_public_key).unwrap(),
            &[range(&conn.service_range), range(&conn.service_range6)],
            Some(gateway),
            Some(conn.keepalive_seconds),
        )
        .unwrap();
    let cidr = |text: &str| {
        let (a, p) = text.split_once('/').unwrap();
        IpCidr::new(
            IpAddress::from(a.parse::<IpAddr>().unwrap()),
            p.parse().unwrap(),
        )
    };
    let (in_tx, in_rx) = mpsc::channel(256);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    let stack = NetStack::new(
        NetConfig {
            addresses: vec![cidr(&conn.address), cidr(&conn.address6)],
            ..NetConfig::default()
        },
        in_rx,
        out_tx,
    )
    .unwrap();
    tokio::spawn(async move {
        while let Some(d) = delivered.recv().await {
            let _ = in_tx.send(d.packet).await;
        }
    });
    let handle = endpoint.handle();
    tokio::spawn(async move {
        while let Some(p) = out_rx.recv().await {
            let _ = handle.send_packet(&p).await;
        }
    });
    Agent {
        _endpoint: endpoint,
        stack,
    }
}

/// `GET path` to `addr` through the agent's stack; the status line's code.
async fn get(agent: &Agent, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), agent.stack.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: web.local\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))
}

pub(super) const RESOURCES: &str = r#"
kind: User
metadata: {name: alice}
spec: {type: HUMAN}
---
kind: User
metadata: {name: bob}
spec: {type: HUMAN}
---
kind: Service
metadata: {name: web}
spec:
  mode: HTTP
  config: {upstream: {url: "http://UPSTREAM"}}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - name: alice-only
              effect: ALLOW
              condition: {match: 'ctx.user.metadata.name == "alice"'}
"#;

static LOGINS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(super) fn login(gw: &Gateway, user: &str) -> crate::state::Principal {
    let cred = gw
        .create_credential(&CreateCredentialRequest {
            name: format!(
                "{user}-token-{}",
                LOGINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            user: user.into(),
            credential_type: CredentialType::AuthToken,
            ttl_seconds: None,
        })
        .unwrap();
    let out = gw.login(&cred.auth_token.unwrap()).unwrap().unwrap();
    gw.authenticate(&out.access_token).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reaches_private_service_by_address_identity() {
    let dir = std::env::temp_dir().join(format!("postern-tunnel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let gw = gateway(&dir).await;
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
    let udp = tunnel.local_addr().unwrap();

    let alice = login(&gw, "alice");
    let keys = KeyPair::generate();
    let conn = tunnel
        .connect(&gw, &alice, &keys.public.to_base64())
        .unwrap();
    assert_eq!(conn.address, "100.64.0.2/32");
    assert_eq!(conn.endpoint, "postern.test:51820");
    let web = &conn.services[0];
    assert_eq!((web.name.as_str(), web.port), ("web", 80));
    let web_addr = SocketAddr::new(web.address.parse().unwrap(), 80);
    let a = agent(keys, &conn, udp).await;
    // Let the listener pick up the Service.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&a, web_addr, "/x").await, Ok(200));
    let log = gw.telemetry.recent.tail(&LogFilter::default(), 10);
    let last = log.last().unwrap();
    assert_eq!(
        (last.via.as_str(), last.user.as_deref(), last.status),
        ("tunnel", Some("alice"), 200)
    );

    // DNS through the tunnel.
    let dns = a
        .stack
        .bind_udp(SocketAddr::new(
            conn.address.split_once('/').unwrap().0.parse().unwrap(),
            5353,
        ))
        .unwrap();
    let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["web", "local"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    dns.send_to(&q, "100.65.0.53:53".parse().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), dns.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let ip: IpAddr = web.address.parse().unwrap();
    let IpAddr::V4(v4) = ip else { panic!() };
    assert_eq!(&buf[n - 4..n], &v4.octets());

    // bob is denied by policy.
    let bob = login(&gw, "bob");
    let bob_keys = KeyPair::generate();
    let bob_conn = tunnel
        .connect(&gw, &bob, &bob_keys.public.to_base64())
        .unwrap();
    let b = agent(bob_keys, &bob_conn, udp).await;
    assert_eq!(get(&b, web_addr, "/x").await, Ok(403));

    // Deleting alice's session removes her peer at once.
    assert_eq!(tunnel.peer_count(), 2);
    gw.delete(Kind::Session, &alice.session.info.name).unwrap();
    assert_eq!(tunnel.peer_count(), 1);
    assert!(get(&a, web_addr, "/after").await.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An HTTP/1.1 keep-alive connection through the agent that has answered one request and
/// stays open.
async fn keep_alive(agent: &Agent, addr: SocketAddr) -> postern_common::netstack::TcpStream {
    let mut s = agent.stack.connect(addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nhost: web.local\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{seen:?}");
    s
}

/// How long until `s` ends (EOF or error), at most 3 s.
async fn time_to_end(s: &mut postern_common::netstack::TcpStream) -> Option<Duration> {
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn start_tunnel(gw: &Arc<Gateway>, dir: &std::path::Path) -> Arc<Tunnel> {
    Tunnel::start(
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
    .unwrap()
}

/// Session deleted, User disabled, Session expired, User deleted: each cuts the Session's
/// open keep-alive connection within a second (it stalled forever before) and removes its peer; the other Session keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_sessions_have_their_connections_reset() {
    let dir = std::env::temp_dir().join(format!("postern-tunnel-rv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = Settings {
        token_ttl: Duration::from_secs(3),
        ..Settings::default()
    };
    let gw = gateway_with(&dir, settings).await;
    let up = upstream().await;
    let everyone = RESOURCES.replace("UPSTREAM", &up.to_string()).replace(
        r#"match: 'ctx.user.metadata.name == "alice"'"#,
        "match: 'true'",
    );
    let apply = |text: String| {
        gw.apply(
            &[ApplyFile {
                file: "t.yaml".into(),
                content: text,
            }],
            false,
        )
        .unwrap()
    };
    apply(everyone.clone());
    let tunnel = start_tunnel(&gw, &dir).await;
    let udp = tunnel.local_addr().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let connect = |p: &crate::state::Principal| {
        let keys = KeyPair::generate();
        let conn = tunnel.connect(&gw, p, &keys.public.to_base64()).unwrap();
        (keys, conn)
    };
    let bob = login(&gw, "bob");
    let (bob_keys, bob_conn) = connect(&bob);
    let bob_key = bob_keys.public;
    let b = agent(bob_keys, &bob_conn, udp).await;
    let web = SocketAddr::new(bob_conn.services[0].address.parse().unwrap(), 80);

    // 1. Session deleted.
    let alice = login(&gw, "alice");
    let (keys, conn) = connect(&alice);
    assert!(conn.new_peer);
    // Checking in again with the same key keeps the peer as it is.
    let again = tunnel
        .connect(&gw, &alice, &keys.public.to_base64())
        .unwrap();
    assert!(!again.new_peer);
    assert_eq!(again.address, conn.address);
    let alice_key = keys.public;
    let a = agent(keys, &conn, udp).await;
    let mut s = keep_alive(&a, web).await;
    let mut bob_s = keep_alive(&b, web).await;
    gw.delete(Kind::Session, &alice.session.info.name).unwrap();
    let took = time_to_end(&mut s).await.expect("reset after deletion");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(tunnel.peer_count(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        tunnel.endpoint().peer_stats(&alice_key).is_none(),
        "the WireGuard peer is removed once the resets are out"
    );

    // 2. User disabled (an apply, not a deletion: only the sweep can notice).
    let alice = login(&gw, "alice");
    let (keys, conn) = connect(&alice);
    let a = agent(keys, &conn, udp).await;
    let mut s = keep_alive(&a, web).await;
    apply(everyone.replacen(
        "metadata: {name: alice}\nspec: {type: HUMAN}",
        "metadata: {name: alice}\nspec: {type: HUMAN, isDisabled: true}",
        1,
    ));
    let took = time_to_end(&mut s).await.expect("reset after disabling");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(tunnel.peer_count(), 1);
    apply(everyone.clone());

    // 3. Session expired (a workload's OAuth2 token, 3 s TTL), with no request arriving.
    let cred = gw
        .create_credential(&CreateCredentialRequest {
            name: "alice-oauth".into(),
            user: "alice".into(),
            credential_type: CredentialType::Oauth2,
            ttl_seconds: None,
        })
        .unwrap();
    let token = gw
        .grant_client_credentials(
            cred.client_id.as_deref().unwrap(),
            cred.client_secret.as_deref().unwrap(),
        )
        .unwrap()
        .unwrap();
    let alice = gw.authenticate(&token.access_token).unwrap();
    let expires = alice.session.expires_unix;
    let (keys, conn) = connect(&alice);
    let a = agent(keys, &conn, udp).await;
    let mut s = keep_alive(&a, web).await;
    let t0 = std::time::Instant::now();
    let took = time_to_end(&mut s).await;
    let took = match took {
        Some(t) => t,
        None => time_to_end(&mut s).await.expect("reset after expiry"),
    };
    let late = crate::state::now_unix() - expires;
    assert!(
        late <= 1,
        "cut {late}s after expiry ({:?})",
        t0.elapsed() + took
    );
    assert_eq!(tunnel.peer_count(), 1);
    let listed = || {
        gw.list_sessions()
            .iter()
            .any(|x| x.name == alice.session.info.name)
    };
    for _ in 0..20 {
        if !listed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!listed(), "the expired session is gone from `get sessions`");

    // 4. User deleted.
    let alice = login(&gw, "alice");
    let (keys, conn) = connect(&alice);
    let a = agent(keys, &conn, udp).await;
    let mut s = keep_alive(&a, web).await;
    gw.delete(Kind::User, "alice").unwrap();
    let took = time_to_end(&mut s)
        .await
        .expect("reset after deleting the user");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(tunnel.peer_count(), 1);

    // bob, valid all along, still has his connection and his peer.
    bob_s
        .write_all(b"GET /still HTTP/1.1\r\nhost: web.local\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), bob_s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(tunnel.peer_count(), 1);

    // Disconnecting and connecting again at once with the same key (its old peer is still
    // draining) gets a working peer.
    assert!(tunnel.disconnect(&bob.session.info.name));
    let back = tunnel.connect(&gw, &bob, &bob_key.to_base64()).unwrap();
    assert!(back.new_peer);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(tunnel.endpoint().peer_stats(&bob_key).is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}
