//! One module per subcommand. Each exposes `run(args) -> anyhow::Result<i32>`
//! returning the process exit code.

pub mod check_config;
pub mod lag;
pub mod parse;
pub mod reset_state;
pub mod run;
pub mod simulate;
pub mod tail;
