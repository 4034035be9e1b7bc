//! `posternd`: initialise a data directory, or run the gateway.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use postern_gateway::certs::Certificates;
use postern_gateway::datadir::{self, DataDir, InitOptions};
use postern_gateway::frontdoor::limit_args::{parse_count, parse_duration, LimitArgs};
use postern_gateway::identity::{SecretBox, TokenSigner};
use postern_gateway::proxy::upstream::{UpstreamClient, UpstreamOptions};
use postern_gateway::state::{Gateway, GatewayParts, Settings};
use postern_gateway::store::location::{notice_sealer, StoreArgs, StoreLocation};
use postern_gateway::telemetry::access_log::AccessLog;
use postern_gateway::telemetry::otlp::{self, OtlpExporter, OtlpOptions};
use postern_gateway::telemetry::usage_store::UsageRecorder;
use postern_gateway::telemetry::Telemetry;
use postern_gateway::tunnel::{Tunnel, TunnelOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc's thread-local free lists: the request path allocates and frees many small
/// buffers per request, and glibc's malloc showed as about a tenth of the gateway's CPU.
/// Built with `no_thp`: with transparent huge pages its arenas took 10 MiB more when idle.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "posternd",
    version,
    about = "The Postern zero-trust access gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: store, keys, CA and certificate, and the first admin.
    Init(InitArgs),
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Copy an install's store into another (SQLite to PostgreSQL), verifying row counts.
    Migrate(MigrateArgs),
    /// Seal this gateway's keys into its shared store for `posternd init --join`, under a
    /// new token printed once (earlier tokens stop working).
    JoinToken(JoinTokenArgs),
}

#[derive(Args)]
struct JoinTokenArgs {
    /// The data directory of a gateway of the shared store.
    #[arg(long, env = "POSTERN_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct MigrateArgs {
    /// The data directory whose store is copied (its gateway.json names the store).
    #[arg(long, value_name = "DATA_DIR")]
    from: PathBuf,
    /// The store to copy into: a postgres:// URL (or `sqlite` for the data directory's
    /// file, to move back).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Replace what the target already holds (otherwise a non-empty target is refused).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct InitArgs {
    /// Where the gateway keeps its database and keys (created; must be new or empty).
    #[arg(long, env = "POSTERN_DATA_DIR")]
    data_dir: PathBuf,
    /// The domain: the control plane is https://DOMAIN, Services are https://SVC.DOMAIN.
    #[arg(long, required_unless_present = "join", conflicts_with = "join")]
    domain: Option<String>,
    /// Join the gateways of --store instead: take their keys from the bundle `posternd
    /// join-token` sealed into the store, with the token it printed (POSTERN_JOIN_TOKEN, or
    /// --join-token-file).
    #[arg(long, requires = "store", conflicts_with_all = ["tls_cert", "tls_key"])]
    join: bool,
    /// A file holding the join token (instead of POSTERN_JOIN_TOKEN).
    #[arg(long, value_name = "FILE", requires = "join")]
    join_token_file: Option<PathBuf>,
    /// Use this certificate chain (PEM) for DOMAIN and *.DOMAIN instead of making a CA.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    output: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// The data directory made by `posternd init`.
    #[arg(long, env = "POSTERN_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// This gateway's name among several sharing a store: in access records, usage and
    /// /healthz (default: the host name).
    #[arg(long, env = "POSTERN_GATEWAY_NAME", value_parser = postern_gateway::state::check_gateway_name)]
    gateway_name: Option<String>,
    /// Address of the TLS listener for the control plane and public Services.
    #[arg(long, default_value = "0.0.0.0:443", env = "POSTERN_HTTPS_LISTEN")]
    https_listen: SocketAddr,
    /// Front-door threads, each with its own runtime, listener (SO_REUSEPORT) and upstream
    /// connections; 0 means one per CPU (at most 256).
    #[arg(long, default_value_t = 0, env = "POSTERN_WORKERS",
          value_parser = clap::value_parser!(u16).range(0..=256))]
    workers: u16,
    /// Where access log lines go: a file path, or '-' for stdout; 'off' disables them.
    #[arg(long, default_value = "-")]
    access_log: String,
    /// Extra CA certificate (PEM) trusted for https upstreams, besides the standard roots.
    #[arg(long)]
    upstream_ca: Vec<PathBuf>,
    /// Extra CA certificate (PEM) trusted for identity providers (IdentityProvider issuers
    /// behind a private CA), besides the standard roots.
    #[arg(long, value_name = "FILE")]
    idp_ca: Vec<PathBuf>,
    /// Largest request body buffered when a policy or rule reads it (bytes).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Lifetime of OAuth2 access tokens, e.g. 1h, 15m, 30s.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    token_ttl: Duration,
    /// Lifetime of sessions made by `postern login`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    login_ttl: Duration,
    /// Time to connect to an upstream.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    upstream_connect_timeout: Duration,
    /// Time for an upstream to send its response headers.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// Export access records as OpenTelemetry logs and traces (OTLP/HTTP, protobuf) to this
    /// collector, e.g. http://collector:4318 (POSTs to /v1/logs and /v1/traces).
    #[arg(long, env = "POSTERN_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Header sent with every OTLP export, as name=value (repeatable), e.g. for collector auth.
    #[arg(long, requires = "otlp_endpoint", value_parser = otlp::parse_header)]
    otlp_header: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The `service.name` resource attribute of exported telemetry.
    #[arg(long, default_value = "posternd", requires = "otlp_endpoint")]
    otlp_service_name: String,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics (off unless given;
    /// keep it on a private address).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// How many gateways share the store: while it is unreachable, each admits up to
    /// limit / N of a limit's window on its own (docs/operations.md, "Limits across
    /// gateways").
    #[arg(long, default_value_t = 2, value_parser = parse_count::<u32>, value_name = "N")]
    limit_gateways: u32,
    /// Tokens a token limit or budget reserves for the completion of a request that sets no
    /// max_tokens (the prompt's estimate is added).
    #[arg(long, default_value_t = postern_gateway::limits::DEFAULT_COMPLETION_TOKENS)]
    limit_default_completion_tokens: u64,
    /// Run the WireGuard tunnel on this UDP address, e.g. 0.0.0.0:51820 (off unless given).
    #[arg(long, value_name = "ADDR", env = "POSTERN_WG_LISTEN")]
    wg_listen: Option<SocketAddr>,
    /// The host:port agents send WireGuard to, when not DOMAIN:<--wg-listen port> (NAT,
    /// port forwarding).
    #[arg(long, value_name = "HOST:PORT", requires = "wg_listen")]
    wg_endpoint: Option<String>,
    /// Remove tunnel peers silent for this long (their addresses are freed).
    #[arg(long, default_value = "10m", value_parser = parse_duration, requires = "wg_listen")]
    wg_idle_timeout: Duration,
    #[command(flatten)]
    tls: postern_gateway::certs::args::TlsArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    acme: postern_gateway::certs::acme::AcmeArgs,
}

