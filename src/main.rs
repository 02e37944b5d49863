//! The `calllog-bridge` binary: parse the CLI, run the command, map errors
//! to exit codes. Everything else lives in the library.

use clap::Parser;

use calllog_bridge::cli::{Cli, Command};
use calllog_bridge::cmd;

/// mimalloc instead of the system allocator: an owned record is a few
/// dozen small strings allocated on a reader thread and freed on a sink
/// thread, the pattern glibc malloc handles worst (a quarter of the
/// bridge's CPU on the tail benchmark went to malloc/free).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(a) => cmd::parse::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Tail(a) => cmd::tail::run(a),
        Command::Lag(a) => cmd::lag::run(a),
        Command::ResetState(a) => cmd::reset_state::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("calllog-bridge: {e:#}");
            std::process::exit(1);
        }
    }
}
