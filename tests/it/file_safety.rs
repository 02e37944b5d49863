//! What a writer of the log directory, or a careless operator, can put in
//! front of the bridge, against the real binary: symbolic links to
//! secrets, a file shorter than its checkpoint, the bridge's own output
//! under a glob, a glob over a whole tree, a log directory that turns
//! unreadable for a while, and rotation as the file table shows it.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::safety::http_get;
use crate::support::{self, run_for};
use crate::tail_harness::{line, lines, uuids, Env, DEADLINE};

/// The running bridge's status listener (`host:port`).
fn status_addr(env: &Env) -> String {
    support::poll_until(DEADLINE, "status.addr", || fs::read_to_string(env.state.join("status.addr")).ok().filter(|s| !s.trim().is_empty()))
        .trim()
        .to_string()
}

/// `GET /status` as JSON.
fn status(addr: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

/// The file rows of `/status`.
fn rows(addr: &str) -> Vec<serde_json::Value> {
    status(addr)["files"].as_array().cloned().unwrap_or_default()
}

/// Appends `text` to the harness's config file.
fn add_config(env: &Env, text: &str) {
    let mut f = fs::OpenOptions::new().append(true).open(&env.config).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `check-config --config`: exit code, stdout and stderr.
fn check_config(config: &Path) -> (i32, String, String) {
    let out = run_for(Command::new(support::bin()).args(["check-config", "--config"]).arg(config), Duration::from_secs(60))
        .expect("check-config ends within a minute");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

// ------------------------------------------------------------- symlinks

/// A link among the log files to a file the bridge's user can read (its
/// own token, a password file, `/etc/shadow`), and a linked directory
/// under a `**` glob: neither is read. Nothing of the secret reaches the
/// archive, the channel's replay log, the rejects file or anything else
/// under `state_dir`, the bridge's log, `/status` or `/metrics`;
/// `check-config` and `/status` name the link.
#[test]
fn a_symlink_to_a_secret_never_reaches_any_output() {
    const MARKER: &str = "S3CRET-MARKER";
    let mut env = Env::new("**/access*", "");
    add_config(&env, "\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"Xk9-pQ2-rT7-wZ4-mN8-vB3\"\n");
    let secret_dir = env.dir.path().join("secret");
    fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("token");
    // A shadow-style line (a reject) and a JSON line that would be a record.
    fs::write(&secret, format!("root:$6${MARKER}hash:19000:0:99999:7:::\n{}", line(&format!("{MARKER}-uuid")))).unwrap();
    fs::write(secret_dir.join("access.log"), line(&format!("{MARKER}-in-linked-dir"))).unwrap();
    std::os::unix::fs::symlink(&secret, env.path("access.log.9")).unwrap();
    std::os::unix::fs::symlink(&secret_dir, env.path("linked")).unwrap();
    let ids = uuids("plain", 20);
    env.append("access.log", &lines(&ids));

    let (code, out, err) = check_config(&env.config);
    assert_eq!(code, 0, "a link is a warning, not an error: {out}{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("access.log.9") && said.contains("symbolic link"), "check-config names the link:\n{said}");
    assert!(said.contains("linked"), "and the linked directory:\n{said}");
    assert!(!said.contains(MARKER), "{said}");

    env.start();
    env.wait_for(&ids);
    // More secret content while the bridge runs, and a rescan or two.
    fs::OpenOptions::new().append(true).open(&secret).unwrap().write_all(line(&format!("{MARKER}-later")).as_bytes()).unwrap();
    let addr = status_addr(&env);
    let src = support::poll_until(DEADLINE, "the link in /status", || {
        let st = status(&addr);
        let s = st["sources"][0].clone();
        s["unreadable"].as_array()?.iter().any(|u| u["path"].as_str().is_some_and(|p| p.ends_with("access.log.9"))).then_some(s)
    });
    assert!(src.to_string().contains("symbolic link"), "{src}");
    let more = uuids("more", 10);
    env.append("access.log", &lines(&more));
    env.wait_for(&more);
    env.settle();
    let (_, status_text) = http_get(&addr, "/status");
    let (_, metrics_text) = http_get(&addr, "/metrics");
    env.stop();

    let mut outputs: Vec<PathBuf> = files_under(&env.state);
    outputs.extend(files_under(env.out.parent().unwrap()));
    outputs.push(env.log.clone());
    assert!(outputs.iter().any(|p| p.to_string_lossy().contains("replay")), "the channel's replay log is among them: {outputs:?}");
    for p in &outputs {
        let bytes = fs::read(p).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(MARKER), "{} holds the secret", p.display());
    }
    for (what, text) in [("/status", &status_text), ("/metrics", &metrics_text)] {
        assert!(!text.contains(MARKER), "{what} holds the secret");
    }
    assert_eq!(env.delivered().len(), ids.len() + more.len(), "the plain records only");
}

/// `follow_symlinks = true`: an operator whose layout links its log files
/// elsewhere opts in, and the links are read.
#[test]
fn follow_symlinks_reads_through_links_when_asked() {
    let mut env = Env::new("access*", "follow_symlinks = true");
    let elsewhere = env.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let ids = uuids("linked", 10);
    fs::write(elsewhere.join("current.log"), lines(&ids)).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("current.log"), env.path("access.log")).unwrap();
    let (code, out, err) = check_config(&env.config);
    assert_eq!(code, 0, "{out}{err}");
    env.start();
    env.expect_exactly(&ids);
    env.stop();
}

// ---------------------------------------------- files shorter than their checkpoint

/// A restored or hand-edited state whose offset lies beyond the end of
/// its file: what is appended is read (the file's content is read again
/// from its start, since the bridge cannot know what of it was
/// delivered), the file is shown in `/status`, and the case is logged and
/// counted.
#[test]
fn a_checkpoint_beyond_the_end_of_its_file_reads_everything_appended_and_shows_the_file() {
    let mut env = Env::new("access*.log*", "");
    let first = uuids("first", 100);
    env.append("access.log", &lines(&first));
    env.start();
    env.wait_for(&first);
    env.settle();
    env.stop();
    let ck = env.state.join("checkpoints.json");
    let mut doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(&ck).unwrap()).unwrap();
    for f in doc["files"].as_array_mut().unwrap() {
        let o = f["offset"].as_u64().unwrap();
        f["offset"] = (o * 10).into();
    }
    fs::write(&ck, serde_json::to_string_pretty(&doc).unwrap()).unwrap();

    env.start();
    let appended = uuids("appended", 500);
    env.append("access.log", &lines(&appended));
    let got = env.wait_for(&appended);
    assert!(appended.iter().all(|u| got[u] == 1), "nothing appended came twice");
    let addr = status_addr(&env);
    let st = support::poll_until(DEADLINE, "the file and the count in /status", || {
        let st = status(&addr);
        (st["sources"][0]["files_truncated"] == 1).then_some(st)
    });
    let files = st["files"].as_array().unwrap();
    assert!(
        files.iter().any(|r| r["path"].as_str().unwrap().ends_with("/access.log") && r["records"].as_u64().unwrap() >= 500),
        "the file is shown: {files:?}"
    );
    let log = env.log_text();
    assert_eq!(log.lines().filter(|l| l.contains("shorter than the offset")).count(), 1, "logged once:\n{log}");
    env.stop();
}

/// A file replaced in place by an older, shorter copy of itself (same
/// first line), which then grows: every line appended comes out, exactly
/// once (the copy's own lines may come again: they are read again).
#[test]
fn a_file_replaced_in_place_by_a_shorter_copy_that_grows_loses_nothing() {
    let mut env = Env::new("access*.log*", "");
    env.start();
    let a = uuids("a", 300);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    // `cp older access.log`: the same inode, truncated and rewritten.
    fs::write(env.path("access.log"), lines(&a[..50])).unwrap();
    let b = uuids("b", 4500);
    for chunk in b.chunks(250) {
        env.append("access.log", &lines(chunk));
        std::thread::sleep(Duration::from_millis(5));
    }
    env.wait_for(&b);
    env.settle();
    let got = env.delivered();
    let twice: Vec<&String> = b.iter().filter(|u| got[*u] != 1).collect();
    assert!(twice.is_empty(), "appended lines came more than once: {:?}", &twice[..twice.len().min(5)]);
    assert!(a.iter().all(|u| got.contains_key(u)));
    env.stop();
}

// ------------------------------------------------- the bridge's own output

/// The archive (or `state_dir`, the export directory, a dead-letter
/// file) under a source's glob: the bridge would read its own output for
/// ever. `check-config` and `run` refuse it with 64, naming both keys.
#[test]
fn an_output_under_a_source_glob_is_refused_naming_both_keys() {
    let env = Env::new("*", "");
    let text = fs::read_to_string(&env.config).unwrap();
    let logs = env.logs.display().to_string();
    // The archive written among the logs.
    let archive_in_logs = text.replace(&env.out.display().to_string(), &format!("{logs}/archive.ndjson"));
    fs::write(&env.config, &archive_in_logs).unwrap();
    let (code, out, err) = check_config(&env.config);
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("file_output.path") && err.contains("source[0].paths"), "{err}");
    let out = run_for(
        support::cmd().args(["run", "--config"]).arg(&env.config).env_remove("RUST_LOG").env_remove("NOTIFY_SOCKET"),
        Duration::from_secs(60),
    )
    .expect("run refuses at once");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("file_output.path") && err.contains("source[0].paths"), "{err}");
    assert!(!env.logs.join("archive.ndjson").exists(), "nothing was written");

    // state_dir under a `**` glob.
    let state_in_logs = text.replace(&env.logs.join("*").display().to_string(), &format!("{}/**/*", env.dir.path().display()));
    fs::write(&env.config, &state_in_logs).unwrap();
    let (code, out, err) = check_config(&env.config);
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("state_dir") && err.contains("source[0].paths"), "{err}");
}

