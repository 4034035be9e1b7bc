//! The public front door: one TLS listener (HTTP/1.1 and HTTP/2 by ALPN) that sends the
//! bare domain to the control plane (OAuth2, control API, health) and `<svc>.<domain>` to
//! the request pipeline.

pub mod conn;
pub mod control;
pub mod cookies;
pub mod host;
pub mod limit_args;
pub mod limits;
pub mod metrics;
pub mod oauth2;
pub mod observe;
pub mod respond;
pub mod shed;
pub mod signin;
pub mod tls;
pub mod workers;

use crate::proxy::buffer::{read_limited, BufferError, TimedBody};
use crate::proxy::inbound::{self, ClientRequest};
use crate::proxy::pipeline;
use crate::proxy::BoxBody;
use crate::state::Gateway;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use limits::Limits;
use shed::Shedder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Accepts connections on `listener` until `shutdown` resolves, then lets this thread's
/// in-flight requests finish (up to `shared.grace`). One runs per front-door thread
/// ([`workers`]); the bounds come from `gw.settings.client_limits`.
async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: workers::Shared,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = Arc::new(gw.settings.client_limits.clone());
    let acceptor = TlsAcceptor::from(tls);
    let builder = Arc::new(limits.server_builder());
    let shedder = gw.shedder.clone();
    let max_connections = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    // This thread's connections, for the drain at shutdown; the cap is `shared.permits`.
    let mine = Arc::new(Semaphore::new(max_connections as usize));
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past the cap a connection is closed at once rather than left in the kernel's
        // queue, so the client learns now and can go elsewhere.
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            let refused = shedder.refuse_connection();
            if refused.is_power_of_two() {
                tracing::warn!(
                    %peer,
                    refused_so_far = refused,
                    "at --max-connections ({}): closing new connections",
                    limits.max_connections
                );
            }
            drop(tcp);
            continue;
        };
        let Ok(local) = mine.clone().try_acquire_owned() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let gw = gw.clone();
        let builder = builder.clone();
        let limits = limits.clone();
        let shedder = shedder.clone();
        let closing_rx = closing_rx.clone();
        let control = shared.control.clone();
        tokio::spawn(async move {
            let _permits = (permit, local);
            let handshake = tokio::time::timeout(limits.tls_handshake, acceptor.accept(tcp));
            let tls = match tokio::select! {
                r = handshake => r,
                _ = conn::closing(closing_rx.clone()) => return,
            } {
                Ok(Ok(s)) if crate::certs::is_acme_challenge(s.get_ref().1.alpn_protocol()) => {
                    // A TLS-ALPN-01 validation: the handshake was the answer; no HTTP follows.
                    let mut s = s;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
                    return;
                }
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let activity = conn::Activity::new();
            let svc = {
                let activity = activity.clone();
                let limits = limits.clone();
                hyper::service::service_fn(move |req| {
                    let gw = gw.clone();
                    let activity = activity.clone();
                    let shedder = shedder.clone();
                    let limits = limits.clone();
                    let control = control.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            admit(gw, req, peer, &activity, &shedder, &limits, &control).await,
                        )
                    }
                })
            };
            let conn = builder
                .serve_connection(TokioIo::new(tls), svc)
                .into_owned();
            let ended = conn::drive(
                conn,
                |c| c.graceful_shutdown(),
                activity,
                limits.header_read,
                limits.idle,
                conn::closing(closing_rx),
            );
            match ended.await {
                conn::Ended::Finished(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error")
                }
                conn::Ended::Dropped => tracing::debug!(%peer, "idle connection closed"),
                conn::Ended::Finished(Ok(())) => {}
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    tokio::select! {
        _ = mine.acquire_many(max_connections) => tracing::debug!("this thread's connections closed"),
        _ = tokio::time::sleep(shared.grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
}

/// Serves one request once [`shed::admit`] lets it in. Whatever answers it, a request body
/// left unread is drained afterwards ([`inbound`]), so the answer reaches HTTP/2 clients.
async fn admit(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
    activity: &Arc<conn::Activity>,
    shedder: &Arc<Shedder>,
    limits: &Limits,
    control: &tokio::runtime::Handle,
) -> Response<BoxBody> {
    let (req, leftover) = inbound::wrap(req);
    let hsts = gw.settings.hsts.clone();
    let mut resp = match shed::admit(activity, shedder, limits, req.headers()) {
        Ok(admitted) => admitted.hold(route(gw, req, peer, control).await),
        Err(refused) => {
            drop(req);
            *refused
        }
    };
    leftover.drain_in_background();
    if let Some(value) = hsts {
        resp.headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, value);
    }
    resp
}

async fn route(
    gw: Arc<Gateway>,
    req: ClientRequest,
    peer: SocketAddr,
    control: &tokio::runtime::Handle,
) -> Response<BoxBody> {
    let host = match host::request_host(
        req.uri().authority(),
        req.headers().get_all(http::header::HOST),
    ) {
        Ok(h) => h,
        Err(e) => return respond::error(StatusCode::BAD_REQUEST, e.to_string(), None),
    };
    if host == gw.domain {
        // Applies, secrets, sign-ins and logouts write to the store synchronously: on the
        // main runtime, a slow store holds these requests, not a front-door thread.
        let task = control.spawn(async move { control_plane(&gw, req).await });
        return task.await.unwrap_or_else(|_| {
            respond::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request failed; try again",
                None,
            )
        });
    }
    match host::service_label(&host, &gw.domain) {
        Some(label) => {
            let label = label.to_string();
            pipeline::handle(gw, &label, req, peer).await
        }
        None => respond::not_found(),
    }
}

/// `/healthz`: always 200 while the process serves (an outage of the store must not take
/// every gateway out of a load balancer), saying whether the store answers and whether
/// other gateways' changes are heard. From memory only: a ping runs in the background.
fn health(gw: &Gateway) -> serde_json::Value {
    let store = &gw.store_health;
    serde_json::json!({
        "status": "ok",
        "gateway": gw.name(),
        "sessions": gw.session_count(),
        "store": {
            "backend": gw.store().backend_name(),
            "reachable": store.reachable(),
            "feed": store.feed().as_str(),
        },
    })
}

async fn control_plane(gw: &Arc<Gateway>, req: ClientRequest) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/login") => signin::login(gw, &req).await,
        (Method::GET, "/callback") => signin::callback(gw, &req).await,
        (Method::GET | Method::POST, "/logout") => signin::logout(gw, &req),
        (Method::GET, "/") => match signin::cookie_principal(gw, req.headers()) {
            Some(p) => {
                let (origin, _) = signin::public_origin(&gw.domain, req.headers(), req.uri());
                signin::portal(gw.clone(), p, origin).await
            }
            None if signin::wants_html(req.headers()) => {
                let (origin, _) = signin::public_origin(&gw.domain, req.headers(), req.uri());
                signin::redirect(&signin::sign_in_url(&origin, &format!("{origin}/")))
            }
            None => respond::error(
                StatusCode::UNAUTHORIZED,
                "sign in with a browser to see the portal",
                None,
            ),
        },
        (Method::GET, "/healthz") => respond::json(StatusCode::OK, &health(gw)),
        (Method::GET, "/readyz") => {
            respond::json(StatusCode::OK, &serde_json::json!({"ready": true}))
        }
        (Method::GET, "/.well-known/oauth-authorization-server") => {
            oauth2::metadata(&signin::public_origin(&gw.domain, req.headers(), req.uri()).0)
        }
        (Method::POST, "/oauth2/token") => {
            let headers = req.headers().clone();
            let body = TimedBody::new(req.into_body(), gw.settings.client_limits.body);
            match read_limited(body, limits::MAX_TOKEN_FORM).await {
                // Checking the secret hash and storing the Session run off the front-door
                // thread: a slow store or a burst of grants holds these requests only, not
                // every connection the thread serves.
                Ok(body) => {
                    let gw = gw.clone();
                    tokio::task::spawn_blocking(move || oauth2::token(&gw, &headers, &body))
                        .await
                        .unwrap_or_else(|_| {
                            respond::error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "the token request failed; try again",
                                None,
                            )
                        })
                }
                Err(e @ BufferError::TimedOut(_)) => {
                    respond::error(StatusCode::REQUEST_TIMEOUT, e.to_string(), None)
                }
                Err(e) => respond::error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string(), None),
            }
        }
        (_, "/oauth2/token") => respond::error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None),
        (_, p)
            if p == postern_common::api::API_PREFIX
                || p.starts_with(&format!("{}/", postern_common::api::API_PREFIX)) =>
        {
            control::handle(gw, req).await
        }
        _ => respond::not_found(),
    }
}
