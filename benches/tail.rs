//! Tailing benchmarks against the real binary (`cargo bench --bench tail`
//! prints the figures; no harness).
//!
//! 1. Throughput: an `le6` file of `LINES` lines (default 200,000) written
//!    before the bridge starts; time and CPU (utime + stime of the bridge
//!    process, from `/proc`) until its checkpoint reaches the end of the
//!    file, i.e. every record is parsed, written to `[file_output]`,
//!    fsynced and acknowledged. "lines per CPU-second" is the one-core
//!    figure. Each round also runs `parse --stamp` on the same file into a
//!    file (the same parsing, stamping and NDJSON without the pipeline):
//!    `run / parse` is the ratio of their lines per CPU-second.
//! 2. Latency: one `le6` line appended per millisecond (1,000 lines/s) for
//!    3 s through the inotify path; every record's `sync_delay_ms` is its
//!    observed time minus the time it was appended: p50 / p99 / max.
//! 3. Idle CPU: 1,000 files watched, all read, then 10 s with no writes:
//!    CPU time used as a share of one core.
//!
//! `TAIL_BIN=path` runs another build of the binary (before/after figures
//! taken in one session).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calllog_bridge::parse::Format;
use calllog_bridge::sim::Generator;

/// The bridge binary: this build's, or `TAIL_BIN` (to compare builds in
/// one session, on the same load).
fn bin() -> PathBuf {
    std::env::var_os("TAIL_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_calllog-bridge")), PathBuf::from)
}

struct Bridge {
    child: Child,
    state: PathBuf,
}

impl Bridge {
    fn start(dir: &Path, glob: &str, fsync_ms: u64) -> Bridge {
        let state = dir.join("state");
        let config = dir.join("bridge.toml");
        fs::write(
            &config,
            format!(
                "state_dir = {:?}\nlog_level = \"warn\"\n[[source]]\npaths = [{:?}]\nformat = \"le6\"\n[file_output]\npath = {:?}\nfsync_interval_ms = {fsync_ms}\n[status]\nenabled = false\n",
                state.to_string_lossy(),
                dir.join(glob).to_string_lossy(),
                dir.join("out/out.ndjson").to_string_lossy()
            ),
        )
        .unwrap();
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start bridge");
        Bridge { child, state }
    }

