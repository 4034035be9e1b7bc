//! Multi-document YAML (or JSON) into typed resources, with errors that name the file, the
//! line and the field path, and suggest the field the user probably meant.

use super::{
    GroupSpec, IdentityProviderSpec, Kind, Metadata, PolicySpec, Resource, ServiceSpec, UserSpec,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fmt;

/// A resource together with where it came from, so later checks (CEL compile errors,
/// references) can point at the file and line too.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDocument {
    pub resource: Resource,
    pub file: String,
    /// 1-based line of the document's first line in the file.
    pub line: usize,
    /// The document's text, to find the line of a field named by a later check.
    pub text: String,
}

impl SourceDocument {
    /// `file:line (Kind/name)`, the prefix of every message about this document.
    pub fn location(&self) -> String {
        self.location_of("")
    }

    /// Like [`location`](Self::location), with the line of `field` when it can be found.
    pub fn location_of(&self, field: &str) -> String {
        let line = super::locate::locate_field(&self.text, field)
            .map(|l| self.line + l)
            .unwrap_or(self.line);
        format!(
            "{}:{} ({}/{})",
            self.file,
            line,
            self.resource.kind(),
            self.resource.name()
        )
    }
}

/// Why a file could not be read as resources. Its `Display` is the whole message a user sees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ParseError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the offending field, such as `spec.config.upstrem`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Deserialize)]
struct KindOnly {
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc<S> {
    #[allow(dead_code)]
    kind: String,
    #[serde(default, rename = "apiVersion")]
    #[allow(dead_code)]
    api_version: Option<String>,
    metadata: Metadata,
    spec: S,
    /// Server-set (e.g. an IdentityProvider's redirect URI); accepted so `get -o yaml`
    /// output applies again, and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocOptionalSpec<S: Default> {
    #[allow(dead_code)]
    kind: String,
    #[serde(default, rename = "apiVersion")]
    #[allow(dead_code)]
    api_version: Option<String>,
    metadata: Metadata,
    #[serde(default)]
    spec: S,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

/// Splits `text` into its YAML documents, each with its 1-based starting line.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            if let Some(rest) = line.strip_prefix("--- ") {
                current.push_str(rest);
                current.push('\n');
                start = i + 1;
            }
            continue;
        }
        if line.trim_end() == "..." {
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Parses every document of a YAML (or JSON) file. Any error stops the whole file:
/// nothing of a file with one bad document is applied.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<SourceDocument>, ParseError> {
    let mut out = Vec::new();
    for (start, doc) in split_documents(text) {
        let err = |line: Option<usize>,
                   column: Option<usize>,
                   field: Option<String>,
                   message: String| ParseError {
            file: file.to_string(),
            line,
            column,
            field,
            message,
        };
        let head: KindOnly = serde_yaml::from_str(&doc).map_err(|e| {
            let loc = e.location();
            err(
                loc.as_ref().map(|l| start + l.line() - 1).or(Some(start)),
                loc.as_ref().map(|l| l.column()),
                None,
                format!("not valid YAML: {}", strip_location(&e.to_string())),
            )
        })?;
        let kind_name = head.kind.ok_or_else(|| {
            err(
                Some(start),
                None,
                Some("kind".into()),
                "missing; expected one of Service, User, Group, Policy, IdentityProvider".into(),
            )
        })?;
        let kind = Kind::from_user_input(&kind_name)
            .filter(|k| k.is_declarative() && k.as_str() == kind_name)
            .ok_or_else(|| {
                err(
                    Some(start),
                    None,
                    Some("kind".into()),
                    format!(
                        "unknown kind {kind_name:?}; expected one of Service, User, Group, Policy, IdentityProvider{}",
                        match kind_name.as_str() {
                            "Secret" => " (create secrets with `posternctl create secret NAME`)",
                            "Credential" =>
                                " (create credentials with `posternctl create credential`)",
                            _ => "",
                        }
                    ),
                )
            })?;
        let resource = match kind {
            Kind::Service => typed::<Doc<ServiceSpec>>(&doc).map(|d| Resource::Service {
                metadata: d.metadata,
                spec: d.spec,
            }),
            Kind::Policy => typed::<Doc<PolicySpec>>(&doc).map(|d| Resource::Policy {
                metadata: d.metadata,
                spec: d.spec,
            }),
            Kind::User => typed::<DocOptionalSpec<UserSpec>>(&doc).map(|d| Resource::User {
                metadata: d.metadata,
                spec: d.spec,
            }),
            Kind::Group => typed::<DocOptionalSpec<GroupSpec>>(&doc).map(|d| Resource::Group {
                metadata: d.metadata,
                spec: d.spec,
            }),
            Kind::IdentityProvider => {
                typed::<Doc<IdentityProviderSpec>>(&doc).map(|d| Resource::IdentityProvider {
                    metadata: d.metadata,
                    spec: d.spec,
                })
            }
            _ => unreachable!("filtered to declarative kinds above"),
        }
        .map_err(|(path, e)| {
            let loc = e.location();
            let mut message = strip_location(&e.to_string());
            if let Some(rest) = e
                .to_string()
                .split_once(": ")
                .filter(|(p, _)| !p.contains(' '))
                .map(|(_, rest)| strip_location(rest))
            {
                message = rest;
            }
            let message = match suggest_field(&message) {
                Some(s) => format!("{message}; did you mean `{s}`?"),
                None => message,
            };
            err(
                loc.as_ref().map(|l| start + l.line() - 1).or(Some(start)),
                loc.as_ref().map(|l| l.column()),
                path,
                message,
            )
        })?;
        out.push(SourceDocument {
            resource,
            file: file.to_string(),
            line: start,
            text: doc,
        });
    }
    Ok(out)
}

