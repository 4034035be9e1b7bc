//! The `ctx.user`, `ctx.groups`, `ctx.session` and `ctx.service` values, built from
//! resources in one place so that the gateway and `posternctl policy explain|test` give
//! conditions exactly the same `ctx`.

use postern_common::resources::{Resource, SessionInfo};
use std::collections::HashMap;

use crate::CelValue;

/// `ctx.user`: the User resource as JSON (the same form `get -o json` shows).
pub fn user_value(user: &Resource) -> CelValue {
    CelValue::from_json(&user.to_json())
}

/// `ctx.service`: the Service resource as JSON.
pub fn service_value(service: &Resource) -> CelValue {
    CelValue::from_json(&service.to_json())
}

/// `ctx.groups`: the full Group resources named in `group_names` that exist in `groups`
/// (name to resource), in the User's order; missing Groups are skipped.
pub fn groups_value(group_names: &[String], groups: &HashMap<&str, &Resource>) -> CelValue {
    let list = group_names
        .iter()
        .filter_map(|g| groups.get(g.as_str()).map(|r| r.to_json()))
        .collect();
    CelValue::from_json(&serde_json::Value::Array(list))
}

/// `ctx.session`: `{metadata: {name, createdAt}, spec: {type, kind, user, credential,
/// authentication: {method, identityProvider, claims}, expiresAt}}`.
pub fn session_value(info: &SessionInfo) -> CelValue {
    CelValue::from_json(&serde_json::json!({
        "metadata": {"name": info.name, "createdAt": info.created_at},
        "spec": {
            "type": info.session_type,
            "kind": info.kind,
            "user": info.user,
            "credential": info.credential,
            "authentication": {
                "method": info.authentication.method,
                "identityProvider": info.authentication.identity_provider.as_deref().unwrap_or(""),
                "claims": info.authentication.claims,
            },
            "expiresAt": info.expires_at,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_common::resources::{AuthMethod, Authentication, SessionKind, SessionType};

    #[test]
    fn session_has_the_gateway_shape() {
        let v = session_value(&SessionInfo {
            name: "s1".into(),
            user: "alice".into(),
            session_type: SessionType::Clientless,
            kind: SessionKind::Browser,
            credential: String::new(),
            authentication: Authentication {
                method: AuthMethod::Oidc,
                identity_provider: Some("corp".into()),
                claims: serde_json::json!({"groups": ["eng"]}),
            },
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: "2026-01-01T01:00:00Z".into(),
        });
        assert_eq!(v.json()["spec"]["type"], "CLIENTLESS");
        assert_eq!(v.json()["metadata"]["name"], "s1");
        assert_eq!(v.json()["spec"]["expiresAt"], "2026-01-01T01:00:00Z");
        assert_eq!(v.json()["spec"]["kind"], "browser");
        assert_eq!(v.json()["spec"]["authentication"]["method"], "oidc");
        assert_eq!(
            v.json()["spec"]["authentication"]["identityProvider"],
            "corp"
        );
        assert_eq!(
            v.json()["spec"]["authentication"]["claims"]["groups"][0],
            "eng"
        );
    }
}
