//! The OpenTelemetry sink end to end: the real binary tailing real files
//! into an OTLP/HTTP collector that decodes every request with the
//! official OpenTelemetry definitions (`otlp_collector.py`, the
//! `opentelemetry-proto` package from PyPI, installed by
//! `scripts/test-tools.sh`; skipped with a SKIPPED line without it).

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support;
use crate::support_tools::{tool, Tool};
use crate::tail_harness::{lines, uuids, Env};

/// How long a test waits for records.
const DEADLINE: Duration = Duration::from_secs(60);

/// The test collector (`otlp_collector.py`) on 127.0.0.1; killed when
/// dropped. What it received is in its directory.
struct Collector {
    python: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Collector {
    /// Starts a collector, or returns `None` (after the SKIPPED line) when
    /// Python with `opentelemetry-proto` is not installed.
    fn start(test: &str) -> Option<Collector> {
        let python = tool(Tool::Python, test)?;
        let has_otlp = Command::new(&python)
            .args(["-c", "import opentelemetry.proto.collector.logs.v1.logs_service_pb2"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_otlp {
            let line = format!("SKIPPED: {test}: opentelemetry-proto not installed (run scripts/test-tools.sh)");
            assert!(std::env::var("CALLLOG_REQUIRE_TOOLS").map_or(true, |v| v != "1"), "{line}");
            eprintln!("{line}");
            return None;
        }
        let mut c = Collector { python, dir: tempfile::tempdir().unwrap(), child: None };
        c.restart();
        Some(c)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)starts the collector on the port it had (a new one the first
    /// time) and waits until it accepts connections.
    fn restart(&mut self) {
        self.stop();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/otlp_collector.py");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.path("collector.log")).unwrap();
        let child = Command::new(&self.python)
            .arg(script)
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the collector");
        self.child = Some(child);
        let port = support::poll_until(DEADLINE, "the collector's port", || {
            fs::read_to_string(self.path("port")).ok()?.trim().parse::<u16>().ok()
        });
        support::poll_until(DEADLINE, "the collector to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    }

    /// Kills the collector (an outage: connections are refused).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/logs", fs::read_to_string(self.path("port")).unwrap().trim())
    }

    /// What the collector answers from now on (see the script).
    fn answer(&self, mode: &str) {
        fs::write(self.path("mode.tmp"), mode).unwrap();
        fs::rename(self.path("mode.tmp"), self.path("mode")).unwrap();
    }

    fn lines(&self, name: &str) -> Vec<Value> {
        let text = fs::read_to_string(self.path(name)).unwrap_or_default();
        text.lines().filter(|l| l.ends_with('}')).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The log records it took, by `calllog.request_uuid`, with how often.
    fn counts(&self) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for r in self.lines("records.ndjson") {
            *c.entry(r["attributes"]["calllog.request_uuid"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
        c
    }

    /// Waits until it took every one of `ids`.
    fn wait_for(&self, ids: &[String], bridge: &Env) -> HashMap<String, usize> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let got = self.counts();
            let missing: Vec<&String> = ids.iter().filter(|u| !got.contains_key(*u)).collect();
            if missing.is_empty() {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {} records never reached the collector (first {:?}); bridge log:\n{}\ncollector log:\n{}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(3)],
                crate::tail_harness::tail(&bridge.log_text(), 40),
                fs::read_to_string(self.path("collector.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bridge named `edge-otel` with an `[otlp]` section (and an archive).
fn bridge(collector: &Collector, otlp: &str) -> Env {
    let env = Env::new("access*.log", "poll_interval_ms = 50");
    let text = fs::read_to_string(&env.config).unwrap();
    let text = format!(
        "host = \"edge-otel\"\n{text}\n[otlp]\nurl = \"{}\"\nretry_initial_ms = 50\nretry_max_ms = 500\nflush_interval_ms = 50\nrequest_timeout_ms = 3000\nshutdown_grace_ms = 2000\n{otlp}\n",
        collector.url()
    );
    fs::write(&env.config, text).unwrap();
    env
}

/// A figure of the bridge's `/metrics` (0 when absent).
fn metric(env: &Env, name: &str) -> f64 {
    let addr = support::poll_until(DEADLINE, "status.addr", || fs::read_to_string(env.state.join("status.addr")).ok());
    let text = crate::safety::http_get(addr.trim(), "/metrics").1;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Files in the OTLP spool.
fn spool_files(env: &Env) -> usize {
    walkdir::WalkDir::new(env.state.join("otlp-spool"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .count()
}

fn dead_letters(env: &Env) -> Vec<Value> {
    let text = fs::read_to_string(env.state.join("otlp-dead-letter.ndjson")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn records_arrive_as_otlp_log_records_with_the_semantic_conventions() {
    const TEST: &str = "otlp::records_arrive_as_otlp_log_records_with_the_semantic_conventions";
    let Some(c) = Collector::start(TEST) else { return };
    let mut env = bridge(
        &c,
        "bearer_token = \"otlp-t0ken-123\"\n[otlp.headers]\nX-Tenant = \"acme\"\n[otlp.resource_attributes]\n\"service.name\" = \"payments-gateway\"\n",
    );
    env.start();
    let ids = uuids("pb", 50);
    env.append("access.log", &lines(&ids));
    c.wait_for(&ids, &env);
    for r in c.lines("records.ndjson") {
        let a = &r["attributes"];
        let uuid = a["calllog.request_uuid"].as_str().unwrap();
        assert_eq!(r["resource"]["host.name"], "edge-otel", "host is the resource's host.name");
        assert_eq!(r["resource"]["service.name"], "payments-gateway");
        assert_eq!(r["scope"], "calllog-bridge");
        assert_eq!(r["time_unix_nano"].as_u64(), Some(1_704_067_200_000_000_000), "request_time is the record's time");
        let observed = r["observed_time_unix_nano"].as_u64().unwrap();
        assert!(observed > 1_704_067_200_000_000_000 && observed % 1_000_000 == 0, "ingestion_time is its observed time: {observed}");
        assert_eq!((r["severity_number"].as_u64(), r["severity_text"].as_str()), (Some(9), Some("INFO")));
        assert_eq!(a["http.request.method"], "GET");
        assert_eq!(a["http.response.status_code"].as_i64(), Some(200), "an int attribute");
        assert_eq!(a["http.response.body.size"].as_i64(), Some(113));
        assert_eq!((a["url.path"].as_str(), a["url.query"].as_str()), (Some("/v1/items"), Some(format!("id={uuid}").as_str())));
        assert_eq!(a["calllog.total_request_exec_time"].as_f64(), Some(0.012), "a double attribute");
        assert_eq!(a["calllog.api_key"], "k1");
        assert!(a["calllog.sync_delay_ms"].as_i64().unwrap() > 0);
        assert_eq!(r["body"], format!("GET /v1/items?id={uuid} 200"));
    }
    let requests = c.lines("requests.ndjson");
    assert!(!requests.is_empty());
    for q in &requests {
        assert_eq!(q["content_type"], "application/x-protobuf");
        assert_eq!(q["content_encoding"], "gzip");
        assert_eq!(q["authorization"], "Bearer otlp-t0ken-123");
        assert_eq!(q["tenant"], "acme");
    }
    support::poll_until(DEADLINE, "the otlp figures", || {
        (metric(&env, "calllog_bridge_otlp_records_delivered_total") == 50.0).then_some(())
    });
    env.stop();
    assert!(!env.log_text().contains("otlp-t0ken-123"), "the token is never logged");
}

#[test]
fn json_bodies_without_compression_decode_the_same() {
    const TEST: &str = "otlp::json_bodies_without_compression_decode_the_same";
    let Some(c) = Collector::start(TEST) else { return };
    let mut env = bridge(&c, "format = \"json\"\ncompression = \"none\"\n");
    env.start();
    let ids = uuids("js", 20);
    env.append("access.log", &lines(&ids));
    c.wait_for(&ids, &env);
    for r in c.lines("records.ndjson") {
        assert_eq!(r["resource"]["host.name"], "edge-otel");
        assert_eq!(r["time_unix_nano"].as_u64(), Some(1_704_067_200_000_000_000));
        assert_eq!(r["attributes"]["http.response.status_code"].as_i64(), Some(200));
    }
    for q in c.lines("requests.ndjson") {
        assert_eq!((q["content_type"].as_str(), q["content_encoding"].as_str()), (Some("application/json"), None));
    }
    env.stop();
}

/// The collector goes away while records arrive (long enough for the
/// spool), the bridge is killed with records only in its spool and more
/// written while it is down, then a clean restart while the collector
/// fails again: every record reaches the collector at least once.
#[test]
fn an_outage_a_restart_and_kill_9_lose_nothing() {
    const TEST: &str = "otlp::an_outage_a_restart_and_kill_9_lose_nothing";
    let Some(mut c) = Collector::start(TEST) else { return };
    let mut env = bridge(&c, "spool_after_ms = 1000\nbatch_max_records = 100\n");
    env.start();
    let mut all = uuids("a", 300);
    env.append("access.log", &lines(&all));
    c.wait_for(&all, &env);

    // An outage past spool_after_ms: the records go to the spool.
    c.stop();
    let b = uuids("b", 500);
    env.append("access.log", &lines(&b));
    all.extend(b);
    support::poll_until(DEADLINE, "records in the otlp spool", || {
        (metric(&env, "calllog_bridge_otlp_records_spooled_total") >= 500.0).then_some(())
    });
    assert!(spool_files(&env) > 0);
    // kill -9 with records only in the spool; more are written meanwhile.
    env.kill9();
    let cc = uuids("c", 200);
    env.append("access.log", &lines(&cc));
    all.extend(cc);
    c.restart();
    env.start();
    let d = uuids("d", 200);
    env.append("access.log", &lines(&d));
    all.extend(d);
    c.wait_for(&all, &env);
    support::poll_until(DEADLINE, "the otlp spool to drain", || (spool_files(&env) == 0).then_some(()));

    // SIGTERM while the collector fails: what is held goes to the spool at
    // once, and the restart sends it.
    c.stop();
    let e = uuids("e", 100);
    env.append("access.log", &lines(&e));
    all.extend(e);
    support::poll_until(DEADLINE, "failed attempts", || (metric(&env, "calllog_bridge_otlp_retries_total") >= 1.0).then_some(()));
    env.stop();
    c.restart();
    env.start();
    let got = c.wait_for(&all, &env);
    let dups: usize = got.values().map(|n| n - 1).sum();
    eprintln!("otlp: {} records through an outage, kill -9 and a restart, {dups} duplicates", all.len());
    env.stop();
}

/// 503 with `Retry-After` is retried; a `partial_success` rejection and a
/// 400 send the records to the dead-letter file (counted there, not as
/// delivered), and the stream moves on.
#[test]
fn retryable_codes_are_retried_and_refused_records_are_dead_lettered() {
    const TEST: &str = "otlp::retryable_codes_are_retried_and_refused_records_are_dead_lettered";
    let Some(c) = Collector::start(TEST) else { return };
    let mut env = bridge(&c, "");
    c.answer("status 503 1");
    env.start();
    let first = uuids("retry", 20);
    env.append("access.log", &lines(&first));
    support::poll_until(DEADLINE, "503 answers", || {
        (c.lines("requests.ndjson").iter().filter(|q| q["status"] == 503).count() >= 2).then_some(())
    });
    c.answer("ok");
    c.wait_for(&first, &env);

    // The collector rejects some log records of a request.
    c.answer("reject bad-");
    let (bad, good) = (uuids("bad", 10), uuids("good", 10));
    env.append("access.log", &lines(&[bad.clone(), good.clone()].concat()));
    support::poll_until(DEADLINE, "the rejected records in the dead-letter file", || {
        let quoted: Vec<String> = dead_letters(&env)
            .iter()
            .flat_map(|l| {
                l["records"].as_array().unwrap().iter().map(|r| r["request_uuid"].as_str().unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect();
        bad.iter().all(|u| quoted.contains(u)).then_some(())
    });
    let line = &dead_letters(&env)[0];
    assert_eq!(line["status"], 200);
    assert!(line["response"].as_str().unwrap().contains("partial_success"), "{line}");
    let taken = c.counts();
    assert!(bad.iter().all(|u| !taken.contains_key(u)), "the collector kept none of the rejected records");
    support::poll_until(DEADLINE, "the dead-lettered records counted", || {
        (metric(&env, "calllog_bridge_dead_lettered_records_total{sink=\"otlp\"}") >= 10.0).then_some(())
    });

    // A 400 refuses a request for good; the stream moves on.
    c.answer("status 400");
    let poison = uuids("poison", 5);
    env.append("access.log", &lines(&poison));
    support::poll_until(DEADLINE, "the 400 in the dead-letter file", || {
        dead_letters(&env).iter().any(|l| l["status"] == 400).then_some(())
    });
    c.answer("ok");
    let after = uuids("after", 5);
    env.append("access.log", &lines(&after));
    c.wait_for(&after, &env);
    env.stop();
}
