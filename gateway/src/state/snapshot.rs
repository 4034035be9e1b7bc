//! The in-memory, compiled view of every declared resource that the hot path reads.
//!
//! A [`Snapshot`] is immutable: a change builds a new one (compiling every condition, so a
//! bad expression is refused before anything is stored) and swaps it in atomically.

use crate::proxy::balance::{Balancer, Endpoint};
use crate::proxy::retry::RetryPolicy;
use crate::proxy::upstream::Timeouts;
use crate::proxy::upstream_state::{ConfigKey, ConfigState, UpstreamStates};
use crate::store::CredentialRecord;
use postern_common::resources::validate::validate;
use postern_common::resources::{parse_duration, Upstream};
use postern_common::resources::{
    HttpConfig, IdentityProviderSpec, Kind, Resource, SecretInfo, ServiceSpec, UserSpec,
};
pub use postern_policy::BuildError;
use postern_policy::{values, Catalog, CelValue, CompiledCondition, CompiledRule};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// One upstream configuration, ready to forward with.
#[derive(Debug)]
pub struct UpstreamConfig {
    /// `None` for the Service's default `spec.config`.
    pub name: Option<String>,
    /// `upstream.url`, or the first `loadBalance` endpoint's.
    pub url: url::Url,
    pub http: Option<HttpConfig>,
    /// The endpoints (one for a plain `url`) and how one is picked.
    pub balancer: Balancer,
    /// `upstream.retry`, with its budget's live counters (shared with the gateway's
    /// [`UpstreamStates`], so they survive a rebuild).
    pub retry: RetryPolicy,
    /// `upstream.timeout`.
    pub timeouts: Timeouts,
}

impl UpstreamConfig {
    /// The name the access log uses: the dynamicConfig name or `default`.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("default")
    }
}

/// A Service compiled for the hot path.
pub struct ServiceEntry {
    pub name: String,
    pub spec: ServiceSpec,
    /// `ctx.service` for conditions.
    pub value: CelValue,
    /// The Service's own rules (inline policies and referenced Policies).
    pub rules: Vec<Arc<CompiledRule>>,
    pub default_config: Option<Arc<UpstreamConfig>>,
    /// `dynamicConfig.rules` in order, each with the configs it picks (fallbacks after the first).
    pub dynamic_rules: Vec<(CompiledCondition, Vec<Arc<UpstreamConfig>>)>,
    /// What the dynamicConfig conditions may read of the request (`bodyMap`: the body
    /// must be buffered).
    pub dynamic_reads: postern_policy::Reads,
}

/// A User compiled for the hot path.
pub struct UserEntry {
    pub name: String,
    pub spec: UserSpec,
    pub value: CelValue,
    /// `ctx.groups`: the user's existing Groups, as full resources.
    pub groups_value: CelValue,
    /// Rules from the User and from each of its Groups.
    pub rules: Vec<Arc<CompiledRule>>,
}

/// An IdentityProvider people can sign in with.
pub struct IdentityProviderEntry {
    pub name: String,
    /// `spec.displayName`, or the name.
    pub display_name: String,
    pub spec: IdentityProviderSpec,
}

/// A decrypted Secret.
pub struct SecretEntry {
    pub info: SecretInfo,
    pub value: String,
}

/// Everything declared, compiled. Cheap to share (`Arc`), never mutated.
#[derive(Default)]
pub struct Snapshot {
    /// The declarative resources as stored, for `get` and for building the next snapshot.
    pub resources: BTreeMap<(Kind, String), Resource>,
    pub services: HashMap<String, Arc<ServiceEntry>>,
    pub users: HashMap<String, Arc<UserEntry>>,
    /// Rules of global Policies, part of every request's rule set.
    pub global_rules: Vec<Arc<CompiledRule>>,
    pub secrets: HashMap<String, Arc<SecretEntry>>,
    pub credentials: HashMap<String, Arc<CredentialRecord>>,
    /// Credential name by lookup id (OAuth2 client id, auth token id).
    pub credentials_by_lookup: HashMap<String, String>,
    /// By name, in name order (the sign-in page's order).
    pub identity_providers: BTreeMap<String, Arc<IdentityProviderEntry>>,
    /// User name by `spec.email`, lowercased: who a person signing in is.
    pub users_by_email: HashMap<String, String>,
}

