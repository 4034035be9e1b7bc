//! `POST /oauth2/token` (RFC 6749 client credentials grant, `client_secret_post` and
//! `client_secret_basic`) and the RFC 8414 metadata document.

use super::respond::json;
use crate::proxy::BoxBody;
use crate::state::ChangeError;
use crate::state::Gateway;
use base64::Engine;
use http::{header, HeaderMap, Response, StatusCode};
use postern_common::api::{OAuthError, AGENT_CLIENT_ID};

pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<BoxBody> {
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

/// Why a token request is refused before any credential is looked at: the status, the
/// RFC 6749 section 5.2 error code and a description saying what to send instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

fn refuse(status: StatusCode, error: &'static str, description: &str) -> Refusal {
    Refusal {
        status,
        error,
        description: description.into(),
    }
}

/// A token request, read and checked for shape (no store access).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRequest {
    /// RFC 6749 §4.4: a workload's client id and secret.
    ClientCredentials { id: String, secret: String },
    /// RFC 6749 §4.1.3 with RFC 7636 PKCE: the `postern` agent redeeming the one-time code
    /// of a browser sign-in.
    AuthorizationCode {
        code: String,
        verifier: String,
        redirect_uri: String,
    },
}

/// Reads a token request (pure, no store access): the form in `body`; for client
/// credentials the client from the Basic header or the form, never both.
pub fn read_request(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the request as application/x-www-form-urlencoded",
        ));
    }
    const NAMES: [&str; 6] = [
        "grant_type",
        "client_id",
        "client_secret",
        "code",
        "code_verifier",
        "redirect_uri",
    ];
    let mut values: [Option<String>; 6] = Default::default();
    for (k, v) in url::form_urlencoded::parse(body) {
        let Some(i) = NAMES.iter().position(|n| *n == k.as_ref()) else {
            continue;
        };
        if values[i].is_some() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("parameter {k} is repeated"),
            ));
        }
        values[i] = Some(v.into_owned());
    }
    let [grant_type, post_id, post_secret, code, verifier, redirect_uri] = values;
    match grant_type.as_deref() {
        None => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is missing",
        )),
        Some("client_credentials") => {
            let (id, secret) = client_authentication(headers, post_id, post_secret)?;
            Ok(TokenRequest::ClientCredentials { id, secret })
        }
        Some("authorization_code") => {
            if post_id.as_deref() != Some(AGENT_CLIENT_ID)
                || post_secret.is_some()
                || headers.contains_key(header::AUTHORIZATION)
            {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    &format!("the authorization code grant is for client_id={AGENT_CLIENT_ID} (the postern agent), without a secret"),
                ));
            }
            match (code, verifier, redirect_uri) {
                (Some(code), Some(verifier), Some(redirect_uri)) => {
                    Ok(TokenRequest::AuthorizationCode {
                        code,
                        verifier,
                        redirect_uri,
                    })
                }
                _ => Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send code, code_verifier and redirect_uri",
                )),
            }
        }
        Some(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials (and authorization_code for the postern agent) is supported",
        )),
    }
}

fn client_authentication(
    headers: &HeaderMap,
    post_id: Option<String>,
    post_secret: Option<String>,
) -> Result<(String, String), Refusal> {
    match (basic_credentials(headers), post_id, post_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "use one client authentication method, not both",
        )),
        (Some(b), None, None) => Ok(b),
        (None, Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication is missing",
        )),
    }
}

/// Handles the token endpoint; `body` is the whole form (size-limited by the caller).
pub fn token(gw: &Gateway, headers: &HeaderMap, body: &[u8]) -> Response<BoxBody> {
    let request = match read_request(headers, body) {
        Ok(r) => r,
        Err(r) => return oauth_error(r.status, r.error, &r.description),
    };
    let (id, secret) = match request {
        TokenRequest::ClientCredentials { id, secret } => (id, secret),
        TokenRequest::AuthorizationCode {
            code,
            verifier,
            redirect_uri,
        } => return super::signin::redeem_agent_code(gw, &code, &verifier, &redirect_uri),
    };
    match gw.grant_client_credentials(&id, &secret) {
        Ok(Some(tok)) => json(StatusCode::OK, &tok),
        Ok(None) => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ),
        Err(e) => server_error(e),
    }
}

