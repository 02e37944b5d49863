//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calllog-bridge"))
}

/// A command for the binary under test.
pub fn cmd() -> Command {
    Command::new(bin())
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    cmd().args(args).output().expect("run calllog-bridge")
}

/// The reference samples of each Local Edition format
/// (`tests/fixtures/samples/NAME`, copies of the format reference's).
pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples").join(name)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `calllog-bridge run --config CONFIG` with its stderr appended to
/// `log` (stdin and stdout null; `RUST_LOG` unset so the config's
/// `log_level` applies).
pub fn spawn_bridge(config: &Path, log: &Path) -> Child {
    let err = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open bridge log");
    cmd()
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start bridge")
}

/// Sends SIGTERM to `child` and waits (up to `timeout`) for it to exit.
pub fn terminate(child: &mut Child, timeout: Duration) -> ExitStatus {
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
    assert!(st.success(), "kill -TERM {} failed", child.id());
    poll_until(timeout, "bridge to exit after SIGTERM", || child.try_wait().expect("wait for bridge"))
}
