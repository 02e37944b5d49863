//! Running as a systemd service: the unit file agrees with the code, the
//! packaged config is valid, and the binary speaks sd_notify, logs for the
//! journal, reloads on SIGHUP and drains on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use calllog_bridge::bridge::DRAIN_GRACE;
use calllog_bridge::config::{Config, EXIT_CONFIG};

use crate::support;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("systemd/calllog-bridge.service")).expect("read unit")
}

/// The value of `key=` in the unit's `[Service]` section (last one wins, as
/// systemd reads it).
fn unit_value(key: &str) -> Option<String> {
    let text = unit_text();
    let mut in_service = false;
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                found = Some(v.trim().to_string());
            }
        }
    }
    found
}

/// Seconds in a systemd time span like `30s`, `1min 30s`, `90`.
fn span_secs(v: &str) -> u64 {
    let mut total = 0;
    for part in v.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().expect("number in time span");
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "min" | "m" => n * 60,
            "h" => n * 3600,
            other => panic!("unit {other:?} in {v:?}"),
        };
    }
    total
}

#[test]
fn unit_does_not_restart_on_a_config_error_or_damaged_state() {
    let v = unit_value("RestartPreventExitStatus").expect("RestartPreventExitStatus=");
    let codes: Vec<&str> = v.split_whitespace().collect();
    assert!(codes.contains(&EXIT_CONFIG.to_string().as_str()), "the unit must name the config-error exit code: {v}");
    let damaged = calllog_bridge::checkpoint::EXIT_DAMAGED_STATE.to_string();
    assert!(codes.contains(&damaged.as_str()), "the unit must name the damaged-state exit code: {v}");
    assert_eq!(unit_value("Restart").as_deref(), Some("on-failure"));
    assert_eq!(unit_value("Type").as_deref(), Some("notify"));
    assert_eq!(unit_value("ExecReload").as_deref(), Some("/bin/kill -HUP $MAINPID"));
}

#[test]
fn unit_stop_timeout_exceeds_the_drain_grace() {
    let cfg = Config::from_toml(
        "[[source]]\npaths = [\"/x/*.log\"]\n[upstream]\nurl = \"http://127.0.0.1:1/\"\n",
        Path::new("/etc/calllog-bridge/config.toml"),
    )
    .expect("config with upstream defaults");
    let upstream_grace = cfg.sinks.get::<calllog_bridge::sink::upstream::UpstreamSink>().expect("upstream").delivery.shutdown_grace;
    let stop = Duration::from_secs(span_secs(&unit_value("TimeoutStopSec").expect("TimeoutStopSec=")));
    // The drain (DRAIN_GRACE for the sinks, the upstream's own grace inside
    // it) plus time for the final checkpoint must fit before systemd kills.
    let need = DRAIN_GRACE.max(upstream_grace) + Duration::from_secs(10);
    assert!(stop >= need, "TimeoutStopSec={stop:?} must be at least {need:?} (drain grace {DRAIN_GRACE:?} + margin)");
    let watchdog = span_secs(&unit_value("WatchdogSec").expect("WatchdogSec="));
    assert!(watchdog >= 10, "a WatchdogSec of {watchdog}s is too tight for a busy host");
}

#[test]
fn packaged_config_is_valid() {
    let path = repo().join("packaging/config.toml");
    // On a host laid out as the package leaves it (here under a scratch
    // root): the state directory, and Local Edition's log directory.
    let root = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(&path).expect("read packaging/config.toml");
    let moved = root.path().join("config.toml");
    std::fs::write(&moved, support::relocate_config(&text, root.path())).expect("write config");
    std::fs::create_dir_all(root.path().join("var/lib/calllog-bridge")).expect("state dir");
    let logs = root.path().join("mnt/data/trafficmanager/enriched/access");
    std::fs::create_dir_all(&logs).expect("log dir");
    std::fs::write(logs.join("access.log"), "").expect("log file");
    let out = support::run(&["check-config", "-c", moved.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "check-config failed: {}", String::from_utf8_lossy(&out.stderr));
    let cfg = Config::load(&path).expect("load");
    assert_eq!(cfg.state_dir, Path::new("/var/lib/calllog-bridge"), "state_dir must be the unit's StateDirectory=");
    assert!(cfg.status.listen.ip().is_loopback(), "status must bind loopback by default");
}

/// Runs `systemd-analyze` when it is installed (it is on the project's
/// machines and in CI); prints why when it is not.
fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("systemd-analyze not available ({e}): unit checks left to scripts/ci-packaging.sh");
            None
        }
    }
}

