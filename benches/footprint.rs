//! Footprint of the running bridge: resident memory, CPU per line and
//! checkpoint writes, measured on the real binary as a separate process
//! (`cargo bench --bench footprint` prints the figures and a table; no
//! harness). Every figure comes from the kernel: `VmRSS` / `VmHWM` /
//! `RssAnon` from `/proc/<pid>/status`, user and system CPU time from
//! `/proc/<pid>/stat`, syscalls from `strace` attached to the process.
//!
//! Scenarios (name them as arguments, or in `FOOTPRINT_ONLY`, to run only
//! some: `cargo bench --bench footprint -- steady trickle`):
//!
//! - `steady`: the simulator writes LE 6 lines at `STEADY_RATE` (5,000)
//!   lines/s in 10 ms bursts; the bridge runs with `[channel]` (no client
//!   connected), `[file_output]` and `[status]` (`STEADY_SINKS`, default
//!   `archive+channel`) for `STEADY_SECS` (40: the
//!   channel's default replay ring of 100,000 records is full after 20 s).
//!   Steady RSS is the median of the samples (every 250 ms) over the last
//!   quarter; VmHWM is the peak.
//! - `archive`: `run` catching up a backlog of `BACKLOG_MB` (134) MB of LE
//!   6 lines written before it starts, into `[file_output]` (with
//!   `[status]`): peak RSS (VmHWM), wall time and user / system CPU until
//!   the checkpoint reaches the end of the file.
//! - `upstream`: the same backlog into `[upstream]` (gzip NDJSON, default
//!   settings) posting to a collector on 127.0.0.1 that discards and
//!   answers 200: the same figures.
//! - `trickle`, `checkpoint`, `syscalls`: a writer appends one line per
//!   `write()` at `TRICKLE_RATE` (1,000) lines/s, for each sink set in
//!   `TRICKLE_SINKS` (default `channel;archive+channel`, both with
//!   `[status]`; with the archive, an offset advances only after its fsync,
//!   at most once per `fsync_interval_ms`). After a 2 s warm-up:
//!   `trickle` is the CPU per line over `TRICKLE_SECS` (15); `checkpoint`
//!   counts, with `strace -f -ttt -y` attached, checkpoint rewrites and
//!   fsyncs per second over `CKPT_SECS` (8), attributed by path
//!   (`checkpoints.json`, the state directory, the archive); `syscalls` is
//!   every syscall per line over `SYSCALL_SECS` (8) from `strace -c`
//!   (futex = wake-ups; counted under strace, which slows the process).
//!   Without `/usr/bin/strace` the last two are printed as skipped.
//!
//! - `latency`: the same writer at `TRICKLE_RATE` lines/s, into `archive +
//!   channel` (`LATENCY_SINKS`), with one WebSocket client of the channel
//!   in this process: after a 2 s warm-up, for `LATENCY_SECS` (20), each
//!   line's time from just before its `write()` to its arrival at the
//!   client (matched by `request_uuid`): p50 / p99 / p99.9 / max, and the
//!   bridge's CPU per line over the same window (`LATENCY_DUMP=file`
//!   writes each line's append time and latency).
//!
//! `FOOTPRINT_BIN` runs another build of the bridge (before / after);
//! `SOURCE_EXTRA`, `STATUS_EXTRA`, `ARCHIVE_EXTRA`, `CHANNEL_EXTRA` and
//! `UPSTREAM_EXTRA` add settings to those sections (`SOURCE_EXTRA="read_delay_ms = 10"`).
//! All durations are environment variables (seconds); `ROUNDS` (1) repeats
//! the backlog runs (each run and the median printed). Defaults take about
//! three minutes on a 2-core machine. Variables the bridge reads pass
//! through to it (`MIMALLOC_ALLOW_THP=0` shows what transparent huge pages
//! cost, `MIMALLOC_SHOW_STATS=1` prints the allocator's figures at exit).

#[path = "../tests/it/support_upstream.rs"]
mod support_upstream;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calllog_bridge::parse::Format;
use calllog_bridge::sim::{self, Generator, SimOptions};

const TOKEN: &str = "footprint-bench-token-0123456789";
const STRACE: &str = "/usr/bin/strace";
const MIB: f64 = 1024.0 * 1024.0;

/// The bridge binary: this build's, or `FOOTPRINT_BIN` (another build, to
/// compare two versions with the same scenarios).
fn bin() -> PathBuf {
    std::env::var_os("FOOTPRINT_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_calllog-bridge")))
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn epoch_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One sample of a process's memory, in bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
}

