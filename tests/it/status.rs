//! The status listener: `/metrics` parsed with a real Prometheus
//! text-format parser (prometheus-parse), `/status` fields, `/healthz` and
//! `/readyz`, first against an in-process server, then end to end: the
//! real bridge follows `simulate --lag-ms X` traffic and every record,
//! `/metrics`, `/status` and `lag` report a sync delay of about X.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use calllog_bridge::config::StatusConfig;
use prometheus_parse::{Scrape, Value};

use crate::lag::{fixture, get, InProcess};
use crate::support;

/// How long the end-to-end test waits for anything.
const DEADLINE: Duration = Duration::from_secs(30);

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text format")
}

/// The value of the sample `name` whose labels include `labels`.
fn sample<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    s.samples.iter().find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).map(|x| &x.value)
}

fn num(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Counter(x)) | Some(Value::Gauge(x)) | Some(Value::Untyped(x)) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

/// `(le, cumulative count)` of a histogram sample.
fn buckets(v: Option<&Value>) -> Vec<(f64, f64)> {
    match v {
        Some(Value::Histogram(h)) => h.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("not a histogram: {other:?}"),
    }
}

#[test]
fn metrics_parse_and_aggregate_without_file_labels() {
    let srv = InProcess::start(fixture(), StatusConfig::default());
    let (code, text) = srv.get("/metrics");
    assert_eq!(code, 200);
    assert!(!text.contains("file=\""), "per-file labels are off by default:\n{text}");
    let m = scrape(&text);
    assert_eq!(num(sample(&m, "calllog_bridge_records_total", &[])), 16.0);
    assert_eq!(num(sample(&m, "calllog_bridge_negative_delays_total", &[])), 1.0);
    assert_eq!(num(sample(&m, "calllog_bridge_bytes_behind", &[])), 1_572_864.0);
    assert_eq!(num(sample(&m, "calllog_bridge_files", &[("state", "stalled")])), 1.0);
    assert_eq!(num(sample(&m, "calllog_bridge_files", &[("state", "idle")])), 1.0);
    assert_eq!(num(sample(&m, "calllog_bridge_queue_depth", &[("sink", "upstream")])), 4.0);
    assert!(num(sample(&m, "calllog_bridge_oldest_undelivered_age_seconds", &[("sink", "upstream")])) >= 20.0);
    assert_eq!(num(sample(&m, "calllog_bridge_ready", &[])), 1.0);
    // The window covers files that are not idle: a's 45 s, not b's 12 min.
    assert_eq!(num(sample(&m, "calllog_bridge_sync_delay_window_seconds", &[("stat", "max")])), 45.0);
    // The histogram since start has every record, b's included; the
    // negative delay is in the first bucket.
    let h = buckets(sample(&m, "calllog_bridge_sync_delay_seconds", &[]));
    let at = |le: f64| h.iter().find(|b| b.0 == le).map(|b| b.1).unwrap();
    assert_eq!(at(0.005), 1.0);
    assert_eq!(at(60.0), 11.0);
    assert_eq!(at(300.0), 11.0);
    // b's delay is exactly 10 minutes: bucket bounds are inclusive.
    assert_eq!(at(600.0), 16.0);
    assert_eq!(at(f64::INFINITY), 16.0);
}

#[test]
fn metrics_label_files_when_asked() {
    let srv = InProcess::start(fixture(), StatusConfig { per_file_metrics: true, ..StatusConfig::default() });
    let m = scrape(&srv.get("/metrics").1);
    assert_eq!(num(sample(&m, "calllog_bridge_records_total", &[("file", "/le/a.log")])), 11.0);
    assert_eq!(num(sample(&m, "calllog_bridge_bytes_behind", &[("file", "/le/c.log")])), 1_572_864.0);
    assert_eq!(buckets(sample(&m, "calllog_bridge_sync_delay_seconds", &[("file", "/le/b.log")])).last().unwrap().1, 5.0);
    assert!(sample(&m, "calllog_bridge_sync_delay_window_seconds", &[("file", "/le/b.log")]).is_none(), "idle: no current delay");
}

