//! Rendering of `get` results: aligned tables, YAML documents and JSON.

use postern_common::resources::Kind;
use serde_json::Value;

/// The `-o` choices of `posternctl get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// YAML documents (`---`-separated) that `posternctl apply` accepts again.
    Yaml,
    /// JSON: one object for a named item, an array otherwise.
    Json,
}

/// A table with a header row, rendered with columns padded to the widest cell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column titles, in upper case by convention.
    pub headers: Vec<String>,
    /// One entry per row, as many cells as headers.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Renders the table; the last column is not padded, so lines carry no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 < columns {
                    line.push_str(&format!("{cell:<width$}", width = widths[i] + 3));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The table `get` shows for `kind`, built leniently from the server's JSON: a missing field
/// shows as `-` rather than failing.
pub fn table_for(kind: Kind, items: &[Value]) -> Table {
    let headers: &[&str] = match kind {
        Kind::Service => &["NAME", "PUBLIC", "MODE", "UPSTREAM/CONFIGS", "TLS"],
        Kind::User => &["NAME", "TYPE", "GROUPS", "EMAIL"],
        Kind::Group => &["NAME", "POLICIES"],
        Kind::Policy => &["NAME", "RULES", "DISABLED"],
        Kind::IdentityProvider => &["NAME", "DISPLAY NAME", "ISSUER", "REDIRECT URI"],
        Kind::Secret => &["NAME", "CREATED"],
        Kind::Credential => &["NAME", "USER", "TYPE", "CLIENT ID", "EXPIRES"],
        Kind::Session => &["NAME", "USER", "TYPE", "EXPIRES", "KIND", "SIGNED IN WITH"],
    };
    let rows = items.iter().map(|item| row_for(kind, item)).collect();
    Table {
        headers: headers.iter().map(|h| h.to_string()).collect(),
        rows,
    }
}

fn row_for(kind: Kind, item: &Value) -> Vec<String> {
    let s = |ptr: &str| text(item.pointer(ptr));
    match kind {
        Kind::Service => vec![
            s("/metadata/name"),
            item.pointer("/spec/isPublic")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
            item.pointer("/spec/mode")
                .and_then(Value::as_str)
                .unwrap_or("HTTP")
                .to_string(),
            upstream(item),
            s("/status/tls/source"),
        ],
        Kind::User => vec![
            s("/metadata/name"),
            item.pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("HUMAN")
                .to_string(),
            join(item.pointer("/spec/groups")),
            s("/spec/email"),
        ],
        Kind::Group => vec![s("/metadata/name"), policies(item)],
        Kind::Policy => vec![
            s("/metadata/name"),
            item.pointer("/spec/rules")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                .to_string(),
            item.pointer("/spec/isDisabled")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ],
        Kind::IdentityProvider => vec![
            s("/metadata/name"),
            item.pointer("/spec/displayName")
                .or_else(|| item.pointer("/metadata/name"))
                .map_or("-".to_string(), |v| text(Some(v))),
            s("/spec/oidc/issuerURL"),
            s("/status/redirectURI"),
        ],
        Kind::Secret => vec![s("/name"), s("/createdAt")],
        Kind::Credential => vec![
            s("/name"),
            s("/user"),
            s("/type"),
            s("/clientId"),
            item.get("expiresAt")
                .filter(|v| !v.is_null())
                .map_or("never".to_string(), |v| text(Some(v))),
        ],
        Kind::Session => vec![
            s("/name"),
            s("/user"),
            s("/type"),
            s("/expiresAt"),
            s("/kind"),
            signed_in_with(item),
        ],
    }
}