#[test]
fn unit_verifies_and_rates_at_most_2_0() {
    // `verify` insists that ExecStart= exists: point it at the binary under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("calllog-bridge.service");
    let text = unit_text().replace("/usr/bin/calllog-bridge", support::bin().to_str().expect("utf-8 path"));
    std::fs::write(&unit, text).expect("write unit");
    let unit = unit.to_str().expect("utf-8 path");

    let Some(out) = systemd_analyze(&["verify", unit]) else { return };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");

    let Some(out) = systemd_analyze(&["security", "--offline=true", unit]) else { return };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for calllog-bridge.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
}

// ---------------------------------------------------------------------------
// The running binary: sd_notify, journal logs, SIGHUP, SIGTERM.
// ---------------------------------------------------------------------------

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::sync::mpsc;

/// A scratch installation: log directories, state, output, config.
struct Site {
    /// Holds everything; removed on drop.
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Appends `lines` simulated LE 6 lines (seeded) to `<sub>/access.log`.
    fn simulate(&self, sub: &str, lines: u32, seed: u64) {
        self.simulate_format(sub, "le6", lines, seed);
    }

    /// Appends `lines` simulated lines of `format` (seeded) under `<sub>`.
    fn simulate_format(&self, sub: &str, format: &str, lines: u32, seed: u64) {
        let out = support::run(&[
            "simulate",
            "--format",
            format,
            "--dir",
            self.path(sub).to_str().expect("utf-8"),
            "--rate",
            &lines.to_string(),
            "--duration",
            "1",
            "--burst",
            "--seed",
            &seed.to_string(),
        ]);
        assert!(out.status.success(), "simulate: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The request_uuids in the LE files under `subs`, parsed by the binary
    /// itself (`parse`), i.e. what the bridge must deliver.
    fn expected(&self, subs: &[&str]) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        for sub in subs {
            let file = self.path(sub).join("access.log");
            let out = support::run(&["parse", "--no-progress", file.to_str().expect("utf-8")]);
            assert!(out.status.success(), "parse: {}", String::from_utf8_lossy(&out.stderr));
            let n_before = all.len();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                all.insert(uuid_of(line));
            }
            assert!(all.len() > n_before, "no records parsed from {}", file.display());
        }
        all
    }

    /// Writes the config with these sources (sub-directories).
    fn write_config(&self, subs: &[&str]) -> PathBuf {
        let mut text = format!(
            "state_dir = {:?}\nlog_level = \"info\"\n\n[file_output]\npath = {:?}\nfsync_interval_ms = 50\n\n[status]\nenabled = false\n",
            self.path("state"),
            self.path("out.ndjson"),
        );
        for sub in subs {
            text += &format!("\n[[source]]\nname = {sub:?}\npaths = [{:?}]\nformat = \"le6\"\n", self.path(sub).join("*.log"));
        }
        let p = self.path("config.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// Every delivered request_uuid with how often it was delivered.
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        let text = std::fs::read_to_string(self.path("out.ndjson")).unwrap_or_default();
        // Only complete lines: the sink may be mid-write.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for line in complete.lines().filter(|l| !l.is_empty()) {
            *counts.entry(uuid_of(line)).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until every uuid in `want` has been delivered.
    fn wait_delivered(&self, want: &BTreeSet<String>, what: &str) {
        support::poll_until(Duration::from_secs(30), what, || {
            let got = self.delivered();
            want.iter().all(|u| got.contains_key(u)).then_some(())
        });
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }
}

fn uuid_of(ndjson_line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(ndjson_line).unwrap_or_else(|e| panic!("bad record line {ndjson_line:?}: {e}"));
    v["request_uuid"].as_str().unwrap_or_else(|| panic!("no request_uuid in {ndjson_line}")).to_string()
}

/// `run --config` with stderr to `<site>/stderr.log` (appended), the
/// environment cleaned of variables that change logging or notification.
fn start(site: &Site, config: &Path, env: &[(&str, &str)]) -> Child {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(site.path("stderr.log")).expect("stderr file");
    let mut cmd = support::cmd();
    cmd.args(["run", "--config", config.to_str().expect("utf-8")])
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start calllog-bridge run")
}

/// Sends a signal with the `kill` command (the crate forbids unsafe code,
/// so no `libc::kill`).
fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().expect("run kill");
    assert!(st.success(), "kill -{sig} {} failed", child.id());
}

/// SIGHUP, then waits until the bridge says it is reloading and ready again.
fn reload(child: &Child, notify: &mut NotifySocket) {
    signal(child, "HUP");
    notify.wait_for("RELOADING=1", Duration::from_secs(10));
    notify.wait_for("READY=1", Duration::from_secs(30));
}

/// Waits for the process to exit and returns its exit code.
fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let status = support::poll_until(within, "the bridge to exit", || child.try_wait().expect("try_wait"));
    status.code().unwrap_or_else(|| panic!("killed by a signal: {status:?}"))
}

