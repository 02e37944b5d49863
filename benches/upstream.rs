//! Upstream sink throughput: file → parse → upstream (gzip NDJSON) into a
//! local collector that discards, and catch-up from the disk spool.
//!
//! `cargo bench --bench upstream` writes a file of generated LE 6 enriched
//! access-log lines (the simulator's varied calls), then times the path the
//! bridge runs for a backlog: read the file in groups of 500 lines, parse
//! and stamp them into pipeline batches whose records borrow from the
//! group's bytes (as the tail reader's chunks do), and push them
//! through the real upstream sink (default settings: gzip level 1, 1000
//! records per request, 4 in flight) over HTTP to a collector on 127.0.0.1
//! that counts bytes and answers 200. It prints records/s, MB/s of source
//! file, CPU seconds per million records (process CPU time from
//! `/proc/self/stat`, collector included), and the time a 1 GB backlog of
//! such files would take, extrapolated from the measured rate.
//! The second part fills the spool during a simulated outage and times its
//! drain once the collector answers; it extrapolates the drain of 1 GB of
//! spool the same way.
//!
//! "One core": run it as `taskset -c 0 cargo bench --bench upstream` (the
//! sink runs on a current-thread runtime, but gzip and file I/O use tokio's
//! blocking pool; `taskset` keeps all of them, and the collector, on one
//! CPU). The allowed CPUs are printed. `RECORDS=n` changes the record count,
//! `GZIP_LEVEL=n` the gzip level.

#[path = "../tests/it/support_upstream.rs"]
mod support_upstream;

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calllog_bridge::enrich::Lookups;
use calllog_bridge::parse::{Format, LineParser};
use calllog_bridge::pipeline::{Batch, Fanout, RecordSource, Records};
use calllog_bridge::sim::Generator;
use calllog_bridge::sink::upstream;
use calllog_bridge::sink::upstream::UpstreamConfig;
use calllog_bridge::sink::SinkContext;
use calllog_bridge::telemetry::Telemetry;
use support_upstream::Collector;
use tokio_util::sync::CancellationToken;

/// Records per pipeline batch (what a tailer hands over per read).
const PIPELINE_BATCH: usize = 500;

