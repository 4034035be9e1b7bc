//! `postern`: the Postern agent: the saved session and the WireGuard tunnel.

use clap::{Parser, Subcommand};
use postern_client::commands::{session, tunnel, Context};
use std::path::PathBuf;
use std::process::ExitCode;

/// The Postern agent.
///
/// Environment: POSTERN_GATEWAY_ADDRESS=ip:port makes connections go to that address while
/// TLS (SNI, certificate checks) and the Host header still use --domain; useful when the
/// domain is not in DNS yet.
#[derive(Parser)]
#[command(name = "postern", version)]
struct Cli {
    /// Where the session is saved [default: ~/.config/postern]
    #[arg(long, global = true, env = "POSTERN_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign in (in a browser, or with --auth-token) and save the session.
    Login(session::LoginArgs),
    /// End the session on the gateway and delete it locally.
    Logout,
    /// Show the saved session: user, session, domain and expiry.
    Whoami,
    /// Bring up the WireGuard tunnel and stay in the foreground (Ctrl-C or SIGTERM stops it).
    ///
    /// Default: a kernel TUN device (root or CAP_NET_ADMIN) with routes for the service
    /// range and DNS for `<service>.local`. With --userspace: no privileges; Services are
    /// published on local ports (-p) or through a SOCKS5 proxy (--socks5).
    Connect(tunnel::ConnectArgs),
    /// Show the running tunnel: address, gateway, handshake age, bytes, Services.
    Status,
    /// Stop the running `postern connect`.
    Disconnect,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Context::new(cli.home.as_deref()).and_then(|ctx| {
        let out = &mut std::io::stdout().lock();
        match &cli.command {
            Command::Login(args) => session::login(&ctx, args, out),
            Command::Logout => session::logout(&ctx, out),
            Command::Whoami => session::whoami(&ctx, out),
            Command::Connect(args) => tunnel::connect(&ctx, args, out),
            Command::Status => tunnel::status(&ctx, out),
            Command::Disconnect => tunnel::disconnect(&ctx, out),
        }
    });
    report(result.map_err(anyhow::Error::from))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
