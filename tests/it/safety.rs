//! Safety rails for operators: ordinary mistakes (a second bridge on the
//! same state directory, a busy port, a missing lookup file, a directory
//! the service user cannot write, a glob that matches nothing, a file it
//! cannot read, a pattern that misses rotated files) are refused at start
//! with exit 64 and a message naming the key, or shown in `/status`,
//! `/metrics` and `lag`; never silent.
//!
//! Permission mistakes need a user that permissions apply to: when the
//! tests run as root the bridge runs as an unprivileged uid
//! ([`support::unprivileged`]).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use calllog_bridge::config::Config;

use crate::support::{self, run_for};
use crate::tail_harness::{lines, uuids, Env, DEADLINE};

/// How long a refused start may take (it must be at once).
const REFUSED_WITHIN: Duration = Duration::from_secs(15);

fn run_cmd(config: &Path) -> Command {
    let mut c = support::cmd();
    c.args(["run", "--config"]).arg(config).env_remove("RUST_LOG").env_remove("NOTIFY_SOCKET");
    c
}

fn check_cmd(config: &Path) -> Command {
    let mut c = support::cmd();
    c.args(["check-config", "--config"]).arg(config);
    c
}

/// Exit code and stderr of a command that must end by itself.
fn ended(cmd: &mut Command, what: &str) -> (i32, String) {
    let out = run_for(cmd, REFUSED_WITHIN).unwrap_or_else(|| panic!("{what} did not exit within {REFUSED_WITHIN:?}"));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A `host:port` of the running bridge's status listener.
fn status_addr(env: &Env) -> String {
    support::poll_until(DEADLINE, "status.addr", || fs::read_to_string(env.state.join("status.addr")).ok()).trim().to_string()
}

/// `GET path` on `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

// ---------------------------------------------------------------- item 1

#[test]
fn a_second_bridge_on_the_same_state_dir_is_refused_while_the_first_keeps_running() {
    let mut env = Env::new("access*.log*", "");
    let first = uuids("first", 300);
    env.append("access.log", &lines(&first));
    env.start();
    env.wait_for(&first);
    let pid = env.child.as_ref().expect("running").id();
    let addr = status_addr(&env);

    // An operator's manual debug run on the service's config.
    let (code, err) = ended(&mut run_cmd(&env.config), "the second bridge");
    assert_eq!(code, 64, "a second bridge must be refused with 64: {err}");
    assert!(err.contains(&env.state.display().to_string()), "the message names the state_dir: {err}");
    assert!(err.contains(&format!("PID {pid}")), "the message names the PID holding it: {err}");
    assert_eq!(fs::read_to_string(env.state.join("status.addr")).unwrap().trim(), addr, "status.addr untouched");

    // Read-only commands still work next to it.
    let lag = support::run(&["lag", "--config", env.config.to_str().unwrap()]);
    assert_eq!(lag.status.code(), Some(0), "lag: {}", String::from_utf8_lossy(&lag.stderr));
    let (code, err) = ended(&mut check_cmd(&env.config), "check-config");
    assert_eq!(code, 0, "check-config next to a running bridge: {err}");

    // The first one goes on, and nothing came out twice.
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let second = uuids("second", 100);
    env.append("access.log", &lines(&second));
    env.expect_exactly(&[first, second].concat());
    env.stop();

    // Once it is gone, the state_dir is free again (kill -9 frees it too).
    env.start();
    env.kill9();
    env.start();
    env.stop();
}

// ---------------------------------------------------------------- item 2

#[test]
fn a_listen_address_in_use_is_refused_before_anything_is_read() {
    for key in ["status.listen", "channel.listen"] {
        let env = Env::new("access*.log*", "");
        env.append("access.log", &lines(&uuids("x", 10)));
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap().to_string();
        let text = fs::read_to_string(&env.config).unwrap();
        let text = match key {
            "status.listen" => text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
            _ => format!("{text}\n[channel]\nlisten = \"{addr}\"\ntoken = \"token-0123456789abcdef\"\n"),
        };
        fs::write(&env.config, text).unwrap();
        let (code, err) = ended(&mut run_cmd(&env.config), "a bridge with a busy port");
        assert_eq!(code, 64, "{key} busy: {err}");
        assert!(err.contains(&format!("`{key}`")) && err.contains(&addr), "{key}: the message names the key and the address: {err}");
        assert!(!env.out.exists() && !env.state.join("checkpoints.json").exists(), "{key}: nothing was read or written");
        let (code, err) = ended(&mut check_cmd(&env.config), "check-config");
        assert_eq!(code, 64, "check-config agrees: {err}");
        assert!(err.contains(&format!("`{key}`")), "{err}");
        drop(busy);
    }
}

// ---------------------------------------------------------------- item 4

/// `check-config` and `run` both refuse `config` with 64 and one message
/// naming `key`, saying `cause` once.
fn both_refuse(config: &Path, key: &str, cause: &str, unprivileged: bool) {
    for (name, mut cmd) in [("check-config", check_cmd(config)), ("run", run_cmd(config))] {
        if unprivileged {
            support::unprivileged(&mut cmd);
        }
        let (code, err) = ended(&mut cmd, name);
        assert_eq!(code, 64, "{name} must exit 64 ({key}): {err}");
        assert!(err.contains(&format!("`{key}`")), "{name}: the message names `{key}`: {err}");
        assert_eq!(err.matches(cause).count(), 1, "{name}: the cause `{cause}` said exactly once: {err}");
    }
}

#[test]
fn check_config_and_run_refuse_the_same_mistakes_with_64() {
    // A lookup file that is not there.
    let env = Env::new("access*.log*", "");
    env.append("access.log", &lines(&uuids("x", 3)));
    let text = fs::read_to_string(&env.config).unwrap();
    fs::write(&env.config, format!("{text}\n[enrich]\nlookups = [\"lookups/keys.csv\"]\n")).unwrap();
    both_refuse(&env.config, "enrich.lookups", "No such file or directory", false);

    // A glob whose directory does not exist.
    let env = Env::new("access*.log*", "");
    fs::remove_dir(&env.logs).unwrap();
    both_refuse(&env.config, "source[0].paths", "does not exist", false);

    // A state_dir whose parent does not exist either: a typo, never created.
    let env = Env::new("access*.log*", "");
    env.append("access.log", &lines(&uuids("x", 3)));
    let text = fs::read_to_string(&env.config).unwrap();
    let typo = env.dir.path().join("nonexistent/dir");
    fs::write(&env.config, text.replace(&env.state.display().to_string(), &typo.display().to_string())).unwrap();
    both_refuse(&env.config, "state_dir", "does not exist", false);
    assert!(!env.dir.path().join("nonexistent").exists(), "the typo was not created");
}

#[test]
fn check_config_and_run_refuse_directories_the_user_cannot_write_with_64() {
    for key in ["state_dir", "file_output.path"] {
        let env = Env::new("access*.log*", "");
        env.append("access.log", &lines(&uuids("x", 3)));
        let archive_dir = env.out.parent().unwrap().to_path_buf();
        for d in [&env.state, &archive_dir] {
            fs::create_dir_all(d).unwrap();
            support::give_to_unprivileged(d);
        }
        support::give_to_unprivileged(&env.logs);
        let locked = if key == "state_dir" { env.state.clone() } else { archive_dir };
        support::read_only_for_unprivileged(&locked);
        both_refuse(&env.config, key, "Permission denied", true);
        assert!(!env.state.join("checkpoints.json").exists(), "{key}: nothing started");
        // Let the scratch directory be removed (as a non-root user).
        support::give_to_unprivileged(&locked);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `GET /status` of the running bridge, as JSON.
fn status(env: &Env) -> serde_json::Value {
    let (code, body) = http_get(&status_addr(env), "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

/// `GET /metrics` of the running bridge: the value of the sample whose
/// name and labels are written exactly as `series` (`name{labels}`).
fn metric(env: &Env, series: &str) -> Option<f64> {
    let (_, body) = http_get(&status_addr(env), "/metrics");
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// `lag --config --max-lag LIMIT`: exit code, stdout and stderr.
fn lag(env: &Env, limit: &str) -> (i32, String, String) {
    let out = support::run(&["lag", "--config", env.config.to_str().unwrap(), "--max-lag", limit]);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

// ---------------------------------------------------------------- item 3

/// The glob's file-name part of the shipped config (`access*.log*`).
fn shipped_pattern() -> String {
    let cfg = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.toml")).expect("packaging/config.toml");
    let glob = Path::new(&cfg.sources[0].get::<calllog_bridge::source::file::FileSource>().expect("a file source").paths[0]);
    glob.file_name().expect("a file-name pattern").to_string_lossy().into_owned()
}

/// Reads 100 lines, stops; 50 more are appended, the file is rotated
/// (renamed to access.log.1), 10 lines go to the new access.log; starts
/// again. Returns the three sets of uuids.
fn rotate_while_stopped(env: &mut Env) -> [Vec<String>; 3] {
    let read = uuids("read", 100);
    env.append("access.log", &lines(&read));
    env.start();
    env.wait_for(&read);
    env.settle();
    env.stop();
    let appended = uuids("appended", 50);
    env.append("access.log", &lines(&appended));
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    let new = uuids("new", 10);
    env.append("access.log", &lines(&new));
    env.start();
    [read, appended, new]
}

#[test]
fn the_shipped_pattern_loses_nothing_when_the_log_rotates_while_the_bridge_is_stopped() {
    let pattern = shipped_pattern();
    let mut env = Env::new(&pattern, "");
    let [read, appended, new] = rotate_while_stopped(&mut env);
    env.expect_exactly(&[read, appended, new].concat());
    assert!(!env.log_text().contains("RECORDS LOST"), "{}", env.log_text());
    env.stop();
}

#[test]
fn a_checkpointed_file_left_with_unread_bytes_is_reported_loudly_and_counted() {
    // A pattern that misses rotated names: the 50 appended lines are in
    // access.log.1, which nothing follows.
    let mut env = Env::new("access*.log", "");
    let [read, appended, new] = rotate_while_stopped(&mut env);
    env.wait_for(&new);
    let lost_bytes = lines(&appended).len() as f64;
    let rotated = env.path("access.log.1").display().to_string();
    support::poll_until(DEADLINE, "the files-left-unread counter", || {
        (metric(&env, "calllog_bridge_source_files_left_unread_total{source=\"source0\"}") == Some(1.0)).then_some(())
    });
    assert_eq!(metric(&env, "calllog_bridge_source_bytes_left_unread_total{source=\"source0\"}"), Some(lost_bytes));
    let log = env.log_text();
    let warning = log.lines().find(|l| l.contains("RECORDS LOST")).unwrap_or_else(|| panic!("no RECORDS LOST warning:\n{log}"));
    assert!(warning.contains("WARN") && warning.contains(&rotated), "{warning}");
    let st = status(&env);
    let src = &st["sources"][0];
    assert_eq!(src["files_left_unread"], 1, "{src}");
    assert_eq!(src["left_unread"][0]["now_at"], rotated.as_str(), "{src}");
    assert_eq!(src["left_unread"][0]["unread_bytes"].as_f64(), Some(lost_bytes), "{src}");
    let (_, out, _) = lag(&env, "1h");
    assert!(out.contains("RECORDS LOST") && out.contains("access.log"), "lag shows it:\n{out}");
    // Nothing else went missing, nothing came twice.
    let got = env.delivered();
    assert!(appended.iter().all(|u| !got.contains_key(u)), "the rotated lines were not read");
    assert!(read.iter().chain(&new).all(|u| got.get(u) == Some(&1)));
    env.stop();
}

// ---------------------------------------------------------------- item 5

#[test]
fn a_source_matching_nothing_fails_lag_and_readyz_after_the_grace_period() {
    let mut env = Env::new("access*.log*", "");
    let text = fs::read_to_string(&env.config).unwrap();
    fs::write(&env.config, format!("{text}no_files_after_secs = 1\n")).unwrap();
    env.start();
    assert!(env.log_text().contains("matches no file yet"), "warned at start:\n{}", env.log_text());
    let addr = status_addr(&env);
    let (_, err) = support::poll_until(DEADLINE, "lag --max-lag to fail", || {
        let (code, _, err) = lag(&env, "1h");
        (code == 2).then_some((code, err))
    });
    assert!(err.contains("source0") && err.contains("matched no file"), "{err}");
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("source0"), "{body}");
    assert_eq!(status(&env)["sources"][0]["state"], "no-files");
    assert_eq!(metric(&env, "calllog_bridge_source_files{source=\"source0\"}"), Some(0.0));
    // A file appears: all is well again.
    let ids = uuids("late", 5);
    env.append("access.log", &fresh_lines(&ids));
    env.wait_for(&ids);
    support::poll_until(DEADLINE, "lag and readyz to recover", || {
        (lag(&env, "1h").0 == 0 && http_get(&addr, "/readyz").0 == 200).then_some(())
    });
    env.stop();
}

#[test]
fn a_file_the_bridge_cannot_read_is_shown_per_source_and_fails_lag_and_readyz() {
    let mut env = Env::new("access*.log*", "");
    let readable = uuids("readable", 20);
    let locked = uuids("locked", 20);
    env.append("access.log", &fresh_lines(&readable));
    env.append("access.log.1", &fresh_lines(&locked));
    for d in [env.logs.clone(), env.state.clone(), env.out.parent().unwrap().to_path_buf()] {
        fs::create_dir_all(&d).unwrap();
        support::give_to_unprivileged(&d);
    }
    support::give_to_unprivileged(&env.path("access.log"));
    support::unreadable_for_unprivileged(&env.path("access.log.1"));
    // check-config warns (another file is readable), run starts.
    let mut check = check_cmd(&env.config);
    let out = run_for(support::unprivileged(&mut check), REFUSED_WITHIN).expect("check-config ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("access.log.1"), "{}", String::from_utf8_lossy(&out.stdout));
    let err = fs::OpenOptions::new().create(true).append(true).open(&env.log).unwrap();
    let mut run = run_cmd(&env.config);
    support::unprivileged(&mut run).stdout(std::process::Stdio::null()).stderr(err);
    env.child = Some(run.spawn().unwrap());
    env.wait_for(&readable);

    let src = support::poll_until(DEADLINE, "the unreadable file in /status", || {
        let st = status(&env);
        (st["sources"][0]["files_unreadable"] == 1).then(|| st["sources"][0].clone())
    });
    assert_eq!(src["state"], "unreadable", "{src}");
    assert!(src["unreadable"][0]["path"].as_str().unwrap().ends_with("access.log.1"), "{src}");
    assert!(src["unreadable"][0]["error"].as_str().unwrap().contains("Permission denied"), "{src}");
    assert_eq!(metric(&env, "calllog_bridge_source_files_unreadable{source=\"source0\"}"), Some(1.0));
    let (code, out, err) = lag(&env, "1h");
    assert_eq!(code, 2, "lag --max-lag fails on an unreadable file: {out}{err}");
    assert!(err.contains("cannot be read") && out.contains("access.log.1"), "{out}{err}");
    let (code, body) = http_get(&status_addr(&env), "/readyz");
    assert_eq!((code, body.contains("access.log.1")), (503, true), "{body}");

    // The operator fixes the permissions: the file is read, all is well.
    support::give_to_unprivileged(&env.path("access.log.1"));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(env.path("access.log.1"), fs::Permissions::from_mode(0o644)).unwrap();
    env.wait_for(&locked);
    support::poll_until(DEADLINE, "lag to recover", || (lag(&env, "1h").0 == 0).then_some(()));
    env.stop();
}

// ---------------------------------------------------------------- item 6

/// Lines for `ids` whose calls happened just now (no sync delay to speak of,
/// so `lag --max-lag` judges only what the test is about).
fn fresh_lines(ids: &[String]) -> String {
    ids.iter().map(|u| line_ago(u, 0)).collect()
}

/// One le-json line for `uuid` whose call happened `ago_ms` before now.
fn line_ago(uuid: &str, ago_ms: i64) -> String {
    let t = calllog_bridge::time::format_iso_millis(calllog_bridge::time::now_ms() - ago_ms);
    crate::tail_harness::line(uuid).replace("2024-01-01T00:00:00Z", &t)
}

#[test]
fn file_rows_follow_their_file_through_rotation_and_gzip_with_counters_that_never_go_back() {
    let mut env = Env::new("access*.log*", "");
    // Old calls (an hour late) in the file that will be rotated away.
    let old: Vec<String> = uuids("old", 100);
    env.append("access.log", &old.iter().map(|u| line_ago(u, 3_600_000)).collect::<String>());
    env.start();
    env.wait_for(&old);
    let rows = |env: &Env| -> Vec<serde_json::Value> { status(env)["files"].as_array().cloned().unwrap_or_default() };
    let first = support::poll_until(DEADLINE, "a row with 100 records", || {
        rows(&env).into_iter().find(|r| r["records"] == 100 && r["path"].as_str().is_some_and(|p| p.ends_with("/access.log")))
    });
    let id = first["id"].as_str().expect("an id").to_string();
    let mut records_seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut check_monotonic = |rs: &[serde_json::Value]| {
        for r in rs {
            let (id, n) = (r["id"].as_str().unwrap().to_string(), r["records"].as_u64().unwrap());
            let before = records_seen.insert(id.clone(), n).unwrap_or(0);
            assert!(n >= before, "records of {id} went down: {before} -> {n}");
        }
    };

    // Rotation: the row follows the renamed file; the new file has its own.
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    let fresh = uuids("fresh", 20);
    env.append("access.log", &fresh_lines(&fresh));
    env.wait_for(&fresh);
    let rotated = env.path("access.log.1").display().to_string();
    support::poll_until(DEADLINE, "the row to follow access.log.1", || {
        let rs = rows(&env);
        check_monotonic(&rs);
        rs.iter().any(|r| r["id"] == id.as_str() && r["path"] == rotated.as_str() && r["finished"] == true).then_some(())
    });

    // gzip: the .gz continues the same row (same content), nothing is read twice.
    crate::tail_harness::gzip(&env.path("access.log.1"), &env.path("access.log.1.gz"));
    let gz = env.path("access.log.1.gz").display().to_string();
    let rs = support::poll_until(DEADLINE, "the row to follow access.log.1.gz", || {
        let rs = rows(&env);
        check_monotonic(&rs);
        (rs.len() == 2 && rs.iter().any(|r| r["id"] == id.as_str() && r["path"] == gz.as_str() && r["state"] == "idle")).then_some(rs)
    });
    let row = rs.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["records"], 100, "{row}");
    assert_eq!(row["sync_delay_ms"], serde_json::Value::Null, "a finished file shows no current delay: {row}");
    let live = rs.iter().find(|r| r["id"] != id.as_str()).unwrap();
    assert!(live["path"].as_str().unwrap().ends_with("/access.log") && live["records"] == 20, "{live}");

    // The hour-late file is done: it no longer fails a 10-minute limit.
    let (code, out, err) = lag(&env, "10m");
    assert_eq!(code, 0, "{out}{err}");
    env.expect_exactly(&[old, fresh].concat());
    env.stop();
}

// ---------------------------------------------------------------- item 7

#[test]
fn routine_rotation_and_gzip_log_nothing_above_debug() {
    let mut env = Env::new("access*.log*", "exclude = [\"*.tmp\"]");
    let text = fs::read_to_string(&env.config).unwrap().replace("log_level = \"debug\"", "log_level = \"info\"");
    fs::write(&env.config, text).unwrap();
    env.start();
    // Local Edition's rotation, many times over: rename to .1, .2, ...,
    // gzip through a temporary file, delete beyond 10 kept.
    let out = support::run(&[
        "simulate",
        "--format",
        "le-json",
        "--dir",
        env.logs.to_str().unwrap(),
        "--rate",
        "400",
        "--duration",
        "3",
        "--rotate-bytes",
        "30000",
        "--gzip-rotated",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    support::poll_until(DEADLINE, "records", || (!env.delivered().is_empty()).then_some(()));
    env.settle();
    env.stop();
    // Start-up and shutdown say what they do; nothing in between.
    let expected = [
        "matches no file yet",
        "file descriptor limit",
        "following files",
        "status listener",
        "bridge running",
        "shutdown requested",
        "stopping: draining sinks",
        "stopped; checkpoints written",
    ];
    let log = env.log_text();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
        .filter(|l| !expected.iter().any(|e| l.contains(e)))
        .collect();
    assert!(loud.is_empty(), "routine rotation logged above DEBUG:\n{}", loud.join("\n"));
}

// ---------------------------------------------------------------- item 8

#[test]
fn getting_started_commands_say_the_right_thing() {
    // simulate --help lists only the formats it writes.
    let help = String::from_utf8_lossy(&support::run(&["simulate", "--help"]).stdout).into_owned();
    for f in ["le6", "le5-csv", "le-json"] {
        assert!(help.contains(f), "{help}");
    }
    for f in ["ecls", "ecle-csv", "auto"] {
        assert!(!help.contains(f), "simulate does not write {f}:\n{help}");
    }
    // A bad --token-file is an argument problem, said once, naming the option.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-token");
    let out = support::run(&["tail", "ws://127.0.0.1:9/stream", "--token-file", missing.to_str().unwrap(), "--no-reconnect"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--token-file") && err.contains(&missing.display().to_string()), "{err}");
    assert!(!err.contains("config key"), "not a config key: {err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A mistyped option is a usage error (64), never lag's "over the limit" (2).
    let out = support::run(&["lag", "--max-lagg", "5m"]);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
}