impl Snapshot {
    /// Compiles `resources` with the current secrets and credentials. All errors are
    /// collected so the user sees every problem of a file at once. Load-balancing and retry
    /// state starts fresh: for a check, or a snapshot that serves no traffic.
    pub fn build(
        resources: Vec<Resource>,
        secrets: Vec<(SecretInfo, String)>,
        credentials: Vec<CredentialRecord>,
    ) -> Result<Snapshot, Vec<BuildError>> {
        Snapshot::build_with(resources, secrets, credentials, &UpstreamStates::default())
    }

    /// [`Snapshot::build`] for the live snapshot: each config takes its round-robin position,
    /// retry budget counts and in-flight counts from `states`, so they survive the rebuild.
    pub fn build_with(
        resources: Vec<Resource>,
        secrets: Vec<(SecretInfo, String)>,
        credentials: Vec<CredentialRecord>,
        states: &UpstreamStates,
    ) -> Result<Snapshot, Vec<BuildError>> {
        let mut errors = Vec::new();
        let mut snap = Snapshot::default();
        for r in resources {
            snap.resources.insert((r.kind(), r.name().to_string()), r);
        }
        for r in snap.resources.values() {
            for e in validate(r) {
                errors.push(BuildError {
                    kind: r.kind(),
                    name: r.name().to_string(),
                    field: e.field,
                    message: e.message,
                });
            }
        }
        let (catalog, catalog_errors) = Catalog::build(snap.resources.values());
        errors.extend(catalog_errors);
        snap.global_rules = catalog.global_rules().to_vec();

        let mut groups_by_name: HashMap<&str, &Resource> = HashMap::new();
        for r in snap.resources.values() {
            if let Resource::Group { metadata, .. } = r {
                groups_by_name.insert(&metadata.name, r);
            }
        }
        let mut users = HashMap::new();
        for r in snap.resources.values() {
            if let Resource::User { metadata, spec } = r {
                users.insert(
                    metadata.name.clone(),
                    Arc::new(UserEntry {
                        name: metadata.name.clone(),
                        spec: spec.clone(),
                        value: values::user_value(r),
                        groups_value: values::groups_value(&spec.groups, &groups_by_name),
                        rules: catalog.user_rules(&metadata.name).to_vec(),
                    }),
                );
            }
        }
        snap.users = users;
        snap.users_by_email = users_by_email(&snap.resources, &mut errors);
        for r in snap.resources.values() {
            if let Resource::IdentityProvider { metadata, spec } = r {
                let display_name = spec
                    .display_name
                    .clone()
                    .filter(|d| !d.trim().is_empty())
                    .unwrap_or_else(|| metadata.name.clone());
                snap.identity_providers.insert(
                    metadata.name.clone(),
                    Arc::new(IdentityProviderEntry {
                        name: metadata.name.clone(),
                        display_name,
                        spec: spec.clone(),
                    }),
                );
            }
        }

        let mut services = HashMap::new();
        for r in snap.resources.values() {
            if let Resource::Service { metadata, spec } = r {
                let rules = catalog.service_rules(&metadata.name).to_vec();
                if let Some(entry) =
                    build_service(r, &metadata.name, spec, rules, states, &mut errors)
                {
                    services.insert(metadata.name.clone(), Arc::new(entry));
                }
            }
        }
        snap.services = services;

        for (info, value) in secrets {
            snap.secrets
                .insert(info.name.clone(), Arc::new(SecretEntry { info, value }));
        }
        for c in credentials {
            snap.credentials_by_lookup
                .insert(c.lookup_id.clone(), c.info.name.clone());
            snap.credentials.insert(c.info.name.clone(), Arc::new(c));
        }
        if errors.is_empty() {
            Ok(snap)
        } else {
            errors.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
            errors.dedup();
            Err(errors)
        }
    }

