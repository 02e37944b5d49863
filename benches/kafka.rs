//! Fleet benchmarks against the real binary and a real Kafka-protocol
//! broker (tansu with in-memory storage, found as the tests find it:
//! `CALLLOG_TANSU`, else `~/.cache/calllog-bridge-tools`); `cargo bench
//! --bench kafka` prints the figures (no harness).
//!
//! 1. file → Kafka: an `le6` file of `LINES` lines (default 200,000)
//!    written before an edge bridge starts; its CPU (utime + stime from
//!    `/proc`) until its checkpoint reaches the end of the file, i.e.
//!    every record was produced with `acks = all` (lz4, the default) and
//!    acknowledged: records per CPU-second is the one-core figure.
//! 2. Kafka → hub → channel: a hub bridge with a channel (and a
//!    subscribed client) reads the same topic from the beginning; its CPU
//!    until its positions reach the end of every partition, i.e. every
//!    record was decoded, handed to the channel and acknowledged; and its
//!    peak memory (VmHWM). Twice: with the default `fetch_max_bytes`
//!    (256 KiB) and with 1 MiB, to compare within one run. tansu holds
//!    every fetch for about half of `fetch_max_wait_ms` even when it has
//!    data, so wall time here grows with the number of fetches; CPU per
//!    record is the bridge's figure.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calllog_bridge::parse::Format;
use calllog_bridge::sim::Generator;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calllog-bridge"))
}

fn tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CALLLOG_TANSU") {
        return Some(PathBuf::from(p));
    }
    let dir = std::env::var_os("CALLLOG_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/calllog-bridge-tools")))?;
    Some(dir.join("tansu-0.6.0/bin/tansu")).filter(|p| p.exists())
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// utime + stime in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 =
            f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        ticks / 100.0
    }
}

fn bridge(dir: &Path, name: &str, body: &str) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    fs::write(
        &config,
        format!("state_dir = {:?}\nlog_level = \"warn\"\n{body}\n[status]\nenabled = false\n", dir.join(name).to_string_lossy()),
    )
    .unwrap();
    Proc(Command::new(bin()).args(["run", "--config"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("bridge"))
}

fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn json(p: &Path) -> serde_json::Value {
    fs::read_to_string(p).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn main() {
    let Some(tansu) = tansu() else {
        println!("SKIPPED: tansu not installed (run scripts/test-tools.sh)");
        return;
    };
    let lines: usize = std::env::var("LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let _broker = Proc(
        Command::new(&tansu)
            .current_dir(d)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu"),
    );
    poll("tansu to listen", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    poll("the topic", Duration::from_secs(20), || {
        Command::new(&tansu)
            .args(["topic", "create", "calls", "--partitions", "3", "--broker", &url])
            .output()
            .is_ok_and(|o| o.status.success())
    });

    fs::create_dir_all(d.join("logs")).unwrap();
    let mut gen = Generator::new(1);
    let now = calllog_bridge::time::now_ms();
    let mut f = std::io::BufWriter::new(fs::File::create(d.join("logs/access.log")).unwrap());
    for i in 0..lines {
        let c = gen.next_call(now - 60_000 + i as i64 / 10, 1000);
        f.write_all(c.render(Format::Le6).as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let size = fs::metadata(d.join("logs/access.log")).unwrap().len();

    // 1. file -> Kafka.
    let t0 = Instant::now();
    let edge = bridge(
        d,
        "edge",
        &format!(
            "host = \"edge-1\"\n[[source]]\npaths = [{:?}]\nformat = \"le6\"\n[kafka]\nbrokers = [\"127.0.0.1:{port}\"]\ntopic = \"calls\"\n",
            d.join("logs/access*.log").to_string_lossy()
        ),
    );
    let checkpoints = d.join("edge/checkpoints.json");
    poll("the edge to produce every record", Duration::from_secs(600), || {
        json(&checkpoints)["files"].as_array().is_some_and(|f| f.iter().filter_map(|f| f["offset"].as_u64()).sum::<u64>() >= size)
    });
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), edge.cpu_secs());
    drop(edge);
    println!(
        "file -> kafka (le6, lz4, acks=all, 3 partitions): {lines} records ({:.0} MB) in {wall:.2} s wall = {:.0} records/s; CPU {cpu:.2} s = {:.0} records per CPU-second (one core)",
        size as f64 / 1e6,
        lines as f64 / wall,
        lines as f64 / cpu.max(0.01)
    );

    // 2. Kafka -> hub -> channel, with the default fetch size and 1 MiB.
    fs::write(d.join("token"), "bench-token-0123456789abcdef\n").unwrap();
    for (name, extra) in [("hub", ""), ("hub-1mib", "fetch_max_bytes = 1048576\n")] {
        let t0 = Instant::now();
        let hub = bridge(
            d,
            name,
            &format!(
                "[[source]]\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{port}\"]\ntopics = [\"calls\"]\ngroup_id = \"hub\"\n{extra}[channel]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
                d.join("token").to_string_lossy()
            ),
        );
        let addr_file = d.join(name).join("channel.addr");
        poll("the hub's channel", Duration::from_secs(20), || addr_file.exists());
        let addr = fs::read_to_string(&addr_file).unwrap();
        let _client = Proc(
            Command::new(bin())
                .args(["tail", &format!("ws://{}/stream", addr.trim()), "--token-file"])
                .arg(d.join("token"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tail"),
        );
        let offsets = d.join(name).join("kafka-offsets-hub.json");
        poll("the hub to read every record", Duration::from_secs(600), || {
            json(&offsets)["positions"].as_array().is_some_and(|p| p.iter().filter_map(|p| p["next"].as_u64()).sum::<u64>() >= lines as u64)
        });
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), hub.cpu_secs());
        let status = fs::read_to_string(format!("/proc/{}/status", hub.0.id())).unwrap_or_default();
        let hwm_kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        println!(
            "kafka -> hub -> channel ({}): {lines} records in {wall:.2} s wall = {:.0} records/s; CPU {cpu:.2} s = {:.0} records per CPU-second (one core); peak RSS {:.0} MiB",
            if extra.is_empty() { "fetch_max_bytes 256 KiB, the default" } else { "fetch_max_bytes 1 MiB" },
            lines as f64 / wall,
            lines as f64 / cpu.max(0.01),
            hwm_kb as f64 / 1024.0
        );
    }
}
