//! The upstream sink against a real HTTP collector on 127.0.0.1:0
//! (`support_upstream`): component tests construct the sink in-process,
//! feed it pipeline batches through a `Fanout`, and check what the collector
//! received and which batches were acknowledged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calllog_bridge::pipeline::{Batch, Fanout};
use calllog_bridge::record::{Field, Record};
use calllog_bridge::sink::upstream;
use calllog_bridge::sink::upstream::UpstreamConfig;
use calllog_bridge::sink::{SinkContext, SinkHandle};
use calllog_bridge::telemetry::{SinkStats, Telemetry};
use tokio_util::sync::CancellationToken;

use crate::support_upstream::{documents, Collector, Fault, Format};

/// A sink under test with its fan-out and acknowledgement log (also used
/// by `upstream_tls`).
pub(crate) struct Harness {
    /// Sends batches to the sink.
    fanout: Option<Fanout>,
    /// The sink task.
    handle: Option<SinkHandle>,
    /// Reconfigures the running sink (as a reload does).
    pub(crate) control: upstream::UpstreamHandle,
    /// Ids of acknowledged pipeline batches, in ack order.
    acked: Arc<Mutex<Vec<usize>>>,
    /// Batches sent so far.
    pub(crate) sent: usize,
    /// The sink's statistics.
    pub(crate) stats: SinkStats,
    /// Cancelled to stop the sink at once.
    pub(crate) shutdown: CancellationToken,
}

/// An upstream config with short test timings; `extra` (TOML) overrides.
pub(crate) fn config(url: &str, extra: &str) -> UpstreamConfig {
    let defaults = [
        ("retry_initial_ms", "10"),
        ("retry_max_ms", "80"),
        ("flush_interval_ms", "20"),
        ("request_timeout_ms", "2000"),
        ("shutdown_grace_ms", "2000"),
    ];
    let mut text = format!("url = \"{url}\"\n");
    for (k, v) in defaults {
        if !extra.lines().any(|l| l.split('=').next().map(str::trim) == Some(k)) {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text.push_str(extra);
    toml::from_str(&text).expect("upstream config")
}

fn record(i: usize) -> Record<'static> {
    let mut r = Record::new_ml();
    r.set(Field::RequestUuid, format!("u-{i:06}"));
    r.set(Field::ApiKey, "k3y");
    r.set(Field::Bytes, "113");
    r.set(Field::HttpStatusCode, "200");
    r.set(Field::Uri, format!("/v1/store/{i}?q=\"x\""));
    r.set_request_time_ms(1_555_711_003_068 + i as i64);
    r.stamp_observed(1_555_711_021_034 + i as i64);
    r
}

impl Harness {
    pub(crate) async fn start(cfg: &UpstreamConfig, state_dir: &std::path::Path) -> Harness {
        let telemetry = Telemetry::new();
        let shutdown = CancellationToken::new();
        let ctx = SinkContext { state_dir: state_dir.to_path_buf(), shutdown: shutdown.clone(), telemetry: telemetry.clone() };
        let mut fanout = Fanout::new();
        let (handle, control) = upstream::start(cfg, &ctx, &mut fanout).await.expect("start upstream sink");
        Harness {
            fanout: Some(fanout),
            handle: Some(handle),
            control,
            acked: Arc::new(Mutex::new(Vec::new())),
            sent: 0,
            stats: telemetry.sink(upstream::NAME),
            shutdown,
        }
    }

    /// Sends records `range` as pipeline batches of `per_batch`.
    pub(crate) async fn send(&mut self, range: std::ops::Range<usize>, per_batch: usize) {
        let ids: Vec<usize> = range.collect();
        for chunk in ids.chunks(per_batch) {
            let id = self.sent;
            self.sent += 1;
            let acked = self.acked.clone();
            let b = Batch::new(
                "f.log".into(),
                chunk.iter().map(|&i| record(i)).collect::<Vec<_>>(),
                calllog_bridge::time::now_ms(),
                Some(Box::new(move || acked.lock().unwrap().push(id))),
            );
            self.fanout.as_ref().unwrap().send(b).await.expect("sink running");
        }
    }

    pub(crate) fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub(crate) async fn wait_acked(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked() < n {
            assert!(Instant::now() < deadline, "timed out: {} of {n} batches acknowledged", self.acked());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the queue and waits for the sink to end.
    pub(crate) async fn close(&mut self) {
        self.fanout = None;
        let h = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), h.task).await.expect("sink ends").expect("join").expect("sink result");
    }
}

pub(crate) async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        // These tests run the sink on the test's own single-threaded
        // runtime: a check that decodes every body received so far grows
        // with the test, and polled every 10 ms it would starve the sink
        // it waits for. Sleep at least three times what the check took.
        let t = Instant::now();
        if f() {
            return;
        }
        let took = t.elapsed();
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10).max(took * 3)).await;
    }
}

