//! Tunnel peers in bulk for `scripts/bench-tunnel`: sessions, registered WireGuard keys, and a
//! handshake load against the gateway's WireGuard port.
//!
//! ```text
//! bench-tunnel-peers tokens     --count N --out TOKENS   [gateway flags]
//! bench-tunnel-peers register   --tokens TOKENS --keys-out KEYS   [gateway flags]
//! bench-tunnel-peers handshakes --keys KEYS --wg ADDR [--peers N] [--warmup 1] [--duration 10]
//! ```
//!
//! `tokens` and `register` are separate so the benchmark can read the gateway's memory between
//! them: the difference is what the registered peers cost, not their Sessions. Each prints one
//! JSON object on stdout.

mod api;
mod handshakes;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tunnel peers in bulk for scripts/bench-tunnel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach the gateway's HTTPS API.
#[derive(Args, Clone)]
struct GatewayArgs {
    /// The gateway's domain with port, as in `https://DOMAIN/` (SNI and certificate check).
    #[arg(long)]
    domain: String,
    /// Where TCP connections go (`ip:port`).
    #[arg(long)]
    connect_to: SocketAddr,
    /// The gateway's CA certificate (`ca.pem` in its data directory).
    #[arg(long)]
    ca: PathBuf,
    /// Parallel HTTPS clients.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Gets COUNT access tokens (COUNT Sessions) with one OAuth2 credential.
    Tokens {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long, env = "BENCH_CLIENT_ID")]
        client_id: String,
        #[arg(long, env = "BENCH_CLIENT_SECRET", hide_env_values = true)]
        client_secret: String,
        #[arg(long)]
        count: usize,
        /// One token per line.
        #[arg(long)]
        out: PathBuf,
    },
    /// Registers one fresh WireGuard key per token with `POST /api/v1/tunnel/connect`.
    Register {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        tokens: PathBuf,
        /// Writes `gateway <public key>` then one private key per line.
        #[arg(long)]
        keys_out: PathBuf,
    },
    /// Runs the handshake load with the first PEERS keys of a `register` output.
    Handshakes {
        #[arg(long)]
        keys: PathBuf,
        /// The gateway's WireGuard UDP address.
        #[arg(long)]
        wg: SocketAddr,
        #[arg(long, default_value_t = 256)]
        peers: usize,
        /// Seconds before measuring (cookies exchanged, caches warm).
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse().command) {
        eprintln!("bench-tunnel-peers: {e}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Tokens {
            gateway,
            client_id,
            client_secret,
            count,
            out,
        } => {
            let started = Instant::now();
            let tokens = parallel(&gateway, count, |gw, _| {
                gw.token(&client_id, &client_secret)
            })?;
            write_lines(&out, tokens.iter().map(String::as_str))?;
            print_json(&serde_json::json!({
                "tokens": tokens.len(),
                "seconds": started.elapsed().as_secs_f64(),
            }));
        }
        Command::Register {
            gateway,
            tokens,
            keys_out,
        } => {
            let tokens = read_lines(&tokens)?;
            let started = Instant::now();
            let answers = parallel(&gateway, tokens.len(), |gw, i| {
                let secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
                let public = PublicKey::from(&secret);
                let r = gw.connect(&tokens[i], &STANDARD.encode(public.as_bytes()))?;
                Ok((STANDARD.encode(secret.to_bytes()), r.gateway_public_key))
            })?;
            let seconds = started.elapsed().as_secs_f64();
            let gateway_key = answers.first().map(|a| a.1.clone()).unwrap_or_default();
            let header = format!("gateway {gateway_key}");
            let lines =
                std::iter::once(header.as_str()).chain(answers.iter().map(|a| a.0.as_str()));
            write_lines(&keys_out, lines)?;
            print_json(&serde_json::json!({
                "registered": answers.len(),
                "seconds": seconds,
                "per_second": answers.len() as f64 / seconds,
            }));
        }
        Command::Handshakes {
            keys,
            wg,
            peers,
            warmup,
            duration,
        } => {
            let lines = read_lines(&keys)?;
            let gateway_key = lines
                .first()
                .and_then(|l| l.strip_prefix("gateway "))
                .ok_or("the keys file does not start with `gateway <key>`")?;
            let gateway_key = decode_key(gateway_key)?;
            let private: Vec<[u8; 32]> = lines[1..]
                .iter()
                .take(peers)
                .map(|l| decode_key(l))
                .collect::<Result<_, _>>()?;
            if private.is_empty() {
                return Err("no peer keys".into());
            }
            let report = handshakes::run(
                wg,
                gateway_key,
                &private,
                Duration::from_secs_f64(warmup),
                Duration::from_secs_f64(duration),
            )
            .map_err(|e| format!("UDP: {e}"))?;
            print_json(&serde_json::to_value(&report).map_err(|e| e.to_string())?);
        }
    }
    Ok(())
}

/// Runs `job(gateway, i)` for i in 0..count over `threads` clients; stops at the first error.
fn parallel<T: Send>(
    args: &GatewayArgs,
    count: usize,
    job: impl Fn(&api::Gateway, usize) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    let gw = api::Gateway::new(&args.domain, args.connect_to, &args.ca)?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..count).map(|_| None).collect());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..args.threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || failure.lock().expect("lock").is_some() {
                    return;
                }
                match job(&gw, i) {
                    Ok(v) => results.lock().expect("lock")[i] = Some(v),
                    Err(e) => {
                        *failure.lock().expect("lock") = Some(format!("item {i}: {e}"));
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("lock") {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .expect("lock")
        .into_iter()
        .flatten()
        .collect())
}

fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("bad key {text:?}: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("bad key length in {text:?}"))
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::BufReader::new(f)
        .lines()
        .map(|l| l.map_err(|e| e.to_string()))
        .filter(|l| l.as_ref().map_or(true, |s| !s.trim().is_empty()))
        .collect()
}

fn write_lines<'a>(path: &PathBuf, lines: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for l in lines {
        writeln!(f, "{l}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) {
    println!("{v}");
}