    /// utime + stime in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 =
            f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        ticks / 100.0
    }

    /// Sum of checkpointed offsets and the number of files with one.
    fn committed(&self) -> (u64, usize) {
        let Ok(text) = fs::read_to_string(self.state.join("checkpoints.json")) else { return (0, 0) };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return (0, 0) };
        let files = v["files"].as_array().cloned().unwrap_or_default();
        let offsets: Vec<u64> = files.iter().filter_map(|f| f["offset"].as_u64()).collect();
        (offsets.iter().sum(), offsets.iter().filter(|o| **o > 0).count())
    }

    fn wait_committed(&self, bytes: u64, files: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.committed().0 < bytes || self.committed().1 < files {
            assert!(Instant::now() < deadline, "bridge did not catch up: {:?} of {bytes} bytes / {files} files", self.committed());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn throughput() {
    let lines: usize = std::env::var("LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let mut gen = Generator::new(1);
    let now = calllog_bridge::time::now_ms();
    let mut f = std::io::BufWriter::new(fs::File::create(dir.path().join("access.log")).unwrap());
    for i in 0..lines {
        let c = gen.next_call(now - 60_000 + i as i64 / 10, 1000);
        f.write_all(c.render(Format::Le6).as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let size = fs::metadata(dir.path().join("access.log")).unwrap().len();
    // Each round is a fresh bridge (new state and archive) on the same file,
    // then `parse` of that file into a file beside it (the same parse,
    // stamping and NDJSON, without the pipeline, the fsyncs and the
    // checkpoints), round-robin; the machine is shared, so the best round
    // is the figure, with the median beside it, and the ratio of `run` to
    // `parse` compares the two within this one run.
    let mut runs: Vec<(f64, f64)> = Vec::new();
    let mut parses: Vec<f64> = Vec::new();
    for _ in 0..rounds {
        let _ = fs::remove_dir_all(dir.path().join("state"));
        let _ = fs::remove_dir_all(dir.path().join("out"));
        let t0 = Instant::now();
        let b = Bridge::start(dir.path(), "access*.log", 200);
        b.wait_committed(size, 1, Duration::from_secs(300));
        let wall = t0.elapsed().as_secs_f64();
        let cpu = b.cpu_secs();
        b.stop();
        runs.push((wall, cpu));
        parses.push(parse_cpu(&dir.path().join("access.log"), &dir.path().join("out/parse.ndjson")));
    }
    let best = |i: usize| runs.iter().map(|r| if i == 0 { r.0 } else { r.1 }).fold(f64::MAX, f64::min);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut cpus: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let (wall, cpu, median_cpu) = (best(0), best(1), median(&mut cpus));
    let (parse_best, parse_median) = (parses.iter().copied().fold(f64::MAX, f64::min), median(&mut parses));
    let per_cpu = |c: f64| lines as f64 / c.max(0.01);
    println!(
        "throughput le6 -> file_output: {lines} lines ({:.0} MB), best of {rounds}: {wall:.2} s wall = {:.0} lines/s; CPU {cpu:.2} s = {:.0} lines per CPU-second (one core; median {:.0})",
        size as f64 / 1e6,
        lines as f64 / wall,
        per_cpu(cpu),
        per_cpu(median_cpu)
    );
    println!(
        "parse --stamp of the same file into a file: best {:.0}, median {:.0} lines per CPU-second; run / parse: {:.2} (medians), {:.2} (bests)",
        per_cpu(parse_best),
        per_cpu(parse_median),
        parse_median / median_cpu.max(0.01),
        parse_best / cpu.max(0.01)
    );
}

/// CPU seconds (user + system) of `calllog-bridge parse --format le6
/// --stamp FILE > out`, read from `/proc` once it has exited and before
/// it is reaped (a zombie keeps its figures).
fn parse_cpu(file: &Path, out: &Path) -> f64 {
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut child = Command::new(bin())
        .args(["parse", "--format", "le6", "--stamp", "--no-progress"])
        .arg(file)
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start parse");
    let stat = format!("/proc/{}/stat", child.id());
    let cpu = loop {
        let text = fs::read_to_string(&stat).unwrap_or_default();
        let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.first() == Some(&"Z") || f.is_empty() {
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            break (tick(11) + tick(12)) / 100.0;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let status = child.wait().expect("parse exits");
    assert!(status.success(), "parse failed: {status}");
    cpu
}

fn latency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut gen = Generator::new(2);
    // A first line so the file has its identity before the measurement.
    fs::write(&path, gen.next_call(calllog_bridge::time::now_ms(), 0).render(Format::Le6) + "\n").unwrap();
    let b = Bridge::start(dir.path(), "access*.log", 5);
    b.wait_committed(1, 1, Duration::from_secs(30));
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    let n = 3000;
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_micros(1000 * i as u64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let line = gen.next_call(calllog_bridge::time::now_ms(), 0).render(Format::Le6) + "\n";
        f.write_all(line.as_bytes()).unwrap();
    }
    let size = fs::metadata(&path).unwrap().len();
    b.wait_committed(size, 1, Duration::from_secs(30));
    b.stop();
    let text = fs::read_to_string(dir.path().join("out/out.ndjson")).unwrap();
    let mut d: Vec<i64> = text
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["sync_delay_ms"].as_i64())
        .collect();
    d.sort();
    let p = |q: f64| d[((d.len() as f64 - 1.0) * q) as usize];
    println!(
        "latency append -> read (inotify path) at 1,000 lines/s: {} records, p50 {} ms, p99 {} ms, max {} ms",
        d.len(),
        p(0.5),
        p(0.99),
        d[d.len() - 1]
    );
}

fn idle_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut gen = Generator::new(3);
    let mut total = 0;
    for i in 0..1000 {
        let line = gen.next_call(calllog_bridge::time::now_ms(), 0).render(Format::Le6) + "\n";
        total += line.len() as u64;
        fs::write(dir.path().join(format!("access{i:04}.log")), line).unwrap();
    }
    let b = Bridge::start(dir.path(), "access*.log", 50);
    b.wait_committed(total, 1000, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let c0 = b.cpu_secs();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let cpu = b.cpu_secs() - c0;
    let wall = t0.elapsed().as_secs_f64();
    b.stop();
    println!("idle CPU watching 1,000 files: {cpu:.2} s CPU in {wall:.1} s = {:.2}% of one core", 100.0 * cpu / wall);
}

fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if run("throughput") {
        throughput();
    }
    if run("latency") {
        latency();
    }
    if run("idle") {
        idle_cpu();
    }
}
