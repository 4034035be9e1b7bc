//! Checks a resource can pass without gateway state: names, exactly-one conditions,
//! priorities, upstream URLs, config references. Each problem names its field path.

use super::limits::check_limits;
use super::{Authorization, Condition, PolicySpec, Resource, ServiceConfig, ServiceMode};
use std::fmt;

/// One problem with a resource, at a field path like `spec.dynamicConfig.rules[1].configName`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Priorities run from -4 (first) to 4 (last), as in Octelium.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -4..=4;

/// Is `name` usable as a resource name (and, for Services, as a DNS label)?
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{name:?} is not a valid name: use lowercase letters, digits and '-', not at either end"
        ));
    }
    Ok(())
}

/// All structural problems of `r`; empty when it is fine.
pub fn validate(r: &Resource) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Err(m) = check_name(r.name()) {
        errs.push(FieldError {
            field: "metadata.name".into(),
            message: m,
        });
    }
    let mut push = |field: String, message: String| errs.push(FieldError { field, message });
    match r {
        Resource::Service { spec, .. } => {
            match (&spec.config, &spec.dynamic_config) {
                (None, None) => push(
                    "spec.config".into(),
                    "a Service needs config.upstream.url or dynamicConfig.configs".into(),
                ),
                (Some(c), _) => check_config("spec.config", c, spec.mode, &mut push),
                _ => {}
            }
            if let Some(dc) = &spec.dynamic_config {
                let mut names = std::collections::HashSet::new();
                for (i, c) in dc.configs.iter().enumerate() {
                    let at = format!("spec.dynamicConfig.configs[{i}]");
                    if c.name.is_empty() {
                        push(format!("{at}.name"), "must not be empty".into());
                    } else if !names.insert(c.name.as_str()) {
                        push(format!("{at}.name"), format!("{:?} is used twice", c.name));
                    }
                    check_config(&at, &c.config(), spec.mode, &mut push);
                }
                for (i, rule) in dc.rules.iter().enumerate() {
                    let at = format!("spec.dynamicConfig.rules[{i}]");
                    check_condition(&format!("{at}.condition"), &rule.condition, &mut push);
                    check_rule_names(&at, rule, &names, &mut push);
                }
                if spec.config.is_none() && dc.configs.is_empty() {
                    push(
                        "spec.dynamicConfig.configs".into(),
                        "must list at least one config when spec.config is absent".into(),
                    );
                }
            }
            if let Some(a) = &spec.authorization {
                check_authorization("spec.authorization", a, &mut push);
            }
            check_limits("spec.limits", &spec.limits, &mut push);
        }
        Resource::User { spec, .. } => {
            for (i, g) in spec.groups.iter().enumerate() {
                if let Err(m) = check_name(g) {
                    push(format!("spec.groups[{i}]"), m);
                }
            }
            if let Some(a) = &spec.authorization {
                check_authorization("spec.authorization", a, &mut push);
            }
            if let Some(email) = &spec.email {
                if !is_plausible_email(email) {
                    push(
                        "spec.email".into(),
                        format!("{email:?} is not an email address (name@domain)"),
                    );
                }
            }
            check_limits("spec.limits", &spec.limits, &mut push);
        }
        Resource::Group { spec, .. } => {
            if let Some(a) = &spec.authorization {
                check_authorization("spec.authorization", a, &mut push);
            }
            check_limits("spec.limits", &spec.limits, &mut push);
        }
        Resource::Policy { spec, .. } => check_policy("spec", spec, &mut push),
        Resource::IdentityProvider { spec, .. } => {
            if let Err(m) = super::check_issuer_url(&spec.oidc.issuer_url) {
                push("spec.oidc.issuerURL".into(), m);
            }
            if spec.oidc.client_id.trim().is_empty() {
                push(
                    "spec.oidc.clientID".into(),
                    "must not be empty; copy the client ID the provider gave".into(),
                );
            }
            if let Some(s) = &spec.oidc.client_secret {
                if let Err(m) = check_name(&s.from_secret) {
                    push("spec.oidc.clientSecret.fromSecret".into(), m);
                }
            }
            for (i, scope) in spec.oidc.scopes.iter().enumerate() {
                if scope.is_empty() || scope.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\') {
                    push(
                        format!("spec.oidc.scopes[{i}]"),
                        format!("{scope:?} is not a scope token"),
                    );
                }
            }
        }
    }
    errs
}

