//! Keeping the tunnel up while the agent runs.
//!
//! Every `--check-interval`, soon after the Session's expiry, and with backoff after a
//! failure, the agent checks in with the gateway: `POST tunnel/connect` with the same key.
//! For a gateway that knows the peer this changes nothing. The answer says what to do
//! ([`decide`], pure): keep going; start a fresh WireGuard handshake (the gateway added the
//! key again: it restarted or expired the peer); rebuild the tunnel (new address or gateway
//! key: a new Session after logging in again); or retry later, saying why in `postern
//! status` and the log (gateway unreachable, or the Session is gone and the agent cannot log
//! in again by itself).

use super::backoff;
use super::plan::TunnelPlan;
use super::run::{add_gateway_peer, log};
use super::state::{self, TunnelState};
use chrono::{DateTime, Utc};
use postern_common::api::TunnelConnectResponse;
use postern_common::wireguard::EndpointHandle;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default time between two check-ins when all is well.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// How long after the Session's expiry the agent checks in. The gateway cuts an expired
/// Session's connections itself (its sweep runs every 200 ms); checking in well after that
/// leaves the cut to the gateway, and the agent then logs in again and rebuilds.
pub const EXPIRY_SLACK: Duration = Duration::from_millis(1500);

/// What checking in with the gateway gave (the command layer does the HTTP and the login).
#[derive(Debug)]
pub enum CheckIn {
    /// The gateway answered `tunnel/connect` for this agent's key.
    Connected(Box<TunnelConnectResponse>),
    /// The gateway could not be reached or failed; worth trying again.
    Unreachable(String),
    /// The Session is gone or expired and the agent has nothing to log in again with.
    CannotLogIn(String),
}

/// The agent's way to the control API. Blocking: called off the async runtime.
pub trait ControlPlane: Send + Sync + 'static {
    /// Checks in with the tunnel's key; logs in again first when the saved Session expired
    /// or the gateway refused it, if it can (auth token or OAuth2 client credentials).
    fn check_in(&self) -> CheckIn;
    /// When the current Session expires, when known.
    fn session_expires(&self) -> Option<DateTime<Utc>>;
}

/// What to do after a check-in.
#[derive(Debug)]
pub enum Step {
    /// All is well.
    Keep,
    /// Same address, but the gateway registered the key anew: handshake again at once.
    Rehandshake,
    /// Another address, gateway key or endpoint: bring the tunnel up again with this plan.
    Rebuild(Box<TunnelPlan>),
    /// Not connected; try again after a backoff, showing this problem meanwhile.
    Retry(String),
}

/// Decides from a check-in what the tunnel must do.
pub fn decide(current: &TunnelPlan, check: CheckIn) -> Step {
    match check {
        CheckIn::Connected(r) => match TunnelPlan::from_response(&r) {
            Ok(p)
                if p.address == current.address
                    && p.address6 == current.address6
                    && p.gateway_key == current.gateway_key
                    && p.endpoint == current.endpoint =>
            {
                if r.new_peer {
                    Step::Rehandshake
                } else {
                    Step::Keep
                }
            }
            Ok(p) => Step::Rebuild(Box::new(p)),
            Err(e) => Step::Retry(format!("the gateway's tunnel answer is not usable: {e}")),
        },
        CheckIn::Unreachable(m) | CheckIn::CannotLogIn(m) => Step::Retry(m),
    }
}

/// How long to wait before the next check-in: the interval when all is well, the backoff
/// after `failures` failures in a row, and never much past the Session's expiry.
pub fn next_check(
    failures: u32,
    interval: Duration,
    jitter: f64,
    until_expiry: Option<Duration>,
) -> Duration {
    let wait = if failures == 0 {
        interval
    } else {
        backoff::delay(failures, jitter).min(interval.max(backoff::BASE) * 2)
    };
    match until_expiry {
        Some(e) => wait.min(e + EXPIRY_SLACK),
        None => wait,
    }
}

