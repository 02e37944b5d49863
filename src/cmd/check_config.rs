//! `calllog-bridge check-config`: validate a config the way `run` will use
//! it ([`crate::preflight::check`], the same checks `run` makes before it
//! starts) and print a summary: sources and the files each glob finds,
//! sinks, listeners, then warnings and errors.
//!
//! Exit codes: 0 when `run` would start, 64 when it would refuse (each
//! problem on its own line on stderr, naming its key). While a bridge runs
//! on the same `state_dir` the listen addresses are not probed (that
//! bridge holds them), so this command works next to the service.

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::CheckConfigArgs;
use crate::config::{Config, EXIT_CONFIG};
use crate::preflight::{self, Bind, Checked};

/// Loads and checks the config; prints the summary and the problems.
pub fn run(args: CheckConfigArgs) -> anyhow::Result<i32> {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("calllog-bridge: {e}");
            return Ok(EXIT_CONFIG);
        }
    };
    let running = crate::state_lock::holder(&cfg.state_dir);
    let checked = preflight::check(&cfg, if running.is_some() { Bind::Skip } else { Bind::Probe });
    print!("{}", summary(&args.config, &cfg, &checked, running.as_deref()));
    for e in &checked.errors {
        eprintln!("calllog-bridge: {e}");
    }
    Ok(if checked.ok() { 0 } else { EXIT_CONFIG })
}

/// The human summary (stdout).
fn summary(path: &Path, cfg: &Config, c: &Checked, running: Option<&str>) -> String {
    let mut o = String::new();
    let verdict = if c.ok() { "OK".to_string() } else { format!("{} problem(s), `run` would refuse to start", c.errors.len()) };
    let _ = writeln!(o, "{}: {verdict}\n", path.display());
    let _ = writeln!(
        o,
        "state_dir  {}{}",
        cfg.state_dir.display(),
        running.map(|h| format!("  (a bridge runs on it: {h})")).unwrap_or_default()
    );

    let _ = writeln!(o, "\nsources");
    for (s, found) in cfg.sources.iter().zip(&c.sources) {
        let _ = write!(o, "  {}  {}", found.name, s.summary(found));
    }

    let _ = writeln!(o, "\nenrich");
    match &c.enricher {
        Some(e) if !e.files().is_empty() => {
            let tables: Vec<String> =
                e.stats().tables.iter().filter(|t| t.loaded).map(|t| format!("{} ({} ids)", t.table.name(), t.entries)).collect();
            let _ = writeln!(o, "  {} lookup file(s): {}", e.files().len(), tables.join(", "));
        }
        Some(_) => {
            let _ = writeln!(o, "  no lookup tables");
        }
        None => {
            let _ = writeln!(o, "  lookup tables do not load (see the errors)");
        }
    }
    if let Some(k) = cfg.enrich.mask_api_key_keep {
        let _ = writeln!(o, "  api_key masked, keeping {k} characters at each end");
    }

    let _ = writeln!(o, "\nsinks");
    for sink in cfg.sinks.iter() {
        let _ = writeln!(o, "  {:<13}{}", sink.kind().section(), sink.summary());
    }

    let _ = writeln!(o, "\nlisteners");
    if c.listeners.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for l in &c.listeners {
        let state = match (running, l.bound) {
            (Some(_), _) => "not probed: the running bridge holds it",
            (None, true) => "free",
            (None, false) => "NOT AVAILABLE (see the errors)",
        };
        let _ = writeln!(o, "  {:<15} {}  {state}", l.key, l.addr);
    }
    if !cfg.status.enabled {
        let _ = writeln!(o, "  status listener disabled");
    }

    if !c.warnings.is_empty() {
        let _ = writeln!(o, "\nwarnings");
        for w in &c.warnings {
            let _ = writeln!(o, "  {w}");
        }
    }
    o
}
