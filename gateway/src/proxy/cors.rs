//! CORS as the gateway answers it: preflights never reach the upstream, and responses carry
//! the allow headers for origins the Service lists. Pure functions over headers.

use http::header::{self, HeaderMap, HeaderValue};
use postern_common::resources::CorsConfig;

/// Answers a CORS preflight for a Service with `http.cors`.
///
/// Exists so browsers can call a Service without the upstream knowing about CORS. The caller
/// invokes it for `OPTIONS` requests only; it returns `None` when the request is not a preflight
/// (no `Origin` or no `Access-Control-Request-Method`) or the origin is not allowed, letting the
/// caller answer 403 or pass the request on.
pub fn preflight_response(
    cors: &CorsConfig,
    req_headers: &HeaderMap,
) -> Option<http::Response<()>> {
    let origin = req_headers.get(header::ORIGIN)?;
    let method = req_headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    if !origin_allowed(cors, origin) {
        return None;
    }
    let mut resp = http::Response::new(());
    *resp.status_mut() = http::StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    let methods = configured(cors.allow_methods.as_deref()).unwrap_or_else(|| method.clone());
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    let allow_headers = configured(cors.allow_headers.as_deref()).or_else(|| {
        req_headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
    });
    if let Some(v) = allow_headers {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(v) = configured(cors.max_age.as_deref()) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(resp)
}

/// Adds CORS headers to a response for a Service with `http.cors`.
///
/// Exists so the gateway, not the upstream, decides which origins may read responses: the
/// upstream's own `Access-Control-Allow-*`/`Expose` headers are replaced, the matching origin is
/// echoed (never `*`, so credentials stay safe), and `Vary: Origin` keeps caches honest.
pub fn apply_cors(cors: &CorsConfig, origin: Option<&HeaderValue>, resp_headers: &mut HeaderMap) {
    resp_headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    resp_headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    resp_headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    let has_vary_origin = resp_headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*");
    if !has_vary_origin {
        resp_headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    let Some(origin) = origin.filter(|o| origin_allowed(cors, o)) else {
        return;
    };
    resp_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        resp_headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = configured(cors.expose_headers.as_deref()) {
        resp_headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

fn origin_allowed(cors: &CorsConfig, origin: &HeaderValue) -> bool {
    let Ok(o) = origin.to_str() else { return false };
    // "null" is sent by sandboxed frames and file:// pages; only an exact entry allows it.
    if o == "null" {
        return cors
            .allow_origin_string_match
            .iter()
            .any(|m| m.exact.as_deref() == Some("null"));
    }
    cors.allow_origin_string_match.iter().any(|m| m.matches(o))
}

fn configured(v: Option<&str>) -> Option<HeaderValue> {
    v.map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| HeaderValue::from_str(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_common::resources::StringMatch;

    fn cfg() -> CorsConfig {
        CorsConfig {
            allow_origin_string_match: vec![
                StringMatch {
                    exact: Some("https://app.example".into()),
                    ..Default::default()
                },
                StringMatch {
                    suffix: Some(".corp.example".into()),
                    ..Default::default()
                },
            ],
            allow_methods: Some("GET, POST".into()),
            allow_headers: None,
            expose_headers: Some("x-request-id".into()),
            max_age: Some("600".into()),
            allow_credentials: true,
        }
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflight_for_allowed_origin() {
        let req = hm(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ]);
        let r = preflight_response(&cfg(), &req).expect("allowed");
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET, POST");
        assert_eq!(
            h["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], "Origin");
    }

    #[test]
    fn preflight_refused_or_not_a_preflight() {
        let c = cfg();
        let evil = hm(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(preflight_response(&c, &evil).is_none());
        let no_method = hm(&[("origin", "https://app.example")]);
        assert!(preflight_response(&c, &no_method).is_none());
        let null = hm(&[("origin", "null"), ("access-control-request-method", "GET")]);
        assert!(preflight_response(&c, &null).is_none());
        let sub = hm(&[
            ("origin", "https://x.corp.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(preflight_response(&c, &sub).is_some());
    }

    #[test]
    fn apply_echoes_matching_origin_and_replaces_upstream_cors() {
        let mut resp = hm(&[
            ("access-control-allow-origin", "*"),
            ("vary", "accept-encoding"),
        ]);
        let origin = HeaderValue::from_static("https://a.corp.example");
        apply_cors(&cfg(), Some(&origin), &mut resp);
        assert_eq!(
            resp["access-control-allow-origin"],
            "https://a.corp.example"
        );
        assert_eq!(resp["access-control-allow-credentials"], "true");
        assert_eq!(resp["access-control-expose-headers"], "x-request-id");
        let vary: Vec<_> = resp.get_all("vary").iter().collect();
        assert_eq!(vary, vec!["accept-encoding", "Origin"]);
    }

    #[test]
    fn apply_for_unknown_origin_strips_upstream_allow() {
        let mut resp = hm(&[("access-control-allow-origin", "*"), ("vary", "Origin")]);
        let origin = HeaderValue::from_static("https://evil.example");
        apply_cors(&cfg(), Some(&origin), &mut resp);
        assert!(resp.get("access-control-allow-origin").is_none());
        assert_eq!(resp.get_all("vary").iter().count(), 1);
        let mut resp = HeaderMap::new();
        apply_cors(&cfg(), None, &mut resp);
        assert!(resp.get("access-control-allow-origin").is_none());
    }
}
