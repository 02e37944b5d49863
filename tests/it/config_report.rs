//! `check-config` and `run` name every mistake of a config in one run,
//! each with its key (a mistyped key with the key it probably meant), in
//! the same list; the directory a user may not enter is named rather than
//! the path behind it; a single-file glob is warned about; the peers
//! (upstream, Kafka brokers) are probed as warnings within a few seconds;
//! a reload refused for a mistyped key names it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support;

/// A directory with `logs/access.log` (one le6 line), a state directory
/// and the config at `config.toml` written by [`Dir::config`].
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("logs")).unwrap();
        std::fs::create_dir_all(d.path().join("state")).unwrap();
        let out =
            support::run(&["simulate", "--dir", &d.path().join("logs").display().to_string(), "--rate", "5", "--duration", "1", "--burst"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Dir(d)
    }

    fn path(&self, s: &str) -> PathBuf {
        self.0.path().join(s)
    }

    /// `p(..)` of the config text.
    fn p(&self, s: &str) -> String {
        format!("{:?}", self.path(s).display().to_string())
    }

    /// Writes `body` (after `state_dir`) as the config; returns its path.
    fn config(&self, body: &str) -> PathBuf {
        let f = self.path("config.toml");
        std::fs::write(&f, format!("state_dir = {}\n{body}", self.p("state"))).unwrap();
        f
    }
}

