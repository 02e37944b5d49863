//! `calllog-bridge run --demo`: everything working on one machine with no
//! Local Edition present.
//!
//! The demo writes a config, a token file and the example lookup tables
//! (embedded in the binary) into a fresh directory under the system temp
//! directory (removed again when the demo stops), and starts the simulator
//! in a thread: LE 6 traffic at a
//! steady rate with a simulated sync lag, rotated by size and gzipped the
//! way Local Edition rotates. The bridge then runs on that config exactly
//! as it would on a real one: the channel, the status page (dashboard,
//! `/metrics`, `/status`) and the file archive on localhost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::parse::Format;
use crate::sim::{self, SimOptions};
use crate::state_dir::StateDir;

/// The token the demo channel accepts.
pub const DEMO_TOKEN: &str = "demo-token-not-a-secret";

/// Lines per second the demo simulator writes.
const DEMO_RATE: f64 = 50.0;

/// The simulated sync lag: `request_time` is this far behind the write.
const DEMO_LAG_MS: i64 = 1_500;

/// Of that lag, Local Edition writes each line this long after its call
/// (LE 6 `log_ingestion`); the rest is the sync's (the transfer delay).
const DEMO_WRITE_DELAY_MS: i64 = 400;

/// The example lookup tables, embedded so the demo needs no checkout.
const LOOKUPS: &[(&str, &str)] = &[
    ("services.csv", include_str!("../examples/lookups/services.csv")),
    ("endpoints.csv", include_str!("../examples/lookups/endpoints.csv")),
    ("keys.csv", include_str!("../examples/lookups/keys.csv")),
    ("plans.json", include_str!("../examples/lookups/plans.json")),
];

/// A running demo: its directory and the simulator thread. Dropping it
/// stops the simulator.
pub struct Demo {
    /// The demo's directory (config, logs, state, archive).
    pub dir: PathBuf,
    /// The config file the bridge runs on.
    pub config_path: PathBuf,
    /// Set to stop the simulator.
    stop: Arc<AtomicBool>,
    /// The simulator thread.
    simulator: Option<JoinHandle<()>>,
}

impl Demo {
    /// Prepares the demo directory and starts the simulator.
    pub fn start() -> anyhow::Result<Demo> {
        let dir = std::env::temp_dir().join(format!("calllog-bridge-demo-{}", std::process::id()));
        let logs = dir.join("le-logs");
        let lookups = dir.join("lookups");
        for d in [&dir, &logs, &lookups, &dir.join("state")] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        for (name, text) in LOOKUPS {
            std::fs::write(lookups.join(name), text).with_context(|| format!("cannot write lookup {name}"))?;
        }
        std::fs::write(dir.join("token"), format!("{DEMO_TOKEN}\n")).context("cannot write the demo token")?;
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, demo_config(&dir)).context("cannot write the demo config")?;

        let stop = Arc::new(AtomicBool::new(false));
        let mut opts = SimOptions::new(Format::Le6, &logs);
        opts.rate = DEMO_RATE;
        opts.duration_secs = 0.0;
        opts.rotate_bytes = Some(256 * 1024);
        opts.gzip_rotated = true;
        opts.lag_ms = DEMO_LAG_MS;
        opts.write_delay_ms = DEMO_WRITE_DELAY_MS;
        opts.seed = std::process::id() as u64;
        opts.keep_rotated = 5;
        let s = stop.clone();
        let simulator = std::thread::Builder::new()
            .name("demo-simulator".into())
            .spawn(move || {
                if let Err(e) = sim::run(&opts, &s) {
                    tracing::error!(error = %e, "demo simulator stopped");
                }
            })
            .context("cannot start the demo simulator")?;
        let demo = Demo { dir, config_path, stop, simulator: Some(simulator) };
        demo.announce_when_listening();
        Ok(demo)
    }

    /// Prints where to look once the bridge has written its listen
    /// addresses (a background thread; gives up after a minute).
    fn announce_when_listening(&self) {
        let state = self.dir.join("state");
        let dir = self.dir.clone();
        let _ = std::thread::Builder::new().name("demo-announce".into()).spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let read = |name: &str| std::fs::read_to_string(state.join(name)).ok().map(|s| s.trim().to_string());
            loop {
                if let (Some(status), Some(channel)) = (read(StateDir::STATUS_ADDR), read(StateDir::CHANNEL_ADDR)) {
                    eprintln!("{}", banner(&dir, &status, &channel));
                    return;
                }
                if Instant::now() > deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
}

impl Drop for Demo {
    /// Stops the simulator and removes the demo's directory (logs, state,
    /// archive): the bridge has stopped by then, and a demo leaves nothing
    /// behind.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.simulator.take() {
            let _ = t.join();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("calllog-bridge: cannot remove the demo directory {}: {e}", self.dir.display());
        }
    }
}

