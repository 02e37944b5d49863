//! Records per CPU-second into the Call Log Export (issue 18; goal at
//! least 300,000 on one core).
//!
//! `cargo bench --bench export` generates le6 calls with the simulator
//! (request times over two hours, so records spread over four 30-minute
//! slices), parses them once, then times, on one thread, what the
//! `[export]` sink does per batch: [`Exporter::write`] (the slice of each
//! record, the CSV row, the gzip stream) and [`Exporter::sync`] (gzip sync
//! flush and `fdatasync`) every [`BATCH`] records, in a temporary
//! directory, with gzip level 1 (the default), level 6 and plain CSV, and
//! level 1 with `escape_formulas = false` (what neutralising spreadsheet
//! formulas costs, as a ratio within one run). The CPU time
//! is the thread's own (`/proc/thread-self/schedstat`, nanoseconds on a
//! CPU), so waiting for the disk is not counted; the wall time is printed
//! too. Best of [`ROUNDS`]. `RECORDS=n` changes the number of records.

use std::time::Instant;

use calllog_bridge::parse::{Format, LineParser};
use calllog_bridge::record::Record;
use calllog_bridge::sim::Generator;
use calllog_bridge::sink::export::config::{ExportConfig, ExportSection};
use calllog_bridge::sink::export::exporter::Exporter;
use calllog_bridge::sink::export::stats::ExportStats;

/// Rounds; the best is reported.
const ROUNDS: usize = 5;

/// Records between syncs (a batch of the tailer is up to a few thousand).
const BATCH: usize = 2048;

/// This thread's time on a CPU, in seconds.
fn thread_cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e9
}

fn records(n: usize) -> Vec<Record<'static>> {
    let mut g = Generator::new(18);
    let start_ms = calllog_bridge::time::now_ms() - 2 * 3_600_000;
    let step = (2 * 3_600_000 / n.max(1)) as i64;
    let mut parser = LineParser::new(Format::Le6, 1 << 20);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let line = g.next_call(start_ms + i as i64 * step.max(1), 1500).render(Format::Le6);
        let mut recs = Vec::with_capacity(1);
        if let Err(r) = parser.parse_line(line.as_bytes(), &mut recs) {
            panic!("generated le6 line rejected: {r}");
        }
        out.extend(recs.into_iter().map(Record::into_owned));
    }
    out
}

/// One pass: (wall seconds, CPU seconds, bytes written).
fn pass(recs: &[Record<'static>], gzip: Option<u32>, escape_formulas: bool) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let level = gzip.map_or(String::new(), |l| format!("gzip_level = {l}\n"));
    let text = format!(
        "dir = {:?}\ngzip = {}\n{level}close_after_secs = 3600\nescape_formulas = {escape_formulas}\n",
        dir.path().to_string_lossy(),
        gzip.is_some()
    );
    let section: ExportSection = toml::from_str(&text).expect("section");
    let cfg = ExportConfig::from_section(section, dir.path()).expect("config");
    let now = calllog_bridge::time::now_ms();
    let (mut ex, _) = Exporter::start(&cfg, ExportStats::new(), now).expect("start");
    let (w0, c0) = (Instant::now(), thread_cpu_secs());
    for chunk in recs.chunks(BATCH) {
        ex.write(chunk, 0, now).expect("write");
        ex.sync().expect("sync");
    }
    let (wall, cpu) = (w0.elapsed().as_secs_f64(), thread_cpu_secs() - c0);
    let bytes = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    (wall, cpu, bytes)
}

fn main() {
    let n: usize = std::env::var("RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(400_000);
    let recs = records(n);
    for (gzip, escape_formulas) in [(Some(1), true), (Some(1), false), (Some(6), true), (None, true)] {
        let mut best = (f64::MAX, f64::MAX, 0);
        for _ in 0..ROUNDS {
            let r = pass(&recs, gzip, escape_formulas);
            if r.1 < best.1 {
                best = r;
            }
        }
        let (wall, cpu, bytes) = best;
        println!(
            "export ({}{}): {n} records in {BATCH}-record batches, best of {ROUNDS}: CPU {cpu:.2} s = {:.0} records per CPU-second (one core); wall {wall:.2} s = {:.0} records/s; {:.1} MB written ({:.0} bytes/record)",
            gzip.map_or("plain CSV".to_string(), |l| format!("gzip level {l}")),
            if escape_formulas { "" } else { ", escape_formulas = false" },
            n as f64 / cpu.max(1e-9),
            n as f64 / wall.max(1e-9),
            bytes as f64 / 1e6,
            bytes as f64 / n as f64,
        );
    }
}
