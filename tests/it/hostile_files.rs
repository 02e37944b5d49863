//! Hostile and broken input files against the real binary: each must cost
//! the bridge bounded memory, disk and CPU, and the records around them
//! must still come out exactly once.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support;
use crate::tail_harness::{lines, uuids, Env};

/// The peak memory the bridge may allocate while it reads a gzip bomb
/// (VmHWM less the binary's file-backed pages, which grow with every
/// linked crate and say nothing about the bomb): the footprint goal for a
/// backlog, with the default 24 MiB `memory_max_bytes`.
const PEAK_RSS_BOUND_BYTES: u64 = 64 << 20;

/// How long a test waits for a bomb to be read (a debug build decompresses
/// a few tens of MB per second, less on a loaded machine).
const BOMB_DEADLINE: Duration = Duration::from_secs(180);

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// One gzip member holding `data` (members concatenate into one stream,
/// so a bomb is cheap to write: one member, many times).
fn gz_member(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Changes one `key = value` line of the harness's config.
fn set_config(env: &Env, from: &str, to: &str) {
    let text = fs::read_to_string(&env.config).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    fs::write(&env.config, text.replacen(from, to, 1)).unwrap();
}

/// Writes a gzip bomb: `before` records, `long_lines` lines of 3 MiB each,
/// one endless line of `endless_mib` MiB, then `after` records.
fn write_bomb(path: &Path, before: &[String], long_lines: usize, endless_mib: usize, after: &[String]) -> u64 {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&gz_member(lines(before).as_bytes())).unwrap();
    let mut long = vec![b'y'; 3 << 20];
    long.push(b'\n');
    let long = gz_member(&long);
    for _ in 0..long_lines {
        f.write_all(&long).unwrap();
    }
    let endless = gz_member(&vec![b'x'; 1 << 20]);
    for _ in 0..endless_mib {
        f.write_all(&endless).unwrap();
    }
    f.write_all(&gz_member(format!("\n{}", lines(after)).as_bytes())).unwrap();
    f.sync_all().unwrap();
    f.metadata().unwrap().len()
}

