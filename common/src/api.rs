//! The control API's wire types (`https://<domain>/api/v1/...`, `/oauth2/token`), shared by
//! the gateway that serves them and the CLIs that call them.

use serde::{Deserialize, Serialize};

/// API path prefix, on the gateway's bare domain.
pub const API_PREFIX: &str = "/api/v1";

/// The error body of every failed request, in the shape OpenAI SDKs print.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: String,
    pub code: String,
    /// The request id, to find the access log line (on 403 and 5xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /api/v1/login`: trade an auth-token credential for a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    pub auth_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub session: String,
    pub user: String,
}

/// The `client_id` the `postern` agent uses for the authorization code grant of a browser
/// sign-in (RFC 8252: a native app, so no client secret; PKCE binds the code to it).
pub const AGENT_CLIENT_ID: &str = "postern-cli";

/// `POST /oauth2/token` with `grant_type=authorization_code`: the agent's Session after a
/// person signed in through an IdentityProvider in the browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeTokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub session: String,
    pub user: String,
}

/// `POST /api/v1/apply`: files' text, parsed and checked on the gateway so errors carry
/// the file name and line. All files are applied together, or none is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    pub files: Vec<ApplyFile>,
    #[serde(default)]
    pub dry_run: bool,
}

/// One file of an [`ApplyRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyFile {
    /// The name errors use: the path as the user gave it, or `<stdin>`.
    pub file: String,
    pub content: String,
}

/// What `apply` did (or, with `dryRun`, would do) to each resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub kind: String,
    pub name: String,
    pub action: ApplyAction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/secrets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSecretRequest {
    pub name: String,
    pub value: String,
    /// Replace the value of an existing secret instead of failing.
    #[serde(default)]
    pub overwrite: bool,
}

/// `POST /api/v1/credentials`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCredentialRequest {
    pub name: String,
    pub user: String,
    #[serde(rename = "type")]
    pub credential_type: crate::resources::CredentialType,
    /// Lifetime in seconds; none means it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// The secret half of a new credential, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCredentialResponse {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
}

/// `GET /api/v1/<kind>`: a list of resources (or of info records for secrets, credentials
/// and sessions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResponse {
    pub items: Vec<serde_json::Value>,
}

/// The OAuth2 token response (RFC 6749 section 5.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

/// The OAuth2 error response (RFC 6749 section 5.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// `POST /api/v1/tunnel/connect` (any logged-in user): registers the agent's WireGuard public
/// key for the caller's Session. The private key never leaves the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelConnectRequest {
    /// The agent's WireGuard public key, base64 as `wg` prints it.
    pub public_key: String,
}

/// Everything the agent needs to bring the tunnel up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelConnectResponse {
    /// The Session's tunnel address, e.g. `100.64.0.2/32`.
    pub address: String,
    /// The Session's IPv6 tunnel address, e.g. `fd70:7374::2/128`.
    pub address6: String,
    /// The gateway's WireGuard public key (base64).
    pub gateway_public_key: String,
    /// Where the gateway's WireGuard listener is reached, `host:port`.
    pub endpoint: String,
    /// Route these through the tunnel (and nothing else): the service range, e.g. `100.65.0.0/16`.
    pub service_range: String,
    pub service_range6: String,
    /// The DNS server inside the tunnel, answering `<svc>.local`, `<svc>.local.<domain>` and `<svc>`.
    pub dns: String,
    /// The DNS suffix the agent configures (`local`).
    pub dns_domain: String,
    /// Persistent keepalive the agent should use, in seconds.
    pub keepalive_seconds: u16,
    /// The Services this user may see, with their tunnel addresses.
    pub services: Vec<TunnelService>,
    /// True when this call added the agent's key on the gateway: its first connect, or the
    /// gateway had lost the peer (restarted, idle expiry). An agent that was already up
    /// must then start a fresh WireGuard handshake; false when the agent checks in again.
    #[serde(default)]
    pub new_peer: bool,
}

/// One Service as seen inside the tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelService {
    pub name: String,
    /// Its address in the service range.
    pub address: String,
    pub port: u16,
    /// `HTTP` or `TCP`.
    pub mode: String,
}
