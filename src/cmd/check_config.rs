//! `calllog-bridge check-config`: validate a config and print what was understood.

use crate::cli::CheckConfigArgs;
use crate::config::{Config, EXIT_CONFIG};
use crate::sink::upstream::http::redact_url;

/// Loads the config; prints it (secrets redacted) or the error naming the key.
pub fn run(args: CheckConfigArgs) -> anyhow::Result<i32> {
    match Config::load(&args.config) {
        Ok(cfg) => {
            println!("{} is valid:\n{:#?}", args.config.display(), redacted(cfg));
            Ok(0)
        }
        Err(e) => {
            eprintln!("calllog-bridge: {e}");
            Ok(EXIT_CONFIG)
        }
    }
}

/// The config as printed: inline secrets are already `Secret`s; upstream
/// header values and credentials or query strings in the URL may hold
/// secrets too, so they are hidden.
fn redacted(mut cfg: Config) -> Config {
    if let Some(u) = &mut cfg.upstream {
        u.url = redact_url(&u.url);
        for v in u.headers.values_mut() {
            *v = "<redacted>".to_string();
        }
    }
    cfg
}