/// The soft "Max open files" limit from the text of `/proc/self/limits`.
fn open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Init(a) => init(a),
        Command::Migrate(a) => migrate(a),
        Command::JoinToken(a) => join_token(a),
        Command::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(*a)),
    }
}

fn init(a: InitArgs) -> Result<()> {
    if a.join {
        return join(a);
    }
    let out = datadir::init(
        &a.data_dir,
        &InitOptions {
            domain: a.domain.unwrap_or_default(),
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            store: a.store.store.clone(),
        },
    )?;
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "Initialised {} for https://{}",
            a.data_dir.display(),
            out.domain
        );
        if let Some(ca) = &out.ca_cert {
            println!("CA certificate (give it to clients): {}", ca.display());
        }
        println!(
            "Admin auth token (shown once, keep it safe):\n  {}",
            out.admin_token
        );
        println!(
            "Next: posternd serve --data-dir {}   then   postern login --domain {} --auth-token <token>{}",
            a.data_dir.display(),
            out.domain,
            out.ca_cert
                .as_ref()
                .map(|c| format!(" --ca-file {}", c.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn join(a: InitArgs) -> Result<()> {
    let token = match &a.join_token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --join-token-file {}", path.display()))?,
        None => std::env::var("POSTERN_JOIN_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "--join needs the token `posternd join-token` printed: set POSTERN_JOIN_TOKEN or pass --join-token-file"
            )
        })?,
    };
    let url = a.store.store.clone().unwrap_or_default();
    let out = datadir::join::join(&a.data_dir, &url, &token)?;
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "Joined: {} for https://{} ({})",
            a.data_dir.display(),
            out.domain,
            out.files.join(", ")
        );
        println!(
            "Next: posternd serve --data-dir {} --gateway-name NAME",
            a.data_dir.display()
        );
    }
    Ok(())
}

fn join_token(a: JoinTokenArgs) -> Result<()> {
    let dd = DataDir::new(&a.data_dir);
    let config = dd.load_config()?;
    let location = StoreLocation::resolve(
        a.store.store.as_deref(),
        config.store.as_deref(),
        &dd.database(),
    )?;
    if !matches!(location, StoreLocation::Postgres(_)) {
        anyhow::bail!(
            "{} keeps its store in {}: only gateways sharing a PostgreSQL store can be joined (see `posternd migrate`)",
            a.data_dir.display(),
            location.describe()
        );
    }
    let store = location.open(
        "join-token",
        notice_sealer(&SecretBox::load(&dd.secret_key())?),
    )?;
    let token = datadir::join::make_token(&dd, &store)?;
    println!(
        "Join token (shown once; it opens this gateway's keys, keep it like them):\n  {token}"
    );
    println!(
        "On the new machine: POSTERN_JOIN_TOKEN=<token> posternd init --join --data-dir DIR --store '<the same URL>'"
    );
    Ok(())
}

