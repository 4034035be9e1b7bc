//! The agent side of the WireGuard tunnel (`postern connect`).
//!
//! [`plan`] turns the gateway's `TunnelConnectResponse` into checked addresses and routes;
//! [`run`] brings the tunnel up over a userspace WireGuard [`Endpoint`] and stays in the
//! foreground until Ctrl-C or SIGTERM. Two ways to reach the Services:
//!
//! - [`kernel`]: a TUN device with routes for the service range only, and DNS for the
//!   tunnel's domain (systemd-resolved or `/etc/resolv.conf`, restored on exit); needs root.
//! - [`userspace`]: a smoltcp [`NetStack`] in this process; Services are published on local
//!   ports ([`publish`]) or reached through a local SOCKS5 proxy ([`socks5`], names resolved
//!   by [`dns`] inside the tunnel); needs no privileges.
//!
//! [`state`] keeps `tunnel.json` up to date for `postern status` and `postern disconnect`.
//! [`watch`] checks in with the gateway while the agent runs: it logs in again when the
//! Session expired or was revoked (if it can), handshakes again after a gateway restart,
//! brings the tunnel up again with a new address, and backs off ([`backoff`]) meanwhile.
//!
//! [`Endpoint`]: postern_common::wireguard::Endpoint
//! [`NetStack`]: postern_common::netstack::NetStack

pub mod backoff;
pub mod dns;
mod error;
pub mod kernel;
pub mod plan;
pub mod publish;
pub mod run;
pub mod socks5;
pub mod state;
pub mod system;
pub mod userspace;
pub mod watch;

pub use error::TunnelError;
pub use plan::{Cidr, TunnelPlan};
pub use publish::Publish;
pub use run::{run, Mode, RunOptions};
pub use watch::{CheckIn, ControlPlane};