pub(crate) fn expect_all(c: &Collector, n: usize) {
    let got = c.delivered_set();
    let missing: Vec<String> = (0..n).map(|i| format!("u-{i:06}")).filter(|u| !got.contains(u)).collect();
    assert!(missing.is_empty(), "{} records never arrived, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
}

#[tokio::test]
async fn ndjson_gzip_with_auth_and_headers_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    let cfg = config(&c.url("/ingest"), "bearer_token = \"s3cret\"\nbatch_max_records = 50\n[headers]\nX-Tenant = \"acme\"\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..1000, 37).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    expect_all(&c, 1000);
    let rx = c.received();
    for r in &rx {
        assert_eq!(r.path, "/ingest");
        assert_eq!(r.headers.get("content-encoding").map(String::as_str), Some("gzip"));
        assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/x-ndjson"));
        assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
        assert_eq!(r.headers.get("x-tenant").map(String::as_str), Some("acme"));
        assert!(documents(Format::Ndjson, &r.body).len() <= 50);
    }
    let doc = &documents(Format::Ndjson, &rx[0].body)[0];
    assert_eq!(doc["bytes"], 113);
    assert_eq!(doc["request_time"], "2019-04-19T21:56:43Z");
    assert_eq!(h.stats.delivered_records.load(Ordering::Relaxed), 1000);
    assert_eq!(h.stats.queued_records.load(Ordering::Relaxed), 0);
    assert_eq!(h.stats.oldest_pending_observed_ms.load(Ordering::Relaxed), 0);
    h.close().await;
}

#[tokio::test]
async fn new_settings_take_over_a_request_being_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Collector::start(Format::Ndjson), Collector::start(Format::Ndjson));
    old.set_down(true);
    let cfg = config(&old.url("/old"), "bearer_token = \"old-t\"\nbatch_max_records = 40\nspool_max_bytes = 0\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..100, 25).await;
    wait_for("retries against the unreachable collector", Duration::from_secs(10), || h.stats.retries.load(Ordering::Relaxed) >= 2).await;
    assert_eq!(h.acked(), 0);
    // As a reload does: the new URL, token, compression and batch size.
    let next = config(&new.url("/new"), "bearer_token = \"new-t\"\ncompression = \"none\"\nbatch_max_records = 7\nspool_max_bytes = 0\n");
    h.control.reconfigure(upstream::Live::build(&next).unwrap());
    h.send(100..150, 25).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    expect_all(&new, 150);
    assert!(old.delivered_uuids().is_empty());
    let uuids = new.delivered_uuids();
    assert_eq!(uuids.len(), 150, "nothing sent twice");
    for r in new.received() {
        assert_eq!(r.path, "/new");
        assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Bearer new-t"));
        // Requests built before the reload keep their records (40 at
        // most) and the body they were encoded to (with its headers).
        assert!(documents(Format::Ndjson, &r.body).len() <= 40);
    }
    let after: Vec<_> =
        new.received().into_iter().filter(|r| documents(Format::Ndjson, &r.body).iter().any(|d| d["request_uuid"] == "u-000149")).collect();
    assert!(documents(Format::Ndjson, &after[0].body).len() <= 7, "batches built after the reload use the new batch size");
    assert!(!after[0].headers.contains_key("content-encoding"), "and the new compression");
    h.close().await;
}

#[tokio::test]
async fn basic_auth_and_uncompressed_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pa:ss\n").unwrap();
    let c = Collector::start(Format::Ndjson);
    let cfg =
        config(&c.url("/"), &format!("compression = \"none\"\nbasic_user = \"bridge\"\nbasic_password_file = \"{}\"\n", pw.display()));
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..10, 10).await;
    h.wait_acked(1, Duration::from_secs(10)).await;
    let r = &c.received()[0];
    assert!(!r.headers.contains_key("content-encoding"));
    // base64("bridge:pa:ss")
    assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Basic YnJpZGdlOnBhOnNz"));
    expect_all(&c, 10);
    h.close().await;
}

#[tokio::test]
async fn retries_through_503_429_resets_timeouts_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.script([
        Fault::Status(503, "unavailable".into()),
        Fault::RetryAfter("1".into()),
        Fault::Reset,
        Fault::Slow(Duration::from_millis(1500)),
        Fault::Status(500, "oops".into()),
        Fault::Status(408, "".into()),
        Fault::Reset,
        Fault::Status(502, "".into()),
    ]);
    // retry_max_ms above the Retry-After: 1 asked for (it caps Retry-After).
    let cfg = config(&c.url("/"), "request_timeout_ms = 400\nbatch_max_records = 100\nmax_in_flight = 2\nretry_max_ms = 2000\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..500, 20).await;
    h.wait_acked(h.sent, Duration::from_secs(30)).await;
    expect_all(&c, 500);
    assert!(h.stats.retries.load(Ordering::Relaxed) >= 8, "retries = {}", h.stats.retries.load(Ordering::Relaxed));
    assert_eq!(h.stats.delivered_records.load(Ordering::Relaxed), 500);
    // Retry-After: 1 was honoured: the 429's request was not retried sooner.
    let rx = c.received();
    let i = rx.iter().position(|r| r.status == 429).unwrap();
    let first = documents(Format::Ndjson, &rx[i].body)[0]["request_uuid"].clone();
    let again = rx[i + 1..]
        .iter()
        .find(|r| documents(Format::Ndjson, &r.body).first().map(|d| d["request_uuid"].clone()) == Some(first.clone()))
        .unwrap();
    assert!(again.at - rx[i].at >= Duration::from_millis(950), "retried after {:?}", again.at - rx[i].at);
    h.close().await;
}

#[tokio::test]
async fn too_large_splits_in_halves() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.set_max_records(7);
    let cfg = config(&c.url("/"), "batch_max_records = 64\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..300, 50).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    expect_all(&c, 300);
    let rx = c.received();
    assert!(rx.iter().any(|r| r.status == 413));
    assert!(rx.iter().filter(|r| r.status == 200).all(|r| documents(Format::Ndjson, &r.body).len() <= 7));
    assert_eq!(c.delivered_uuids().len(), 300, "split halves are not sent twice");
    assert_eq!(h.stats.dead_lettered_records.load(Ordering::Relaxed), 0);
    h.close().await;
}

#[tokio::test]
async fn a_single_record_still_too_large_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.script([Fault::Status(413, "".into()), Fault::Status(413, "".into()), Fault::Status(413, "".into())]);
    let cfg = config(&c.url("/"), "batch_max_records = 2\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..2, 2).await;
    h.wait_acked(1, Duration::from_secs(10)).await;
    // [u0,u1] -> 413, [u0] -> 413 (poison), [u1] -> 413 (poison).
    assert_eq!(h.stats.dead_lettered_records.load(Ordering::Relaxed), 2);
    let dl = std::fs::read_to_string(dir.path().join("dead-letter.ndjson")).unwrap();
    assert_eq!(dl.lines().count(), 2);
    assert!(dl.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["status"] == 413));
    h.close().await;
}

