//! The README's commands for a new user: `run --demo` works with no Local
//! Edition, and `check-config` shows what was understood without secrets.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{cmd, poll_until};

#[test]
fn demo_runs_the_whole_bridge_on_localhost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = cmd()
        .args(["run", "--demo"])
        .env("TMPDIR", tmp.path())
        .env("CALLLOG_BRIDGE_DEMO_LISTEN", "any")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = poll_until(Duration::from_secs(20), "the demo directory", || {
        std::fs::read_dir(tmp.path()).ok()?.flatten().map(|e| e.path()).find(|p| p.join("config.toml").exists())
    });
    let state = dir.join("state");
    let status = poll_until(Duration::from_secs(30), "status.addr", || std::fs::read_to_string(state.join("status.addr")).ok());
    assert!(state.join("channel.addr").exists());
    // Records flow from the simulated LE 6 files to the archive, enriched
    // with names from the embedded lookups and stamped with a sync delay.
    let rec: serde_json::Value = poll_until(Duration::from_secs(30), "archived records", || {
        let text = std::fs::read_to_string(dir.join("archive.ndjson")).ok()?;
        let line = text.lines().next()?;
        serde_json::from_str(line).ok()
    });
    assert_eq!(rec["log_type"], "ML");
    assert!(!rec["request_uuid"].as_str().unwrap().is_empty());
    let delay = rec["sync_delay_ms"].as_i64().unwrap();
    assert!((1_000..10_000).contains(&delay), "sync delay {delay}");
    // The status page answers on the address the demo wrote.
    let body = http_get(status.trim(), "/status");
    assert!(body.contains("\"files\""), "{body}");
    // SIGTERM stops it cleanly.
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let code = poll_until(Duration::from_secs(30), "the demo to exit", || child.try_wait().unwrap());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(code.success(), "{code:?}\n{err}");
    assert!(err.contains("demo is running"), "{err}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn check_config_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[source]]\npaths = [\"/x/*.log\"]\n[channel]\ntoken = \"chan-s3cret-0123456789\"\n\
         [upstream]\nurl = \"https://user:url-s3cret@collector.example/in?key=q-s3cret\"\n\
         bearer_token = \"bearer-s3cret\"\nheaders = { \"X-Api-Key\" = \"hdr-s3cret\" }\n",
    )
    .unwrap();
    let out = cmd().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("collector.example"), "{text}");
    assert!(text.contains("X-Api-Key"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}
