//! `postern login` without an auth token: the person signs in with the company's identity
//! provider in a browser, and the one-time code comes back to a loopback listener
//! (RFC 8252). Composes [`crate::signin`]'s parts with the terminal and the gateway.

use super::session::{save_session, Issued, LoginArgs};
use super::Context;
use crate::domain::Domain;
use crate::duration::{format_duration, parse_duration};
use crate::error::{ClientError, Result};
use crate::http::ApiClient;
use crate::signin::callback::{for_terminal, Callback};
use crate::signin::loopback::Loopback;
use crate::signin::pkce::{random_state, Pkce};
use crate::signin::{browser, pages, urls};
use chrono::Utc;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How long `postern login` waits for the browser when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: &str = "5m";

/// Signs in through the browser and saves the session as a token login does.
pub(super) fn login(
    ctx: &Context,
    domain: Domain,
    ca_file: Option<PathBuf>,
    args: &LoginArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let timeout = parse_duration(args.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT))?;
    let client = ApiClient::new(domain.clone(), ca_file.as_deref(), None)?;
    let loopback = Loopback::bind().map_err(|e| {
        ClientError::Invalid(format!(
            "cannot listen on 127.0.0.1 or [::1] for the sign-in redirect: {e}; check the \
             loopback interface, or log in with --auth-token"
        ))
    })?;
    let redirect = loopback.redirect_uri();
    let pkce = Pkce::generate();
    let state = random_state();
    let url = urls::sign_in_url(
        &domain,
        &redirect,
        &state,
        &pkce.challenge,
        args.idp.as_deref(),
    );
    eprintln!(
        "To sign in to {domain}, open this address in a browser on this computer:\n\n    {url}\n"
    );
    if !args.no_browser && browser::open(&url) {
        eprintln!("Opened your browser; if it did not show up, use the address above.");
    }
    eprintln!(
        "Waiting up to {} for the sign-in to finish (Ctrl-C cancels)...",
        format_duration(timeout)
    );
    let waited = loopback
        .wait(&state, Duration::from_secs(timeout))
        .map_err(|e| {
            ClientError::Invalid(format!(
                "the loopback listener for the sign-in failed: {e}; run `postern login --domain \
                 {domain}` again"
            ))
        })?;
    let Some((callback, browser_tab)) = waited else {
        return Err(ClientError::SignInTimedOut {
            domain: domain.to_string(),
            waited: format_duration(timeout),
        });
    };
    let code = match callback {
        Callback::Code(code) => code,
        Callback::Error { error, description } => {
            let shown = match &description {
                Some(d) => format!("{error}: {d}"),
                None => error.clone(),
            };
            browser_tab.answer(&pages::failed(403, &shown));
            return Err(ClientError::SignInRefused {
                domain: domain.to_string(),
                error: for_terminal(&error),
                description: description.as_deref().map(for_terminal),
            });
        }
    };
    let started = Utc::now();
    let token = match client.oauth2_code_token(&code, &pkce.verifier, &redirect) {
        Ok(t) if t.token_type.eq_ignore_ascii_case("bearer") => t,
        Ok(t) => {
            browser_tab.answer(&pages::failed(502, "The gateway's answer was not usable."));
            return Err(ClientError::BadResponse {
                url: format!("{}/oauth2/token", domain.base_url()),
                detail: format!(
                    "token_type is {:?}, not Bearer",
                    for_terminal(&t.token_type)
                ),
            });
        }
        Err(e) => {
            browser_tab.answer(&pages::failed(400, &e.to_string()));
            return Err(e);
        }
    };
    let saved = save_session(
        ctx,
        &domain,
        ca_file,
        started,
        Issued {
            access_token: token.access_token,
            expires_in: token.expires_in,
            session: token.session,
            user: token.user,
        },
    );
    match &saved {
        Ok(session) => browser_tab.answer(&pages::signed_in(&session.domain, &session.user)),
        Err(e) => browser_tab.answer(&pages::failed(500, &e.to_string())),
    }
    let session = saved?;
    super::session::report_login(&session, out)
}
