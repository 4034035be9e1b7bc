//! One listener per Service port on the tunnel stack (any address, so every Service
//! address with that port), kept in step with the snapshot; each accepted connection is
//! sent to its Service by the address it was made to.

use super::{service_port, tcp, Tunnel};
use crate::frontdoor::conn::{drive, Activity, Ended};
use crate::frontdoor::limits::Limits;
use crate::frontdoor::shed::{self, Shedder};
use crate::proxy::{inbound, pipeline};
use crate::state::Gateway;
use hyper_util::rt::TokioIo;
use postern_common::netstack::{TcpListener, TcpStream};
use postern_common::resources::ServiceMode;
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the snapshot is checked for changes (a pointer comparison when unchanged).
const RESYNC: Duration = Duration::from_millis(100);

/// The bounds every tunnel HTTP connection meets: those of the front door, and the
/// gateway's in-flight cap.
struct Bounds {
    limits: Limits,
    shedder: Arc<Shedder>,
}

/// Keeps a listener on every port some Service uses, until the process ends.
pub(super) async fn run(gw: Arc<Gateway>, tunnel: Arc<Tunnel>) {
    let bounds = Arc::new(Bounds {
        shedder: gw.shedder.clone(),
        limits: gw.settings.client_limits.clone(),
    });
    let mut running: HashMap<u16, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(RESYNC);
    let mut seen: std::sync::Weak<crate::state::Snapshot> = std::sync::Weak::new();
    loop {
        tick.tick().await;
        let snap = gw.snapshot();
        let stopped = running.values().any(|t| t.is_finished());
        if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&snap)) && !stopped {
            continue;
        }
        seen = Arc::downgrade(&snap);
        let wanted: BTreeSet<u16> = snap
            .services
            .values()
            .filter_map(|s| service_port(s))
            .collect();
        running.retain(|port, task| {
            let keep = wanted.contains(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for port in wanted {
            if running.contains_key(&port) {
                continue;
            }
            match tunnel
                .stack()
                .listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            {
                Ok(l) => {
                    tracing::debug!(port, "tunnel listener started");
                    running.insert(
                        port,
                        tokio::spawn(accept_loop(gw.clone(), tunnel.clone(), bounds.clone(), l)),
                    );
                }
                Err(e) => tracing::warn!(port, error = %e, "tunnel listener failed"),
            }
        }
    }
}

async fn accept_loop(
    gw: Arc<Gateway>,
    tunnel: Arc<Tunnel>,
    bounds: Arc<Bounds>,
    listener: TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok((stream, local, remote)) => {
                tokio::spawn(connection(
                    gw.clone(),
                    tunnel.clone(),
                    bounds.clone(),
                    stream,
                    local,
                    remote,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tunnel accept failed; listener stopped");
                return;
            }
        }
    }
}

/// Sends a connection to the Service at its local address, or drops it.
async fn connection(
    gw: Arc<Gateway>,
    tunnel: Arc<Tunnel>,
    bounds: Arc<Bounds>,
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
) {
    // Before anything is authorised: a revocation from now on stops this connection.
    let cut = tunnel.cut_signal(remote.ip());
    let snap = gw.snapshot();
    let map = tunnel.services(&snap);
    let Some(service) = map
        .service_at(local.ip())
        .and_then(|name| snap.services.get(name))
        .filter(|s| service_port(s) == Some(local.port()))
        .cloned()
    else {
        tracing::debug!(%local, %remote, "tunnel connection to no Service; closed");
        return;
    };
    drop(snap);
    match service.spec.mode {
        ServiceMode::Tcp => tcp::serve(gw, tunnel, service, stream, remote, cut).await,
        ServiceMode::Http => {
            let name = service.name.clone();
            let activity = Activity::new();
            let svc = {
                let (activity, bounds) = (activity.clone(), bounds.clone());
                hyper::service::service_fn(move |req| {
                    let gw = gw.clone();
                    let tunnel = tunnel.clone();
                    let name = name.clone();
                    let admitted =
                        shed::admit(&activity, &bounds.shedder, &bounds.limits, req.headers());
                    async move {
                        let (req, leftover) = inbound::wrap(req);
                        let resp = match admitted {
                            Ok(admitted) => {
                                let principal = tunnel.principal_at(&gw, remote.ip());
                                admitted.hold(
                                    pipeline::handle_tunnel(gw, &name, req, remote, principal)
                                        .await,
                                )
                            }
                            Err(refused) => {
                                drop(req);
                                *refused
                            }
                        };
                        leftover.drain_in_background();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                })
            };
            let limits = &bounds.limits;
            let conn = limits
                .http1_builder()
                .serve_connection(TokioIo::new(stream), svc);
            let ended = drive(
                conn,
                |c| c.graceful_shutdown(),
                activity,
                limits.header_read,
                limits.idle,
                // The tunnel has no graceful shutdown of its own.
                std::future::pending(),
            );
            tokio::select! {
                ended = ended => if let Ended::Finished(Err(e)) = ended {
                    tracing::debug!(%remote, error = %e, "tunnel HTTP connection ended with an error");
                },
                () = revoked(cut) => {
                    tracing::debug!(%remote, "tunnel HTTP connection cut: its Session was revoked");
                }
            }
        }
    }
}

/// Resolves when the Session behind a connection is revoked; never for a connection that
/// no Session owns (nothing it asks for is allowed anyway).
pub(super) async fn revoked(cut: Option<tokio::sync::watch::Receiver<bool>>) {
    match cut {
        // An error means the signal's sender is gone, which only a revocation does.
        Some(mut rx) => {
            let _ = rx.wait_for(|cut| *cut).await;
        }
        None => std::future::pending().await,
    }
}
