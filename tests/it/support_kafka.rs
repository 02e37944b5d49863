//! A real Kafka-protocol broker for the tests (tansu, with SQLite storage
//! so that a stop and start keeps the messages) and an independent client
//! (kafka-python) to check what reached a topic. Found through
//! [`crate::support_tools`]; a test without them is skipped loudly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::poll_until;
use crate::support_tools::{free_port, tool, Tool};

/// A running (or stopped) tansu broker on 127.0.0.1; killed, and its
/// directory removed, when dropped (also when a test panics).
pub struct Broker {
    /// The tansu executable.
    bin: PathBuf,
    /// Working directory (the SQLite file, TLS files, the log).
    dir: tempfile::TempDir,
    /// Its port (kept across a stop and start).
    port: u16,
    /// The broker process while it runs.
    child: Option<Child>,
    /// The port it tells clients to connect to (a TLS front's).
    advertised_port: u16,
    /// `--authentication`: clients must authenticate with SASL.
    authentication: bool,
    /// Kept in memory (lost when the broker stops) rather than SQLite.
    memory: bool,
}

/// How to start a broker.
#[derive(Default)]
pub struct Options {
    /// Listen on this port (default: a free one).
    pub port: Option<u16>,
    /// Tell clients to connect to this port instead (a TLS server in
    /// front of the broker: tansu 0.6 does not serve TLS itself).
    pub advertised_port: Option<u16>,
    /// Keep the messages in memory. tansu 0.6's SQLite storage stops
    /// answering (for good, silently) when produce and fetch requests
    /// meet under load; its memory storage does not. Messages survive
    /// [`Broker::pause`], not a stop.
    pub memory: bool,
}

impl Broker {
    /// Starts a plain broker, or returns `None` (after the SKIPPED line)
    /// when tansu is not installed.
    pub fn start(test: &str) -> Option<Broker> {
        Broker::start_with(test, Options::default())
    }

    /// Starts a broker with `opts`.
    pub fn start_with(test: &str, opts: Options) -> Option<Broker> {
        let bin = tool(Tool::Tansu, test)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = opts.port.unwrap_or_else(free_port);
        let advertised_port = opts.advertised_port.unwrap_or(port);
        let mut b = Broker { bin, dir, port, child: None, advertised_port, authentication: false, memory: opts.memory };
        b.start_again();
        Some(b)
    }

    /// The broker's directory (put TLS files here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:PORT`, as a bridge's `brokers` names it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Restarts the broker requiring SASL authentication (users made
    /// with [`Broker::create_user`] before; tansu's admin tool itself
    /// cannot authenticate).
    pub fn require_authentication(&mut self) {
        self.stop();
        self.authentication = true;
        self.start_again();
    }