#[tokio::test]
async fn poison_batch_goes_to_the_dead_letter_file_and_the_stream_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let dl_path = dir.path().join("dl/poison.ndjson");
    let c = Collector::start(Format::Ndjson);
    c.set_poison("u-000017");
    let cfg = config(&c.url("/"), &format!("batch_max_records = 10\nmax_in_flight = 1\ndead_letter_file = \"{}\"\n", dl_path.display()));
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..100, 10).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    let got = c.delivered_set();
    for i in 0..100 {
        let u = format!("u-{i:06}");
        assert_eq!(got.contains(&u), !(10..20).contains(&i), "{u}");
    }
    let dl = std::fs::read_to_string(&dl_path).unwrap();
    let lines: Vec<serde_json::Value> = dl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 400);
    assert!(lines[0]["response"].as_str().unwrap().contains("mapper_parsing_exception"));
    let ids: Vec<&str> = lines[0]["records"].as_array().unwrap().iter().map(|r| r["request_uuid"].as_str().unwrap()).collect();
    assert_eq!(ids, (10..20).map(|i| format!("u-{i:06}")).collect::<Vec<_>>());
    assert_eq!(h.stats.dead_lettered_records.load(Ordering::Relaxed), 10);
    assert_eq!(h.stats.delivered_records.load(Ordering::Relaxed), 90);
    h.close().await;
}

#[tokio::test]
async fn refused_credentials_are_retried_not_dead_lettered_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.script([Fault::Status(401, "token expired".into()), Fault::Status(403, "forbidden".into())]);
    let cfg = config(&c.url("/"), "batch_max_records = 10\nmax_in_flight = 1\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..30, 10).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    expect_all(&c, 30);
    assert_eq!(h.stats.dead_lettered_records.load(Ordering::Relaxed), 0);
    assert_eq!(h.stats.retries.load(Ordering::Relaxed), 2);
    assert!(!dir.path().join("dead-letter.ndjson").exists());
    h.close().await;

    // `auth_failures = "dead_letter"`: like any other 4xx.
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.script([Fault::Status(401, "token expired".into())]);
    let cfg = config(&c.url("/"), "batch_max_records = 10\nmax_in_flight = 1\nauth_failures = \"dead_letter\"\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..30, 10).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    assert_eq!(h.stats.dead_lettered_records.load(Ordering::Relaxed), 10);
    assert_eq!(c.delivered_set().len(), 20);
    let dl = std::fs::read_to_string(dir.path().join("dead-letter.ndjson")).unwrap();
    assert!(dl.contains("\"status\":401"), "{dl}");
    h.close().await;
}

#[tokio::test]
async fn elasticsearch_bulk_bodies_pair_actions_and_documents() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Bulk);
    let cfg = config(&c.url("/_bulk"), "format = \"elasticsearch\"\nelasticsearch_index = \"calllogs\"\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..120, 40).await;
    h.wait_acked(h.sent, Duration::from_secs(10)).await;
    expect_all(&c, 120);
    for r in c.received() {
        assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/x-ndjson"));
        assert_eq!(r.headers.get("content-encoding").map(String::as_str), Some("gzip"));
        let text = String::from_utf8(r.body.clone()).unwrap();
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if i % 2 == 0 {
                assert_eq!(v["index"]["_index"], "calllogs");
                assert!(v["index"]["_id"].as_str().unwrap().starts_with("u-"));
            }
        }
    }
    h.close().await;
}

#[tokio::test]
async fn splunk_hec_events_carry_time_and_sourcetype() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Hec);
    let cfg =
        config(&c.url("/services/collector/event"), "format = \"splunk_hec\"\nsplunk_sourcetype = \"calllog\"\ncompression = \"none\"\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..30, 30).await;
    h.wait_acked(1, Duration::from_secs(10)).await;
    expect_all(&c, 30);
    let r = &c.received()[0];
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
    let text = std::str::from_utf8(&r.body).unwrap();
    let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(text).into_iter().map(Result::unwrap).collect();
    assert_eq!(events.len(), 30);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sourcetype"], "calllog");
        let want = (1_555_711_003_068 + i as i64) as f64 / 1000.0;
        assert!((e["time"].as_f64().unwrap() - want).abs() < 1e-6, "{e}");
        assert_eq!(e["event"]["request_uuid"], format!("u-{i:06}"));
    }
    h.close().await;
}

#[tokio::test]
async fn ecls_bodies_are_data_arrays_of_strings() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ecls);
    let cfg = config(&c.url("/"), "format = \"ecls\"\nbatch_max_records = 25\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..100, 100).await;
    h.wait_acked(1, Duration::from_secs(10)).await;
    expect_all(&c, 100);
    for r in c.received() {
        assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
        let docs = documents(Format::Ecls, &r.body);
        assert_eq!(docs.len(), 25);
        assert_eq!(docs[0]["bytes"], "113");
        assert_eq!(docs[0]["log_type"], "ML");
    }
    h.close().await;
}

#[tokio::test]
async fn byte_limit_bounds_requests() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    let cfg = config(&c.url("/"), "batch_max_bytes = 4096\ncompression = \"none\"\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..200, 50).await;
    h.wait_acked(h.sent, Duration::from_secs(10)).await;
    expect_all(&c, 200);
    assert!(c.received().len() > 10);
    assert!(c.received().iter().all(|r| r.body.len() <= 4096), "a request exceeded batch_max_bytes");
    h.close().await;
}

