//! A hypothetical request ([`Scenario`]) evaluated against a set of resources
//! ([`PolicyWorld`]) exactly as the gateway would: same rule set, same `ctx`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use postern_common::resources::validate::validate;
use postern_common::resources::{
    AuthMethod, Authentication, CredentialType, Kind, Resource, SessionInfo, SessionKind,
    SessionType,
};
use serde::Deserialize;

use crate::values;
use crate::{
    BuildError, Catalog, CelValue, CompiledCondition, EvalContext, Explanation, RequestFacts,
    RuleSet,
};

/// Why a scenario cannot be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// The resources would be refused by the gateway.
    #[error("the resources do not compile:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Build(Vec<BuildError>),
    /// No User of that name.
    #[error("User {0:?} not found in the resources")]
    UnknownUser(String),
    /// The User is disabled: the gateway refuses its tokens (401) before any policy runs.
    #[error("User {0:?} is disabled (spec.isDisabled): the gateway refuses its requests with 401 before any policy is evaluated")]
    DisabledUser(String),
    /// No Service of that name.
    #[error("Service {0:?} not found in the resources")]
    UnknownService(String),
    /// A path the gateway refuses with 400 before any policy runs.
    #[error(
        "path {path:?} is refused by the gateway (400) before any policy is evaluated: {reason}"
    )]
    Path {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A header name or value HTTP does not allow.
    #[error("invalid header {name:?}: {message}")]
    Header {
        /// The header as given.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// The HTTP side of a hypothetical request. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Method, `GET` by default.
    #[serde(default)]
    pub method: Option<String>,
    /// Path without the query string, `/` by default.
    #[serde(default)]
    pub path: Option<String>,
    /// Headers (names are lowercased as HTTP does).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Raw query string without `?`, e.g. `a=1&b=2`.
    #[serde(default)]
    pub query: Option<String>,
    /// The JSON body (`ctx.request.http.bodyMap`).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Body size in bytes; by default the length of the body serialized as JSON.
    #[serde(default)]
    pub size: Option<u64>,
    /// Client address (`ctx.request.ip`).
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// Host the client asked for; by default `<service>` (the gateway uses
    /// `<service>.<domain>`).
    #[serde(default)]
    pub host: Option<String>,
    /// When the request is made (RFC 3339), for `now()`; the current time by default.
    #[serde(default)]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
}

/// The calling Session's kind and authentication (`ctx.session.spec.kind`,
/// `ctx.session.spec.authentication`); a workload's OAuth2 Session by default. Without
/// `authentication`, an agent Session is an auth-token login, as the gateway makes them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionSpec {
    #[serde(default)]
    pub kind: SessionKind,
    #[serde(default)]
    pub authentication: Option<Authentication>,
}

impl SessionSpec {
    /// `authentication`, or the one the gateway gives a Session of this kind by default.
    pub fn authentication(&self) -> Authentication {
        self.authentication.clone().unwrap_or_else(|| {
            Authentication::credential(match self.kind {
                SessionKind::Agent => CredentialType::AuthToken,
                SessionKind::Browser | SessionKind::Workload => CredentialType::Oauth2,
            })
        })
    }
}

/// Who calls which Service with what request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name of a User in the resources.
    pub user: String,
    /// Name of a Service in the resources.
    pub service: String,
    /// The request.
    pub request: RequestSpec,
    /// The Session it comes from.
    pub session: SessionSpec,
}

/// Which upstream configuration an allowed request would be forwarded with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "source", content = "name")]
pub enum ChosenConfig {
    /// A `dynamicConfig.configs[]` entry, picked by the first matching dynamicConfig rule.
    Dynamic(String),
    /// No dynamicConfig rule matched (or there are none): `spec.config`.
    Default,
    /// Neither: the gateway answers 502.
    None,
}

/// A set of resources, validated and compiled as the gateway would.
#[derive(Debug)]
pub struct PolicyWorld {
    /// By kind and name, as the gateway stores them (this order matters for global rules).
    resources: BTreeMap<(Kind, String), Resource>,
    catalog: Catalog,
}

impl PolicyWorld {
    /// Validates and compiles `resources` (a later resource of the same kind and name
    /// replaces an earlier one); every problem is reported at once.
    pub fn build(resources: impl IntoIterator<Item = Resource>) -> Result<Self, ScenarioError> {
        let resources: BTreeMap<_, _> = resources
            .into_iter()
            .map(|r| ((r.kind(), r.name().to_owned()), r))
            .collect();
        let mut errors: Vec<BuildError> = resources
            .values()
            .flat_map(|r| {
                validate(r).into_iter().map(|e| BuildError {
                    kind: r.kind(),
                    name: r.name().to_owned(),
                    field: e.field,
                    message: e.message,
                })
            })
            .collect();
        let (catalog, build_errors) = Catalog::build(resources.values());
        errors.extend(build_errors);
        if !errors.is_empty() {
            errors.dedup();
            return Err(ScenarioError::Build(errors));
        }
        Ok(PolicyWorld { resources, catalog })
    }

    fn get(&self, kind: Kind, name: &str) -> Option<&Resource> {
        self.resources.get(&(kind, name.to_owned()))
    }

