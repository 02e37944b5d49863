//! Parse + enrich + serialise throughput on one thread, per input format.
//!
//! `cargo bench --bench parse` generates a few hundred thousand varied lines
//! in memory with the simulator (services, keys, statuses and timings vary;
//! a share of lines lack names, so enrichment has work to do), then times
//! the hot path the bridge runs for every line:
//! `LineParser::parse_line` → `Enricher::enrich` (the shipped example
//! lookups) → `Record::write_json` (`ndjson`) into a reused buffer.
//! It prints lines/s and MB/s for `le6` and `le5-csv` (and, for reference,
//! `le-json`), plus parse-only figures so the stages compare as ratios
//! within one run. "batch" is the path the running bridge takes: the text
//! in read-sized chunks (256 KiB, each copied into a fresh buffer as a read
//! fills one), parsed and enriched into a pipeline `Records` that borrows
//! from its chunk, then ndjson and drop, so the cost of building batches
//! shows as the difference from "full". "ingest" is the same through the
//! [`Ingest`] stage the bridge and the `parse` command now share: raw
//! 256 KiB reads (not cut at a newline: the stage frames lines and carries
//! the partial last one), parsed and enriched into a `Records` (not
//! stamped, as "batch"), so its difference from "batch" is the cost of the
//! shared framing. Each figure is the best of several rounds, timed in CPU
//! time of the bench thread (the machine is shared). `LINES=n` changes the number of lines per format, `FORMATS=le6,le5-csv`
//! picks formats.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use calllog_bridge::enrich::{Enricher, Lookups};
use calllog_bridge::ingest::{Context, Ingest, Rejected};
use calllog_bridge::parse::{Format, LineKind, LineParser};
use calllog_bridge::pipeline::{RecordSource, Records};
use calllog_bridge::record::{Record, Shape};
use calllog_bridge::sim::{le5_csv_header, Generator};

/// Rounds per figure; the best is reported.
const ROUNDS: usize = 5;

fn main() {
    let n: usize = std::env::var("LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let (enricher, lookup_files) = common::example_enricher();
    let tables = enricher.tables();
    println!("parse bench: {n} lines per format, one thread, best of {ROUNDS} rounds, {lookup_files} lookup files");
    let clock = if thread_cpu_ns().is_some() { "per CPU-second of the bench thread" } else { "per wall-clock second" };
    println!("figures are {clock}; full = parse + enrich + ndjson");
    println!(
        "{:<9} {:>16} {:>10} {:>16} {:>12} {:>14} {:>12} {:>14} {:>14}",
        "format", "full lines/s", "MB/s", "parse-only l/s", "ns/line", "batch l/s", "batch ns/line", "ingest l/s", "ingest ns/line"
    );
    let only = std::env::var("FORMATS").unwrap_or_default();
    for format in [Format::Le6, Format::Le5Csv, Format::LeJson] {
        if !only.is_empty() && !only.split(',').any(|f| f == format.name()) {
            continue;
        }
        let lines = generate(format, n);
        let bytes = lines.len();
        let full = best(|| run(format, &lines, Some((&enricher, &tables))));
        let parse_only = best(|| run(format, &lines, None));
        let owned = best(|| run_batched(format, &lines, &enricher, &tables));
        let ingest = best(|| run_ingest(format, &lines, &enricher, &tables));
        let per_s = n as f64 / full.as_secs_f64();
        println!(
            "{:<9} {:>16.0} {:>10.1} {:>16.0} {:>12.0} {:>14.0} {:>12.0} {:>14.0} {:>14.0}",
            format.name(),
            per_s,
            bytes as f64 / full.as_secs_f64() / 1e6,
            n as f64 / parse_only.as_secs_f64(),
            full.as_nanos() as f64 / n as f64,
            n as f64 / owned.as_secs_f64(),
            (owned.as_nanos() as f64 - full.as_nanos() as f64) / n as f64,
            n as f64 / ingest.as_secs_f64(),
            (ingest.as_nanos() as f64 - full.as_nanos() as f64) / n as f64
        );
    }
}

/// `n` lines of `format` (a header first for CSV), each a different call,
/// as one newline-separated buffer: the bytes a file of them holds, read
/// front to back as the bridge reads a file.
fn generate(format: Format, n: usize) -> Vec<u8> {
    let mut g = Generator::new(42);
    let start_ms = 1_700_000_000_000;
    let mut out = Vec::with_capacity(n * 800);
    if format == Format::Le5Csv {
        out.extend_from_slice(le5_csv_header().as_bytes());
        out.push(b'\n');
    }
    for i in 0..n {
        out.extend_from_slice(g.next_call(start_ms + i as i64 * 3, 0).render(format).as_bytes());
        out.push(b'\n');
    }
    out
}

/// CPU time of this thread so far (Linux: `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..ROUNDS).map(|_| f()).min().unwrap_or_default()
}

