//! The sign-in pages, as responses (the HTML comes from [`crate::portal`]).

use crate::proxy::BoxBody;
use crate::state::people::SignInRefusal;
use crate::state::Snapshot;
use http::{Response, StatusCode};

fn page(status: StatusCode, title: &str, body: &str) -> Response<BoxBody> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let html = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>{}</title><h1>{}</h1><p>{}</p></html>",
        esc(title),
        esc(title),
        esc(body)
    );
    let mut resp = Response::new(crate::frontdoor::respond::full(html));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

pub fn failure(status: StatusCode, why: &str, _origin: &str) -> Response<BoxBody> {
    page(status, "Sign-in failed", why)
}

pub fn bad_return(why: &str, _origin: &str) -> Response<BoxBody> {
    page(StatusCode::BAD_REQUEST, "Bad return address", why)
}

pub fn no_providers(_origin: &str) -> Response<BoxBody> {
    page(
        StatusCode::NOT_FOUND,
        "No identity provider",
        "no identity provider is configured; ask an administrator",
    )
}

pub fn choice(snap: &Snapshot, _query: &[(&str, &str)]) -> Response<BoxBody> {
    let names: Vec<_> = snap
        .identity_providers
        .values()
        .map(|i| i.display_name.clone())
        .collect();
    page(StatusCode::OK, "Sign in", &names.join(", "))
}

pub fn refusal(r: &SignInRefusal, _origin: &str) -> Response<BoxBody> {
    page(StatusCode::FORBIDDEN, "Not signed in", &r.to_string())
}

pub fn signed_out(_origin: &str) -> Response<BoxBody> {
    page(StatusCode::OK, "Signed out", "You are signed out.")
}

pub fn portal(p: &crate::state::Principal, _origin: &str) -> Response<BoxBody> {
    page(
        StatusCode::OK,
        "Postern",
        &format!("Signed in as {}", p.user.name),
    )
}
