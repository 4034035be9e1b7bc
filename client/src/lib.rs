//! The Postern command-line clients: `postern` (the agent: `login`, `logout`, `whoami`, `connect`, `status`, `disconnect`) and
//! `posternctl` (the admin CLI: `apply`, `get`, `delete`, `create`, `policy explain|test`).
//!
//! The binaries only parse arguments and print errors; everything else lives here:
//! [`config`] keeps the saved session, [`http`] talks to the gateway's control API,
//! [`output`] renders results and [`commands`] implements each command.

pub mod commands;
pub mod config;
pub mod domain;
pub mod duration;
pub mod error;
pub mod http;
pub mod output;
pub mod signin;
pub mod tunnel;

pub use error::{ClientError, Result};
