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
