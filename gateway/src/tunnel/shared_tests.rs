//! Two gateways on one store, each with its tunnel: addresses are claimed in the store, so
//! no address is handed out twice, and a claim goes with its peer (disconnect, a Session
//! deleted through the other gateway, a restart).

use super::loopback_tests::{gateway_with, login, RESOURCES};
use super::{Tunnel, TunnelOptions};
use crate::datadir::DataDir;
use crate::identity::{SecretBox, TokenSigner};
use crate::proxy::upstream::{UpstreamClient, UpstreamOptions};
use crate::state::sync::SyncPlan;
use crate::state::{Gateway, GatewayParts, Settings};
use crate::store::Store;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::Telemetry;
use postern_common::api::ApplyFile;
use postern_common::resources::Kind;
use postern_common::wireguard::KeyPair;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn named(name: &str) -> Settings {
    Settings {
        gateway_name: name.into(),
        ..Settings::default()
    }
}

/// A second gateway on the data directory (and so the database) `dir` was initialised with.
fn join(dir: &Path, name: &str) -> Arc<Gateway> {
    let dd = DataDir::new(dir);
    Gateway::open(GatewayParts {
        domain: "postern.test".into(),
        settings: named(name),
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

async fn start(gw: &Arc<Gateway>, dir: &Path) -> Arc<Tunnel> {
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

/// Connects a fresh Session of `user` (logged in through `gw`) and returns its session
/// name and tunnel IPv4 address.
fn connect(tunnel: &Arc<Tunnel>, gw: &Gateway, user: &str) -> (String, String) {
    let p = login(gw, user);
    let r = tunnel
        .connect(gw, &p, &KeyPair::generate().public.to_base64())
        .unwrap();
    (p.session.info.name.clone(), r.address)
}

/// Waits up to 2 s for `f` to hold.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{what}: not within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_store_never_hand_out_the_same_address() {
    let dir = std::env::temp_dir().join(format!("postern-tunnel-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = gateway_with(&dir, named("gw-a")).await;
    let b = join(&dir, "gw-b");
    a.apply(
        &[ApplyFile {
            file: "t.yaml".into(),
            content: RESOURCES.replace("UPSTREAM", "127.0.0.1:9"),
        }],
        false,
    )
    .unwrap();
    b.apply_sync(&SyncPlan::everything()).unwrap();
    let store = Store::open(&DataDir::new(&dir).database()).unwrap();

    // Claims left by each gateway's previous run: a gateway drops only its own at start.
    assert!(store.claim_tunnel_address(2, "ghost-a", "gw-a").unwrap());
    assert!(store.claim_tunnel_address(3, "ghost-b", "gw-b").unwrap());
    let ta = start(&a, &dir).await;
    assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![3]);
    let tb = start(&b, &dir).await;
    assert_eq!(store.claimed_tunnel_addresses().unwrap(), Vec::<u16>::new());

    // Sessions connecting through either gateway in turn: each address once.
    let (s1, a1) = connect(&ta, &a, "alice");
    let (s2, a2) = connect(&tb, &b, "alice");
    let (_s3, a3) = connect(&ta, &a, "bob");
    let (_s4, a4) = connect(&tb, &b, "bob");
    assert_eq!(
        [a1.as_str(), &a2, &a3, &a4],
        [
            "100.64.0.2/32",
            "100.64.0.3/32",
            "100.64.0.4/32",
            "100.64.0.5/32"
        ]
    );
    assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![2, 3, 4, 5]);
    assert_eq!(store.tunnel_address_of(&s2).unwrap(), Some(3));

    // A disconnect releases the claim: the address goes to the next Session on the other
    // gateway.
    assert!(ta.disconnect(&s1));
    eventually("the disconnected Session's claim released", || {
        store.tunnel_address_of(&s1).unwrap().is_none()
    })
    .await;
    let (_s5, a5) = connect(&tb, &b, "alice");
    assert_eq!(a5, "100.64.0.2/32");

    // A Session deleted through gateway A while its peer is on B: B hears of it as the
    // change feed tells it (a Sessions notice naming it), cuts the peer and releases the
    // claim; A does not hold the peer and so never had it to release.
    a.apply_sync(&SyncPlan {
        sessions_changed: vec![s2.clone()],
        ..SyncPlan::default()
    })
    .unwrap();
    a.delete(Kind::Session, &s2).unwrap();
    assert_eq!(tb.peer_count(), 3);
    b.apply_sync(&SyncPlan {
        sessions_changed: vec![s2.clone()],
        ..SyncPlan::default()
    })
    .unwrap();
    assert_eq!(tb.peer_count(), 2);
    eventually("the deleted Session's claim released", || {
        store.tunnel_address_of(&s2).unwrap().is_none()
    })
    .await;
    // Gateway A now hands that address out (its own peers and claims are 4).
    let (_s6, a6) = connect(&ta, &a, "alice");
    assert_eq!(a6, "100.64.0.3/32");
    assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![2, 3, 4, 5]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Session that disconnects and reconnects at once, over and over: whatever address it
/// gets (a fresh one while its old peer drains, else the lowest), the release queued for
/// its old peer never takes the new claim, and it holds exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_session_holds_one_claim() {
    let dir = std::env::temp_dir().join(format!("postern-tunnel-reclaim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let gw = gateway_with(&dir, named("gw-a")).await;
    gw.apply(
        &[ApplyFile {
            file: "t.yaml".into(),
            content: RESOURCES.replace("UPSTREAM", "127.0.0.1:9"),
        }],
        false,
    )
    .unwrap();
    let store = Store::open(&DataDir::new(&dir).database()).unwrap();
    let t = start(&gw, &dir).await;
    let alice = login(&gw, "alice");
    let sid = alice.session.info.name.clone();
    let key = KeyPair::generate().public.to_base64();
    let first = t.connect(&gw, &alice, &key).unwrap();
    assert_eq!(first.address, "100.64.0.2/32");
    // Checking in with the same key keeps the address.
    assert_eq!(t.connect(&gw, &alice, &key).unwrap().address, first.address);
    for _ in 0..20 {
        assert!(t.disconnect(&sid));
        let again = t.connect(&gw, &alice, &key).unwrap();
        let index: u16 = again
            .address
            .trim_end_matches("/32")
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // Let the queued release run; it must skip the Session connected again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.tunnel_address_of(&sid).unwrap(), Some(index));
        assert_eq!(store.claimed_tunnel_addresses().unwrap(), vec![index]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