/// A glob over a huge tree (`/**/*`) is not walked for minutes: the scan
/// stops at `max_scan_entries` with an error naming the key, at once.
#[test]
fn a_glob_over_a_huge_tree_is_refused_at_once() {
    let env = Env::new("**/*", "max_scan_entries = 1000");
    for d in 0..30 {
        let dir = env.logs.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(dir.join(format!("f{f}.log")), "").unwrap();
        }
    }
    let t0 = Instant::now();
    let (code, out, err) = check_config(&env.config);
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("source[0].paths") && err.contains("max_scan_entries"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

/// `paths = ["/**/*"]` with bounds raised far enough that the start-up
/// scan walks the whole filesystem: SIGTERM during it ends the bridge at
/// once (it used to be ignored until the walk ended, minutes later).
#[test]
fn a_stop_during_a_long_start_up_scan_is_not_waited_for() {
    let mut env = Env::new("x", "max_scan_entries = 1000000000\nmax_scan_ms = 3600000");
    let text = fs::read_to_string(&env.config).unwrap();
    fs::write(&env.config, text.replace(&format!("{:?}", env.logs.join("x").display().to_string()), "\"/**/*\"")).unwrap();
    assert!(fs::read_to_string(&env.config).unwrap().contains("\"/**/*\""));
    let mut child = support::spawn_bridge(&env.config, &env.log);
    support::poll_until(DEADLINE, "the start-up checks to begin", || env.log_text().contains("file descriptor limit").then_some(()));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still scanning the filesystem after 1.5 s; log:\n{}", env.log_text());
    let t0 = Instant::now();
    let status = support::terminate(&mut child, Duration::from_secs(10));
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?} to stop", t0.elapsed());
    assert!(status.success(), "{status}; log:\n{}", env.log_text());
    assert!(env.log_text().contains("stopped during start-up"), "{}", env.log_text());
    env.child = None;
}