/// A stand-in for systemd's notification socket: collects the datagrams.
struct NotifySocket {
    /// `NOTIFY_SOCKET` for the child.
    path: PathBuf,
    /// Each datagram as text.
    rx: mpsc::Receiver<String>,
    /// Everything received so far.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(site: &Site) -> NotifySocket {
        let path = site.path("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    break;
                }
            }
        });
        NotifySocket { path, rx, seen: Vec::new() }
    }

    /// Waits for a datagram containing the line `want` (e.g. `READY=1`);
    /// returns that datagram.
    fn wait_for(&mut self, want: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(msg) => {
                    self.seen.push(msg.clone());
                    if msg.lines().any(|l| l == want) {
                        return msg;
                    }
                }
                Err(_) => panic!("no {want} within {within:?}; received {:?}", self.seen),
            }
        }
    }
}

#[test]
fn sighup_applies_a_valid_config_and_refuses_an_invalid_one() {
    let site = Site::new();
    site.simulate("a", 40, 1);
    site.simulate("b", 40, 2);
    let config = site.write_config(&["a"]);
    let mut notify = NotifySocket::bind(&site);
    let mut child = start(&site, &config, &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", Duration::from_secs(30));
    site.wait_delivered(&site.expected(&["a"]), "source a delivered");

    // A valid new config: a second source. Applied live, announced to systemd.
    site.write_config(&["a", "b"]);
    reload(&child, &mut notify);
    site.simulate("a", 20, 3);
    site.wait_delivered(&site.expected(&["a", "b"]), "sources a and b delivered after the reload");
    assert!(site.stderr().contains("configuration reloaded"), "{}", site.stderr());

    // An invalid config: refused with the key named, the old one keeps running.
    std::fs::write(&config, std::fs::read_to_string(&config).expect("read").replace("format = \"le6\"", "format = \"le7\""))
        .expect("write");
    reload(&child, &mut notify);
    support::poll_until(Duration::from_secs(10), "the refusal in the log", || site.stderr().contains("reload refused").then_some(()));
    let log = site.stderr();
    let refusal = log.lines().find(|l| l.contains("reload refused")).expect("refusal line");
    assert!(refusal.contains("format") && refusal.contains("le7"), "the refusal must name the key and value on one line: {refusal}");
    assert!(child.try_wait().expect("try_wait").is_none(), "an invalid reload must not stop the bridge");
    site.simulate("b", 20, 4);
    site.wait_delivered(&site.expected(&["a", "b"]), "source b still followed after the refused reload");

    signal(&child, "TERM");
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());

    let delivered = site.delivered();
    let repeated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "records delivered more than once: {repeated:?}");
    assert_eq!(delivered.keys().cloned().collect::<BTreeSet<_>>(), site.expected(&["a", "b"]), "lost or unexpected records");
}

