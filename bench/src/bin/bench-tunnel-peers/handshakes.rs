//! The handshake load: many registered peers, each a boringtun `Tunn` as initiator, firing
//! handshake initiations at the gateway's WireGuard port over one UDP socket and starting the
//! next handshake as soon as the previous one completed.
//!
//! A completed handshake is a handshake response the peer accepted; the peer then sends the
//! key-confirmation keepalive, as a real initiator does. Cookie replies (the gateway is "under
//! load" past its handshake rate limit) are fed to the peer's `Tunn`, which stores the cookie
//! and resends the initiation with a valid MAC2, as WireGuard prescribes; they are counted.
//! An initiation unanswered for a second is resent and counted as a timeout.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::Serialize;

/// How long an initiation may go unanswered before it is resent.
const RESEND_AFTER: Duration = Duration::from_secs(1);
/// WireGuard message types (first byte, little-endian u32).
const HANDSHAKE_RESPONSE: u8 = 2;
const COOKIE_REPLY: u8 = 3;

/// What the load produced, printed as JSON.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Peers taking part (each with its own key, registered through the API).
    pub peers: usize,
    /// Length of the measured window, after the warm-up.
    pub measured_seconds: f64,
    /// Handshakes completed in the measured window.
    pub measured_handshakes: u64,
    /// `measured_handshakes / measured_seconds`.
    pub handshakes_per_second: f64,
    /// Handshakes completed in the whole run (warm-up included).
    pub total_handshakes: u64,
    /// Initiations sent in the whole run (first sends, cookie resends and timeouts).
    pub initiations_sent: u64,
    /// Cookie replies received in the whole run.
    pub cookie_replies: u64,
    /// Initiations resent after [`RESEND_AFTER`] without an answer.
    pub timeouts: u64,
    /// Handshake time (first initiation to accepted response), milliseconds, measured window.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
}

struct Peer {
    tunn: Tunn,
    /// When the current handshake's first initiation went out.
    started: Instant,
    /// When the last initiation (first or resent) went out.
    last_sent: Instant,
}

/// Runs the load for `warmup + duration` and reports the measured part.
pub fn run(
    gateway: SocketAddr,
    gateway_key: [u8; 32],
    private_keys: &[[u8; 32]],
    warmup: Duration,
    duration: Duration,
) -> std::io::Result<Report> {
    let bind: SocketAddr = if gateway.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let gw_public = PublicKey::from(gateway_key);
    let now = Instant::now();
    let mut peers: Vec<Peer> = private_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let secret = StaticSecret::from(*k);
            // A peer's own limiter checks MAC1 with its own key and guards its side against
            // floods; with no real limit it never demands cookies from the gateway's responses.
            let limiter = RateLimiter::new(&PublicKey::from(&secret), u64::MAX / 4);
            Peer {
                tunn: Tunn::new(
                    secret,
                    gw_public,
                    None,
                    None,
                    u32::try_from(i + 1).expect("fewer than 2^24 peers"),
                    Some(Arc::new(limiter)),
                ),
                started: now,
                last_sent: now,
            }
        })
        .collect();

    let mut report = Report {
        peers: peers.len(),
        ..Report::default()
    };
    let mut buf = vec![0u8; 2048];
    let mut datagram = vec![0u8; 2048];
    let mut latencies: Vec<f64> = Vec::new();
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    for p in peers.iter_mut() {
        send_initiation(&socket, gateway, p, &mut buf, false, &mut report);
    }
    let mut next_sweep = Instant::now() + Duration::from_millis(100);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_sweep {
            next_sweep = now + Duration::from_millis(100);
            for p in peers.iter_mut() {
                if now.duration_since(p.last_sent) >= RESEND_AFTER {
                    report.timeouts += 1;
                    send_initiation(&socket, gateway, p, &mut buf, true, &mut report);
                }
            }
        }
        let n = match socket.recv_from(&mut datagram) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let packet = &datagram[..n];
        let receiver = match packet.first() {
            Some(&HANDSHAKE_RESPONSE) if n >= 12 => le_u32(&packet[8..12]),
            Some(&COOKIE_REPLY) if n >= 8 => le_u32(&packet[4..8]),
            _ => continue,
        };
        let Some(i) = ((receiver >> 8) as usize).checked_sub(1) else {
            continue;
        };
        let Some(p) = peers.get_mut(i) else { continue };
        let is_cookie = packet[0] == COOKIE_REPLY;
        match p.tunn.decapsulate(None, packet, &mut buf) {
            TunnResult::WriteToNetwork(keepalive) if !is_cookie => {
                let _ = socket.send_to(keepalive, gateway);
                let done = Instant::now();
                report.total_handshakes += 1;
                if done >= measure_from && done < end {
                    report.measured_handshakes += 1;
                    latencies.push(done.duration_since(p.started).as_secs_f64() * 1000.0);
                }
                send_initiation(&socket, gateway, p, &mut buf, false, &mut report);
            }
            TunnResult::Done if is_cookie => {
                report.cookie_replies += 1;
                send_initiation(&socket, gateway, p, &mut buf, true, &mut report);
            }
            _ => {}
        }
    }
    report.measured_seconds = duration.as_secs_f64();
    report.handshakes_per_second = report.measured_handshakes as f64 / duration.as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    report.p50_ms = percentile(&latencies, 0.50);
    report.p99_ms = percentile(&latencies, 0.99);
    Ok(report)
}

/// Sends the peer's next initiation; `resend` keeps the current handshake's start time.
fn send_initiation(
    socket: &UdpSocket,
    gateway: SocketAddr,
    p: &mut Peer,
    buf: &mut [u8],
    resend: bool,
    report: &mut Report,
) {
    if let TunnResult::WriteToNetwork(init) = p.tunn.format_handshake_initiation(buf, true) {
        let _ = socket.send_to(init, gateway);
        let now = Instant::now();
        if !resend {
            p.started = now;
        }
        p.last_sent = now;
        report.initiations_sent += 1;
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    (sorted[i] * 1000.0).round() / 1000.0
}