#[tokio::test]
async fn outage_without_spool_pauses_reading_then_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.set_down(true);
    let cfg = config(&c.url("/"), "spool_max_bytes = 0\nbatch_max_records = 10\nmax_in_flight = 2\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    // Bounded memory: the queue fills and `send` waits.
    let mut blocked = false;
    for i in 0..200 {
        let fut = h.send(i * 10..(i + 1) * 10, 10);
        if tokio::time::timeout(Duration::from_millis(500), fut).await.is_err() {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the sink kept taking batches while upstream was down");
    assert_eq!(h.acked(), 0);
    let sent_records = (h.sent - 1) * 10; // the last send was cut short
    c.set_down(false);
    wait_for("everything sent so far to arrive", Duration::from_secs(20), || {
        let got = c.delivered_set();
        (0..sent_records).all(|i| got.contains(&format!("u-{i:06}")))
    })
    .await;
    assert!(h.stats.retries.load(Ordering::Relaxed) > 0);
    h.close().await;
}

#[tokio::test]
async fn long_outage_spools_acknowledges_and_drains_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.set_down(true);
    let cfg = config(&c.url("/"), "spool_after_ms = 200\nbatch_max_records = 50\nmax_in_flight = 2\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..2000, 100).await;
    // While upstream is down every batch is acknowledged: durably spooled.
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    assert_eq!(c.delivered_uuids().len(), 0);
    let spool = dir.path().join("upstream-spool/ndjson");
    let files = std::fs::read_dir(&spool).unwrap().count();
    assert!(files >= 30, "{files} spool files");
    assert_eq!(h.stats.queued_records.load(Ordering::Relaxed), 2000, "spooled records are still pending delivery");
    assert!(h.stats.oldest_pending_observed_ms.load(Ordering::Relaxed) > 0);
    // Stop while still down; a new sink on the same state dir drains the spool.
    h.close().await;
    c.set_down(false);
    let mut h2 = Harness::start(&cfg, dir.path()).await;
    wait_for("the spool to drain", Duration::from_secs(20), || c.delivered_set().len() == 2000).await;
    expect_all(&c, 2000);
    wait_for("spool files to be deleted", Duration::from_secs(5), || std::fs::read_dir(&spool).unwrap().count() == 0).await;
    assert_eq!(h2.stats.delivered_records.load(Ordering::Relaxed), 2000);
    // New data flows after the backlog.
    h2.send(2000..2100, 50).await;
    h2.wait_acked(2, Duration::from_secs(10)).await;
    expect_all(&c, 2100);
    h2.close().await;
}

#[tokio::test]
async fn full_spool_drops_the_oldest_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.set_down(true);
    // About 30 KB per 50-record request: room for a handful.
    let cfg = config(&c.url("/"), "spool_after_ms = 100\nspool_max_bytes = 150000\nbatch_max_records = 50\nmax_in_flight = 1\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..2000, 100).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    let dropped = h.stats.dropped_records.load(Ordering::Relaxed) as usize;
    assert!(dropped >= 1000, "dropped {dropped}");
    c.set_down(false);
    wait_for("the surviving spool to drain", Duration::from_secs(20), || h.stats.queued_records.load(Ordering::Relaxed) == 0).await;
    let got = c.delivered_set();
    assert_eq!(got.len() + dropped, 2000, "every record is either delivered or counted as dropped");
    // The newest records survive.
    assert!(got.contains("u-001999"));
    h.close().await;
}

#[tokio::test]
async fn shutdown_flushes_what_is_batched_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    // A long flush interval: only shutdown sends this batch.
    let cfg = config(&c.url("/"), "flush_interval_ms = 600000\nbatch_max_records = 1000\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..10, 10).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.received().len(), 0);
    h.close().await;
    assert_eq!(h.acked(), 1);
    expect_all(&c, 10);
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period_without_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.set_down(true);
    let cfg = config(&c.url("/"), "spool_max_bytes = 0\nshutdown_grace_ms = 300\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..10, 5).await;
    let t = Instant::now();
    h.close().await;
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert_eq!(h.acked(), 0, "undelivered batches must not be acknowledged");
}

#[tokio::test]
async fn cancelled_shutdown_spools_pending_requests() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    c.set_down(true);
    let cfg = config(&c.url("/"), "spool_after_ms = 600000\n");
    let mut h = Harness::start(&cfg, dir.path()).await;
    h.send(0..10, 5).await;
    wait_for("a failed attempt", Duration::from_secs(5), || h.stats.retries.load(Ordering::Relaxed) > 0).await;
    h.shutdown.cancel();
    h.close().await;
    assert_eq!(h.acked(), 2, "pending requests are spooled (and so acknowledged) at shutdown");
    c.set_down(false);
    let mut h2 = Harness::start(&cfg, dir.path()).await;
    wait_for("the spool to drain", Duration::from_secs(10), || c.delivered_set().len() == 10).await;
    h2.close().await;
}

#[tokio::test]
async fn empty_batches_are_acknowledged_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(Format::Ndjson);
    let cfg = config(&c.url("/"), "");
    let mut h = Harness::start(&cfg, dir.path()).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let a = acked.clone();
    let b = Batch::new(
        "f".into(),
        vec![],
        0,
        Some(Box::new(move || {
            a.fetch_add(1, Ordering::SeqCst);
        })),
    );
    h.fanout.as_ref().unwrap().send(b).await.unwrap();
    wait_for("ack", Duration::from_secs(5), || acked.load(Ordering::SeqCst) == 1).await;
    assert_eq!(c.received().len(), 0);
    h.close().await;
}

#[test]
fn the_example_upstream_section_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/upstream.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    // The section as written (its credential file is not on this machine).
    let cfg: upstream::UpstreamSection = v["upstream"].clone().try_into().expect("examples/upstream.toml [upstream]");
    assert_eq!(cfg.gzip_level, 1);
    assert_eq!(cfg.spool_after_ms, 30_000);
}

