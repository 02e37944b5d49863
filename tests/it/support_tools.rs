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
//!
//! [`S3sFs`] runs s3s-fs (an S3-compatible server over a directory) on
//! loopback for a test: killed and its directory removed when dropped.
#![allow(dead_code)]

use std::path::PathBuf;

/// A tool the tests can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// tansu, a Kafka-protocol broker.
    Tansu,
    /// s3s-fs, an S3 server over a directory.
    S3sFs,
    /// Python with kafka-python, boto3 and opentelemetry-proto.
    Python,
    /// Prometheus (Debian's package, unpacked into the cache).
    Prometheus,
    /// promtool, from the same package.
    Promtool,
}

impl Tool {
    fn env(self) -> &'static str {
        match self {
            Tool::Tansu => "CALLLOG_TANSU",
            Tool::S3sFs => "CALLLOG_S3S_FS",
            Tool::Python => "CALLLOG_TOOLS_PYTHON",
            Tool::Prometheus => "CALLLOG_PROMETHEUS",
            Tool::Promtool => "CALLLOG_PROMTOOL",
        }
    }

    fn cached(self) -> &'static str {
        match self {
            Tool::Tansu => "tansu-0.6.0/bin/tansu",
            Tool::S3sFs => "s3s-fs-0.14.1/bin/s3s-fs",
            Tool::Python => "python/bin/python",
            Tool::Prometheus => "prometheus/usr/bin/prometheus",
            Tool::Promtool => "prometheus/usr/bin/promtool",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::Tansu => "tansu",
            Tool::S3sFs => "s3s-fs",
            Tool::Python => "python (kafka-python, boto3, opentelemetry-proto)",
            Tool::Prometheus => "prometheus",
            Tool::Promtool => "promtool",
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

/// An s3s-fs server over a temporary directory; killed, and its directory
/// removed, when dropped (also on panic).
pub struct S3sFs {
    bin: PathBuf,
    /// The served directory: `root/<bucket>/<key>`.
    pub root: tempfile::TempDir,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The access key.
    pub access_key: &'static str,
    /// The secret key.
    pub secret_key: &'static str,
    child: Option<std::process::Child>,
}

impl S3sFs {
    /// Starts a server with one bucket; `None` when s3s-fs is not
    /// installed (see [`tool`]).
    pub fn start(bucket: &str, test: &str) -> Option<S3sFs> {
        let bin = tool(Tool::S3sFs, test)?;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut s = S3sFs { bin, root, addr, access_key: "AKIDCALLLOGTEST", secret_key: "calllog-test-secret-key", child: None };
        s.restart();
        Some(s)
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where an object is stored.
    pub fn object(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// Stops the server (an outage); [`S3sFs::restart`] brings it back on
    /// the same address with the same data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let child = std::process::Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.addr.port().to_string()])
            .args(["--access-key", self.access_key, "--secret-key", self.secret_key])
            .arg(self.root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let addr = self.addr;
        super::support::poll_until(std::time::Duration::from_secs(20), "s3s-fs to accept connections", || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).ok()
        });
    }

    /// Writes the credential files `[export.s3]` reads into `dir`; returns
    /// (access key file, secret key file).
    pub fn credential_files(&self, dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let (a, s) = (dir.join("s3-access-key"), dir.join("s3-secret-key"));
        std::fs::write(&a, format!("{}\n", self.access_key)).unwrap();
        std::fs::write(&s, format!("{}\n", self.secret_key)).unwrap();
        (a, s)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.stop();
    }
}
