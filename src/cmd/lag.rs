//! `calllog-bridge lag`.

use crate::cli::LagArgs;

/// Runs the command; returns the exit code.
pub fn run(args: LagArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("`lag` is not implemented yet")
}
