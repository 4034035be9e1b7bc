//! `postern connect` keeps checking in with the gateway: without root, against the fake
//! gateway of `tunnel_userspace.rs`. When the gateway stops accepting the Session and the
//! agent has nothing to log in again with, `postern status` says so and what to do (the
//! log line is checked by the e2e tests), and the agent backs off; a `postern login` meanwhile (a new `session.json`)
//! brings it back without a restart.

#[allow(dead_code)] // shared with cli.rs; these tests use part of it
mod fake_gateway;
mod tunnel_support;

use fake_gateway::error_body;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tunnel_support::{sigterm, wait_exit, TunnelGateway};

/// Kills the agent if the test fails before it stops it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn status_until(gw: &TunnelGateway, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = gw.postern(&["status"], gw.api.addr).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; last status:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_ins(gw: &TunnelGateway, token: &str) -> usize {
    gw.api
        .requests()
        .iter()
        .filter(|r| {
            r.path == "/api/v1/tunnel/connect"
                && r.header("authorization") == Some(&format!("Bearer {token}"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_session_is_reported_then_picked_up_after_login() {
    let gw = TunnelGateway::start("checkin", SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let mut child = gw.connect(
        &["--userspace", "-p", "0:svc:80", "--check-interval", "1s"],
        gw.api.addr,
    );
    let _kill = KillOnDrop(child.id());
    gw.wait_state(&mut child).await;
    // Checking in again and again with the same key: the gateway keeps the peer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while check_ins(&gw, "acc-1") < 3 {
        assert!(Instant::now() < deadline, "the agent does not check in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = status_until(&gw, "a check-in in status", |t| t.contains("Checked:")).await;
    assert!(!text.contains("Problem:"), "{text}");

    // The Session is revoked; this agent came from `postern login` and cannot renew it.
    *gw.refuse.lock().unwrap() = Some((
        401,
        error_body("missing or invalid access token", "unauthorized"),
    ));
    let text = status_until(&gw, "status to report the problem", |t| {
        t.contains("Problem:")
    })
    .await;
    assert!(
        text.contains("no longer accepts the session") && text.contains("postern login"),
        "{text}"
    );
    // Backoff: over 4 s of refusals, a handful of attempts, not one per 100 ms.
    let before = check_ins(&gw, "acc-1");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = check_ins(&gw, "acc-1") - before;
    assert!((1..=5).contains(&during), "{during} check-ins in 4 s");

    // `postern login` elsewhere: the running agent uses the new session at its next try.
    let session = json!({"domain": gw.api.domain(), "accessToken": "acc-3", "session": "sess-3",
                         "user": "dev", "expiresAt": "2099-01-01T00:00:00Z",
                         "caFile": gw.api.ca_file});
    std::fs::write(gw.home.join("session.json"), session.to_string()).unwrap();
    *gw.refuse.lock().unwrap() = None;
    let text = status_until(&gw, "the problem to clear", |t| {
        t.contains("Checked:") && !t.contains("Problem:")
    })
    .await;
    assert!(check_ins(&gw, "acc-3") >= 1, "{text}");

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
}