    /// The rule set and `ctx` of `scenario`, built as the gateway builds them; the session
    /// is a synthetic CLIENTLESS session of the user, created now and valid for an hour.
    pub fn prepare(&self, scenario: &Scenario) -> Result<Prepared, ScenarioError> {
        let user = self
            .get(Kind::User, &scenario.user)
            .ok_or_else(|| ScenarioError::UnknownUser(scenario.user.clone()))?;
        let service = self
            .get(Kind::Service, &scenario.service)
            .ok_or_else(|| ScenarioError::UnknownService(scenario.service.clone()))?;
        let Resource::User {
            spec: user_spec, ..
        } = user
        else {
            unreachable!("looked up by kind")
        };
        let Resource::Service { spec: svc_spec, .. } = service else {
            unreachable!("looked up by kind")
        };
        if user_spec.is_disabled {
            return Err(ScenarioError::DisabledUser(scenario.user.clone()));
        }
        let rules = self.catalog.rule_set(&scenario.user, &scenario.service);

        let mut dynamic = Vec::new();
        let mut dynamic_reads_body = false;
        if let Some(dc) = &svc_spec.dynamic_config {
            for (i, rule) in dc.rules.iter().enumerate() {
                let field = format!("spec.dynamicConfig.rules[{i}].condition");
                let cond = CompiledCondition::compile(&rule.condition, &field).map_err(|es| {
                    ScenarioError::Build(
                        es.into_iter()
                            .map(|e| BuildError {
                                kind: Kind::Service,
                                name: scenario.service.clone(),
                                field: e.field,
                                message: e.message,
                            })
                            .collect(),
                    )
                })?;
                dynamic_reads_body |= cond.reads_body();
                if dc.configs.iter().any(|c| c.name == rule.config_name) {
                    dynamic.push((cond, rule.config_name.clone()));
                }
            }
        }
        let has_default = svc_spec
            .config
            .as_ref()
            .is_some_and(|c| c.upstream.is_some());

        let groups: HashMap<&str, &Resource> = self
            .resources
            .iter()
            .filter(|((k, _), _)| *k == Kind::Group)
            .map(|((_, n), r)| (n.as_str(), r))
            .collect();
        let now = chrono::Utc::now();
        let session = SessionInfo {
            name: "policy-test".into(),
            user: scenario.user.clone(),
            session_type: match scenario.session.kind {
                SessionKind::Agent => SessionType::Client,
                SessionKind::Browser | SessionKind::Workload => SessionType::Clientless,
            },
            kind: scenario.session.kind,
            credential: match scenario.session.authentication().method {
                AuthMethod::Oidc => String::new(),
                AuthMethod::Oauth2 | AuthMethod::AuthToken => "policy-test".into(),
            },
            authentication: scenario.session.authentication(),
            created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expires_at: (now + chrono::Duration::hours(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        // The gateway only reads the body when some condition may look at it.
        let body = if rules.reads_body() || dynamic_reads_body {
            scenario.request.body.as_ref()
        } else {
            None
        };
        let ctx = build_ctx(
            &values::user_value(user),
            &values::session_value(&session),
            &values::groups_value(&user_spec.groups, &groups),
            &values::service_value(service),
            &scenario.service,
            &scenario.request,
            body,
        )?;
        Ok(Prepared {
            rules,
            ctx,
            dynamic,
            has_default,
        })
    }
}

fn build_ctx(
    user: &CelValue,
    session: &CelValue,
    groups: &CelValue,
    service: &CelValue,
    service_name: &str,
    req: &RequestSpec,
    body: Option<&serde_json::Value>,
) -> Result<EvalContext, ScenarioError> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &req.headers {
        let bad = |message: String| ScenarioError::Header {
            name: name.clone(),
            message,
        };
        let n =
            http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| bad(e.to_string()))?;
        let v = http::HeaderValue::from_str(value.trim()).map_err(|e| bad(e.to_string()))?;
        headers.append(n, v);
    }
    let size = req.size.unwrap_or_else(|| {
        req.body
            .as_ref()
            .map(|b| b.to_string().len() as u64)
            .unwrap_or(0)
    });
    // Rules see the path the gateway would: normalised the same way, or refused.
    let given = req.path.as_deref().unwrap_or("/");
    let path = postern_common::path::normalize(given).map_err(|e| ScenarioError::Path {
        path: given.to_string(),
        reason: e.to_string(),
    })?;
    let facts = RequestFacts {
        method: req.method.as_deref().unwrap_or("GET"),
        path: &path,
        host: req.host.as_deref().unwrap_or(service_name),
        scheme: "https",
        headers: &headers,
        query: req.query.as_deref(),
        body,
        size,
        client_ip: req.ip,
        now: req.time,
    };
    Ok(EvalContext::new(user, session, groups, service, &facts))
}

/// A scenario ready to evaluate: its rule set, its `ctx` and the Service's dynamicConfig.
pub struct Prepared {
    /// The rules that apply, in decision order.
    pub rules: RuleSet,
    /// The request's `ctx`.
    pub ctx: EvalContext,
    /// Compiled `dynamicConfig.rules` whose config exists, in order, with the config name.
    dynamic: Vec<(CompiledCondition, String)>,
    has_default: bool,
}

impl Prepared {
    /// Every rule evaluated, and the decision.
    pub fn explain(&self) -> Explanation {
        self.rules.explain(&self.ctx)
    }

    /// The config an allowed request would use (first matching dynamicConfig rule, else
    /// `spec.config`).
    pub fn chosen_config(&self) -> ChosenConfig {
        match self.dynamic.iter().find(|(c, _)| c.evaluate(&self.ctx)) {
            Some((_, name)) => ChosenConfig::Dynamic(name.clone()),
            None if self.has_default => ChosenConfig::Default,
            None => ChosenConfig::None,
        }
    }
}
