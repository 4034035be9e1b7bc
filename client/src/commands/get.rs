//! `posternctl get KIND [NAME] [-o table|yaml|json]`.

use super::{parse_kind, Context};
use crate::error::{ClientError, Result};
use crate::output::{self, OutputFormat};
use postern_common::api::ListResponse;
use serde_json::Value;
use std::io::Write;

/// Arguments of `posternctl get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// services, users, groups, policies, identityproviders, secrets, credentials or sessions
    /// (singular, `svc` and `idp` work too).
    pub kind: String,
    /// Show only this one.
    pub name: Option<String>,
    /// Output format; yaml can be applied again.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Fetches one item or the list and prints it.
pub fn run(ctx: &Context, args: &GetArgs, out: &mut dyn Write) -> Result<()> {
    let kind = parse_kind(&args.kind)?;
    let (client, _) = ctx.authenticated()?;
    let items = match &args.name {
        Some(name) => vec![client.get::<Value>(&[kind.plural(), name])?],
        None => client.get::<ListResponse>(&[kind.plural()])?.items,
    };
    let text = match args.output {
        OutputFormat::Table => output::table_for(kind, &items).render(),
        OutputFormat::Yaml => output::to_yaml(&items),
        OutputFormat::Json if args.name.is_some() => output::to_json(&items[0]),
        OutputFormat::Json => output::to_json(&Value::Array(items)),
    };
    out.write_all(text.as_bytes())
        .map_err(|e| ClientError::io("cannot write to", "stdout", e))
}
