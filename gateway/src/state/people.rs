//! People: who a verified identity from an IdentityProvider is (the User with that email),
//! and the Sessions a sign-in starts, for a browser or for the `postern` agent.

use super::changes::{ChangeError, NewSession};
use super::{Gateway, Snapshot};
use postern_common::resources::{AuthMethod, Authentication, SessionInfo, SessionKind, UserType};

/// Why a person who proved an identity at the IdentityProvider gets no Session. The page
/// shown says this, and the access log records it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInRefusal {
    #[error("the identity provider sent no email address; add the `email` scope")]
    NoEmail,
    #[error("the identity provider says {email} is not verified")]
    EmailNotVerified { email: String },
    #[error("the identity provider does not say whether {email} is verified (set spec.oidc.allowMissingEmailVerified on the IdentityProvider if it never does)")]
    EmailVerificationUnknown { email: String },
    #[error("{email} has no Postern account")]
    UnknownEmail { email: String },
    #[error("the account of {email} (User {user}) is disabled")]
    UserDisabled { email: String, user: String },
    #[error("User {user} is a WORKLOAD; people sign in as HUMAN Users")]
    NotHuman { user: String },
}

/// The User a person is: the one whose `spec.email` equals the verified email (ignoring
/// case). Deny by default: no verified email, no unique enabled HUMAN User, no Session.
pub fn match_person(
    snap: &Snapshot,
    email: Option<&str>,
    email_verified: Option<bool>,
    allow_missing_email_verified: bool,
) -> Result<String, SignInRefusal> {
    let email = email
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or(SignInRefusal::NoEmail)?;
    match email_verified {
        Some(true) => {}
        Some(false) => {
            return Err(SignInRefusal::EmailNotVerified {
                email: email.to_string(),
            })
        }
        None if allow_missing_email_verified => {}
        None => {
            return Err(SignInRefusal::EmailVerificationUnknown {
                email: email.to_string(),
            })
        }
    }
    let user = snap
        .users_by_email
        .get(&email.to_lowercase())
        .and_then(|name| snap.users.get(name))
        .ok_or_else(|| SignInRefusal::UnknownEmail {
            email: email.to_string(),
        })?;
    if user.spec.user_type != UserType::Human {
        return Err(SignInRefusal::NotHuman {
            user: user.name.clone(),
        });
    }
    if user.spec.is_disabled {
        return Err(SignInRefusal::UserDisabled {
            email: email.to_string(),
            user: user.name.clone(),
        });
    }
    Ok(user.name.clone())
}

impl Gateway {
    /// Starts a Session for `user`, signed in through IdentityProvider `idp` with `claims`
    /// (the ID token's), for a browser or the agent; returns its access token.
    pub fn start_person_session(
        &self,
        user: &str,
        idp: &str,
        claims: serde_json::Value,
        kind: SessionKind,
    ) -> Result<(String, SessionInfo), ChangeError> {
        self.start_session(
            NewSession {
                user: user.to_string(),
                kind,
                credential: String::new(),
                authentication: Authentication {
                    method: AuthMethod::Oidc,
                    identity_provider: Some(idp.to_string()),
                    claims,
                },
            },
            self.settings.login_ttl,
        )
    }

    /// Ends Session `name` (sign-out); `false` if it was already gone.
    pub fn end_session(&self, name: &str) -> Result<bool, ChangeError> {
        match self.store.delete_session(name) {
            Ok(()) => {}
            Err(crate::store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let found = self
            .sessions
            .read()
            .expect("sessions lock")
            .contains_key(name);
        self.session_deleted_here(name);
        self.remove_sessions_where(|s| s.name == name);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_common::resources::parse_documents;

    fn snap() -> Snapshot {
        let docs = parse_documents(
            "t.yaml",
            "kind: User\nmetadata: {name: alice}\nspec: {type: HUMAN, email: Alice@Example.com}\n---\n\
             kind: User\nmetadata: {name: bob}\nspec: {type: HUMAN, email: bob@example.com, isDisabled: true}\n---\n\
             kind: User\nmetadata: {name: bot}\nspec: {type: WORKLOAD, email: bot@example.com}\n",
        )
        .unwrap();
        Snapshot::build(
            docs.into_iter().map(|d| d.resource).collect(),
            vec![],
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn verified_email_maps_to_its_user() {
        let s = snap();
        assert_eq!(
            match_person(&s, Some("alice@example.COM"), Some(true), false),
            Ok("alice".into())
        );
        assert_eq!(
            match_person(&s, Some("alice@example.com"), None, true),
            Ok("alice".into())
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let s = snap();
        assert_eq!(
            match_person(&s, None, Some(true), false),
            Err(SignInRefusal::NoEmail)
        );
        assert!(matches!(
            match_person(&s, Some("alice@example.com"), Some(false), true),
            Err(SignInRefusal::EmailNotVerified { .. })
        ));
        assert!(matches!(
            match_person(&s, Some("alice@example.com"), None, false),
            Err(SignInRefusal::EmailVerificationUnknown { .. })
        ));
        assert!(matches!(
            match_person(&s, Some("carol@example.com"), Some(true), false),
            Err(SignInRefusal::UnknownEmail { .. })
        ));
        assert!(matches!(
            match_person(&s, Some("bob@example.com"), Some(true), false),
            Err(SignInRefusal::UserDisabled { .. })
        ));
        assert!(matches!(
            match_person(&s, Some("bot@example.com"), Some(true), false),
            Err(SignInRefusal::NotHuman { .. })
        ));
    }
}
