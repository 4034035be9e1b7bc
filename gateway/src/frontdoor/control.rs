//! The control API under `https://<domain>/api/v1/`: login for everyone holding an auth
//! token; everything else for members of the `admins` group only.

use super::respond::{error, json};
use crate::datadir::ADMINS_GROUP;
use crate::proxy::buffer::{read_limited, BufferError};
use crate::proxy::inbound::ClientRequest;
use crate::proxy::BoxBody;
use crate::state::{ChangeError, Gateway, Principal};
use crate::tunnel::registry::RegistryError;
use crate::tunnel::ConnectError;
use http::{Method, Response, StatusCode};
use postern_common::api::{
    ApplyRequest, CreateCredentialRequest, CreateSecretRequest, ListResponse, LoginRequest,
    LoginResponse, TunnelConnectRequest, API_PREFIX,
};
use postern_common::resources::Kind;
use serde::de::DeserializeOwned;

/// Largest control API request (a YAML file being applied is the big one).
const MAX_API_BODY: usize = 4 << 20;

fn bearer(req: &ClientRequest) -> Option<&str> {
    let v = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn change_error(e: ChangeError) -> Response<BoxBody> {
    let status = match &e {
        e if e.is_store_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
        ChangeError::NotFound { .. } => StatusCode::NOT_FOUND,
        ChangeError::AlreadyExists { .. } | ChangeError::InUse(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(error = %e, "control API change refused");
    } else if status.is_server_error() {
        tracing::error!(error = %e, "control API change failed");
    }
    error(status, e.to_string(), None)
}

async fn body_json<T: DeserializeOwned>(req: ClientRequest) -> Result<T, Response<BoxBody>> {
    let bytes = read_limited(req.into_body(), MAX_API_BODY)
        .await
        .map_err(|e| match e {
            BufferError::TooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string(), None),
            BufferError::Read(_) => error(StatusCode::BAD_REQUEST, e.to_string(), None),
            BufferError::TimedOut(_) => error(StatusCode::REQUEST_TIMEOUT, e.to_string(), None),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
            None,
        )
    })
}

/// Serves one control API request (`path` already starts with `/api/v1`).
pub async fn handle(gw: &Gateway, req: ClientRequest) -> Response<BoxBody> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let rest = path.strip_prefix(API_PREFIX).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let (origin, _) = super::signin::public_origin(&gw.domain, req.headers(), req.uri());

    if segments == ["login"] {
        if method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None);
        }
        let body: LoginRequest = match body_json(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        return match gw.login(&body.auth_token) {
            Ok(Some(out)) => json(
                StatusCode::OK,
                &LoginResponse {
                    access_token: out.access_token,
                    expires_in: out.expires_in,
                    session: out.session,
                    user: out.user,
                },
            ),
            Ok(None) => error(
                StatusCode::UNAUTHORIZED,
                "the auth token is not valid (wrong, expired or deleted); ask an admin for a new one",
                None,
            ),
            Err(e) => change_error(e),
        };
    }

    let principal = match bearer(&req).map(|t| gw.authenticate(t)) {
        Some(Ok(p)) => p,
        _ => {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or invalid access token; run `postern login`",
                None,
            )
        }
    };
    if segments == ["logout"] && method == Method::POST {
        return match gw.delete(Kind::Session, &principal.session.info.name) {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"loggedOut": true})),
            Err(e) => change_error(e),
        };
    }
    if segments.first() == Some(&"tunnel") {
        return tunnel(gw, &principal, method, &segments[1..], req).await;
    }
    if !is_admin(&principal) {
        return error(
            StatusCode::FORBIDDEN,
            "the control API is for members of group admins",
            None,
        );
    }
    match (method, segments.as_slice()) {
        (Method::GET, ["usage"]) => super::observe::usage(gw, &req).await,
        (Method::GET, ["logs"]) => super::observe::logs(gw, &req),
        (Method::POST, ["apply"]) => {
            let body: ApplyRequest = match body_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match gw.apply(&body.files, body.dry_run) {
                Ok(r) => json(StatusCode::OK, &r),
                Err(e) => change_error(e),
            }
        }
        (Method::POST, ["secrets"]) => {
            let body: CreateSecretRequest = match body_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match gw.create_secret(&body.name, &body.value, body.overwrite) {
                Ok(()) => json(StatusCode::CREATED, &serde_json::json!({"name": body.name})),
                Err(e) => change_error(e),
            }
        }
        (Method::POST, ["credentials"]) => {
            let body: CreateCredentialRequest = match body_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match gw.create_credential(&body) {
                Ok(r) => json(StatusCode::CREATED, &r),
                Err(e) => change_error(e),
            }
        }
        (Method::GET, [kind]) => match Kind::from_user_input(kind) {
            Some(k) => json(
                StatusCode::OK,
                &ListResponse {
                    items: list(gw, k, &origin),
                },
            ),
            None => unknown_kind(kind),
        },
        (Method::GET, [kind, name]) => match Kind::from_user_input(kind) {
            Some(k) => match list(gw, k, &origin)
                .into_iter()
                .find(|v| item_name(v) == Some(*name))
            {
                Some(item) => json(StatusCode::OK, &item),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("{k} {name:?} not found"),
                    None,
                ),
            },
            None => unknown_kind(kind),
        },
        (Method::DELETE, [kind, name]) => match Kind::from_user_input(kind) {
            Some(k) => match gw.delete(k, name) {
                Ok(()) => json(
                    StatusCode::OK,
                    &serde_json::json!({"deleted": {"kind": k.as_str(), "name": name}}),
                ),
                Err(e) => change_error(e),
            },
            None => unknown_kind(kind),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no API endpoint {path}"),
            None,
        ),
    }
}

