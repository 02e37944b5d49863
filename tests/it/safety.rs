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
            _ => format!("{text}\n[channel]\nlisten = \"{addr}\"\ntoken = \"t\"\n"),
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
