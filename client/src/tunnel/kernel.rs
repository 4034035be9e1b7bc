//! Kernel mode: a TUN device carrying the service ranges, and DNS for the tunnel's domain.
//!
//! The device gets the IPv4 address at creation; [`system::route_commands`] adds the IPv6
//! address and the routes, which the kernel removes with the device when it closes. DNS
//! goes through systemd-resolved (per-link, gone with the link) when it runs, otherwise a
//! marked `nameserver` line is put first in `/etc/resolv.conf` and the original file is
//! written back on exit by [`DnsGuard`] (also when dropped on an error path).

use super::error::TunnelError;
use super::plan::TunnelPlan;
use super::system;
use postern_common::wireguard::{Delivered, EndpointHandle};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// The MTU of the TUN device: WireGuard's overhead under a 1500-byte path.
pub const MTU: u16 = 1420;

/// Overrides the resolver file kernel mode edits (tests use a private copy).
pub const RESOLV_CONF_ENV: &str = "POSTERN_RESOLV_CONF";

/// A configured TUN device; closing it (drop) removes its addresses and routes.
pub struct KernelTunnel {
    device: tun::AsyncDevice,
    /// The device's name.
    pub name: String,
    dns: DnsGuard,
}

impl KernelTunnel {
    /// Creates `name` with the plan's addresses and routes, and sets up DNS.
    pub fn up(plan: &TunnelPlan, name: &str, home: &Path) -> Result<Self, TunnelError> {
        let IpAddr::V4(v4) = plan.address.addr else {
            return Err(TunnelError::BadResponse("address is not IPv4".into()));
        };
        let mask = u32::MAX
            .checked_shl(32 - u32::from(plan.address.prefix))
            .unwrap_or(0);
        let mut config = tun::Configuration::default();
        config
            .tun_name(name)
            .address(v4)
            .netmask(std::net::Ipv4Addr::from(mask))
            .mtu(MTU)
            .up();
        let device = tun::create_as_async(&config).map_err(|e| TunnelError::Tun(e.to_string()))?;
        let name = tun::AbstractDevice::tun_name(&*device).unwrap_or_else(|_| name.to_string());
        for cmd in system::route_commands(plan, &name) {
            match system::run_command(&cmd) {
                Ok(()) => {}
                // A host with IPv6 disabled still gets the IPv4 tunnel.
                Err(e) if cmd.get(1).is_some_and(|f| f == "-6") => {
                    eprintln!("warning: {e}; continuing without IPv6 in the tunnel");
                }
                Err(e) => return Err(e),
            }
        }
        let dns = DnsGuard::set(plan, &name, home)?;
        Ok(KernelTunnel { device, name, dns })
    }

    /// Moves packets between the device and the WireGuard endpoint until one side fails.
    pub async fn pump(
        &self,
        endpoint: EndpointHandle,
        mut from_gateway: mpsc::Receiver<Delivered>,
    ) -> Result<(), TunnelError> {
        let up = async {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = self
                    .device
                    .recv(&mut buf)
                    .await
                    .map_err(|e| TunnelError::io("cannot read from the TUN device", e))?;
                if let Err(e) = endpoint.send_packet(&buf[..n]).await {
                    tracing::debug!(error = %e, "packet not sent into the tunnel");
                }
            }
        };
        let down = async {
            while let Some(d) = from_gateway.recv().await {
                self.device
                    .send(&d.packet)
                    .await
                    .map_err(|e| TunnelError::io("cannot write to the TUN device", e))?;
            }
            Err(TunnelError::io(
                "the WireGuard endpoint stopped",
                std::io::Error::other("closed"),
            ))
        };
        tokio::select! { r = up => r, r = down => r }
    }

    /// Restores DNS now (the device and its routes go when `self` is dropped).
    pub fn down(mut self) -> Result<(), TunnelError> {
        self.dns.restore()
    }
}

/// How DNS was changed, so it can be undone.
enum DnsChange {
    None,
    /// Per-link settings; `resolvectl revert` (and the link going away) undoes them.
    Resolved {
        dev: String,
    },
    /// The resolver file was edited; `backup` holds the original.
    ResolvConf {
        file: PathBuf,
        backup: PathBuf,
    },
}

/// Undoes the DNS change on [`DnsGuard::restore`] or drop.
pub struct DnsGuard(DnsChange);

impl DnsGuard {
    /// Points `<name>.<dnsDomain>` lookups at the tunnel's DNS server.
    pub fn set(plan: &TunnelPlan, dev: &str, home: &Path) -> Result<Self, TunnelError> {
        let file_override = std::env::var_os(RESOLV_CONF_ENV).map(PathBuf::from);
        if file_override.is_none() && system::resolved_available() {
            for cmd in system::resolvectl_commands(plan, dev) {
                system::run_command(&cmd)?;
            }
            return Ok(DnsGuard(DnsChange::Resolved {
                dev: dev.to_string(),
            }));
        }
        let file = file_override.unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
        let backup = home.join("resolv.conf.postern-backup");
        recover(&file, &backup);
        let original = std::fs::read_to_string(&file).unwrap_or_default();
        let io = |what: &str, p: &Path, e| TunnelError::io(format!("{what} {}", p.display()), e);
        std::fs::create_dir_all(home).map_err(|e| io("cannot create", home, e))?;
        std::fs::write(&backup, &original).map_err(|e| io("cannot write", &backup, e))?;
        let edited = system::prepend_nameserver(&original, &plan.dns.to_string());
        if let Err(e) = std::fs::write(&file, edited) {
            let _ = std::fs::remove_file(&backup);
            tracing::warn!(file = %file.display(), error = %e, "cannot set the tunnel's DNS server; Service names will not resolve");
            return Ok(DnsGuard(DnsChange::None));
        }
        Ok(DnsGuard(DnsChange::ResolvConf { file, backup }))
    }

    /// Undoes the change once.
    pub fn restore(&mut self) -> Result<(), TunnelError> {
        match std::mem::replace(&mut self.0, DnsChange::None) {
            DnsChange::None => Ok(()),
            DnsChange::Resolved { dev } => {
                // The link is about to disappear, which also drops its settings.
                let _ = system::run_command(&["resolvectl".into(), "revert".into(), dev]);
                Ok(())
            }
            DnsChange::ResolvConf { file, backup } => {
                let original = std::fs::read_to_string(&backup)
                    .map_err(|e| TunnelError::io(format!("cannot read {}", backup.display()), e))?;
                std::fs::write(&file, original).map_err(|e| {
                    TunnelError::io(format!("cannot restore {}", file.display()), e)
                })?;
                let _ = std::fs::remove_file(&backup);
                Ok(())
            }
        }
    }
}

impl Drop for DnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("warning: {e}");
        }
    }
}

/// Puts back a resolver file left edited by an agent that was killed.
fn recover(file: &Path, backup: &Path) {
    let Ok(saved) = std::fs::read_to_string(backup) else {
        return;
    };
    let current = std::fs::read_to_string(file).unwrap_or_default();
    if system::has_our_nameserver(&current) {
        let _ = std::fs::write(file, saved);
    }
    let _ = std::fs::remove_file(backup);
}
