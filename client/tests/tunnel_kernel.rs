//! `postern connect` in kernel mode, inside a network namespace: a TUN device with a route
//! for the service range only, DNS for `*.local` through the tunnel, and everything put
//! back on SIGTERM. Needs root, /dev/net/tun and veth; otherwise it prints why and passes.

#[allow(dead_code)] // shared with cli.rs; these tests use part of it
mod fake_gateway;
mod tunnel_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tunnel_support::{sigterm, state_path, wait_exit, TunnelGateway, SVC};

const HOST_IP: &str = "10.213.0.1";
const NS_IP: &str = "10.213.0.2";

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace joined to the host by a veth pair; removed on drop.
struct Netns {
    name: String,
    veth: String,
    etc: PathBuf,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("pstn{id}"),
            veth: format!("pvh{id}"),
            etc: PathBuf::from(format!("/etc/netns/pstn{id}")),
        };
        let peer = format!("pvn{id}");
        sh(&["ip", "netns", "add", &ns.name])?;
        sh(&[
            "ip", "link", "add", &ns.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        sh(&["ip", "link", "set", &peer, "netns", &ns.name])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            &ns.veth,
        ])?;
        sh(&["ip", "link", "set", &ns.veth, "up"])?;
        let n = |args: &[&str]| {
            let mut v = vec!["ip", "-n", ns.name.as_str()];
            v.extend_from_slice(args);
            sh(&v)
        };
        n(&["addr", "add", &format!("{NS_IP}/24"), "dev", &peer])?;
        n(&["link", "set", &peer, "up"])?;
        n(&["link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&ns.etc).map_err(|e| e.to_string())?;
        std::fs::write(ns.etc.join("resolv.conf"), "nameserver 192.0.2.1\n")
            .map_err(|e| e.to_string())?;
        Ok(ns)
    }

    fn resolv_conf(&self) -> PathBuf {
        self.etc.join("resolv.conf")
    }

    fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.veth]);
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if sh(&["ip", "-V"]).is_err() {
        return Some("no `ip` (iproute2)".into());
    }
    None
}

/// Forwards TCP from `listen` to `to` (the fake control API listens on 127.0.0.1 only).
async fn forward(listen: SocketAddr, to: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kernel_mode_in_a_network_namespace() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED kernel_mode_in_a_network_namespace: {why}");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            println!("SKIPPED kernel_mode_in_a_network_namespace: cannot set up a namespace: {e}");
            return;
        }
    };
    let gw = TunnelGateway::start("kernel", format!("{HOST_IP}:0").parse().unwrap()).await;
    let api = forward(format!("{HOST_IP}:0").parse().unwrap(), gw.api.addr).await;
    let original = std::fs::read_to_string(ns.resolv_conf()).unwrap();

    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_postern")])
        .args(["connect", "--interface", "pstn0"])
        .env("POSTERN_HOME", &gw.home)
        .env("POSTERN_GATEWAY_ADDRESS", api.to_string())
        .env("POSTERN_RESOLV_CONF", ns.resolv_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let state = gw.wait_state(&mut child).await;
    assert_eq!(state["mode"], "kernel");
    assert_eq!(state["interface"], "pstn0");

    let routes = ns.exec(&["ip", "route"]).unwrap();
    assert!(routes.contains("100.65.0.0/16 dev pstn0"), "{routes}");
    assert!(
        !routes
            .lines()
            .any(|l| l.starts_with("default") && l.contains("pstn0")),
        "{routes}"
    );
    let link = ns.exec(&["ip", "link", "show", "pstn0"]).unwrap();
    assert!(link.contains("mtu 1420"), "{link}");
    let resolv = std::fs::read_to_string(ns.resolv_conf()).unwrap();
    assert!(
        resolv.contains("nameserver 100.65.0.53\nnameserver 192.0.2.1"),
        "{resolv}"
    );

    if sh(&["curl", "--version"]).is_ok() {
        let body = ns
            .exec(&["curl", "-sS", "--max-time", "15", &format!("http://{SVC}/")])
            .unwrap();
        assert_eq!(body, format!("hello from {SVC}:80 to 100.64.0.2"));
        let nss = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
        if nss.contains("mdns") {
            println!("name lookup not checked: nsswitch.conf sends .local to mDNS");
        } else {
            let body = ns
                .exec(&["curl", "-sS", "--max-time", "15", "http://svc.local/"])
                .unwrap();
            assert_eq!(body, format!("hello from {SVC}:80 to 100.64.0.2"));
        }
    } else {
        println!("HTTP not checked: no curl");
    }

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(std::fs::read_to_string(ns.resolv_conf()).unwrap(), original);
    assert!(
        ns.exec(&["ip", "link", "show", "pstn0"]).is_err(),
        "device left behind"
    );
    assert!(!state_path(&gw.home).exists());
}
