//! Which rules apply to whom. A [`Catalog`] compiles every Policy and every `authorization`
//! section of a set of resources once, so that the rules of a request are the Service's, the
//! User's (and its Groups') and the global Policies', looked up rather than recompiled.
//! The gateway builds one per configuration change; `posternctl policy test|explain` builds
//! one from files, so both decide with exactly the same code.

use crate::{CompileError, CompiledPolicy, CompiledRule, RuleSet};
use postern_common::resources::{Authorization, Kind, Resource};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A problem that keeps a set of resources from compiling, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub kind: Kind,
    pub name: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {}: {}",
            self.kind, self.name, self.field, self.message
        )
    }
}

impl BuildError {
    fn at(r: &Resource, e: CompileError) -> Self {
        BuildError {
            kind: r.kind(),
            name: r.name().to_string(),
            field: e.field,
            message: e.message,
        }
    }
}

/// The compiled rules of a set of resources, by who they are attached to.
#[derive(Debug, Default)]
pub struct Catalog {
    policies: HashMap<String, Arc<CompiledPolicy>>,
    services: HashMap<String, Vec<Arc<CompiledRule>>>,
    /// A User's own rules followed by those of each of its Groups.
    users: HashMap<String, Vec<Arc<CompiledRule>>>,
    global: Vec<Arc<CompiledRule>>,
}