/// The answer to a token grant whose Session could not be stored: 503 (RFC 6749
/// `temporarily_unavailable`) when the store is unreachable, so clients retry, else 500.
pub fn server_error(e: ChangeError) -> Response<BoxBody> {
    if e.is_store_unavailable() {
        tracing::warn!(error = %e, "token grant refused");
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the gateway's store is unreachable, so no session can be stored; retry shortly",
        );
    }
    tracing::error!(error = %e, "token grant failed");
    oauth_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the gateway could not store the session",
    )
}

/// RFC 8414 authorization server metadata.
pub fn metadata(issuer: &str) -> Response<BoxBody> {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/oauth2/token"),
            "grant_types_supported": ["client_credentials", "authorization_code"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(basic: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        if let Some(b) = basic {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(b).unwrap());
        }
        h
    }

    #[test]
    fn reads_either_client_authentication() {
        let body = b"grant_type=client_credentials&client_id=a%2Bb&client_secret=s+t";
        let cc = |id: &str, secret: &str| {
            Ok(TokenRequest::ClientCredentials {
                id: id.into(),
                secret: secret.into(),
            })
        };
        assert_eq!(read_request(&headers(None), body), cc("a+b", "s t"));
        // "a:b" and "s:t" form-encoded inside Basic: the colon inside the id survives.
        let basic = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("a%3Ab:s%3At")
        );
        assert_eq!(
            read_request(&headers(Some(&basic)), b"grant_type=client_credentials"),
            cc("a:b", "s:t")
        );
    }

    #[test]
    fn refusals_say_what_to_send() {
        let r = |h: &HeaderMap, b: &[u8]| read_request(h, b).unwrap_err();
        let both = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("a:b")
        );
        let refused = r(
            &headers(Some(&both)),
            b"grant_type=client_credentials&client_id=a",
        );
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.description.contains("not both"));
        let repeated = r(
            &headers(None),
            b"grant_type=client_credentials&grant_type=client_credentials",
        );
        assert!(repeated.description.contains("repeated"));
        assert_eq!(
            r(&headers(None), b"grant_type=password").error,
            "unsupported_grant_type"
        );
        assert_eq!(
            r(&headers(None), b"grant_type=client_credentials&client_id=a").status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(r(&HeaderMap::new(), b"").error, "invalid_request");
    }

    #[test]
    fn authorization_code_is_for_the_agent_only() {
        let r = |b: &[u8]| read_request(&headers(None), b);
        assert_eq!(
            r(b"grant_type=authorization_code&client_id=postern-cli&code=c&code_verifier=v&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2F"),
            Ok(TokenRequest::AuthorizationCode {
                code: "c".into(),
                verifier: "v".into(),
                redirect_uri: "http://127.0.0.1:1/".into(),
            })
        );
        assert_eq!(
            r(b"grant_type=authorization_code&client_id=other&code=c&code_verifier=v&redirect_uri=x")
                .unwrap_err()
                .error,
            "invalid_client"
        );
        assert_eq!(
            r(b"grant_type=authorization_code&client_id=postern-cli&client_secret=s&code=c&code_verifier=v&redirect_uri=x")
                .unwrap_err()
                .error,
            "invalid_client"
        );
        assert_eq!(
            r(b"grant_type=authorization_code&client_id=postern-cli&code=c")
                .unwrap_err()
                .error,
            "invalid_request"
        );
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("a:b")
        );
        assert_eq!(
            read_request(
                &headers(Some(&basic)),
                b"grant_type=authorization_code&client_id=postern-cli&code=c&code_verifier=v&redirect_uri=x"
            )
            .unwrap_err()
            .error,
            "invalid_client"
        );
        assert_eq!(
            r(b"grant_type=authorization_code&client_id=postern-cli&code=c&code=d")
                .unwrap_err()
                .error,
            "invalid_request"
        );
    }
}