/// `name@domain` with no spaces or control characters: enough to catch a typo; the
/// IdentityProvider (or the ACME CA) is what proves an address.
pub fn is_plausible_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && s.bytes().all(|b| b > b' ' && b != 0x7f)
        }
        None => false,
    }
}

fn check_config(
    at: &str,
    c: &ServiceConfig,
    mode: ServiceMode,
    push: &mut impl FnMut(String, String),
) {
    match &c.upstream {
        None => push(format!("{at}.upstream.url"), "is required".into()),
        Some(u) if u.load_balance.is_some() || u.url.is_empty() => {
            if u.load_balance.is_none() {
                push(
                    format!("{at}.upstream.url"),
                    "is required (or set upstream.loadBalance)".into(),
                );
            }
            super::service::check_upstream(&format!("{at}.upstream"), u, push);
        }
        Some(u) => {
            super::service::check_upstream(&format!("{at}.upstream"), u, push);
            let allowed: &[&str] = match mode {
                ServiceMode::Http => &["http://", "https://"],
                ServiceMode::Tcp => &["tcp://"],
            };
            let host_follows = allowed
                .iter()
                .find_map(|p| u.url.strip_prefix(p))
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !host_follows {
                push(
                    format!("{at}.upstream.url"),
                    format!(
                        "{:?} is not a valid upstream URL; expected one starting with {}",
                        u.url,
                        allowed.join(" or ")
                    ),
                );
            }
        }
    }
    let Some(http) = &c.http else { return };
    if let Some(p) = &http.path {
        for (name, v) in [
            ("addPrefix", &p.add_prefix),
            ("removePrefix", &p.remove_prefix),
        ] {
            if let Some(v) = v {
                if !v.starts_with('/') {
                    push(
                        format!("{at}.http.path.{name}"),
                        format!("{v:?} must start with '/'"),
                    );
                }
            }
        }
    }
    if let Some(h) = &http.header {
        for (list, kvs) in [
            ("addRequestHeaders", &h.add_request_headers),
            ("addResponseHeaders", &h.add_response_headers),
        ] {
            for (i, kv) in kvs.iter().enumerate() {
                if !is_header_name(&kv.key) {
                    push(
                        format!("{at}.http.header.{list}[{i}].key"),
                        format!("{:?} is not a valid header name", kv.key),
                    );
                }
                if kv.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    push(
                        format!("{at}.http.header.{list}[{i}].value"),
                        "must not contain CR, LF or NUL".into(),
                    );
                }
            }
        }
        for (list, names) in [
            ("removeRequestHeaders", &h.remove_request_headers),
            ("removeResponseHeaders", &h.remove_response_headers),
        ] {
            for (i, n) in names.iter().enumerate() {
                if !is_header_name(n) {
                    push(
                        format!("{at}.http.header.{list}[{i}]"),
                        format!("{n:?} is not a valid header name"),
                    );
                }
            }
        }
    }
    if let Some(auth) = &http.auth {
        super::service::check_auth(&format!("{at}.http.auth"), auth, push);
        if let Some(c) = &auth.custom {
            if !is_header_name(&c.header) {
                push(
                    format!("{at}.http.auth.custom.header"),
                    format!("{:?} is not a valid header name", c.header),
                );
            }
        }
    }
}

