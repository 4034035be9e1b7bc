//! `posternctl`: the Postern admin CLI. Uses the session saved by `postern login`.

use clap::{Parser, Subcommand};

use postern_client::commands::{apply, create, delete, get, logs, policy, usage, Context};
use std::path::PathBuf;
use std::process::ExitCode;

/// The Postern admin CLI: apply and inspect resources, manage secrets and credentials.
///
/// Log in first with `postern login --domain D --auth-token T`.
///
/// Environment: POSTERN_GATEWAY_ADDRESS=ip:port makes connections go to that address while
/// TLS (SNI, certificate checks) and the Host header still use the saved domain; useful
/// when the domain is not in DNS yet.
#[derive(Parser)]
#[command(name = "posternctl", version)]
struct Cli {
    /// Where the session is saved [default: ~/.config/postern]
    #[arg(long, global = true, env = "POSTERN_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update the resources in YAML files (`-` for stdin).
    Apply(apply::ApplyArgs),
    /// List resources of a kind, or show one.
    Get(get::GetArgs),
    /// Delete one resource.
    Delete(delete::DeleteArgs),
    /// Create a secret or a credential.
    #[command(subcommand)]
    Create(create::CreateCommand),
    /// Explain and test policy decisions for hypothetical requests (offline with -f).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Token usage summed by user, group, model, service or config.
    Usage(usage::UsageArgs),
    /// Recent requests; -f follows new ones.
    Logs(logs::LogsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Context::new(cli.home.as_deref()).and_then(|ctx| {
        let out = &mut std::io::stdout().lock();
        match &cli.command {
            Command::Apply(args) => apply::run(&ctx, args, out),
            Command::Get(args) => get::run(&ctx, args, out),
            Command::Delete(args) => delete::run(&ctx, args, out),
            Command::Create(cmd) => create::run(&ctx, cmd, out),
            Command::Policy(cmd) => policy::run(&ctx, cmd, out),
            Command::Usage(args) => usage::run(&ctx, args, out),
            Command::Logs(args) => logs::run(&ctx, args, out),
        }
    });
    match result.map_err(anyhow::Error::from) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
