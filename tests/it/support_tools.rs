//! The real external services some tests talk to (installed once by
//! `scripts/test-tools.sh` into a cache outside the repository), found
//! through their variables or the default cache paths; and the s3s-fs
//! harness (an S3-compatible server over a directory, on loopback).
//!
//! A test whose tool is missing prints `SKIPPED: <tool> not installed (run
//! scripts/test-tools.sh)` and returns, unless `CALLLOG_REQUIRE_TOOLS=1`
//! (CI), where it fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The test tools: (name, variable naming its binary, path under the
/// cache directory), as `scripts/test-tools.sh` installs them.
const TOOLS: [(&str, &str, &str); 3] = [
    ("s3s-fs", "CALLLOG_S3S_FS", "s3s-fs-0.14.1/bin/s3s-fs"),
    ("tansu", "CALLLOG_TANSU", "tansu-0.6.0/bin/tansu"),
    ("python", "CALLLOG_TOOLS_PYTHON", "python/bin/python"),
];

/// The cache directory: `$CALLLOG_TOOLS_DIR`, else
/// `~/.cache/calllog-bridge-tools`.
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("CALLLOG_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/calllog-bridge-tools")))
}

/// Where tool `name` (`s3s-fs`, `tansu`, `python`: the tools virtualenv's)
/// is: its variable, else the cache path. `None` after printing the
/// SKIPPED line, unless tools are required ([`tools_required`]), where it
/// panics.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let (_, var, cached) = TOOLS.iter().find(|t| t.0 == name).unwrap_or_else(|| panic!("unknown test tool {name:?}"));
    let path = std::env::var_os(var).map(PathBuf::from).or_else(|| cache_dir().map(|c| c.join(cached)));
    match path {
        Some(p) if p.is_file() => Some(p),
        _ => {
            skip_or_fail(&format!("{name} not installed (run scripts/test-tools.sh)"));
            None
        }
    }
}

/// `CALLLOG_REQUIRE_TOOLS=1` (CI): a missing tool fails the test.
pub fn tools_required() -> bool {
    std::env::var("CALLLOG_REQUIRE_TOOLS").as_deref() == Ok("1")
}

/// Prints `SKIPPED: <why>`, or panics when tools are required.
pub fn skip_or_fail(why: &str) {
    if tools_required() {
        panic!("{why}; CALLLOG_REQUIRE_TOOLS=1 requires it");
    }
    eprintln!("SKIPPED: {why}");
}

/// A free port on loopback (bound, then released just before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An s3s-fs server over a temporary directory; killed, and its directory
/// removed, when dropped (also on panic).
pub struct S3sFs {
    bin: PathBuf,
    /// The served directory: `root/<bucket>/<key>`.
    pub root: tempfile::TempDir,
    /// Its address.
    pub addr: SocketAddr,
    /// The access key.
    pub access_key: &'static str,
    /// The secret key.
    pub secret_key: &'static str,
    child: Option<Child>,
}

impl S3sFs {
    /// Starts a server with one bucket; `None` when s3s-fs is not
    /// installed (see [`find_tool`]).
    pub fn start(bucket: &str) -> Option<S3sFs> {
        let bin = find_tool("s3s-fs")?;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
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
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.addr.port().to_string()])
            .args(["--access-key", self.access_key, "--secret-key", self.secret_key])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let addr = self.addr;
        super::support::poll_until(Duration::from_secs(20), "s3s-fs to accept connections", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        });
    }

    /// Writes the credential files `[export.s3]` reads into `dir`; returns
    /// (access key file, secret key file).
    pub fn credential_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
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