/// How to run this binary from where the user stands: `calllog-bridge`
/// when that name on `PATH` is this binary (installed), else its path
/// (relative to the working directory when inside it, as after `cargo run`).
fn invocation() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "calllog-bridge".to_string();
    };
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join("calllog-bridge")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file());
    if on_path.and_then(|p| p.canonicalize().ok()).as_ref() == Some(&exe) {
        return "calllog-bridge".to_string();
    }
    let shown = match std::env::current_dir().ok().and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf)) {
        Some(rel) => format!("./{}", rel.display()),
        None => exe.display().to_string(),
    };
    if shown.contains([' ', '\'', '"']) {
        format!("'{}'", shown.replace('\'', "'\\''"))
    } else {
        shown
    }
}

/// What the demo prints once it is up.
fn banner(dir: &Path, status: &str, channel: &str) -> String {
    format!(
        "\n\
         calllog-bridge demo is running (Ctrl-C to stop). Simulated LE 6 traffic: {DEMO_RATE} calls/s, \
         sync lag {DEMO_LAG_MS} ms, of which Local Edition writes lines {DEMO_WRITE_DELAY_MS} ms after the call.\n\
         \n  dashboard  http://{status}/#token={DEMO_TOKEN}\n\
         \x20 status     http://{status}/status   metrics http://{status}/metrics\n\
         \x20 channel    ws://{channel}/ecls/subscribe/local/local?key={DEMO_TOKEN}\n\
         \x20 archive    {archive}\n\
         \x20 LE logs    {logs}\n\
         \n  try:  {bin} subscribe 'ws://{channel}/stream?key={DEMO_TOKEN}' --table\n\
         \x20       {bin} lag --status-url http://{status}\n\
         \n  The demo directory is removed when the demo stops.\n",
        archive = dir.join("archive.ndjson").display(),
        logs = dir.join("le-logs").display(),
        bin = invocation(),
    )
}

/// The demo config: the shipped defaults, with everything inside `dir`.
/// Listens on the default loopback ports when they are free, else on
/// ports the system picks (the banner prints them).
fn demo_config(dir: &Path) -> String {
    // CALLLOG_BRIDGE_DEMO_LISTEN=any always lets the system pick (tests).
    let any = std::env::var("CALLLOG_BRIDGE_DEMO_LISTEN").is_ok_and(|v| v == "any");
    let port_or_any = |port: u16| {
        if !any && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            format!("127.0.0.1:{port}")
        } else {
            "127.0.0.1:0".to_string()
        }
    };
    format!(
        r#"# calllog-bridge demo configuration (written by `run --demo`).
state_dir = "state"
log_level = "info"

[[source]]
name = "demo-le6"
paths = ["le-logs/access.log*"]
exclude = ["le-logs/*.tmp"]
format = "le6"

[enrich]
lookups = ["lookups/services.csv", "lookups/endpoints.csv", "lookups/keys.csv", "lookups/plans.json"]

[file_output]
path = "archive.ndjson"

[channel]
listen = "{channel}"
token_file = "token"
records_per_message = 1

[status]
listen = "{status}"
"#,
        channel = port_or_any(8790),
        status = port_or_any(8791),
    )
    .replace("state_dir = \"state\"", &format!("state_dir = {:?}", dir.join("state").display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{DEMO_TOKEN}\n")).unwrap();
        let text = demo_config(dir.path());
        let cfg = crate::config::Config::from_toml(&text, &dir.path().join("config.toml")).unwrap();
        assert_eq!(cfg.sources.len(), 1);
        assert!(cfg.sinks.get::<crate::sink::channel::ChannelSink>().is_some());
        assert_eq!(cfg.enrich.lookups.len(), 4);
    }
}