/// CPU time of a process, seconds, and its page faults.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    user: f64,
    sys: f64,
    /// Minor page faults (a page mapped on first touch: memory the
    /// allocator returned to the kernel and touches again costs these).
    minflt: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.user + self.sys
    }
    fn since(&self, before: Cpu) -> Cpu {
        Cpu { user: self.user - before.user, sys: self.sys - before.sys, minflt: self.minflt - before.minflt }
    }
}

/// Which sinks a bridge runs with (`[status]` is always on).
#[derive(Clone, Copy, Debug)]
struct Sinks {
    archive: bool,
    channel: bool,
    /// `[upstream]` (to the URL given to [`Bridge::start`]).
    upstream: bool,
}

impl Sinks {
    /// `archive+channel` style names.
    fn parse(s: &str) -> Sinks {
        let mut k = Sinks { archive: false, channel: false, upstream: false };
        for part in s.split('+').map(str::trim) {
            match part {
                "archive" => k.archive = true,
                "channel" => k.channel = true,
                "" | "status" => {}
                other => {
                    eprintln!("unknown sink `{other}` in STEADY_SINKS / TRICKLE_SINKS (archive, channel)");
                    std::process::exit(2);
                }
            }
        }
        k
    }

    fn name(&self) -> String {
        let mut parts = Vec::new();
        if self.archive {
            parts.push("archive");
        }
        if self.upstream {
            parts.push("upstream");
        }
        if self.channel {
            parts.push("channel");
        }
        parts.push("status");
        parts.join(" + ")
    }
}

/// The bridge as a child process, with its state directory.
struct Bridge {
    child: Child,
    dir: PathBuf,
    tck: f64,
}

