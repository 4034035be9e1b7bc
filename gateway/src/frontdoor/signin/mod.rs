//! Signing people in through an IdentityProvider (OpenID Connect, authorization code with
//! PKCE), for a browser (a cookie on `.<domain>`) or for the `postern` agent (RFC 8252: a
//! one-time code sent to its loopback redirect), and signing them out.
//!
//! The routes live on the bare domain: `GET /login`, `GET /callback`, `GET|POST /logout`;
//! the agent redeems its code at `POST /oauth2/token`.

pub mod agent;
pub mod flow;
mod providers;
mod render;
pub mod return_to;
mod used;

use super::cookies::{self, SESSION_COOKIE};
use super::oauth2::{oauth_error, server_error};
use super::respond::json;
use crate::identity::oidc::{new_pkce_verifier, random_state};
use crate::identity::SecretBox;
use crate::proxy::BoxBody;
use crate::state::people::match_person;
use crate::state::{now_unix, Gateway, Principal};
use crate::telemetry::access_log::AccessRecord;
use agent::{AgentCodes, AgentRequest, SignedInPerson};
use flow::SignInFlow;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use postern_common::api::CodeTokenResponse;
use postern_common::resources::SessionKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use providers::ProviderClients;

/// Sign-in state the gateway keeps: discovered IdentityProvider clients, the agent's
/// pending one-time codes, and the key of the flow cookie.
pub struct SignInState {
    providers: ProviderClients,
    codes: Mutex<AgentCodes>,
    used: Mutex<used::UsedStates>,
    flow_keys: SecretBox,
}

impl SignInState {
    /// `root` is the gateway's secret box; the flow cookie gets a key derived from it.
    pub fn new(root: &SecretBox) -> Self {
        SignInState {
            providers: ProviderClients::default(),
            codes: Mutex::new(AgentCodes::default()),
            used: Mutex::new(used::UsedStates::default()),
            flow_keys: root.derive(flow::COOKIE_KEY_PURPOSE),
        }
    }
}

/// The gateway's public origin as the browser addressed it: `https://<domain>[:port]`, and
/// the port (443 when the Host names none).
pub fn public_origin(domain: &str, headers: &HeaderMap, uri: &http::Uri) -> (String, u16) {
    let port = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .and_then(|h| h.rsplit_once(':').map(|(_, p)| p.to_string()))
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(443);
    let origin = if port == 443 {
        format!("https://{domain}")
    } else {
        format!("https://{domain}:{port}")
    };
    (origin, port)
}

/// Whether the client is a browser navigating (it asks for HTML), which gets sent to sign
/// in rather than a 401.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// Where a browser that asked a Service for `uri` without a valid Session is sent: the
/// sign-in page, with the exact URL it asked for as the return address.
pub fn sign_in_redirect_for(domain: &str, headers: &HeaderMap, uri: &http::Uri) -> String {
    let (origin, port) = public_origin(domain, headers, uri);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or(domain);
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    sign_in_url(&origin, &format!("https://{host}{port}{path}"))
}

/// `https://<domain>[:port]/login?rd=<url>`: where a browser without a session goes.
pub fn sign_in_url(origin: &str, return_to: &str) -> String {
    let rd: String = url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    format!("{origin}/login?rd={rd}")
}

