//! `lag report`: a generated day of history with a known lag episode (a
//! 20-minute stretch of calls ten minutes late on one of two hosts) is
//! found, with its host, file, start, end and p95, from the archive (plain
//! and rotated `.gz`), from the replay log of a real bridge, and drawn as
//! a chart whose SVG has its axes, series and threshold.

use std::io::Write;
use std::path::{Path, PathBuf};

use calllog_bridge::parse::Format;
use calllog_bridge::record::Shape;
use calllog_bridge::sim::Generator;
use serde_json::Value;

use crate::support::run;

const MIN: i64 = 60_000;
/// 2026-12-06T00:00:00Z.
const DAY: i64 = 1_796_515_200_000;
/// The injected episode: calls of edge-b from 14:00 to 14:20 arrive ten
/// minutes late.
const EPISODE_START: i64 = DAY + 14 * 60 * MIN;
const EPISODE_END: i64 = EPISODE_START + 20 * MIN;
const EPISODE_DELAY: i64 = 600_000;

/// One generated record's host, request time and sync delay.
struct Truth {
    host: &'static str,
    request_ms: i64,
    delay_ms: i64,
}

/// Writes a day of archive records (NDJSON, as `[file_output]` writes them)
/// for two hosts, a call every 10 s each; the first half goes into a rotated
/// `.gz` file, the rest into the live file. Returns what was written.
fn write_day(dir: &Path) -> (Vec<PathBuf>, Vec<Truth>) {
    let rotated = dir.join("calls.ndjson.1.gz");
    let live = dir.join("calls.ndjson");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&rotated).unwrap(), flate2::Compression::fast());
    let mut plain = std::io::BufWriter::new(std::fs::File::create(&live).unwrap());
    let mut g = Generator::new(27);
    let mut truth = Vec::new();
    let mut line = Vec::new();
    let mut t = DAY;
    let mut i = 0u64;
    while t < DAY + 24 * 60 * MIN {
        for host in ["edge-a", "edge-b"] {
            let call = g.next_call(t, 0);
            let mut rec = call.expected(Format::Ecls);
            let rt = rec.request_time_ms.expect("request time");
            // A normal sync delay of 1-3 s; the episode's ten minutes.
            let jitter = (i * 7919 % 2000) as i64;
            let delay =
                if host == "edge-b" && (EPISODE_START..EPISODE_END).contains(&rt) { EPISODE_DELAY + jitter } else { 1_000 + jitter };
            rec.host = host.into();
            rec.stamp_observed(rt + delay);
            line.clear();
            rec.write_json(Shape::Ndjson, &mut line);
            line.push(b'\n');
            if t < DAY + 12 * 60 * MIN {
                gz.write_all(&line).unwrap();
            } else {
                plain.write_all(&line).unwrap();
            }
            truth.push(Truth { host, request_ms: rt, delay_ms: delay });
            i += 1;
        }
        t += 10_000;
    }
    gz.finish().unwrap();
    plain.flush().unwrap();
    (vec![rotated, live], truth)
}

