//! `$POSTERN_HOME/tunnel.json`: what `postern status` shows and whom `postern disconnect`
//! signals. Written with mode 0600, replaced atomically, removed on exit.

use super::error::TunnelError;
use super::publish::Publish;
use chrono::{DateTime, Utc};
use postern_common::api::TunnelService;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The running tunnel, as written by `postern connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelState {
    /// The agent's process id.
    pub pid: u32,
    /// `kernel` or `userspace`.
    pub mode: String,
    /// The TUN device (kernel mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The tunnel address, `100.64.0.2/32`.
    pub address: String,
    /// The IPv6 tunnel address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
    /// The gateway's WireGuard endpoint as given by the gateway.
    pub gateway: String,
    /// The address WireGuard datagrams go to.
    pub gateway_address: String,
    /// When the tunnel came up.
    pub started: DateTime<Utc>,
    /// Ports published with `-p`.
    #[serde(default)]
    pub published: Vec<Publish>,
    /// The SOCKS5 listener, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks5: Option<String>,
    /// The Services reachable through the tunnel.
    #[serde(default)]
    pub services: Vec<TunnelService>,
    /// When the last WireGuard handshake with the gateway completed.
    #[serde(default)]
    pub last_handshake: Option<DateTime<Utc>>,
    /// WireGuard bytes received from the gateway.
    #[serde(default)]
    pub rx_bytes: u64,
    /// WireGuard bytes sent to the gateway.
    #[serde(default)]
    pub tx_bytes: u64,
    /// When this file was last written.
    pub updated: DateTime<Utc>,
    /// Why the tunnel does not work right now (gateway unreachable, Session gone and no way
    /// to log in again), as `postern status` shows it; none when the last check-in worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// When the last check-in with the gateway worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_in: Option<DateTime<Utc>>,
    /// How many times the tunnel was brought up again (new Session, gateway restarted).
    #[serde(default)]
    pub reconnects: u32,
}

/// Where the state file lives.
pub fn path(home: &Path) -> PathBuf {
    home.join("tunnel.json")
}

/// Writes the state (0600), replacing the previous file atomically.
pub fn save(home: &Path, state: &TunnelState) -> Result<(), TunnelError> {
    let target = path(home);
    let tmp = home.join(format!(".tunnel.json.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(state)
        .map_err(|e| TunnelError::io("cannot encode the tunnel state", std::io::Error::other(e)))?;
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(home)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| TunnelError::io(format!("cannot write {}", target.display()), e))
}

/// Reads the state; `None` when there is no file.
pub fn load(home: &Path) -> Result<Option<TunnelState>, TunnelError> {
    let p = path(home);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            TunnelError::io(
                format!("cannot read {}", p.display()),
                std::io::Error::other(e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TunnelError::io(format!("cannot read {}", p.display()), e)),
    }
}

/// Removes the state file (missing is fine).
pub fn remove(home: &Path) {
    let _ = std::fs::remove_file(path(home));
}

/// Whether a process with this id is alive (an exited child not yet reaped, a zombie,
/// counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !zombie(&stat),
        Err(_) => false,
    }
}

/// Whether a `/proc/<pid>/stat` line is a zombie's (state `Z` or `X` after the name).
fn zombie(stat: &str) -> bool {
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trips_with_private_permissions() {
        let home = std::env::temp_dir().join(format!("postern-state-{}", std::process::id()));
        let state = TunnelState {
            pid: 42,
            mode: "userspace".into(),
            interface: None,
            address: "100.64.0.2/32".into(),
            address6: None,
            gateway: "gw:51820".into(),
            gateway_address: "127.0.0.1:51820".into(),
            started: Utc::now(),
            published: vec!["8080:api:80".parse().unwrap()],
            socks5: None,
            services: vec![],
            last_handshake: None,
            rx_bytes: 1,
            tx_bytes: 2,
            updated: Utc::now(),
            problem: Some("session expired".into()),
            last_check_in: None,
            reconnects: 1,
        };
        save(&home, &state).unwrap();
        let mode = std::fs::metadata(path(&home)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&home).unwrap(), Some(state));
        remove(&home);
        assert_eq!(load(&home).unwrap(), None);
        std::fs::remove_dir_all(home).unwrap();
        assert!(pid_alive(std::process::id()));
        assert!(zombie("42 (postern) Z 1 42"));
        assert!(!zombie("42 (a) b) S 1 42"));
    }
}