/// A 302 to `location`, never cached.
pub fn redirect(location: &str) -> Response<BoxBody> {
    let mut resp = Response::new(super::respond::full(""));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn query<B>(req: &Request<B>) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The browser's Session from its cookie, checked like a bearer token.
pub fn cookie_principal(gw: &Gateway, headers: &HeaderMap) -> Option<Principal> {
    let token = cookies::get(headers, SESSION_COOKIE)?;
    gw.authenticate(token).ok()
}

/// One access-log line for a sign-in event on the bare domain.
fn log_event(
    gw: &Gateway,
    method: &Method,
    path: &str,
    status: StatusCode,
    f: impl FnOnce(&mut AccessRecord),
) {
    let mut record = AccessRecord::new(AccessRecord::new_request_id(), method.as_str(), path);
    record.status = status.as_u16();
    f(&mut record);
    gw.telemetry.record(record);
}

/// `GET /login`: starts a sign-in, or shows the choice of IdentityProviders.
pub async fn login<B>(gw: &Gateway, req: &Request<B>) -> Response<BoxBody> {
    let (origin, port) = public_origin(&gw.domain, req.headers(), req.uri());
    let q = query(req);
    let agent = match (
        q.get("cli_redirect"),
        q.get("cli_state"),
        q.get("cli_challenge"),
    ) {
        (None, None, None) => None,
        (Some(r), Some(s), Some(c)) => match AgentRequest::new(r, s, c) {
            Ok(a) => Some(a),
            Err(e) => return render::failure(StatusCode::BAD_REQUEST, &e.to_string(), &origin),
        },
        _ => {
            return render::failure(
                StatusCode::BAD_REQUEST,
                "an agent sign-in needs cli_redirect, cli_state and cli_challenge together",
                &origin,
            )
        }
    };
    let return_to = match q.get("rd") {
        _ if agent.is_some() => format!("{origin}/"),
        None => format!("{origin}/"),
        Some(rd) => match return_to::check_return_url(rd, &gw.domain, port) {
            Ok(u) => u.to_string(),
            Err(_) => return render::bad_return(rd, &origin),
        },
    };
    let snap = gw.snapshot();
    let idp = match q.get("idp") {
        Some(name) => match snap.identity_providers.get(name) {
            Some(e) => e.clone(),
            None => {
                return render::failure(
                    StatusCode::NOT_FOUND,
                    &format!("there is no identity provider {name:?}"),
                    &origin,
                )
            }
        },
        None => match snap.identity_providers.len() {
            0 => return render::no_providers(),
            1 => snap
                .identity_providers
                .values()
                .next()
                .cloned()
                .expect("one"),
            _ => {
                let mut link_query: Vec<(&str, &str)> = Vec::new();
                if let Some(a) = &agent {
                    link_query.push(("cli_redirect", &a.redirect));
                    link_query.push(("cli_state", &a.state));
                    link_query.push(("cli_challenge", &a.challenge));
                } else {
                    link_query.push(("rd", &return_to));
                }
                return render::choice(&snap, &link_query);
            }
        },
    };
    let client = match gw.signin.providers.get(gw, &idp).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(idp = %idp.name, error = %e, "identity provider unusable");
            return render::failure(
                StatusCode::BAD_GATEWAY,
                &format!("cannot use identity provider {}: {e}", idp.display_name),
                &origin,
            );
        }
    };
    let flow = SignInFlow {
        idp: idp.name.clone(),
        state: random_state(),
        nonce: random_state(),
        verifier: new_pkce_verifier(),
        return_to,
        expires: now_unix() + flow::FLOW_TTL_SECS,
        agent,
    };
    let location = client.authorization_url(
        &format!("{origin}/callback"),
        &flow.state,
        &flow.nonce,
        &flow.verifier,
    );
    let mut resp = redirect(&location);
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookies::set(
            &flow.cookie_name(),
            &flow.seal(&gw.signin.flow_keys),
            None,
            flow::FLOW_TTL_SECS as u64,
        ),
    );
    resp
}

/// `GET /callback`: the IdentityProvider sends the browser back with a code.
pub async fn callback<B>(gw: &Gateway, req: &Request<B>) -> Response<BoxBody> {
    let (origin, _) = public_origin(&gw.domain, req.headers(), req.uri());
    let q = query(req);
    let Some(state) = q.get("state").filter(|s| !s.is_empty()) else {
        return refused(
            gw,
            req,
            StatusCode::BAD_REQUEST,
            "the identity provider's answer has no state; start again",
            &origin,
            None,
        );
    };
    let cookie_name = flow::cookie_name_for_state(state);
    let flow = match SignInFlow::open(
        cookies::get(req.headers(), &cookie_name),
        state,
        &gw.signin.flow_keys,
        now_unix(),
    ) {
        Ok(f) => f,
        Err(e) => {
            return refused(
                gw,
                req,
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                &origin,
                Some(&cookie_name),
            )
        }
    };
    let claim = gw.signin.used.lock().expect("used states lock").claim(
        &flow.state,
        flow.expires,
        now_unix(),
    );
    match claim {
        used::Claim::Fresh => {}
        used::Claim::Replayed => {
            return refused(
                gw,
                req,
                StatusCode::BAD_REQUEST,
                "this sign-in was already completed; start again",
                &origin,
                Some(&cookie_name),
            )
        }
        used::Claim::Full => {
            return refused(
                gw,
                req,
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins at once; try again in a few minutes",
                &origin,
                None,
            )
        }
    }
    let mut resp = finish_callback(gw, req, &q, &flow, &origin).await;
    resp.headers_mut()
        .append(header::SET_COOKIE, cookies::clear(&cookie_name, None));
    resp
}

