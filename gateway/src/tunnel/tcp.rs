//! `mode: TCP` Services in the tunnel: one policy decision per connection (the rules see
//! method `CONNECT`, path `/`, no body), then bytes copied both ways to the upstream
//! (`config.upstream.url`, `tcp://host:port`), and one access log line when it closes.
//!
//! The line's status says how it ended: 200 closed normally, 401 no live Session owns the
//! source address, 403 denied by policy, 502 the upstream could not be reached or no config
//! applies; `bytesIn` counts client-to-upstream bytes and `bytesOut` the other way.

use super::Tunnel;
use crate::proxy::pipeline::decide_connection;
use crate::state::{Gateway, ServiceEntry};
use crate::telemetry::access_log::AccessRecord;
use postern_common::netstack::TcpStream;
use postern_common::resources::Effect;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time to connect to a TCP upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one tunnel connection to TCP Service `service`.
pub(super) async fn serve(
    gw: Arc<Gateway>,
    tunnel: Arc<Tunnel>,
    service: Arc<ServiceEntry>,
    mut stream: TcpStream,
    remote: SocketAddr,
    cut: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let started = Instant::now();
    let mut record = AccessRecord::new(AccessRecord::new_request_id(), "CONNECT", "/");
    record.via = "tunnel".into();
    record.service = Some(service.name.clone());
    let finish = |mut record: AccessRecord, status: u16, error: Option<String>| {
        record.status = status;
        record.error = error;
        record.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        gw.telemetry.record(record);
    };
    let principal = match tunnel.principal_at(&gw, remote.ip()) {
        Ok(p) => p,
        Err(e) => {
            record.decision = Some(Effect::Deny);
            record.reason = Some(format!("not authenticated: {e}"));
            return finish(record, 401, Some(e.to_string()));
        }
    };
    record.user = Some(principal.user.name.clone());
    record.session = Some(principal.session.info.name.clone());
    record.groups = principal.user.spec.groups.clone();
    record.credential = Some(principal.session.info.credential.clone());
    let snap = gw.snapshot();
    let (decision, reason, configs) = decide_connection(&gw, &snap, &service, &principal, remote);
    record.decision = Some(decision.effect);
    record.reason = Some(reason);
    if decision.effect != Effect::Allow {
        return finish(record, 403, Some("denied".into()));
    }
    let Some(config) = configs.first() else {
        return finish(record, 502, Some("no upstream is configured".into()));
    };
    record.config = config.name.clone();
    let target = match (config.url.host_str(), config.url.port()) {
        (Some(h), Some(p)) => (h.trim_matches(['[', ']']).to_string(), p),
        _ => {
            return finish(
                record,
                502,
                Some(format!("upstream {} has no host:port", config.url)),
            )
        }
    };
    drop(snap);
    let mut upstream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((target.0.as_str(), target.1)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return finish(record, 502, Some(format!("connect: {e}"))),
        Err(_) => return finish(record, 502, Some("connect: timed out".into())),
    };
    let _ = upstream.set_nodelay(true);
    let copied = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut stream, &mut upstream) => r,
        // The upstream connection is dropped with this task: a silent upstream cannot keep
        // a revoked Session's connection alive.
        () = super::listeners::revoked(cut) => {
            return finish(record, 200, Some("cut: the Session was revoked".into()));
        }
    };
    match copied {
        Ok((to_upstream, to_client)) => {
            record.bytes_in = to_upstream;
            record.bytes_out = to_client;
            finish(record, 200, None);
        }
        Err(e) => finish(record, 200, Some(format!("connection ended: {e}"))),
    }
}
