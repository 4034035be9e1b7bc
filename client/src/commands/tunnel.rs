//! `postern connect`, `status` and `disconnect`: the WireGuard tunnel to the gateway.

use super::tunnel_login::{log_in, Control, Relogin};
use super::{client_for, writeln_out, Context};
use crate::config::{self, Session};
use crate::duration::{format_duration, parse_duration};
use crate::error::{ClientError, Result};
use crate::http::GATEWAY_ADDRESS_ENV;
use crate::tunnel::{self, state, Mode, Publish, RunOptions, TunnelError, TunnelPlan};
use chrono::Utc;
use postern_common::api::{TunnelConnectRequest, TunnelConnectResponse};
use postern_common::wireguard::KeyPair;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `postern connect`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Run without root: a network stack inside postern; reach Services with -p or --socks5.
    #[arg(long)]
    pub userspace: bool,
    /// Publish a Service port on 127.0.0.1: LOCAL:SERVICE:PORT (repeatable; needs --userspace).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "LOCAL:SERVICE:PORT",
        requires = "userspace"
    )]
    pub publish: Vec<Publish>,
    /// Run a SOCKS5 proxy (no auth, CONNECT) on this address, e.g. 127.0.0.1:1080 (needs --userspace).
    #[arg(long, value_name = "ADDR", requires = "userspace")]
    pub socks5: Option<SocketAddr>,
    /// The TUN device name in kernel mode.
    #[arg(long, default_value = "postern0", value_name = "NAME")]
    pub interface: String,
    /// Log in with this domain first when there is no valid saved session (sidecars).
    #[arg(long, env = "POSTERN_DOMAIN")]
    pub domain: Option<String>,
    /// The auth token for that login.
    #[arg(long, env = "POSTERN_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// A PEM file with an extra CA certificate, for that login (the system's CA store and the
    /// public web roots are trusted too).
    #[arg(long, env = "POSTERN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// An OAuth2 credential's client id, to log in (and in again when the Session expires)
    /// with the client credentials grant instead of an auth token (workloads).
    #[arg(long, env = "POSTERN_CLIENT_ID", requires = "client_secret")]
    pub client_id: Option<String>,
    /// That credential's client secret.
    #[arg(
        long,
        env = "POSTERN_CLIENT_SECRET",
        hide_env_values = true,
        requires = "client_id"
    )]
    pub client_secret: Option<String>,
    /// How often the agent checks in with the gateway (to notice a revoked Session or a
    /// restarted gateway), e.g. 30s or 1m.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub check_interval: String,
}

/// Brings the tunnel up and stays in the foreground until Ctrl-C or SIGTERM.
pub fn connect(ctx: &Context, args: &ConnectArgs, out: &mut dyn Write) -> Result<()> {
    if args.userspace && args.publish.is_empty() && args.socks5.is_none() {
        return Err(ClientError::Invalid(
            "--userspace needs -p LOCAL:SERVICE:PORT or --socks5 ADDR to reach Services".into(),
        ));
    }
    let check_interval = Duration::from_secs(parse_duration(&args.check_interval)?.max(1));
    let session = ensure_session(ctx, args, out)?;
    let client = client_for(&session, Some(session.access_token.clone()))?;
    let keys = KeyPair::generate();
    let request = TunnelConnectRequest {
        public_key: keys.public.to_base64(),
    };
    let response: TunnelConnectResponse = client.post(&["tunnel", "connect"], &request)?;
    let control = Arc::new(Control {
        ctx: ctx.clone(),
        relogin: Relogin::from_args(args),
        ca_file: args.ca_file.clone(),
        request: request.clone(),
        client: Default::default(),
    });
    let plan = TunnelPlan::from_response(&response)?;
    let gateway_override = match std::env::var(GATEWAY_ADDRESS_ENV) {
        Ok(raw) => Some(
            raw.trim()
                .parse()
                .map_err(|_| ClientError::InvalidGatewayAddress { input: raw })?,
        ),
        Err(_) => None,
    };
    let mode = if args.userspace {
        Mode::Userspace {
            publish: args.publish.clone(),
            socks5: args.socks5,
        }
    } else {
        Mode::Kernel {
            interface: args.interface.clone(),
        }
    };
    let opts = RunOptions {
        mode,
        home: ctx.home.clone(),
        gateway_override,
        check_interval,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TunnelError::io("cannot start the async runtime", e))?;
    let result = runtime.block_on(tunnel::run(plan, keys, opts, out, control));
    runtime.shutdown_timeout(Duration::from_secs(2));
    // Tell the gateway the peer is gone (with the Session in use now, which may be newer
    // than the one we started with); it expires idle peers anyway.
    let client = match config::load(&ctx.home) {
        Ok(s) => client_for(&s, Some(s.access_token.clone())).unwrap_or(client),
        Err(_) => client,
    };
    let _ = client.post::<_, serde_json::Value>(&["tunnel", "disconnect"], &request);
    result?;
    writeln_out(out, format_args!("Disconnected"))
}