/// A gzip bomb (a small `.gz` of over-long lines and one endless line)
/// among good records: memory stays bounded while it is skipped (also with
/// a long fsync interval, when the archive holds what it wrote for
/// seconds), and the records after it still come out, exactly once.
#[test]
fn a_gzip_bomb_is_read_in_bounded_memory() {
    let mut env = Env::new("*.log.gz", "");
    set_config(&env, "fsync_interval_ms = 20", "fsync_interval_ms = 5000");
    let (before, after) = (uuids("before", 50), uuids("after", 50));
    let gz = env.path("bomb.log.gz");
    let compressed = write_bomb(&gz, &before, 20, 100, &after);
    assert!(compressed < 1 << 20, "the bomb is small on disk: {compressed} bytes");
    env.start();
    let pid = env.child.as_ref().unwrap().id();
    let deadline = Instant::now() + BOMB_DEADLINE;
    loop {
        let got = env.delivered();
        if after.iter().all(|u| got.contains_key(u)) {
            break;
        }
        let peak = support::peak_memory_bytes(pid);
        assert!(peak <= PEAK_RSS_BOUND_BYTES, "peak RSS {} MiB over the bound while reading the bomb", peak >> 20);
        assert!(Instant::now() < deadline, "the records after the bomb never came out; log:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = support::peak_memory_bytes(pid);
    env.expect_exactly(&[before, after].concat());
    env.stop();
    assert!(peak <= PEAK_RSS_BOUND_BYTES, "peak RSS {} MiB over the bound", peak >> 20);
    eprintln!("gzip bomb ({compressed} bytes, 160 MiB of content): peak RSS {} MiB", peak >> 20);
}

/// A shorter copy of a file already read further (an older partial copy,
/// here `backup.log`, waiting while the live file is read, then left alone
/// when the live file rotates away) holds nothing new: it is recognised
/// once and logged once, costs no CPU while it stays shorter, and what is
/// appended to it past the offset already read comes out exactly once.
#[test]
fn a_shorter_copy_of_a_file_read_further_is_decided_once() {
    let mut env = Env::new("*.log", "");
    env.start();
    let a = uuids("a", 200);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    env.append("backup.log", &lines(&a[..50]));
    // The live file rotates out of the globs; a new one starts.
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    let c = uuids("c", 30);
    env.append("access.log", &lines(&c));
    env.wait_for(&c);
    // Let the old file finish and the copy be looked at.
    support::poll_until(Duration::from_secs(30), "the rotated file to be finished", || {
        env.log_text().contains("finished a file that is gone").then_some(())
    });
    env.settle();
    let pid = env.child.as_ref().unwrap().id();
    let (log_before, cpu_before, t0) = (env.log_text().lines().count(), cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (log_after, cpu_after) = (env.log_text().lines().count(), cpu_time(pid));
    let cpu = cpu_after - cpu_before;
    assert!(
        log_after - log_before <= 2,
        "{} log lines in {:?}:\n{}",
        log_after - log_before,
        t0.elapsed(),
        crate::tail_harness::tail(&env.log_text(), 20)
    );
    assert!(cpu < Duration::from_millis(600), "the bridge used {cpu:?} of CPU in {:?} with nothing to read", t0.elapsed());
    let about_copy = env.log_text().lines().filter(|l| l.contains("backup.log") && l.contains("INFO")).count();
    assert!(about_copy <= 1, "the copy was logged {about_copy} times at info");
    // The copy catches up with the original and grows past it: only the
    // new lines are new.
    env.append("backup.log", &lines(&a[50..]));
    let d = uuids("d", 20);
    env.append("backup.log", &lines(&d));
    env.expect_exactly(&[a, c, d].concat());
    env.stop();
}

/// The default bound of the rejects file: `[rejects] rotate_bytes` and
/// `keep_files` (README, examples/bridge.toml).
const REJECTS_ROTATE_BYTES: u64 = 16 << 20;
const REJECTS_KEEP_FILES: usize = 3;

/// The value of a Prometheus sample `name{labels}` in `/metrics` text.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let want = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&want)).and_then(|v| v.trim().parse().ok())
}

/// A 4 KB `.gz` of 2,000,000 junk lines: the rejects file stays within its
/// bound on disk, the bridge's log stays small (a few "rejected line" lines,
/// then "N similar log lines suppressed" summaries) and so does its memory
/// (a chunk holds 131,072 of these lines), while every reject is still
/// counted in `/metrics` and the good records around the junk come out.
#[test]
fn a_small_gz_of_junk_keeps_the_rejects_file_and_the_log_bounded() {
    const JUNK_LINES: usize = 2_000_000;
    let mut env = Env::new("*.log.gz", "");
    let (before, after) = (uuids("before", 10), uuids("after", 10));
    let gz = env.path("junk.log.gz");
    let junk = gz_member("x\n".repeat(JUNK_LINES).as_bytes());
    assert!(junk.len() <= 4096, "the junk is {} bytes compressed", junk.len());
    let mut f = fs::File::create(&gz).unwrap();
    for part in [gz_member(lines(&before).as_bytes()), junk, gz_member(lines(&after).as_bytes())] {
        f.write_all(&part).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    env.start();
    let pid = env.child.as_ref().unwrap().id();
    let addr = support::poll_until(Duration::from_secs(30), "status.addr", || {
        fs::read_to_string(env.state.join("status.addr")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    });
    let counted = support::poll_until(BOMB_DEADLINE, "every reject counted in /metrics", || {
        let (_, text) = crate::lag::get(&format!("http://{addr}/metrics"));
        metric(&text, "calllog_bridge_rejects_total", "reason=\"bad_json\"").filter(|n| *n >= JUNK_LINES as f64)
    });
    assert_eq!(counted, JUNK_LINES as f64);
    env.expect_exactly(&[before, after].concat());
    let peak = support::peak_memory_bytes(pid);
    env.stop();
    assert!(peak <= PEAK_RSS_BOUND_BYTES, "peak RSS {} MiB over the bound", peak >> 20);

    let rejects = env.state.join("rejects.ndjson");
    let mut on_disk = 0;
    let mut files = 0;
    for entry in fs::read_dir(&env.state).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("rejects.ndjson") {
            let len = entry.metadata().unwrap().len();
            assert!(len <= REJECTS_ROTATE_BYTES, "{:?} is {len} bytes", entry.file_name());
            on_disk += len;
            files += 1;
        }
    }
    assert_eq!(files, REJECTS_KEEP_FILES + 1, "rejects files (the junk fills more than the bound)");
    assert!(on_disk <= (REJECTS_KEEP_FILES as u64 + 1) * REJECTS_ROTATE_BYTES, "{on_disk} bytes of rejects on disk");
    // The newest entries are all there, as JSON lines naming their file.
    let last: serde_json::Value = serde_json::from_str(fs::read_to_string(&rejects).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!((last["reason"].as_str(), last["raw"].as_str()), (Some("bad_json"), Some("x")));
    let log = env.log_text();
    assert!(log.len() < 64 << 10, "the bridge's log is {} bytes:\n{}", log.len(), crate::tail_harness::tail(&log, 30));
    let logged = log.lines().filter(|l| l.contains("rejected line file=")).count();
    assert!(logged <= 50, "{logged} rejected lines logged one by one");
    assert!(log.contains("similar log lines suppressed"), "no summary of the suppressed lines:\n{}", crate::tail_harness::tail(&log, 30));
    eprintln!("junk: {JUNK_LINES} rejects, {on_disk} bytes of rejects on disk, log {} bytes, peak RSS {} MiB", log.len(), peak >> 20);
}

/// A collector that refuses every batch (400) cannot fill the disk through
/// the dead-letter file: it rotates at `dead_letter_rotate_bytes` and keeps
/// `dead_letter_keep_files`, the deletion of an old one is logged as an
/// error, and every dead-lettered record is counted in `/metrics`; nor the
/// journal: the error lines are rate limited with a summary.
#[test]
fn the_dead_letter_file_is_bounded() {
    use crate::support_upstream::{Collector, Fault, Format};
    const RECORDS: usize = 600;
    const ROTATE: u64 = 8192;
    let c = Collector::start(Format::Ndjson);
    c.script((0..RECORDS).map(|_| Fault::Status(400, "refused".into())));
    let mut env = Env::new("*.log", "");
    let mut text = fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "\n[upstream]\nurl = {:?}\ncompression = \"none\"\nbatch_max_records = 10\nflush_interval_ms = 20\n\
         dead_letter_rotate_bytes = {ROTATE}\ndead_letter_keep_files = 2\n",
        c.url("/")
    ));
    fs::write(&env.config, text).unwrap();
    env.start();
    let ids = uuids("p", RECORDS);
    env.append("access.log", &lines(&ids));
    let addr = support::poll_until(Duration::from_secs(30), "status.addr", || {
        fs::read_to_string(env.state.join("status.addr")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    });
    support::poll_until(Duration::from_secs(60), "every record dead-lettered", || {
        let (_, text) = crate::lag::get(&format!("http://{addr}/metrics"));
        metric(&text, "calllog_bridge_dead_lettered_records_total", "sink=\"upstream\"").filter(|n| *n >= RECORDS as f64)
    });
    env.stop();
    let mut on_disk = 0;
    let mut files = Vec::new();
    for entry in fs::read_dir(&env.state).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("dead-letter.ndjson") {
            on_disk += entry.metadata().unwrap().len();
            for l in fs::read_to_string(entry.path()).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["status"], 400);
            }
            files.push(name);
        }
    }
    files.sort();
    assert_eq!(files, ["dead-letter.ndjson", "dead-letter.ndjson.1", "dead-letter.ndjson.2"]);
    // Each file holds at most what passed rotate_bytes by one line (10 records).
    assert!(on_disk <= 3 * 2 * ROTATE, "{on_disk} bytes of dead letters on disk");
    let log = env.log_text();
    assert!(log.contains("DELETED the oldest rotated file"), "the deletion is not logged");
    // One error line per refused request would be 60 here: a few, then a
    // summary (written at the latest when the sink stops).
    let one_by_one = log.lines().filter(|l| l.contains("batch rejected; written to the dead-letter file")).count();
    assert!(one_by_one <= 10, "{one_by_one} dead-letter error lines");
    assert!(log.contains("similar dead-letter log lines suppressed"), "no summary:\n{}", crate::tail_harness::tail(&log, 20));
}