/// `oidc:corp-sso`, `oauth2:ci-bot` or `auth-token:laptop`: the method and what it used.
fn signed_in_with(item: &Value) -> String {
    let method = item
        .pointer("/authentication/method")
        .and_then(Value::as_str)
        .unwrap_or("-");
    let by = item
        .pointer("/authentication/identityProvider")
        .or_else(|| item.get("credential"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if by.is_empty() {
        method.to_string()
    } else {
        format!("{method}:{by}")
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) if s.is_empty() => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn join(v: Option<&Value>) -> String {
    let names: Vec<&str> = v
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

/// `config.upstream.url`, or `N configs: a,b` for a `dynamicConfig`.
fn upstream(item: &Value) -> String {
    if let Some(url) = item
        .pointer("/spec/config/upstream/url")
        .and_then(Value::as_str)
    {
        return url.to_string();
    }
    let configs: Vec<&str> = item
        .pointer("/spec/dynamicConfig/configs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.get("name")?.as_str()).collect())
        .unwrap_or_default();
    match configs.len() {
        0 => "-".to_string(),
        1 => format!("1 config: {}", configs[0]),
        n => format!("{n} configs: {}", configs.join(",")),
    }
}

/// Referenced policy names, plus a count of inline policies.
fn policies(item: &Value) -> String {
    let named = join(item.pointer("/spec/authorization/policies"));
    let inline = item
        .pointer("/spec/authorization/inlinePolicies")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    match (named.as_str(), inline) {
        (_, 0) => named,
        ("-", n) => format!("{n} inline"),
        (names, n) => format!("{names} (+{n} inline)"),
    }
}

/// YAML for `items`: one document for a single item, `---`-separated documents otherwise,
/// so the output can be fed to `posternctl apply`.
pub fn to_yaml(items: &[Value]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(item).expect("JSON values always serialize to YAML"));
    }
    out
}

/// Pretty JSON with a trailing newline.
pub fn to_json(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_common::resources::parse_documents;
    use serde_json::json;

    fn service(name: &str, url: &str, public: bool) -> Value {
        json!({"kind": "Service", "metadata": {"name": name, "createdAt": "2026-01-01T00:00:00Z"},
               "spec": {"mode": "HTTP", "isPublic": public, "config": {"upstream": {"url": url}}}})
    }

    #[test]
    fn table_is_aligned_without_trailing_spaces() {
        let t = Table {
            headers: vec!["NAME".into(), "USER".into(), "TYPE".into()],
            rows: vec![
                vec!["a-long-name".into(), "bob".into(), "oauth2".into()],
                vec!["x".into(), "alice".into(), "-".into()],
            ],
        };
        assert_eq!(
            t.render(),
            "NAME          USER    TYPE\n\
             a-long-name   bob     oauth2\n\
             x             alice   -\n"
        );
    }

    #[test]
    fn service_table_columns() {
        let dynamic = json!({"kind": "Service", "metadata": {"name": "llm"},
            "spec": {"mode": "HTTP", "dynamicConfig": {"configs": [{"name": "a"}, {"name": "b"}], "rules": []}}});
        let t = table_for(
            Kind::Service,
            &[
                {
                    let mut gemini =
                        service("gemini", "https://generativelanguage.googleapis.com", true);
                    gemini["status"] = json!({"tls": {"source": "acme"}});
                    gemini
                },
                dynamic,
            ],
        );
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME     PUBLIC   MODE   UPSTREAM/CONFIGS                            TLS"
        );
        assert_eq!(
            lines[1],
            "gemini   true     HTTP   https://generativelanguage.googleapis.com   acme"
        );
        assert_eq!(
            lines[2],
            "llm      false    HTTP   2 configs: a,b                              -"
        );
    }

    #[test]
    fn info_tables() {
        let creds = [
            json!({"name": "ci", "user": "bot", "type": "oauth2", "clientId": "cid",
                            "createdAt": "2026-01-01T00:00:00Z"}),
        ];
        let out = table_for(Kind::Credential, &creds).render();
        assert!(
            out.starts_with("NAME   USER   TYPE     CLIENT ID   EXPIRES\n"),
            "{out}"
        );
        assert!(
            out.contains("ci     bot    oauth2   cid         never"),
            "{out}"
        );
        let users = [json!({"kind": "User", "metadata": {"name": "alice"},
                            "spec": {"type": "HUMAN", "groups": ["admins", "dev"]}})];
        let out = table_for(Kind::User, &users).render();
        assert!(out.contains("alice   HUMAN   admins,dev"), "{out}");
    }

    #[test]
    fn yaml_output_applies_again() {
        let items = vec![
            service("gemini", "https://example.org", true),
            json!({"kind": "User", "metadata": {"name": "alice"}, "spec": {"type": "HUMAN", "groups": ["admins"]}}),
            json!({"kind": "Group", "metadata": {"name": "admins"}, "spec": {}}),
            json!({"kind": "Policy", "metadata": {"name": "allow-all"},
                   "spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": true}}]}}),
        ];
        let yaml = to_yaml(&items);
        let docs = parse_documents("get.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let kinds: Vec<_> = docs.iter().map(|d| d.resource.kind()).collect();
        assert_eq!(
            kinds,
            [Kind::Service, Kind::User, Kind::Group, Kind::Policy]
        );
        assert_eq!(docs[0].resource.name(), "gemini");
        // Re-serialising the parsed resources gives the same JSON back.
        for (doc, item) in docs.iter().zip(&items) {
            assert_eq!(&doc.resource.to_json(), item);
        }
        // A single item is a single document.
        let one = to_yaml(&items[..1]);
        assert!(!one.contains("---"));
        assert_eq!(parse_documents("one.yaml", &one).unwrap().len(), 1);
    }
}