/// End-to-end: the real `calllog-bridge run` binary tailing real files into
/// the collector (`Env` is also used by `upstream_tls`).
pub(crate) mod e2e {
    use std::collections::HashMap;
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::Child;
    use std::time::Duration;

    use crate::support;
    use crate::support_upstream::{documents, Collector, Fault, Format};

    const DEADLINE: Duration = Duration::from_secs(60);

    /// A scratch directory with logs, state and a bridge config.
    pub(crate) struct Env {
        /// Keeps the directory alive.
        _dir: tempfile::TempDir,
        /// The log directory the bridge follows.
        logs: PathBuf,
        /// The bridge's state_dir.
        pub(crate) state: PathBuf,
        /// The config file.
        pub(crate) config: PathBuf,
        /// The bridge's stderr.
        log: PathBuf,
        /// The running bridge.
        child: Option<Child>,
    }

    fn line(uuid: &str) -> String {
        format!(
            "{{\"request_uuid\":\"{uuid}\",\"request_time\":\"2024-01-01T00:00:00Z\",\"api_key\":\"k1\",\"method\":\"GET\",\"uri\":\"/v1/items?id={uuid}\",\"status\":\"200\",\"bytes\":\"113\",\"exec_time\":\"0.012\"}}\n"
        )
    }