/// Runs `calllog-bridge CMD --config FILE` (bounded); (exit code, stdout, stderr).
fn cmd(command: &str, config: &Path) -> (Option<i32>, String, String) {
    let mut c = support::cmd();
    c.args([command, "--config"]).arg(config).env_remove("RUST_LOG");
    let out = support::run_for(&mut c, Duration::from_secs(60)).unwrap_or_else(|| panic!("{command} did not end within 60 s"));
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The problems of a stderr: one per `calllog-bridge: ` line (a problem's
/// message may go on over the lines after it).
fn problems(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in stderr.lines() {
        match line.strip_prefix("calllog-bridge: ") {
            Some(p) => out.push(p.to_string()),
            None => {
                if let Some(last) = out.last_mut() {
                    last.push('\n');
                    last.push_str(line);
                }
            }
        }
    }
    out
}

#[test]
fn check_config_and_run_name_five_mistakes_at_once_each_with_its_key() {
    let d = Dir::new();
    std::fs::write(d.path("weak.token"), "aaaaaaaaaaaaaaaa\n").unwrap();
    // Five different mistakes: a typo'd key, a weak token, a lookup file
    // that is not there, a value out of range, a log directory that does
    // not exist.
    let config = d.config(&format!(
        "memory_max_bytes = 1000\n\
         [[source]]\npaths = [{logs}]\nformat = \"le6\"\n\
         [enrich]\nlookups = [{lookup}]\n\
         [channel]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token}\nrecords_per_mesage = 10\n\
         [status]\nlisten = \"127.0.0.1:0\"\n",
        logs = d.p("logz/access*.log*"),
        lookup = d.p("lookups/servces.csv"),
        token = d.p("weak.token"),
    ));
    let (code, out, err) = cmd("check-config", &config);
    assert_eq!(code, Some(64), "{out}\n{err}");
    let found = problems(&err);
    let keys = ["channel.records_per_mesage", "channel.token_file", "memory_max_bytes", "source[0].paths", "enrich.lookups"];
    assert_eq!(found.len(), keys.len(), "one line per problem:\n{err}");
    for (problem, key) in found.iter().zip(keys) {
        assert!(problem.contains(&format!("`{key}`")), "expected `{key}` in {problem}");
    }
    assert!(found[0].ends_with("did you mean `records_per_message`?"), "{}", found[0]);
    assert!(found[1].contains("too little variety") && !found[1].contains("aaaa"), "{}", found[1]);
    assert!(found[3].contains("logz") && found[3].contains("does not exist"), "{}", found[3]);
    assert!(found[4].contains("servces.csv"), "{}", found[4]);
    assert!(out.contains("5 problem(s), `run` would refuse to start"), "{out}");

    // `run` refuses with the same list.
    let (code, _, run_err) = cmd("run", &config);
    assert_eq!(code, Some(64), "{run_err}");
    assert_eq!(problems(&run_err), found, "run lists what check-config lists");
}

#[test]
fn mistyped_keys_at_every_level_get_the_key_they_probably_meant() {
    let d = Dir::new();
    let config = d.config(&format!(
        "log_levle = \"debug\"\n[[source]]\npaths = [{logs}]\nformatt = \"le6\"\n[file_output]\npath = {out}\nfsync_interval = 5\n\
         [status]\nlisten = \"127.0.0.1:0\"\n",
        logs = d.p("logs/access.log*"),
        out = d.p("archive.ndjson"),
    ));
    let (code, out, err) = cmd("check-config", &config);
    assert_eq!(code, Some(64), "{out}\n{err}");
    let found = problems(&err);
    let want = [("log_levle", "log_level"), ("source[0].formatt", "format"), ("file_output.fsync_interval", "fsync_interval_ms")];
    assert_eq!(found.len(), want.len(), "{err}");
    for (problem, (key, meant)) in found.iter().zip(want) {
        assert!(problem.contains(&format!("`{key}`")) && problem.ends_with(&format!("did you mean `{meant}`?")), "{problem}");
        assert!(problem.contains("line "), "with its line: {problem}");
    }
}

#[test]
fn a_single_file_glob_is_warned_about() {
    let d = Dir::new();
    let config = d.config(&format!(
        "[[source]]\npaths = [{one}]\nformat = \"le6\"\n[file_output]\npath = {out}\n[status]\nlisten = \"127.0.0.1:0\"\n",
        one = d.p("logs/access.log"),
        out = d.p("archive.ndjson"),
    ));
    let (code, out, err) = cmd("check-config", &config);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let warning = out.lines().find(|l| l.contains("names one file")).unwrap_or_else(|| panic!("no warning:\n{out}"));
    assert!(warning.contains("`source[0].paths`") && warning.contains("access.log.1") && warning.contains("access.log*"), "{warning}");
    // With the `*`, no warning.
    let config = d.config(&format!(
        "[[source]]\npaths = [{all}]\nformat = \"le6\"\n[file_output]\npath = {out}\n[status]\nlisten = \"127.0.0.1:0\"\n",
        all = d.p("logs/access.log*"),
        out = d.p("archive.ndjson"),
    ));
    let (code, out, _) = cmd("check-config", &config);
    assert_eq!(code, Some(0));
    assert!(!out.contains("names one file"), "{out}");
}

#[test]
fn a_typo_under_a_directory_the_user_may_not_enter_names_that_directory() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new();
    // Local Edition's log tree, closed to the service user.
    let private = d.path("le");
    std::fs::create_dir_all(private.join("logs")).unwrap();
    let config = d.config(&format!(
        "[[source]]\npaths = [{typo}]\nformat = \"le6\"\n[file_output]\npath = {out}\n[status]\nenabled = false\n",
        typo = d.p("le/lgos/access*.log*"),
        out = d.p("state/archive.ndjson"),
    ));
    support::give_to_unprivileged(&d.path("state"));
    support::give_to_unprivileged(&config);
    if support::is_root() {
        std::os::unix::fs::chown(&private, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    } else {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut c = support::cmd();
    c.args(["check-config", "--config"]).arg(&config);
    let out = support::run_for(support::unprivileged(&mut c), Duration::from_secs(30)).expect("check-config ends");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let problem = problems(&err).into_iter().find(|p| p.contains("`source[0].paths`")).unwrap_or_else(|| panic!("{err}"));
    assert!(
        problem.contains(&format!("may not search (enter) {}", private.display())),
        "the directory the user may not enter is named: {problem}"
    );
}

/// A TCP listener that accepts and closes every connection (reachable, but
/// no Kafka broker); stops when dropped.
struct AcceptAndClose {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AcceptAndClose {
    fn start() -> AcceptAndClose {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let mut buf = [0u8; 512];
                        let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
                        let _ = c.read(&mut buf);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        AcceptAndClose { addr, stop }
    }
}

impl Drop for AcceptAndClose {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn check_config_probes_the_upstream_and_the_brokers_as_warnings_within_a_few_seconds() {
    let d = Dir::new();
    let not_kafka = AcceptAndClose::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = d.config(&format!(
        "[[source]]\npaths = [{logs}]\nformat = \"le6\"\n\
         [upstream]\nurl = \"http://{closed}/ingest\"\n\
         [kafka]\nbrokers = [\"{not_kafka}\"]\ntopic = \"calllog\"\n\
         [status]\nlisten = \"127.0.0.1:0\"\n",
        logs = d.p("logs/access.log*"),
        not_kafka = not_kafka.addr,
    ));
    let started = Instant::now();
    let (code, out, err) = cmd("check-config", &config);
    let took = started.elapsed();
    assert_eq!(code, Some(0), "what a probe finds is a warning, never a refusal:\n{out}\n{err}");
    assert!(took < Duration::from_secs(10), "the probes are bounded: {took:?}");
    let upstream = out.lines().find(|l| l.contains("`upstream.url`")).unwrap_or_else(|| panic!("{out}"));
    assert!(upstream.contains("no TCP connection") && upstream.contains(&closed.to_string()), "{upstream}");
    let kafka = out.lines().find(|l| l.contains("`kafka.brokers`")).unwrap_or_else(|| panic!("{out}"));
    assert!(kafka.contains("reachable, but no answer as Kafka"), "{kafka}");
    assert!(out.contains("peers (probed within"), "{out}");

    // The real broker, when the test tools are installed: the topic and
    // its partitions, or that it is missing.
    let Some(broker) = crate::support_kafka::Broker::start("config_report::probes") else { return };
    broker.create_topic("calllog", 3);
    let config = d.config(&format!(
        "[[source]]\npaths = [{logs}]\nformat = \"le6\"\n\
         [kafka]\nbrokers = [\"{addr}\"]\ntopic = \"calllog\"\n\
         [[source]]\nkind = \"kafka\"\ngroup_id = \"hub\"\nbrokers = [\"{addr}\"]\ntopics = [\"calllog\", \"missing\"]\n\
         [status]\nlisten = \"127.0.0.1:0\"\n",
        logs = d.p("logs/access.log*"),
        addr = broker.addr(),
    ));
    let (code, out, err) = cmd("check-config", &config);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let edge = out.lines().find(|l| l.trim_start().starts_with("kafka.brokers")).unwrap_or_else(|| panic!("{out}"));
    assert!(edge.contains("ok:") && edge.contains("topic `calllog` has 3 partition(s)"), "{edge}");
    let hub = out.lines().find(|l| l.contains("`source[1].brokers`")).unwrap_or_else(|| panic!("{out}"));
    assert!(hub.contains("topic `missing` does not exist"), "{hub}");
}

#[test]
fn a_reload_refused_for_a_mistyped_key_names_the_key() {
    let d = Dir::new();
    let body = |extra: &str| {
        format!(
            "[[source]]\npaths = [{logs}]\nformat = \"le6\"\n{extra}\n[file_output]\npath = {out}\n[status]\nlisten = \"127.0.0.1:0\"\n",
            logs = d.p("logs/access.log*"),
            out = d.p("archive.ndjson"),
        )
    };
    let config = d.config(&body(""));
    let log = d.path("bridge.log");
    let mut child = support::spawn_bridge(&config, &log);
    support::poll_until(Duration::from_secs(20), "the bridge running", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("bridge running").then_some(())
    });
    d.config(&body("read_delay_msec = 10"));
    let st = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).stdin(Stdio::null()).status().unwrap();
    assert!(st.success());
    let refusal = support::poll_until(Duration::from_secs(20), "the refusal", || {
        std::fs::read_to_string(&log).unwrap_or_default().lines().find(|l| l.contains("reload refused")).map(str::to_string)
    });
    support::terminate(&mut child, Duration::from_secs(30));
    assert!(
        refusal.contains("key=source[0].read_delay_msec") || refusal.contains("key=\"source[0].read_delay_msec\""),
        "the key is named: {refusal}"
    );
    assert!(refusal.contains("did you mean `read_delay_ms`?"), "{refusal}");
}
