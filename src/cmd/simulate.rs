//! `calllog-bridge simulate`.

use crate::cli::SimulateArgs;

/// Runs the command; returns the exit code.
pub fn run(args: SimulateArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("`simulate` is not implemented yet")
}