#[test]
fn sigterm_drains_and_a_restart_loses_and_repeats_nothing() {
    let site = Site::new();
    site.simulate("a", 3000, 11);
    let config = site.write_config(&["a"]);
    let mut child = start(&site, &config, &[]);
    // Stop while records are still flowing.
    support::poll_until(Duration::from_secs(30), "the first records", || (!site.delivered().is_empty()).then_some(()));
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());

    let first = site.delivered();
    let checkpoints = std::fs::read_to_string(site.path("state/checkpoints.json")).expect("final checkpoint written");
    let doc: serde_json::Value = serde_json::from_str(&checkpoints).expect("checkpoint JSON");
    let offset = doc["files"][0]["offset"].as_u64().expect("an offset");
    assert!(offset > 0, "the final checkpoint must cover what was delivered: {checkpoints}");

    // Restart, with more lines written while it was down.
    site.simulate("a", 200, 12);
    let mut child = start(&site, &config, &[]);
    let all = site.expected(&["a"]);
    site.wait_delivered(&all, "everything after the restart");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());

    let delivered = site.delivered();
    let repeated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "{} records delivered twice across the restart (first run delivered {})", repeated.len(), first.len());
    assert_eq!(delivered.keys().cloned().collect::<BTreeSet<_>>(), all, "lost or unexpected records");
}

#[test]
fn pings_the_watchdog_when_systemd_asks() {
    let site = Site::new();
    site.simulate("a", 5, 21);
    let config = site.write_config(&["a"]);
    let mut notify = NotifySocket::bind(&site);
    // WATCHDOG_PID must be the bridge's own pid: a shell exports its pid and
    // execs the binary, which keeps it.
    let stderr = std::fs::File::create(site.path("stderr.log")).expect("stderr file");
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ WATCHDOG_USEC=200000 exec \"$0\" run --config \"$1\""])
        .arg(support::bin())
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start");
    let ready = notify.wait_for("READY=1", Duration::from_secs(30));
    assert!(ready.lines().any(|l| l.starts_with("STATUS=")), "READY=1 should carry a STATUS= line: {ready:?}");
    // 200 ms watchdog: pings every 100 ms; three arrive well within 5 s.
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    }
    signal(&child, "TERM");
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());
}

#[test]
fn logs_for_the_journal_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let site = Site::new();
    site.simulate("a", 5, 31);
    let config = site.write_config(&["a"]);

    // JOURNAL_STREAM names the stream stderr is connected to: here a file.
    std::fs::File::create(site.path("stderr.log")).expect("create");
    let meta = std::fs::metadata(site.path("stderr.log")).expect("stat");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = start(&site, &config, &[("JOURNAL_STREAM", &stream)]);
    site.wait_delivered(&site.expected(&["a"]), "records");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());

    let log = site.stderr();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "expected start and stop lines: {log}");
    for l in &lines {
        let prio = l.strip_prefix('<').and_then(|r| r.split_once('>')).map(|(p, _)| p);
        assert!(matches!(prio, Some("3" | "4" | "5" | "6" | "7")), "no syslog priority prefix: {l:?}");
        assert!(!l.contains('\x1b'), "colour in {l:?}");
        assert!(!looks_timestamped(l), "timestamp in a journal line: {l:?}");
    }

    // Not the journal (JOURNAL_STREAM names another stream): timestamps, no prefix.
    let site2 = Site::new();
    site2.simulate("a", 5, 32);
    let config2 = site2.write_config(&["a"]);
    let mut child = start(&site2, &config2, &[("JOURNAL_STREAM", "1:1")]);
    site2.wait_delivered(&site2.expected(&["a"]), "records");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site2.stderr());
    let log = site2.stderr();
    let first = log.lines().next().expect("a log line");
    assert!(looks_timestamped(first) && !first.starts_with('<'), "terminal-style line expected: {first:?}");
}

/// True when the line holds an RFC 3339 date (`2026-11-25T...`).
fn looks_timestamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(11).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[5..7].iter().all(u8::is_ascii_digit)
            && w[7] == b'-'
            && w[8..10].iter().all(u8::is_ascii_digit)
            && w[10] == b'T'
    })
}