/// `POST /api/v1/tunnel/connect` and `/disconnect`, for any logged-in Session.
async fn tunnel(
    gw: &Gateway,
    principal: &Principal,
    method: Method,
    rest: &[&str],
    req: ClientRequest,
) -> Response<BoxBody> {
    let Some(t) = gw.tunnel.get() else {
        return error(
            StatusCode::NOT_FOUND,
            "the tunnel is not enabled on this gateway (posternd serve --wg-listen)",
            None,
        );
    };
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None);
    }
    match rest {
        ["connect"] => {
            let body: TunnelConnectRequest = match body_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match t.connect(gw, principal, &body.public_key) {
                Ok(r) => json(StatusCode::OK, &r),
                Err(e) => {
                    let status = match &e {
                        ConnectError::BadKey(_) | ConnectError::OwnKey => StatusCode::BAD_REQUEST,
                        ConnectError::Registry(RegistryError::KeyInUse) => StatusCode::CONFLICT,
                        ConnectError::SessionGone => StatusCode::UNAUTHORIZED,
                        _ => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    error(status, e.to_string(), None)
                }
            }
        }
        ["disconnect"] => {
            let was = t.disconnect(&principal.session.info.name);
            json(StatusCode::OK, &serde_json::json!({"disconnected": was}))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "use tunnel/connect or tunnel/disconnect",
            None,
        ),
    }
}

fn is_admin(p: &Principal) -> bool {
    p.user.spec.groups.iter().any(|g| g == ADMINS_GROUP)
}

fn unknown_kind(kind: &str) -> Response<BoxBody> {
    error(
        StatusCode::NOT_FOUND,
        format!("unknown kind {kind:?}; use services, users, groups, policies, identityproviders, secrets, credentials or sessions"),
        None,
    )
}

fn item_name(v: &serde_json::Value) -> Option<&str> {
    v.pointer("/metadata/name")
        .or_else(|| v.get("name"))
        .and_then(|n| n.as_str())
}

/// `status.tls` of a public Service: what covers its name (`file`, `acme`, `internal-ca` or
/// `none`) and when that certificate expires.
fn service_tls_status(gw: &Gateway, service: &serde_json::Value) -> Option<serde_json::Value> {
    let public = service.pointer("/spec/isPublic")?.as_bool()?;
    let certs = gw.certs.get().filter(|_| public)?;
    let host = format!("{}.{}", item_name(service)?, gw.domain);
    let coverage = certs.coverage(&host);
    let not_after = certs
        .table()
        .select(Some(&host))
        .filter(|_| coverage != crate::certs::Coverage::None)
        .and_then(|e| chrono::DateTime::from_timestamp(e.not_after, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Some(serde_json::json!({ "source": coverage.label(), "notAfter": not_after }))
}

/// The items `get` shows: full resources for declared kinds, info records (never secret
/// values or hashes) for the others.
/// IdentityProviders also show `status.redirectURI`, the address to register at the provider
/// (`origin` is the gateway's public origin as the caller reached it).
fn list(gw: &Gateway, kind: Kind, origin: &str) -> Vec<serde_json::Value> {
    let snap = gw.snapshot();
    match kind {
        Kind::Service | Kind::User | Kind::Group | Kind::Policy | Kind::IdentityProvider => snap
            .resources
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, r)| {
                let mut v = r.to_json();
                if kind == Kind::IdentityProvider {
                    v["status"] = serde_json::json!({"redirectURI": format!("{origin}/callback")});
                }
                if kind == Kind::Service {
                    if let Some(status) = service_tls_status(gw, &v) {
                        v["status"] = serde_json::json!({ "tls": status });
                    }
                }
                v
            })
            .collect(),
        Kind::Secret => {
            let mut v: Vec<_> = snap.secrets.values().map(|s| s.info.clone()).collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.iter()
                .map(|s| serde_json::to_value(s).expect("serializes"))
                .collect()
        }
        Kind::Credential => {
            let mut v: Vec<_> = snap.credentials.values().map(|c| c.info.clone()).collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.iter()
                .map(|c| serde_json::to_value(c).expect("serializes"))
                .collect()
        }
        Kind::Session => gw
            .list_sessions()
            .iter()
            .map(|s| serde_json::to_value(s).expect("serializes"))
            .collect(),
    }
}