async fn finish_callback<B>(
    gw: &Gateway,
    req: &Request<B>,
    q: &HashMap<String, String>,
    flow: &SignInFlow,
    origin: &str,
) -> Response<BoxBody> {
    let fail = |status: StatusCode, why: &str| {
        if let Some(a) = &flow.agent {
            log_event(gw, req.method(), "/callback", StatusCode::FOUND, |r| {
                r.decision = Some(postern_common::resources::Effect::Deny);
                r.reason = Some(format!("sign-in for the agent failed: {why}"));
            });
            return redirect(
                &a.redirect_with(&[("error", "access_denied"), ("error_description", why)]),
            );
        }
        refused(gw, req, status, why, origin, None)
    };
    if let Some(err) = q.get("error") {
        let desc = q.get("error_description").map(String::as_str).unwrap_or("");
        return fail(
            StatusCode::FORBIDDEN,
            &format!("the identity provider refused the sign-in: {err} {desc}"),
        );
    }
    let Some(code) = q.get("code").filter(|c| !c.is_empty()) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the identity provider sent no code",
        );
    };
    let snap = gw.snapshot();
    let Some(idp) = snap.identity_providers.get(&flow.idp).cloned() else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the identity provider was removed; start again",
        );
    };
    let client = match gw.signin.providers.get(gw, &idp).await {
        Ok(c) => c,
        Err(e) => {
            return fail(
                StatusCode::BAD_GATEWAY,
                &format!("cannot use identity provider {}: {e}", idp.display_name),
            )
        }
    };
    let identity = match client
        .exchange(
            code,
            &flow.verifier,
            &format!("{origin}/callback"),
            &flow.nonce,
        )
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(idp = %idp.name, error = %e, "sign-in failed");
            return fail(StatusCode::FORBIDDEN, &format!("sign-in failed: {e}"));
        }
    };
    let user = match match_person(
        &snap,
        identity.email.as_deref(),
        identity.email_verified,
        idp.spec.oidc.allow_missing_email_verified,
    ) {
        Ok(u) => u,
        Err(refusal) => {
            log_event(gw, req.method(), "/callback", StatusCode::FORBIDDEN, |r| {
                r.decision = Some(postern_common::resources::Effect::Deny);
                r.reason = Some(format!("sign-in with {} refused: {refusal}", idp.name));
            });
            if let Some(a) = &flow.agent {
                return redirect(&a.redirect_with(&[
                    ("error", "access_denied"),
                    ("error_description", &refusal.to_string()),
                ]));
            }
            return render::refusal(&refusal, origin);
        }
    };
    let claims = serde_json::Value::Object(identity.claims);
    if let Some(a) = &flow.agent {
        let person = SignedInPerson {
            user: user.clone(),
            identity_provider: idp.name.clone(),
            claims,
        };
        let code =
            gw.signin
                .codes
                .lock()
                .expect("codes lock")
                .issue(a.clone(), person, Instant::now());
        let Some(code) = code else {
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins in progress; try again in a minute",
            );
        };
        log_event(gw, req.method(), "/callback", StatusCode::FOUND, |r| {
            r.user = Some(user.clone());
            r.decision = Some(postern_common::resources::Effect::Allow);
            r.reason = Some(format!("signed in with {} for the agent", idp.name));
        });
        return redirect(&a.redirect_with(&[("code", &code)]));
    }
    let (token, info) =
        match gw.start_person_session(&user, &idp.name, claims, SessionKind::Browser) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot store a browser session");
                return render::failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the gateway could not store the session; try again",
                    origin,
                );
            }
        };
    log_event(gw, req.method(), "/callback", StatusCode::FOUND, |r| {
        r.user = Some(user.clone());
        r.session = Some(info.name.clone());
        r.decision = Some(postern_common::resources::Effect::Allow);
        r.reason = Some(format!("signed in with {}", idp.name));
    });
    let mut resp = redirect(&flow.return_to);
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookies::set(
            SESSION_COOKIE,
            &token,
            Some(&gw.domain),
            gw.settings.login_ttl.as_secs(),
        ),
    );
    resp
}