/// The HTTP status a WebSocket upgrade request for `/stream?key=KEY` gets.
fn upgrade_status(addr: &str, key: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the channel");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!(
        "GET /stream?key={key} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send upgrade request");
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).expect("read the status line");
        assert!(n > 0, "connection closed before a status line: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got).into_owned();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"))
}

#[test]
fn sighup_applies_a_new_channel_token_from_its_file() {
    let site = Site::new();
    site.simulate("a", 5, 41);
    let config = site.write_config(&["a"]);
    let token_file = site.path("channel.token");
    std::fs::write(&token_file, "old-token-0123456789\n").expect("write token");
    let mut text = std::fs::read_to_string(&config).expect("read config");
    text += &format!("\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token_file:?}\n");
    std::fs::write(&config, text).expect("write config");

    let mut notify = NotifySocket::bind(&site);
    let mut child = start(&site, &config, &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", Duration::from_secs(30));
    let addr = support::poll_until(Duration::from_secs(10), "the channel's address in the log", || {
        let log = site.stderr();
        let rest = log.split("listening on ws://").nth(1)?;
        Some(rest.split('/').next()?.to_string())
    });
    assert_eq!(upgrade_status(&addr, "old-token-0123456789"), 101);
    assert_eq!(upgrade_status(&addr, "new-token-9876543210"), 401);

    // Only the token file changes: a reload picks up its new content.
    std::fs::write(&token_file, "new-token-9876543210\n").expect("write token");
    reload(&child, &mut notify);
    assert_eq!(upgrade_status(&addr, "new-token-9876543210"), 101);
    assert_eq!(upgrade_status(&addr, "old-token-0123456789"), 401);
    assert!(!site.stderr().contains("token-0123456789") && !site.stderr().contains("token-9876543210"), "a token was logged");

    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());
}

#[test]
fn sighup_applies_new_lookup_tables_to_records_read_after_it() {
    let site = Site::new();
    let raw = site.path("raw");
    let simulate_raw = |seed: u64| site.simulate_format("raw", "le-json", 10, seed);
    // Raw LE 5 JSON lines carry ids but no names: only lookups fill them.
    simulate_raw(51);
    let services = repo().join("examples/lookups/services.csv");
    let base = format!(
        "state_dir = {:?}\n[file_output]\npath = {:?}\nfsync_interval_ms = 50\n[status]\nenabled = false\n\
         [[source]]\nname = \"raw\"\npaths = [{:?}]\nformat = \"le-json\"\n",
        site.path("state"),
        site.path("out.ndjson"),
        raw.join("*.log"),
    );
    let config = site.path("config.toml");
    std::fs::write(&config, &base).expect("write config");

    let records = || -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(site.path("out.ndjson")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete.lines().map(|l| serde_json::from_str(l).expect("record JSON")).collect()
    };
    let mut notify = NotifySocket::bind(&site);
    let mut child = start(&site, &config, &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", Duration::from_secs(30));
    let before = support::poll_until(Duration::from_secs(30), "the first 10 records", || {
        let r = records();
        (r.len() >= 10).then_some(r)
    });
    assert!(before.iter().all(|r| r["service_name"] == ""), "no lookups yet, so no names: {:?}", before[0]);

    std::fs::write(&config, format!("{base}[enrich]\nlookups = [{services:?}]\n")).expect("write config");
    reload(&child, &mut notify);
    simulate_raw(52);
    let after = support::poll_until(Duration::from_secs(30), "10 more records", || {
        let r = records();
        (r.len() >= 20).then_some(r)
    });
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());

    assert_eq!(records().len(), 20, "records repeated or lost across the reload");
    let old: BTreeSet<_> = before.iter().map(|r| r["request_uuid"].clone().to_string()).collect();
    let new: Vec<_> = after.iter().filter(|r| !old.contains(&r["request_uuid"].to_string())).collect();
    assert_eq!(new.len(), 10);
    for r in new {
        let name = r["service_name"].as_str().unwrap_or("");
        assert!(!name.is_empty(), "a record read after the reload lacks its service name: {r}");
    }
}

