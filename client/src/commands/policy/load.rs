//! Where the resources come from: `-f` files (offline) or the gateway's control API.

use crate::commands::apply::read_inputs;
use crate::commands::Context;
use crate::error::{ClientError, Result};
use postern_common::api::ListResponse;
use postern_common::resources::{parse_documents, Kind, Resource, SourceDocument};
use postern_policy::testcases::{PolicyWorld, ScenarioError};
use postern_policy::BuildError;
use std::path::PathBuf;

/// The resources a policy command evaluates against.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// Exactly these files (`-` is standard input); no gateway is contacted.
    Files(&'a [PathBuf]),
    /// The gateway of the saved session (`postern login`).
    Gateway,
}

impl<'a> Source<'a> {
    /// Files when any `-f` was given, the gateway otherwise.
    pub fn from_files(files: &'a [PathBuf]) -> Self {
        if files.is_empty() {
            Source::Gateway
        } else {
            Source::Files(files)
        }
    }
}

/// Loads and compiles the resources; also returns the gateway's domain when they came from
/// it (requests then have the host `<service>.<domain>`, as the gateway sees them).
pub fn load_world(ctx: &Context, source: &Source<'_>) -> Result<(PolicyWorld, Option<String>)> {
    let (docs, domain): (Loaded, _) = match source {
        Source::Files(files) => (Ok(from_files(files)?), None),
        Source::Gateway => {
            let (client, _) = ctx.authenticated()?;
            let mut resources = Vec::new();
            for kind in [Kind::Service, Kind::User, Kind::Group, Kind::Policy] {
                let list = client.get::<ListResponse>(&[kind.plural()])?;
                for item in list.items {
                    let url = client.url(&[kind.plural()]);
                    let r: Resource =
                        serde_json::from_value(item).map_err(|e| ClientError::BadResponse {
                            url,
                            detail: e.to_string(),
                        })?;
                    resources.push(r);
                }
            }
            (Err(resources), Some(client.domain().host().to_owned()))
        }
    };
    let resources: Vec<Resource> = match &docs {
        Ok(docs) => docs.iter().map(|d| d.resource.clone()).collect(),
        Err(resources) => resources.clone(),
    };
    let world = PolicyWorld::build(resources).map_err(|e| match (e, &docs) {
        (ScenarioError::Build(errors), Ok(docs)) => ClientError::Invalid(located(&errors, docs)),
        (e, _) => ClientError::Invalid(e.to_string()),
    })?;
    Ok((world, domain))
}

/// Build errors as `file:line (Kind/name): field: message`, one per line.
fn located(errors: &[BuildError], docs: &[SourceDocument]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| {
            match docs
                .iter()
                .rev()
                .find(|d| d.resource.kind() == e.kind && d.resource.name() == e.name)
            {
                Some(d) => format!("{}: {}: {}", d.location_of(&e.field), e.field, e.message),
                None => e.to_string(),
            }
        })
        .collect();
    format!("the resources do not compile:\n  {}", lines.join("\n  "))
}

/// Parsed documents from files, or resources fetched from the gateway.
type Loaded = std::result::Result<Vec<SourceDocument>, Vec<Resource>>;

fn from_files(files: &[PathBuf]) -> Result<Vec<SourceDocument>> {
    let inputs = read_inputs(files, &mut std::io::stdin().lock())?;
    let mut docs = Vec::new();
    for input in inputs {
        docs.extend(
            parse_documents(&input.name, &input.content)
                .map_err(|e| ClientError::Invalid(e.to_string()))?,
        );
    }
    Ok(docs)
}
