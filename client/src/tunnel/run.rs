//! Brings the tunnel up, keeps `tunnel.json` current, and tears everything down on Ctrl-C
//! or SIGTERM.

use super::error::TunnelError;
use super::kernel::KernelTunnel;
use super::plan::TunnelPlan;
use super::publish::Publish;
use super::state::{self, TunnelState};
use super::system;
use super::userspace::Userspace;
use chrono::Utc;
use postern_common::wireguard::{Endpoint, EndpointConfig, EndpointHandle, KeyPair};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// How often `tunnel.json` is refreshed with handshake age and byte counters.
const STATE_INTERVAL: Duration = Duration::from_secs(2);

/// Kernel TUN or userspace netstack.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A TUN device named `interface` (root or CAP_NET_ADMIN).
    Kernel {
        /// The device name to ask for.
        interface: String,
    },
    /// A netstack in this process.
    Userspace {
        /// `-p` ports.
        publish: Vec<Publish>,
        /// The SOCKS5 listen address.
        socks5: Option<SocketAddr>,
    },
}

/// What `run` needs besides the plan and the keys.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kernel or userspace.
    pub mode: Mode,
    /// The Postern home directory (for `tunnel.json`).
    pub home: PathBuf,
    /// POSTERN_GATEWAY_ADDRESS, whose IP replaces the endpoint's host.
    pub gateway_override: Option<SocketAddr>,
}

/// Removes `tunnel.json` however `run` ends.
struct StateFile(PathBuf);

impl Drop for StateFile {
    fn drop(&mut self) {
        state::remove(&self.0);
    }
}

enum Running {
    Kernel(KernelTunnel),
    Userspace(Userspace),
}

/// Runs the tunnel in the foreground until Ctrl-C or SIGTERM (`Ok`) or a fatal error.
pub async fn run(
    plan: TunnelPlan,
    keys: KeyPair,
    opts: RunOptions,
    out: &mut dyn Write,
) -> Result<(), TunnelError> {
    if matches!(opts.mode, Mode::Kernel { .. }) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if !system::privileged(nix::unistd::geteuid().is_root(), &status) {
            return Err(TunnelError::NotPrivileged);
        }
    }
    // Signals first: a `postern disconnect` right after start must not kill us uncleanly.
    let sig = |k| signal(k).map_err(|e| TunnelError::io("cannot handle signals", e));
    let mut sigterm = sig(SignalKind::terminate())?;
    let mut sigint = sig(SignalKind::interrupt())?;

    let plan = Arc::new(plan);
    let gateway = plan.resolve_endpoint(opts.gateway_override)?;
    let bind = if gateway.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let config = EndpointConfig {
        bind,
        ..EndpointConfig::default()
    };
    let (endpoint, rx) = Endpoint::bind(keys, config)
        .await
        .map_err(|e| TunnelError::io("cannot bind the WireGuard UDP socket", e))?;
    let keepalive = (plan.keepalive > 0).then_some(plan.keepalive);
    endpoint.add_peer(
        plan.gateway_key,
        &plan.allowed_ips()?,
        Some(gateway),
        keepalive,
    )?;

    let started = Utc::now();
    let mut st = TunnelState {
        pid: std::process::id(),
        mode: String::new(),
        interface: None,
        address: plan.address.to_string(),
        address6: plan.address6.map(|a| a.to_string()),
        gateway: plan.endpoint.clone(),
        gateway_address: gateway.to_string(),
        started,
        published: Vec::new(),
        socks5: None,
        services: plan.services.clone(),
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        updated: started,
    };
    let mut from_gateway = Some(rx);
    let _state_file = StateFile(opts.home.clone());
    let running = match &opts.mode {
        Mode::Kernel { interface } => {
            let k = KernelTunnel::up(&plan, interface, &opts.home)?;
            st.mode = "kernel".into();
            st.interface = Some(k.name.clone());
            Running::Kernel(k)
        }
        Mode::Userspace { publish, socks5 } => {
            let rx = from_gateway.take().ok_or_else(|| {
                TunnelError::io("endpoint", std::io::Error::other("receiver already taken"))
            })?;
            let u = Userspace::start(plan.clone(), endpoint.handle(), rx, publish, *socks5).await?;
            st.mode = "userspace".into();
            st.published = u
                .published
                .iter()
                .map(|(p, local, _)| Publish {
                    local_port: local.port(),
                    ..p.clone()
                })
                .collect();
            st.socks5 = u.socks5.map(|a| a.to_string());
            Running::Userspace(u)
        }
    };
    state::save(&opts.home, &st)?;
    let _ = print_summary(out, &plan, &st, &running);

    let stats_handle = endpoint.handle();
    let ticker = keep_state(&opts.home, &stats_handle, &plan, st);
    let result = match &running {
        Running::Kernel(k) => {
            let rx = from_gateway.take().ok_or_else(|| {
                TunnelError::io("endpoint", std::io::Error::other("receiver already taken"))
            })?;
            tokio::select! {
                r = k.pump(endpoint.handle(), rx) => r,
                () = ticker => Ok(()),
                _ = sigterm.recv() => Ok(()),
                _ = sigint.recv() => Ok(()),
            }
        }
        Running::Userspace(_) => tokio::select! {
            () = ticker => Ok(()),
            _ = sigterm.recv() => Ok(()),
            _ = sigint.recv() => Ok(()),
        },
    };
    let down = match running {
        Running::Kernel(k) => k.down(),
        Running::Userspace(u) => {
            drop(u);
            Ok(())
        }
    };
    drop(endpoint);
    result.and(down)
}

/// Rewrites `tunnel.json` every [`STATE_INTERVAL`] with the gateway peer's statistics.
async fn keep_state(
    home: &Path,
    endpoint: &EndpointHandle,
    plan: &TunnelPlan,
    mut st: TunnelState,
) {
    let mut interval = tokio::time::interval(STATE_INTERVAL);
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Some(p) = endpoint.peer_stats(&plan.gateway_key) {
            let now = Utc::now();
            st.last_handshake = p.last_handshake.and_then(|h| {
                chrono::Duration::from_std(h.elapsed())
                    .ok()
                    .map(|age| now - age)
            });
            st.rx_bytes = p.rx_bytes;
            st.tx_bytes = p.tx_bytes;
            st.updated = now;
        }
        if let Err(e) = state::save(home, &st) {
            tracing::warn!(error = %e, "cannot update the tunnel state");
        }
    }
}

fn print_summary(
    out: &mut dyn Write,
    plan: &TunnelPlan,
    st: &TunnelState,
    running: &Running,
) -> std::io::Result<()> {
    writeln!(
        out,
        "Connected to {} as {} ({} mode); Ctrl-C or `postern disconnect` to stop",
        st.gateway, st.address, st.mode
    )?;
    match running {
        Running::Kernel(k) => writeln!(
            out,
            "Device {}: routes {}; DNS {} for *.{}",
            k.name,
            plan.routes
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            plan.dns,
            plan.dns_domain
        )?,
        Running::Userspace(u) => {
            for (p, local, target) in &u.published {
                writeln!(out, "Publishing {local} -> {} ({target})", p.service)?;
            }
            if let Some(s) = u.socks5 {
                writeln!(out, "SOCKS5 proxy on {s} (names resolved in the tunnel)")?;
            }
        }
    }
    for s in &plan.services {
        writeln!(
            out,
            "  {}.{}  {}:{}  {}",
            s.name, plan.dns_domain, s.address, s.port, s.mode
        )?;
    }
    out.flush()
}
