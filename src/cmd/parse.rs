//! `calllog-bridge parse`.

use crate::cli::ParseArgs;

/// Runs the command; returns the exit code.
pub fn run(args: ParseArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("`parse` is not implemented yet")
}
