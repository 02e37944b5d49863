//! The `calllog-bridge` binary: parse the CLI, run the command, map errors
//! to exit codes. Everything else lives in the library.

use clap::Parser;

use calllog_bridge::cli::{Cli, Command};
use calllog_bridge::cmd;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(a) => cmd::parse::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Tail(a) => cmd::tail::run(a),
        Command::Lag(a) => cmd::lag::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("calllog-bridge: {e:#}");
            std::process::exit(1);
        }
    }
}
