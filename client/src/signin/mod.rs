//! Signing a person in through the browser for `postern login` (RFC 8252, native apps): the
//! gateway's `/login` sends the browser to the company's identity provider and then back to
//! a loopback listener here with a one-time code, which `/oauth2/token` trades (with the
//! PKCE verifier) for the same session a token login gets.
//!
//! The pure parts ([`pkce`], [`urls`], [`callback`], [`pages`], [`browser::opener`]) are
//! unit-tested; [`loopback`] and [`browser::open`] do the I/O, and
//! `commands::browser_login` composes them.

pub mod browser;
pub mod callback;
pub mod loopback;
pub mod pages;
pub mod pkce;
pub mod urls;

use serde::Deserialize;

/// `POST /oauth2/token` with `grant_type=authorization_code`: the gateway's answer.
///
/// Same shape as `postern_common::api::CodeTokenResponse` (wire contract of issue #11);
/// kept here until that type lands in the common crate.
#[derive(Debug, Clone, Deserialize)]
pub struct CodeTokenResponse {
    /// The bearer token for the control API and the tunnel.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token stops working.
    pub expires_in: u64,
    /// The Session's name on the gateway.
    pub session: String,
    /// The User the person signed in as.
    pub user: String,
}
