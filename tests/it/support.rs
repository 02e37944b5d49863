//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calllog-bridge"))
}

/// A command for the binary under test.
pub fn cmd() -> Command {
    Command::new(bin())
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    cmd().args(args).output().expect("run calllog-bridge")
}

/// The reference samples of each Local Edition format
/// (`tests/fixtures/samples/NAME`, copies of the format reference's).
pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples").join(name)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `calllog-bridge run --config CONFIG` with its stderr appended to
/// `log` (stdin and stdout null; `RUST_LOG` unset so the config's
/// `log_level` applies).
pub fn spawn_bridge(config: &Path, log: &Path) -> Child {
    let err = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open bridge log");
    cmd()
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start bridge")
}

/// Sends SIGTERM to `child` and waits (up to `timeout`) for it to exit.
pub fn terminate(child: &mut Child, timeout: Duration) -> ExitStatus {
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
    assert!(st.success(), "kill -TERM {} failed", child.id());
    poll_until(timeout, "bridge to exit after SIGTERM", || child.try_wait().expect("wait for bridge"))
}

/// A shipped config (`packaging/config.toml`, `examples/bridge.toml`) moved
/// under `root`: its host paths (`/mnt/data`, `/var/lib/calllog-bridge`,
/// `/etc/calllog-bridge`) point inside `root` and its fixed ports become
/// `:0`, so `check-config` and `run` can check it on this host without
/// touching the real paths. The caller creates what the test needs there.
pub fn relocate_config(text: &str, root: &Path) -> String {
    let mut out = text.to_string();
    for host in ["/mnt/data", "/var/lib/calllog-bridge", "/etc/calllog-bridge"] {
        let inside = root.join(host.trim_start_matches('/'));
        out = out.replace(host, &inside.to_string_lossy());
    }
    out.replace("127.0.0.1:8790", "127.0.0.1:0").replace("127.0.0.1:8791", "127.0.0.1:0")
}

/// True when the tests run as root (read from `/proc/self/status`: the
/// crate forbids unsafe code, so no `getuid`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// The user id permission tests run the bridge as when the tests run as
/// root (root may read and write anything, so permission mistakes would not
/// show): `nobody`'s id, which needs no account to exist.
pub const UNPRIVILEGED_UID: u32 = 65534;

/// Makes `cmd` run without root's privileges when the tests run as root
/// (as [`UNPRIVILEGED_UID`], no supplementary groups); otherwise leaves it
/// as the current, already unprivileged, user.
pub fn unprivileged(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if is_root() {
        cmd.uid(UNPRIVILEGED_UID).gid(UNPRIVILEGED_UID);
    }
    cmd
}

/// Lets the user of [`unprivileged`] commands use `path` as its own:
/// chowned to it when the tests run as root (the current user owns it
/// otherwise), and its parent directories made searchable.
pub fn give_to_unprivileged(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if is_root() {
        std::os::unix::fs::chown(path, Some(UNPRIVILEGED_UID), Some(UNPRIVILEGED_UID)).expect("chown");
    }
    // tempfile creates its directories 0700.
    for dir in path.ancestors().skip(1) {
        if dir == Path::new("/") || dir == std::env::temp_dir() {
            break;
        }
        let mode = std::fs::metadata(dir).expect("stat").permissions().mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011)).expect("chmod");
        }
    }
}

/// Makes the directory `dir` read-only for the user of [`unprivileged`]
/// commands (it may list and enter it, not create files in it).
pub fn read_only_for_unprivileged(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if is_root() {
        std::os::unix::fs::chown(dir, Some(0), Some(0)).expect("chown");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
}

/// Makes the file `file` unreadable for the user of [`unprivileged`]
/// commands.
pub fn unreadable_for_unprivileged(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if is_root() {
        std::os::unix::fs::chown(file, Some(0), Some(0)).expect("chown");
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    } else {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    }
}

/// Runs `cmd` to its end (stdin null), killing it after `timeout`;
/// returns its output, or `None` if it had to be killed.
pub fn run_for(cmd: &mut Command, timeout: Duration) -> Option<Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `/proc/<pid>/status` field in bytes (`VmHWM`, `VmRSS`, `RssFile`).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of kB");
    kb * 1024
}

/// The process's peak resident memory (VmHWM) less its file-backed
/// resident pages (RssFile: the binary's code, a debug build's ~24 MiB),
/// i.e. what it allocated at its peak.
pub fn peak_memory_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM").saturating_sub(proc_status_bytes(pid, "RssFile"))
}
