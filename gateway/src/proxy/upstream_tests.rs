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
}

#[tokio::test]
async fn upstream_closing_mid_exchange_is_502_protocol() {
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
    assert!(matches!(err, UpstreamError::Protocol(_)), "{err:?}");
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
}
