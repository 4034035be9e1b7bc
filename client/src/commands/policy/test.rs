//! `posternctl policy test CASES.yaml [-f FILE...]`.

use super::{load_world, Source};
use crate::commands::{writeln_out, Context};
use crate::error::{ClientError, Result};
use postern_policy::testcases::{parse_case_file, run_cases, summary};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `posternctl policy test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// The case file (YAML): `cases: [{name, user, service, request, expect, rule}]`.
    #[arg(value_name = "CASES")]
    pub cases: PathBuf,
    /// Evaluate against exactly these resource files instead of the gateway's resources.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Runs every case, prints `PASS`/`FAIL`/`ERROR` lines and a summary; any failure is an
/// error (exit status 1).
pub fn run(ctx: &Context, args: &TestArgs, out: &mut dyn Write) -> Result<()> {
    let text = std::fs::read_to_string(&args.cases)
        .map_err(|e| ClientError::io("cannot read", &args.cases, e))?;
    let file = parse_case_file(&args.cases.display().to_string(), &text)
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    let (world, _) = load_world(ctx, &Source::from_files(&args.files))?;
    let outcomes = run_cases(&world, &file);
    for o in &outcomes {
        writeln_out(out, format_args!("{o}"))?;
    }
    writeln_out(out, format_args!("{}", summary(&outcomes)))?;
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    if failed > 0 {
        return Err(ClientError::PolicyTestsFailed {
            failed,
            total: outcomes.len(),
        });
    }
    Ok(())
}
