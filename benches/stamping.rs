//! What the sync-delay bookkeeping costs on the hot path, as a share of
//! the parse path's throughput.
//!
//! `cargo bench --bench stamping` generates le6 lines in memory with the
//! simulator and runs the reader's per-line work in chunks of
//! [`CHUNK_LINES`] lines (one clock read per chunk, as the tailer does):
//!
//! - `parse`: `LineParser::parse_line` only;
//! - `full`: parse → `Enricher::enrich` → `Record::write_json` (ndjson), the
//!   parse benchmark's path;
//! - each again **with** `Record::stamp_observed` per record and
//!   `FileStats::records_read` per chunk (sync-delay histogram, sample
//!   ring, counters, watermark; the transfer-delay histogram and ring, LE 6
//!   lines carrying their write time), and, in `full`, the serialisation of
//!   the two extra fields.
//!
//! It also times stamping + `records_read` alone over already-parsed
//! records, each chunk in cache as a chunk the reader just parsed is,
//! the figure least disturbed by a shared machine, and prints every cost as
//! a percentage of the matching path. Rounds are interleaved and the best
//! of [`ROUNDS`] is kept. `LINES=n` changes the number of lines.

mod common;

use std::time::{Duration, Instant};

use calllog_bridge::enrich::{Enricher, Lookups};
use calllog_bridge::parse::{Format, LineParser};
use calllog_bridge::record::{Record, Shape};
use calllog_bridge::sim::Generator;
use calllog_bridge::telemetry::{FileStats, Telemetry};

/// Rounds per figure; the best is reported.
const ROUNDS: usize = 7;

/// Lines per read chunk (one `now_ms()` and one `observed` call each).
const CHUNK_LINES: usize = 512;

/// What one pass does besides parsing.
#[derive(Clone, Copy)]
struct Mode {
    /// Enrich and serialise each record.
    full: bool,
    /// Stamp each record and report each chunk to the file's statistics.
    stamp: bool,
}

fn main() {
    let n: usize = std::env::var("LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let (enricher, _) = common::example_enricher();
    let tables = enricher.tables();
    let lines = generate(n);
    let telemetry = Telemetry::new();
    let stats = telemetry.file("/bench/access.log");

    let modes = [
        ("parse", Mode { full: false, stamp: false }),
        ("parse+stamp", Mode { full: false, stamp: true }),
        ("full", Mode { full: true, stamp: false }),
        ("full+stamp", Mode { full: true, stamp: true }),
    ];
    let mut best = [Duration::MAX; 4];
    let mut alone = Duration::MAX;
    let records = parsed(&lines);
    for _ in 0..ROUNDS {
        for (i, (_, mode)) in modes.iter().enumerate() {
            best[i] = best[i].min(run(&lines, *mode, &enricher, &tables, &stats));
        }
        alone = alone.min(stamp_only(&records, &stats));
    }

    println!("stamping bench: {n} le6 lines, chunks of {CHUNK_LINES}, one thread, best of {ROUNDS} interleaved rounds");
    println!("{:<12} {:>14} {:>10}", "path", "lines/s", "ns/line");
    for (i, (name, _)) in modes.iter().enumerate() {
        println!("{:<12} {:>14.0} {:>10.1}", name, n as f64 / best[i].as_secs_f64(), best[i].as_nanos() as f64 / n as f64);
    }
    let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
    let alone_ns = alone.as_nanos() as f64 / records.len() as f64;
    println!("stamp_observed + FileStats::records_read alone: {alone_ns:.1} ns/record");
    println!(
        "cost vs parse only:  {:.2}% (stamping alone), {:.2}% (difference of the two passes)",
        100.0 * alone_ns / ns(best[0]),
        100.0 * (ns(best[1]) - ns(best[0])) / ns(best[0])
    );
    println!(
        "cost vs full path:   {:.2}% (stamping alone), {:.2}% (difference, incl. serialising ingestion_time and sync_delay_ms)",
        100.0 * alone_ns / ns(best[2]),
        100.0 * (ns(best[3]) - ns(best[2])) / ns(best[2])
    );
    println!("throughput ratio full+stamp / full: {:.3}", best[2].as_secs_f64() / best[3].as_secs_f64());
    let h = stats.sync_delay_histogram();
    std::hint::black_box(h.count());
}

/// `n` le6 lines, each a different call, written 1.5 s after its request.
fn generate(n: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(42);
    let start_ms = calllog_bridge::time::now_ms() - 10_000;
    (0..n).map(|i| g.next_call(start_ms + i as i64 / 64, 1500).render(Format::Le6).into_bytes()).collect()
}

/// The records of every line, detached from the line buffers.
fn parsed(lines: &[Vec<u8>]) -> Vec<Record<'static>> {
    let mut parser = LineParser::new(Format::Le6, 1 << 20);
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        let mut recs = Vec::with_capacity(1);
        if let Err(r) = parser.parse_line(line, &mut recs) {
            panic!("generated le6 line rejected: {r}");
        }
        out.extend(recs.into_iter().map(Record::into_owned));
    }
    out
}

/// Stamping and the per-chunk statistics update over parsed records. Each
/// chunk is copied (untimed) just before it is stamped, so it is in cache as
/// a chunk the reader has just parsed is; only the stamping is timed.
fn stamp_only(records: &[Record<'static>], stats: &FileStats) -> Duration {
    let mut total = Duration::ZERO;
    let mut chunk: Vec<Record<'static>> = Vec::with_capacity(CHUNK_LINES);
    for src in records.chunks(CHUNK_LINES) {
        chunk.clear();
        chunk.extend_from_slice(src);
        let t = Instant::now();
        let observed_ms = calllog_bridge::time::now_ms();
        for r in chunk.iter_mut() {
            r.stamp_observed(observed_ms);
        }
        stats.records_read(observed_ms, chunk.iter().map(|r| (r.sync_delay_ms, r.write_time_ms)));
        total += t.elapsed();
        std::hint::black_box(&chunk);
    }
    total
}

/// One pass over the lines in chunks; returns the elapsed time.
fn run(lines: &[Vec<u8>], mode: Mode, enricher: &Enricher, tables: &Lookups, stats: &FileStats) -> Duration {
    let mut parser = LineParser::new(Format::Le6, 1 << 20);
    let mut out_buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut written = 0usize;
    let t = Instant::now();
    for chunk in lines.chunks(CHUNK_LINES) {
        let observed_ms = if mode.stamp { calllog_bridge::time::now_ms() } else { 0 };
        let mut recs: Vec<Record<'_>> = Vec::with_capacity(CHUNK_LINES);
        for line in chunk {
            let first = recs.len();
            if let Err(r) = parser.parse_line(line, &mut recs) {
                panic!("generated le6 line rejected: {r}");
            }
            for rec in &mut recs[first..] {
                if mode.stamp {
                    rec.stamp_observed(observed_ms);
                }
                if mode.full {
                    enricher.enrich(tables, rec);
                    rec.write_json(Shape::Ndjson, &mut out_buf);
                    out_buf.push(b'\n');
                }
            }
            if out_buf.len() > (1 << 20) - 8192 {
                written += out_buf.len();
                out_buf.clear();
            }
        }
        if mode.stamp {
            stats.records_read(observed_ms, recs.iter().map(|r| (r.sync_delay_ms, r.write_time_ms)));
        }
        std::hint::black_box(&recs);
    }
    let el = t.elapsed();
    std::hint::black_box((written, out_buf.len()));
    el
}
