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