#[test]
fn sighup_switches_upstream_url_and_credentials_losing_and_repeating_nothing() {
    use crate::support_upstream::{Collector, Format};
    let site = Site::new();
    let (first_collector, second_collector) = (Collector::start(Format::Ndjson), Collector::start(Format::Ndjson));
    site.simulate("a", 30, 51);
    let config = site.write_config(&["a"]);
    let base = std::fs::read_to_string(&config).expect("read config");
    let token_file = site.path("upstream.token");
    let with_upstream = |url: &str| {
        format!("{base}\n[upstream]\nurl = {url:?}\nbearer_token_file = {token_file:?}\nflush_interval_ms = 20\ncompression = \"none\"\n")
    };
    std::fs::write(&token_file, "first-secret-1111\n").expect("write token");
    std::fs::write(&config, with_upstream(&first_collector.url("/in"))).expect("write config");

    let mut notify = NotifySocket::bind(&site);
    let mut child = start(&site, &config, &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", Duration::from_secs(30));
    let first = site.expected(&["a"]);
    support::poll_until(Duration::from_secs(30), "the first records upstream", || {
        let got = first_collector.delivered_set();
        first.iter().all(|u| got.contains(u)).then_some(())
    });

    // A new collector URL, and a new token (only the token file's content).
    std::fs::write(&token_file, "second-secret-2222\n").expect("write token");
    std::fs::write(&config, with_upstream(&second_collector.url("/in"))).expect("write config");
    reload(&child, &mut notify);
    site.simulate("a", 30, 52);
    let all = site.expected(&["a"]);
    let second: BTreeSet<String> = all.difference(&first).cloned().collect();
    assert!(!second.is_empty());
    support::poll_until(Duration::from_secs(30), "the later records at the new URL", || {
        let got = second_collector.delivered_set();
        second.iter().all(|u| got.contains(u)).then_some(())
    });
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());

    for (c, want) in [(&first_collector, "Bearer first-secret-1111"), (&second_collector, "Bearer second-secret-2222")] {
        for r in c.received() {
            assert_eq!(r.headers.get("authorization").map(String::as_str), Some(want), "credentials of a request to {}", r.path);
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for u in first_collector.delivered_uuids().into_iter().chain(second_collector.delivered_uuids()) {
        *counts.entry(u).or_insert(0) += 1;
    }
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), all, "every record upstream, nothing else");
    assert!(counts.values().all(|&n| n == 1), "a record was sent twice: {:?}", counts.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>());
    let log = site.stderr();
    assert!(log.contains("upstream: settings reloaded"), "{log}");
    assert!(!log.contains("first-secret") && !log.contains("second-secret"), "a token was logged");
}

