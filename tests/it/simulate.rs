//! `simulate` against the real binary: line counts across rotated files,
//! gzip rotation, CSV headers per file, unique and seed-stable ids, the
//! simulated lag, pacing, and shutdown on SIGTERM.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::support;

/// Runs `simulate` with `args` into `dir`; asserts success; returns stderr.
fn simulate(dir: &Path, args: &[&str]) -> String {
    let out = support::cmd().arg("simulate").arg("--dir").arg(dir).args(args).output().expect("run simulate");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "simulate {args:?} failed: {stderr}");
    stderr
}

/// The content of a file, gunzipped when it ends in `.gz`.
fn read_text(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    if p.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut s).unwrap_or_else(|e| panic!("{}: bad gzip: {e}", p.display()));
        s
    } else {
        String::from_utf8(bytes).unwrap()
    }
}

/// Every file in `dir` whose name starts with `prefix`, sorted.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// The request_uuid of an le6 line (8th space-separated token).
fn le6_uuid(line: &str) -> &str {
    line.split(' ').nth(7).unwrap()
}

/// The request_id of an le6 line (the first token after the quoted user agent).
fn le6_request_id(line: &str) -> &str {
    // Tokens before the user agent never contain `" `; the request id
    // follows the fourth quoted field ("method uri ver", referrer, agent).
    let mut quotes = 0;
    for (i, c) in line.char_indices() {
        if c == '"' {
            quotes += 1;
            if quotes == 6 {
                return line[i + 2..].split(' ').next().unwrap();
            }
        }
    }
    panic!("no request_id in {line}");
}

#[test]
fn burst_rotates_with_gzip_and_loses_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = simulate(
        dir.path(),
        &["--format", "le6", "--rate", "3000", "--duration", "1", "--burst", "--seed", "42", "--rotate-bytes", "400000", "--gzip-rotated"],
    );
    assert!(stderr.contains("wrote 3000 le6 lines"), "{stderr}");
    let all = files(dir.path(), "access.log");
    assert!(all.iter().any(|p| p.ends_with("access.log")), "{all:?}");
    assert!(all.iter().any(|p| p.ends_with("access.log.1.gz")), "{all:?}");
    assert!(all.iter().any(|p| p.ends_with("access.log.2.gz")), "{all:?}");
    // No temporary or uncompressed rotated file is left behind.
    assert!(all.iter().all(|p| p.ends_with("access.log") || p.to_str().unwrap().ends_with(".gz")), "{all:?}");
    let mut uuids = HashSet::new();
    let mut lines = 0;
    for p in &all {
        let text = read_text(p);
        assert!(text.len() as u64 <= 400_000, "{} holds {} bytes", p.display(), text.len());
        assert!(text.ends_with('\n'), "{} ends mid-line", p.display());
        for line in text.lines() {
            lines += 1;
            assert!(uuids.insert(le6_uuid(line).to_string()), "duplicate uuid in {line}");
        }
    }
    assert_eq!(lines, 3000);
}

#[test]
fn csv_files_each_start_with_the_header() {
    let dir = tempfile::tempdir().unwrap();
    simulate(
        dir.path(),
        &["--format", "le5-csv", "--rate", "1000", "--duration", "1", "--burst", "--seed", "3", "--rotate-bytes", "150000"],
    );
    let all = files(dir.path(), "access.csv");
    assert!(all.len() >= 3, "{all:?}");
    assert!(all.iter().any(|p| p.ends_with("access.csv.1")));
    let header = calllog_bridge::sim::le5_csv_header();
    let mut rows = 0;
    for p in &all {
        let text = read_text(p);
        let mut it = text.lines();
        assert_eq!(it.next(), Some(header), "{}", p.display());
        rows += it.count();
    }
    assert_eq!(rows, 1000);
}

#[test]
fn le_json_goes_to_access_worker0_with_raw_names() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path(), &["--format", "le-json", "--rate", "200", "--duration", "1", "--burst", "--seed", "5"]);
    let text = read_text(&dir.path().join("access_worker0.log"));
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["service_name"], "", "{line}");
        assert!(!v["spkey"].as_str().unwrap().is_empty());
        n += 1;
    }
    assert_eq!(n, 200);
}

#[test]
fn same_seed_same_ids_other_seed_other_ids() {
    let ids = |seed: &str| {
        let dir = tempfile::tempdir().unwrap();
        simulate(dir.path(), &["--format", "le6", "--rate", "300", "--duration", "1", "--burst", "--seed", seed]);
        read_text(&dir.path().join("access.log")).lines().map(|l| le6_uuid(l).to_string()).collect::<Vec<_>>()
    };
    let a = ids("9");
    assert_eq!(a.len(), 300);
    assert_eq!(a, ids("9"));
    assert!(a.iter().collect::<HashSet<_>>().is_disjoint(&ids("10").iter().collect()));
}

#[test]
fn lag_shifts_request_time() {
    let dir = tempfile::tempdir().unwrap();
    let lag_ms: i64 = 3_600_000;
    simulate(dir.path(), &["--format", "le6", "--rate", "100", "--duration", "1", "--burst", "--lag-ms", &lag_ms.to_string()]);
    let path = dir.path().join("access.log");
    let mtime_ms = std::fs::metadata(&path).unwrap().modified().unwrap().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    for line in read_text(&path).lines() {
        let id = le6_request_id(line);
        let epoch = id.split('_').next().unwrap();
        let (s, frac) = epoch.split_once('.').unwrap();
        let request_ms = s.parse::<i64>().unwrap() * 1000 + frac.parse::<i64>().unwrap();
        let delay = mtime_ms - request_ms;
        assert!((delay - lag_ms).abs() < 10_000, "request_id {id}: {delay} ms before the file's mtime, want about {lag_ms}");
    }
}

#[test]
fn paced_writes_whole_lines_over_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let start = Instant::now();
    let mut child = support::cmd()
        .args(["simulate", "--format", "le6", "--rate", "400", "--duration", "1", "--seed", "1", "--dir"])
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A tailer polling the file sees it grow in whole lines before the end.
    let partial = support::poll_until(Duration::from_secs(10), "a partly written file", || {
        let text = std::fs::read_to_string(&path).ok()?;
        let n = text.lines().count();
        (n > 0 && n < 400).then_some(text)
    });
    assert!(partial.ends_with('\n'));
    assert!(child.wait().unwrap().success());
    assert!(start.elapsed() >= Duration::from_millis(900), "1 s of traffic took {:?}", start.elapsed());
    assert_eq!(read_text(&path).lines().count(), 400);
}

#[test]
fn sigterm_stops_an_endless_run_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access_worker0.log");
    let child = support::cmd()
        .args(["simulate", "--format", "le-json", "--rate", "500", "--duration", "0", "--dir"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::poll_until(Duration::from_secs(10), "first lines", || std::fs::read_to_string(&path).ok().filter(|t| t.lines().count() >= 10));
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let n = read_text(&path).lines().count();
    assert!(stderr.contains(&format!("wrote {n} le-json lines")), "{n} lines on disk; {stderr}");
}

#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--format", "ecls"][..], &["--rate", "0"], &["--burst", "--duration", "0"]] {
        let out = support::cmd().arg("simulate").arg("--dir").arg(dir.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stderr.is_empty());
    }
}
