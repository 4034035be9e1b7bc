//! The sign-in pages as responses: the sign-in outcomes mapped onto [`crate::portal`]'s
//! pages, each with a link to start again where that helps.

use crate::portal::{self, ProviderChoice, SignInProblem};
use crate::proxy::BoxBody;
use crate::state::people::SignInRefusal;
use crate::state::Snapshot;
use http::{Response, StatusCode};

fn retry(origin: &str) -> String {
    portal::sign_in_link(&format!("{origin}/"))
}

pub fn failure(status: StatusCode, why: &str, origin: &str) -> Response<BoxBody> {
    portal::failure_page(status, why, Some(&retry(origin)))
}

pub fn bad_return(url: &str, origin: &str) -> Response<BoxBody> {
    portal::problem_page(
        &SignInProblem::BadReturnAddress {
            url: url.to_string(),
        },
        Some(&retry(origin)),
    )
}

pub fn no_providers() -> Response<BoxBody> {
    portal::problem_page(&SignInProblem::NoIdentityProvider, None)
}

pub fn choice(snap: &Snapshot, carry: &[(&str, &str)]) -> Response<BoxBody> {
    let providers: Vec<ProviderChoice> = snap
        .identity_providers
        .values()
        .map(|i| ProviderChoice {
            name: i.name.clone(),
            display_name: i.display_name.clone(),
        })
        .collect();
    let carry: Vec<(String, String)> = carry
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    portal::choice_page(&providers, None, &carry)
}

pub fn refusal(r: &SignInRefusal, origin: &str) -> Response<BoxBody> {
    let problem = match r {
        SignInRefusal::UnknownEmail { email } => SignInProblem::UnknownEmail {
            email: email.clone(),
        },
        SignInRefusal::UserDisabled { user, .. } => {
            SignInProblem::DisabledUser { user: user.clone() }
        }
        other => SignInProblem::Refused {
            reason: other.to_string(),
        },
    };
    portal::problem_page(&problem, Some(&retry(origin)))
}

pub fn signed_out(origin: &str) -> Response<BoxBody> {
    portal::signed_out_page(&retry(origin))
}