/// Checks in with the gateway until the tunnel must be rebuilt (returns the new plan),
/// repairing what it can in place and keeping `problem` in `tunnel.json` and the log true.
pub(crate) async fn watchdog(
    control: Arc<dyn ControlPlane>,
    plan: Arc<TunnelPlan>,
    endpoint: EndpointHandle,
    gateway: SocketAddr,
    shared: Arc<Mutex<TunnelState>>,
    home: PathBuf,
    interval: Duration,
) -> Box<TunnelPlan> {
    let mut failures = 0u32;
    let mut last: Option<String> = None;
    loop {
        let until_expiry = control
            .session_expires()
            .and_then(|e| (e - Utc::now()).to_std().ok())
            .filter(|d| !d.is_zero());
        let wait = next_check(failures, interval, rand::random::<f64>(), until_expiry);
        tokio::time::sleep(wait).await;
        let c = control.clone();
        let check = tokio::task::spawn_blocking(move || c.check_in())
            .await
            .unwrap_or_else(|e| CheckIn::Unreachable(format!("the check-in failed: {e}")));
        let problem = match decide(&plan, check) {
            Step::Rebuild(next) => {
                log(&format!(
                    "the gateway gave this agent {} (a new Session, or the gateway changed); \
                     bringing the tunnel up again",
                    next.address
                ));
                return next;
            }
            Step::Rehandshake => {
                endpoint.remove_peer(&plan.gateway_key);
                match add_gateway_peer(&endpoint, &plan, gateway) {
                    Ok(()) => {
                        log(
                            "the gateway registered this agent's key anew (a new Session, a gateway \
                             restart, or a peer dropped as idle); handshaking again",
                        );
                        None
                    }
                    Err(e) => Some(format!("cannot reset the gateway peer: {e}")),
                }
            }
            Step::Keep => None,
            Step::Retry(m) => Some(m),
        };
        failures = if problem.is_some() {
            failures.saturating_add(1)
        } else {
            0
        };
        if problem != last {
            match &problem {
                Some(p) => log(&format!(
                    "the tunnel is not working: {p} (retrying with backoff)"
                )),
                None => log("the tunnel works again"),
            }
        }
        let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
        st.problem.clone_from(&problem);
        if problem.is_none() {
            st.last_check_in = Some(Utc::now());
        }
        if let Err(e) = state::save(&home, &st) {
            log(&format!("cannot update the tunnel state: {e}"));
        }
        drop(st);
        last = problem;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::plan::tests::response;

    fn plan() -> (TunnelConnectResponse, TunnelPlan) {
        let r = response();
        let p = TunnelPlan::from_response(&r).unwrap();
        (r, p)
    }

    #[test]
    fn same_peer_keeps_a_new_registration_rehandshakes() {
        let (mut r, p) = plan();
        r.new_peer = false;
        assert!(matches!(
            decide(&p, CheckIn::Connected(Box::new(r.clone()))),
            Step::Keep
        ));
        r.new_peer = true;
        assert!(matches!(
            decide(&p, CheckIn::Connected(Box::new(r))),
            Step::Rehandshake
        ));
    }

    #[test]
    fn another_address_or_gateway_key_rebuilds() {
        let (mut r, p) = plan();
        r.address = "100.64.0.9/32".into();
        match decide(&p, CheckIn::Connected(Box::new(r))) {
            Step::Rebuild(n) => assert_eq!(n.address.to_string(), "100.64.0.9/32"),
            other => panic!("{other:?}"),
        }
        let (mut r, p) = plan();
        r.gateway_public_key = postern_common::wireguard::KeyPair::generate()
            .public
            .to_base64();
        assert!(matches!(
            decide(&p, CheckIn::Connected(Box::new(r))),
            Step::Rebuild(_)
        ));
    }

    #[test]
    fn failures_retry_with_their_reason() {
        let (mut r, p) = plan();
        match decide(&p, CheckIn::CannotLogIn("session expired".into())) {
            Step::Retry(m) => assert_eq!(m, "session expired"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&p, CheckIn::Unreachable("refused".into())),
            Step::Retry(_)
        ));
        r.address = "not an address".into();
        assert!(matches!(
            decide(&p, CheckIn::Connected(Box::new(r))),
            Step::Retry(_)
        ));
    }

    #[test]
    fn next_check_backs_off_and_wakes_for_expiry() {
        let i = Duration::from_secs(30);
        assert_eq!(next_check(0, i, 0.3, None), i);
        assert_eq!(next_check(1, i, 1.0, None), Duration::from_secs(1));
        assert_eq!(next_check(3, i, 1.0, None), Duration::from_secs(4));
        assert_eq!(next_check(30, i, 1.0, None), Duration::from_secs(60));
        // A short interval (tests) keeps the backoff short too.
        let short = Duration::from_secs(1);
        assert_eq!(next_check(30, short, 1.0, None), Duration::from_secs(2));
        assert_eq!(
            next_check(0, i, 1.0, Some(Duration::from_secs(2))),
            Duration::from_secs(2) + EXPIRY_SLACK
        );
        assert_eq!(next_check(0, i, 1.0, Some(Duration::ZERO)), EXPIRY_SLACK);
    }
}
