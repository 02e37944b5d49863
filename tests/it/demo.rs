//! The README's commands for a new user: `run --demo` works with no Local
//! Edition, and `check-config` shows what was understood without secrets.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{cmd, poll_until};

#[test]
fn demo_runs_the_whole_bridge_on_localhost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut guard = KillOnDrop(
        cmd()
            .args(["run", "--demo"])
            .env("TMPDIR", tmp.path())
            .env("CALLLOG_BRIDGE_DEMO_LISTEN", "any")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
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
    // The banner's commands work from where the user stands (here, like
    // after `cargo run`, the binary is not on PATH).
    let mut stderr = child.stderr.take().unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let err = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                err.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let lag_cmd = poll_until(Duration::from_secs(30), "the banner", || {
        err.lock().unwrap().lines().find(|l| l.contains(" lag --status-url ")).map(|l| l.trim().to_string())
    });
    let out = std::process::Command::new("sh").arg("-c").arg(&lag_cmd).env("PATH", "/usr/bin:/bin").output().unwrap();
    assert!(out.status.success(), "the banner's `{lag_cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    // SIGTERM stops it cleanly, and it removes its directory.
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let code = poll_until(Duration::from_secs(30), "the demo to exit", || child.try_wait().unwrap());
    reader.join().unwrap();
    let err = err.lock().unwrap().clone();
    assert!(code.success(), "{code:?}\n{err}");
    assert!(err.contains("demo is running"), "{err}");
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}

/// The demo process, killed if the test fails before stopping it (a
/// failed test must not leave a demo running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    std::fs::write(
        &cfg,
        "state_dir = \"state\"\n[[source]]\npaths = [\"logs/*.log\"]\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken = \"chan-s3cret-0123456789\"\n\
         [upstream]\nurl = \"https://user:url-s3cret@collector.example/in?key=q-s3cret\"\n\
         bearer_token = \"bearer-s3cret\"\nheaders = { \"X-Api-Key\" = \"hdr-s3cret\" }\n[status]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = cmd().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("collector.example"), "{text}");
    assert!(text.contains("X-Api-Key"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}
