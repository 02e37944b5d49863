//! A running bridge over a scratch directory, for the tailing tests: log
//! files under `logs/`, state under `state/`, the `[file_output]` archive
//! under `out/` (read back and counted by `request_uuid`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::support;

/// How the archive spells the uuid key (NDJSON shape).
const KEY: &str = "\"request_uuid\":\"";

/// How long a test waits for records before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A scratch directory with a bridge config.
pub struct Env {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// Where the tests write log files.
    pub logs: PathBuf,
    /// The bridge's state_dir.
    pub state: PathBuf,
    /// The archive file.
    pub out: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The running bridge.
    pub child: Option<Child>,
    /// Where the bridge's stderr goes (appended across restarts).
    pub log: PathBuf,
}

/// One le-json access-log line (with its newline) for `uuid`.
pub fn line(uuid: &str) -> String {
    format!(
        "{{\"request_uuid\":\"{uuid}\",\"request_time\":\"2024-01-01T00:00:00Z\",\"api_key\":\"k1\",\"method\":\"GET\",\"uri\":\"/v1/items?id={uuid}\",\"status\":\"200\",\"bytes\":\"113\",\"exec_time\":\"0.012\"}}\n"
    )
}

/// `n` uuids with a prefix.
pub fn uuids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:06}")).collect()
}

/// The lines for a list of uuids.
pub fn lines(ids: &[String]) -> String {
    ids.iter().map(|u| line(u)).collect()
}

impl Env {
    /// A scratch directory; `source_extra` is added to the `[[source]]`
    /// section (e.g. `poll_interval_ms = 50`), `glob` is relative to `logs/`.
    pub fn new(glob: &str, source_extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        let state = dir.path().join("state");
        let out = dir.path().join("out/out.ndjson");
        fs::create_dir_all(&logs).unwrap();
        let config = dir.path().join("bridge.toml");
        let text = format!(
            "state_dir = {state:?}\nlog_level = \"debug\"\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le-json\"\nrescan_interval_ms = 500\n{source_extra}\n\n[file_output]\npath = {out:?}\nfsync_interval_ms = 20\n\n[status]\nlisten = \"127.0.0.1:0\"\n",
            state = state.to_string_lossy(),
            glob = logs.join(glob).to_string_lossy(),
            out = out.to_string_lossy(),
        );
        fs::write(&config, text).unwrap();
        let log = dir.path().join("bridge.log");
        Env { dir, logs, state, out, config, child: None, log }
    }

    /// Path of a log file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    /// Starts the bridge and waits until it runs.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let running = |s: &str| s.matches("bridge running").count();
        let before = running(&self.log_text());
        self.child = Some(support::spawn_bridge(&self.config, &self.log));
        support::poll_until(DEADLINE, "bridge to start", || (running(&self.log_text()) > before).then_some(()));
    }

    /// Stops the bridge with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = support::terminate(&mut child, DEADLINE);
        assert!(status.success(), "bridge exited with {status}; log:\n{}", self.log_text());
    }

    /// Kills the bridge with SIGKILL.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The bridge's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Appends text to a log file (creating it).
    pub fn append(&self, name: &str, text: &str) {
        let mut f = OpenOptions::new().create(true).append(true).open(self.path(name)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Every archived record's uuid with how often it came out.
    pub fn delivered(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        let mut files = vec![self.out.clone()];
        for n in 1..10 {
            let mut s = self.out.as_os_str().to_owned();
            s.push(format!(".{n}"));
            files.push(PathBuf::from(s));
        }
        for f in files {
            let Ok(text) = fs::read_to_string(&f) else { continue };
            for l in text.lines() {
                // A line being written may be incomplete: skip it.
                if !l.ends_with('}') {
                    continue;
                }
                let Some(i) = l.find(KEY) else { continue };
                let rest = &l[i + KEY.len()..];
                let Some(end) = rest.find('"') else { continue };
                *counts.entry(rest[..end].to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Waits until every uuid of `ids` came out at least once.
    pub fn wait_for(&self, ids: &[String]) -> HashMap<String, usize> {
        let mut missing: Vec<String>;
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let got = self.delivered();
            missing = ids.iter().filter(|u| !got.contains_key(*u)).cloned().collect::<Vec<_>>();
            if missing.is_empty() {
                return got;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} of {} records never came out (first: {:?}); log:\n{}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(5)],
            tail(&self.log_text(), 400)
        );
    }

    /// Waits for `ids`, then checks that every record came out exactly
    /// once and nothing else came out.
    pub fn expect_exactly(&self, ids: &[String]) {
        self.wait_for(ids);
        // Let anything that would come out twice arrive.
        self.settle();
        let got = self.delivered();
        let dups: Vec<_> = got.iter().filter(|(_, n)| **n > 1).map(|(u, n)| format!("{u} x{n}")).take(10).collect();
        assert!(dups.is_empty(), "records came out more than once: {dups:?}; log:\n{}", tail(&self.log_text(), 60));
        let extra: Vec<_> = got.keys().filter(|u| !ids.contains(u)).take(10).collect();
        assert!(extra.is_empty(), "unexpected records: {extra:?}");
    }

    /// Waits until the archive stops changing for a few fsync intervals and
    /// the checkpoint file caught up, so late duplicates would show.
    pub fn settle(&self) {
        let stamp = || {
            let m = |p: &Path| fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
            (m(&self.out), m(&self.state.join("checkpoints.json")))
        };
        let mut last = stamp();
        let mut since = std::time::Instant::now();
        support::poll_until(DEADLINE, "output to settle", || {
            let now = stamp();
            if now != last {
                last = now;
                since = std::time::Instant::now();
            }
            // Well past the fsync interval, a checkpoint write and a rescan.
            (since.elapsed() >= Duration::from_millis(800)).then_some(())
        });
    }

    /// Waits until the out file exists with some records.
    pub fn wait_any(&self) {
        support::poll_until(DEADLINE, "first records", || (!self.delivered().is_empty()).then_some(()));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// gzip-compresses `src` to `dst` and deletes `src` (as logrotate does).
pub fn gzip(src: &Path, dst: &Path) {
    let data = fs::read(src).unwrap();
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(dst).unwrap(), flate2::Compression::fast());
    enc.write_all(&data).unwrap();
    enc.finish().unwrap().sync_all().unwrap();
    fs::remove_file(src).unwrap();
}
