//! Userspace mode: a smoltcp [`NetStack`] over the WireGuard endpoint, with Services
//! published on local ports (`-p`) and a local SOCKS5 proxy (`--socks5`).

use super::dns;
use super::error::TunnelError;
use super::plan::TunnelPlan;
use super::publish::Publish;
use super::socks5::{self, Reply, Socks5Error, Target};
use postern_common::netstack::{IpCidr, NetConfig, NetStack};
use postern_common::wireguard::{Delivered, EndpointHandle};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long one DNS query through the tunnel waits for its answer.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// The running userspace tunnel; dropping it stops listeners and the stack.
pub struct Userspace {
    stack: Arc<NetStack>,
    tasks: Vec<JoinHandle<()>>,
    /// Each `-p` with its bound local address and its target in the tunnel.
    pub published: Vec<(Publish, SocketAddr, SocketAddr)>,
    /// The bound SOCKS5 address.
    pub socks5: Option<SocketAddr>,
}

impl Drop for Userspace {
    fn drop(&mut self) {
        self.stack.shutdown();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Userspace {
    /// Stops the stack and the listeners and waits until their sockets are closed, so the
    /// same local ports can be bound again at once (a tunnel brought up again).
    pub async fn stop(mut self) {
        self.stack.shutdown();
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }

    /// Starts the stack, the links to the endpoint and the listeners.
    pub async fn start(
        plan: Arc<TunnelPlan>,
        endpoint: EndpointHandle,
        from_gateway: mpsc::Receiver<Delivered>,
        publish: &[Publish],
        socks5_addr: Option<SocketAddr>,
    ) -> Result<Self, TunnelError> {
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1024);
        let mut addresses = vec![cidr(plan.address.addr, plan.address.prefix)];
        if let Some(a6) = plan.address6 {
            addresses.push(cidr(a6.addr, a6.prefix));
        }
        let config = NetConfig {
            addresses,
            mtu: usize::from(super::kernel::MTU),
            ..NetConfig::default()
        };
        // Decrypted packets go straight from the endpoint's channel into the stack.
        let stack = Arc::new(NetStack::new(config, from_gateway, out_tx)?);
        let mut tasks = vec![tokio::spawn(async move {
            while let Some(p) = out_rx.recv().await {
                if let Err(e) = endpoint.send_packet(&p).await {
                    tracing::debug!(error = %e, "packet not sent into the tunnel");
                }
            }
        })];
        let mut published = Vec::new();
        for p in publish {
            let service = plan.service_named(&p.service).ok_or_else(|| {
                let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
                TunnelError::Invalid(format!(
                    "-p {p}: no Service {:?} is reachable through the tunnel; reachable: {}",
                    p.service,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
            let ip: IpAddr = service.address.parse().map_err(|_| {
                TunnelError::BadResponse(format!("Service {} address", service.name))
            })?;
            let target = SocketAddr::new(ip, p.port);
            let listener = bind_local(SocketAddr::from(([127, 0, 0, 1], p.local_port))).await?;
            let local = listener
                .local_addr()
                .map_err(|e| TunnelError::io("local_addr", e))?;
            tasks.push(tokio::spawn(serve_publish(listener, stack.clone(), target)));
            published.push((p.clone(), local, target));
        }
        let mut socks5 = None;
        if let Some(addr) = socks5_addr {
            let listener = bind_local(addr).await?;
            socks5 = Some(
                listener
                    .local_addr()
                    .map_err(|e| TunnelError::io("local_addr", e))?,
            );
            tasks.push(tokio::spawn(serve_socks5(
                listener,
                stack.clone(),
                plan.clone(),
            )));
        }
        Ok(Userspace {
            stack,
            tasks,
            published,
            socks5,
        })
    }
}

/// When the copy ended abnormally (the gateway reset the tunnel side because it revoked the
/// Session, or the agent stopped its stack to bring the tunnel up again), resets the local
/// connection too: the application sees what it would see in kernel mode, never a clean end
/// of a stream that was cut off.
fn pass_reset_on(local: &TcpStream, copied: std::io::Result<(u64, u64)>) {
    if copied.is_err() {
        let _ = local.set_zero_linger();
    }
}

fn cidr(addr: IpAddr, prefix: u8) -> IpCidr {
    IpCidr::new(addr.into(), prefix)
}

async fn bind_local(addr: SocketAddr) -> Result<TcpListener, TunnelError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| TunnelError::io(format!("cannot listen on {addr}"), e))
}

async fn serve_publish(listener: TcpListener, stack: Arc<NetStack>, target: SocketAddr) {
    loop {
        let Ok((mut local, peer)) = listener.accept().await else {
            continue;
        };
        let stack = stack.clone();
        tokio::spawn(async move {
            match stack.connect(target).await {
                Ok(mut remote) => {
                    let copied = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                    pass_reset_on(&local, copied);
                }
                Err(e) => tracing::warn!(%peer, %target, error = %e, "cannot reach the Service"),
            }
        });
    }
}

async fn serve_socks5(listener: TcpListener, stack: Arc<NetStack>, plan: Arc<TunnelPlan>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let (stack, plan) = (stack.clone(), plan.clone());
        tokio::spawn(async move {
            if let Err(e) = socks5_session(client, &stack, &plan).await {
                tracing::debug!(%peer, error = %e, "SOCKS5 session ended");
            }
        });
    }
}

async fn socks5_session(
    mut client: TcpStream,
    stack: &NetStack,
    plan: &TunnelPlan,
) -> Result<(), Socks5Error> {
    match socks5::read_greeting(&mut client).await {
        Ok(answer) => client.write_all(&answer).await?,
        Err(Socks5Error::NoAcceptableMethod) => {
            client.write_all(&socks5::refuse_methods()).await?;
            return Err(Socks5Error::NoAcceptableMethod);
        }
        Err(e) => return Err(e),
    }
    let target = match socks5::read_request(&mut client).await {
        Ok(t) => t,
        Err(e) => {
            if let Some(code) = e.reply() {
                client.write_all(&socks5::reply(code, None)).await?;
            }
            return Err(e);
        }
    };
    let addr = match target {
        Target::Addr(a) => Some(a),
        Target::Domain(name, port) => resolve(stack, plan, &name)
            .await
            .map(|ip| SocketAddr::new(ip, port)),
    };
    let Some(addr) = addr else {
        client
            .write_all(&socks5::reply(Reply::HostUnreachable, None))
            .await?;
        return Ok(());
    };
    match stack.connect(addr).await {
        Ok(mut remote) => {
            client
                .write_all(&socks5::reply(Reply::Succeeded, Some(remote.local_addr())))
                .await?;
            let copied = tokio::io::copy_bidirectional(&mut client, &mut remote).await;
            pass_reset_on(&client, copied);
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "SOCKS5 connect failed");
            client
                .write_all(&socks5::reply(Reply::HostUnreachable, None))
                .await?;
        }
    }
    Ok(())
}

/// A host name's address: an IP as is, a Service name from the list, else the tunnel's DNS.
pub async fn resolve(stack: &NetStack, plan: &TunnelPlan, name: &str) -> Option<IpAddr> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(ip) = plan
        .service_named(name)
        .and_then(|s| s.address.parse().ok())
    {
        return Some(ip);
    }
    let qtype = if plan.dns.is_ipv4() {
        dns::TYPE_A
    } else {
        dns::TYPE_AAAA
    };
    for _ in 0..2 {
        let id: u16 = rand::random();
        let query = dns::build_query(id, name, qtype).ok()?;
        let port = rand::random::<u16>() % 16_000 + 49_152;
        let Ok(socket) = stack.bind_udp(SocketAddr::new(plan.address.addr, port)) else {
            continue;
        };
        if socket
            .send_to(&query, SocketAddr::new(plan.dns, 53))
            .await
            .is_err()
        {
            continue;
        }
        let mut buf = vec![0u8; 1500];
        if let Ok(Ok((n, _))) = tokio::time::timeout(DNS_TIMEOUT, socket.recv_from(&mut buf)).await
        {
            return dns::parse_answer(id, &buf[..n]).ok()?.into_iter().next();
        }
    }
    None
}