fn migrate(a: MigrateArgs) -> Result<()> {
    let dd = DataDir::new(&a.from);
    let config = dd.load_config()?;
    let source = StoreLocation::resolve(None, config.store.as_deref(), &dd.database())?;
    let target = StoreLocation::parse(&a.to, &dd.database())?;
    let sealer = notice_sealer(&SecretBox::load(&dd.secret_key())?);
    let counts = postern_gateway::store::migrate::between(&source, &target, a.force, sealer)?;
    println!("migrated: {counts}; counts verified");
    println!(
        "Next: posternd serve --data-dir {} --store '<the --to URL>' (or set POSTERN_STORE)",
        a.from.display()
    );
    Ok(())
}

async fn serve(a: ServeArgs) -> Result<()> {
    // Flag mistakes are reported before anything is opened or bound.
    a.acme.clone().into_options()?;
    let dd = DataDir::new(&a.data_dir);
    let config = dd.load_config()?;
    // Certificate files are checked before the store is opened, so a bad one changes nothing.
    let setup = a.tls.file_setup(&config)?;
    let certs = Certificates::new(config.domain.clone(), setup.files, setup.internal)
        .context("loading the TLS certificates")?;
    let secretbox = SecretBox::load(&dd.secret_key())?;
    let signer = TokenSigner::load(&dd.signing_key())?;
    let location = StoreLocation::resolve(
        a.store.store.as_deref(),
        config.store.as_deref(),
        &dd.database(),
    )?;
    let gateway_name = a
        .gateway_name
        .clone()
        .unwrap_or_else(postern_gateway::state::default_gateway_name);
    // Unique per process, so a restarted gateway of the same name still hears its old self.
    let origin = format!("{gateway_name}-{:08x}", rand::random::<u32>());
    let store = location
        .open_waiting(&origin, notice_sealer(&secretbox))
        .await?;
    let mut extra_ca = Vec::new();
    for p in &a.upstream_ca {
        extra_ca.push(
            std::fs::read(p).with_context(|| format!("reading --upstream-ca {}", p.display()))?,
        );
    }
    let mut idp_ca = Vec::new();
    for p in &a.idp_ca {
        let pem = std::fs::read(p).with_context(|| format!("reading --idp-ca {}", p.display()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--idp-ca {} is not PEM", p.display()))?;
        if certs.is_empty() {
            anyhow::bail!(
                "--idp-ca {} holds no certificate; pass the PEM of the CA that signed the identity provider's certificate",
                p.display()
            );
        }
        idp_ca.extend_from_slice(&pem);
        idp_ca.push(b'\n');
    }
    let upstream = UpstreamClient::new(UpstreamOptions {
        extra_ca_pem: extra_ca,
        connect_timeout: a.upstream_connect_timeout,
        response_header_timeout: a.upstream_timeout,
    })?;
    let access_log = match a.access_log.as_str() {
        "-" => AccessLog::stdout(),
        "off" => AccessLog::disabled(),
        path => AccessLog::file(path).with_context(|| format!("opening --access-log {path}"))?,
    };
    // Usage rows get their own connection so batches never hold up the gateway's store.
    let usage = UsageRecorder::start(Arc::new(
        location
            .open_waiting(&origin, notice_sealer(&secretbox))
            .await?,
    ))
    .context("starting the usage recorder")?;
    let mut telemetry = Telemetry::new(access_log)
        .with_usage(usage)
        .with_gateway_name(&gateway_name);
    let exporter = match &a.otlp_endpoint {
        Some(endpoint) => {
            let exporter = OtlpExporter::start(OtlpOptions {
                headers: a.otlp_header.clone(),
                service_name: a.otlp_service_name.clone(),
                domain: Some(config.domain.clone()),
                ..OtlpOptions::new(endpoint)
            })
            .context("--otlp-endpoint")?;
            tracing::info!("exporting OpenTelemetry logs and traces to {endpoint}");
            telemetry = telemetry.with_otlp(exporter.clone());
            Some(exporter)
        }
        None => None,
    };
    let gw = Gateway::open(GatewayParts {
        domain: config.domain.clone(),
        settings: Settings {
            token_ttl: a.token_ttl,
            login_ttl: a.login_ttl,
            max_body_bytes: a.max_body_bytes,
            limit_default_completion_tokens: a.limit_default_completion_tokens,
            client_limits: a.limits.limits(),
            idp_extra_ca_pem: (!idp_ca.is_empty()).then_some(idp_ca),
            hsts: a.tls.hsts.clone(),
            gateway_name: gateway_name.clone(),
            limit_gateways: a.limit_gateways,
        },
        store,
        secretbox,
        signer,
        upstream,
        telemetry,
    })?;
    if let Some(wg_listen) = a.wg_listen {
        let options = TunnelOptions {
            listen: wg_listen,
            public_endpoint: a
                .wg_endpoint
                .clone()
                .unwrap_or_else(|| format!("{}:{}", config.domain, wg_listen.port())),
            key_path: a.data_dir.join(postern_gateway::tunnel::keyfile::FILE_NAME),
            idle_timeout: a.wg_idle_timeout,
            keepalive: 25,
        };
        Tunnel::start(gw.clone(), options)
            .await
            .context("starting the WireGuard tunnel (--wg-listen)")?;
    }
    let max_connections = a.limits.limits().max_connections as u64;
    if let Some(files) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| open_files_limit(&l))
    {
        if max_connections + 256 > files {
            tracing::warn!(
                "--max-connections {max_connections} leaves too few of the {files} open files \
                 this process may have for upstreams and the store; raise the limit \
                 (ulimit -n, LimitNOFILE=) or lower --max-connections"
            );
        }
    }
    tracing::info!(
        "gateway {gateway_name} on the store {}",
        location.describe()
    );
    postern_gateway::state::sync::start(&gw);
    let _ = gw.certs.set(certs.clone());
    let tls = certs.server_config()?;
    tokio::spawn(postern_gateway::certs::watch::reload_files(certs.clone()));
    tokio::spawn(postern_gateway::certs::watch::report_coverage(
        gw.clone(),
        certs.clone(),
        a.acme.acme,
    ));
    let door_threads = match a.workers {
        0 => postern_gateway::frontdoor::workers::default_count(),
        n => usize::from(n),
    };
    let listeners = postern_gateway::frontdoor::workers::bind(a.https_listen, door_threads)
        .with_context(|| format!("binding --https-listen {}", a.https_listen))?;
    let local = listeners[0].local_addr()?;
    postern_gateway::certs::acme::launch(a.acme.clone(), gw.clone(), certs.clone(), local.port())
        .await?;
    tracing::info!(
        "listening on {local} ({door_threads} threads): control plane https://{d}, services https://<name>.{d}",
        d = config.domain
    );

    if let Some(addr) = a.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        tracing::info!("metrics at http://{}/metrics", metrics.local_addr()?);
        tokio::spawn(postern_gateway::frontdoor::metrics::serve(
            gw.clone(),
            metrics,
        ));
    }

    let expiry_gw = gw.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            if let Err(e) = expiry_gw.expire_sessions() {
                tracing::warn!(error = %e, "expiring sessions failed");
            }
        }
    });

    let limits_gw = gw.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Said once per outage of the store, not every second.
        let mut failing = false;
        loop {
            tick.tick().await;
            let g = limits_gw.clone();
            match tokio::task::spawn_blocking(move || g.flush_limits()).await {
                Ok(Err(e)) if !failing => {
                    tracing::warn!(error = %e, "saving limit counters failed; retrying every second");
                    failing = true;
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "saving limit counters panicked"),
                Ok(Ok(_)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("limit counters saved again");
                    }
                }
            }
        }
    });

    let closing_gw = gw.clone();
    let shutdown = async move {
        shutdown_signal().await;
        // End `posternctl logs -f` streams so they do not hold up the graceful shutdown.
        closing_gw.telemetry.recent.close();
    };
    let door = postern_gateway::frontdoor::workers::Workers::start(
        gw.clone(),
        listeners,
        tls,
        Duration::from_secs(30),
    )
    .context("starting the front-door threads")?;
    shutdown.await;
    door.stop().await;
    let flushed_gw = gw.clone();
    let flushed =
        tokio::task::spawn_blocking(move || flushed_gw.telemetry.flush(Duration::from_secs(5)))
            .await
            .unwrap_or(false);
    if !flushed {
        tracing::warn!("some access log lines or usage rows may not have been written");
    }
    if let Some(exporter) = exporter {
        if !exporter.flush(Duration::from_secs(3)).await {
            tracing::warn!("OTLP export not flushed within 3s at shutdown");
        }
    }
    if let Err(e) = gw.close_limits() {
        tracing::warn!(error = %e, "saving limit counters at shutdown failed");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_files_limit_reads_the_soft_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max processes             95000                95000                processes\n\
                    Max open files            20000                524288               files\n";
        assert_eq!(super::open_files_limit(text), Some(20000));
        assert_eq!(
            super::open_files_limit("Max open files unlimited unlimited files"),
            None
        );
    }
}