    /// The same resources with other secrets and credentials (no recompilation).
    pub fn with_identity(
        &self,
        secrets: Vec<(SecretInfo, String)>,
        credentials: Vec<CredentialRecord>,
    ) -> Result<Snapshot, Vec<BuildError>> {
        Snapshot::build(
            self.resources.values().cloned().collect(),
            secrets,
            credentials,
        )
    }

    /// Names of the resources that refer to Policy `name`.
    pub fn policy_referrers(&self, name: &str) -> Vec<String> {
        self.resources
            .values()
            .filter(|r| {
                let auth = match r {
                    Resource::Service { spec, .. } => spec.authorization.as_ref(),
                    Resource::User { spec, .. } => spec.authorization.as_ref(),
                    Resource::Group { spec, .. } => spec.authorization.as_ref(),
                    Resource::Policy { .. } | Resource::IdentityProvider { .. } => None,
                };
                auth.is_some_and(|a| a.policies.iter().any(|p| p == name))
            })
            .map(|r| format!("{}/{}", r.kind(), r.name()))
            .collect()
    }

    /// Every config a request can be forwarded with, as keys of the live upstream state.
    pub fn upstream_keys(&self) -> HashSet<ConfigKey> {
        let mut keys = HashSet::new();
        for svc in self.services.values() {
            let configs = svc
                .default_config
                .iter()
                .chain(svc.dynamic_rules.iter().flat_map(|(_, cfgs)| cfgs.iter()));
            for c in configs {
                keys.insert((svc.name.clone(), c.name.clone()));
            }
        }
        keys
    }

    pub fn secret(&self, name: &str) -> Option<String> {
        self.secrets.get(name).map(|s| s.value.clone())
    }
}

/// Lowercased `spec.email` to User name; an address claimed by two Users is an error on the
/// second (a person must map to exactly one User).
fn users_by_email(
    resources: &BTreeMap<(Kind, String), Resource>,
    errors: &mut Vec<BuildError>,
) -> HashMap<String, String> {
    let mut by_email: HashMap<String, String> = HashMap::new();
    for r in resources.values() {
        let Resource::User { metadata, spec } = r else {
            continue;
        };
        let Some(email) = spec.email.as_deref() else {
            continue;
        };
        let key = email.trim().to_lowercase();
        match by_email.get(&key) {
            Some(other) => errors.push(BuildError {
                kind: Kind::User,
                name: metadata.name.clone(),
                field: "spec.email".into(),
                message: format!(
                    "{email:?} is already the email of User {other:?}; a person signs in as exactly one User"
                ),
            }),
            None => {
                by_email.insert(key, metadata.name.clone());
            }
        }
    }
    by_email
}

fn build_service(
    r: &Resource,
    name: &str,
    spec: &ServiceSpec,
    rules: Vec<Arc<CompiledRule>>,
    states: &UpstreamStates,
    errors: &mut Vec<BuildError>,
) -> Option<ServiceEntry> {
    let err = |field: String, message: String| BuildError {
        kind: Kind::Service,
        name: name.to_string(),
        field,
        message,
    };
    let parse = |cfg_name: Option<&str>,
                 field: String,
                 upstream: Option<&Upstream>,
                 http: Option<&HttpConfig>,
                 errors: &mut Vec<BuildError>| {
        let u = upstream?;
        match compile_upstream(cfg_name, u, http, &states.state(name, cfg_name)) {
            Ok(c) => Some(Arc::new(c)),
            Err((sub, msg)) => {
                errors.push(err(format!("{field}{sub}"), msg));
                None
            }
        }
    };
    let default_config = spec.config.as_ref().and_then(|c| {
        parse(
            None,
            "spec.config.upstream".into(),
            c.upstream.as_ref(),
            c.http.as_ref(),
            errors,
        )
    });
    let mut named = HashMap::new();
    let mut dynamic_rules = Vec::new();
    let mut dynamic_reads = postern_policy::Reads::default();
    if let Some(dc) = &spec.dynamic_config {
        for (i, c) in dc.configs.iter().enumerate() {
            if let Some(u) = parse(
                Some(&c.name),
                format!("spec.dynamicConfig.configs[{i}].upstream"),
                c.upstream.as_ref(),
                c.http.as_ref(),
                errors,
            ) {
                named.insert(c.name.as_str(), u);
            }
        }
        for (i, rule) in dc.rules.iter().enumerate() {
            let field = format!("spec.dynamicConfig.rules[{i}].condition");
            match CompiledCondition::compile(&rule.condition, &field) {
                Ok(cond) => {
                    dynamic_reads = dynamic_reads.union(cond.reads());
                    let cfgs: Vec<_> = rule
                        .names()
                        .into_iter()
                        .filter_map(|n| named.get(n).cloned())
                        .collect();
                    if !cfgs.is_empty() {
                        dynamic_rules.push((cond, cfgs));
                    }
                }
                Err(es) => errors.extend(es.into_iter().map(|e| err(e.field, e.message))),
            }
        }
    }
    Some(ServiceEntry {
        name: name.to_string(),
        spec: spec.clone(),
        value: values::service_value(r),
        rules,
        default_config,
        dynamic_rules,
        dynamic_reads,
    })
}

