//! `calllog-bridge run --config FILE`: load the config, set up logging and
//! the runtime, run the bridge until SIGTERM or SIGINT, then drain.
//!
//! A config error exits with [`EXIT_CONFIG`] and a message naming the key.
//! Signals are turned into a [`CancellationToken`] so the bridge itself
//! (see [`crate::bridge::run`]) never deals with signals; SIGHUP (reload)
//! can be added here the same way.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::config::{Config, EXIT_CONFIG};

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
    let cfg = match Config::load(&path) {
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("calllog-bridge")
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
        let res = crate::bridge::run(cfg, shutdown.clone()).await;
        signals.abort();
        res
    })?;
    Ok(0)
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers");
            return;
        }
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutdown requested");
    crate::service::notify_stopping();
    shutdown.cancel();
}
