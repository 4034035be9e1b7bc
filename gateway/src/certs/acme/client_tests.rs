use super::*;

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    assert_eq!(parse_retry_after("120", 1000), Some(1120));
    assert_eq!(
        parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT", 0),
        Some(946_684_799)
    );
    assert_eq!(parse_retry_after("soon", 0), None);
    assert_eq!(parse_retry_after("-5", 0), None);
}

#[test]
fn retry_after_keeps_the_latest_and_is_cleared_by_take() {
    let r = RetryAfter::default();
    r.record(50);
    r.record(20);
    assert_eq!(r.take(), Some(50));
    assert_eq!(r.take(), None);
}

/// A one-shot HTTPS server on 127.0.0.1 answering every request with `status`, `headers`
/// and `body_len` bytes; returns its URL and the CA (its own certificate) to trust.
async fn server(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body_len: usize,
) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/dir",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let svc = hyper::service::service_fn(move |_req| async move {
                let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from(vec![
                        b'x';
                        body_len
                    ])));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    resp.headers_mut().insert(*k, v.parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc),
            );
        }
    });
    (url, cert.pem().into_bytes())
}

fn get(url: &str) -> http::Request<BodyWrapper<Bytes>> {
    http::Request::builder()
        .uri(url)
        .body(BodyWrapper::default())
        .unwrap()
}

#[tokio::test]
async fn a_rate_limited_answer_records_retry_after() {
    let (url, ca) = server(429, &[("retry-after", "3600")], 10).await;
    let slot = RetryAfter::default();
    let http = AcmeHttp::new(Some(&ca), slot.clone()).unwrap();
    let before = crate::state::now_unix();
    let resp = http.request(get(&url)).await.unwrap();
    assert_eq!(resp.parts.status, 429);
    let at = slot.take().expect("Retry-After recorded");
    assert!(
        (before + 3600..=before + 3602).contains(&at),
        "{at} vs {before}"
    );
}

#[tokio::test]
async fn retry_after_on_a_success_is_not_a_rate_limit() {
    let (url, ca) = server(200, &[("retry-after", "3600")], 10).await;
    let slot = RetryAfter::default();
    let http = AcmeHttp::new(Some(&ca), slot.clone()).unwrap();
    let resp = http.request(get(&url)).await.unwrap();
    assert_eq!(resp.parts.status, 200);
    assert_eq!(slot.take(), None);
}

#[tokio::test]
async fn a_body_over_one_mib_is_refused() {
    let (url, ca) = server(200, &[], MAX_BODY + 1).await;
    let http = AcmeHttp::new(Some(&ca), RetryAfter::default()).unwrap();
    let err = http.request(get(&url)).await.err().expect("refused");
    assert!(with_causes(&err).contains("at most 1048576 bytes"), "{err}");
    let (url, ca) = server(200, &[], MAX_BODY).await;
    let http = AcmeHttp::new(Some(&ca), RetryAfter::default()).unwrap();
    let mut resp = http.request(get(&url)).await.unwrap();
    assert_eq!(resp.body.into_bytes().await.unwrap().len(), MAX_BODY);
}

#[tokio::test]
async fn only_the_given_ca_and_https_are_trusted() {
    let (url, _ca) = server(200, &[], 10).await;
    let http = AcmeHttp::new(None, RetryAfter::default()).unwrap();
    let err = http.request(get(&url)).await.err().expect("untrusted");
    assert!(
        with_causes(&err).contains("invalid peer certificate"),
        "{}",
        with_causes(&err)
    );
    let plain = url.replace("https://", "http://");
    assert!(http.request(get(&plain)).await.is_err());
}
