//! `posternctl policy explain|test`: evaluate hypothetical requests with the gateway's own
//! policy engine, offline against files (`-f`) or against the gateway's current resources.
//! Nothing is ever sent to an upstream.

pub mod explain;
mod load;
pub mod test;

use super::Context;
use crate::error::Result;
use std::io::Write;

pub use load::{load_world, Source};

/// The `posternctl policy` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyCommand {
    /// Show every rule that applies to a hypothetical request, in decision order, which
    /// matched, and which decided.
    Explain(Box<explain::ExplainArgs>),
    /// Run a file of cases (user, service, request, expected decision); exits 1 if any fails.
    Test(test::TestArgs),
}

/// Runs one `policy` subcommand.
pub fn run(ctx: &Context, cmd: &PolicyCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        PolicyCommand::Explain(args) => explain::run(ctx, args, out),
        PolicyCommand::Test(args) => test::run(ctx, args, out),
    }
}
