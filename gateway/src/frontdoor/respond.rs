//! Building responses: the JSON error shape every client sees (`{"error": {...}}`, as the
//! OpenAI SDKs print it) and small helpers for JSON bodies.

use crate::proxy::BoxBody;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use postern_common::api::{ErrorBody, ErrorDetail};

/// A body from bytes in memory.
pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<BoxBody> {
    let body = serde_json::to_vec(value).expect("response types serialize");
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The error response for `status`, with an OpenAI-style `type` and a stable `code`.
pub fn error(
    status: StatusCode,
    message: impl Into<String>,
    request_id: Option<&str>,
) -> Response<BoxBody> {
    let (error_type, code) = match status {
        StatusCode::UNAUTHORIZED => ("authentication_error", "unauthorized"),
        StatusCode::FORBIDDEN => ("permission_error", "forbidden"),
        StatusCode::NOT_FOUND => ("not_found_error", "not_found"),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "request_too_large"),
        StatusCode::CONFLICT => ("invalid_request_error", "conflict"),
        StatusCode::REQUEST_TIMEOUT => ("invalid_request_error", "request_timeout"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            ("invalid_request_error", "request_header_fields_too_large")
        }
        StatusCode::METHOD_NOT_ALLOWED => ("invalid_request_error", "method_not_allowed"),
        StatusCode::BAD_GATEWAY => ("api_error", "bad_gateway"),
        StatusCode::GATEWAY_TIMEOUT => ("api_error", "gateway_timeout"),
        StatusCode::SERVICE_UNAVAILABLE => ("api_error", "unavailable"),
        s if s.is_server_error() => ("api_error", "internal_error"),
        _ => ("invalid_request_error", "bad_request"),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.into(),
            error_type: error_type.into(),
            code: code.into(),
            request_id: request_id.map(str::to_string),
        },
    };
    let mut resp = json(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"postern\", error=\"invalid_token\""),
        );
    }
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp
}

/// The one 404 for any name that is not a public Service, so answers never tell which
/// Services exist.
pub fn not_found() -> Response<BoxBody> {
    error(StatusCode::NOT_FOUND, "not found", None)
}
