//! `calllog-bridge simulate`: writes simulated Local Edition traffic into a
//! directory (see [`crate::sim`]), paced at `--rate` or as fast as
//! possible with `--burst`, until `--duration` has passed or SIGINT /
//! SIGTERM arrives; then prints a summary to stderr.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use crate::cli::SimulateArgs;
use crate::sim::{self, SimError, SimOptions, SimSummary};

/// Exit code for a usage error (EX_USAGE), as for a bad config.
const EXIT_USAGE: i32 = 64;

/// Runs the command; returns the exit code.
pub fn run(args: SimulateArgs) -> anyhow::Result<i32> {
    let opts = SimOptions {
        format: args.format.into(),
        dir: args.dir,
        rate: args.rate,
        duration_secs: args.duration,
        rotate_bytes: args.rotate_bytes,
        gzip_rotated: args.gzip_rotated,
        lag_ms: args.lag_ms,
        write_delay_ms: args.write_delay_ms,
        seed: args.seed.unwrap_or_else(|| crate::time::now_ms() as u64),
        burst: args.burst,
        keep_rotated: 10,
    };
    if let Err(e) = sim::live_file_name(opts.format) {
        eprintln!("calllog-bridge simulate: {e}");
        return Ok(EXIT_USAGE);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The writer does blocking file I/O on its own thread; a small runtime
    // on this thread only waits for a signal or for the writer to finish.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<SimSummary, SimError>>();
    let writer = {
        let stop = stop.clone();
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("simulate".into())
            .spawn(move || {
                let _ = done_tx.send(sim::run(&opts, &stop));
            })
            .context("start the writer thread")?
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the signal runtime")?;
    let result = rt.block_on(async {
        let mut done_rx = done_rx;
        tokio::select! {
            r = &mut done_rx => r,
            _ = shutdown_signal() => {
                stop.store(true, Ordering::Relaxed);
                done_rx.await
            }
        }
    });
    let _ = writer.join();
    let summary = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e @ (SimError::Rate(_) | SimError::BurstForever | SimError::Format(_)))) => {
            eprintln!("calllog-bridge simulate: {e}");
            return Ok(EXIT_USAGE);
        }
        Ok(Err(e)) => return Err(e).context("simulate"),
        Err(_) => anyhow::bail!("the writer thread stopped without a result"),
    };
    print_summary(&opts, &summary);
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_summary(opts: &SimOptions, s: &SimSummary) {
    eprintln!(
        "simulate: wrote {} {} lines to {} ({} rotation{}, seed {})",
        s.lines,
        opts.format,
        opts.dir.display(),
        s.rotations,
        if s.rotations == 1 { "" } else { "s" },
        opts.seed
    );
    for (path, lines) in &s.files {
        eprintln!("  {:>10} lines  {}", lines, path.display());
    }
    if s.lines_in_deleted_files > 0 {
        eprintln!("  {:>10} lines  in rotated files deleted (more than {} kept)", s.lines_in_deleted_files, opts.keep_rotated);
    }
}
