//! `kind: Service` with Octelium's field names.

use super::condition::{Condition, PolicySpec};
use serde::{Deserialize, Serialize};

/// How the gateway speaks to the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServiceMode {
    #[default]
    Http,
    Tcp,
}

/// `spec` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub mode: ServiceMode,
    /// Reachable at `https://<name>.<domain>` without the tunnel.
    #[serde(default)]
    pub is_public: bool,
    /// The port the Service answers on inside the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ServiceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_config: Option<DynamicConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Rate limits and budgets every caller of this Service is held to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<super::limits::LimitSpec>,
}

/// Where and how requests are forwarded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
}

/// One entry of `dynamicConfig.configs`: a [`ServiceConfig`] with a name rules refer to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
}

impl NamedConfig {
    pub fn config(&self) -> ServiceConfig {
        ServiceConfig {
            upstream: self.upstream.clone(),
            http: self.http.clone(),
        }
    }
}

/// Where a config sends requests, and how hard it tries (see `upstream_resilience`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// `http://` or `https://` base URL of the upstream; empty when `loadBalance` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Several endpoints instead of one `url` (mutually exclusive with `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balance: Option<LoadBalance>,
    /// Retrying a failed attempt (off unless `attempts` > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Per-config timeouts overriding the gateway's serve flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<UpstreamTimeout>,
}

mod resilience;
pub use resilience::*;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
}

/// Path rewriting: `removePrefix` first, then `addPrefix`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_request_headers: Vec<KeyValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_request_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_response_headers: Vec<KeyValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_response_headers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// Credentials the gateway injects upstream, so clients never hold them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<FromSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomAuth>,
    /// A token fetched by the gateway from an OAuth2 token endpoint (client credentials grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_credentials: Option<OAuth2ClientCredentials>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSecret {
    pub from_secret: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: FromSecret,
}

/// A header of the operator's choosing (`x-api-key: <secret>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomAuth {
    pub header: String,
    pub value: FromSecret,
}

/// CORS answered by the gateway (preflight) and added to responses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin_string_match: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
}

/// One way an origin may match; exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

impl StringMatch {
    pub fn matches(&self, s: &str) -> bool {
        self.exact.as_deref().is_some_and(|e| e == s)
            || self.prefix.as_deref().is_some_and(|p| s.starts_with(p))
            || self.suffix.as_deref().is_some_and(|p| s.ends_with(p))
    }
}

/// Several configs and the rules that pick one per request (first match wins).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DynamicConfig {
    #[serde(default)]
    pub configs: Vec<NamedConfig>,
    #[serde(default)]
    pub rules: Vec<DynamicRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DynamicRule {
    pub condition: Condition,
    /// The one config this rule picks (or use `configNames`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_name: String,
    /// An ordered fallback list: the next config is tried when one fails before answering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_names: Vec<String>,
}

impl DynamicRule {
    /// The configs this rule picks, in the order they are tried.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        if !self.config_name.is_empty() {
            v.push(&self.config_name);
        }
        v.extend(self.config_names.iter().map(String::as_str));
        v
    }
}

/// Policies attached to a Service, User or Group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_policies: Vec<InlinePolicy>,
    /// Names of `Policy` resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlinePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub spec: PolicySpec,
}
