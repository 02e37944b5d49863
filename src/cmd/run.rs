//! `calllog-bridge run`.

use crate::cli::RunArgs;

/// Runs the command; returns the exit code.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("`run` is not implemented yet")
}
