//! Users and Groups (declared), and the server-managed identity records shown by `get`.

use super::service::Authorization;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UserType {
    #[default]
    Human,
    Workload,
}

/// `spec` of a User.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    #[serde(default, rename = "type")]
    pub user_type: UserType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_disabled: bool,
    /// Rate limits and budgets of this User, on every Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<super::limits::LimitSpec>,
}

/// `spec` of a Group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Rate limits and budgets of the Group's members, on every Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<super::limits::LimitSpec>,
}

/// A Secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialType {
    /// OAuth2 client credentials (`clientId` + `clientSecret`) for `/oauth2/token`.
    Oauth2,
    /// A bearer secret exchanged for a session by `postern login`.
    AuthToken,
}

impl CredentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Oauth2 => "oauth2",
            CredentialType::AuthToken => "auth-token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "oauth2" => Some(CredentialType::Oauth2),
            "auth-token" | "authtoken" | "auth_token" => Some(CredentialType::AuthToken),
            _ => None,
        }
    }
}

/// A Credential as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialInfo {
    pub name: String,
    pub user: String,
    #[serde(rename = "type")]
    pub credential_type: CredentialType,
    /// The public half of an OAuth2 credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SessionType {
    /// Made by an OAuth2 grant or a login, used at the public front door.
    Clientless,
    /// A tunnel session of the `postern` agent.
    Client,
}

/// Who a Session is for, which decides how it may be used and what a policy can ask
/// (`ctx.session.spec.kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// A person signed in through an IdentityProvider in a browser (a cookie).
    Browser,
    /// The `postern` agent, logged in by auth token or through an IdentityProvider.
    Agent,
    /// A workload's OAuth2 client credentials grant.
    #[default]
    Workload,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Browser => "browser",
            SessionKind::Agent => "agent",
            SessionKind::Workload => "workload",
        }
    }
}

/// How a Session's owner proved who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// An OpenID Connect IdentityProvider (`authentication.identityProvider` names it).
    Oidc,
    /// OAuth2 client credentials.
    #[default]
    Oauth2,
    /// An auth-token Credential (`postern login --auth-token`).
    AuthToken,
}

/// `ctx.session.spec.authentication`: the method, the IdentityProvider and its claims.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    pub method: AuthMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_provider: Option<String>,
    /// The ID token's claims (an object; empty unless `method` is `oidc`).
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub claims: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn is_empty_object(v: &serde_json::Value) -> bool {
    v.as_object().is_some_and(|o| o.is_empty())
}

impl Authentication {
    /// A Session made from a Credential of type `ty`.
    pub fn credential(ty: CredentialType) -> Self {
        Authentication {
            method: match ty {
                CredentialType::Oauth2 => AuthMethod::Oauth2,
                CredentialType::AuthToken => AuthMethod::AuthToken,
            },
            identity_provider: None,
            claims: empty_object(),
        }
    }
}

/// A Session as listed and as seen by policies (`ctx.session`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub name: String,
    pub user: String,
    #[serde(rename = "type")]
    pub session_type: SessionType,
    /// Browser, agent or workload.
    #[serde(default)]
    pub kind: SessionKind,
    /// The credential that created it; empty for a sign-in through an IdentityProvider.
    pub credential: String,
    #[serde(default)]
    pub authentication: Authentication,
    pub created_at: String,
    pub expires_at: String,
}
