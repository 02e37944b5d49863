//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

/// The shared reference samples (`../shared/reference/samples/NAME`).
pub fn sample(name: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.join("../shared/reference/samples").join(name)
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
