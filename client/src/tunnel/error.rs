//! [`TunnelError`]: everything that can stop `postern connect`.

use postern_common::netstack::NetError;
use postern_common::wireguard::{KeyError, PeerError};

/// Why the tunnel could not be brought up or kept up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The gateway's connect answer is not usable.
    #[error("the gateway's tunnel settings are invalid: {0}")]
    BadResponse(String),

    /// A command-line value (`-p`, `--socks5`, ...) is wrong.
    #[error("{0}")]
    Invalid(String),

    /// Kernel mode without root or CAP_NET_ADMIN.
    #[error("kernel mode needs root or CAP_NET_ADMIN to create a TUN device; run it with sudo, or use `postern connect --userspace` (with -p or --socks5) which needs no privileges")]
    NotPrivileged,

    /// The gateway's WireGuard key is not valid base64 of 32 bytes.
    #[error("the gateway's WireGuard key is invalid: {0}")]
    Key(#[from] KeyError),

    /// The gateway could not be added as a peer.
    #[error("cannot add the gateway as a WireGuard peer: {0}")]
    Peer(#[from] PeerError),

    /// The userspace network stack failed.
    #[error("tunnel network stack: {0}")]
    Net(#[from] NetError),

    /// A system call, socket or file operation failed.
    #[error("{action}: {err}")]
    Io { action: String, err: std::io::Error },

    /// Creating or configuring the TUN device failed.
    #[error("cannot create the TUN device: {0}; check that /dev/net/tun exists (modprobe tun), or use --userspace")]
    Tun(String),

    /// A configuration command (`ip`, `resolvectl`) failed.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

impl TunnelError {
    /// Wraps an I/O error with what was being done.
    pub fn io(action: impl Into<String>, err: std::io::Error) -> Self {
        TunnelError::Io {
            action: action.into(),
            err,
        }
    }
}