/// One pass over the lines; returns the elapsed time. Panics if a line is
/// rejected: the generated lines are all valid, a reject is a bug.
fn run(format: Format, text: &[u8], enrich: Option<(&Enricher, &Lookups)>) -> Duration {
    let mut parser = LineParser::new(format, 1 << 20);
    let mut out_buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut spare: Vec<Record<'static>> = Vec::with_capacity(4);
    let mut written = 0usize;
    let clock = Clock::start();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', text) {
        let line = &text[start..end];
        start = end + 1;
        let mut recs: Vec<Record<'_>> = recycle(std::mem::take(&mut spare));
        match parser.parse_line(line, &mut recs) {
            Ok(LineKind::Records(_)) | Ok(LineKind::Header) | Ok(LineKind::Blank) => {}
            Err(r) => panic!("generated {format} line rejected: {r}: {}", String::from_utf8_lossy(line)),
        }
        if let Some((e, tables)) = enrich {
            for rec in recs.iter_mut() {
                e.enrich(tables, rec);
                rec.write_json(Shape::Ndjson, &mut out_buf);
                out_buf.push(b'\n');
            }
            if out_buf.len() > (1 << 20) - 4096 {
                written += out_buf.len();
                out_buf.clear();
            }
        }
        spare = recycle(recs);
    }
    std::hint::black_box((written, out_buf.len()));
    clock.elapsed()
}

/// The records serialised as the archive does, into a 1 MiB buffer that is
/// counted and cleared when nearly full (no I/O).
struct Ndjson {
    buf: Vec<u8>,
    written: usize,
}

impl Ndjson {
    fn new() -> Ndjson {
        Ndjson { buf: Vec::with_capacity(1 << 20), written: 0 }
    }

    fn write(&mut self, records: &Records) {
        for rec in records.iter() {
            rec.write_json(Shape::Ndjson, &mut self.buf);
            self.buf.push(b'\n');
            if self.buf.len() > (1 << 20) - 4096 {
                self.written += self.buf.len();
                self.buf.clear();
            }
        }
    }

    fn finish(self) {
        std::hint::black_box((self.written, self.buf.len()));
    }
}

/// Bytes per chunk in the "batch" mode (the tail reader's read size).
const CHUNK: usize = 256 * 1024;

/// As the running bridge does: chunks of whole lines, each copied into a
/// fresh buffer, parsed and enriched into a [`Records`] borrowing from it,
/// serialised from there and dropped with their batch.
fn run_batched(format: Format, text: &[u8], e: &Enricher, tables: &Arc<Lookups>) -> Duration {
    let mut parser = LineParser::new(format, 1 << 20);
    let mut out = Ndjson::new();
    let clock = Clock::start();
    let mut rest = text;
    while !rest.is_empty() {
        let cut = memchr::memrchr(b'\n', &rest[..rest.len().min(CHUNK)]).map_or(rest.len(), |i| i + 1);
        let (chunk, tail) = rest.split_at(cut);
        rest = tail;
        let source = RecordSource { data: chunk.to_vec(), tables: tables.clone(), host: std::sync::Arc::from("bench-host") };
        let records = Records::borrowing(source, |src| {
            let mut out = Vec::new();
            for line in src.data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let first = out.len();
                match parser.parse_line(line, &mut out) {
                    Ok(_) => {}
                    Err(r) => panic!("generated {format} line rejected: {r}: {}", String::from_utf8_lossy(line)),
                }
                for rec in &mut out[first..] {
                    e.enrich(&src.tables, rec);
                }
            }
            out
        });
        out.write(&records);
        drop(records);
    }
    out.finish();
    clock.elapsed()
}

/// As the running bridge does since the shared ingest stage: raw reads of
/// [`CHUNK`] bytes after the carried rest, fed to one [`Ingest`] into a
/// [`Records`] borrowing from the buffer; the unconsumed rest is copied
/// into the next buffer.
fn run_ingest(format: Format, text: &[u8], e: &Enricher, tables: &Arc<Lookups>) -> Duration {
    let mut ingest = Ingest::new(format, 1 << 20, 0);
    let mut out = Ndjson::new();
    let mut carry: Vec<u8> = Vec::new();
    let clock = Clock::start();
    let mut rest = text;
    loop {
        let (read, tail) = rest.split_at(rest.len().min(CHUNK));
        rest = tail;
        let last = rest.is_empty();
        let mut data = std::mem::take(&mut carry);
        data.extend_from_slice(read);
        let mut consumed = 0;
        let source = RecordSource { data, tables: tables.clone(), host: std::sync::Arc::from("bench-host") };
        let records = Records::borrowing(source, |src| {
            let mut out = Vec::new();
            let mut rejects: Vec<Rejected<'_>> = Vec::new();
            let cx = Context { tables: &src.tables, enricher: Some(e), observed_ms: None, host: &src.host };
            consumed = ingest.feed(&src.data, last, &cx, &mut out, &mut rejects).consumed;
            if let Some(r) = rejects.first() {
                panic!("generated {format} line rejected: {}: {}", r.reject, String::from_utf8_lossy(r.raw));
            }
            out
        });
        carry = records.source_data().map(|d| d[consumed..].to_vec()).unwrap_or_default();
        out.write(&records);
        drop(records);
        if last {
            break;
        }
    }
    out.finish();
    clock.elapsed()
}

/// CPU time of the bench thread where the system tells it (the machine is
/// shared, so that is the fair "per core" figure), else wall time.
struct Clock {
    wall: Instant,
    cpu: Option<u64>,
}

impl Clock {
    fn start() -> Clock {
        Clock { wall: Instant::now(), cpu: thread_cpu_ns() }
    }

    fn elapsed(&self) -> Duration {
        match (self.cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => Duration::from_nanos(b - a),
            _ => self.wall.elapsed(),
        }
    }
}

// `filter_map` (not `filter`) because it changes the item type; the
// in-place collect reuses the allocation since the layouts are equal.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<Record<'_>>) -> Vec<Record<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}
