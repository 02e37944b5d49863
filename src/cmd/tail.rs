//! `calllog-bridge tail`.

use crate::cli::TailArgs;

/// Runs the command; returns the exit code.
pub fn run(args: TailArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("`tail` is not implemented yet")
}
