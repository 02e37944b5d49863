//! A damaged state file (`checkpoints.json`, `channel.seq`) against the
//! real binary: the bridge exits with the code the systemd unit does not
//! restart on, says how to recover, and `reset-state` recovers as the
//! operator chooses (the files' current ends, or their starts).

use std::fs;
use std::path::Path;
use std::process::ExitStatus;

use calllog_bridge::checkpoint::EXIT_DAMAGED_STATE;

use crate::support;
use crate::tail_harness::{lines, uuids, Env, DEADLINE};

/// Starts the bridge and waits for it to exit on its own.
fn run_until_exit(env: &Env) -> ExitStatus {
    let mut child = support::spawn_bridge(&env.config, &env.log);
    support::poll_until(DEADLINE, "the bridge to exit", || child.try_wait().expect("wait"))
}

fn reset_state(config: &Path, args: &[&str]) -> (i32, String) {
    let out = support::cmd().arg("reset-state").arg("--config").arg(config).args(args).output().expect("run reset-state");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Files in `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

#[test]
fn a_damaged_checkpoint_file_stops_for_good_and_reset_state_resumes_at_the_files_ends() {
    let mut env = Env::new("access*.log", "");
    let a = uuids("a", 100);
    env.append("access.log", &lines(&a));
    env.start();
    env.wait_for(&a);
    env.stop();
    // A torn write by a failing disk, or a hand edit.
    let torn = "{\"version\":1,\"files\":[{\"fingerprint\":";
    fs::write(env.state.join("checkpoints.json"), torn).unwrap();
    let b = uuids("b", 50);
    env.append("access.log", &lines(&b));

    let status = run_until_exit(&env);
    assert_eq!(status.code(), Some(EXIT_DAMAGED_STATE), "log:\n{}", env.log_text());
    let log = env.log_text();
    assert!(log.contains("checkpoints.json is damaged"), "{log}");
    assert!(log.contains("reset-state --config") && log.contains("--read-from end") && log.contains("--read-from beginning"), "{log}");
    assert_eq!(fs::read_to_string(env.state.join("checkpoints.json")).unwrap(), torn, "the damaged file is left as it is");

    let (code, out) = reset_state(&env.config, &["--read-from", "end"]);
    assert_eq!(code, 0, "{out}");
    let aside = named(&env.state, "checkpoints.json.damaged-");
    assert_eq!(aside.len(), 1, "{out}");
    assert_eq!(fs::read_to_string(&aside[0]).unwrap(), torn, "the damaged file is kept aside");

    // The files' current ends: what was there is not read again, what
    // comes next is.
    env.start();
    let c = uuids("c", 30);
    env.append("access.log", &lines(&c));
    env.wait_for(&c);
    env.settle();
    let got = env.delivered();
    assert!(b.iter().all(|u| !got.contains_key(u)), "records before the chosen end were read");
    assert!(a.iter().all(|u| got.get(u) == Some(&1)), "records read before were read again");
    env.stop();
}

#[test]
fn reset_state_from_the_beginning_reads_everything_again() {
    let mut env = Env::new("access*.log", "");
    let a = uuids("a", 80);
    env.append("access.log", &lines(&a));
    env.start();
    env.wait_for(&a);
    env.stop();
    fs::write(env.state.join("checkpoints.json"), "").unwrap();
    let b = uuids("b", 40);
    env.append("access.log", &lines(&b));
    assert_eq!(run_until_exit(&env).code(), Some(EXIT_DAMAGED_STATE), "log:\n{}", env.log_text());

    let (code, out) = reset_state(&env.config, &["--read-from", "beginning"]);
    assert_eq!(code, 0, "{out}");
    env.start();
    env.wait_for(&b);
    env.settle();
    let got = env.delivered();
    assert!(a.iter().all(|u| got.get(u) == Some(&2)), "everything is read again from the start");
    env.stop();
    // Nothing damaged: the command changes nothing.
    let (code, out) = reset_state(&env.config, &["--read-from", "end"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing is damaged"), "{out}");
    assert_eq!(named(&env.state, "checkpoints.json.damaged-").len(), 1);
}

#[test]
fn a_damaged_channel_sequence_file_stops_for_good_and_reset_state_numbers_above_any_used() {
    let mut env = Env::new("access*.log", "");
    let mut text = fs::read_to_string(&env.config).unwrap();
    text.push_str("\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"a-long-enough-test-token\"\n");
    fs::write(&env.config, text).unwrap();
    env.start();
    env.stop();
    let seq = env.state.join("channel.seq");
    let used: u64 = fs::read_to_string(&seq).unwrap().trim().parse().unwrap();
    fs::write(&seq, "12\u{0}\u{0}garbage\n").unwrap();

    let status = run_until_exit(&env);
    assert_eq!(status.code(), Some(EXIT_DAMAGED_STATE), "log:\n{}", env.log_text());
    let log = env.log_text();
    assert!(log.contains("channel.seq is damaged"), "{log}");
    assert!(log.contains("reset-state"), "{log}");

    let (code, out) = reset_state(&env.config, &["--read-from", "end"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(named(&env.state, "channel.seq.damaged-").len(), 1, "{out}");
    let next: u64 = fs::read_to_string(&seq).unwrap().trim().parse().unwrap();
    assert!(next > used && next > 1_700_000_000_000_000, "next sequence number {next}");
    env.start();
    env.stop();
}

/// A Kafka source's damaged positions stop the bridge like a damaged
/// checkpoint file, and `reset-state` recovers them too: the file is kept
/// aside and the partitions start at the source's `read_from`.
#[test]
fn damaged_kafka_positions_stop_the_bridge_and_reset_state_recovers_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let config = dir.path().join("hub.toml");
    let log = dir.path().join("hub.log");
    // No broker is needed: the positions are read before any connection.
    fs::write(
        &config,
        format!(
            "state_dir = {state:?}\n\n[[source]]\nkind = \"kafka\"\nname = \"fleet\"\nbrokers = [\"127.0.0.1:9\"]\ntopics = [\"calls\"]\n\
             group_id = \"hub\"\n\n[file_output]\npath = {:?}\n\n[status]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("out/out.ndjson")
        ),
    )
    .unwrap();
    let offsets = state.join("kafka-offsets-hub.json");
    fs::write(&offsets, "{\"version\":1,\"partitions\":[").unwrap();

    let mut child = support::spawn_bridge(&config, &log);
    let status = support::poll_until(DEADLINE, "the bridge to exit", || child.try_wait().expect("wait"));
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(EXIT_DAMAGED_STATE), "log:\n{text}");
    assert!(text.contains("kafka-offsets-hub.json") && text.contains("reset-state --config"), "{text}");

    let (code, out) = reset_state(&config, &["--read-from", "end"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("kafka-offsets-hub.json is damaged") && out.contains("read_from = beginning"), "{out}");
    assert_eq!(named(&state, "kafka-offsets-hub.json.damaged-").len(), 1, "{out}");
    assert!(!offsets.exists(), "{out}");

    // Starts now (and keeps trying the broker): its status page answers.
    let _ = fs::remove_file(state.join("status.addr"));
    let mut child = support::spawn_bridge(&config, &log);
    support::poll_until(DEADLINE, "the status page of the restarted bridge", || {
        assert!(child.try_wait().unwrap().is_none(), "the bridge exited: {}", fs::read_to_string(&log).unwrap_or_default());
        let addr = fs::read_to_string(state.join("status.addr")).ok()?;
        std::net::TcpStream::connect(addr.trim().trim_start_matches("http://")).ok()
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