impl Bridge {
    /// Starts `calllog-bridge run` following `<dir>/access*.log` with the
    /// given sinks, every listener on 127.0.0.1:0, other settings default.
    fn start(dir: &Path, sinks: &Sinks, upstream_url: Option<&str>) -> Bridge {
        assert_eq!(sinks.upstream, upstream_url.is_some(), "[upstream] needs a URL");
        let state = dir.join("state");
        // `*_EXTRA` variables add settings to a section (to try a setting
        // without editing the bench), e.g. `CHANNEL_EXTRA="replay_records = 1000"`.
        let extra = |name: &str| env_str(name, "").replace("\\n", "\n");
        let mut cfg = format!(
            "state_dir = {:?}\nlog_level = \"warn\"\n[[source]]\npaths = [{:?}]\nformat = \"le6\"\n{}\n[status]\nlisten = \"127.0.0.1:0\"\n{}\n",
            state.to_string_lossy(),
            dir.join("access*.log").to_string_lossy(),
            extra("SOURCE_EXTRA"),
            extra("STATUS_EXTRA")
        );
        if sinks.archive {
            cfg += &format!("[file_output]\npath = {:?}\n{}\n", dir.join("out/out.ndjson").to_string_lossy(), extra("ARCHIVE_EXTRA"));
        }
        if sinks.channel {
            cfg += &format!("[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{}\n", extra("CHANNEL_EXTRA"));
        }
        if let Some(url) = upstream_url {
            cfg += &format!("[upstream]\nurl = \"{url}\"\n{}\n", extra("UPSTREAM_EXTRA"));
        }
        let path = dir.join("bridge.toml");
        fs::write(&path, cfg).expect("write the bridge config");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the bridge");
        Bridge { child, dir: dir.to_path_buf(), tck: clk_tck() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the status listener is up (the bridge wrote
    /// `status.addr`), i.e. sources and sinks are started.
    fn wait_ready(&mut self, timeout: Duration) {
        let addr = self.dir.join("state/status.addr");
        let deadline = Instant::now() + timeout;
        while !addr.exists() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the bridge exited at start: {st}");
            }
            assert!(Instant::now() < deadline, "the bridge did not start within {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn mem(&self) -> Mem {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kb = |key: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Mem { rss: kb("VmRSS:"), hwm: kb("VmHWM:"), anon: kb("RssAnon:") }
    }

    fn cpu(&self) -> Cpu {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; minflt, utime and
        // stime are fields 10, 14 and 15 of the whole line.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Cpu { user: ticks(14) / self.tck, sys: ticks(15) / self.tck, minflt: ticks(10) }
    }

    /// Sum of the checkpointed offsets.
    fn committed(&self) -> u64 {
        let Ok(text) = fs::read_to_string(self.dir.join("state/checkpoints.json")) else { return 0 };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return 0 };
        v["files"].as_array().map(|fs| fs.iter().filter_map(|f| f["offset"].as_u64()).sum()).unwrap_or(0)
    }

    /// SIGTERM, then wait for the exit (SIGKILL after 30 s).
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("the bridge did not stop within 30 s of SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One row of the final table.
struct Row {
    measured: String,
    value: String,
    goal: &'static str,
}

// ---------------------------------------------------------------------------
// 1. steady RSS

fn steady(rows: &mut Vec<Row>) {
    let rate = env_f64("STEADY_RATE", 5000.0);
    let secs = env_f64("STEADY_SECS", 40.0);
    // `STEADY_SINKS=archive` (or `channel`) leaves one out, to see its share.
    let sinks = Sinks::parse(&env_str("STEADY_SINKS", "archive+channel"));
    println!("== steady: {rate:.0} lines/s for {secs:.0} s, {}, no client", sinks.name());
    let dir = tempfile::tempdir().expect("temp dir");
    // The live file exists before the bridge starts (read from its start).
    fs::write(dir.path().join("access.log"), "").expect("create access.log");
    let mut b = Bridge::start(dir.path(), &sinks, None);
    b.wait_ready(Duration::from_secs(30));
    let idle = b.mem();
    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = SimOptions::new(Format::Le6, dir.path());
    opts.rate = rate;
    opts.duration_secs = 0.0;
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || sim::run(&opts, &stop))
    };
    let t0 = Instant::now();
    let cpu0 = b.cpu();
    let mut samples: Vec<(f64, Mem)> = Vec::new();
    let mut next_report = 5.0;
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_millis(250));
        let t = t0.elapsed().as_secs_f64();
        let m = b.mem();
        samples.push((t, m));
        if t >= next_report {
            println!("  t = {t:4.0} s: VmRSS {} (anon {}), VmHWM {}", mib(m.rss), mib(m.anon), mib(m.hwm));
            next_report += 5.0;
        }
    }
    let cpu = b.cpu().since(cpu0);
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let summary = writer.join().expect("simulator thread").expect("simulator");
    let size = fs::metadata(dir.path().join("access.log")).map(|m| m.len()).unwrap_or(0);
    let behind = size.saturating_sub(b.committed());
    let hwm = b.mem().hwm;
    b.stop();
    let tail_from = secs * 0.75;
    let mut last: Vec<f64> = samples.iter().filter(|(t, _)| *t >= tail_from).map(|(_, m)| m.rss as f64).collect();
    let mut last_anon: Vec<f64> = samples.iter().filter(|(t, _)| *t >= tail_from).map(|(_, m)| m.anon as f64).collect();
    let steady = median(&mut last);
    let steady_anon = median(&mut last_anon);
    println!(
        "  idle after start {}; steady VmRSS (median of the last {:.0} s) {} (anon {}); VmHWM {}",
        mib(idle.rss),
        secs - tail_from,
        mib(steady as u64),
        mib(steady_anon as u64),
        mib(hwm)
    );
    println!(
        "  {} lines written ({:.0} lines/s); CPU {:.2} s user + {:.2} s system = {:.1}% of a core, {:.1} µs per line; {:.0} minor faults/s; checkpoint {} bytes behind the file at the end",
        summary.lines,
        summary.lines as f64 / wall,
        cpu.user,
        cpu.sys,
        100.0 * cpu.total() / wall,
        cpu.total() / summary.lines.max(1) as f64 * 1e6,
        cpu.minflt / wall,
        behind
    );
    rows.push(Row {
        measured: format!("RSS, steady, {rate:.0} lines/s, {}, no client", sinks.name()),
        value: format!("{} (VmHWM {})", mib(steady as u64), mib(hwm)),
        goal: "≤ 32 MiB",
    });
}

// ---------------------------------------------------------------------------
// 2, 3, 6. backlog catch-up

/// Writes the backlog file (LE 6 lines with request times in the past);
/// returns its size and line count.
fn write_backlog(path: &Path, bytes: u64) -> (u64, u64) {
    let mut gen = Generator::new(1);
    let now = calllog_bridge::time::now_ms();
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).expect("create the backlog"));
    let (mut size, mut lines) = (0u64, 0u64);
    while size < bytes {
        let line = gen.next_call(now - 3_600_000 + lines as i64 / 10, 1000).render(Format::Le6);
        f.write_all(line.as_bytes()).expect("write the backlog");
        f.write_all(b"\n").expect("write the backlog");
        size += line.len() as u64 + 1;
        lines += 1;
    }
    f.flush().expect("flush the backlog");
    (size, lines)
}

