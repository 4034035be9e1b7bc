//! One module per command group. Each command takes its parsed arguments and a writer for
//! its normal output, so tests can capture it.

pub mod apply;
mod browser_login;
pub mod create;
pub mod delete;
pub mod get;
pub mod logs;
pub mod policy;
pub mod session;
pub mod tunnel;
mod tunnel_login;
pub mod usage;

use crate::config::{self, Session};
use crate::domain::Domain;
use crate::error::{ClientError, Result};
use crate::http::ApiClient;
use postern_common::resources::Kind;
use std::path::{Path, PathBuf};

/// Where the saved session lives; shared by every command.
#[derive(Debug, Clone)]
pub struct Context {
    /// The Postern home directory (`--home`, `POSTERN_HOME` or `~/.config/postern`).
    pub home: PathBuf,
}

impl Context {
    /// A context for `home` as given on the command line, or the default directory.
    pub fn new(home: Option<&Path>) -> Result<Self> {
        Ok(Context {
            home: config::home_dir(home)?,
        })
    }

    /// The saved session, if it is still valid, and a client that sends its token.
    pub fn authenticated(&self) -> Result<(ApiClient, Session)> {
        let session = config::load(&self.home)?;
        session.ensure_valid(chrono::Utc::now())?;
        let client = client_for(&session, Some(session.access_token.clone()))?;
        Ok((client, session))
    }
}

/// A client for the session's gateway, with or without its token.
fn client_for(session: &Session, token: Option<String>) -> Result<ApiClient> {
    let domain = Domain::parse(&session.domain)?;
    ApiClient::new(domain, session.ca_file.as_deref(), token)
}

/// Parses a kind as typed by users (`services`, `svc`, `Service`, ...).
pub fn parse_kind(input: &str) -> Result<Kind> {
    Kind::from_user_input(input).ok_or_else(|| {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        ClientError::Invalid(format!(
            "unknown kind {input:?}; use one of: {}",
            all.join(", ")
        ))
    })
}

/// `Kind/name`, as every command prints resources.
pub fn resource_ref(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Writes one line of normal output.
pub(crate) fn writeln_out(
    out: &mut dyn std::io::Write,
    args: std::fmt::Arguments<'_>,
) -> Result<()> {
    writeln!(out, "{args}").map_err(|e| ClientError::io("cannot write to", "stdout", e))
}
