//! Interop with an independent WireGuard implementation: `wireguard-go` in a network
//! namespace pings our endpoint's tunnel address, and our hand-built echo reply must come
//! back through its TUN interface. Skipped (with a printed reason) unless running as root
//! with `ip`, `wg`, `wireguard-go` and /dev/net/tun available.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_common::wireguard::{AllowedIp, Endpoint, EndpointConfig, KeyPair};

const HOST_VETH: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const NS_VETH: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
/// Our endpoint's tunnel address, the one `ping` targets.
const OUR_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 1);
/// wireguard-go's tunnel address.
const THEIR_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 2);

fn run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn skip_reason() -> Option<String> {
    match run(&["id", "-u"]) {
        Ok(uid) if uid.trim() == "0" => {}
        _ => return Some("not running as root".into()),
    }
    for tool in ["ip", "wg", "wireguard-go", "ping"] {
        if run(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// Removes the namespace, the veth pair, the daemon and the key file, even when the test fails.
struct Cleanup {
    ns: String,
    iface: String,
    veth: String,
    daemon: Option<Child>,
    key_file: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SIGTERM lets wireguard-go remove its interface and UAPI socket.
            let _ = run(&["kill", "-TERM", &child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface));
        let _ = run(&["ip", "netns", "del", &self.ns]);
        let _ = run(&["ip", "link", "del", &self.veth]);
        let _ = std::fs::remove_file(&self.key_file);
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Turns an IPv4 ICMP echo request into the matching echo reply.
fn echo_reply(request: &[u8]) -> Option<Vec<u8>> {
    let ihl = usize::from(request.first()? & 0x0f) * 4;
    if request[0] >> 4 != 4 || request.len() < ihl + 8 || request[9] != 1 || request[ihl] != 8 {
        return None;
    }
    let mut p = request.to_vec();
    let src: [u8; 4] = request[12..16].try_into().ok()?;
    let dst: [u8; 4] = request[16..20].try_into().ok()?;
    p[12..16].copy_from_slice(&dst);
    p[16..20].copy_from_slice(&src);
    p[8] = 64;
    p[10..12].copy_from_slice(&[0, 0]);
    let ip_sum = checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[ihl] = 0; // echo reply
    p[ihl + 2..ihl + 4].copy_from_slice(&[0, 0]);
    let icmp_sum = checksum(&p[ihl..]);
    p[ihl + 2..ihl + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wireguard_go_pings_our_endpoint() {
    if let Some(reason) = skip_reason() {
        println!("skipping wireguard-go interop test: {reason}");
        return;
    }
    let tag = std::process::id() % 100_000;
    let ns = format!("pwg{tag}");
    let iface = format!("pwg{tag}");
    let veth = format!("pwgh{tag}");
    let veth_ns = format!("pwgn{tag}");
    let key_file = std::env::temp_dir().join(format!("postern-wg-interop-{tag}.key"));
    let mut cleanup = Cleanup {
        ns: ns.clone(),
        iface: iface.clone(),
        veth: veth.clone(),
        daemon: None,
        key_file: key_file.clone(),
    };

    let host_cidr = format!("{HOST_VETH}/30");
    let ns_cidr = format!("{NS_VETH}/30");
    for cmd in [
        vec!["ip", "netns", "add", &ns],
        vec![
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &veth_ns,
        ],
        vec!["ip", "link", "set", &veth_ns, "netns", &ns],
        vec!["ip", "addr", "add", &host_cidr, "dev", &veth],
        vec!["ip", "link", "set", &veth, "up"],
        vec!["ip", "-n", &ns, "addr", "add", &ns_cidr, "dev", &veth_ns],
        vec!["ip", "-n", &ns, "link", "set", &veth_ns, "up"],
        vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
    ] {
        run(&cmd).unwrap();
    }

    // Our side: an endpoint on the host end of the veth pair.
    let ours = KeyPair::generate();
    let theirs = KeyPair::generate();
    let config = EndpointConfig {
        bind: SocketAddr::from((HOST_VETH, 0)),
        ..EndpointConfig::default()
    };
    let (endpoint, mut rx) = Endpoint::bind(ours.clone(), config).await.unwrap();
    let port = endpoint.local_addr().unwrap().port();
    endpoint
        .add_peer(
            theirs.public,
            &[AllowedIp::host(IpAddr::V4(THEIR_TUNNEL))],
            None,
            None,
        )
        .unwrap();
    let handle = endpoint.handle();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let responder = tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            if let Some(reply) = echo_reply(&d.packet) {
                seen.fetch_add(1, Ordering::SeqCst);
                handle.send_packet(&reply).await.unwrap();
            }
        }
    });

    // Their side: wireguard-go on a TUN interface inside the namespace.
    std::fs::write(&key_file, theirs.private.to_base64()).unwrap();
    let daemon = Command::new("ip")
        .args(["netns", "exec", &ns, "wireguard-go", "-f", &iface])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cleanup.daemon = Some(daemon);
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(&["ip", "netns", "exec", &ns, "wg", "show", &iface]).is_err() {
        assert!(Instant::now() < deadline, "wireguard-go did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let key_path = key_file.to_str().unwrap();
    let our_pub = ours.public.to_base64();
    let our_endpoint = format!("{HOST_VETH}:{port}");
    let our_allowed = format!("{OUR_TUNNEL}/32");
    let their_addr = format!("{THEIR_TUNNEL}/32");
    for cmd in [
        vec![
            "ip",
            "netns",
            "exec",
            &ns,
            "wg",
            "set",
            &iface,
            "private-key",
            key_path,
            "peer",
            &our_pub,
            "endpoint",
            &our_endpoint,
            "allowed-ips",
            &our_allowed,
        ],
        vec!["ip", "-n", &ns, "addr", "add", &their_addr, "dev", &iface],
        vec!["ip", "-n", &ns, "link", "set", &iface, "up"],
        vec!["ip", "-n", &ns, "route", "add", &our_allowed, "dev", &iface],
    ] {
        run(&cmd).unwrap();
    }

    let ns2 = ns.clone();
    let target = OUR_TUNNEL.to_string();
    let ping = tokio::task::spawn_blocking(move || {
        run(&[
            "ip", "netns", "exec", &ns2, "ping", "-c", "3", "-i", "0.3", "-W", "5", &target,
        ])
    })
    .await
    .unwrap();
    let stats = endpoint.peer_stats(&theirs.public).unwrap();
    responder.abort();
    drop(endpoint);
    drop(cleanup);
    let requests = requests.load(Ordering::SeqCst);

    let output = ping.expect("ping through wireguard-go to our endpoint failed");
    println!("{output}");
    assert!(output.contains("bytes from"), "{output}");
    assert!(requests >= 1, "our endpoint saw no echo request");
    assert!(stats.last_handshake.is_some());
    assert_eq!(stats.endpoint.map(|e| e.ip()), Some(IpAddr::V4(NS_VETH)));
}