/// A refused callback: logged, and answered with a page saying why.
fn refused<B>(
    gw: &Gateway,
    req: &Request<B>,
    status: StatusCode,
    why: &str,
    origin: &str,
    clear_cookie: Option<&str>,
) -> Response<BoxBody> {
    log_event(gw, req.method(), "/callback", status, |r| {
        r.decision = Some(postern_common::resources::Effect::Deny);
        r.reason = Some(format!("sign-in refused: {why}"));
    });
    let mut resp = render::failure(status, why, origin);
    if let Some(name) = clear_cookie {
        resp.headers_mut()
            .append(header::SET_COOKIE, cookies::clear(name, None));
    }
    resp
}

/// `GET /` for a signed-in person: the portal, built on the blocking pool (an admin's page
/// reads the usage store).
pub async fn portal(gw: Arc<Gateway>, p: Principal, origin: String) -> Response<BoxBody> {
    let idp = p
        .session
        .info
        .authentication
        .identity_provider
        .as_deref()
        .map(|n| {
            gw.snapshot()
                .identity_providers
                .get(n)
                .map_or_else(|| n.to_string(), |e| e.display_name.clone())
        });
    crate::portal::portal_page_async(gw, p, idp, origin).await
}

/// `GET|POST /logout`: ends the browser's Session on the server and clears its cookie.
pub fn logout<B>(gw: &Gateway, req: &Request<B>) -> Response<BoxBody> {
    let (origin, _) = public_origin(&gw.domain, req.headers(), req.uri());
    let principal = cookie_principal(gw, req.headers());
    if let Some(p) = &principal {
        if let Err(e) = gw.end_session(&p.session.info.name) {
            tracing::error!(error = %e, "cannot end a session at sign-out");
            return render::failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway could not end the session; try again",
                &origin,
            );
        }
        log_event(gw, req.method(), "/logout", StatusCode::OK, |r| {
            r.user = Some(p.user.name.clone());
            r.session = Some(p.session.info.name.clone());
            r.reason = Some("signed out".into());
        });
    }
    let mut resp = render::signed_out(&origin);
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookies::clear(SESSION_COOKIE, Some(&gw.domain)),
    );
    resp
}

/// `POST /oauth2/token` with `grant_type=authorization_code`: the agent's Session.
pub fn redeem_agent_code(
    gw: &Gateway,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> Response<BoxBody> {
    let person = gw.signin.codes.lock().expect("codes lock").redeem(
        code,
        verifier,
        redirect_uri,
        Instant::now(),
    );
    let person = match person {
        Ok(p) => p,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &e.to_string()),
    };
    // The User may have been disabled or the provider removed in the last minute.
    let snap = gw.snapshot();
    let user_ok = snap
        .users
        .get(&person.user)
        .is_some_and(|u| !u.spec.is_disabled);
    if !user_ok
        || !snap
            .identity_providers
            .contains_key(&person.identity_provider)
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the User or identity provider is gone or disabled",
        );
    }
    match gw.start_person_session(
        &person.user,
        &person.identity_provider,
        person.claims,
        SessionKind::Agent,
    ) {
        Ok((token, info)) => json(
            StatusCode::OK,
            &CodeTokenResponse {
                access_token: token,
                token_type: "Bearer".into(),
                expires_in: gw.settings.login_ttl.as_secs(),
                session: info.name,
                user: info.user,
            },
        ),
        Err(e) => server_error(e),
    }
}
