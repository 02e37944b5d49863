//! Gzip at level 1 on the upstream sink's request bodies, by
//! implementation (`cargo bench --bench gzip` prints the figures; no
//! harness): which one to use for `[upstream]`'s gzip NDJSON.
//!
//! The bodies are what the sink posts by default: NDJSON, 1,000 records
//! per request, from `RECORDS` (100,000) generated LE 6 lines parsed and
//! serialised by the bridge's own code. Each implementation compresses
//! every body `ROUNDS` (5) times, on this thread; the best round's thread
//! CPU time (`/proc/thread-self/schedstat`) gives records per CPU-second
//! of gzip alone and, with the JSON encoding measured the same way, of
//! encoding + gzip (the upstream sink's per-record work). Every output is
//! a standard gzip member, checked by decompressing it with flate2 and
//! comparing with the body.
//!
//! - `flate2 (zlib-rs)`: `flate2::write::GzEncoder`, what the sink uses
//!   (flate2's `zlib-rs` feature);
//! - `miniz_oxide`: its raw deflate at level 1 with a gzip header and a
//!   CRC-32 (`crc32fast`) around it;
//! - `libdeflate`: `libdeflater::Compressor::gzip_compress` (the C
//!   libdeflate; whole buffers only, no streaming).

use std::io::{Read, Write};
use std::time::Duration;

use calllog_bridge::parse::{Format, LineKind, LineParser};
use calllog_bridge::record::{Record, Shape};
use calllog_bridge::sim::Generator;

const PER_BODY: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time of this thread so far.
fn thread_cpu() -> Duration {
    let ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .expect("/proc/thread-self/schedstat");
    Duration::from_nanos(ns)
}

/// The bodies (NDJSON, `PER_BODY` records each) and the best CPU time of
/// serialising them.
fn bodies(records: usize, rounds: usize) -> (Vec<Vec<u8>>, Duration) {
    let mut g = Generator::new(42);
    let start_ms = calllog_bridge::time::now_ms() - 3_600_000;
    let lines: Vec<String> = (0..records).map(|i| g.next_call(start_ms + i as i64 * 3, 0).render(Format::Le6)).collect();
    let mut parser = LineParser::new(Format::Le6, 1 << 20);
    let mut parsed: Vec<Vec<Record<'_>>> = Vec::with_capacity(records);
    for line in &lines {
        let mut recs = Vec::new();
        match parser.parse_line(line.as_bytes(), &mut recs) {
            Ok(LineKind::Records(_)) => parsed.push(recs),
            other => panic!("a generated line did not parse: {:?}", other.err().map(|r| r.to_string())),
        }
    }
    let mut best = Duration::MAX;
    let mut out = Vec::new();
    for _ in 0..rounds {
        let t0 = thread_cpu();
        out = parsed
            .chunks(PER_BODY)
            .map(|chunk| {
                let mut b = Vec::with_capacity(chunk.len() * 1500);
                for rec in chunk.iter().flatten() {
                    rec.write_json(Shape::Ndjson, &mut b);
                    b.push(b'\n');
                }
                b
            })
            .collect();
        best = best.min(thread_cpu() - t0);
    }
    (out, best)
}

fn flate2_zlib_rs(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 6 + 64), flate2::Compression::new(1));
    gz.write_all(body).expect("write to a Vec");
    gz.finish().expect("finish to a Vec")
}

fn miniz(body: &[u8]) -> Vec<u8> {
    // RFC 1952: magic, CM = deflate, no flags, no mtime, XFL = 4 (fastest), OS = Unix.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 3];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(body, 1));
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out
}

fn libdeflate(c: &mut libdeflater::Compressor, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0; c.gzip_compress_bound(body.len())];
    let n = c.gzip_compress(body, &mut out).expect("the bound is enough");
    out.truncate(n);
    out
}

fn main() {
    let records = env_usize("RECORDS", 100_000);
    let rounds = env_usize("ROUNDS", 5).max(1);
    let (bodies, encode) = bodies(records, rounds);
    let raw: usize = bodies.iter().map(Vec::len).sum();
    let per_cpu = |d: Duration| records as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "gzip level 1 on {} bodies of {PER_BODY} records (NDJSON, {:.1} MB, {:.0} bytes/record); best of {rounds} rounds, this thread's CPU",
        bodies.len(),
        raw as f64 / 1e6,
        raw as f64 / records as f64
    );
    println!("JSON encoding alone: {:.0} records per CPU-second", per_cpu(encode));
    let mut ld = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).expect("level 1"));
    let mut rows: Vec<(&str, Duration, usize)> = Vec::new();
    for name in ["flate2 (zlib-rs)", "miniz_oxide", "libdeflate"] {
        let mut best = Duration::MAX;
        let mut outs: Vec<Vec<u8>> = Vec::new();
        for _ in 0..rounds {
            let t0 = thread_cpu();
            outs = bodies
                .iter()
                .map(|b| match name {
                    "flate2 (zlib-rs)" => flate2_zlib_rs(b),
                    "miniz_oxide" => miniz(b),
                    _ => libdeflate(&mut ld, b),
                })
                .collect();
            best = best.min(thread_cpu() - t0);
        }
        for (gz, body) in outs.iter().zip(&bodies) {
            let mut back = Vec::with_capacity(body.len());
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).expect("standard gzip");
            assert!(back == *body, "{name}: the gzip does not decompress to the body");
        }
        rows.push((name, best, outs.iter().map(Vec::len).sum()));
    }
    let base = rows[0].1;
    println!();
    println!(
        "| implementation | gzip alone, records per CPU-s | JSON + gzip, records per CPU-s | MB/s in | compressed | vs flate2 (zlib-rs) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, cpu, size) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.1}% ({:.0} bytes/record) | {:.2}× |",
            per_cpu(*cpu),
            per_cpu(*cpu + encode),
            raw as f64 / 1e6 / cpu.as_secs_f64().max(1e-9),
            100.0 * *size as f64 / raw as f64,
            *size as f64 / records as f64,
            base.as_secs_f64() / cpu.as_secs_f64().max(1e-9)
        );
    }
}
