//! `lag` against a real status server on 127.0.0.1:0 (started in-process
//! with a telemetry registry holding one file in each interesting state):
//! the table, `--json`, `--max-lag` exit codes, `--config` with the
//! `status.addr` file, `--watch`, and the "not running" answer.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calllog_bridge::config::StatusConfig;
use calllog_bridge::telemetry::{server, Telemetry};
use tokio_util::sync::CancellationToken;

use crate::support;

/// A status server running in this process; stopped on drop.
pub struct InProcess {
    /// The runtime serving it.
    rt: tokio::runtime::Runtime,
    /// Stops the server.
    stop: CancellationToken,
    /// The bound address.
    pub addr: SocketAddr,
    /// The registry it reports.
    pub telemetry: Telemetry,
}

impl InProcess {
    /// Serves `telemetry` with `cfg` (its `listen` is replaced by 127.0.0.1:0).
    pub fn start(telemetry: Telemetry, cfg: StatusConfig) -> InProcess {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let stop = CancellationToken::new();
        let cfg = StatusConfig { listen: "127.0.0.1:0".parse().unwrap(), ..cfg };
        let srv = rt.block_on(server::start(&cfg, telemetry.clone(), stop.clone())).unwrap();
        InProcess { rt, stop, addr: srv.addr, telemetry }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GET a path; returns the HTTP status and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        get(&format!("{}{path}", self.url()))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = &self.rt;
    }
}

/// GET `url` (blocking); returns the HTTP status and the body.
pub fn get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap().get(url).send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.text().await.unwrap())
    })
}

/// A registry with, at the real current time:
/// - `/le/a.log` caught up, 10 records 45 s late and one from 1.5 s in
///   the future (clock skew);
/// - `/le/b.log` idle for two minutes, its old records 10 minutes late;
/// - `/le/c.log` stalled: 1.5 MiB waiting, no read progress for 90 s;
/// - sink `upstream`: 4 records queued, the oldest observed 20 s ago.
pub fn fixture() -> Telemetry {
    let now = calllog_bridge::time::now_ms();
    let tel = Telemetry::new();
    let a = tel.file("/le/a.log");
    a.set_position_at(2048, 2048, now);
    a.sync_delays(now, (0..10).map(|_| Some(45_000)).chain([Some(-1500)]));
    // Written 15 s after the calls: 30 s of the 45 s is the sync's.
    a.written(now, (0..10).map(|_| Some(now - 30_000)));
    let b = tel.file("/le/b.log");
    b.set_position_at(4096, 4096, now - 120_000);
    b.sync_delays(now - 120_000, (0..5).map(|_| Some(600_000)));
    let c = tel.file("/le/c.log");
    c.set_position_at(1_572_864 + 100, 100, now - 90_000);
    let k = tel.sink("upstream");
    k.enqueued(7);
    k.set_oldest_pending(now - 20_000);
    k.delivered(3, now - 500, now - 380);
    tel.set_ready(true);
    tel
}

