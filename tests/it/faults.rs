//! Local faults against the real binary: a full disk (a real `ENOSPC`
//! from a small tmpfs; these tests need root to mount one and say so when
//! they are skipped) stops nothing for good and loses nothing: the archive,
//! the channel's sequence numbers and the checkpoints retry on a timer,
//! the fault shows in `/status`, `/metrics` and `/readyz`, and everything
//! resumes by itself once space is freed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::lag::get;
use crate::support;
use crate::tail_harness::{lines, uuids, Env, DEADLINE};

/// A small tmpfs mounted for one test; unmounted (and its directory
/// removed) when dropped.
pub(crate) struct Tmpfs {
    /// The mount point.
    pub(crate) dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `4m`) at `dir`; `None` (with a line
    /// saying why the test is skipped) when not root or when mounting is
    /// not allowed here.
    pub(crate) fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if uid.as_deref() != Some("0") {
            eprintln!("SKIPPED {test}: needs root to mount a small tmpfs for a real ENOSPC");
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs here (no CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Tmpfs { dir: dir.to_path_buf() })
    }

    /// Fills the file system: every write fails with ENOSPC afterwards.
    pub(crate) fn fill(&self) {
        let mut f = fs::File::create(self.dir.join("filler")).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        let _ = f.sync_all();
    }

    /// Frees the space taken by [`Tmpfs::fill`].
    pub(crate) fn free(&self) {
        fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The bridge's status base URL (from `status.addr`, or from the log line
/// when the state directory was too full to write it).
fn base(env: &Env) -> String {
    if let Ok(a) = fs::read_to_string(env.state.join("status.addr")) {
        if !a.trim().is_empty() {
            return format!("http://{}", a.trim());
        }
    }
    let log = env.log_text();
    let addr = log
        .lines()
        .find_map(|l| l.contains("status listener:").then(|| l.rsplit("addr=").next()).flatten())
        .expect("status address in the log");
    format!("http://{}", addr.trim())
}

fn status(env: &Env) -> serde_json::Value {
    serde_json::from_str(&get(&format!("{}/status", base(env))).1).unwrap()
}

fn faulty(env: &Env) -> Vec<String> {
    status(env)["faults"]
        .as_array()
        .map(|a| a.iter().map(|f| f["component"].as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

fn metric(env: &Env, sample: &str) -> Option<f64> {
    get(&format!("{}/metrics", base(env))).1.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
}

/// Moves the state directory and the archive of `env` under `disk`.
fn on_disk(env: &mut Env, disk: &Tmpfs, archive_too: bool) {
    let text = fs::read_to_string(&env.config).unwrap();
    let state = disk.dir.join("state");
    let mut text =
        text.replace(&format!("state_dir = {:?}", env.state.to_string_lossy()), &format!("state_dir = {:?}", state.to_string_lossy()));
    env.state = state;
    if archive_too {
        let out = disk.dir.join("out/out.ndjson");
        text = text.replace(&format!("path = {:?}", env.out.to_string_lossy()), &format!("path = {:?}", out.to_string_lossy()));
        env.out = out;
    }
    fs::write(&env.config, text).unwrap();
}

/// The archive (and the channel, whose sequence numbers live in
/// state_dir) on a disk that fills up: nothing is written or numbered
/// while it is full, the fault is visible, and once space is freed every
/// record arrives exactly once, with nothing restarted.
#[test]
fn a_full_disk_under_the_archive_and_the_channel_resumes_by_itself_and_loses_nothing() {
    // Dropped in reverse order: the bridge stops before the unmount.
    let root = tempfile::tempdir().unwrap();
    // 3,200 records fill most of 4 MiB in the archive alone; the channel's
    // replay log shares the disk (with a retention sized for it).
    let Some(disk) = Tmpfs::mount(&root.path().join("disk"), "6m", "a_full_disk_under_the_archive_and_the_channel") else { return };
    let mut env = Env::new("access*.log", "");
    on_disk(&mut env, &disk, true);
    let mut text = fs::read_to_string(&env.config).unwrap();
    text.push_str("\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"a-long-enough-test-token\"\nreplay_max_bytes = 262144\n");
    fs::write(&env.config, text).unwrap();
    env.start();
    let a = uuids("a", 200);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    assert_eq!(get(&format!("{}/readyz", base(&env))).0, 200);

    disk.fill();
    // Past the channel's first reservation block, so it must write
    // channel.seq while the disk is full.
    let b = uuids("b", 3000);
    env.append("access.log", &lines(&b));
    support::poll_until(DEADLINE, "the archive and channel faults in /status", || {
        let f = faulty(&env);
        (f.contains(&"file".to_string()) && f.contains(&"channel".to_string())).then_some(())
    });
    let (code, body) = get(&format!("{}/readyz", base(&env)));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("file cannot write") && body.contains("No space left on device"), "{body}");
    assert_eq!(metric(&env, "calllog_bridge_fault{component=\"file\"}"), Some(1.0));
    assert_eq!(metric(&env, "calllog_bridge_ready"), Some(0.0));
    let st = status(&env);
    assert_eq!(st["ready"], false);
    // Stays failing (retried on a timer) while the disk is full.
    std::thread::sleep(Duration::from_millis(800));
    assert!(faulty(&env).contains(&"file".to_string()));

    disk.free();
    let mut all = a.clone();
    all.extend(b.iter().cloned());
    env.expect_exactly(&all);
    // Said with what is still failing, should they not clear.
    let deadline = std::time::Instant::now() + DEADLINE;
    while !faulty(&env).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the faults did not clear: {}\n{}", status(&env)["faults"], env.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&format!("{}/readyz", base(&env))).0, 200);
    assert_eq!(metric(&env, "calllog_bridge_fault{component=\"file\"}"), Some(0.0));
    assert_eq!(metric(&env, "calllog_bridge_faults_total{component=\"file\"}"), Some(1.0));
    let st = status(&env);
    let channel = st["sinks"].as_array().unwrap().iter().find(|s| s["name"] == "channel").unwrap().clone();
    assert_eq!(channel["delivered_records"], 3200, "the channel numbered every record");
    assert_eq!(st["channel"]["last_seq"], 3200);
    env.stop();
    let log = env.log_text();
    let first = log.lines().filter(|l| l.contains("component=\"file\"") && l.contains("cannot write; keeping the data")).count();
    assert_eq!(first, 1, "logged once, then periodically: {log}");
    assert!(log.lines().any(|l| l.contains("component=\"file\"") && l.contains("writing again")), "{log}");
    drop(env);
}

/// Checkpoints on a full state_dir (the archive elsewhere): the write is
/// retried on a timer, not only when new data arrives, and the checkpoint
/// catches up by itself once space is freed.
#[test]
fn a_failed_checkpoint_write_is_retried_on_a_timer_until_it_works() {
    let root = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&root.path().join("disk"), "2m", "a_failed_checkpoint_write_is_retried_on_a_timer") else { return };
    let mut env = Env::new("access*.log", "");
    on_disk(&mut env, &disk, false);
    env.start();
    let a = uuids("a", 100);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    disk.fill();
    let b = uuids("b", 500);
    env.append("access.log", &lines(&b));
    env.wait_for(&b);
    support::poll_until(DEADLINE, "the checkpoints fault", || faulty(&env).contains(&"checkpoints".to_string()).then_some(()));
    assert_eq!(get(&format!("{}/readyz", base(&env))).0, 503);

    disk.free();
    // No new data: the retry timer alone brings the checkpoint up to date.
    let size = fs::metadata(env.path("access.log")).unwrap().len();
    support::poll_until(DEADLINE, "the checkpoint to catch up", || {
        let text = fs::read_to_string(env.state.join("checkpoints.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["files"].as_array()?.iter().any(|f| f["offset"].as_u64() == Some(size)).then_some(())
    });
    support::poll_until(DEADLINE, "the fault to clear", || faulty(&env).is_empty().then_some(()));
    assert_eq!(get(&format!("{}/readyz", base(&env))).0, 200);
    env.stop();
}

/// A bridge started on a full state_dir starts anyway (the channel's
/// first reservation waits, as a fault) and catches up once space is freed.
#[test]
fn a_bridge_started_on_a_full_disk_starts_and_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&root.path().join("disk"), "2m", "a_bridge_started_on_a_full_disk") else { return };
    let mut env = Env::new("access*.log", "");
    on_disk(&mut env, &disk, true);
    let mut text = fs::read_to_string(&env.config).unwrap();
    text.push_str("\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"a-long-enough-test-token\"\n");
    fs::write(&env.config, text).unwrap();
    fs::create_dir_all(disk.dir.join("state")).unwrap();
    fs::create_dir_all(disk.dir.join("out")).unwrap();
    disk.fill();
    env.start();
    let a = uuids("a", 500);
    env.append("access.log", &lines(&a));
    support::poll_until(DEADLINE, "the faults in /status", || {
        let f = faulty(&env);
        (f.contains(&"file".to_string()) && f.contains(&"channel".to_string())).then_some(())
    });
    disk.free();
    env.expect_exactly(&a);
    support::poll_until(DEADLINE, "the faults to clear", || faulty(&env).is_empty().then_some(()));
    env.stop();
}
