//! The responses the front door sends: each fills a view from the gateway (or from what the
//! caller passes) and renders it with the shared security headers.

use super::data;
use super::html::response;
use super::signin::{render_choice, render_problem, render_signed_out, ChoiceView};
use super::signin::{ProviderChoice, SignInProblem};
use super::view::{render_portal, PortalView};
use crate::proxy::BoxBody;
use crate::state::{Gateway, Principal};
use http::{Response, StatusCode};

/// Whether `principal` is an administrator: a member of group `admins`, as the control API
/// decides.
pub fn is_admin(principal: &Principal) -> bool {
    principal
        .user
        .spec
        .groups
        .iter()
        .any(|g| g == crate::datadir::ADMINS_GROUP)
}

/// The portal's view for `principal`. `identity_provider` is the provider that signed the
/// session in (its displayName), `public_origin` the gateway's own origin
/// (`https://<domain>[:port]`), whose port the Service links reuse. Blocking (reads the
/// usage store).
pub fn portal_view(
    gw: &Gateway,
    principal: &Principal,
    identity_provider: Option<&str>,
    public_origin: &str,
) -> PortalView {
    let admin = is_admin(principal);
    let user = &principal.user;
    let port = url::Url::parse(public_origin).ok().and_then(|u| u.port());
    let own = (!admin).then_some(user.name.as_str());
    PortalView {
        user: user.name.clone(),
        email: user.spec.email.clone(),
        groups: user.spec.groups.clone(),
        identity_provider: identity_provider.map(str::to_string),
        session_expires: principal.session.info.expires_at.clone(),
        is_admin: admin,
        domain: gw.domain.clone(),
        services: data::usable_services(&gw.snapshot(), principal, &gw.domain, port),
        requests: data::recent_requests(gw, own),
        usage: data::usage_view(gw, own, chrono::Utc::now()),
    }
}

/// `GET https://<domain>/` for a signed-in person: the portal page (200). Blocking (one or
/// two grouped reads of the usage store); async callers use [`portal_page_async`].
pub fn portal_page(
    gw: &Gateway,
    principal: &Principal,
    identity_provider: Option<&str>,
    public_origin: &str,
) -> Response<BoxBody> {
    let v = portal_view(gw, principal, identity_provider, public_origin);
    response(StatusCode::OK, render_portal(&v))
}

/// [`portal_page`] on the blocking pool, for async handlers that hold the gateway in an
/// `Arc`: the page scans a week of usage rows, which must not stall a runtime thread.
pub async fn portal_page_async(
    gw: std::sync::Arc<Gateway>,
    principal: Principal,
    identity_provider: Option<String>,
    public_origin: String,
) -> Response<BoxBody> {
    let rendered = tokio::task::spawn_blocking(move || {
        let v = portal_view(
            &gw,
            &principal,
            identity_provider.as_deref(),
            &public_origin,
        );
        render_portal(&v)
    })
    .await;
    match rendered {
        Ok(html) => response(StatusCode::OK, html),
        Err(e) => {
            tracing::error!(error = %e, "rendering the portal failed");
            problem_page(
                &SignInProblem::Failed {
                    reason: "the portal could not be shown; reload the page".into(),
                },
                None,
            )
        }
    }
}

/// The identity-provider choice page (200): one link per provider to
/// `/login?idp=<name>&rd=<return_url>` plus `carry` (the CLI flow's parameters).
pub fn choice_page(
    providers: &[ProviderChoice],
    return_url: Option<&str>,
    carry: &[(String, String)],
) -> Response<BoxBody> {
    let v = ChoiceView {
        providers: providers.to_vec(),
        return_url: return_url.map(str::to_string),
        carry: carry.to_vec(),
    };
    let status = if providers.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    response(status, render_choice(&v))
}

/// The page for a refused or failed sign-in, with the problem's status (403 unknown email or
/// disabled User, 400 failure or bad return address, 404 no provider). `retry` is the link
/// to start again (see [`sign_in_link`]).
pub fn problem_page(problem: &SignInProblem, retry: Option<&str>) -> Response<BoxBody> {
    response(problem.status(), render_problem(problem, retry))
}

/// A failed sign-in with the caller's own status (a 502 when the identity provider cannot
/// be reached, a 503 when the store cannot take the Session, ...), `reason` saying what
/// happened, and `retry` the link to start again.
pub fn failure_page(status: StatusCode, reason: &str, retry: Option<&str>) -> Response<BoxBody> {
    let problem = SignInProblem::Failed {
        reason: reason.to_string(),
    };
    response(status, render_problem(&problem, retry))
}

/// The page after `/logout` (200), with a "Sign in again" link to `sign_in`.
pub fn signed_out_page(sign_in: &str) -> Response<BoxBody> {
    response(StatusCode::OK, render_signed_out(sign_in))
}

/// `/login?rd=<return_url>` (percent-encoded), the link that starts signing in again.
pub fn sign_in_link(return_url: &str) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("rd", return_url)
        .finish();
    format!("/login?{q}")
}
