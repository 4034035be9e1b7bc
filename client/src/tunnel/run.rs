//! Brings the tunnel up, keeps `tunnel.json` current, and tears everything down on Ctrl-C
//! or SIGTERM.

use super::error::TunnelError;
use super::kernel::KernelTunnel;
use super::plan::TunnelPlan;
use super::publish::Publish;
use super::state::{self, TunnelState};
use super::system;
use super::userspace::Userspace;
use super::watch::ControlPlane;
use chrono::Utc;
use postern_common::wireguard::{Endpoint, EndpointConfig, EndpointHandle, KeyPair, PrivateKey};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// Time between two check-ins with the gateway when all is well.
    pub check_interval: Duration,
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

/// How one round of the tunnel ended.
enum Ended {
    /// Ctrl-C, SIGTERM, or a fatal error: the agent exits.
    Stop(Result<(), TunnelError>),
    /// The watchdog brought a new plan (a new Session, another gateway key): go again.
    Rebuild(Box<TunnelPlan>),
}

/// Prints a line to the agent's log (stderr), with the time.
pub(crate) fn log(message: &str) {
    eprintln!(
        "{} {message}",
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
}

fn copy_keys(keys: &KeyPair) -> Result<KeyPair, TunnelError> {
    let private = PrivateKey::from_base64(&keys.private.to_base64())
        .map_err(|e| TunnelError::io("the WireGuard key", std::io::Error::other(e)))?;
    Ok(KeyPair::from_private(private))
}

/// Runs the tunnel in the foreground until Ctrl-C or SIGTERM (`Ok`) or a fatal error,
/// checking in with the gateway through `control` and bringing the tunnel up again when
/// the watchdog says so (see [`super::watch`]).
pub async fn run(
    plan: TunnelPlan,
    keys: KeyPair,
    opts: RunOptions,
    out: &mut dyn Write,
    control: Arc<dyn ControlPlane>,
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
    let _state_file = StateFile(opts.home.clone());
    let started = Utc::now();
    let mut opts = opts;
    let mut plan = plan;
    let mut reconnects = 0u32;
    let mut failures = 0u32;
    loop {
        let round = Round {
            plan: Arc::new(plan.clone()),
            keys: copy_keys(&keys)?,
            started,
            reconnects,
        };
        match round
            .run(&mut opts, out, &control, &mut sigterm, &mut sigint)
            .await
        {
            Ok(Ended::Stop(r)) => return r,
            Ok(Ended::Rebuild(next)) => {
                plan = *next;
                reconnects += 1;
                failures = 0;
            }
            // The first bring-up reports its error (bad flags, no privileges); later ones
            // may meet a passing condition, so the agent keeps trying.
            Err(e) if reconnects == 0 => return Err(e),
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = super::backoff::delay(failures, rand::random::<f64>());
                log(&format!(
                    "cannot bring the tunnel up again: {e}; retrying in {} ms",
                    wait.as_millis()
                ));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = sigterm.recv() => return Ok(()),
                    _ = sigint.recv() => return Ok(()),
                }
            }
        }
    }
}

/// One tunnel, from bringing it up to tearing it down.
struct Round {
    plan: Arc<TunnelPlan>,
    keys: KeyPair,
    started: chrono::DateTime<Utc>,
    reconnects: u32,
}

impl Round {
    async fn run(
        self,
        opts: &mut RunOptions,
        out: &mut dyn Write,
        control: &Arc<dyn ControlPlane>,
        sigterm: &mut tokio::signal::unix::Signal,
        sigint: &mut tokio::signal::unix::Signal,
    ) -> Result<Ended, TunnelError> {
        let plan = self.plan;
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
        let (endpoint, rx) = Endpoint::bind(self.keys, config)
            .await
            .map_err(|e| TunnelError::io("cannot bind the WireGuard UDP socket", e))?;
        add_gateway_peer(&endpoint.handle(), &plan, gateway)?;

        let mut st = TunnelState {
            pid: std::process::id(),
            mode: String::new(),
            interface: None,
            address: plan.address.to_string(),
            address6: plan.address6.map(|a| a.to_string()),
            gateway: plan.endpoint.clone(),
            gateway_address: gateway.to_string(),
            started: self.started,
            published: Vec::new(),
            socks5: None,
            services: plan.services.clone(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            updated: Utc::now(),
            problem: None,
            last_check_in: Some(Utc::now()),
            reconnects: self.reconnects,
        };
        let mut from_gateway = Some(rx);
        let running = match &mut opts.mode {
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
                let u =
                    Userspace::start(plan.clone(), endpoint.handle(), rx, publish, *socks5).await?;
                st.mode = "userspace".into();
                st.published = u
                    .published
                    .iter()
                    .map(|(p, local, _)| Publish {
                        local_port: local.port(),
                        ..p.clone()
                    })
                    .collect();
                // The same local ports when the tunnel comes up again.
                publish.clone_from(&st.published);
                *socks5 = u.socks5.or(*socks5);
                st.socks5 = u.socks5.map(|a| a.to_string());
                Running::Userspace(u)
            }
        };
        state::save(&opts.home, &st)?;
        if self.reconnects == 0 {
            let _ = print_summary(out, &plan, &st, &running);
        } else {
            log(&format!(
                "tunnel up again as {} (reconnect {})",
                st.address, self.reconnects
            ));
        }

        let shared = Arc::new(Mutex::new(st));
        let stats_handle = endpoint.handle();
        let ticker = keep_state(&opts.home, &stats_handle, &plan, shared.clone());
        let watchdog = super::watch::watchdog(
            control.clone(),
            plan.clone(),
            endpoint.handle(),
            gateway,
            shared,
            opts.home.clone(),
            opts.check_interval,
        );
        let pump = async {
            match (&running, from_gateway.take()) {
                (Running::Kernel(k), Some(rx)) => k.pump(endpoint.handle(), rx).await,
                _ => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            r = pump => Ended::Stop(r),
            () = ticker => Ended::Stop(Ok(())),
            next = watchdog => Ended::Rebuild(next),
            _ = sigterm.recv() => Ended::Stop(Ok(())),
            _ = sigint.recv() => Ended::Stop(Ok(())),
        };
        let down = match running {
            Running::Kernel(k) => k.down(),
            Running::Userspace(u) => {
                u.stop().await;
                Ok(())
            }
        };
        drop(endpoint);
        match ended {
            Ended::Stop(r) => Ok(Ended::Stop(r.and(down))),
            Ended::Rebuild(next) => {
                down?;
                Ok(Ended::Rebuild(next))
            }
        }
    }
}

/// Makes the gateway the endpoint's one peer (again, after a gateway restart: a fresh peer
/// starts a new handshake with the first packet).
pub(crate) fn add_gateway_peer(
    endpoint: &EndpointHandle,
    plan: &TunnelPlan,
    gateway: SocketAddr,
) -> Result<(), TunnelError> {
    let keepalive = (plan.keepalive > 0).then_some(plan.keepalive);
    endpoint.add_peer(
        plan.gateway_key,
        &plan.allowed_ips()?,
        Some(gateway),
        keepalive,
    )?;
    Ok(())
}

/// Rewrites `tunnel.json` every [`STATE_INTERVAL`] with the gateway peer's statistics.
async fn keep_state(
    home: &Path,
    endpoint: &EndpointHandle,
    plan: &TunnelPlan,
    shared: Arc<Mutex<TunnelState>>,
) {
    let mut interval = tokio::time::interval(STATE_INTERVAL);
    interval.tick().await;
    loop {
        interval.tick().await;
        let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
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
