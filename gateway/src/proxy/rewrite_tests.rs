use super::*;
use postern_common::resources::{
    BasicAuth, CustomAuth, FromSecret, HeaderConfig, HttpAuth, PathConfig,
};

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn secrets(name: &str) -> Option<String> {
    match name {
        "key" => Some("sk-upstream".into()),
        "pw" => Some("hunter2".into()),
        "bad" => Some("line\nbreak".into()),
        _ => None,
    }
}

fn run(uri: &str, upstream: &str, http: Option<&HttpConfig>) -> http::request::Parts {
    let mut p = parts(uri, &[]);
    upstream_request(
        &mut p,
        &upstream.parse().unwrap(),
        http,
        &secrets,
        None,
        "gw.example",
    )
    .unwrap();
    p
}

fn with_path(add: Option<&str>, remove: Option<&str>) -> HttpConfig {
    HttpConfig {
        path: Some(PathConfig {
            add_prefix: add.map(Into::into),
            remove_prefix: remove.map(Into::into),
        }),
        ..Default::default()
    }
}

#[test]
fn add_prefix_joins_without_double_slash() {
    let h = with_path(Some("/v1beta/openai"), None);
    let p = run(
        "/v1/chat/completions?x=1",
        "https://generativelanguage.googleapis.com",
        Some(&h),
    );
    assert_eq!(
        p.uri.to_string(),
        "https://generativelanguage.googleapis.com/v1beta/openai/v1/chat/completions?x=1"
    );
    let h = with_path(Some("/v1beta/openai/"), None);
    let p = run("/models", "https://up.example/base/", Some(&h));
    assert_eq!(p.uri.path(), "/base/v1beta/openai/models");
}

#[test]
fn remove_prefix_respects_segment_boundary_then_adds() {
    let h = with_path(Some("/v2"), Some("/api"));
    assert_eq!(
        run("/api/users", "http://u:8080", Some(&h)).uri.to_string(),
        "http://u:8080/v2/users"
    );
    assert_eq!(
        run("/apix/users", "http://u:8080", Some(&h)).uri.path(),
        "/v2/apix/users"
    );
    let h = with_path(None, Some("/api/"));
    assert_eq!(run("/api", "http://u", Some(&h)).uri.path(), "/");
    assert_eq!(run("/api/x/", "http://u", Some(&h)).uri.path(), "/x/");
}

#[test]
fn plain_forward_keeps_path_and_sets_host() {
    let p = run("/a/b?q=1&r=2", "https://up.example:8443", None);
    assert_eq!(p.uri.to_string(), "https://up.example:8443/a/b?q=1&r=2");
    assert_eq!(p.headers["host"], "up.example:8443");
    assert_eq!(
        run("/", "https://up.example", None).headers["host"],
        "up.example"
    );
}

