//! `lag report` on a day of a busy host's archive (10 million records by
//! default, `LAG_REPORT_RECORDS=N` for another count): records per
//! CPU-second and peak memory (VmHWM) of the real binary, against `parse`
//! reading the same records (its output to /dev/null), as a ratio within
//! one run (the machine is shared).
//!
//! The records (archive NDJSON as `[file_output]` writes it, two hosts,
//! request times spread over the day, sync delays of 1-3 s with a
//! ten-minute episode) are generated once into a pool and streamed
//! through a pipe into the command's stdin, so no 13 GB file is needed;
//! the generator runs in this process and is not counted. CPU time
//! (user + system) and VmHWM come from `/proc/<pid>/`, read once the
//! command has exited and before it is reaped.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use calllog_bridge::parse::Format;
use calllog_bridge::record::Shape;
use calllog_bridge::sim::Generator;

/// 2026-12-06T00:00:00Z.
const DAY: i64 = 1_796_515_200_000;
/// Distinct lines generated, then repeated.
const POOL: usize = 50_000;

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_calllog-bridge"))
}

/// The pool of archive lines, request times spread evenly over the day.
fn pool() -> Vec<Vec<u8>> {
    let mut g = Generator::new(7);
    (0..POOL)
        .map(|i| {
            let t = DAY + (i as i64) * (86_400_000 / POOL as i64);
            let mut rec = g.next_call(t, 0).expected(Format::Ecls);
            let rt = rec.request_time_ms.unwrap_or(t);
            let host = if i % 2 == 0 { "edge-a" } else { "edge-b" };
            let episode = host == "edge-b" && (14 * 3_600_000..14 * 3_600_000 + 1_200_000).contains(&(rt - DAY));
            let delay = if episode { 600_000 } else { 1_000 + (i as i64 * 7919) % 2_000 };
            rec.host = host.into();
            rec.stamp_observed(rt + delay);
            let mut line = Vec::with_capacity(1600);
            rec.write_json(Shape::Ndjson, &mut line);
            line.push(b'\n');
            line
        })
        .collect()
}

/// What one run cost.
struct Cost {
    /// User + system CPU seconds.
    cpu_s: f64,
    /// Peak resident memory, bytes.
    hwm: u64,
    /// Wall seconds.
    wall_s: f64,
    /// What the command printed on stderr (its summary).
    stderr: String,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ).
const TICKS: f64 = 100.0;

fn proc_cpu_s(pid: u32) -> Option<(char, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the state.
    let user: f64 = f.get(11)?.parse().ok()?;
    let system: f64 = f.get(12)?.parse().ok()?;
    Some((state, (user + system) / TICKS))
}

fn proc_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Runs `args` with `records` lines of the pool on stdin.
fn measure(args: &[&str], pool: &[Vec<u8>], records: usize) -> Cost {
    let start = Instant::now();
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start calllog-bridge");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn({
        let pool: Vec<Vec<u8>> = pool.to_vec();
        move || {
            let mut buf = Vec::with_capacity(1 << 20);
            for i in 0..records {
                buf.extend_from_slice(&pool[i % pool.len()]);
                if buf.len() >= 1 << 20 {
                    if stdin.write_all(&buf).is_err() {
                        return;
                    }
                    buf.clear();
                }
            }
            let _ = stdin.write_all(&buf);
        }
    });
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut hwm = 0;
    // Sample the peak while it runs; once it is a zombie, its CPU times
    // are final (memory figures are gone by then).
    let cpu_s = loop {
        if let Some(h) = proc_hwm(pid) {
            hwm = hwm.max(h);
        }
        match proc_cpu_s(pid) {
            Some(('Z', cpu)) => break cpu,
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            None => break f64::NAN,
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    let status = child.wait().expect("wait");
    assert!(status.success() || status.code() == Some(1), "{args:?}: {status}");
    let _ = feeder.join();
    Cost { cpu_s, hwm, wall_s, stderr: reader.join().unwrap_or_default() }
}

fn main() {
    let records: usize = std::env::var("LAG_REPORT_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    println!("lag report bench: {records} archive records (NDJSON, two hosts, one day) through stdin");
    let pool = pool();
    let bytes: usize = (0..records).map(|i| pool[i % POOL].len()).sum();
    println!("input: {:.1} GB ({} bytes per record on average)", bytes as f64 / 1e9, bytes / records);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let report = measure(
        &["lag", "report", "--from", "2026-12-06T00:00:00Z", "--to", "2026-12-07T00:00:00Z", "--every", "5m", "--json", "-"],
        &pool,
        records,
    );
    let parse = measure(&["parse", "--no-progress", "-"], &pool, records);
    for (name, c) in [("lag report --every 5m", &report), ("parse (to /dev/null)", &parse)] {
        println!(
            "{name:<24} {:>12.0} records per CPU-second  CPU {:>7.2} s  wall {:>7.2} s  peak memory (VmHWM) {}",
            records as f64 / c.cpu_s,
            c.cpu_s,
            c.wall_s,
            mib(c.hwm)
        );
    }
    println!("lag report / parse CPU: {:.2}", report.cpu_s / parse.cpu_s);
    let summary = report.stderr.lines().next().unwrap_or("");
    println!("lag report said: {summary}");
}
