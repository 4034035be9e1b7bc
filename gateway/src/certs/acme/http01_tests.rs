use super::*;

fn redirect(port: u16) -> Redirect {
    Redirect {
        domain: "example.com".into(),
        https_port: port,
    }
}

fn run(method: Method, target: &str, host: Option<&str>, port: u16) -> Response<Full<Bytes>> {
    let uri: Uri = target.parse().unwrap();
    let mut headers = HeaderMap::new();
    if let Some(h) = host {
        headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
    }
    respond(&method, &uri, &headers, &redirect(port), |t| {
        (t == "tok_EN-1").then(|| "tok_EN-1.thumb".to_string())
    })
}

fn location(r: &Response<Full<Bytes>>) -> &str {
    r.headers()[header::LOCATION].to_str().unwrap()
}

async fn body(r: Response<Full<Bytes>>) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_known_token_gets_its_key_authorization_on_any_host() {
    for host in ["svc.example.com", "unrelated.test"] {
        let r = run(
            Method::GET,
            "/.well-known/acme-challenge/tok_EN-1",
            Some(host),
            443,
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        assert_eq!(body(r).await, "tok_EN-1.thumb");
    }
    let r = run(
        Method::HEAD,
        "/.well-known/acme-challenge/tok_EN-1",
        None,
        443,
    );
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn unknown_tokens_other_methods_and_odd_tokens_get_404() {
    for (m, path) in [
        (Method::GET, "/.well-known/acme-challenge/other"),
        (Method::GET, "/.well-known/acme-challenge/"),
        (Method::GET, "/.well-known/acme-challenge/tok_EN-1/x"),
        (Method::GET, "/.well-known/acme-challenge/tok%20EN"),
        (Method::POST, "/.well-known/acme-challenge/tok_EN-1"),
        (Method::PUT, "/.well-known/acme-challenge/tok_EN-1"),
    ] {
        let r = run(m.clone(), path, Some("example.com"), 443);
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{m} {path}");
        assert!(r.headers().get(header::LOCATION).is_none());
    }
}

#[test]
fn own_names_are_redirected_with_path_and_query() {
    let r = run(Method::GET, "/a/b?x=1&y=2", Some("Example.COM"), 443);
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(location(&r), "https://example.com/a/b?x=1&y=2");
    let r = run(
        Method::POST,
        "/v1/chat",
        Some("gemini.example.com:80"),
        8443,
    );
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(location(&r), "https://gemini.example.com:8443/v1/chat");
    let r = run(Method::GET, "http://svc.example.com/p", None, 443);
    assert_eq!(location(&r), "https://svc.example.com/p");
}

#[test]
fn other_hosts_are_not_redirected() {
    for host in [
        "evil.test",
        "example.com.evil.test",
        "a.b.example.com",
        "xexample.com",
        "127.0.0.1",
    ] {
        let r = run(Method::GET, "/", Some(host), 443);
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{host}");
        assert!(r.headers().get(header::LOCATION).is_none(), "{host}");
    }
}

#[test]
fn a_missing_or_conflicting_host_is_refused() {
    assert_eq!(
        run(Method::GET, "/", None, 443).status(),
        StatusCode::BAD_REQUEST
    );
    let r = run(Method::GET, "http://example.com/", Some("evil.test"), 443);
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

mod listener {
    use super::super::*;
    use crate::certs::FileSources;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(max_connections: usize) -> (std::net::SocketAddr, Arc<Certificates>) {
        let certs = Certificates::new("example.com".into(), FileSources::default(), None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let redirect = Redirect {
            domain: "example.com".into(),
            https_port: 8443,
        };
        tokio::spawn(serve(certs.clone(), listener, redirect, max_connections));
        (addr, certs)
    }

    /// Everything the server sends until it closes.
    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_token_is_served_over_a_real_socket_and_removed_tokens_are_not() {
        let (addr, certs) = start(16).await;
        certs.put_http01("tok1", "tok1.thumb".into());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /.well-known/acme-challenge/tok1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .unwrap();
        let resp = read_all(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("tok1.thumb"), "{resp}");
        certs.remove_http01("tok1");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /.well-known/acme-challenge/tok1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .unwrap();
        assert!(read_all(&mut s).await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn a_declared_body_is_not_waited_for() {
        let (addr, _) = start(16).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), read_all(&mut s))
            .await
            .expect("answered without the body");
        assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
        assert!(
            resp.contains("location: https://a.example.com:8443/x\r\n"),
            "{resp}"
        );
    }

    #[tokio::test]
    async fn a_head_over_8_kib_is_refused() {
        let (addr, _) = start(16).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nHost: example.com\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES + 1024)
        );
        let _ = s.write_all(big.as_bytes()).await;
        let resp = read_all(&mut s).await;
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 431"),
            "not served: {resp}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_cut_off() {
        let (addr, _) = start(16).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: exa").await.unwrap();
        let started = tokio::time::Instant::now();
        let resp = read_all(&mut s).await;
        assert!(!resp.contains("308"), "{resp}");
        let took = started.elapsed();
        assert!(
            took >= HEADER_TIMEOUT && took < CONNECTION_TIMEOUT,
            "cut off by the header timeout, not later: {took:?}"
        );
    }

    #[tokio::test]
    async fn past_the_connection_cap_new_connections_are_closed() {
        let (addr, _) = start(1).await;
        let mut held = TcpStream::connect(addr).await.unwrap();
        held.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await;
        assert_eq!(read_all(&mut s).await, "", "closed at once");
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .unwrap();
        assert!(read_all(&mut s).await.starts_with("HTTP/1.1 308"));
    }
}