// ------------------------------------------- a log directory unreadable for a while

/// Makes `dir` unlistable for the bridge (run as [`support::unprivileged`]).
fn unlistable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if support::is_root() {
        std::os::unix::fs::chown(dir, Some(0), Some(0)).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    } else {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o000)).unwrap();
    }
}

/// Lines for `ids` whose calls happened just now.
fn fresh(ids: &[String]) -> String {
    let t = calllog_bridge::time::format_iso_millis(calllog_bridge::time::now_ms());
    ids.iter().map(|u| line(u).replace("2024-01-01T00:00:00Z", &t)).collect()
}

/// `/readyz`, `/status`'s `ready`, and `/readyz` again: when both
/// `/readyz` answers agree, `/status` must agree with them.
fn ready_agrees(addr: &str) -> Result<bool, String> {
    let before = http_get(addr, "/readyz");
    let st = status(addr);
    let after = http_get(addr, "/readyz");
    if before.0 != after.0 {
        return Ok(after.0 == 200);
    }
    let ready = before.0 == 200;
    if st["ready"] != ready {
        return Err(format!("/readyz {} ({}) but /status ready = {}", before.0, before.1.trim(), st["ready"]));
    }
    Ok(ready)
}

/// `lag`'s header against `/readyz` around it.
fn lag_agrees(env: &Env, addr: &str) -> Result<(), String> {
    let before = http_get(addr, "/readyz").0;
    let out = support::run(&["lag", "--config", env.config.to_str().unwrap()]);
    let after = http_get(addr, "/readyz").0;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = text.lines().next().unwrap_or_default().to_string();
    if before == after {
        let says_ready = header.contains(", ready,");
        if says_ready != (before == 200) {
            return Err(format!("lag says {header:?} while /readyz answers {before}"));
        }
    }
    if text.contains("no files followed yet") {
        return Err(format!("lag lost the file table:\n{text}"));
    }
    Ok(())
}

