//! `posternctl apply FILE... [--dry-run]`.

use super::{resource_ref, writeln_out, Context};
use crate::error::{ClientError, Result};
use postern_common::api::{ApplyAction, ApplyFile, ApplyRequest, ApplyResponse};
use std::io::{Read, Write};
use std::path::PathBuf;

/// Arguments of `posternctl apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// YAML files of Services, Users, Groups and Policies; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Check the files and show what would change, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// A file's name (as sent to the gateway, for its error messages) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// The path as given, or `<stdin>`.
    pub name: String,
    /// The whole file.
    pub content: String,
}

/// Reads every file before anything is sent, so a typo in the last path changes nothing.
pub fn read_inputs(files: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<InputFile>> {
    let mut inputs = Vec::with_capacity(files.len());
    let mut stdin_used = false;
    for path in files {
        if path.as_os_str() == "-" {
            if stdin_used {
                return Err(ClientError::Invalid(
                    "`-` (standard input) can be given only once".to_string(),
                ));
            }
            stdin_used = true;
            let mut content = String::new();
            stdin
                .read_to_string(&mut content)
                .map_err(|e| ClientError::io("cannot read", "<stdin>", e))?;
            inputs.push(InputFile {
                name: "<stdin>".to_string(),
                content,
            });
        } else {
            let content = std::fs::read_to_string(path)
                .map_err(|e| ClientError::io("cannot read", path, e))?;
            inputs.push(InputFile {
                name: path.display().to_string(),
                content,
            });
        }
    }
    Ok(inputs)
}

/// Sends every file in one apply request: the gateway applies all of them or none.
pub fn run(ctx: &Context, args: &ApplyArgs, out: &mut dyn Write) -> Result<()> {
    let (client, _) = ctx.authenticated()?;
    let inputs = read_inputs(&args.files, &mut std::io::stdin().lock())?;
    let response: ApplyResponse = client.post(
        &["apply"],
        &ApplyRequest {
            files: inputs
                .into_iter()
                .map(|i| ApplyFile {
                    file: i.name,
                    content: i.content,
                })
                .collect(),
            dry_run: args.dry_run,
        },
    )?;
    for line in result_lines(&response, args.dry_run) {
        writeln_out(out, format_args!("{line}"))?;
    }
    Ok(())
}

/// `Service/gemini created`, with ` (dry run)` when nothing was changed on purpose.
pub fn result_lines(response: &ApplyResponse, dry_run: bool) -> Vec<String> {
    let suffix = if dry_run || response.dry_run {
        " (dry run)"
    } else {
        ""
    };
    response
        .results
        .iter()
        .map(|r| {
            let action = match r.action {
                ApplyAction::Created => "created",
                ApplyAction::Updated => "updated",
                ApplyAction::Unchanged => "unchanged",
            };
            format!("{} {action}{suffix}", resource_ref(&r.kind, &r.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let response: ApplyResponse = serde_json::from_value(serde_json::json!({
            "results": [{"kind": "Service", "name": "gemini", "action": "created"},
                        {"kind": "User", "name": "alice", "action": "unchanged"}],
            "dryRun": false
        }))
        .unwrap();
        assert_eq!(
            result_lines(&response, false),
            ["Service/gemini created", "User/alice unchanged"]
        );
        assert_eq!(
            result_lines(&response, true)[0],
            "Service/gemini created (dry run)"
        );
    }

    #[test]
    fn stdin_once_and_missing_files_fail_early() {
        let files = [PathBuf::from("-")];
        let got = read_inputs(&files, &mut "kind: Group\n".as_bytes()).unwrap();
        assert_eq!(got[0].name, "<stdin>");
        assert_eq!(got[0].content, "kind: Group\n");
        let twice = [PathBuf::from("-"), PathBuf::from("-")];
        assert!(read_inputs(&twice, &mut "".as_bytes()).is_err());
        let missing = [PathBuf::from("/nonexistent/postern.yaml")];
        let err = read_inputs(&missing, &mut "".as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/postern.yaml"),
            "{err}"
        );
    }
}