/// One catch-up run's figures.
#[derive(Clone, Copy)]
struct CatchUp {
    wall: f64,
    cpu: Cpu,
    hwm: u64,
    /// Highest sampled RssAnon.
    anon: u64,
    /// When the highest VmRSS sample was taken, seconds after start.
    peak_at: f64,
}

fn catch_up(backlog: &Path, size: u64, sinks: &Sinks, url: Option<&str>) -> CatchUp {
    let dir = tempfile::tempdir().expect("temp dir");
    // A hard link: the same content, a new inode in a fresh directory (the
    // bridge reads it from the start, as it has no checkpoint).
    let file = dir.path().join("access.log");
    if fs::hard_link(backlog, &file).is_err() {
        fs::copy(backlog, &file).expect("copy the backlog");
    }
    let t0 = Instant::now();
    let b = Bridge::start(dir.path(), sinks, url);
    let deadline = t0 + Duration::from_secs(600);
    let (mut peak_rss, mut peak_at, mut anon) = (0u64, 0.0, 0u64);
    let mut timeline: Vec<(f64, u64)> = Vec::new();
    let mut next = 0.0;
    loop {
        let m = b.mem();
        let t = t0.elapsed().as_secs_f64();
        if m.rss > peak_rss {
            (peak_rss, peak_at) = (m.rss, t);
        }
        anon = anon.max(m.anon);
        if t >= next {
            timeline.push((t, m.rss));
            next += 0.5;
        }
        if b.committed() >= size {
            break;
        }
        assert!(Instant::now() < deadline, "the bridge did not catch up within 600 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = b.cpu();
    let hwm = b.mem().hwm;
    b.stop();
    let line: Vec<String> = timeline.iter().map(|(t, r)| format!("{t:.1}s:{:.0}", *r as f64 / MIB)).collect();
    println!("  VmRSS MiB over time: {}", line.join(" "));
    CatchUp { wall, cpu, hwm, anon, peak_at }
}

fn backlog_runs(name: &str, backlog: &Path, size: u64, lines: u64, sinks: &Sinks, url: Option<&str>) -> CatchUp {
    let rounds = env_f64("ROUNDS", 1.0).max(1.0) as usize;
    println!("== {name}: `run` catching up {:.0} MB ({lines} lines) of LE 6 into {}", size as f64 / 1e6, sinks.name());
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let r = catch_up(backlog, size, sinks, url);
        println!(
            "  peak RSS (VmHWM) {} (sampled peak at {:.1} s, RssAnon up to {}); {:.2} s wall; CPU {:.2} s user + {:.2} s system = {:.2} s ({:.2} µs per line); {:.0} minor page faults ({:.0} per MB read)",
            mib(r.hwm),
            r.peak_at,
            mib(r.anon),
            r.wall,
            r.cpu.user,
            r.cpu.sys,
            r.cpu.total(),
            r.cpu.total() / lines as f64 * 1e6,
            r.cpu.minflt,
            r.cpu.minflt / (size as f64 / 1e6)
        );
        runs.push(r);
    }
    if rounds > 1 {
        let mut h: Vec<f64> = runs.iter().map(|r| r.hwm as f64).collect();
        let mut c: Vec<f64> = runs.iter().map(|r| r.cpu.total()).collect();
        println!("  median of {rounds}: VmHWM {}, CPU {:.2} s", mib(median(&mut h) as u64), median(&mut c));
    }
    // The median run by peak RSS stands for the scenario.
    runs.sort_by_key(|r| r.hwm);
    runs[runs.len() / 2]
}

fn backlog(rows: &mut Vec<Row>, archive: bool, upstream: bool) {
    let mb = env_f64("BACKLOG_MB", 134.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("backlog.log");
    let t = Instant::now();
    let (size, lines) = write_backlog(&path, (mb * 1e6) as u64);
    println!(
        "backlog: {:.0} MB, {lines} lines ({:.0} bytes per line), written in {:.1} s",
        size as f64 / 1e6,
        size as f64 / lines as f64,
        t.elapsed().as_secs_f64()
    );
    if archive {
        let sinks = Sinks { archive: true, channel: false, upstream: false };
        let r = backlog_runs("archive", &path, size, lines, &sinks, None);
        rows.push(Row {
            measured: format!("peak RSS, `run` catching up a {:.0} MB backlog → archive", size as f64 / 1e6),
            value: mib(r.hwm),
            goal: "≤ 64 MiB",
        });
        rows.push(Row {
            measured: "`run` CPU split on a backlog (→ archive)".into(),
            value: format!(
                "{:.2} s user vs {:.2} s system ({:.0}% system), {:.2} s wall",
                r.cpu.user,
                r.cpu.sys,
                100.0 * r.cpu.sys / r.cpu.total().max(1e-9),
                r.wall
            ),
            goal: "user-dominated",
        });
    }
    if upstream {
        let collector = support_upstream::Collector::start_discarding(support_upstream::Format::Ndjson);
        let url = collector.url("/");
        let sinks = Sinks { archive: false, channel: false, upstream: true };
        let r = backlog_runs("upstream", &path, size, lines, &sinks, Some(&url));
        println!(
            "  collector: {} requests, {:.1} MB on the wire",
            collector.state.requests.load(Ordering::Relaxed),
            collector.state.bytes.load(Ordering::Relaxed) as f64 / 1e6
        );
        rows.push(Row {
            measured: "peak RSS, `run` → upstream gzip NDJSON, same backlog".into(),
            value: format!("{} ({:.2} s user vs {:.2} s system)", mib(r.hwm), r.cpu.user, r.cpu.sys),
            goal: "≤ 64 MiB",
        });
    }
}

// ---------------------------------------------------------------------------
// 4, 5. trickle traffic

/// Appends one LE 6 line per `write()` at `rate` lines/s until `stop`;
/// counts the lines in `written`.
/// With `sent`, each line's `request_uuid` and the instant just before its
/// `write()` are recorded there.
fn trickle_writer(
    path: PathBuf,
    rate: f64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    sent: Option<Sent>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().append(true).open(&path).expect("open the live file");
        let mut gen = Generator::new(4);
        let start = Instant::now();
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let call = gen.next_call(calllog_bridge::time::now_ms(), 0);
            let mut line = call.render(Format::Le6);
            line.push('\n');
            if let Some(sent) = &sent {
                sent.lock().expect("sent lines").push((call.request_uuid().to_string(), Instant::now()));
            }
            // One write() per line, as a logger without buffering does.
            f.write_all(line.as_bytes()).expect("append a line");
            i += 1;
            written.store(i, Ordering::Relaxed);
        }
    })
}

