//! `posternctl policy explain --user U --service S [request options] [-f FILE...] [-o table|json]`.

use super::{load_world, Source};
use crate::commands::writeln_out;
use crate::commands::Context;
use crate::error::{ClientError, Result};
use crate::output::Table;
use postern_common::resources::{AuthMethod, Authentication, Effect, SessionKind};
use postern_policy::testcases::{ChosenConfig, RequestSpec, Scenario, SessionSpec};
use postern_policy::Explanation;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;

/// How `explain` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExplainFormat {
    /// One row per rule, then the decision.
    #[default]
    Table,
    /// `{"rules": [...], "decision": {...}, "config": ...}`.
    Json,
}

/// Arguments of `posternctl policy explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The User making the request.
    #[arg(long)]
    pub user: String,
    /// The Service called.
    #[arg(long)]
    pub service: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Path; a `?query` part is used as the query string unless --query is given.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Query string without `?`, e.g. `a=1&b=2`.
    #[arg(long)]
    pub query: Option<String>,
    /// A request header `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A file with the JSON request body (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// The client IP address.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// When the request is made (RFC 3339, e.g. 2026-11-28T09:30:00Z), for policies using
    /// `now()`; the current time by default.
    #[arg(long, value_name = "TIME")]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// The calling Session's kind (`ctx.session.spec.kind`).
    #[arg(long, value_name = "KIND", value_parser = ["workload", "agent", "browser"], default_value = "workload")]
    pub session_kind: String,
    /// The IdentityProvider the Session signed in with; makes the method `oidc`.
    #[arg(long, value_name = "NAME")]
    pub idp: Option<String>,
    /// The ID token's claims as a JSON object (`ctx.session.spec.authentication.claims`).
    #[arg(long, value_name = "JSON", requires = "idp")]
    pub claims: Option<String>,
    /// Evaluate against exactly these resource files instead of the gateway's resources.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = ExplainFormat::Table)]
    pub output: ExplainFormat,
}

impl ExplainArgs {
    fn session(&self) -> Result<SessionSpec> {
        let kind = match self.session_kind.as_str() {
            "agent" => SessionKind::Agent,
            "browser" => SessionKind::Browser,
            _ => SessionKind::Workload,
        };
        let claims = match &self.claims {
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    return Err(ClientError::Invalid(
                        "--claims must be a JSON object, e.g. '{\"groups\":[\"eng\"]}'".into(),
                    ))
                }
            },
            None => serde_json::json!({}),
        };
        let authentication = self.idp.as_ref().map(|idp| Authentication {
            method: AuthMethod::Oidc,
            identity_provider: Some(idp.clone()),
            claims,
        });
        Ok(SessionSpec {
            kind,
            authentication,
        })
    }

    /// The hypothetical request; `host` is `<service>.<domain>` when the domain is known.
    fn scenario(&self, domain: Option<&str>, stdin: &mut dyn Read) -> Result<Scenario> {
        let mut headers = BTreeMap::new();
        for h in &self.headers {
            let (name, value) = h.split_once(':').ok_or_else(|| {
                ClientError::Invalid(format!("invalid header {h:?}: expected `name: value`"))
            })?;
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let (path, query_in_path) = match self.path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (self.path.clone(), None),
        };
        let (body, size) = match &self.body {
            Some(file) => {
                let bytes = read_body(file, stdin)?;
                let json = serde_json::from_slice(&bytes).ok();
                if json.is_none() {
                    eprintln!("note: {} is not JSON; conditions see an empty bodyMap, as the gateway would", file.display());
                }
                (json, Some(bytes.len() as u64))
            }
            None => (None, None),
        };
        Ok(Scenario {
            user: self.user.clone(),
            service: self.service.clone(),
            request: RequestSpec {
                method: Some(self.method.clone()),
                path: Some(path),
                headers,
                query: self.query.clone().or(query_in_path),
                body,
                size,
                ip: self.ip,
                host: domain.map(|d| format!("{}.{d}", self.service)),
                time: self.time,
            },
            session: self.session()?,
        })
    }
}

fn read_body(file: &PathBuf, stdin: &mut dyn Read) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        stdin
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::io("cannot read", "<stdin>", e))?;
        Ok(bytes)
    } else {
        std::fs::read(file).map_err(|e| ClientError::io("cannot read", file, e))
    }
}

/// Loads the resources, evaluates every rule and prints the explanation.
pub fn run(ctx: &Context, args: &ExplainArgs, out: &mut dyn Write) -> Result<()> {
    let (world, domain) = load_world(ctx, &Source::from_files(&args.files))?;
    let scenario = args.scenario(domain.as_deref(), &mut std::io::stdin().lock())?;
    let prepared = world
        .prepare(&scenario)
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    let explanation = prepared.explain();
    let config = (explanation.decision.effect == Effect::Allow).then(|| prepared.chosen_config());
    match args.output {
        ExplainFormat::Json => {
            let mut v = serde_json::to_value(&explanation).unwrap_or_default();
            v["user"] = scenario.user.clone().into();
            v["service"] = scenario.service.clone().into();
            v["config"] = serde_json::to_value(&config).unwrap_or_default();
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            writeln_out(out, format_args!("{text}"))
        }
        ExplainFormat::Table => out
            .write_all(render_table(&explanation, config.as_ref()).as_bytes())
            .map_err(|e| ClientError::io("cannot write to", "stdout", e)),
    }
}

/// The rule table, the decision line and, when allowed, the config line.
pub fn render_table(e: &Explanation, config: Option<&ChosenConfig>) -> String {
    let mut text = if e.rules.is_empty() {
        "No rule applies to this user and service.\n".to_owned()
    } else {
        Table {
            headers: ["#", "POLICY", "RULE", "EFFECT", "PRIORITY", "MATCHED"]
                .map(String::from)
                .to_vec(),
            rows: e
                .rules
                .iter()
                .map(|r| {
                    vec![
                        r.position.to_string(),
                        r.policy.clone(),
                        r.rule.clone(),
                        r.effect.as_str().to_owned(),
                        r.priority.to_string(),
                        match (r.matched, r.decisive) {
                            (true, true) => "yes  <- decides".to_owned(),
                            (true, false) => "yes".to_owned(),
                            (false, _) => "no".to_owned(),
                        },
                    ]
                })
                .collect(),
        }
        .render()
    };
    for r in e.rules.iter().filter(|r| !r.notes.is_empty()) {
        for note in &r.notes {
            text.push_str(&format!(
                "note: rule #{} not evaluated fully: {note}\n",
                r.position
            ));
        }
    }
    text.push_str(&format!("\nDecision: {}\n", e.decision_text()));
    match config {
        Some(ChosenConfig::Dynamic(name)) => {
            text.push_str(&format!("Config: {name} (dynamicConfig)\n"))
        }
        Some(ChosenConfig::Default) => text.push_str("Config: default (spec.config)\n"),
        Some(ChosenConfig::None) => text.push_str(
            "Config: none (no dynamicConfig rule matched and no spec.config: the gateway would answer 502)\n",
        ),
        None => {}
    }
    text
}
