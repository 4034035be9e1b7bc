use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

fn empty() -> BoxBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync()
}

fn get(uri: &str) -> http::Request<BoxBody> {
    http::Request::get(uri).body(empty()).unwrap()
}

/// A plain HTTP/1.1 server echoing method and path; returns its port and a connection counter.
async fn echo_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("{} {}", req.method(), req.uri());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, conns)
}

async fn text(resp: http::Response<hyper::body::Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn forwards_and_pools_connections() {
    let (port, conns) = echo_server().await;
    let client = UpstreamClient::new(UpstreamOptions::default()).unwrap();
    for i in 0..3 {
        let resp = client
            .send(get(&format!("http://127.0.0.1:{port}/v1/x?i={i}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert_eq!(text(resp).await, format!("GET /v1/x?i={i}"));
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "keep-alive should reuse one connection"
    );
}

#[tokio::test]
async fn silent_upstream_times_out_with_504() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accept, never answer
        }
    });
    let opts = UpstreamOptions {
        response_header_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let client = UpstreamClient::new(opts).unwrap();
    let err = client
        .send(get(&format!("http://127.0.0.1:{port}/")))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout), "{err:?}");
    assert_eq!(err.status(), 504);
    assert!(
        !err.not_sent(),
        "the request was written: it may be running"
    );
}

#[tokio::test]
async fn closed_port_is_502_connect() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = UpstreamClient::new(UpstreamOptions::default()).unwrap();
    let err = client
        .send(get(&format!("http://127.0.0.1:{port}/")))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Connect(_)), "{err:?}");
    assert_eq!(err.status(), 502);
    assert!(err.not_sent());
}

#[tokio::test]
async fn upstream_closing_at_once_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let client = UpstreamClient::new(UpstreamOptions::default()).unwrap();
    let err = client
        .send(get(&format!("http://127.0.0.1:{port}/")))
        .await
        .unwrap_err();
    // hyper usually sees the close before writing and hands the request back (Unsent); if the
    // request was written first the close counts as maybe delivered (Protocol).
    assert!(
        matches!(err, UpstreamError::Unsent(_) | UpstreamError::Protocol(_)),
        "{err:?}"
    );
    assert_eq!(err.status(), 502);
}

#[test]
fn bad_extra_ca_is_a_tls_error() {
    let opts = UpstreamOptions {
        extra_ca_pem: vec![b"not a pem".to_vec()],
        ..Default::default()
    };
    let err = UpstreamClient::new(opts).err().expect("must fail");
    assert!(
        matches!(&err, UpstreamError::Tls(m) if m.contains("#1")),
        "{err:?}"
    );
}

/// A TLS server with a private CA, speaking HTTP/2 or HTTP/1.1 by ALPN. Returns port and CA PEM.
async fn tls_server() -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("{:?}", req.version());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn https_with_operator_ca_negotiates_h2() {
    let (port, ca_pem) = tls_server().await;
    let opts = UpstreamOptions {
        extra_ca_pem: vec![ca_pem.into_bytes()],
        ..Default::default()
    };
    let client = UpstreamClient::new(opts).unwrap();
    let resp = client
        .send(get(&format!("https://localhost:{port}/")))
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(text(resp).await, "HTTP/2.0");
}

#[tokio::test]
async fn https_with_unknown_ca_is_502_tls() {
    let (port, _) = tls_server().await;
    let client = UpstreamClient::new(UpstreamOptions::default()).unwrap();
    let err = client
        .send(get(&format!("https://localhost:{port}/")))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err:?}");
    assert_eq!(err.status(), 502);
    assert!(err.not_sent(), "a failed handshake sends no request byte");
}

// ---- when did it fail: not sent (safe to send again) or maybe delivered ----------------------

fn post(uri: &str, body: &'static str) -> http::Request<BoxBody> {
    let b = Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|e| match e {})
        .boxed_unsync();
    http::Request::post(uri).body(b).unwrap()
}

#[tokio::test]
async fn closed_after_reading_the_request_is_maybe_delivered() {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"charge-me") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed early");
            got.extend_from_slice(&buf[..n]);
        }
        drop(s); // read it all, answer nothing
        let _ = seen_tx.send(got);
    });
    let client = UpstreamClient::new(UpstreamOptions::default()).unwrap();
    let err = client
        .send(post(
            &format!("http://127.0.0.1:{port}/v1/chat"),
            "charge-me",
        ))
        .await
        .unwrap_err();
    assert!(seen_rx.await.is_ok(), "the upstream read the whole request");
    assert!(matches!(err, UpstreamError::Protocol(_)), "{err:?}");
    assert!(!err.not_sent());
    assert_eq!(err.status(), 502);
}

#[tokio::test]
async fn connect_timeout_is_not_sent_and_504() {
    // A listener whose backlog is full and that never accepts: the next SYN gets no answer.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(100), s.connect(addr)).await {
            held.push(c);
        }
    }
    let opts = UpstreamOptions {
        connect_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let client = UpstreamClient::new(opts).unwrap();
    let err = client
        .send(post(&format!("http://{addr}/"), "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::ConnectTimeout), "{err:?}");
    assert!(err.not_sent());
    assert_eq!(err.status(), 504);
    drop((held, listener));
}

/// A TLS HTTP/2-only server that resets every stream with `reason` once it has read the
/// request body. Returns port and CA PEM.
async fn h2_resetting_server(reason: h2::Reason, seen: Arc<AtomicUsize>) -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let mut body = req.into_body();
                    while let Some(Ok(_)) = body.data().await {}
                    seen.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(reason);
                }
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn h2_refused_stream_is_not_sent_other_resets_maybe_delivered() {
    for (reason, not_sent) in [
        (h2::Reason::REFUSED_STREAM, true),
        (h2::Reason::INTERNAL_ERROR, false),
    ] {
        let seen = Arc::new(AtomicUsize::new(0));
        let (port, ca) = h2_resetting_server(reason, seen.clone()).await;
        let client = UpstreamClient::new(UpstreamOptions {
            extra_ca_pem: vec![ca.into_bytes()],
            ..Default::default()
        })
        .unwrap();
        let err = client
            .send(post(&format!("https://localhost:{port}/"), "body"))
            .await
            .unwrap_err();
        assert_eq!(seen.load(Ordering::SeqCst), 1, "{reason:?}");
        assert_eq!(err.not_sent(), not_sent, "{reason:?}: {err:?}");
        let want_unsent = matches!(err, UpstreamError::Unsent(_));
        assert_eq!(want_unsent, not_sent, "{reason:?}: {err:?}");
    }
}
