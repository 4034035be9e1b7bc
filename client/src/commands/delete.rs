//! `posternctl delete KIND NAME`.

use super::{parse_kind, resource_ref, writeln_out, Context};
use crate::error::Result;
use serde_json::Value;
use std::io::Write;

/// Arguments of `posternctl delete`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// services, users, groups, policies, identityproviders, secrets, credentials or sessions.
    pub kind: String,
    /// The name of the one to delete.
    pub name: String,
}

/// Deletes one resource and prints `Kind/name deleted`.
pub fn run(ctx: &Context, args: &DeleteArgs, out: &mut dyn Write) -> Result<()> {
    let kind = parse_kind(&args.kind)?;
    let (client, _) = ctx.authenticated()?;
    let response: Value = client.delete(&[kind.plural(), &args.name])?;
    let deleted_kind = response
        .pointer("/deleted/kind")
        .and_then(Value::as_str)
        .unwrap_or(kind.as_str());
    let deleted_name = response
        .pointer("/deleted/name")
        .and_then(Value::as_str)
        .unwrap_or(&args.name);
    writeln_out(
        out,
        format_args!("{} deleted", resource_ref(deleted_kind, deleted_name)),
    )
}