fn strace_available() -> bool {
    Path::new(STRACE).exists()
}

/// Runs strace on `pid` (all threads) for `secs` seconds; returns its
/// output file's text and the measured window (epoch seconds).
fn strace(pid: u32, args: &[&str], secs: f64, out: &Path) -> Option<(String, f64, f64)> {
    let mut child = Command::new(STRACE)
        .args(["-f", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Attaching to every thread takes a moment: the window starts after it.
    std::thread::sleep(Duration::from_millis(500));
    let from = epoch_secs();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let to = epoch_secs();
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let st = child.wait().ok()?;
    let text = fs::read_to_string(out).ok()?;
    if text.is_empty() {
        eprintln!("strace produced nothing ({st}); is ptrace allowed here?");
        return None;
    }
    Some((text, from, to))
}

/// Checkpoint rewrites and syncs in a window, by path.
#[derive(Debug, Default)]
struct Syncs {
    ckpt_renames: u64,
    ckpt_fsyncs: u64,
    state_dir_fsyncs: u64,
    archive_syncs: u64,
    other_syncs: u64,
}

/// Counts the calls in `strace -f -ttt -y` output within [from, to].
fn count_syncs(text: &str, from: f64, to: f64, state: &str) -> Syncs {
    let mut s = Syncs::default();
    let state_fd = format!("<{state}>");
    for line in text.lines() {
        // `[pid] epoch.usec call(...)`; a call interrupted by another
        // thread's shows as `call(... <unfinished ...>` and later
        // `<... call resumed>`: only the first is counted.
        let mut words = line.split_whitespace();
        let ts = words.by_ref().take(2).filter_map(|w| w.parse::<f64>().ok()).find(|t| *t > 1e9);
        let Some(ts) = ts else { continue };
        if ts < from || ts > to {
            continue;
        }
        let call = line.split_whitespace().find(|w| w.contains('(')).unwrap_or("");
        let is_sync = call.starts_with("fsync(") || call.starts_with("fdatasync(");
        let is_rename = call.starts_with("rename(") || call.starts_with("renameat(") || call.starts_with("renameat2(");
        if is_rename && line.contains("checkpoints.json") {
            s.ckpt_renames += 1;
        } else if is_sync && line.contains("checkpoints.json") {
            s.ckpt_fsyncs += 1;
        } else if is_sync && line.contains(&state_fd) {
            s.state_dir_fsyncs += 1;
        } else if is_sync && line.contains("/out/") {
            s.archive_syncs += 1;
        } else if is_sync {
            s.other_syncs += 1;
        }
    }
    s
}

/// The `strace -c` summary: (syscall, calls) per row.
fn parse_summary(text: &str) -> Vec<(String, u64)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if w.len() < 5 || w[0].parse::<f64>().is_err() || w[w.len() - 1] == "total" {
            continue;
        }
        if let Ok(calls) = w[3].parse::<u64>() {
            rows.push((w[w.len() - 1].to_string(), calls));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    rows
}

fn trickle(rows: &mut Vec<Row>, cpu_part: bool, ckpt_part: bool, sys_part: bool) {
    let rate = env_f64("TRICKLE_RATE", 1000.0);
    let secs = env_f64("TRICKLE_SECS", 15.0);
    let ckpt_secs = env_f64("CKPT_SECS", 8.0);
    let sys_secs = env_f64("SYSCALL_SECS", 8.0);
    let have_strace = strace_available();
    for set in env_str("TRICKLE_SINKS", "channel;archive+channel").split(';').filter(|s| !s.trim().is_empty()) {
        let sinks = Sinks::parse(set);
        println!("== trickle: {rate:.0} lines/s, one write() per line, {}", sinks.name());
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("access.log");
        fs::write(&live, "").expect("create access.log");
        let mut b = Bridge::start(dir.path(), &sinks, None);
        b.wait_ready(Duration::from_secs(30));
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = trickle_writer(live.clone(), rate, stop.clone(), written.clone(), None);
        // Warm-up: the first lines start the reader and the sinks.
        std::thread::sleep(Duration::from_secs(2));
        if cpu_part {
            let (c0, n0, t0) = (b.cpu(), written.load(Ordering::Relaxed), Instant::now());
            std::thread::sleep(Duration::from_secs_f64(secs));
            let (cpu, n, wall) = (b.cpu().since(c0), written.load(Ordering::Relaxed) - n0, t0.elapsed().as_secs_f64());
            let per_line = cpu.total() / n.max(1) as f64 * 1e6;
            println!(
                "  CPU over {wall:.0} s: {:.2} s user + {:.2} s system for {n} lines = {per_line:.1} µs per line ({:.1} user + {:.1} system), {:.1}% of a core; {:.2} minor faults per line; VmRSS {}",
                cpu.user,
                cpu.sys,
                cpu.user / n.max(1) as f64 * 1e6,
                cpu.sys / n.max(1) as f64 * 1e6,
                100.0 * cpu.total() / wall,
                cpu.minflt / n.max(1) as f64,
                mib(b.mem().rss)
            );
            rows.push(Row {
                measured: format!("CPU per line at {rate:.0} lines/s, one write() per line ({})", sinks.name()),
                value: format!(
                    "{per_line:.0} µs ({:.0} user + {:.0} system; {:.1}% of a core)",
                    cpu.user / n.max(1) as f64 * 1e6,
                    cpu.sys / n.max(1) as f64 * 1e6,
                    100.0 * cpu.total() / wall
                ),
                goal: "≤ 15 µs",
            });
        }
        let state = fs::canonicalize(dir.path().join("state")).unwrap_or_else(|_| dir.path().join("state"));
        if ckpt_part {
            let out = dir.path().join("strace-syncs.txt");
            let res = if have_strace {
                strace(b.pid(), &["-ttt", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2"], ckpt_secs, &out)
            } else {
                None
            };
            match res {
                Some((text, from, to)) => {
                    let s = count_syncs(&text, from, to, &state.to_string_lossy());
                    let w = to - from;
                    let fsyncs = s.ckpt_fsyncs + s.state_dir_fsyncs;
                    let all = fsyncs + s.archive_syncs + s.other_syncs;
                    println!(
                        "  over {w:.1} s: checkpoints.json rewrites {:.1}/s (renames), checkpoint fsyncs {:.1}/s (file {:.1} + state dir {:.1}), archive fdatasync {:.1}/s, other syncs {:.1}/s; all syncs {:.1}/s",
                        s.ckpt_renames as f64 / w,
                        fsyncs as f64 / w,
                        s.ckpt_fsyncs as f64 / w,
                        s.state_dir_fsyncs as f64 / w,
                        s.archive_syncs as f64 / w,
                        s.other_syncs as f64 / w,
                        all as f64 / w
                    );
                    rows.push(Row {
                        measured: format!("checkpoint writes at {rate:.0} lines/s ({})", sinks.name()),
                        value: format!(
                            "{:.1} rewrites/s, {:.1} checkpoint fsyncs/s; {:.1} syncs/s in all",
                            s.ckpt_renames as f64 / w,
                            fsyncs as f64 / w,
                            all as f64 / w
                        ),
                        goal: "≤ 2 fsyncs/s",
                    });
                }
                None => {
                    println!("  checkpoint writes: skipped ({STRACE} missing or not permitted)");
                    rows.push(Row {
                        measured: format!("checkpoint writes at {rate:.0} lines/s ({})", sinks.name()),
                        value: "skipped (no strace)".into(),
                        goal: "≤ 2 fsyncs/s",
                    });
                }
            }
        }
        if sys_part {
            let out = dir.path().join("strace-c.txt");
            let n0 = written.load(Ordering::Relaxed);
            let res = if have_strace { strace(b.pid(), &["-c"], sys_secs, &out) } else { None };
            let n = (written.load(Ordering::Relaxed) - n0).max(1) as f64;
            match res {
                Some((text, _, _)) => {
                    let calls = parse_summary(&text);
                    let total: u64 = calls.iter().map(|c| c.1).sum();
                    let top: Vec<String> = calls.iter().take(10).map(|(name, c)| format!("{name} {:.2}", *c as f64 / n)).collect();
                    println!(
                        "  syscalls per line (strace -c, ~{sys_secs:.0} s, under strace): {:.1} in all; {}",
                        total as f64 / n,
                        top.join(", ")
                    );
                    let futex = calls.iter().find(|c| c.0 == "futex").map_or(0, |c| c.1);
                    rows.push(Row {
                        measured: format!("wake-ups at {rate:.0} lines/s ({}): futex calls per line", sinks.name()),
                        value: format!("{:.1} futex, {:.1} syscalls in all per line", futex as f64 / n, total as f64 / n),
                        goal: "(fewer)",
                    });
                }
                None => println!("  syscalls per line: skipped ({STRACE} missing or not permitted)"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer thread");
        b.stop();
    }
}

// ---------------------------------------------------------------------------
// 7. append → WebSocket receive latency, with the CPU it costs

/// Lines written: `request_uuid` and the instant just before the `write()`.
type Sent = Arc<std::sync::Mutex<Vec<(String, Instant)>>>;

/// A WebSocket client of the channel on its own thread: records when each
/// `request_uuid` arrived, until `stop`.
fn receiver(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<std::collections::HashMap<String, Instant>> {
    use futures_util::StreamExt;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
        rt.block_on(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("the client connects to the channel");
            let finder = memchr::memmem::Finder::new(b"\"request_uuid\":\"");
            let mut got = std::collections::HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let m = match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(e))) => panic!("the channel connection failed: {e}"),
                    Ok(None) => panic!("the channel closed the connection"),
                    Err(_) => continue,
                };
                let now = Instant::now();
                let tokio_tungstenite::tungstenite::Message::Text(t) = m else { continue };
                let bytes = t.as_bytes();
                for pos in finder.find_iter(bytes) {
                    let rest = &bytes[pos + 16..];
                    if let Some(end) = memchr::memchr(b'"', rest) {
                        got.insert(String::from_utf8_lossy(&rest[..end]).into_owned(), now);
                    }
                }
            }
            got
        })
    })
}

/// Quantile `q` of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

fn latency(rows: &mut Vec<Row>) {
    let rate = env_f64("TRICKLE_RATE", 1000.0);
    let secs = env_f64("LATENCY_SECS", 20.0);
    let sinks = Sinks::parse(&env_str("LATENCY_SINKS", "archive+channel"));
    if !sinks.channel {
        eprintln!("LATENCY_SINKS must include the channel (its client measures the latency)");
        std::process::exit(2);
    }
    println!("== latency: {rate:.0} lines/s, one write() per line, {}, one WebSocket client", sinks.name());
    let dir = tempfile::tempdir().expect("temp dir");
    let live = dir.path().join("access.log");
    fs::write(&live, "").expect("create access.log");
    let mut b = Bridge::start(dir.path(), &sinks, None);
    b.wait_ready(Duration::from_secs(30));
    let addr = fs::read_to_string(dir.path().join("state/channel.addr")).expect("the channel's address");
    let url = format!("ws://{}/stream?key={TOKEN}", addr.trim());
    let stop_client = Arc::new(AtomicBool::new(false));
    let client = receiver(url, stop_client.clone());
    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sent: Sent = Arc::default();
    let writer = trickle_writer(live, rate, stop.clone(), written.clone(), Some(sent.clone()));
    // Warm-up, then the window: CPU and the lines written in it.
    std::thread::sleep(Duration::from_secs(2));
    let (c0, n0, t0) = (b.cpu(), written.load(Ordering::Relaxed) as usize, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (cpu, n1, wall) = (b.cpu().since(c0), written.load(Ordering::Relaxed) as usize, t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    // The last lines arrive.
    std::thread::sleep(Duration::from_millis(500));
    stop_client.store(true, Ordering::Relaxed);
    let got = client.join().expect("client thread");
    let hwm = b.mem().hwm;
    b.stop();
    let sent = sent.lock().expect("sent lines");
    let window = &sent[n0.min(sent.len())..n1.min(sent.len())];
    let mut ms: Vec<f64> =
        window.iter().filter_map(|(uuid, at)| got.get(uuid).map(|r| r.saturating_duration_since(*at).as_secs_f64() * 1e3)).collect();
    let missing = window.len() - ms.len();
    // `LATENCY_DUMP=file`: each line's append instant (s into the window)
    // and latency (ms), to see when the slow ones happened.
    if let Ok(path) = std::env::var("LATENCY_DUMP") {
        let dump: String = window
            .iter()
            .filter_map(|(uuid, at)| {
                let r = got.get(uuid)?;
                Some(format!(
                    "{:.4} {:.3}\n",
                    at.saturating_duration_since(t0).as_secs_f64(),
                    r.saturating_duration_since(*at).as_secs_f64() * 1e3
                ))
            })
            .collect();
        fs::write(&path, dump).expect("write LATENCY_DUMP");
    }
    ms.sort_by(f64::total_cmp);
    let n = (n1 - n0).max(1) as f64;
    let per_line = cpu.total() / n * 1e6;
    let (p50, p99, p999, max) = (quantile(&ms, 0.5), quantile(&ms, 0.99), quantile(&ms, 0.999), ms.last().copied().unwrap_or(f64::NAN));
    println!(
        "  append → receive over {wall:.0} s, {} lines ({missing} not received): p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms",
        window.len()
    );
    println!(
        "  CPU in the same window: {:.2} s user + {:.2} s system = {per_line:.1} µs per line ({:.1} user + {:.1} system), {:.1}% of a core; VmHWM {}",
        cpu.user,
        cpu.sys,
        cpu.user / n * 1e6,
        cpu.sys / n * 1e6,
        100.0 * cpu.total() / wall,
        mib(hwm)
    );
    rows.push(Row {
        measured: format!("append → WebSocket receive at {rate:.0} lines/s, one write() per line ({}), and CPU per line", sinks.name()),
        value: format!("p50 {p50:.1} ms, p99 {p99:.1} ms, p99.9 {p999:.1} ms; {per_line:.0} µs per line"),
        goal: "p99 ≤ 10 ms, p99.9 ≤ 25 ms, ≤ 15 µs",
    });
}

fn main() {
    let mut only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if let Ok(v) = std::env::var("FOOTPRINT_ONLY") {
        only.extend(v.split([',', ' ']).filter(|s| !s.is_empty()).map(str::to_string));
    }
    let want = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    println!(
        "footprint bench: {} CPUs (load {}), bridge {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        bin().display()
    );
    let mut rows = Vec::new();
    if want("steady") {
        steady(&mut rows);
    }
    let (archive, upstream) = (want("archive"), want("upstream"));
    if archive || upstream {
        backlog(&mut rows, archive, upstream);
    }
    let (cpu, ckpt, sys) = (want("trickle"), want("checkpoint"), want("syscalls"));
    if cpu || ckpt || sys {
        trickle(&mut rows, cpu, ckpt, sys);
    }
    if want("latency") {
        latency(&mut rows);
    }
    if rows.is_empty() {
        println!("no scenario matched {only:?} (steady, archive, upstream, trickle, checkpoint, syscalls, latency)");
        return;
    }
    let w1 = rows.iter().map(|r| r.measured.chars().count()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.value.chars().count()).max().unwrap_or(0);
    println!();
    println!("| {:w1$} | {:w2$} | goal |", "measured", "value");
    println!("|{}|{}|------|", "-".repeat(w1 + 2), "-".repeat(w2 + 2));
    for r in &rows {
        println!("| {:w1$} | {:w2$} | {} |", r.measured, r.value, r.goal);
    }
}
