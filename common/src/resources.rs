//! Declarative resources in the `kind/metadata/spec` shape.
//!
//! `spec` types mirror Octelium's field names so that its Service files apply unchanged.
//! Parsing ([`parse`]) reports errors with the file, line and field path; semantic checks
//! that need no gateway state live in [`validate`].

mod condition;
mod identity;
mod identity_provider;
pub mod limits;
pub mod locate;
pub mod parse;
mod service;
pub mod validate;

pub use condition::{Condition, ConditionList, Effect, OpaCondition, PolicySpec, Rule};
pub use identity::{
    AuthMethod, Authentication, CredentialInfo, CredentialType, GroupSpec, SecretInfo, SessionInfo,
    SessionKind, SessionType, UserSpec, UserType,
};
pub use identity_provider::{
    check_issuer_url, is_loopback_host, IdentityProviderSpec, OidcSpec, DEFAULT_OIDC_SCOPES,
};
pub use limits::{LimitBy, LimitSpec, Period};
pub use parse::{parse_documents, ParseError, SourceDocument};
pub use service::{
    Authorization, BasicAuth, CorsConfig, CustomAuth, DynamicConfig, DynamicRule, FromSecret,
    HeaderConfig, HttpAuth, HttpConfig, InlinePolicy, KeyValue, NamedConfig, PathConfig,
    ServiceConfig, ServiceMode, ServiceSpec, StringMatch, Upstream,
};

pub use service::{
    check_upstream, parse_duration, LbEndpoint, LbPolicy, LoadBalance, OAuth2ClientCredentials,
    Retry, RetryBudget, RetryOn, TokenAuthMethod, UpstreamTimeout, MAX_RETRY_ATTEMPTS,
};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds a user can declare in YAML and address from `posternctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Service,
    User,
    Group,
    Policy,
    IdentityProvider,
    Secret,
    Credential,
    Session,
}

impl Kind {
    /// Every kind, in the order `apply` writes them (referenced kinds first).
    pub const ALL: [Kind; 8] = [
        Kind::Group,
        Kind::Policy,
        Kind::IdentityProvider,
        Kind::User,
        Kind::Service,
        Kind::Secret,
        Kind::Credential,
        Kind::Session,
    ];

    /// The name used in YAML `kind:` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::User => "User",
            Kind::Group => "Group",
            Kind::Policy => "Policy",
            Kind::IdentityProvider => "IdentityProvider",
            Kind::Secret => "Secret",
            Kind::Credential => "Credential",
            Kind::Session => "Session",
        }
    }

    /// The plural, lowercase name used in URLs and on the command line.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::User => "users",
            Kind::Group => "groups",
            Kind::Policy => "policies",
            Kind::IdentityProvider => "identityproviders",
            Kind::Secret => "secrets",
            Kind::Credential => "credentials",
            Kind::Session => "sessions",
        }
    }

    /// Accepts `Service`, `service`, `services`, `svc` and the like, as `kubectl` users type them.
    pub fn from_user_input(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            let singular = k.as_str().to_ascii_lowercase();
            lower == singular
                || lower == k.plural()
                || (lower == "svc" && *k == Kind::Service)
                || (lower == "cred" && *k == Kind::Credential)
                || (lower == "idp" && *k == Kind::IdentityProvider)
        })
    }

    /// Kinds that are declared in YAML and applied with `posternctl apply`.
    pub fn is_declarative(self) -> bool {
        matches!(
            self,
            Kind::Service | Kind::User | Kind::Group | Kind::Policy | Kind::IdentityProvider
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metadata` of every resource. Server-set fields are accepted on input (so the output of
/// `posternctl get -o yaml` applies again) and ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// A declared resource with its typed spec.
// Resources are built at apply time and held behind `Arc`s, never moved on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    Service {
        metadata: Metadata,
        spec: ServiceSpec,
    },
    User {
        metadata: Metadata,
        #[serde(default)]
        spec: UserSpec,
    },
    Group {
        metadata: Metadata,
        #[serde(default)]
        spec: GroupSpec,
    },
    Policy {
        metadata: Metadata,
        spec: PolicySpec,
    },
    IdentityProvider {
        metadata: Metadata,
        spec: IdentityProviderSpec,
    },
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service { .. } => Kind::Service,
            Resource::User { .. } => Kind::User,
            Resource::Group { .. } => Kind::Group,
            Resource::Policy { .. } => Kind::Policy,
            Resource::IdentityProvider { .. } => Kind::IdentityProvider,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Service { metadata, .. }
            | Resource::User { metadata, .. }
            | Resource::Group { metadata, .. }
            | Resource::Policy { metadata, .. }
            | Resource::IdentityProvider { metadata, .. } => metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Resource::Service { metadata, .. }
            | Resource::User { metadata, .. }
            | Resource::Group { metadata, .. }
            | Resource::Policy { metadata, .. }
            | Resource::IdentityProvider { metadata, .. } => metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The resource without server-set metadata, for "unchanged" comparisons on apply.
    pub fn without_server_fields(&self) -> Resource {
        let mut r = self.clone();
        let m = r.metadata_mut();
        m.created_at = None;
        m.updated_at = None;
        r
    }

    /// The JSON form the policy context (`ctx.user`, `ctx.service`, ...) and the API use.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("resources always serialize")
    }
}