/// The saved session, or a new one from --domain with --auth-token (POSTERN_DOMAIN,
/// POSTERN_AUTH_TOKEN) or with --client-id/--client-secret (OAuth2) when there is none or it
/// expired.
fn ensure_session(ctx: &Context, args: &ConnectArgs, out: &mut dyn Write) -> Result<Session> {
    let saved = config::load(&ctx.home).and_then(|s| {
        s.ensure_valid(Utc::now())?;
        Ok(s)
    });
    let relogin = Relogin::from_args(args);
    match saved {
        Ok(s) => Ok(s),
        Err(ClientError::NotLoggedIn { .. } | ClientError::SessionExpired { .. })
            if !matches!(relogin, Relogin::Nothing) =>
        {
            log_in(ctx, &relogin, args.ca_file.as_ref(), out)
        }
        Err(e) => Err(e),
    }
}

/// Shows the running tunnel from `tunnel.json`; fails when none runs.
pub fn status(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let st = match state::load(&ctx.home)? {
        Some(st) if state::pid_alive(st.pid) => st,
        _ => {
            return Err(ClientError::Invalid(
                "not connected; run `postern connect`".into(),
            ))
        }
    };
    let now = Utc::now();
    let age = |t: chrono::DateTime<Utc>| format_duration((now - t).num_seconds().max(0) as u64);
    let mut text = format!(
        "Tunnel:    {} ({} mode{}), pid {}\n",
        st.address,
        st.mode,
        st.interface
            .as_deref()
            .map(|i| format!(", device {i}"))
            .unwrap_or_default(),
        st.pid
    );
    if let Some(a6) = &st.address6 {
        text.push_str(&format!("IPv6:      {a6}\n"));
    }
    text.push_str(&format!(
        "Gateway:   {} ({})\n",
        st.gateway, st.gateway_address
    ));
    text.push_str(&format!("Up:        {}\n", age(st.started)));
    match &st.problem {
        Some(p) => text.push_str(&format!("Problem:   {p}\n")),
        None => text.push_str(&format!(
            "Checked:   {}\n",
            st.last_check_in
                .map(|t| format!("{} ago", age(t)))
                .unwrap_or_else(|| "not yet".into())
        )),
    }
    if st.reconnects > 0 {
        text.push_str(&format!("Reconnects: {}\n", st.reconnects));
    }
    text.push_str(&format!(
        "Handshake: {}\n",
        st.last_handshake
            .map(|h| format!("{} ago", age(h)))
            .unwrap_or_else(|| "none yet".into())
    ));
    text.push_str(&format!(
        "Bytes:     {} in, {} out\n",
        st.rx_bytes, st.tx_bytes
    ));
    for p in &st.published {
        text.push_str(&format!(
            "Published: 127.0.0.1:{} -> {}:{}\n",
            p.local_port, p.service, p.port
        ));
    }
    if let Some(s) = &st.socks5 {
        text.push_str(&format!("SOCKS5:    {s}\n"));
    }
    text.push_str("Services:\n");
    if st.services.is_empty() {
        text.push_str("  (none)\n");
    }
    for s in &st.services {
        text.push_str(&format!(
            "  {:<24} {}:{}  {}\n",
            s.name, s.address, s.port, s.mode
        ));
    }
    out.write_all(text.as_bytes())
        .map_err(|e| ClientError::io("cannot write to", "stdout", e))
}

/// Stops the running tunnel (SIGTERM) and waits for it to exit.
pub fn disconnect(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let Some(st) = state::load(&ctx.home)? else {
        return writeln_out(out, format_args!("Not connected"));
    };
    if !state::pid_alive(st.pid) {
        state::remove(&ctx.home);
        return writeln_out(
            out,
            format_args!(
                "Not connected (removed a stale tunnel.json of pid {})",
                st.pid
            ),
        );
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(st.pid).unwrap_or(i32::MAX));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|e| {
        ClientError::Invalid(format!(
            "cannot signal postern connect (pid {}): {e}; it may belong to another user (try sudo)",
            st.pid
        ))
    })?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while state::pid_alive(st.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if state::pid_alive(st.pid) {
        return Err(ClientError::Invalid(format!(
            "postern connect (pid {}) did not exit within 15 s",
            st.pid
        )));
    }
    writeln_out(
        out,
        format_args!("Disconnected from {} (pid {})", st.gateway, st.pid),
    )
}