fn lag(args: &[&str]) -> Output {
    support::cmd().arg("lag").args(args).env_remove("http_proxy").env_remove("HTTP_PROXY").output().expect("run lag")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn table_shows_each_file_and_sink_in_human_units() {
    let srv = InProcess::start(fixture(), StatusConfig::default());
    let out = lag(&["--status-url", &srv.url()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let row =
        |path: &str| stdout.lines().find(|l| l.starts_with(path)).unwrap_or_else(|| panic!("no row for {path}:\n{stdout}")).to_string();
    let a = row("/le/a.log");
    assert!(a.contains("caught-up") && a.contains("45s") && a.contains("0 B") && a.contains("30s"), "{a}");
    assert!(stdout.contains("TRANSFER p95"), "{stdout}");
    let b = row("/le/b.log");
    assert!(b.contains("idle") && !b.contains("10m"), "an idle file shows no delay: {b}");
    let c = row("/le/c.log");
    assert!(c.contains("stalled 1m 3") && c.contains("1.5 MiB"), "{c}");
    let up = row("upstream");
    assert!(up.contains("20s") && up.contains("120ms"), "{up}");
    assert!(stdout.contains("1 negative delays"), "{stdout}");
    assert!(stdout.contains("ready"), "{stdout}");
}

#[test]
fn max_lag_exit_codes() {
    let srv = InProcess::start(fixture(), StatusConfig::default());
    let url = srv.url();
    let run = |limit: &str| {
        let out = lag(&["--status-url", &url, "--max-lag", limit]);
        (out.status.code(), text(&out.stderr))
    };
    // 45 s (a), 90 s stalled (c), 20 s undelivered: all under 2 minutes;
    // b's 10-minute delay is old (b is idle) and does not count.
    let (code, err) = run("2m");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run("1m");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/le/c.log") && err.contains("stalled") && !err.contains("/le/a.log") && !err.contains("/le/b.log"), "{err}");
    let (code, err) = run("30s");
    assert_eq!(code, Some(2));
    assert!(err.contains("/le/a.log: sync delay max 45s") && !err.contains("upstream"), "{err}");
    let (code, err) = run("10000ms");
    assert_eq!(code, Some(2));
    assert!(err.contains("sink upstream") && !err.contains("/le/b.log"), "{err}");
    let (code, err) = run("soon");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--max-lag"), "{err}");
}

#[test]
fn json_prints_the_status_document() {
    let srv = InProcess::start(fixture(), StatusConfig::default());
    let out = lag(&["--status-url", &format!("{}/status", srv.url()), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let files = v["files"].as_array().unwrap();
    let state = |p: &str| files.iter().find(|f| f["path"] == p).map(|f| f["state"].clone()).unwrap();
    assert_eq!(state("/le/a.log"), "caught-up");
    assert_eq!(state("/le/b.log"), "idle");
    assert_eq!(state("/le/c.log"), "stalled");
    let a = files.iter().find(|f| f["path"] == "/le/a.log").unwrap();
    assert_eq!(a["negative_delays"], 1);
    assert_eq!(a["sync_delay_ms"]["min"], -1500);
    assert_eq!(a["sync_delay_ms"]["p95"], 45_000);
    assert!(files.iter().find(|f| f["path"] == "/le/b.log").unwrap()["sync_delay_ms"].is_null());
    assert_eq!(v["sinks"][0]["queue_depth"], 4);
    assert_eq!(v["totals"]["files"], 3);
}

#[test]
fn not_running_is_said_clearly() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let out = lag(&["--status-url", &url]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("bridge is not running (no answer at {url})")), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn config_finds_the_bound_address_in_state_dir() {
    let srv = InProcess::start(fixture(), StatusConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("status.addr"), format!("{}\n", srv.addr)).unwrap();
    let cfg = dir.path().join("bridge.toml");
    std::fs::write(
        &cfg,
        "state_dir = \"state\"\n[[source]]\npaths = [\"logs/*.log\"]\n[file_output]\npath = \"out.ndjson\"\n[status]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = lag(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("/le/a.log"));
    // A config that does not load is a usage error naming the key.
    std::fs::write(&cfg, "state_dir = \"state\"\n[status]\nlisten = \"nowhere\"\n").unwrap();
    let out = lag(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("status.listen"), "{}", text(&out.stderr));
}

#[test]
fn watch_refreshes_until_interrupted() {
    let srv = InProcess::start(fixture(), StatusConfig::default());
    let mut child = support::cmd()
        .args(["lag", "--watch", "1", "--status-url", &srv.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut s = seen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    // Another file appears between two refreshes.
    srv.telemetry.file("/le/new.log");
    support::poll_until(Duration::from_secs(15), "two refreshes, the second with the new file", || {
        let s = seen.lock().unwrap();
        (s.matches("calllog-bridge ").count() >= 2 && s.contains("/le/new.log")).then_some(())
    });
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = support::poll_until(Duration::from_secs(10), "lag --watch to exit on SIGINT", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap();
}

/// The fixture plus a channel (one client, two refusals, one slow-consumer
/// close) and a services lookup table with `misses` misses.
fn fixture_with_channel_and_lookups(dir: &std::path::Path, misses: usize) -> Telemetry {
    use calllog_bridge::enrich::Enricher;
    use calllog_bridge::record::{Field, Record};
    use calllog_bridge::sink::channel::ChannelStats;
    let tel = fixture();
    let ch = ChannelStats::new(&tel);
    ch.set_endpoint(calllog_bridge::telemetry::ChannelInfo { listen: "127.0.0.1:8790".into(), tls: false, path: "/stream".into() });
    ch.connections_accepted.add(4);
    ch.connections_active.inc();
    ch.refused_unauthorized.inc();
    ch.refused_full.inc();
    ch.closed_slow_consumer.inc();
    let services = dir.join("services.csv");
    std::fs::write(&services, "service_id,service_name\nsvc1,Orders\n").unwrap();
    let e = Arc::new(Enricher::new(&[services], None, None).unwrap());
    for id in std::iter::repeat_n("nope", misses).chain(["svc1"]) {
        let mut r = Record::new_ml();
        r.set(Field::ServiceId, id);
        e.enrich(&e.tables(), &mut r);
    }
    tel.set_lookups(e.lookup_stats());
    tel
}

#[test]
fn channel_and_lookup_misses_get_a_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let srv = InProcess::start(fixture_with_channel_and_lookups(dir.path(), 3), StatusConfig::default());
    let out = lag(&["--status-url", &srv.url()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let line =
        |start: &str| stdout.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no `{start}` line:\n{stdout}")).to_string();
    let ch = line("channel ws://127.0.0.1:8790/stream:");
    assert!(
        ch.contains("1 connected (4 since start)")
            && ch.contains("2 refused (1 too many connections, 1 unauthorized)")
            && ch.contains("1 closed as slow consumer"),
        "{ch}"
    );
    let en = line("enrich:");
    assert!(en.contains("3 lookup misses of 4 (services 3)"), "{en}");
    // --json stays the raw status document, with the new objects.
    let out = lag(&["--status-url", &srv.url(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["channel"]["refused"]["unauthorized"], 1);
    assert_eq!(v["channel"]["connections"], 1);
    assert_eq!(v["enrich"]["misses"], 3);
    assert_eq!(v["enrich"]["tables"].as_array().unwrap().iter().find(|t| t["table"] == "services").unwrap()["hits"], 1);
}

#[test]
fn no_enrich_line_without_misses() {
    let dir = tempfile::tempdir().unwrap();
    let srv = InProcess::start(fixture_with_channel_and_lookups(dir.path(), 0), StatusConfig::default());
    let stdout = text(&lag(&["--status-url", &srv.url()]).stdout);
    assert!(stdout.contains("\nchannel ws://"), "{stdout}");
    assert!(!stdout.contains("enrich:"), "{stdout}");
}

/// One Kafka message naming a host of 70,000 characters (or a file name
/// with terminal escapes) reaches `/status` of a bridge that does not cut
/// it: `lag` (and `lag --max-lag`, the monitoring check) still answers,
/// with the cell cut, no line padded beyond the limit and no control
/// character on the terminal. (It panicked with exit 101 at 65,536.)
#[test]
fn a_huge_or_hostile_file_name_neither_panics_nor_floods_the_table() {
    let now = calllog_bridge::time::now_ms();
    let tel = Telemetry::new();
    let huge = format!("kafka:{}-end", "h".repeat(70_000));
    let f = tel.file(&huge);
    f.set_position_at(10, 10, now);
    f.sync_delays(now, [Some(90_000)]);
    let evil = tel.file("/le/\u{1b}[2J\u{1b}]0;owned\u{7}\nFAKE ROW.log");
    evil.set_position_at(1, 1, now);
    evil.sync_delays(now, [Some(1)]);
    tel.set_ready(true);
    let srv = InProcess::start(tel, StatusConfig::default());
    for args in [vec!["--status-url", &srv.url()], vec!["--status-url", &srv.url(), "--max-lag", "1m"]] {
        let out = lag(&args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let expected = if args.len() == 2 { 0 } else { 2 };
        assert_eq!(out.status.code(), Some(expected), "lag {args:?}: {stderr}");
        for l in stdout.lines().chain(stderr.lines()) {
            assert!(l.chars().count() < 400, "a line of {} characters", l.chars().count());
            assert!(!l.chars().any(|c| c.is_control()), "a control character reaches the terminal: {l:?}");
        }
        assert!(stdout.contains("kafka:hhhh") && stdout.contains("hh-end"), "{stdout}");
        assert!(!stdout.lines().any(|l| l.starts_with("FAKE ROW")), "{stdout}");
        if expected == 2 {
            assert!(stderr.contains("kafka:hhh") && stderr.contains("sync delay max 1m 30s"), "{stderr}");
        }
    }
}
