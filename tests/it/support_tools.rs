//! The real external services some tests talk to (a Kafka-protocol
//! broker, an S3 server, independent Python clients), installed once by
//! `scripts/test-tools.sh` into a cache outside the repository. This is the
//! one place that finds them: through `CALLLOG_TANSU`, `CALLLOG_S3S_FS`,
//! `CALLLOG_TOOLS_PYTHON`, or the default cache paths
//! (`$CALLLOG_TOOLS_DIR`, else `~/.cache/calllog-bridge-tools`).
//!
//! A test whose tool is missing prints `SKIPPED: <tool> not installed (run
//! scripts/test-tools.sh)` and returns, never passing silently; with
//! `CALLLOG_REQUIRE_TOOLS=1` (CI) it fails instead.
#![allow(dead_code)]

use std::path::PathBuf;

/// A tool the tests can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// tansu, a Kafka-protocol broker.
    Tansu,
    /// s3s-fs, an S3 server over a directory.
    S3sFs,
    /// Python with kafka-python and boto3.
    Python,
}

impl Tool {
    fn env(self) -> &'static str {
        match self {
            Tool::Tansu => "CALLLOG_TANSU",
            Tool::S3sFs => "CALLLOG_S3S_FS",
            Tool::Python => "CALLLOG_TOOLS_PYTHON",
        }
    }

    fn cached(self) -> &'static str {
        match self {
            Tool::Tansu => "tansu-0.6.0/bin/tansu",
            Tool::S3sFs => "s3s-fs-0.14.1/bin/s3s-fs",
            Tool::Python => "python/bin/python",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::Tansu => "tansu",
            Tool::S3sFs => "s3s-fs",
            Tool::Python => "python (kafka-python, boto3)",
        }
    }
}

/// The tools' cache directory.
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("CALLLOG_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/calllog-bridge-tools")))
}

/// The tool's executable, or `None` after printing the SKIPPED line
/// (panics instead under `CALLLOG_REQUIRE_TOOLS=1`). `test` names the
/// test in the line.
pub fn tool(t: Tool, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os(t.env()).map(PathBuf::from).or_else(|| cache_dir().map(|d| d.join(t.cached()))).filter(|p| p.is_file());
    if found.is_none() {
        let line = format!("SKIPPED: {test}: {} not installed (run scripts/test-tools.sh)", t.name());
        if std::env::var("CALLLOG_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{line}; CALLLOG_REQUIRE_TOOLS=1 requires it");
        }
        eprintln!("{line}");
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound, then released for the service to
/// take; the service is polled until it answers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}
