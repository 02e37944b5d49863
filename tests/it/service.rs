//! Running as a systemd service: the unit file agrees with the code, the
//! packaged config is valid, and the binary speaks sd_notify, logs for the
//! journal, reloads on SIGHUP and drains on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Command;

use calllog_bridge::config::{Config, EXIT_CONFIG};

use crate::support;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("systemd/calllog-bridge.service")).expect("read unit")
}

/// The value of `key=` in the unit's `[Service]` section (last one wins, as
/// systemd reads it).
fn unit_value(key: &str) -> Option<String> {
    let text = unit_text();
    let mut in_service = false;
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                found = Some(v.trim().to_string());
            }
        }
    }
    found
}

/// Seconds in a systemd time span like `30s`, `1min 30s`, `90`.
fn span_secs(v: &str) -> u64 {
    let mut total = 0;
    for part in v.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().expect("number in time span");
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "min" | "m" => n * 60,
            "h" => n * 3600,
            other => panic!("unit {other:?} in {v:?}"),
        };
    }
    total
}

#[test]
fn unit_does_not_restart_on_a_config_error() {
    let v = unit_value("RestartPreventExitStatus").expect("RestartPreventExitStatus=");
    assert_eq!(v, EXIT_CONFIG.to_string(), "the unit must name the config-error exit code");
    assert_eq!(unit_value("Restart").as_deref(), Some("on-failure"));
    assert_eq!(unit_value("Type").as_deref(), Some("notify"));
    assert_eq!(unit_value("ExecReload").as_deref(), Some("/bin/kill -HUP $MAINPID"));
}

#[test]
fn unit_stop_timeout_exceeds_the_drain_grace() {
    let cfg = Config::from_toml(
        "[[source]]\npaths = [\"/x/*.log\"]\n[upstream]\nurl = \"http://127.0.0.1:1/\"\n",
        Path::new("/etc/calllog-bridge/config.toml"),
    )
    .expect("config with upstream defaults");
    let grace_ms = cfg.upstream.expect("upstream").shutdown_grace_ms;
    let stop = span_secs(&unit_value("TimeoutStopSec").expect("TimeoutStopSec="));
    assert!(stop * 1000 >= 3 * grace_ms, "TimeoutStopSec={stop}s must leave room for the {grace_ms} ms drain grace");
    let watchdog = span_secs(&unit_value("WatchdogSec").expect("WatchdogSec="));
    assert!(watchdog >= 10, "a WatchdogSec of {watchdog}s is too tight for a busy host");
}

#[test]
fn packaged_config_is_valid() {
    let path = repo().join("packaging/config.toml");
    let out = support::run(&["check-config", "-c", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "check-config failed: {}", String::from_utf8_lossy(&out.stderr));
    let cfg = Config::load(&path).expect("load");
    assert_eq!(cfg.state_dir, Path::new("/var/lib/calllog-bridge"), "state_dir must be the unit's StateDirectory=");
    assert!(cfg.status.listen.ip().is_loopback(), "status must bind loopback by default");
}

/// Runs `systemd-analyze` when it is installed (it is on the project's
/// machines and in CI); prints why when it is not.
fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("systemd-analyze not available ({e}): unit checks left to scripts/ci-packaging.sh");
            None
        }
    }
}

#[test]
fn unit_verifies_and_rates_at_most_2_0() {
    // `verify` insists that ExecStart= exists: point it at the binary under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("calllog-bridge.service");
    let text = unit_text().replace("/usr/bin/calllog-bridge", support::bin().to_str().expect("utf-8 path"));
    std::fs::write(&unit, text).expect("write unit");
    let unit = unit.to_str().expect("utf-8 path");

    let Some(out) = systemd_analyze(&["verify", unit]) else { return };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");

    let Some(out) = systemd_analyze(&["security", "--offline=true", unit]) else { return };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for calllog-bridge.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
}