#[test]
fn caller_credentials_never_survive() {
    let mut p = parts(
        "/x",
        &[
            ("authorization", "Bearer gateway-token"),
            ("proxy-authorization", "Basic abc"),
            ("cookie", "postern_session=abc"),
        ],
    );
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        None,
        &secrets,
        None,
        "gw",
    )
    .unwrap();
    assert!(p.headers.get("authorization").is_none());
    assert!(p.headers.get("proxy-authorization").is_none());
    assert!(p.headers.get("cookie").is_none());

    // Even an operator addRequestHeaders cannot leak the caller's token: it is gone before edits.
    let mut p = parts("/x", &[("authorization", "Bearer gateway-token")]);
    let h = HttpConfig {
        auth: Some(HttpAuth {
            bearer: Some(FromSecret {
                from_secret: "key".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        Some(&h),
        &secrets,
        None,
        "gw",
    )
    .unwrap();
    assert_eq!(p.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(p.headers["authorization"], "Bearer sk-upstream");
    assert!(p.headers["authorization"].is_sensitive());
}

#[test]
fn hop_by_hop_and_connection_listed_headers_go() {
    let mut p = parts(
        "/x",
        &[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
        ],
    );
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        None,
        &secrets,
        None,
        "gw",
    )
    .unwrap();
    for h in [
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(p.headers.get(h).is_none(), "{h} survived");
    }
    assert_eq!(p.headers["x-keep"], "yes");
}

#[test]
fn forwarding_headers() {
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let mut p = parts(
        "/x",
        &[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
        ],
    );
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        None,
        &secrets,
        Some(ip),
        "api.gw.example",
    )
    .unwrap();
    assert_eq!(
        p.headers
            .get_all("x-forwarded-for")
            .iter()
            .collect::<Vec<_>>(),
        vec!["203.0.113.7"]
    );
    assert_eq!(p.headers["x-forwarded-proto"], "https");
    assert_eq!(p.headers["x-forwarded-host"], "api.gw.example");
    let mut p = parts("/x", &[]);
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        None,
        &secrets,
        Some(ip),
        "gw",
    )
    .unwrap();
    assert_eq!(p.headers["x-forwarded-for"], "203.0.113.7");
}

#[test]
fn operator_header_edits_remove_then_set() {
    let h = HttpConfig {
        header: Some(HeaderConfig {
            remove_request_headers: vec!["x-drop".into()],
            add_request_headers: vec![KeyValue {
                key: "x-env".into(),
                value: "prod".into(),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut p = parts(
        "/x",
        &[("x-drop", "1"), ("x-env", "dev"), ("x-env", "test")],
    );
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        Some(&h),
        &secrets,
        None,
        "gw",
    )
    .unwrap();
    assert!(p.headers.get("x-drop").is_none());
    assert_eq!(
        p.headers.get_all("x-env").iter().collect::<Vec<_>>(),
        vec!["prod"]
    );
}

#[test]
fn basic_and_custom_credentials() {
    let h = HttpConfig {
        auth: Some(HttpAuth {
            basic: Some(BasicAuth {
                username: "bot".into(),
                password: FromSecret {
                    from_secret: "pw".into(),
                },
            }),
            custom: Some(CustomAuth {
                header: "x-api-key".into(),
                value: FromSecret {
                    from_secret: "key".into(),
                },
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = run("/x", "http://u", Some(&h));
    assert_eq!(p.headers["authorization"], "Basic Ym90Omh1bnRlcjI=");
    assert_eq!(p.headers["x-api-key"], "sk-upstream");
}

#[test]
fn missing_or_unusable_secret_is_typed() {
    for (name, want) in [
        ("nope", RewriteError::MissingSecret("nope".into())),
        ("bad", RewriteError::InvalidSecretValue("bad".into())),
    ] {
        let h = HttpConfig {
            auth: Some(HttpAuth {
                bearer: Some(FromSecret {
                    from_secret: name.into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut p = parts("/x", &[]);
        let err = upstream_request(
            &mut p,
            &"http://u".parse().unwrap(),
            Some(&h),
            &secrets,
            None,
            "gw",
        )
        .unwrap_err();
        assert_eq!(err, want);
    }
}

#[test]
fn bad_upstream_scheme_is_rejected() {
    let mut p = parts("/x", &[]);
    let err = upstream_request(
        &mut p,
        &"ftp://u".parse().unwrap(),
        None,
        &secrets,
        None,
        "gw",
    )
    .unwrap_err();
    assert!(matches!(err, RewriteError::BadUpstream(_)));
}

#[test]
fn response_headers_strip_and_edit() {
    let h = HttpConfig {
        header: Some(HeaderConfig {
            remove_response_headers: vec!["server".into()],
            add_response_headers: vec![KeyValue {
                key: "x-served-by".into(),
                value: "postern".into(),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut hm = HeaderMap::new();
    hm.insert("server", HeaderValue::from_static("nginx"));
    hm.insert("connection", HeaderValue::from_static("close"));
    hm.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    hm.insert("content-type", HeaderValue::from_static("application/json"));
    response_headers(&mut hm, Some(&h));
    assert!(
        hm.get("server").is_none()
            && hm.get("connection").is_none()
            && hm.get("transfer-encoding").is_none()
    );
    assert_eq!(hm["x-served-by"], "postern");
    assert_eq!(hm["content-type"], "application/json");
}

#[test]
fn normalize_resolves_dots_and_slashes() {
    let cases = [
        ("/", "/"),
        ("/a//b", "/a/b"),
        ("/a/./b/", "/a/b/"),
        ("/a/b/../c", "/a/c"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/%2e%2e/%2E%2E/b", "/b"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/v1/chat%20x", "/v1/chat%20x"),
        ("/a/.%2e/b", "/b"),
        ("/a/%2e./b", "/b"),
        ("/a/%2E/b", "/a/b"),
    ];
    for (i, o) in cases {
        assert_eq!(normalize_path(i).unwrap(), o, "{i}");
    }
}

#[test]
fn normalize_rejects_unsafe_paths() {
    for p in [
        "",
        "a/b",
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a\\b",
        "/a%00b",
        "/a\0b",
        // matrix parameters, raw or encoded, and Tomcat's `..;/`
        "/admin;x=1",
        "/v1/..;/admin",
        "/v1/%3B/admin",
        "/a%3bb",
        // double encoding: `%25` then two hex digits, however the digits are written
        "/v1/%252e%252e/admin",
        "/%2561dmin",
        "/a%25%32%65",
        "/a%252F",
        // a '%' that does not start an escape
        "/a%",
        "/a%2",
        "/a%zz",
        "/a%2g",
    ] {
        assert!(
            matches!(normalize_path(p), Err(RewriteError::BadPath(_))),
            "{p:?}"
        );
    }
}

#[test]
fn normalize_decodes_unreserved_and_uppercases_the_rest() {
    let cases = [
        // RFC 3986 6.2.2.2: ALPHA, DIGIT, '-', '.', '_', '~' are decoded
        ("/%61dmin", "/admin"),
        ("/%41%44%4d%49%4E", "/ADMIN"),
        ("/v1/%7euser/a%2Db%5Fc%2e", "/v1/~user/a-b_c."),
        ("/%31%32", "/12"),
        // everything else keeps its escape, hex in uppercase (6.2.2.1)
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b%3a%40", "/a%20b%3A%40"),
        ("/100%25", "/100%25"),
        ("/100%25x", "/100%25x"),
        // decoded dots are dot segments
        ("/v1/%2e%2e/%61dmin", "/admin"),
    ];
    for (i, o) in cases {
        assert_eq!(normalize_path(i).unwrap(), o, "{i}");
    }
}

#[test]
fn normalize_is_idempotent() {
    for p in [
        "/%61dmin/../x/%2e/y//z/",
        "/caf%c3%a9/%7e",
        "/100%25/a%20b",
        "/a/b/../../..",
        "/%25%7a",
    ] {
        let once = normalize_path(p).unwrap();
        assert_eq!(normalize_path(&once).unwrap(), once, "{p}");
    }
}

#[test]
fn upstream_gets_the_normalised_path() {
    let p = run("/%61dmin/x%7e?q=%61", "http://u", None);
    assert_eq!(p.uri.path(), "/admin/x~");
    assert_eq!(p.uri.query(), Some("q=%61"));
    let mut p = parts("/v1/%252e%252e/admin", &[]);
    let err = upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        None,
        &secrets,
        None,
        "gw",
    )
    .unwrap_err();
    assert!(matches!(err, RewriteError::BadPath(_)));
}

#[test]
fn client_forwarding_claims_are_dropped() {
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let claims = [
        ("forwarded", "for=10.0.0.1;proto=http;host=evil.example"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-for", "10.0.0.2"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-port", "80"),
        ("x-forwarded-prefix", "/admin"),
        ("x-real-ip", "10.0.0.1"),
        ("x-client-ip", "10.0.0.1"),
        ("true-client-ip", "10.0.0.1"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
    ];
    let mut h = HeaderMap::new();
    for (k, v) in claims {
        h.append(k, HeaderValue::from_static(v));
    }
    h.insert("x-keep", HeaderValue::from_static("1"));
    drop_client_forwarding(&mut h);
    assert_eq!(h.len(), 1, "{h:?}");

    let mut p = parts("/x", &claims);
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        None,
        &secrets,
        Some(ip),
        "api.gw.example",
    )
    .unwrap();
    let mut names: Vec<&str> = p.headers.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto"
        ]
    );
    assert_eq!(p.headers["x-forwarded-for"], "203.0.113.7");
    assert_eq!(p.headers["x-forwarded-host"], "api.gw.example");
}

#[test]
fn dot_dot_cannot_climb_above_upstream_prefix() {
    let h = with_path(Some("/v1beta/openai"), None);
    let p = run("/../../admin", "https://up.example/base", Some(&h));
    assert_eq!(p.uri.path(), "/base/v1beta/openai/admin");
}

#[test]
fn caller_http_version_is_not_forced_on_upstream() {
    let mut p = parts("https://gw.example/x", &[]);
    p.version = http::Version::HTTP_2;
    upstream_request(
        &mut p,
        &"http://u".parse().unwrap(),
        None,
        &secrets,
        None,
        "gw",
    )
    .unwrap();
    assert_eq!(p.version, http::Version::HTTP_11);
    assert_eq!(p.uri.to_string(), "http://u/x");
}