/// `configName` or `configNames` (not both, at least one), each naming a config.
fn check_rule_names(
    at: &str,
    rule: &super::DynamicRule,
    names: &std::collections::HashSet<&str>,
    push: &mut impl FnMut(String, String),
) {
    match (rule.config_name.is_empty(), rule.config_names.is_empty()) {
        (true, true) => push(
            format!("{at}.configName"),
            "is required (or list configNames)".into(),
        ),
        (false, false) => push(
            format!("{at}.configNames"),
            "set either configName or configNames, not both".into(),
        ),
        _ => {}
    }
    let mut seen = std::collections::HashSet::new();
    for (field, n) in std::iter::once(("configName".to_string(), &rule.config_name))
        .filter(|(_, n)| !n.is_empty())
        .chain(
            rule.config_names
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("configNames[{i}]"), n)),
        )
    {
        if !names.contains(n.as_str()) {
            push(
                format!("{at}.{field}"),
                format!("no config named {n:?} in spec.dynamicConfig.configs"),
            );
        } else if !seen.insert(n.as_str()) {
            push(format!("{at}.{field}"), format!("{n:?} is listed twice"));
        }
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_authorization(at: &str, a: &Authorization, push: &mut impl FnMut(String, String)) {
    for (i, p) in a.inline_policies.iter().enumerate() {
        check_policy(&format!("{at}.inlinePolicies[{i}].spec"), &p.spec, push);
    }
    for (i, name) in a.policies.iter().enumerate() {
        if let Err(m) = check_name(name) {
            push(format!("{at}.policies[{i}]"), m);
        }
    }
}

fn check_policy(at: &str, p: &PolicySpec, push: &mut impl FnMut(String, String)) {
    for (i, rule) in p.rules.iter().enumerate() {
        let at = format!("{at}.rules[{i}]");
        if !PRIORITY_RANGE.contains(&rule.priority) {
            push(
                format!("{at}.priority"),
                format!("{} is out of range; use -4 to 4", rule.priority),
            );
        }
        check_condition(&format!("{at}.condition"), &rule.condition, push);
    }
}

/// Exactly one field per condition, recursively; `matchAny` must be `true`.
pub fn check_condition(at: &str, c: &Condition, push: &mut impl FnMut(String, String)) {
    let set = c.set_fields();
    match set.len() {
        0 => push(
            at.to_string(),
            "empty condition; set one of match, matchAny, all, any, none, not, opa".into(),
        ),
        1 => {}
        _ => push(
            at.to_string(),
            format!("set exactly one of {}; found {}", set.join(", "), set.len()),
        ),
    }
    if c.match_any == Some(false) {
        push(
            format!("{at}.matchAny"),
            "only `matchAny: true` is meaningful; remove the rule instead".into(),
        );
    }
    for (name, list) in [("all", &c.all), ("any", &c.any), ("none", &c.none)] {
        if let Some(list) = list {
            if list.of.is_empty() {
                push(format!("{at}.{name}.of"), "must not be empty".into());
            }
            for (i, sub) in list.of.iter().enumerate() {
                check_condition(&format!("{at}.{name}.of[{i}]"), sub, push);
            }
        }
    }
    for (name, expr) in [("match", &c.match_), ("not", &c.not)] {
        if expr.as_deref().is_some_and(|e| e.trim().is_empty()) {
            push(format!("{at}.{name}"), "empty expression".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_documents;
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let docs = parse_documents("t.yaml", yaml).unwrap();
        validate(&docs[0].resource)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn config_reference_and_conditions() {
        let e = errors(
            "kind: Service\nmetadata: {name: s}\nspec:\n  dynamicConfig:\n    configs:\n      - name: a\n        upstream: {url: 'http://x'}\n    rules:\n      - condition: {match: 'true', matchAny: true}\n        configName: b\n",
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("spec.dynamicConfig.rules[0].configName")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("spec.dynamicConfig.rules[0].condition: set exactly one")),
            "{e:?}"
        );
    }

    #[test]
    fn names_priorities_and_urls() {
        let e = errors("kind: Service\nmetadata: {name: Bad_Name}\nspec:\n  config:\n    upstream: {url: 'ftp://x'}\n  authorization:\n    inlinePolicies:\n      - spec:\n          rules:\n            - effect: ALLOW\n              priority: 9\n              condition: {matchAny: true}\n");
        assert!(e.iter().any(|m| m.starts_with("metadata.name")), "{e:?}");
        assert!(
            e.iter().any(|m| m.starts_with("spec.config.upstream.url")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m
                    .starts_with("spec.authorization.inlinePolicies[0].spec.rules[0].priority")),
            "{e:?}"
        );
    }

    #[test]
    fn good_service_has_no_errors() {
        let e = errors("kind: Service\nmetadata: {name: ok}\nspec:\n  config:\n    upstream: {url: 'https://api.example.com'}\n    http:\n      header:\n        addRequestHeaders: [{key: X-A, value: b}]\n");
        assert!(e.is_empty(), "{e:?}");
    }
}
