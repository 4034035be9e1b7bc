//! `POST /oauth2/token` (RFC 6749 client credentials grant, `client_secret_post` and
//! `client_secret_basic`) and the RFC 8414 metadata document.

use super::respond::json;
use crate::proxy::BoxBody;
use crate::state::Gateway;
use base64::Engine;
use http::{header, HeaderMap, Response, StatusCode};
use postern_common::api::OAuthError;

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<BoxBody> {
    let mut resp = json(
        status,
        &OAuthError {
            error: error.into(),
            error_description: Some(description.into()),
        },
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"postern\""),
        );
    }
    resp
}

/// Client id and secret from the Basic header (RFC 6749 2.3.1: form-urlencoded inside).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(decoded).ok()?;
    let (id, secret) = s.split_once(':')?;
    let dec = |x: &str| {
        url::form_urlencoded::parse(format!("a={x}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

/// Handles the token endpoint; `body` is the whole form (size-limited by the caller).
pub fn token(gw: &Gateway, headers: &HeaderMap, body: &[u8]) -> Response<BoxBody> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the request as application/x-www-form-urlencoded",
        );
    }
    let mut grant_type = None;
    let mut post_id = None;
    let mut post_secret = None;
    for (k, v) in url::form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut grant_type,
            "client_id" => &mut post_id,
            "client_secret" => &mut post_secret,
            _ => continue,
        };
        if slot.is_some() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("parameter {k} is repeated"),
            );
        }
        *slot = Some(v.into_owned());
    }
    match grant_type.as_deref() {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            )
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            )
        }
    }
    let basic = basic_credentials(headers);
    let (id, secret) = match (basic, post_id, post_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one client authentication method, not both",
            )
        }
        (Some(b), None, None) => b,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is missing",
            )
        }
    };
    match gw.grant_client_credentials(&id, &secret) {
        Ok(Some(tok)) => json(StatusCode::OK, &tok),
        Ok(None) => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ),
        Err(e) => {
            tracing::error!(error = %e, "token grant failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the gateway could not store the session",
            )
        }
    }
}

/// RFC 8414 authorization server metadata.
pub fn metadata(issuer: &str) -> Response<BoxBody> {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/oauth2/token"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
        }),
    )
}