#[test]
fn sighup_while_reading_waits_on_a_full_sink_queue_loses_and_repeats_nothing() {
    use crate::support_upstream::{Collector, Format};
    let site = Site::new();
    let collector = Collector::start(Format::Ndjson);
    // Upstream down, no spool, one request at a time: the sink stops taking
    // batches, its queue fills and the reader waits to hand over a batch.
    collector.set_down(true);
    site.simulate("a", 8000, 61);
    let want = site.expected(&["a"]);
    let config = site.path("config.toml");
    let text = |sources: &[&str]| {
        let mut t = format!(
            "state_dir = {:?}\nlog_level = \"info\"\n\n[status]\nlisten = \"127.0.0.1:0\"\nstalled_after_secs = 1\n\n\
             [upstream]\nurl = {:?}\nspool_max_bytes = 0\nmax_in_flight = 1\nbatch_max_records = 50\nflush_interval_ms = 20\n\
             retry_initial_ms = 20\nretry_max_ms = 100\ncompression = \"none\"\n",
            site.path("state"),
            collector.url("/in"),
        );
        for sub in sources {
            t += &format!("\n[[source]]\nname = {sub:?}\npaths = [{:?}]\nformat = \"le6\"\n", site.path(sub).join("*.log"));
        }
        t
    };
    std::fs::write(&config, text(&["a"])).expect("write config");
    let mut notify = NotifySocket::bind(&site);
    let mut child = start(&site, &config, &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", Duration::from_secs(30));
    let addr_file = site.path("state/status.addr");
    let addr = support::poll_until(Duration::from_secs(10), "status.addr", || {
        std::fs::read_to_string(&addr_file).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    });
    // Wait until reading has stopped with data left: the reader is parked
    // on the full queue.
    support::poll_until(Duration::from_secs(30), "the reader to wait on the full queue", || {
        let (_, body) = crate::lag::get(&format!("http://{addr}/status"));
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let f = v["files"].as_array()?.iter().find(|f| f["path"].as_str().is_some_and(|p| p.ends_with("access.log")))?.clone();
        (f["state"] == "stalled" && f["bytes_behind"].as_u64()? > 0).then_some(())
    });

    // A reload that restarts the reading side (a new source) meanwhile.
    site.simulate("b", 5, 62);
    std::fs::write(&config, text(&["a", "b"])).expect("write config");
    reload(&child, &mut notify);

    collector.set_down(false);
    let all: BTreeSet<String> = want.union(&site.expected(&["b"])).cloned().collect();
    support::poll_until(Duration::from_secs(60), "every record upstream", || {
        let got = collector.delivered_set();
        all.iter().all(|u| got.contains(u)).then_some(())
    });
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for u in collector.delivered_uuids() {
        *counts.entry(u).or_insert(0) += 1;
    }
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), all);
    let repeated: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(repeated.is_empty(), "{} records sent twice, e.g. {:?}", repeated.len(), &repeated[..repeated.len().min(3)]);
    // The durable offset reached the end of the file.
    let ck: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(site.path("state/checkpoints.json")).unwrap()).unwrap();
    let size = std::fs::metadata(site.path("a/access.log")).unwrap().len();
    assert!(ck["files"].as_array().unwrap().iter().any(|f| f["offset"] == size), "checkpoint short of {size}: {ck}");
}

#[test]
fn sighup_moves_the_archive_and_changes_its_shape_losing_and_repeating_nothing() {
    let site = Site::new();
    site.simulate("a", 40, 71);
    let config = site.write_config(&["a"]);
    let mut notify = NotifySocket::bind(&site);
    let mut child = start(&site, &config, &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", Duration::from_secs(30));
    let first = site.expected(&["a"]);
    site.wait_delivered(&first, "the first records in the archive");

    let text = std::fs::read_to_string(&config).expect("read config");
    let moved = site.path("archive2/out.json");
    let text = text.replace(&format!("path = {:?}", site.path("out.ndjson")), &format!("path = {moved:?}\nshape = \"ecls\""));
    assert!(text.contains("archive2"), "{text}");
    std::fs::write(&config, text).expect("write config");
    reload(&child, &mut notify);
    site.simulate("a", 40, 72);
    let all = site.expected(&["a"]);
    let second: BTreeSet<String> = all.difference(&first).cloned().collect();
    let moved_uuids = || -> Vec<String> {
        let text = std::fs::read_to_string(&moved).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
                assert_eq!(v["data"].as_array().map(Vec::len), Some(1), "ecls shape: {l}");
                v["data"][0]["request_uuid"].as_str().expect("request_uuid").to_string()
            })
            .collect()
    };
    support::poll_until(Duration::from_secs(30), "the later records in the moved archive", || {
        let got: BTreeSet<String> = moved_uuids().into_iter().collect();
        second.iter().all(|u| got.contains(u)).then_some(())
    });
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(40)), 0, "{}", site.stderr());

    let old = site.delivered();
    assert_eq!(old.keys().cloned().collect::<BTreeSet<_>>(), first, "the old archive holds exactly the records before the reload");
    assert!(old.values().all(|&n| n == 1));
    let new = moved_uuids();
    assert_eq!(new.len(), second.len(), "nothing twice in the new archive");
    assert_eq!(new.into_iter().collect::<BTreeSet<_>>(), second);
    assert!(site.stderr().contains("archiving to the new path"), "{}", site.stderr());
}
