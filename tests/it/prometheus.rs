//! The shipped Prometheus files (`packaging/prometheus/`) against a real
//! Prometheus (Debian's package, unpacked by `scripts/test-tools.sh`):
//! `promtool check rules` / `check config` and `promtool test rules` (a
//! firing and a quiet case per alert), and a live Prometheus scraping a
//! running bridge fed by `simulate --lag-ms` above the threshold, whose
//! sync-delay alert must fire within its `for` plus a scrape interval.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lag::get;
use crate::support::{self, poll_until};
use crate::support_tools::{free_port, tool, Tool};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus").join(name)
}

fn promtool(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn shipped_rules_and_config_pass_promtool_and_every_alert_has_a_firing_and_a_quiet_test() {
    let Some(bin) = tool(Tool::Promtool, "prometheus::shipped_rules") else { return };
    let rules = shipped("calllog-bridge-rules.yml");
    let out = promtool(&bin, &["check", "rules", rules.to_str().unwrap()]);
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
    let out = promtool(&bin, &["test", "rules", "packaging/prometheus/tests/calllog-bridge-rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert of the rules file is tested firing (an expected alert
    // with its summary and description) and quiet (an evaluation that
    // expects none).
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let tests = std::fs::read_to_string(shipped("tests/calllog-bridge-rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules_text.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert_eq!(alerts.len(), 12);
    for a in alerts {
        let cases: Vec<&str> = tests.split("- eval_time:").filter(|c| c.contains(&format!("alertname: {a}\n"))).collect();
        assert!(cases.iter().any(|c| c.contains("exp_alerts:") && c.contains("description:")), "{a}: no firing case");
        assert!(cases.iter().any(|c| !c.contains("exp_alerts:")), "{a}: no quiet case");
    }

    // The scrape example, pointed at the shipped rules.
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(shipped("prometheus.yml"))
        .unwrap()
        .replace("/etc/prometheus/rules/calllog-bridge-rules.yml", rules.to_str().unwrap());
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let out = promtool(&bin, &["check", "config", path.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A process killed when dropped (also on panic).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Prometheus on a free port (picked by binding 127.0.0.1:0 and
/// releasing it; tried again on another port if it is taken meanwhile);
/// returns the process and its base URL once it is ready.
fn start_prometheus(bin: &Path, config: &Path, data: &Path, log: &Path) -> (Killed, String) {
    for _ in 0..3 {
        let port = free_port();
        let err = std::fs::File::create(log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start prometheus");
        let mut p = Killed(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.0.try_wait().unwrap().is_some() {
                break; // exited: the port was taken; another one
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && get(&format!("{url}/-/ready")).0 == 200 {
                return (p, url);
            }
            assert!(Instant::now() < deadline, "prometheus not ready:\n{}", std::fs::read_to_string(log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("prometheus did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

fn api(url: &str) -> Value {
    let (code, body) = get(url);
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The query's value-encoded URL.
fn query_url(base: &str, q: &str) -> String {
    let enc: String = q
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"_-.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("{base}/api/v1/query?query={enc}")
}

#[test]
fn the_sync_delay_alert_fires_on_a_real_prometheus_scraping_a_lagging_bridge() {
    let test = "prometheus::the_sync_delay_alert_fires";
    let Some(prom) = tool(Tool::Prometheus, test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    std::fs::create_dir_all(p("logs")).unwrap();

    // Local Edition traffic two minutes late (the threshold is 60 s).
    let sim = support::cmd()
        .args(["simulate", "--format", "le6", "--rate", "20", "--duration", "0", "--lag-ms", "120000", "--dir"])
        .arg(p("logs"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start simulate");
    let _sim = Killed(sim);
    let config = format!(
        "state_dir = {state:?}\nlog_level = \"info\"\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le6\"\nread_from = \"beginning\"\n\n\
         [file_output]\npath = {out:?}\n\n[status]\nlisten = \"127.0.0.1:0\"\n",
        state = p("state").display().to_string(),
        glob = p("logs/access*.log*").display().to_string(),
        out = p("out/calls.ndjson").display().to_string(),
    );
    std::fs::write(p("bridge.toml"), config).unwrap();
    let bridge = Killed(support::spawn_bridge(&p("bridge.toml"), &p("bridge.log")));
    let addr = poll_until(Duration::from_secs(30), "state/status.addr", || {
        std::fs::read_to_string(p("state/status.addr")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    });

    // The shipped rules with short `for`s; scraped and evaluated every second.
    let (scrape_s, eval_s, for_s) = (1u64, 1u64, 5u64);
    let mut rules = std::fs::read_to_string(shipped("calllog-bridge-rules.yml")).unwrap();
    for long in ["for: 1m", "for: 2m", "for: 5m", "for: 10m"] {
        rules = rules.replace(long, &format!("for: {for_s}s"));
    }
    std::fs::write(p("rules.yml"), rules).unwrap();
    std::fs::write(
        p("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: {scrape_s}s\n  evaluation_interval: {eval_s}s\nrule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: calllog-bridge\n    static_configs:\n      - targets: [\"{addr}\"]\n",
            rules = p("rules.yml").display().to_string(),
        ),
    )
    .unwrap();
    let (_prom, url) = start_prometheus(&prom, &p("prometheus.yml"), &p("prom-data"), &p("prometheus.log"));

    // The first scrape that shows the p95 above 60 s, then the alert.
    let above = query_url(&url, r#"calllog_bridge_sync_delay_window_seconds{stat="p95"} > 60"#);
    let first_above = poll_until(Duration::from_secs(60), "the p95 sync delay above 60 s in Prometheus", || {
        let v = api(&above);
        (!v["data"]["result"].as_array().unwrap().is_empty()).then(Instant::now)
    });
    let alert = poll_until(Duration::from_secs(60), "CalllogBridgeSyncDelayHigh firing", || {
        let v = api(&format!("{url}/api/v1/alerts"));
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == "CalllogBridgeSyncDelayHigh" && a["state"] == "firing")
            .cloned()
    });
    let took = first_above.elapsed();
    eprintln!("CalllogBridgeSyncDelayHigh firing {took:?} after the first scrape above the threshold (for: {for_s}s, scrape: {scrape_s}s)");
    assert_eq!(alert["labels"]["instance"], addr.as_str());
    assert_eq!(alert["labels"]["job"], "calllog-bridge");
    assert!(alert["annotations"]["summary"].as_str().unwrap().starts_with("Sync delay above 60 s"), "{alert}");
    assert!(alert["annotations"]["description"].as_str().unwrap().contains("calllog-bridge lag --config"), "{alert}");
    let value: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!((110.0..200.0).contains(&value), "the p95 is the simulated two minutes: {value}");
    // Within the rule's `for` plus a scrape interval (and the rule
    // evaluation that sees it, plus our polling).
    let bound = Duration::from_secs(for_s + scrape_s + eval_s) + Duration::from_millis(1500);
    assert!(took <= bound, "fired {took:?} after the threshold was crossed, more than {bound:?}");
    // The per-host rule fires too (its `for` passed as well by now).
    poll_until(Duration::from_secs(20), "CalllogBridgeHostSyncDelayHigh firing", || {
        let v = api(&format!("{url}/api/v1/alerts"));
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "CalllogBridgeHostSyncDelayHigh" && a["state"] == "firing")
            .then_some(())
    });
    drop(bridge);
}
