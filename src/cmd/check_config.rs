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
use crate::config::{Compression, Config, ReadFrom, UpstreamAuth, UpstreamFormat, EXIT_CONFIG};
use crate::preflight::{self, Bind, Checked};
use crate::record::Shape;
use crate::sink::upstream::http::redact_url;

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

/// At most this many file names per glob in the summary.
const FILES_SHOWN: usize = 5;

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
        let from = match s.read_from {
            ReadFrom::Beginning => "the beginning",
            ReadFrom::End => "the end",
        };
        let _ = writeln!(o, "  {}  format {}, files without a checkpoint read from {from}", found.name, s.format);
        for g in &found.globs {
            let names: Vec<String> = g.files.iter().take(FILES_SHOWN).map(|p| file_name(p)).collect();
            let more = g.files.len().saturating_sub(FILES_SHOWN);
            let _ = writeln!(
                o,
                "    {}  -> {} file(s){}{}{}",
                g.glob,
                g.files.len(),
                if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) },
                if more > 0 { format!(" and {more} more") } else { String::new() },
                if g.unreadable.is_empty() { String::new() } else { format!(", {} unreadable", g.unreadable.len()) },
            );
        }
        if !s.exclude.is_empty() {
            let _ = writeln!(o, "    excluding {}", s.exclude.join(", "));
        }
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
    if let Some(f) = &cfg.file_output {
        let rotate = if f.rotate_bytes == 0 {
            "never rotated".to_string()
        } else {
            format!("rotated at {} bytes, {} kept", f.rotate_bytes, f.keep_files)
        };
        let shape = match f.shape {
            Shape::Ndjson => "ndjson",
            Shape::Ecls => "ecls",
        };
        let _ = writeln!(o, "  file_output  {} ({shape}, {rotate})", f.path.display());
    }
    if let Some(ch) = &cfg.channel {
        let scheme = if ch.tls_cert.is_some() { "wss" } else { "ws" };
        let token = match &ch.token_file {
            Some(p) => format!("token from {}", p.display()),
            None => "inline token".to_string(),
        };
        let _ = writeln!(
            o,
            "  channel      {scheme}://{}/ecls/subscribe/{}/{} (and /stream), {token}, at most {} connection(s)",
            ch.listen, ch.channel_id, ch.area, ch.max_connections
        );
    }
    if let Some(u) = &cfg.upstream {
        let auth = match u.auth() {
            Ok(UpstreamAuth::Bearer(_)) => "bearer token",
            Ok(UpstreamAuth::Basic { .. }) => "basic auth",
            Ok(UpstreamAuth::None) | Err(_) => "no credentials",
        };
        let format = match u.format {
            UpstreamFormat::Ndjson => "ndjson",
            UpstreamFormat::Ecls => "ecls",
            UpstreamFormat::Elasticsearch => "elasticsearch",
            UpstreamFormat::SplunkHec => "splunk_hec",
        };
        let compression = match u.compression {
            Compression::Gzip => "gzip",
            Compression::None => "uncompressed",
        };
        let headers = if u.headers.is_empty() {
            String::new()
        } else {
            format!(", headers {} (values not shown)", u.headers.keys().cloned().collect::<Vec<_>>().join(", "))
        };
        let _ = writeln!(o, "  upstream     {} ({format}, {compression}, {auth}{headers})", redact_url(&u.url));
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

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