fn main() {
    let n: usize = std::env::var("RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(400_000);
    // The config's default level unless GZIP_LEVEL says otherwise.
    let level: u32 = std::env::var("GZIP_LEVEL").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        match config("http://x/", None, "").endpoint.compression {
            upstream::Compression::Gzip { level } => level,
            upstream::Compression::None => 0,
        }
    });
    let cpus = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Cpus_allowed_list")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    println!("upstream bench: {n} records, gzip level {level}, allowed CPUs: {cpus}");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("access.log");
    let file_bytes = write_lines(&file, n);
    println!("source file: {:.1} MB of LE 6 lines, {:.0} bytes/line", file_bytes as f64 / 1e6, file_bytes as f64 / n as f64);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        // 1. file → upstream.
        let c = Collector::start_discarding(support_upstream::Format::Ndjson);
        let cfg = config(&c.url("/"), Some(level), "");
        let (elapsed, cpu) = file_to_upstream(&cfg, &file, dir.path(), n).await;
        let rate = n as f64 / elapsed.as_secs_f64();
        let wire = c.state.bytes.load(Ordering::Relaxed);
        println!(
            "file -> upstream (gzip ndjson): {:.0} records/s, {:.1} MB/s of source file, {:.2} CPU s per million records, {:.1} MB on the wire ({} requests)",
            rate,
            file_bytes as f64 / elapsed.as_secs_f64() / 1e6,
            cpu / n as f64 * 1e6,
            wire as f64 / 1e6,
            c.state.requests.load(Ordering::Relaxed),
        );
        // The tailer's share, for the ratio: read + parse into batches, no sink.
        let cpu0 = cpu_seconds();
        let t = Instant::now();
        let parsed = parse_only(&file, n);
        let (pel, pcpu) = (t.elapsed(), cpu_seconds() - cpu0);
        println!(
            "  of which read + parse into batches (no sink): {:.0} records/s, {:.2} CPU s per million; the sink's share: {:.2} CPU s per million records (sink alone ~{:.0} records/s)",
            parsed as f64 / pel.as_secs_f64(),
            pcpu / parsed as f64 * 1e6,
            (cpu - pcpu) / n as f64 * 1e6,
            n as f64 / (cpu - pcpu).max(1e-9),
        );
        let per_gb = 1e9 / (file_bytes as f64 / n as f64);
        println!(
            "1 GB backlog of such files: {:.0} records, catch-up {:.0} s at the measured rate (extrapolated from {:.0} MB)",
            per_gb,
            per_gb / rate,
            file_bytes as f64 / 1e6
        );

        // 2. spool drain.
        let spool_n = (n / 2).max(1000);
        let c2 = Collector::start_discarding(support_upstream::Format::Ndjson);
        let state = dir.path().join("state");
        let cfg2 = config(&c2.url("/"), Some(level), "spool_after_ms = 0\n");
        c2.set_down(true);
        let spool_bytes = fill_spool(&cfg2, &file, &state, spool_n).await;
        c2.set_down(false);
        let (drain, cpu2) = drain_spool(&cfg2, &state, spool_n).await;
        let drate = spool_n as f64 / drain.as_secs_f64();
        println!(
            "spool drain: {spool_n} records ({:.1} MB of spool) in {:.2} s: {:.0} records/s, {:.2} CPU s per million records",
            spool_bytes as f64 / 1e6,
            drain.as_secs_f64(),
            drate,
            cpu2 / spool_n as f64 * 1e6
        );
        println!(
            "1 GB of spool: catch-up {:.0} s (extrapolated from {:.1} MB)",
            1e9 / (spool_bytes as f64 / drain.as_secs_f64()),
            spool_bytes as f64 / 1e6
        );
    });
}

fn config(url: &str, level: Option<u32>, extra: &str) -> UpstreamConfig {
    let level = level.map(|l| format!("gzip_level = {l}\n")).unwrap_or_default();
    toml::from_str(&format!("url = \"{url}\"\n{level}{extra}")).expect("config")
}

/// Writes `n` generated LE 6 lines; returns the file size.
fn write_lines(path: &std::path::Path, n: usize) -> u64 {
    let mut g = Generator::new(7);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for i in 0..n {
        let line = g.next_call(1_700_000_000_000 + i as i64 * 3, 0).render(Format::Le6);
        f.write_all(line.as_bytes()).expect("write");
        f.write_all(b"\n").expect("write");
    }
    f.flush().expect("flush");
    std::fs::metadata(path).expect("stat").len()
}

/// Process CPU time (user + system) in seconds.
fn cpu_seconds() -> f64 {
    let tck: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / tck
}

/// Reads, parses and sends the first `n` records of `file` through a fresh
/// upstream sink; returns (wall time until every batch is acknowledged,
/// CPU seconds).
async fn file_to_upstream(cfg: &UpstreamConfig, file: &std::path::Path, state: &std::path::Path, n: usize) -> (Duration, f64) {
    let (mut fanout, task, acked, _tel) = start(cfg, state).await;
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let batches = feed(&mut fanout, file, n, &acked).await;
    wait(&acked, batches).await;
    let el = t.elapsed();
    let cpu = cpu_seconds() - cpu0;
    drop(fanout);
    let _ = task.await;
    (el, cpu)
}

async fn start(
    cfg: &UpstreamConfig,
    state: &std::path::Path,
) -> (Fanout, tokio::task::JoinHandle<anyhow::Result<()>>, Arc<std::sync::atomic::AtomicUsize>, Telemetry) {
    let tel = Telemetry::new();
    let ctx = SinkContext { state_dir: state.to_path_buf(), shutdown: CancellationToken::new(), telemetry: tel.clone() };
    let mut fanout = Fanout::new();
    let (h, _control) = upstream::start(cfg, &ctx, &mut fanout).await.expect("start sink");
    (fanout, h.task, Arc::new(std::sync::atomic::AtomicUsize::new(0)), tel)
}

