//! The Prometheus listener (`posternd serve --metrics-listen ADDR`): plain HTTP, `/metrics`
//! only, separate from the public TLS front door so it can stay on a private address.

use crate::state::Gateway;
use crate::telemetry::metrics::Gauges;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&gw, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn respond<B>(gw: &Gateway, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let gauges = Gauges {
                active_sessions: gw.session_count() as u64,
                tunnel_peers: gw.tunnel.get().map_or(0, |t| t.peer_count() as u64),
                access_log_dropped: gw.telemetry.access_log.dropped(),
                usage_dropped: gw.telemetry.usage.as_ref().map_or(0, |u| u.dropped()),
                usage_buffered: gw
                    .telemetry
                    .usage
                    .as_ref()
                    .map_or(0, |u| u.buffered() as u64),
                store_reachable: u64::from(gw.store_health.reachable()),
                limit_charges_pending: gw.limits.charges_pending(),
                limit_charges_dropped: gw.limits.charges_dropped(),
                requests_in_flight: gw.shedder.in_flight() as u64,
                requests_shed: gw.shedder.shed_total(),
                connections_refused: gw.shedder.refused_connections(),
            };
            let mut text = gw.telemetry.metrics.render(gauges);
            if let Some(certs) = gw.certs.get() {
                crate::certs::watch::render_metrics(certs, &mut text);
            }
            crate::certs::acme::METRICS.render(&mut text);
            (StatusCode::OK, CONTENT_TYPE, text)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}