/// The nearest-rank p95 of the delays of `host`'s calls in `[from, to)`.
fn true_p95(truth: &[Truth], host: &str, from: i64, to: i64) -> i64 {
    let mut d: Vec<i64> = truth.iter().filter(|t| t.host == host && (from..to).contains(&t.request_ms)).map(|t| t.delay_ms).collect();
    d.sort_unstable();
    d[((0.95 * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1]
}

fn ms(v: &Value) -> i64 {
    calllog_bridge::time::parse_iso(v.as_str().expect("a time")).expect("RFC 3339")
}

fn report(args: &[&str], inputs: &[PathBuf]) -> Value {
    let mut all: Vec<String> = ["lag", "report", "--from", "2026-12-06T00:00:00Z", "--to", "2026-12-07T00:00:00Z", "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend(inputs.iter().map(|p| p.display().to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = run(&refs);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// The single episode of a report is the injected one.
fn check_episode(r: &Value, truth: &[Truth], file: &str) {
    let episodes = r["episodes"].as_array().expect("episodes");
    assert_eq!(episodes.len(), 1, "{episodes:#?}");
    let e = &episodes[0];
    assert_eq!(e["host"], "edge-b");
    assert_eq!(e["file"], file);
    assert!((ms(&e["start"]) - EPISODE_START).abs() <= MIN, "start {}", e["start"]);
    assert!((ms(&e["end"]) - EPISODE_END).abs() <= MIN, "end {}", e["end"]);
    let want = true_p95(truth, "edge-b", EPISODE_START, EPISODE_END);
    let got = e["p95_ms"].as_i64().expect("p95_ms");
    assert!((got - want).abs() as f64 <= want as f64 * 0.05, "p95 {got} ms, true {want} ms");
    assert_eq!(e["recovered"], true);
    let max = truth.iter().filter(|t| t.host == "edge-b").map(|t| t.delay_ms).max().unwrap();
    assert_eq!(e["max_ms"], max);
}

#[test]
fn a_day_of_archive_with_a_lag_episode_on_one_host_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, truth) = write_day(dir.path());
    let live = inputs[1].display().to_string();
    let r = report(&["--every", "1m", "--threshold", "60s"], &inputs);
    check_episode(&r, &truth, &live);

    // Windows: the documented shape, every call counted once.
    let windows = r["windows"].as_array().expect("windows");
    assert_eq!(windows.len(), 2 * 24 * 60, "one window a minute per host");
    for w in windows {
        for key in ["start", "host", "file", "records", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            assert!(w.get(key).is_some(), "{key} missing in {w}");
        }
        assert!(w["start"].as_str().unwrap().ends_with('Z'));
    }
    let records: u64 = windows.iter().map(|w| w["records"].as_u64().unwrap()).sum();
    assert_eq!(records, truth.len() as u64);
    let above: Vec<&Value> = windows.iter().filter(|w| w["above_threshold"] == true).collect();
    assert_eq!(above.len(), 20, "the episode's twenty minutes");
    assert!(above.iter().all(|w| w["host"] == "edge-b"));
    // The worst windows are the episode's.
    assert!(r["worst"].as_array().unwrap().iter().all(|w| w["host"] == "edge-b" && w["above_threshold"] == true));

    // Per hour (the default): the episode is the 14:00 window of edge-b.
    let r = report(&["--threshold", "60s"], &inputs);
    let e = &r["episodes"][0];
    assert_eq!((e["host"].as_str(), ms(&e["start"]), ms(&e["end"])), (Some("edge-b"), DAY + 14 * 60 * MIN, DAY + 15 * 60 * MIN));
    assert_eq!(r["windows"].as_array().unwrap().len(), 48);

    // A threshold above the episode: no episode.
    let r = report(&["--every", "5m", "--threshold", "15m"], &inputs);
    assert_eq!(r["episodes"].as_array().unwrap().len(), 0);
}

#[test]
fn table_and_csv_show_the_same_episode_and_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, _) = write_day(dir.path());
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = ["lag", "report", "--from", "2026-12-06T13:00:00Z", "--to", "2026-12-06T16:00:00Z", "--every", "10m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(inputs.iter().map(|p| p.display().to_string()));
        a
    };
    let a = args(&[]);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8(out.stdout).unwrap();
    let episode = table.lines().find(|l| l.contains("edge-b") && l.contains("2026-12-06 14:00")).expect(&table);
    assert!(episode.contains("2026-12-06 14:20") && episode.contains("20m 0s"), "{episode}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("format le-json") && stderr.contains("observed: ingestion_time"), "{stderr}");

    let a = args(&["--csv"]);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("start,end,host,file,records,p50_ms,p95_ms,p99_ms,max_ms,min_ms,records_without_delay,above_threshold"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * 18);
    let above: Vec<&Vec<&str>> = rows.iter().filter(|r| r[11] == "true").collect();
    assert_eq!(above.len(), 2);
    assert!(above.iter().all(|r| r[2] == "edge-b" && r[0].starts_with("2026-12-06T14:")));
}

#[test]
fn bad_arguments_exit_64_naming_the_flag() {
    for (args, flag) in [
        (vec!["--from", "yesterday", "--to", "2026-12-07T00:00:00Z"], "--from"),
        (vec!["--from", "2026-12-07T00:00:00Z", "--to", "2026-12-06T00:00:00Z"], "--to"),
        (vec!["--from", "2026-12-06T00:00:00Z", "--to", "2026-12-07T00:00:00Z", "--every", "5 parsecs"], "--every"),
        (vec!["--from", "2026-12-06T00:00:00Z", "--to", "2027-12-07T00:00:00Z", "--every", "1s"], "--every"),
        (vec!["--from", "2026-12-06T00:00:00Z", "--to", "2026-12-07T00:00:00Z", "--threshold", "soon"], "--threshold"),
    ] {
        let mut a = vec!["lag", "report"];
        a.extend(args);
        a.push("/dev/null");
        let out = run(&a);
        assert_eq!(out.status.code(), Some(64), "{a:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag), "{a:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A missing input: reported, the others still read, exit 1.
    let out = run(&["lag", "report", "--from", "2026-12-06T00:00:00Z", "--to", "2026-12-07T00:00:00Z", "/nonexistent/calls.ndjson"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/calls.ndjson"));
    // `lag` itself keeps its options.
    let out = run(&["lag", "--status-url", "http://127.0.0.1:1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_chart_has_axes_a_series_per_host_and_statistic_the_threshold_and_the_episode_shaded() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, _) = write_day(dir.path());
    let (svg, png) = (dir.path().join("lag.svg"), dir.path().join("lag.png"));
    let mut a: Vec<String> = ["lag", "report", "--from", "2026-12-06T00:00:00Z", "--to", "2026-12-07T00:00:00Z", "--every", "5m", "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--svg".into(), svg.display().to_string(), "--png".into(), png.display().to_string()]);
    a.extend(inputs.iter().map(|p| p.display().to_string()));
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
    let by_id = |id: &str| doc.descendants().find(|n| n.attribute("id") == Some(id)).unwrap_or_else(|| panic!("#{id} in the SVG"));
    let texts = |id: &str| -> Vec<String> {
        by_id(id).descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(String::from).collect()
    };
    // Axes: labels with units, round ticks.
    assert_eq!(by_id("y-label").text(), Some("sync delay (min)"));
    assert!(by_id("x-label").text().unwrap().starts_with("request time (UTC"));
    let x_ticks = texts("x-axis");
    assert!(x_ticks.iter().any(|t| t == "12:00") && x_ticks.iter().any(|t| t == "14:00"), "{x_ticks:?}");
    let y_ticks: Vec<f64> = texts("y-axis").iter().filter_map(|t| t.parse().ok()).collect();
    assert!(y_ticks.len() >= 4 && y_ticks[0] == 0.0, "{y_ticks:?}");
    assert!(y_ticks.last().copied().unwrap() >= 10.0, "the axis reaches the episode's ten minutes: {y_ticks:?}");
    let step = y_ticks[1] - y_ticks[0];
    assert!([1.0, 2.0, 5.0, 10.0].contains(&step), "a round step: {y_ticks:?}");
    // A p50 and a p95 series per host, each a path through the windows.
    let series: Vec<(String, String, usize)> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("series"))
        .map(|n| {
            (
                n.attribute("data-host").unwrap().to_string(),
                n.attribute("data-stat").unwrap().to_string(),
                n.attribute("d").unwrap().matches('L').count(),
            )
        })
        .collect();
    let names: Vec<(&str, &str)> = series.iter().map(|(h, s, _)| (h.as_str(), s.as_str())).collect();
    assert_eq!(names, vec![("edge-a", "p95"), ("edge-a", "p50"), ("edge-b", "p95"), ("edge-b", "p50")]);
    assert!(series.iter().all(|s| s.2 >= 280), "a point per 5-minute window: {series:?}");
    // The threshold at 60 s, and the episode's windows shaded.
    assert_eq!(by_id("threshold").attribute("data-ms"), Some("60000"));
    let shaded: Vec<(i64, i64)> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("above"))
        .map(|n| (ms(&Value::from(n.attribute("data-start").unwrap())), ms(&Value::from(n.attribute("data-end").unwrap()))))
        .collect();
    assert_eq!(shaded, vec![(EPISODE_START, EPISODE_END)]);
    if let Ok(keep) = std::env::var("LAG_REPORT_KEEP_CHART") {
        std::fs::copy(&png, Path::new(&keep).join("lag.png")).unwrap();
        std::fs::copy(&svg, Path::new(&keep).join("lag.svg")).unwrap();
        for i in &inputs {
            std::fs::copy(i, Path::new(&keep).join(i.file_name().unwrap())).unwrap();
        }
    }
    // The PNG is an image of the chart's size.
    let png = std::fs::read(&png).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1000, 520));
}

#[test]
fn the_running_bridge_keeps_per_minute_history_for_history_and_its_chart() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    std::fs::create_dir_all(p("logs")).unwrap();
    // 600 calls, written at once, each 90 s late.
    let out = run(&[
        "simulate",
        "--format",
        "le6",
        "--burst",
        "--rate",
        "600",
        "--duration",
        "1",
        "--lag-ms",
        "90000",
        "--dir",
        p("logs").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = |minutes: u32| {
        format!(
            "host = \"edge-h\"\nstate_dir = {state:?}\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le6\"\nread_from = \"beginning\"\n\n\
             [file_output]\npath = {out:?}\n\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"lag-report-test-token\"\n\n\
             [status]\nlisten = \"127.0.0.1:0\"\nhistory_minutes = {minutes}\n",
            state = p(&format!("state{minutes}")).display().to_string(),
            glob = p("logs/access*.log*").display().to_string(),
            out = p(&format!("out{minutes}/calls.ndjson")).display().to_string(),
        )
    };
    for minutes in [120u32, 0] {
        std::fs::write(p("bridge.toml"), config(minutes)).unwrap();
        let mut bridge = crate::support::spawn_bridge(&p("bridge.toml"), &p("bridge.log"));
        let addr = crate::support::poll_until(Duration::from_secs(30), "status.addr", || {
            std::fs::read_to_string(p(&format!("state{minutes}/status.addr"))).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        });
        let url = format!("http://{addr}");
        crate::support::poll_until(Duration::from_secs(30), "600 records read", || {
            let (_, body) = crate::lag::get(&format!("{url}/status"));
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["totals"]["records"].as_u64() == Some(600)).then_some(())
        });
        let (code, body) = crate::lag::get(&format!("{url}/history?every_minutes=1&threshold_secs=60"));
        assert_eq!(code, 200, "{body}");
        let h: Value = serde_json::from_str(&body).unwrap();
        let records: u64 = h["windows"].as_array().unwrap().iter().map(|w| w["records"].as_u64().unwrap()).sum();
        if minutes == 0 {
            assert_eq!(records, 0, "history_minutes = 0 keeps none: {h}");
            assert!(h["episodes"].as_array().unwrap().is_empty());
        } else {
            assert_eq!(records, 600, "{h}");
            assert_eq!((ms(&h["to"]) - ms(&h["from"])) / MIN, 120);
            let e = &h["episodes"].as_array().unwrap()[0];
            assert_eq!(e["host"], "edge-h");
            assert!(e["file"].as_str().unwrap().ends_with("logs/access.log"), "{e}");
            let p95 = e["p95_ms"].as_i64().unwrap();
            assert!((90_000..100_000).contains(&p95), "the simulated 90 s: {p95}");
            let (code, svg) = crate::lag::get(&format!("{url}/history.svg?every_minutes=1"));
            assert_eq!(code, 200);
            let doc = roxmltree::Document::parse(&svg).expect("SVG");
            assert!(doc.descendants().any(|n| n.attribute("data-host") == Some("edge-h")));
            assert!(doc.descendants().any(|n| n.attribute("id") == Some("threshold")));
            let (code, body) = crate::lag::get(&format!("{url}/history?on=p42"));
            assert_eq!(code, 400);
            assert!(body.contains("on:"), "{body}");
        }
        crate::support::terminate(&mut bridge, Duration::from_secs(30));
    }
    // The replay log the channel kept: the same records, host and delays.
    let now = calllog_bridge::time::now_ms();
    let (from, to) =
        (calllog_bridge::time::format_iso_seconds(now - 86_400_000), calllog_bridge::time::format_iso_seconds(now + 86_400_000));
    let out = run(&["lag", "report", "--from", &from, "--to", &to, "--every", "1h", "--json", p("state120/replay").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &r["totals"][0];
    assert_eq!((t["host"].as_str(), t["records"].as_u64()), (Some("edge-h"), Some(600)), "{r}");
    assert!(t["file"].as_str().unwrap().ends_with("state120/replay"), "{t}");
    assert!((90_000..100_000).contains(&t["p95_ms"].as_i64().unwrap()), "{t}");
    assert_eq!(r["sources"][0]["format"], "replay");
}

#[test]
fn a_day_of_export_slices_with_the_bridge_columns_finds_the_same_episode() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, truth) = write_day(dir.path());
    let export = |name: &str, extra: &[&str]| {
        let out_dir = dir.path().join(name);
        let mut a: Vec<String> = ["export", "--from", "2026-12-06T00:00:00Z", "--to", "2026-12-07T00:00:00Z", "--gzip-level", "1", "--dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(out_dir.display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(inputs.iter().map(|p| p.display().to_string()));
        let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        out_dir
    };
    // The slices with the bridge's columns: the same episode, host, and p95.
    let slices = export("export", &["--bridge-columns"]);
    let first = std::fs::read_dir(&slices)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".csv.gz"))
        .unwrap();
    let mut header = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flate2::read::GzDecoder::new(std::fs::File::open(&first).unwrap())),
        &mut header,
    )
    .unwrap();
    assert!(header.starts_with("request_host_name,") && header.trim_end().ends_with(",ingestion_time,sync_delay_ms,host"), "{header}");
    let r = report(&["--every", "1m", "--threshold", "60s"], std::slice::from_ref(&slices));
    check_episode(&r, &truth, &slices.display().to_string());
    let records: u64 = r["windows"].as_array().unwrap().iter().map(|w| w["records"].as_u64().unwrap()).sum();
    assert_eq!(records, truth.len() as u64);

    // The hosted export's columns only: counted, but no delay to tell.
    let plain = export("plain", &[]);
    let r = report(&["--every", "1h"], std::slice::from_ref(&plain));
    let windows = r["windows"].as_array().unwrap();
    assert_eq!(windows.iter().map(|w| w["records_without_delay"].as_u64().unwrap()).sum::<u64>(), truth.len() as u64);
    assert!(windows.iter().all(|w| w["p95_ms"].is_null() && w["host"] == "-"));
    assert!(r["episodes"].as_array().unwrap().is_empty());
    assert_eq!(r["sources"][0]["observed"]["none"], 360, "a 30-minute slice of both hosts: {}", r["sources"][0]);
}
