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

/// A Session as listed and as seen by policies (`ctx.session`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub name: String,
    pub user: String,
    #[serde(rename = "type")]
    pub session_type: SessionType,
    /// The credential that created it.
    pub credential: String,
    pub created_at: String,
    pub expires_at: String,
}
