//! The Postern gateway (`posternd`): the public front door and the shared core of identity,
//! policy and forwarding. `main.rs` is only the command line; everything lives here.

pub mod certs;
pub mod datadir;
pub mod frontdoor;
pub mod identity;
pub mod limits;
pub mod portal;
pub mod proxy;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tunnel;