/// The log directory becomes unreadable for a few seconds while lines
/// are written, then readable again: every file row keeps its counters
/// and last-read time throughout, `lag`'s header and `/status` agree
/// with `/readyz` at every moment (503 naming the directory as a
/// directory), and everything comes out exactly once.
#[test]
fn a_log_directory_unreadable_for_a_while_keeps_every_file_row() {
    let mut env = Env::new("access*.log*", "");
    let rotated: Vec<Vec<String>> = (1..=6).map(|i| uuids(&format!("rot{i}"), 40)).collect();
    for (i, ids) in rotated.iter().enumerate() {
        env.append(&format!("access.log.{}", i + 1), &fresh(ids));
    }
    let first = uuids("first", 40);
    env.append("access.log", &fresh(&first));
    for d in [env.logs.clone(), env.state.clone(), env.out.parent().unwrap().to_path_buf()] {
        fs::create_dir_all(&d).unwrap();
        support::give_to_unprivileged(&d);
    }
    for f in fs::read_dir(&env.logs).unwrap().flatten() {
        support::give_to_unprivileged(&f.path());
    }
    let err = fs::OpenOptions::new().create(true).append(true).open(&env.log).unwrap();
    let mut run = support::cmd();
    run.args(["run", "--config"]).arg(&env.config).env_remove("RUST_LOG").env_remove("NOTIFY_SOCKET");
    support::unprivileged(&mut run).stdout(std::process::Stdio::null()).stderr(err);
    env.child = Some(run.spawn().unwrap());
    let mut all: Vec<String> = rotated.concat();
    all.extend(first.iter().cloned());
    env.wait_for(&all);
    let addr = status_addr(&env);
    let before: HashMap<String, (u64, String)> = support::poll_until(DEADLINE, "seven rows with their records", || {
        let rs = rows(&addr);
        let done = rs.len() == 7 && rs.iter().all(|r| r["records"] == 40 && !r["last_read_age_ms"].is_null());
        done.then(|| rs.iter().map(|r| (r["id"].as_str().unwrap().to_string(), (40, r["path"].as_str().unwrap().to_string()))).collect())
    });
    let check_rows = |when: &str| {
        let rs = rows(&addr);
        let mut paths: Vec<&str> = rs.iter().map(|r| r["path"].as_str().unwrap()).collect();
        paths.sort();
        let n = paths.len();
        paths.dedup();
        assert_eq!(paths.len(), n, "{when}: two rows with one name: {rs:?}");
        for (id, (records, path)) in &before {
            let r = rs.iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("{when}: the row of {path} is gone: {rs:?}"));
            assert!(r["records"].as_u64().unwrap() >= *records, "{when}: {path} went back: {r}");
            assert!(!r["last_read_age_ms"].is_null(), "{when}: {path} says never read: {r}");
        }
    };

    // Lines keep coming through a descriptor opened before.
    let mut live = fs::OpenOptions::new().append(true).open(env.path("access.log")).unwrap();
    unlistable(&env.logs);
    let during = uuids("during", 30);
    let (mut saw_503, t0) = (None, Instant::now());
    let mut next_lag = Instant::now();
    for u in &during {
        live.write_all(fresh(std::slice::from_ref(u)).as_bytes()).unwrap();
        check_rows("while the directory is unreadable");
        if let Err(e) = ready_agrees(&addr) {
            panic!("while the directory is unreadable: {e}");
        }
        let (code, body) = http_get(&addr, "/readyz");
        if code == 503 {
            saw_503.get_or_insert(body);
        }
        if Instant::now() >= next_lag {
            lag_agrees(&env, &addr).unwrap_or_else(|e| panic!("while the directory is unreadable: {e}"));
            next_lag = Instant::now() + Duration::from_millis(700);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(t0.elapsed() >= Duration::from_secs(3));
    let body = saw_503.expect("/readyz said 503 while the log directory could not be listed");
    assert!(body.contains("director") && !body.contains("file(s)"), "names a directory as such: {body}");

    // Readable again.
    support::give_to_unprivileged(&env.logs);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&env.logs, fs::Permissions::from_mode(0o755)).unwrap();
    let after = uuids("after", 20);
    live.write_all(fresh(&after).as_bytes()).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        check_rows("after the directory is readable again");
        ready_agrees(&addr).unwrap_or_else(|e| panic!("after: {e}"));
        let got = env.delivered();
        if during.iter().chain(&after).all(|u| got.contains_key(u)) && http_get(&addr, "/readyz").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered; log:\n{}", crate::tail_harness::tail(&env.log_text(), 40));
        std::thread::sleep(Duration::from_millis(100));
    }
    lag_agrees(&env, &addr).unwrap();
    all.extend(during);
    all.extend(after);
    env.expect_exactly(&all);
    env.stop();
}

