//! `calllog-bridge check-config`: validate a config and print what was understood.

use crate::cli::CheckConfigArgs;
use crate::config::{Config, EXIT_CONFIG};

/// Loads the config; prints it (secrets redacted) or the error naming the key.
pub fn run(args: CheckConfigArgs) -> anyhow::Result<i32> {
    match Config::load(&args.config) {
        Ok(cfg) => {
            println!("{} is valid:\n{cfg:#?}", args.config.display());
            Ok(0)
        }
        Err(e) => {
            eprintln!("calllog-bridge: {e}");
            Ok(EXIT_CONFIG)
        }
    }
}
