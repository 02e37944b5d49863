//! The `calllog-bridge` binary: parse the CLI, run the command, map errors
//! to exit codes. Everything else lives in the library.

use clap::Parser;

use calllog_bridge::cli::{Cli, Command};
use calllog_bridge::cmd;

/// mimalloc instead of the system allocator: an owned record is a few
/// dozen small strings allocated on a reader thread and freed on a sink
/// thread, the pattern glibc malloc handles worst (a quarter of the
/// bridge's CPU on the tail benchmark went to malloc/free). Built with
/// `no_thp`: transparent huge pages made a backlog zero 2 MiB pages in
/// the kernel (more system than user time) and kept them resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // A usage error exits 64 (EX_USAGE) like a bad config, not clap's 2:
    // `lag` uses 2 for "over --max-lag", and a mistyped option in a
    // monitoring check must not read as lag.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { calllog_bridge::config::EXIT_CONFIG } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Parse(a) => cmd::parse::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Subscribe(a) => cmd::subscribe::run(a),
        Command::Lag(calllog_bridge::cli::LagArgs { action: Some(calllog_bridge::cli::LagAction::Report(r)), .. }) => {
            cmd::lag_report::run(r)
        }
        Command::Lag(a) => cmd::lag::run(a),
        Command::ResetState(a) => cmd::reset_state::run(a),
        Command::Export(a) => cmd::export::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("calllog-bridge: {}", cmd::describe(&e));
            std::process::exit(1);
        }
    }
}