// ------------------------------------------------------------ rotation rows

/// A natural order: `access.log.2.gz` before `access.log.10.gz`.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = c.to_digit(10).unwrap() as u64;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d as u64);
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, u64::MAX));
    out
}

/// Rows are listed in natural order in `/status` and `lag`, each under
/// the name its content has now; while Local Edition rotates (rename
/// chain, new live file) no two rows ever show the same name, and a
/// row's records never go back.
#[test]
fn file_rows_show_current_names_in_natural_order_through_rotation() {
    const KEPT: usize = 12;
    let mut env = Env::new("access*.log*", "");
    let mut all = Vec::new();
    for i in (1..=KEPT).rev() {
        let ids = uuids(&format!("r{i}"), 5);
        env.append(&format!("access.log.{i}"), &lines(&ids));
        all.extend(ids);
    }
    let ids = uuids("live0", 5);
    env.append("access.log", &lines(&ids));
    all.extend(ids);
    env.start();
    env.wait_for(&all);
    let addr = status_addr(&env);
    let names = |rs: &[serde_json::Value]| -> Vec<String> {
        rs.iter().map(|r| Path::new(r["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()).collect()
    };
    let want: Vec<String> = std::iter::once("access.log".to_string()).chain((1..=KEPT).map(|i| format!("access.log.{i}"))).collect();
    support::poll_until(DEADLINE, "every row, in natural order", || (names(&rows(&addr)) == want).then_some(()));
    let out = support::run(&["lag", "--config", env.config.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let at: Vec<usize> = want.iter().map(|n| table.find(&format!("/{n} ")).unwrap_or_else(|| panic!("{n} not in:\n{table}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "lag lists files in natural order:\n{table}");

    // Rotate while sampling /status as fast as it answers.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, addr) = (stop.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut problems = Vec::new();
            let mut records: HashMap<String, u64> = HashMap::new();
            let mut samples = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rs = rows(&addr);
                samples += 1;
                let mut seen: HashMap<&str, &str> = HashMap::new();
                for r in &rs {
                    let (id, path) = (r["id"].as_str().unwrap(), r["path"].as_str().unwrap());
                    if r["gone"] != true {
                        if let Some(other) = seen.insert(path, id) {
                            problems.push(format!("{path} on two rows ({other}, {id})"));
                        }
                    }
                    let n = r["records"].as_u64().unwrap();
                    if n < records.insert(id.to_string(), n).unwrap_or(0) {
                        problems.push(format!("records of {id} at {path} went back"));
                    }
                }
            }
            (problems, samples)
        })
    };
    for round in 1..=4 {
        fs::remove_file(env.path(&format!("access.log.{KEPT}"))).unwrap();
        for i in (1..KEPT).rev() {
            fs::rename(env.path(&format!("access.log.{i}")), env.path(&format!("access.log.{}", i + 1))).unwrap();
        }
        fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
        let ids = uuids(&format!("live{round}"), 5);
        env.append("access.log", &lines(&ids));
        env.wait_for(&ids);
        std::thread::sleep(Duration::from_millis(300));
    }
    env.settle();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (problems, samples) = sampler.join().unwrap();
    assert!(samples > 20, "only {samples} samples");
    assert!(problems.is_empty(), "{} problems in {samples} samples, first: {:?}", problems.len(), &problems[..problems.len().min(5)]);
    let rs = support::poll_until(DEADLINE, "rows settled on the names on disk", || {
        let rs = rows(&addr);
        (names(&rs) == want).then_some(rs)
    });
    let paths: Vec<&str> = rs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by_key(|p| natural_key(p));
    assert_eq!(paths, sorted);
    env.stop();
}