#[test]
fn health_readiness_and_status_fields() {
    let tel = fixture();
    tel.set_ready(false);
    let srv = InProcess::start(tel, StatusConfig::default());
    assert_eq!(srv.get("/healthz").0, 200);
    assert_eq!(srv.get("/readyz").0, 503);
    srv.telemetry.set_ready(true);
    assert_eq!(srv.get("/readyz").0, 200);
    let (code, body) = srv.get("/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["ready"], true);
    let a = v["files"].as_array().unwrap().iter().find(|f| f["path"] == "/le/a.log").unwrap().clone();
    for key in [
        "state",
        "size_bytes",
        "offset_bytes",
        "bytes_behind",
        "records",
        "rejects",
        "negative_delays",
        "watermark",
        "watermark_ms",
        "last_read_ms",
        "last_read_age_ms",
        "sync_delay_ms",
    ] {
        assert!(a.get(key).is_some(), "files[].{key} missing: {a}");
    }
    for key in ["p50", "p95", "max", "min", "samples"] {
        assert!(a["sync_delay_ms"].get(key).is_some(), "sync_delay_ms.{key}");
    }
    let k = &v["sinks"][0];
    for key in [
        "name",
        "queue_depth",
        "oldest_undelivered_age_ms",
        "delivered_records",
        "retries",
        "dropped_records",
        "dead_lettered_records",
        "delivery_delay_ms",
    ] {
        assert!(k.get(key).is_some(), "sinks[].{key} missing: {k}");
    }
    assert_eq!(v["totals"]["files_by_state"]["stalled"], 1);
    assert_eq!(v["totals"]["max_sync_delay_ms"], 45_000);
}

/// A bridge run over a scratch directory, stopped (SIGTERM) on drop.
struct Bridge {
    /// Keeps the directory alive.
    dir: tempfile::TempDir,
    /// The running bridge.
    child: Option<Child>,
}

impl Bridge {
    /// The bridge following `logs/*.log` as le6 into `out/out.ndjson`.
    fn start() -> Bridge {
        Bridge::start_with(|dir| {
            let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
            format!(
                "state_dir = {state:?}\nlog_level = \"info\"\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le6\"\n\
                 read_from = \"beginning\"\n\n[file_output]\npath = {out:?}\nfsync_interval_ms = 20\n\n\
                 [status]\nlisten = \"127.0.0.1:0\"\n",
                state = p("state"),
                glob = p("logs/*.log"),
                out = p("out/out.ndjson"),
            )
        })
    }

    /// The bridge with the config `config(dir)` returns (`logs/` exists).
    fn start_with(config: impl FnOnce(&Path) -> String) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("bridge.toml"), config(dir.path())).unwrap();
        let log = std::fs::File::create(dir.path().join("bridge.log")).unwrap();
        let child = support::cmd()
            .args(["run", "--config"])
            .arg(dir.path().join("bridge.toml"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Bridge { dir, child: Some(child) }
    }

    fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("bridge.log")).unwrap_or_default()
    }

    /// The status URL, once the bridge wrote `status.addr`.
    fn url(&self) -> String {
        let f = self.path("state/status.addr");
        let addr = support::poll_until(DEADLINE, "state/status.addr", || {
            std::fs::read_to_string(&f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        });
        format!("http://{addr}")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
            let st = support::poll_until(DEADLINE, "bridge to exit", || c.try_wait().unwrap());
            assert!(st.success(), "bridge exited with {st}:\n{}", self.log());
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ndjson(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap_or_default().lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn end_to_end_simulated_lag_is_reported_everywhere() {
    const LAG_MS: i64 = 3000;
    // The simulator stamps request_time when it renders a line and writes
    // it at once; the bridge reads it within milliseconds (inotify). Allow
    // for write pacing and a loaded machine.
    const TOLERANCE_MS: i64 = 250;
    // Local Edition writes each line 1 s after its call ended (LE 6
    // log_ingestion): the transfer delay is at most LAG - WRITE_DELAY.
    const WRITE_DELAY_MS: i64 = 1000;
    let mut bridge = Bridge::start();
    let url = bridge.url();
    support::poll_until(DEADLINE, "/readyz 200", || (get(&format!("{url}/readyz")).0 == 200).then_some(()));

    let out = support::cmd()
        .args(["simulate", "--format", "le6", "--rate", "40", "--duration", "2", "--seed", "7", "--lag-ms", &LAG_MS.to_string()])
        .args(["--write-delay-ms", &WRITE_DELAY_MS.to_string(), "--dir"])
        .arg(bridge.path("logs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "simulate: {}", String::from_utf8_lossy(&out.stderr));
    let lines = std::fs::read_to_string(bridge.path("logs/access.log")).unwrap().lines().count();
    assert!(lines >= 40, "simulate wrote {lines} lines");

    // Per record: every archived record carries ingestion_time and a
    // sync_delay_ms of about X.
    let out_file = bridge.path("out/out.ndjson");
    let records = support::poll_until(DEADLINE, "every record in the archive", || {
        let r = ndjson(&out_file);
        (r.len() >= lines).then_some(r)
    });
    assert_eq!(records.len(), lines);
    for r in &records {
        assert!(r["ingestion_time"].is_string(), "{r}");
        let d = r["sync_delay_ms"].as_i64().unwrap_or_else(|| panic!("no sync_delay_ms: {r}"));
        assert!((d - LAG_MS).abs() <= TOLERANCE_MS, "sync_delay_ms {d} not within {TOLERANCE_MS} ms of {LAG_MS}: {r}");
    }

    // /status: the file, its state and its windowed delay. The archive
    // line is visible before the fsync that acknowledges it: wait for that.
    let v = support::poll_until(DEADLINE, "the archive's deliveries in /status", || {
        let v = status_json(&url);
        (sink_named(&v, "file")?["delivered_records"] == lines as u64).then_some(v)
    });
    let f = &v["files"].as_array().unwrap().iter().find(|f| f["path"].as_str().unwrap().ends_with("access.log")).expect("the file").clone();
    assert_eq!(f["records"], lines as u64);
    assert_eq!(f["bytes_behind"], 0);
    assert_eq!(f["state"], "caught-up", "{f}");
    for k in ["p50", "p95", "max"] {
        let d = f["sync_delay_ms"][k].as_i64().unwrap();
        assert!((d - LAG_MS).abs() <= TOLERANCE_MS, "/status sync_delay_ms.{k} = {d}");
    }
    assert_eq!(f["negative_delays"], 0);
    // The sync's share: the lag minus the write delay minus the call's own
    // duration (mostly well under a second in simulated traffic).
    let transfer = |k: &str| f["transfer_delay_ms"][k].as_i64().unwrap_or_else(|| panic!("no transfer_delay_ms.{k}: {f}"));
    assert!(transfer("max") <= LAG_MS - WRITE_DELAY_MS + TOLERANCE_MS, "{f}");
    assert!(transfer("p50") >= LAG_MS - WRITE_DELAY_MS - 1000, "{f}");
    let sinks: HashMap<String, serde_json::Value> =
        v["sinks"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap().to_string(), s.clone())).collect();
    let file_sink = sinks.values().next().expect("a sink in /status");
    assert_eq!(file_sink["delivered_records"], lines as u64, "{file_sink}");

    // /metrics: counters, the histogram (all records in the 2.5-5 s bucket)
    // and the window gauges.
    let (code, text) = get(&format!("{url}/metrics"));
    assert_eq!(code, 200);
    let m = scrape(&text);
    assert_eq!(num(sample(&m, "calllog_bridge_records_total", &[])), lines as f64);
    let h = buckets(sample(&m, "calllog_bridge_sync_delay_seconds", &[]));
    let at = |le: f64| h.iter().find(|b| b.0 == le).map(|b| b.1).unwrap();
    assert_eq!((at(2.5), at(5.0), at(f64::INFINITY)), (0.0, lines as f64, lines as f64), "{h:?}");
    let p50 = num(sample(&m, "calllog_bridge_sync_delay_window_seconds", &[("stat", "p50")]));
    assert!((p50 * 1000.0 - LAG_MS as f64).abs() <= TOLERANCE_MS as f64, "p50 {p50}");
    assert_eq!(num(sample(&m, "calllog_bridge_ready", &[])), 1.0);

    // lag, reading the bound address through --config.
    let cfg = bridge.path("bridge.toml");
    let out = support::cmd().args(["lag", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let row = stdout.lines().find(|l| l.contains("access.log")).unwrap_or_else(|| panic!("no file row:\n{stdout}"));
    assert!(row.contains("caught-up") && (row.contains("2.") || row.contains("3.")), "{row}");
    assert!(stdout.contains("TRANSFER p95"), "LE 6 lines carry their write time:\n{stdout}");
    let out = support::cmd().args(["lag", "--max-lag", "1s", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = support::cmd().args(["lag", "--max-lag", "1m", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    // Stopped: lag says so.
    bridge.stop();
    let out = support::cmd().args(["lag", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bridge is not running (no answer at http://127.0.0.1:"));
}

/// The token of the end-to-end channel.
const TOKEN: &str = "status-e2e-token-4d7c";

/// The Orders service of the simulated estate: the only entry of the
/// services table below, so the other services are lookup misses.
const ORDERS_ID: &str = "r2xk9fy4wq8bnc7tz6dd5ev3";

/// `/status` as JSON.
fn status_json(url: &str) -> serde_json::Value {
    let (code, body) = get(&format!("{url}/status"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn sink_named<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    v["sinks"].as_array()?.iter().find(|s| s["name"] == name)
}

/// A WebSocket client of the bridge's channel.
type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads channel messages until `want` records have arrived; returns them.
async fn receive_records(ws: &mut Ws, want: usize) -> Vec<serde_json::Value> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while got.len() < want {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {want} records", got.len()))
            .expect("the channel closed the connection")
            .expect("a WebSocket message");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            got.extend(v["data"].as_array().cloned().unwrap_or_default());
        }
    }
    got
}

#[test]
fn end_to_end_channel_and_lookup_figures() {
    const LINES: usize = 200;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lookups");
    let mut bridge = Bridge::start_with(|dir| {
        let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
        std::fs::write(dir.join("channel.token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.join("services.csv"), format!("service_id,service_name\n{ORDERS_ID},Orders\n")).unwrap();
        let lookups = [
            examples.join("keys.csv").to_string_lossy().into_owned(),
            examples.join("endpoints.csv").to_string_lossy().into_owned(),
            examples.join("plans.json").to_string_lossy().into_owned(),
            p("services.csv"),
        ];
        format!(
            "state_dir = {state:?}\nlog_level = \"info\"\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le-json\"\n\
             read_from = \"beginning\"\n\n[enrich]\nlookups = {lookups:?}\n\n[channel]\nlisten = \"127.0.0.1:0\"\n\
             token_file = {token:?}\nrecords_per_message = 20\n\n[file_output]\npath = {out:?}\nfsync_interval_ms = 20\n\n\
             [status]\nlisten = \"127.0.0.1:0\"\n",
            state = p("state"),
            glob = p("logs/*.log"),
            token = p("channel.token"),
            out = p("out/out.ndjson"),
        )
    });
    let url = bridge.url();
    support::poll_until(DEADLINE, "/readyz 200", || (get(&format!("{url}/readyz")).0 == 200).then_some(()));
    let chan_file = bridge.path("state/channel.addr");
    let chan = support::poll_until(DEADLINE, "state/channel.addr", || {
        std::fs::read_to_string(&chan_file).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Before any client: the endpoint and zero figures, never the token.
    let v = status_json(&url);
    assert_eq!(v["channel"]["listen"], chan.as_str());
    assert_eq!(v["channel"]["connections"], 0);
    assert!(!serde_json::to_string(&v).unwrap().contains(TOKEN), "the token must not appear in /status");

    // A wrong token: refused with 401 and counted.
    let bad = rt.block_on(tokio_tungstenite::connect_async(format!("ws://{chan}/stream?key=not-the-token")));
    match bad {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        Err(e) => panic!("expected an HTTP 401 refusal, got {e}"),
        Ok(_) => panic!("a wrong token was upgraded"),
    }
    support::poll_until(DEADLINE, "the refusal in /status", || {
        (status_json(&url)["channel"]["refused"]["unauthorized"] == 1).then_some(())
    });

    // The right token: one connection.
    let (mut ws, resp) = rt.block_on(tokio_tungstenite::connect_async(format!("ws://{chan}/stream?key={TOKEN}"))).expect("upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    let v = support::poll_until(DEADLINE, "one connection in /status", || {
        let v = status_json(&url);
        (v["channel"]["connections"] == 1).then_some(v)
    });
    assert_eq!(v["channel"]["connections_accepted"], 1);
    assert_eq!(v["channel"]["refused"]["too_many_connections"], 0);
    assert_eq!(v["channel"]["closed"]["slow_consumer"], 0);

    // Simulated raw Local Edition traffic: the client receives every record.
    let out = support::cmd()
        .args(["simulate", "--format", "le-json", "--burst", "--rate", &LINES.to_string(), "--duration", "1", "--seed", "11", "--dir"])
        .arg(bridge.path("logs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "simulate: {}", String::from_utf8_lossy(&out.stderr));
    let received = rt.block_on(receive_records(&mut ws, LINES));
    assert_eq!(received.len(), LINES);
    let out_file = bridge.path("out/out.ndjson");
    let archived = support::poll_until(DEADLINE, "every record in the archive", || {
        let r = ndjson(&out_file);
        (r.len() >= LINES).then_some(r)
    });
    assert_eq!(archived.len(), LINES);

    // Lookups: a hit per Orders record, a miss per other service whose
    // line had no name (the table lacks it).
    let absent = |x: &serde_json::Value| matches!(x.as_str(), None | Some("") | Some("-"));
    let hits = archived.iter().filter(|r| r["service_id"] == ORDERS_ID).count() as u64;
    let misses = archived.iter().filter(|r| !absent(&r["service_id"]) && absent(&r["service_name"])).count() as u64;
    assert!(hits > 0 && misses > 0, "the simulated traffic has Orders and other services: {hits} hits, {misses} misses");
    assert!(archived.iter().filter(|r| r["service_id"] == ORDERS_ID).all(|r| r["service_name"] == "Orders"));

    let v = support::poll_until(DEADLINE, "the channel sink's deliveries in /status", || {
        let v = status_json(&url);
        let k = sink_named(&v, "channel")?;
        (k["delivered_records"] == LINES as u64 && v["channel"]["records_sent"] == LINES as u64).then_some(v)
    });
    let c = &v["channel"];
    assert!(c["messages_sent"].as_u64().unwrap() >= (LINES / 20) as u64, "{c}");
    assert_eq!(c["replay_records"], LINES as u64);
    assert!(c["replay_bytes"].as_u64().unwrap() > 0 && c["replay_segments"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["last_seq"].as_u64().unwrap() >= LINES as u64, "{c}");
    // Delivered = frame written: the channel sink's delivery delay is that of
    // the frames the client received.
    let d = &sink_named(&v, "channel").unwrap()["delivery_delay_ms"];
    assert!(d["samples"].as_u64().unwrap() >= 1 && d["max"].as_i64().unwrap() >= 0, "{d}");
    let e = &v["enrich"];
    assert_eq!(e["files"].as_array().unwrap().len(), 4, "{e}");
    let table = |name: &str| e["tables"].as_array().unwrap().iter().find(|t| t["table"] == name).cloned().unwrap();
    let services = table("services");
    assert_eq!((services["loaded"].as_bool(), services["entries"].as_u64()), (Some(true), Some(1)));
    assert_eq!((services["hits"].as_u64(), services["misses"].as_u64()), (Some(hits), Some(misses)), "{e}");
    assert_eq!(e["reloads"], 0);
    assert!(e["last_reload_error"].is_null());
    let f = v["files"].as_array().unwrap().iter().find(|f| f["path"].as_str().unwrap().ends_with("access_worker0.log")).unwrap().clone();
    assert_eq!((f["records"].as_u64(), f["partial_lines"].as_u64()), (Some(LINES as u64), Some(0)), "{f}");

    // /metrics: the same figures, with bounded labels.
    let (code, text) = get(&format!("{url}/metrics"));
    assert_eq!(code, 200);
    assert!(!text.contains(TOKEN));
    let m = scrape(&text);
    assert_eq!(num(sample(&m, "calllog_bridge_channel_connections", &[])), 1.0);
    assert_eq!(num(sample(&m, "calllog_bridge_channel_connections_accepted_total", &[])), 1.0);
    assert_eq!(num(sample(&m, "calllog_bridge_channel_refused_total", &[("reason", "unauthorized")])), 1.0);
    assert_eq!(num(sample(&m, "calllog_bridge_channel_refused_total", &[("reason", "not_found")])), 0.0);
    assert_eq!(num(sample(&m, "calllog_bridge_channel_closed_total", &[("reason", "slow_consumer")])), 0.0);
    assert_eq!(num(sample(&m, "calllog_bridge_channel_records_sent_total", &[])), LINES as f64);
    let h = buckets(sample(&m, "calllog_bridge_delivery_delay_seconds", &[("sink", "channel")]));
    assert_eq!(h.last().unwrap().1, LINES as f64, "one frame-delay observation per record written: {h:?}");
    let lookups =
        |table: &str, result: &str| num(sample(&m, "calllog_bridge_enrich_lookups_total", &[("table", table), ("result", result)]));
    assert_eq!((lookups("services", "hit"), lookups("services", "miss")), (hits as f64, misses as f64));
    assert_eq!(num(sample(&m, "calllog_bridge_enrich_table_entries", &[("table", "services")])), 1.0);
    assert_eq!(num(sample(&m, "calllog_bridge_enrich_reloads_total", &[])), 0.0);
    assert_eq!(num(sample(&m, "calllog_bridge_enrich_reload_failing", &[])), 0.0);
    assert_eq!(num(sample(&m, "calllog_bridge_partial_lines_total", &[])), 0.0);
    let labels: std::collections::BTreeSet<&str> = m
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("calllog_bridge_channel_"))
        .flat_map(|s| s.labels.keys().map(String::as_str))
        .collect();
    // Bounded labels: the reason, and the channels and tokens of the config.
    assert!(labels.iter().all(|l| ["reason", "channel", "token"].contains(l)), "channel series carry bounded labels only: {labels:?}");

    // lag: a line for the channel and one for the misses.
    let out = support::cmd().args(["lag", "--config"]).arg(bridge.path("bridge.toml")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let ch = stdout.lines().find(|l| l.starts_with("channel ws://")).unwrap_or_else(|| panic!("no channel line:\n{stdout}"));
    assert!(ch.contains("1 connected (1 since start), 1 refused (1 unauthorized), 0 closed as slow consumers"), "{ch}");
    let (all_hits, all_misses) = (e["hits"].as_u64().unwrap(), e["misses"].as_u64().unwrap());
    assert!(all_misses >= misses && all_hits >= hits, "{e}");
    assert!(stdout.contains(&format!("enrich: {all_misses} lookup misses of {}", all_hits + all_misses)), "{stdout}");

    // The client leaves: no connection left.
    rt.block_on(async {
        let _ = ws.close(None).await;
    });
    drop(ws);
    let v = support::poll_until(DEADLINE, "no connection in /status", || {
        let v = status_json(&url);
        (v["channel"]["connections"] == 0).then_some(v)
    });
    assert_eq!(v["channel"]["closed"]["client"], 1, "{}", v["channel"]);
    assert_eq!(v["channel"]["closed"]["shutdown"], 0, "{}", v["channel"]);
    bridge.stop();
}

#[test]
fn a_partial_last_line_is_counted_when_its_file_rotates_away() {
    let mut bridge = Bridge::start();
    let url = bridge.url();
    support::poll_until(DEADLINE, "/readyz 200", || (get(&format!("{url}/readyz")).0 == 200).then_some(()));
    // Two real LE 6 lines; the second is written without its newline.
    let sim = tempfile::tempdir().unwrap();
    let out = support::cmd()
        .args(["simulate", "--format", "le6", "--burst", "--rate", "2", "--duration", "1", "--seed", "3", "--dir"])
        .arg(sim.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "simulate: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(sim.path().join("access.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let live = bridge.path("logs/partial.log");
    std::fs::write(&live, format!("{}\n{}", lines[0], lines[1])).unwrap();
    let out_file = bridge.path("out/out.ndjson");
    support::poll_until(DEADLINE, "the complete line archived", || (ndjson(&out_file).len() == 1).then_some(()));
    let v = status_json(&url);
    let f = v["files"].as_array().unwrap().iter().find(|f| f["path"].as_str().unwrap().ends_with("partial.log")).unwrap().clone();
    assert_eq!(f["partial_lines"], 0, "a line without its newline is held: {f}");
    // Rotated out of the followed names: the held line is emitted and counted.
    std::fs::rename(&live, bridge.path("logs/partial.log.1")).unwrap();
    support::poll_until(DEADLINE, "the partial line archived", || (ndjson(&out_file).len() == 2).then_some(()));
    let v = support::poll_until(DEADLINE, "partial_lines in /status", || {
        let v = status_json(&url);
        (v["totals"]["partial_lines"] == 1).then_some(v)
    });
    if let Some(f) = v["files"].as_array().unwrap().iter().find(|f| f["path"].as_str().unwrap().ends_with("partial.log")) {
        assert_eq!(f["partial_lines"], 1, "{f}");
    }
    let m = scrape(&get(&format!("{url}/metrics")).1);
    assert_eq!(num(sample(&m, "calllog_bridge_partial_lines_total", &[])), 1.0);
    bridge.stop();
}

#[test]
fn lookup_counters_carry_over_a_reload_with_new_tables() {
    const LINES: usize = 100;
    let config = |dir: &Path, extra: &str| {
        let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
        format!(
            "state_dir = {state:?}\nlog_level = \"info\"\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le-json\"\n\
             read_from = \"beginning\"\n\n[enrich]\nlookups = [{services:?}]\n{extra}\n\n[file_output]\npath = {out:?}\n\
             fsync_interval_ms = 20\n\n[status]\nlisten = \"127.0.0.1:0\"\n",
            state = p("state"),
            glob = p("logs/*.log"),
            services = p("services.csv"),
            out = p("out/out.ndjson"),
        )
    };
    let mut bridge = Bridge::start_with(|dir| {
        std::fs::write(dir.join("services.csv"), format!("service_id,service_name\n{ORDERS_ID},Orders\n")).unwrap();
        config(dir, "")
    });
    let url = bridge.url();
    support::poll_until(DEADLINE, "/readyz 200", || (get(&format!("{url}/readyz")).0 == 200).then_some(()));
    let out_file = bridge.path("out/out.ndjson");
    // Simulated traffic in a new followed file; returns every archived record.
    let traffic = |seed: &str, name: &str, total: usize| {
        let sim = tempfile::tempdir().unwrap();
        let out = support::cmd()
            .args(["simulate", "--format", "le-json", "--burst", "--rate", &LINES.to_string(), "--duration", "1", "--seed", seed, "--dir"])
            .arg(sim.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "simulate: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::copy(sim.path().join("access_worker0.log"), bridge.path(&format!("logs/{name}"))).unwrap();
        support::poll_until(DEADLINE, "the records archived", || {
            let r = ndjson(&out_file);
            (r.len() >= total).then_some(r)
        })
    };
    let orders = |records: &[serde_json::Value]| records.iter().filter(|r| r["service_id"] == ORDERS_ID).count() as u64;
    let services_hits = || {
        let v = status_json(&url);
        v["enrich"]["tables"].as_array().unwrap().iter().find(|t| t["table"] == "services").unwrap()["hits"].as_u64().unwrap()
    };
    let first = traffic("21", "a.log", LINES);
    let h1 = orders(&first);
    assert!(h1 > 0);
    assert_eq!(services_hits(), h1);

    // A new [enrich] section: the reload builds a new enricher.
    std::fs::write(bridge.path("bridge.toml"), config(bridge.dir.path(), "mask_api_key_keep = 4")).unwrap();
    let pid = bridge.child.as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    support::poll_until(DEADLINE, "the reload applied", || {
        bridge.log().contains("sources restarted with the reloaded config").then_some(())
    });

    let all = traffic("22", "b.log", 2 * LINES);
    assert_eq!(all.len(), 2 * LINES);
    let h = orders(&all);
    assert!(h > h1, "the second burst has Orders calls too");
    let masked = |r: &serde_json::Value| r["api_key"].as_str().is_some_and(|k| k.contains('*'));
    assert!(all[LINES..].iter().any(masked) && !all[..LINES].iter().any(masked), "the new enricher (masking) is in use");
    assert_eq!(services_hits(), h, "hits of the replaced enricher are kept");
    let m = scrape(&get(&format!("{url}/metrics")).1);
    assert_eq!(num(sample(&m, "calllog_bridge_enrich_lookups_total", &[("table", "services"), ("result", "hit")])), h as f64);
    bridge.stop();
}

/// Every component's figures in one registry, as the bridge fills it: two
/// files (one idle), a removed file, three sinks, the channel's figures,
/// a source, a fault that came and went, lookup tables replaced by a
/// reload. At 2026-01-01T00:00:01Z.
fn everything() -> (calllog_bridge::telemetry::Telemetry, tempfile::TempDir) {
    use calllog_bridge::enrich::Enricher;
    use calllog_bridge::record::{Field, Record};
    use calllog_bridge::sink::channel::ChannelStats;
    use calllog_bridge::telemetry::{ChannelInfo, Telemetry};
    const T0: i64 = 1_767_225_600_000;
    let tel = Telemetry::new();
    let a = tel.file_with_id("src/aaa", "/le/a.log");
    a.set_position_at(1000, 900, T0);
    a.sync_delays(T0, [Some(2000), Some(1500), Some(-50), None]);
    a.written(T0, [Some(T0 - 500), None, Some(T0 - 100), None]);
    a.rejected_for("column_count");
    a.partial_line();
    let b = tel.file_with_id("src/bbb", "/le/b.log");
    b.set_position_at(5000, 5000, T0 - 400_000);
    b.sync_delays(T0 - 400_000, [Some(100)]);
    let c = tel.file_with_id("src/ccc", "/le/c.log");
    c.set_position_at(10, 10, T0);
    c.sync_delays(T0, [Some(30)]);
    c.rejected_for("json");
    tel.remove_file("src/ccc");
    let up = tel.sink("upstream");
    up.enqueued(10);
    up.set_oldest_pending(T0 - 4000);
    up.delivered(4, T0 - 500, T0);
    up.retried();
    up.dropped(1);
    up.dead_lettered(1);
    up.retry_after_capped();
    let fi = tel.sink("file");
    fi.enqueued(3);
    fi.delivered(3, T0, T0 + 5);
    let ch = ChannelStats::new(&tel);
    ch.set_endpoint(ChannelInfo { listen: "127.0.0.1:8790".into(), tls: false, path: "/stream".into() });
    ch.connections_accepted.add(4);
    ch.connections_active.inc();
    ch.connections_active.inc();
    ch.refused_unauthorized.inc();
    ch.refused_full.inc();
    ch.handshake_evicted.inc();
    ch.closed_slow_consumer.inc();
    ch.closed_by_client.inc();
    ch.lost_notices.inc();
    ch.records_replayed.add(7);
    ch.frames_written(2, 5, T0, T0 + 40);
    ch.frames_written(1, 2, T0, T0 + 90);
    // Two channels: the default one and a stream, with a token each.
    let (default, partner) = (ch.stream("local"), ch.stream("partner-a"));
    default.connections.inc();
    default.records_sent.add(5);
    partner.connections.inc();
    partner.records_sent.add(2);
    partner.records_filtered.add(3);
    partner.lost_notices.inc();
    partner.closed_slow_consumer.inc();
    ch.token("local", "sha256:1a2b3c4d").inc();
    ch.token("partner-a", "new-2026").inc();
    ch.token("partner-a", "sha256:5e6f7a8b");
    let replay = calllog_bridge::sink::channel::replay::Figures {
        bytes: 123_456,
        segments: 2,
        records: 5,
        first_seq: 73,
        oldest_written_ms: Some(T0 - 60_000),
        hot_bytes: 1234,
    };
    ch.replay(&replay, 77, T0);
    let k = tel.sink("channel");
    k.enqueued(5);
    k.handed_over(5);
    tel.source("src").scanned(2, T0);
    let f = tel.fault("file");
    f.failed("disk full");
    f.recovered();
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services.csv");
    std::fs::write(&services, "service_id,service_name\nsvc1,Orders\n").unwrap();
    let lookup = |e: &Enricher, id: &'static str| {
        let mut r = Record::new_ml();
        r.set(Field::ServiceId, id);
        e.enrich(&e.tables(), &mut r);
    };
    let e = Enricher::new(std::slice::from_ref(&services), None, None).unwrap();
    for id in ["svc1", "nope", "svc1"] {
        lookup(&e, id);
    }
    tel.set_lookups(e.lookup_stats());
    let e2 = Enricher::new(std::slice::from_ref(&services), None, None).unwrap();
    tel.set_lookups(e2.lookup_stats());
    lookup(&e2, "nope");
    (tel, dir)
}

/// `/status` and `/metrics` are contracts (`lag`, the dashboard and
/// operators' dashboards and alerts read them): the documents of
/// [`everything`] are compared byte for byte with the ones recorded in
/// `tests/fixtures/telemetry/` (uptime aside). A deliberate change
/// re-records them: `UPDATE_TELEMETRY_FIXTURES=1 cargo test --test it
/// status::documents`, and the diff is reviewed.
#[test]
fn documents_stay_as_recorded() {
    use calllog_bridge::telemetry::{metrics, StatusSettings};
    let (tel, dir) = everything();
    let services = dir.path().join("services.csv").display().to_string();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/telemetry");
    let now = 1_767_225_601_000;
    let uptime = |t: &str| {
        t.lines()
            .map(|l| match l.find("\"uptime_secs\":") {
                Some(i) => format!("{}\"uptime_secs\":U{}", &l[..i], &l[i..].find(',').map_or("", |j| &l[i + j..])),
                None if l.starts_with("calllog_bridge_uptime_seconds ") => "calllog_bridge_uptime_seconds U".to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (file, per_file, text) in [("status.json", false, None), ("metrics.txt", false, Some(())), ("metrics-per-file.txt", true, Some(()))]
    {
        let st = StatusSettings { per_file_metrics: per_file, ..StatusSettings::default() };
        let got = match text {
            None => serde_json::to_string(&tel.status(now, &st)).unwrap(),
            Some(()) => metrics::render(&tel, &st, now),
        }
        .replace(&services, "SERVICES");
        let path = fixtures.join(file);
        if std::env::var_os("UPDATE_TELEMETRY_FIXTURES").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        assert!(uptime(&got) == uptime(&want), "{file} changed:\n--- recorded\n{want}\n--- now\n{got}");
    }
}