impl Catalog {
    /// Compiles everything; problems are collected (all of them, so a user sees every
    /// mistake at once) and the catalog holds whatever did compile.
    pub fn build<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
    ) -> (Catalog, Vec<BuildError>) {
        let resources: Vec<&Resource> = resources.into_iter().collect();
        let mut errors = Vec::new();
        let mut cat = Catalog::default();
        for r in &resources {
            if let Resource::Policy { metadata, spec } = r {
                match CompiledPolicy::compile(&metadata.name, spec, "spec") {
                    Ok(p) => {
                        if spec.global {
                            cat.global.extend(p.active_rules());
                        }
                        cat.policies.insert(metadata.name.clone(), Arc::new(p));
                    }
                    Err(es) => errors.extend(es.into_iter().map(|e| BuildError::at(r, e))),
                }
            }
        }
        let mut groups: HashMap<&str, Vec<Arc<CompiledRule>>> = HashMap::new();
        for r in &resources {
            match r {
                Resource::Group { metadata, spec } => {
                    let rules = cat.attached(r, spec.authorization.as_ref(), &mut errors);
                    groups.insert(&metadata.name, rules);
                }
                Resource::Service { metadata, spec } => {
                    let rules = cat.attached(r, spec.authorization.as_ref(), &mut errors);
                    cat.services.insert(metadata.name.clone(), rules);
                }
                _ => {}
            }
        }
        for r in &resources {
            if let Resource::User { metadata, spec } = r {
                let mut rules = cat.attached(r, spec.authorization.as_ref(), &mut errors);
                for g in &spec.groups {
                    rules.extend(groups.get(g.as_str()).into_iter().flatten().cloned());
                }
                cat.users.insert(metadata.name.clone(), rules);
            }
        }
        (cat, errors)
    }

    /// Rules from an `authorization` section: inline policies, then referenced Policies.
    fn attached(
        &self,
        r: &Resource,
        auth: Option<&Authorization>,
        errors: &mut Vec<BuildError>,
    ) -> Vec<Arc<CompiledRule>> {
        let mut rules = Vec::new();
        let Some(auth) = auth else { return rules };
        for (i, inline) in auth.inline_policies.iter().enumerate() {
            let name = match &inline.name {
                Some(n) => format!("{}/{}", r.name(), n),
                None => format!("{}/inline-{i}", r.name()),
            };
            let field = format!("spec.authorization.inlinePolicies[{i}].spec");
            if inline.spec.global {
                errors.push(BuildError {
                    kind: r.kind(),
                    name: r.name().to_string(),
                    field: format!("{field}.global"),
                    message: "only a Policy resource can be global; move these rules to a `kind: Policy` with `spec.global: true`".into(),
                });
            }
            match CompiledPolicy::compile(&name, &inline.spec, &field) {
                Ok(p) => rules.extend(p.active_rules()),
                Err(es) => errors.extend(es.into_iter().map(|e| BuildError::at(r, e))),
            }
        }
        for (i, name) in auth.policies.iter().enumerate() {
            match self.policies.get(name) {
                Some(p) => rules.extend(p.active_rules()),
                None => errors.push(BuildError {
                    kind: r.kind(),
                    name: r.name().to_string(),
                    field: format!("spec.authorization.policies[{i}]"),
                    message: format!(
                        "Policy {name:?} does not exist; apply it first or in the same command"
                    ),
                }),
            }
        }
        rules
    }

    /// A compiled Policy resource by name.
    pub fn policy(&self, name: &str) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(name)
    }

    /// The rules attached to Service `name` (empty when it has none or does not exist).
    pub fn service_rules(&self, name: &str) -> &[Arc<CompiledRule>] {
        self.services.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The rules of User `name` and of its Groups.
    pub fn user_rules(&self, name: &str) -> &[Arc<CompiledRule>] {
        self.users.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The rules of every global Policy, which apply to every request.
    pub fn global_rules(&self) -> &[Arc<CompiledRule>] {
        &self.global
    }

    /// Every rule that applies when `user_rules` call a Service with `service_rules`, in
    /// decision order; a rule reached twice (a global Policy also referenced by the Service)
    /// counts once.
    pub fn combine(
        service_rules: &[Arc<CompiledRule>],
        user_rules: &[Arc<CompiledRule>],
        global_rules: &[Arc<CompiledRule>],
    ) -> RuleSet {
        let mut seen: Vec<*const CompiledRule> = Vec::new();
        let all = service_rules
            .iter()
            .chain(user_rules)
            .chain(global_rules)
            .filter(|r| {
                let p = Arc::as_ptr(r);
                if seen.contains(&p) {
                    false
                } else {
                    seen.push(p);
                    true
                }
            })
            .cloned()
            .collect::<Vec<_>>();
        RuleSet::new(all)
    }

    /// The rule set of a request by User `user` to Service `service`.
    pub fn rule_set(&self, user: &str, service: &str) -> RuleSet {
        Catalog::combine(
            self.service_rules(service),
            self.user_rules(user),
            &self.global,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_common::resources::{parse_documents, Effect};

    fn catalog(yaml: &str) -> (Catalog, Vec<BuildError>) {
        let docs = parse_documents("t.yaml", yaml).unwrap();
        let resources: Vec<Resource> = docs.into_iter().map(|d| d.resource).collect();
        Catalog::build(&resources)
    }

    const YAML: &str = "kind: Policy
metadata: {name: everywhere}
spec:
  global: true
  rules:
    - {name: g, effect: DENY, priority: -2, condition: {match: 'ctx.request.http.method == \"DELETE\"'}}
---
kind: Policy
metadata: {name: shared}
spec:
  rules:
    - {name: s, effect: ALLOW, condition: {matchAny: true}}
---
kind: Group
metadata: {name: ops}
spec:
  authorization:
    policies: [shared]
---
kind: User
metadata: {name: bob}
spec:
  groups: [ops, missing-group]
---
kind: Service
metadata: {name: api}
spec:
  config: {upstream: {url: 'http://x'}}
  authorization:
    policies: [everywhere]
";

    #[test]
    fn rules_from_service_user_groups_and_global_once_each() {
        let (cat, errors) = catalog(YAML);
        assert!(errors.is_empty(), "{errors:?}");
        let set = cat.rule_set("bob", "api");
        let names: Vec<_> = set.rules().iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            names,
            ["g", "s"],
            "global rule counted once although also referenced"
        );
        assert_eq!(set.rules()[0].effect, Effect::Deny);
        assert_eq!(
            cat.rule_set("nobody", "none").rules().len(),
            1,
            "global rules apply to all"
        );
    }

    #[test]
    fn missing_policy_and_inline_global_are_errors() {
        let (_, errors) = catalog(
            "kind: Service\nmetadata: {name: a}\nspec:\n  config: {upstream: {url: 'http://x'}}\n  authorization:\n    policies: [nope]\n    inlinePolicies:\n      - spec:\n          global: true\n          rules: [{effect: ALLOW, condition: {matchAny: true}}]\n",
        );
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.authorization.policies[0]"),
            "{errors:?}"
        );
        assert!(
            fields.contains(&"spec.authorization.inlinePolicies[0].spec.global"),
            "{errors:?}"
        );
    }

    #[test]
    fn disabled_policy_contributes_nothing() {
        let yaml = YAML.replace("  global: true\n", "  global: true\n  isDisabled: true\n");
        let (cat, errors) = catalog(&yaml);
        assert!(errors.is_empty());
        assert!(cat.global_rules().is_empty());
        assert_eq!(cat.rule_set("bob", "api").rules().len(), 1);
    }
}
