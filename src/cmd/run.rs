//! `calllog-bridge run --config FILE`: load the config, set up logging and
//! the runtime, run the bridge until SIGTERM or SIGINT, then drain.
//!
//! A config error, or a host problem [`crate::preflight`] finds (a glob
//! matching nothing, a lookup file that does not load, an unwritable
//! directory, a port in use, another bridge on the same `state_dir`),
//! exits with [`EXIT_CONFIG`] and a message naming the key; a damaged
//! state file exits with [`EXIT_DAMAGED_STATE`] and how to recover.
//! Signals are turned into a [`CancellationToken`] so the bridge itself
//! (see [`crate::bridge::run`]) never deals with signals; SIGHUP becomes
//! a reload request ([`crate::reload::Requests::on_sighup`]).

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{DamagedState, EXIT_DAMAGED_STATE};
use crate::cli::RunArgs;
use crate::config::{Config, EXIT_CONFIG};

/// What the run's body returns when a stop was asked before start-up
/// finished (exit 0, without waiting for the start-up checks).
const STOPPED_STARTING: i32 = -1;

/// Runs the command; returns the exit code.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    // The demo (simulator + generated config) lives as long as the run.
    let (path, _demo) = match (args.config, args.demo) {
        (Some(path), false) => (path, None),
        (None, true) => {
            let demo = crate::demo::Demo::start()?;
            (demo.config_path.clone(), Some(demo))
        }
        (Some(_), true) => anyhow::bail!("give either --config FILE or --demo, not both"),
        (None, false) => anyhow::bail!("give --config FILE (or --demo)"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("calllog-bridge")
        .build()
        .context("cannot start the runtime")?;
    let code = rt.block_on(async move {
        // Signals first: a SIGTERM during start-up must drain, not kill.
        let shutdown = CancellationToken::new();
        let signals = Signals::install()?;
        // SIGHUP re-reads the config (see crate::reload); installed before
        // start-up too, since its default action would end the process.
        let reloads = crate::reload::Requests::on_sighup(path.clone()).context("cannot handle SIGHUP")?;
        // A config with a problem: every problem, as `check-config` lists
        // them (the file's, then what the host lacks for the rest).
        let reading = Config::read(&path);
        if !reading.errors.is_empty() {
            let report = tokio::task::spawn_blocking(move || crate::preflight::report_of(reading)).await?;
            for e in report.problems() {
                eprintln!("calllog-bridge: {e}");
            }
            return Ok(EXIT_CONFIG);
        }
        let cfg = match reading.into_result() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("calllog-bridge: {e}");
                return Ok(EXIT_CONFIG);
            }
        };
        if let Err(e) = crate::service::init_logging(&cfg.log_level) {
            eprintln!("calllog-bridge: {e}");
            return Ok(EXIT_CONFIG);
        }
        // Before any listener or file is opened.
        crate::listener::raise_fd_limit();
        let waiter = tokio::spawn(signals.wait(shutdown.clone()));
        // What check-config checks, the same way: lock state_dir, bind the
        // listeners, load the lookups; any failure is exit 64 (systemd
        // does not restart it), with one line per problem. A stop asked
        // meanwhile (a glob's scan of a large tree) is not waited for.
        let c = cfg.clone();
        let preparing = tokio::task::spawn_blocking(move || crate::preflight::prepare(&c));
        let prepared = tokio::select! {
            p = preparing => p?,
            _ = shutdown.cancelled() => {
                tracing::info!("stopped during start-up");
                return Ok(STOPPED_STARTING);
            }
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                for line in e.to_string().lines() {
                    eprintln!("calllog-bridge: {line}");
                }
                return Ok(EXIT_CONFIG);
            }
        };
        let res = crate::bridge::run_with_reload(cfg, prepared, shutdown.clone(), Some(reloads)).await;
        waiter.abort();
        match res {
            Ok(()) => Ok(0),
            Err(e) => match e.chain().find_map(|c| c.downcast_ref::<DamagedState>()) {
                Some(d) => {
                    tracing::error!(file = %d.path.display(), problem = %d.problem, "state file damaged; not starting");
                    eprintln!("calllog-bridge: {d}\n{}", d.recovery(&path));
                    Ok(EXIT_DAMAGED_STATE)
                }
                None => Err(e),
            },
        }
    });
    if matches!(code, Ok(STOPPED_STARTING)) {
        // The start-up checks may still be scanning on a blocking thread:
        // not waited for (their scan is bounded, but a stop is at once).
        rt.shutdown_background();
        return Ok(0);
    }
    code
}

/// The signals that stop the bridge.
struct Signals {
    /// SIGTERM (systemd stop).
    term: tokio::signal::unix::Signal,
    /// SIGINT (Ctrl-C).
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// Cancels `shutdown` on the first SIGTERM or SIGINT.
    async fn wait(mut self, shutdown: CancellationToken) {
        let which = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutdown requested");
        crate::service::notify_stopping();
        shutdown.cancel();
    }
}