/// Descriptors the bridge has open.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Hundreds of files without a complete first line (a writer that never
/// ends its lines, or a directory filled on purpose): the bridge holds a
/// bounded number of them open (it holds one so that its line can still be
/// read if the file is deleted before the newline), says so once, and
/// still reads every file once its lines complete.
#[test]
fn files_without_a_first_newline_hold_a_bounded_number_of_descriptors() {
    const FILES: usize = 400;
    const HELD_MAX: usize = 256;
    let mut env = Env::new("*.log", "");
    env.start();
    let pid = env.child.as_ref().unwrap().id();
    let before = open_fds(pid);
    let ids = uuids("p", FILES);
    for (i, id) in ids.iter().enumerate() {
        let l = crate::tail_harness::line(id);
        env.append(&format!("f{i:03}.log"), l.trim_end());
    }
    support::poll_until(Duration::from_secs(30), "the bridge to stop holding more files open", || {
        env.log_text().contains("too many files without a complete first line are held open").then_some(())
    });
    env.settle();
    let held = open_fds(pid).saturating_sub(before);
    assert!(held <= HELD_MAX + 8, "{held} more descriptors open for {FILES} files without a newline");
    let about = env.log_text().lines().filter(|l| l.contains("too many files without a complete first line")).count();
    assert!(about <= 10, "logged {about} times");
    for i in 0..FILES {
        env.append(&format!("f{i:03}.log"), "\n");
    }
    env.expect_exactly(&ids);
    env.stop();
}
