//! Hostile and broken input files against the real binary: each must cost
//! the bridge bounded memory, disk and CPU, and the records around them
//! must still come out exactly once.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::tail_harness::{lines, uuids, Env};

/// The peak resident memory (VmHWM) the bridge may reach while it reads a
/// gzip bomb. The later memory-budget issue sets the real budget; this is
/// the bound until then (an idle debug build peaks near 35 MiB).
const PEAK_RSS_BOUND_BYTES: u64 = 64 << 20;

/// How long a test waits for a bomb to be read (a debug build decompresses
/// a few tens of MB per second, less on a loaded machine).
const BOMB_DEADLINE: Duration = Duration::from_secs(180);

/// `/proc/<pid>/status` field in bytes (`VmHWM`, `VmRSS`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of kB");
    kb * 1024
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

/// Writes `<logs>/<name>`: `before` records, `long_lines` lines of 3 MiB
/// each, one endless line of `endless_mib` MiB, then `after` records.
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
        let peak = proc_status_bytes(pid, "VmHWM");
        assert!(peak <= PEAK_RSS_BOUND_BYTES, "peak RSS {} MiB over the bound while reading the bomb", peak >> 20);
        assert!(Instant::now() < deadline, "the records after the bomb never came out; log:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = proc_status_bytes(pid, "VmHWM");
    env.expect_exactly(&[before, after].concat());
    env.stop();
    assert!(peak <= PEAK_RSS_BOUND_BYTES, "peak RSS {} MiB over the bound", peak >> 20);
    eprintln!("gzip bomb ({compressed} bytes, 160 MiB of content): peak RSS {} MiB", peak >> 20);
}