/// The tailer's work as the bridge does it: up to `n` records read from a
/// file in groups of [`PIPELINE_BATCH`] lines, each group parsed and
/// stamped into [`Records`] that borrow from the group's bytes.
struct BatchReader {
    r: BufReader<std::fs::File>,
    parser: LineParser,
    tables: Arc<Lookups>,
    /// Records still to read.
    left: usize,
}

impl BatchReader {
    fn new(file: &std::path::Path, n: usize) -> BatchReader {
        let r = BufReader::with_capacity(1 << 20, std::fs::File::open(file).expect("open"));
        BatchReader { r, parser: LineParser::new(Format::Le6, 1 << 20), tables: Arc::new(Lookups::empty()), left: n }
    }

    /// The next batch and its observed time; `None` at the end.
    fn next(&mut self) -> Option<(Records, i64)> {
        let mut data = Vec::with_capacity(PIPELINE_BATCH * 800);
        let mut lines = 0;
        while lines < PIPELINE_BATCH.min(self.left) && self.r.read_until(b'\n', &mut data).expect("read") > 0 {
            lines += 1;
        }
        if lines == 0 {
            return None;
        }
        let observed = calllog_bridge::time::now_ms();
        let parser = &mut self.parser;
        let records = Records::borrowing(RecordSource { data, tables: self.tables.clone(), host: std::sync::Arc::default() }, |src| {
            let mut out = Vec::with_capacity(lines);
            for line in src.data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let first = out.len();
                parser.parse_line(line, &mut out).expect("generated line parses");
                for rec in &mut out[first..] {
                    rec.stamp_observed(observed);
                }
            }
            out
        });
        self.left -= records.len();
        Some((records, observed))
    }
}

/// The tailer's part: lines → records → pipeline batches. Returns the
/// number of batches sent.
async fn feed(fanout: &mut Fanout, file: &std::path::Path, n: usize, acked: &Arc<std::sync::atomic::AtomicUsize>) -> usize {
    let mut reader = BatchReader::new(file, n);
    let mut sent = 0;
    while let Some((records, observed)) = reader.next() {
        let a = acked.clone();
        let b = Batch::new(
            "access.log".into(),
            records,
            observed,
            Some(Box::new(move || {
                a.fetch_add(1, Ordering::Relaxed);
            })),
        );
        fanout.send(b).await.expect("sink running");
        sent += 1;
    }
    sent
}

/// The tailer's work alone: read, parse and stamp `n` records into batches.
fn parse_only(file: &std::path::Path, n: usize) -> usize {
    let mut reader = BatchReader::new(file, n);
    let mut count = 0;
    while let Some((records, _)) = reader.next() {
        count += records.len();
        drop(std::hint::black_box(records));
    }
    count
}

async fn wait(acked: &std::sync::atomic::AtomicUsize, n: usize) {
    while acked.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends `n` records while the collector is down: they all go to the spool.
/// Returns the spool's size on disk.
async fn fill_spool(cfg: &UpstreamConfig, file: &std::path::Path, state: &std::path::Path, n: usize) -> u64 {
    let (mut fanout, task, acked, _tel) = start(cfg, state).await;
    let batches = feed(&mut fanout, file, n, &acked).await;
    wait(&acked, batches).await;
    drop(fanout);
    let _ = task.await;
    walkdir::WalkDir::new(state.join("upstream-spool"))
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Starts a sink on the spooled state and times the drain.
async fn drain_spool(cfg: &UpstreamConfig, state: &std::path::Path, n: usize) -> (Duration, f64) {
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let (fanout, task, _acked, tel) = start(cfg, state).await;
    let stats = tel.sink(upstream::NAME);
    while (stats.delivered_records.load(Ordering::Relaxed) as usize) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let el = t.elapsed();
    let cpu = cpu_seconds() - cpu0;
    drop(fanout);
    let _ = task.await;
    (el, cpu)
}
