//! `calllog-bridge check-config`: validate a config the way `run` will use
//! it and print a summary: sources and the files each glob finds, sinks,
//! listeners, the peers (upstream, Kafka) and what answered there, then
//! warnings and every problem.
//!
//! One run names every problem ([`crate::preflight::report`], which `run`
//! prints too when it refuses): the file's syntax errors first (each key
//! with its line, a mistyped key with the key it probably meant), then
//! every value refused, then what the host lacks for the parts that could
//! be read ([`crate::preflight::check`], the same checks `run` makes).
//! The peers are probed within a few seconds ([`crate::probe`]); what does
//! not answer is a warning, as the bridge retries it.
//!
//! Exit codes: 0 when `run` would start, 64 when it would refuse (each
//! problem on its own line on stderr, naming its key). While a bridge runs
//! on the same `state_dir` the listen addresses are not probed (that
//! bridge holds them), so this command works next to the service.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::cli::CheckConfigArgs;
use crate::config::{Config, EXIT_CONFIG};
use crate::preflight::{self, Checked, Report};
use crate::probe::Probed;

/// Loads and checks the config; prints the summary and the problems.
pub fn run(args: CheckConfigArgs) -> anyhow::Result<i32> {
    let report = preflight::report(&args.config);
    let peers = report.checked.as_ref().map(|c| c.peers.as_slice()).unwrap_or_default();
    let probed = if peers.is_empty() {
        Vec::new()
    } else {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
        rt.block_on(crate::probe::all(peers))
    };
    print!("{}", summary(&args.config, &report, &probed));
    for e in report.problems() {
        eprintln!("calllog-bridge: {e}");
    }
    Ok(if report.ok() { 0 } else { EXIT_CONFIG })
}

/// The human summary (stdout).
fn summary(path: &Path, report: &Report, probed: &[Probed]) -> String {
    let mut o = String::new();
    let problems = report.problems().count();
    let verdict = if report.ok() { "OK".to_string() } else { format!("{problems} problem(s), `run` would refuse to start") };
    let _ = writeln!(o, "{}: {verdict}\n", path.display());
    let (Some(cfg), Some(c)) = (&report.config, &report.checked) else {
        return o;
    };
    if !report.file_errors.is_empty() {
        let _ = writeln!(o, "(the sections with a problem are left out below)\n");
    }
    config_summary(&mut o, cfg, c, report.running.as_deref());

    if !probed.is_empty() {
        let _ = writeln!(o, "\npeers (probed within {} s)", crate::probe::PROBE_TIMEOUT.as_secs());
        for p in probed {
            let state = match &p.problem {
                None => format!("ok: {}", p.found),
                Some(problem) if p.found.is_empty() => format!("NOT OK: {problem}"),
                Some(problem) => format!("NOT OK: {problem} ({})", p.found),
            };
            let _ = writeln!(o, "  {:<15} {}  {state}", p.key, p.target);
        }
    }

    let probe_warnings = probed.iter().filter_map(|p| {
        p.problem
            .as_ref()
            .map(|problem| format!("config key `{}`: {}: {problem} (the bridge retries it; records wait meanwhile)", p.key, p.target))
    });
    let warnings: Vec<String> = c.warnings.iter().cloned().chain(probe_warnings).collect();
    if !warnings.is_empty() {
        let _ = writeln!(o, "\nwarnings");
        for w in &warnings {
            let _ = writeln!(o, "  {w}");
        }
    }
    o
}

/// Sources, lookups, sinks and listeners as read and found.
fn config_summary(o: &mut String, cfg: &Config, c: &Checked, running: Option<&str>) {
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
}