    pub(crate) fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("{prefix}-{i:06}")).collect()
    }

    impl Env {
        pub(crate) fn new(url: &str, upstream_extra: &str) -> Env {
            let dir = tempfile::tempdir().unwrap();
            let logs = dir.path().join("logs");
            let state = dir.path().join("state");
            fs::create_dir_all(&logs).unwrap();
            let config = dir.path().join("bridge.toml");
            // Test timings, unless `upstream_extra` sets them.
            let mut upstream = String::new();
            for (k, v) in [("flush_interval_ms", "20"), ("retry_initial_ms", "20"), ("retry_max_ms", "200"), ("request_timeout_ms", "2000")]
            {
                if !upstream_extra.lines().any(|l| l.split('=').next().map(str::trim) == Some(k)) {
                    upstream.push_str(&format!("{k} = {v}\n"));
                }
            }
            let text = format!(
                "state_dir = {state:?}\nlog_level = \"info\"\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le-json\"\nrescan_interval_ms = 200\n\n\
                 [upstream]\nurl = {url:?}\n{upstream}{upstream_extra}\n\n\
                 [status]\nlisten = \"127.0.0.1:0\"\n",
                state = state.to_string_lossy(),
                glob = logs.join("access*.log*").to_string_lossy(),
            );
            fs::write(&config, text).unwrap();
            let log = dir.path().join("bridge.log");
            Env { _dir: dir, logs, state, config, log, child: None }
        }

        pub(crate) fn start(&mut self) {
            self.child = Some(support::spawn_bridge(&self.config, &self.log));
        }

        fn kill9(&mut self) {
            let mut c = self.child.take().expect("running");
            c.kill().unwrap();
            c.wait().unwrap();
        }

        pub(crate) fn stop(&mut self) {
            let mut child = self.child.take().expect("running");
            let status = support::terminate(&mut child, DEADLINE);
            assert!(status.success(), "bridge exited with {status}; log:\n{}", self.log_text());
        }

        pub(crate) fn append(&self, name: &str, ids: &[String]) {
            let mut f = OpenOptions::new().create(true).append(true).open(self.logs.join(name)).unwrap();
            f.write_all(ids.iter().map(|u| line(u)).collect::<String>().as_bytes()).unwrap();
        }

        pub(crate) fn log_text(&self) -> String {
            let t = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }

        /// Records held in the spool (from the spool files' headers).
        fn spooled_records(&self) -> usize {
            let dir = self.state.join("upstream-spool/ndjson");
            let Ok(rd) = fs::read_dir(dir) else { return 0 };
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
                .filter_map(|e| {
                    let text = fs::read(e.path()).ok()?;
                    let head = text.split(|&b| b == b'\n').next()?;
                    serde_json::from_slice::<serde_json::Value>(head).ok()?["records"].as_u64()
                })
                .sum::<u64>() as usize
        }

        fn path(&self, name: &str) -> PathBuf {
            self.logs.join(name)
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

    fn counts(c: &Collector) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for u in c.delivered_uuids() {
            *m.entry(u).or_insert(0) += 1;
        }
        m
    }

    pub(crate) fn wait_all(c: &Collector, env: &Env, want: &[String]) -> HashMap<String, usize> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let got = counts(c);
            let missing = want.iter().filter(|u| !got.contains_key(*u)).count();
            if missing == 0 {
                return got;
            }
            assert!(std::time::Instant::now() < deadline, "{missing} of {} records never arrived; log:\n{}", want.len(), env.log_text());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    #[test]
    fn kill9_during_delivery_loses_nothing_and_bounds_duplicates() {
        let c = Collector::start(Format::Ndjson);
        // ~50 records per 40 ms per request, 2 in flight: about 2,500 records/s.
        c.set_delay(Duration::from_millis(40));
        let mut env = Env::new(&c.url("/"), "batch_max_records = 50\nmax_in_flight = 2\n");
        let all = ids("k", 0..6000);
        env.append("access.log", &all);
        env.start();
        support::poll_until(DEADLINE, "some deliveries", || (c.delivered_uuids().len() >= 1500).then_some(()));
        env.kill9();
        let before = c.delivered_set().len();
        assert!(before < all.len(), "everything was delivered before the kill; slow the collector down");
        c.set_delay(Duration::ZERO);
        env.start();
        let got = wait_all(&c, &env, &all);
        env.stop();
        let got_after = counts(&c);
        let dups: usize = got_after.values().map(|n| n - 1).sum();
        assert!(got.keys().all(|u| all.contains(u)), "unexpected records arrived");
        // Re-sent after the restart: batches in flight or queued at the kill
        // and those acknowledged since the last checkpoint write (500 ms at
        // ~2,500 records/s), not the whole file.
        assert!(dups <= 2500, "{dups} duplicates after kill -9 (delivered before the kill: {before})");
        eprintln!("kill -9: {before} delivered before the kill, {dups} duplicates after restart");
    }

    #[test]
    fn outage_while_files_rotate_and_are_deleted_then_everything_arrives() {
        let c = Collector::start(Format::Ndjson);
        c.set_down(true);
        let mut env = Env::new(&c.url("/"), "batch_max_records = 100\nspool_after_ms = 300\n");
        env.start();
        let mut all = Vec::new();
        for round in 0..3 {
            let batch = ids(&format!("o{round}"), 0..1000);
            env.append("access.log", &batch);
            all.extend(batch);
            // Upstream is down: the records must reach the spool (and be
            // acknowledged) before Local Edition's rotation deletes the file.
            let want = all.len();
            support::poll_until(DEADLINE, "records spooled", || (env.spooled_records() >= want).then_some(()));
            fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            fs::remove_file(env.path("access.log.1")).unwrap();
        }
        assert_eq!(c.delivered_uuids().len(), 0);
        c.set_down(false);
        wait_all(&c, &env, &all);
        support::poll_until(DEADLINE, "spool drained", || (env.spooled_records() == 0).then_some(()));
        // Data written after the outage flows too.
        let more = ids("after", 0..200);
        env.append("access.log", &more);
        wait_all(&c, &env, &more);
        env.stop();
    }

    impl Env {
        /// The value of one `/metrics` sample line (`name{labels}`), 0 when absent.
        /// (0 also while the bridge is not listening yet.)
        pub(crate) fn metric(&self, sample: &str) -> f64 {
            use std::io::{Read, Write};
            let addr = fs::read_to_string(self.state.join("status.addr")).unwrap_or_default();
            let Ok(mut sock) = std::net::TcpStream::connect(addr.trim()) else { return 0.0 };
            let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
            let mut text = String::new();
            if sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_err() || sock.read_to_string(&mut text).is_err() {
                return 0.0;
            }
            text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
        }
    }

    /// Waits until every one of `want` was indexed by the collector.
    fn wait_indexed(c: &Collector, env: &Env, want: &[String]) {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let got = c.indexed_set();
            let missing: Vec<&String> = want.iter().filter(|u| !got.contains(*u)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {} records never indexed (first: {:?}); log:\n{}",
                missing.len(),
                want.len(),
                missing.first(),
                env.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn dead_letters(env: &Env) -> Vec<serde_json::Value> {
        fs::read_to_string(env.state.join("dead-letter.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// An Elasticsearch that refuses some items of each request (429 and
    /// 503, a few times each) answers 200 with `"errors": true`: only the
    /// refused items are sent again, and every record ends up indexed.
    #[test]
    fn elasticsearch_item_errors_are_retried_until_every_record_is_indexed() {
        let c = Collector::start(Format::Bulk);
        let all = ids("es", 0..300);
        for (i, u) in all.iter().enumerate() {
            match i % 10 {
                0 => c.item_statuses(u, &[429]),
                3 => c.item_statuses(u, &[503, 429]),
                7 => c.item_statuses(u, &[500, 503, 429]),
                _ => {}
            }
        }
        let mut env = Env::new(&c.url("/_bulk"), "format = \"elasticsearch\"\nbatch_max_records = 50\n");
        env.append("access.log", &all);
        env.start();
        wait_indexed(&c, &env, &all);
        assert!(dead_letters(&env).is_empty(), "nothing is refused for good");
        // Only refused items were sent again: 300 records, +30 +60 +90 repeats.
        let sent: usize = c.received().iter().map(|r| documents(Format::Bulk, &r.body).len()).sum();
        assert_eq!(sent, 300 + 30 + 60 + 90, "records sent again besides the refused ones");
        assert_eq!(c.indexed_uuids().len(), 300, "every record indexed once");
        env.stop();
    }

    /// Items refused for good (400) are dead-lettered with their own item
    /// error; items never taken are not acknowledged, so after `kill -9`
    /// the restarted bridge reads and delivers them again.
    #[test]
    fn elasticsearch_item_errors_acknowledge_only_what_was_indexed() {
        let c = Collector::start(Format::Bulk);
        let all = ids("ek", 0..200);
        let refused: Vec<String> = all[100..105].to_vec();
        for u in &refused {
            c.item_statuses(u, &[400]);
        }
        // Never taken while the first bridge runs.
        let stuck: Vec<String> = all[150..170].to_vec();
        for u in &stuck {
            c.item_statuses(u, &[429; 100_000]);
        }
        let mut env = Env::new(&c.url("/_bulk"), "format = \"elasticsearch\"\nbatch_max_records = 40\n");
        env.append("access.log", &all);
        env.start();
        let taken: Vec<String> = all.iter().filter(|u| !refused.contains(u) && !stuck.contains(u)).cloned().collect();
        wait_indexed(&c, &env, &taken);
        support::poll_until(DEADLINE, "the refused items in the dead-letter file", || (dead_letters(&env).len() == 5).then_some(()));
        let dl = dead_letters(&env);
        for (line, u) in dl.iter().zip(&refused) {
            assert_eq!(line["status"], 400, "{line}");
            assert_eq!(line["count"], 1);
            assert_eq!(line["records"][0]["request_uuid"], u.as_str());
            assert!(line["response"].as_str().unwrap().contains("mapper_parsing_exception"), "{line}");
        }
        // The stuck items are retried, never acknowledged: let a checkpoint
        // write pass, then kill.
        support::poll_until(DEADLINE, "retries of the stuck items", || {
            (env.metric("calllog_bridge_retries_total{sink=\"upstream\"}") >= 3.0).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        env.kill9();
        assert!(stuck.iter().all(|u| !c.indexed_set().contains(u)));
        c.state.item_statuses.lock().unwrap().clear();
        env.start();
        // The stuck records' batch was not acknowledged: it is read again
        // (its dead-lettered records with it: at least once).
        wait_indexed(&c, &env, &stuck);
        env.stop();
    }

    /// Splunk HEC: a 200 whose `code` is not 0 (server busy) delivered
    /// nothing and is retried; a 400 naming an invalid event dead-letters
    /// that event and sends the others again.
    #[test]
    fn splunk_hec_codes_and_invalid_events_are_honoured() {
        let c = Collector::start(Format::Hec);
        c.script([Fault::Status(200, "{\"text\":\"Server is busy\",\"code\":9}".into())]);
        let all = ids("hec", 0..100);
        c.hec_invalid(&all[42], usize::MAX);
        let mut env = Env::new(&c.url("/services/collector/event"), "format = \"splunk_hec\"\nbatch_max_records = 50\nmax_in_flight = 1\n");
        env.append("access.log", &all);
        env.start();
        let good: Vec<String> = all.iter().filter(|u| **u != all[42]).cloned().collect();
        wait_indexed(&c, &env, &good);
        support::poll_until(DEADLINE, "the invalid event in the dead-letter file", || (dead_letters(&env).len() == 1).then_some(()));
        let dl = dead_letters(&env);
        assert_eq!(dl[0]["status"], 400);
        assert_eq!(dl[0]["records"][0]["request_uuid"], all[42].as_str());
        assert!(dl[0]["response"].as_str().unwrap().contains("invalid-event-number"), "{}", dl[0]);
        assert!(!c.indexed_set().contains(&all[42]));
        let busy = c.received().iter().position(|r| r.status == 200).unwrap();
        assert!(c.received().len() > busy + 1, "the busy answer was retried");
        env.stop();
    }

    /// `Retry-After: 3600` parks a request for `retry_max_ms` at most, and
    /// is counted.
    #[test]
    fn retry_after_is_capped_by_retry_max_and_counted() {
        let c = Collector::start(Format::Ndjson);
        c.script([Fault::RetryAfter("3600".into())]);
        let all = ids("ra", 0..50);
        // retry_max_ms = 200 in the Env's config.
        let mut env = Env::new(&c.url("/"), "");
        env.append("access.log", &all);
        env.start();
        let t = std::time::Instant::now();
        wait_all(&c, &env, &all);
        assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
        support::poll_until(DEADLINE, "the capped Retry-After in /metrics", || {
            (env.metric("calllog_bridge_retry_after_capped_total{sink=\"upstream\"}") == 1.0).then_some(())
        });
        let rx = c.received();
        let i = rx.iter().position(|r| r.status == 429).unwrap();
        let waited = rx[i + 1].at - rx[i].at;
        assert!(waited < Duration::from_secs(5), "waited {waited:?} after Retry-After: 3600");
        env.stop();
    }

    /// Resident memory of a process, bytes (Linux).
    pub(crate) fn rss_bytes(pid: u32) -> u64 {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// A collector answering with a body that never ends (200, then 503)
    /// costs the bridge a few KB per answer, not the body: memory stays
    /// bounded and the records arrive.
    #[test]
    fn an_endless_answer_body_does_not_grow_memory() {
        const BOUND: u64 = 250 << 20;
        let c = Collector::start(Format::Ndjson);
        c.script([Fault::Endless(200), Fault::Endless(503), Fault::Endless(200)]);
        let mut env = Env::new(&c.url("/"), "request_timeout_ms = 4000\nbatch_max_records = 20\nmax_in_flight = 2\n");
        let all = ids("endless", 0..200);
        env.append("access.log", &all);
        env.start();
        let pid = env.child.as_ref().unwrap().id();
        let mut peak = 0;
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let rss = rss_bytes(pid);
            peak = peak.max(rss);
            if rss > BOUND {
                // Stop it before it takes the machine down.
                env.kill9();
                panic!("the bridge's memory grew to {} MB reading an endless answer", rss >> 20);
            }
            let got = c.delivered_set();
            if all.iter().all(|u| got.contains(u)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "records never arrived; log:\n{}", env.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(c.received().iter().filter(|r| r.status == 0 || r.status >= 200).count() >= 3);
        eprintln!("endless answers: peak RSS {} MB", peak >> 20);
        env.stop();
    }

    /// A collector's answer and a file name in the watched directory are
    /// peer-supplied: they reach the log escaped, never as a forged line
    /// or a terminal escape sequence.
    #[test]
    fn peer_text_cannot_forge_log_lines() {
        let forged = "2026-01-01T00:00:00.000000Z  INFO calllog_bridge: FORGED all records delivered";
        let c = Collector::start(Format::Ndjson);
        c.script([Fault::Status(500, format!("busy\n{forged}\u{1b}[2J\u{1b}]0;owned\u{7} \u{202e}gol.exe"))]);
        let mut env = Env::new(&c.url("/"), "");
        let all = ids("inj", 0..20);
        env.append("access.log", &all);
        // A rejected line in a file whose name carries a newline: logged
        // with the file name.
        let name = format!("access-\n{forged}.log");
        fs::write(env.logs.join(&name), "not json 2026\n").unwrap();
        env.start();
        wait_all(&c, &env, &all);
        support::poll_until(DEADLINE, "the rejected line's log line", || {
            fs::read_to_string(&env.log).unwrap_or_default().contains("rejected line").then_some(())
        });
        env.stop();
        let log = fs::read_to_string(&env.log).unwrap();
        assert!(log.contains("FORGED"), "the answer and the file name are logged: {log}");
        for line in log.lines() {
            assert!(!line.starts_with("2026-01-01T00:00:00.000000Z"), "a forged log line: {line:?}");
        }
        assert!(!log.contains('\u{1b}') && !log.contains('\u{7}'), "a terminal escape sequence reached the log");
        // A right-to-left override would show the rest of the line reversed.
        assert!(!log.contains('\u{202e}') && log.contains("\\u{202e}gol.exe"), "a bidirectional control reached the log raw");
        assert!(log.contains("busy\\n2026-01-01"), "escaped, still readable: {log}");
    }

    /// The records the collector must hold after an outage during which
    /// Local Edition rotated and deleted files: `kill -9` (before
    /// `spool_after_ms`) then a restart with a healthy collector delivers
    /// every record at least once, because a file's records are made
    /// durable before its last handle is released.
    #[test]
    fn outage_then_files_deleted_then_kill9_delivers_every_record() {
        let c = Collector::start(Format::Ndjson);
        c.fail_with(Some(503));
        // spool_after_ms far away: only the rule about files that go away
        // can put the records somewhere durable in time.
        let mut env = Env::new(&c.url("/"), "spool_after_ms = 600000\nbatch_max_records = 500\n");
        env.start();
        let records = |env: &Env| env.metric("calllog_bridge_records_total");
        let a = ids("del-a", 0..3000);
        env.append("access.log", &a);
        support::poll_until(DEADLINE, "the first file read", || (records(&env) >= 3000.0).then_some(()));
        // Rotation within the globs, then more traffic.
        fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
        let b = ids("del-b", 0..3000);
        env.append("access.log", &b);
        support::poll_until(DEADLINE, "the second file read", || (records(&env) >= 6000.0).then_some(()));
        assert!(c.delivered_uuids().is_empty());
        // One file deleted, the other rotated out of the globs and deleted.
        fs::remove_file(env.path("access.log.1")).unwrap();
        let out = env.logs.join("old-rotated");
        fs::rename(env.path("access.log"), &out).unwrap();
        fs::remove_file(&out).unwrap();
        // Killed once they are durable, or after 10 s (well before
        // spool_after_ms) if they never become so.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while env.spooled_records() < 6000 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        env.kill9();
        c.fail_with(None);
        env.start();
        let mut all = a;
        all.extend(b);
        wait_all(&c, &env, &all);
        env.stop();
    }

    /// SIGTERM while the collector fails: what is held goes to the spool
    /// at once (not after the grace period), and is delivered after the
    /// restart.
    #[test]
    fn sigterm_during_an_outage_spools_at_once() {
        let c = Collector::start(Format::Ndjson);
        c.fail_with(Some(503));
        let mut env = Env::new(&c.url("/"), "spool_after_ms = 600000\nbatch_max_records = 500\nshutdown_grace_ms = 30000\n");
        env.start();
        let a = ids("term", 0..3000);
        env.append("access.log", &a);
        support::poll_until(DEADLINE, "the file read", || (env.metric("calllog_bridge_records_total") >= 3000.0).then_some(()));
        support::poll_until(DEADLINE, "failed attempts", || {
            (env.metric("calllog_bridge_retries_total{sink=\"upstream\"}") >= 2.0).then_some(())
        });
        let t = std::time::Instant::now();
        env.stop();
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "the stop took {:?}: it waited for a failing collector; log:\n{}",
            t.elapsed(),
            env.log_text()
        );
        assert_eq!(env.spooled_records(), 3000, "everything undelivered is in the spool");
        c.fail_with(None);
        env.start();
        wait_all(&c, &env, &a);
        env.stop();
    }

    /// Adds `[file_output]` (archive under the state dir) and `[channel]`
    /// to the config; returns the archive path.
    fn with_archive_and_channel(env: &Env) -> PathBuf {
        let out = env.state.join("archive.ndjson");
        let mut text = fs::read_to_string(&env.config).unwrap();
        text.push_str(&format!(
            "\n[file_output]\npath = {:?}\nfsync_interval_ms = 50\n\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"a-long-enough-test-token\"\n",
            out.to_string_lossy()
        ));
        fs::write(&env.config, text).unwrap();
        out
    }

    fn archived(out: &std::path::Path) -> usize {
        fs::read_to_string(out).map(|t| t.lines().filter(|l| l.ends_with('}')).count()).unwrap_or(0)
    }

    /// A collector that stalls (never answers, or drips its answer) must
    /// not hold back the archive and the channel: the upstream spools what
    /// its full queue cannot take, and delivers it when the collector is
    /// back.
    fn a_stalled_collector_does_not_stall_the_others(mode: u8) {
        let c = Collector::start(Format::Ndjson);
        c.set_stall(mode);
        let mut env = Env::new(&c.url("/"), "request_timeout_ms = 10000\nspool_after_ms = 30000\n");
        let out = with_archive_and_channel(&env);
        env.start();
        let all = ids("stall", 0..40_000);
        env.append("access.log", &all);
        let t = std::time::Instant::now();
        support::poll_until(Duration::from_secs(25), "the archive to take every record", || (archived(&out) >= all.len()).then_some(()));
        eprintln!("stalled collector (mode {mode}): archive complete after {:?}", t.elapsed());
        support::poll_until(DEADLINE, "the channel to take every record", || {
            (env.metric("calllog_bridge_delivered_records_total{sink=\"channel\"}") >= all.len() as f64).then_some(())
        });
        c.set_stall(0);
        wait_all(&c, &env, &all);
        env.stop();
    }

    #[test]
    fn a_collector_that_never_answers_does_not_stall_the_archive_or_the_channel() {
        a_stalled_collector_does_not_stall_the_others(1);
    }

    #[test]
    fn a_collector_that_drips_its_answer_does_not_stall_the_archive_or_the_channel() {
        a_stalled_collector_does_not_stall_the_others(2);
    }
}