fn typed<T: DeserializeOwned>(doc: &str) -> Result<T, (Option<String>, serde_yaml::Error)> {
    let de = serde_yaml::Deserializer::from_str(doc);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = (path != "." && !path.is_empty()).then_some(path);
        (path, e.into_inner())
    })
}

/// serde_yaml appends " at line L column C"; we print our own, file-relative, location.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// From serde's "unknown field `upstrem`, expected one of `url`, `http`" picks the closest
/// expected name.
fn suggest_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let unknown_lower = unknown.to_ascii_lowercase();
    expected
        .into_iter()
        .map(|cand| {
            (
                edit_distance(&unknown_lower, &cand.to_ascii_lowercase()),
                cand,
            )
        })
        .filter(|(d, cand)| *d <= 2.max(cand.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_file_keeps_lines() {
        let text = "# c\nkind: Group\nmetadata:\n  name: dev\n---\nkind: User\nmetadata:\n  name: a\nspec:\n  groups: [dev]\n";
        let docs = parse_documents("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].resource.kind(), Kind::Group);
        assert_eq!(docs[1].line, 6);
        assert_eq!(docs[1].location(), "f.yaml:6 (User/a)");
    }

    #[test]
    fn unknown_field_names_path_line_and_suggestion() {
        let text = "kind: Group\nmetadata:\n  name: g\n---\nkind: Service\nmetadata:\n  name: s\nspec:\n  config:\n    upstrem:\n      url: http://x\n";
        let e = parse_documents("svc.yaml", text).unwrap_err();
        assert_eq!(e.file, "svc.yaml");
        assert_eq!(e.line, Some(10), "{e}");
        assert_eq!(e.field.as_deref(), Some("spec.config.upstrem"), "{e}");
        assert!(e.to_string().contains("did you mean `upstream`?"), "{e}");
    }

    #[test]
    fn bad_yaml_and_bad_kind_are_errors() {
        let e = parse_documents("a.yaml", "kind: Service\nmetadata: [\n").unwrap_err();
        assert!(e.message.contains("not valid YAML"), "{e}");
        let e = parse_documents("a.yaml", "kind: Servise\nmetadata:\n  name: x\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("kind"));
        let e = parse_documents("a.yaml", "metadata:\n  name: x\n").unwrap_err();
        assert!(e.message.contains("missing"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = "kind: Service\nmetadata:\n  name: s\nspec:\n  isPublic: maybe\n";
        let e = parse_documents("a.yaml", text).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.isPublic"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn seed_examples_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples");
        let Ok(entries) = std::fs::read_dir(dir) else {
            eprintln!("skipping: {dir} not present");
            return;
        };
        let mut n = 0;
        for e in entries {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let docs =
                parse_documents(&p.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
            n += docs.len();
        }
        assert!(n >= 5);
    }
}