/// An absolute `http(s)` URL with a host, or the message saying why not.
fn parse_url(raw: &str) -> Result<url::Url, String> {
    match url::Url::parse(raw) {
        Ok(url) if url.host_str().is_some() => Ok(url),
        Ok(_) => Err(format!("{raw:?} has no host")),
        Err(e) => Err(format!("{raw:?}: {e}")),
    }
}

/// Compiles one config's upstream: endpoints, retry policy, timeouts, with the live counters
/// of `state`. Errors carry the field path below `upstream` (e.g.
/// `.loadBalance.endpoints[1].url`).
fn compile_upstream(
    name: Option<&str>,
    u: &Upstream,
    http: Option<&HttpConfig>,
    state: &ConfigState,
) -> Result<UpstreamConfig, (String, String)> {
    let (endpoints, policy) = match &u.load_balance {
        Some(lb) => {
            let urls: Vec<&str> = lb.endpoints.iter().map(|e| e.url.as_str()).collect();
            let counts = state.in_flight(&urls);
            let mut eps = Vec::new();
            for ((i, e), count) in lb.endpoints.iter().enumerate().zip(counts) {
                let url = parse_url(&e.url)
                    .map_err(|m| (format!(".loadBalance.endpoints[{i}].url"), m))?;
                let mut h = http.cloned();
                if let Some(a) = &e.auth {
                    h.get_or_insert_with(HttpConfig::default).auth = Some(a.clone());
                }
                eps.push(Endpoint::with_count(url, h, count));
            }
            if eps.is_empty() {
                return Err((
                    ".loadBalance.endpoints".into(),
                    "must list at least one endpoint".into(),
                ));
            }
            (eps, lb.policy)
        }
        None => {
            let url = parse_url(&u.url).map_err(|m| (".url".to_string(), m))?;
            let count = state.in_flight(&[u.url.as_str()]).remove(0);
            (
                vec![Endpoint::with_count(url, http.cloned(), count)],
                Default::default(),
            )
        }
    };
    let dur = |v: Option<&String>| v.and_then(|s| parse_duration(s).ok());
    let timeouts = Timeouts {
        connect: dur(u.timeout.as_ref().and_then(|t| t.connect.as_ref())),
        response_header: dur(u.timeout.as_ref().and_then(|t| t.response_header.as_ref())),
    };
    let balancer = Balancer::with_position(endpoints, policy, state.next.clone());
    Ok(UpstreamConfig {
        name: name.map(str::to_string),
        url: balancer.get(0).url.clone(),
        http: http.cloned(),
        balancer,
        retry: RetryPolicy::from_spec(u.retry.as_ref(), state.budget.clone()),
        timeouts,
    })
}

#[cfg(test)]
#[path = "snapshot_upstream_tests.rs"]
mod upstream_tests;