    /// Starts the broker (again, on the same port and storage), and waits
    /// until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker runs already");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("tansu.log")).expect("log");
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path())
            .args(["broker", "--listener-url", &self.url()])
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{}", self.advertised_port)])
            .args(["--storage-engine", if self.memory { "memory://tansu/" } else { "sqlite://tansu.db" }])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if self.authentication {
            cmd.arg("--authentication");
        }
        // The port was free a moment ago, or held by this broker's last
        // run: a few tries while the kernel lets it go.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = cmd.spawn().expect("start tansu");
            let up = poll_until(Duration::from_secs(20), "tansu to listen or exit", || {
                if child.try_wait().expect("try_wait").is_some() {
                    return Some(false);
                }
                std::net::TcpStream::connect(("127.0.0.1", self.port)).ok().map(|_| true)
            });
            if up {
                self.child = Some(child);
                return;
            }
            assert!(Instant::now() < deadline, "tansu did not start; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 5 s); the storage
    /// stays for [`Broker::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().expect("try_wait").is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Freezes the broker (SIGSTOP): it answers nothing, connections
    /// stay open, until [`Broker::resume`].
    pub fn pause(&self) {
        let c = self.child.as_ref().expect("the broker runs");
        assert!(Command::new("kill").args(["-STOP", &c.id().to_string()]).status().expect("kill").success());
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) {
        let c = self.child.as_ref().expect("the broker runs");
        assert!(Command::new("kill").args(["-CONT", &c.id().to_string()]).status().expect("kill").success());
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Runs `tansu ARGS --broker URL` until it succeeds (the broker may
    /// still be starting), at most 20 s.
    fn admin(&self, args: &[&str]) {
        let mut last = String::new();
        let ok = crate::support::poll_until(Duration::from_secs(20), "a tansu admin command", || {
            let out =
                Command::new(&self.bin).current_dir(self.dir.path()).args(args).args(["--broker", &self.url()]).output().expect("tansu");
            last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                Some(true)
            } else {
                std::thread::sleep(Duration::from_millis(200));
                None
            }
        });
        assert!(ok, "tansu {args:?}: {last}");
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.admin(&["topic", "create", name, "--partitions", &partitions.to_string()]);
    }

    /// Deletes a topic; false when this tansu cannot.
    pub fn delete_topic(&self, name: &str) -> bool {
        let out = Command::new(&self.bin)
            .current_dir(self.dir.path())
            .args(["topic", "delete", name, "--broker", &self.url()])
            .output()
            .expect("tansu");
        if !out.status.success() {
            eprintln!("tansu topic delete {name}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        out.status.success()
    }

    /// Creates a SASL SCRAM-SHA-512 user.
    pub fn create_user(&self, name: &str, password: &str) {
        self.admin(&["user", "create", name, password, "--mechanism", "scram512"]);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One message as kafka-python read it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (UTF-8), if any.
    pub key: Option<String>,
    /// Value (UTF-8).
    pub value: String,
    /// Headers (UTF-8 values).
    pub headers: std::collections::BTreeMap<String, String>,
}

/// The consumer script: every message of a topic from the beginning,
/// until `want` messages or `timeout` seconds without a new one.
const CONSUME_PY: &str = r#"
import json, sys
from kafka import KafkaConsumer
broker, topic, want, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
c = KafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest",
                  enable_auto_commit=False, group_id=None, consumer_timeout_ms=int(idle * 1000))
n = 0
for m in c:
    print(json.dumps({"partition": m.partition, "offset": m.offset,
                      "key": None if m.key is None else m.key.decode(),
                      "value": m.value.decode(),
                      "headers": {k: v.decode() for k, v in (m.headers or [])}}), flush=True)
    n += 1
    if n >= want:
        break
c.close()
"#;

/// Reads `topic` from the beginning with kafka-python (an independent
/// client) until `want` messages arrived or none came for `idle`; `None`
/// (after the SKIPPED line) when Python with kafka-python is missing.
pub fn consume_with_kafka_python(test: &str, broker: &str, topic: &str, want: usize, idle: Duration) -> Option<Vec<Consumed>> {
    let py = tool(Tool::Python, test)?;
    let out = Command::new(py)
        .args(["-c", CONSUME_PY, broker, topic, &want.to_string(), &idle.as_secs_f64().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    assert!(out.status.success(), "kafka-python failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("consumer line {l:?}: {e}")))
            .collect(),
    )
}

/// The producer script: `count` gzip messages with `acks=all`, keys
/// `k<i>`, values from stdin lines (one per message).
const PRODUCE_PY: &str = r#"
import sys
from kafka import KafkaProducer
broker, topic = sys.argv[1], sys.argv[2]
p = KafkaProducer(bootstrap_servers=broker, acks="all", compression_type="gzip")
for i, line in enumerate(sys.stdin.read().splitlines()):
    p.send(topic, key=("k%d" % i).encode(), value=line.encode(), headers=[("host", b"python")])
p.flush()
p.close()
"#;

/// Produces `values` (one message each) with kafka-python; `None` when
/// it is missing.
pub fn produce_with_kafka_python(test: &str, broker: &str, topic: &str, values: &[String]) -> Option<()> {
    use std::io::Write;
    let py = tool(Tool::Python, test)?;
    let mut child = Command::new(py)
        .args(["-c", PRODUCE_PY, broker, topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().expect("stdin").write_all(values.join("\n").as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "kafka-python failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(())
}

/// Produces `values` (one message each, no key) to `topic`, spread over
/// its `partitions` in turn, with the project's own client (fast: for
/// thousands of messages where kafka-python would take long).
pub fn produce_values(broker: &str, topic: &str, partitions: i32, values: &[String]) {
    produce_values_with(broker, topic, partitions, values, rskafka::client::partition::Compression::NoCompression);
}

/// [`produce_values`] with `compression` (lz4, as edges produce by default).
pub fn produce_values_with(
    broker: &str,
    topic: &str,
    partitions: i32,
    values: &[String],
    compression: rskafka::client::partition::Compression,
) {
    use rskafka::client::partition::UnknownTopicHandling;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let section: calllog_bridge::kafka::client::ClientSection =
            toml::from_str(&format!("brokers = [\"{broker}\"]\nrequest_timeout_ms = 10000")).expect("client section");
        let settings =
            calllog_bridge::kafka::client::ClientSettings::from_section(section, "kafka", Path::new("")).expect("client settings");
        let client = calllog_bridge::kafka::client::connect(&settings).await.expect("connect");
        let mut clients = Vec::new();
        for p in 0..partitions {
            clients.push(client.partition_client(topic, p, UnknownTopicHandling::Retry).await.expect("partition client"));
        }
        let now = rskafka::chrono::Utc::now();
        for (i, chunk) in values.chunks(500).enumerate() {
            let records = chunk
                .iter()
                .map(|v| rskafka::record::Record {
                    key: None,
                    value: Some(v.clone().into_bytes()),
                    headers: Default::default(),
                    timestamp: now,
                })
                .collect();
            clients[i % clients.len()].produce(records, compression).await.expect("produce");
        }
    });
}
