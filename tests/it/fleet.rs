//! Fleets end to end, against the real binary and a real Kafka-protocol
//! broker (tansu, `support_kafka`): edge bridges read their files into a
//! topic (`[kafka]`), a hub bridge reads the topic (`[[source]] kind =
//! "kafka"`) into its own archive, channel and `/status`. Skipped with a
//! SKIPPED line when tansu is not installed (failing under
//! CALLLOG_REQUIRE_TOOLS=1).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support_kafka::{consume_with_kafka_python, produce_values, produce_values_with, Broker, Options};
use crate::tail_harness::{lines, uuids};

/// How long a test waits for records before failing.
const DEADLINE: Duration = Duration::from_secs(40);

/// The hub channel's token.
const CHANNEL_TOKEN: &str = "fleet-channel-token-7c1e";

/// The topic of every test.
const TOPIC: &str = "calls";

/// One bridge of a fleet over a scratch directory: `logs/`, `state/`,
/// `out/out.ndjson` (its archive), its config, its stderr.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    out: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// A bridge whose config is `body` (after `state_dir`, with `{logs}`
    /// and `{out}` replaced), with an archive and a status listener.
    fn new(body: &str) -> Node {
        Node::with_log_level("debug", body)
    }

    /// [`Node::new`] logging at `log_level`.
    fn with_log_level(log_level: &str, body: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let (state, out, logs) = (dir.path().join("state"), dir.path().join("out/out.ndjson"), dir.path().join("logs"));
        fs::create_dir_all(&logs).unwrap();
        let body = body.replace("{logs}", &logs.to_string_lossy()).replace("{dir}", &dir.path().to_string_lossy());
        fs::write(dir.path().join("token"), format!("{CHANNEL_TOKEN}\n")).unwrap();
        let text = format!(
            "state_dir = {state:?}\nlog_level = {log_level:?}\n{body}\n[file_output]\npath = {out:?}\nfsync_interval_ms = 20\n\n[status]\nlisten = \"127.0.0.1:0\"\n",
            state = state.to_string_lossy(),
            out = out.to_string_lossy(),
        );
        let config = dir.path().join("bridge.toml");
        fs::write(&config, text).unwrap();
        let log = dir.path().join("bridge.log");
        Node { dir, config, state, out, log, child: None }
    }

    /// An edge bridge named `host` producing to `broker`.
    fn edge(broker: &str, host: &str) -> Node {
        Node::edge_with(broker, host, "")
    }

    /// An edge bridge with `extra` keys in its `[kafka]` section.
    fn edge_with(broker: &str, host: &str, extra: &str) -> Node {
        Node::new(&format!(
            "host = \"{host}\"\n\n[[source]]\npaths = [\"{{logs}}/access*.log\"]\nformat = \"le-json\"\npoll_interval_ms = 50\nrescan_interval_ms = 500\n\n\
             [kafka]\nbrokers = [\"{broker}\"]\ntopic = \"{TOPIC}\"\ncompression = \"gzip\"\nlinger_ms = 10\nretry_initial_ms = 50\nretry_max_ms = 500\nrequest_timeout_ms = 3000\nshutdown_grace_ms = 2000\n{extra}"
        ))
    }

    /// A hub bridge reading the topic from `broker`.
    fn hub(broker: &str) -> Node {
        Node::new(&format!(
            "[[source]]\nkind = \"kafka\"\nname = \"fleet\"\nbrokers = [\"{broker}\"]\ntopics = [\"{TOPIC}\"]\ngroup_id = \"hub\"\n\
             fetch_max_wait_ms = 100\nmetadata_refresh_ms = 500\nretry_initial_ms = 50\nretry_max_ms = 500\nrequest_timeout_ms = 3000\n\n\
             [channel]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{{dir}}/token\"\n"
        ))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let running = |s: &str| s.matches("bridge running").count();
        let before = running(&self.log_text());
        self.child = Some(support::spawn_bridge(&self.config, &self.log));
        support::poll_until(DEADLINE, "bridge to start", || (running(&self.log_text()) > before).then_some(()));
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = support::terminate(&mut child, DEADLINE);
        assert!(status.success(), "bridge exited with {status}; log:\n{}", tail(&self.log_text()));
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Appends lines to `logs/access.log`.
    fn append(&self, ids: &[String]) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("logs/access.log")).unwrap();
        f.write_all(lines(ids).as_bytes()).unwrap();
    }

    /// Every complete archived record, as JSON.
    fn archived(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().filter(|l| l.ends_with('}')).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Archived records by uuid, with how often each came out.
    fn counts(&self) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for v in self.archived() {
            if let Some(u) = v["request_uuid"].as_str() {
                *c.entry(u.to_string()).or_insert(0) += 1;
            }
        }
        c
    }

    /// Waits until every uuid of `ids` is archived.
    fn wait_for(&self, ids: &[String], others: &[&Node]) -> HashMap<String, usize> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.counts();
            let missing: Vec<&String> = ids.iter().filter(|u| !got.contains_key(*u)).collect();
            if missing.is_empty() {
                return got;
            }
            if Instant::now() > deadline {
                let logs: String = others.iter().map(|n| format!("--- other bridge:\n{}\n", tail(&n.log_text()))).collect();
                panic!(
                    "{} of {} records never reached the hub (first {:?}); hub log:\n{}\n{logs}",
                    missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(3)],
                    tail(&self.log_text())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` of the status listener.
    fn status_addr(&self) -> String {
        support::poll_until(DEADLINE, "status.addr", || fs::read_to_string(self.state.join("status.addr")).ok()).trim().to_string()
    }

    fn get(&self, path: &str) -> String {
        crate::safety::http_get(&self.status_addr(), path).1
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(s: &str) -> String {
    // The client's own lines (connections, leaders) drown the bridge's.
    let lines: Vec<&str> = s.lines().filter(|l| !l.contains(" rskafka::")).collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A broker with the topic (3 partitions), or `None` when tansu is missing.
fn broker(test: &str) -> Option<Broker> {
    // In memory: tansu's SQLite storage hangs when produce and fetch
    // meet under load (see `Options::memory`).
    let b = Broker::start_with(test, Options { memory: true, ..Options::default() })?;
    b.create_topic(TOPIC, 3);
    Some(b)
}

/// The record as the edge archived it, keyed by uuid.
fn by_uuid(records: Vec<Value>) -> BTreeMap<String, Value> {
    records.into_iter().filter_map(|v| Some((v["request_uuid"].as_str()?.to_string(), v))).collect()
}

#[test]
fn two_edges_through_kafka_reach_the_hub_as_they_produced_them() {
    let test = "fleet::two_edges_through_kafka_reach_the_hub_as_they_produced_them";
    let Some(broker) = broker(test) else { return };
    let mut a = Node::edge(&broker.addr(), "edge-a");
    let mut b = Node::edge(&broker.addr(), "edge-b");
    let mut hub = Node::hub(&broker.addr());
    hub.start();
    a.start();
    b.start();
    let (ids_a, ids_b) = (uuids("a", 400), uuids("b", 300));
    a.append(&ids_a);
    b.append(&ids_b);
    let all: Vec<String> = ids_a.iter().chain(&ids_b).cloned().collect();
    let got = hub.wait_for(&all, &[&a, &b]);
    let dups: usize = got.values().map(|n| n - 1).sum();
    assert_eq!(dups, 0, "no failure happened: every record comes out once");

    // Each record at the hub is the edge's, field for field (sync delay
    // and the edge's top-level `host` included: the edge stamps it on
    // every record it reads, its own archive too, and the hub keeps it).
    let at_hub = by_uuid(hub.archived());
    for (edge, host, ids) in [(&a, "edge-a", &ids_a), (&b, "edge-b", &ids_b)] {
        edge.wait_for(ids, &[]);
        let at_edge = by_uuid(edge.archived());
        for u in ids.iter() {
            let h = &at_hub[u];
            assert_eq!(at_edge[u]["host"], host, "{u}: the edge's own archive carries its host");
            assert_eq!(h["host"], host, "{u}");
            assert_eq!(*h, at_edge[u], "{u}: the hub's record differs from the edge's");
            assert!(h["sync_delay_ms"].as_i64().is_some_and(|d| d > 0), "{u}: the edge's sync delay is carried");
        }
    }

    // Per host in the hub's /status (sync delay and broker hop) and
    // /metrics; the sink's and the source's figures.
    let status: Value = serde_json::from_str(&hub.get("/status")).unwrap();
    for host in ["edge-a", "edge-b"] {
        let files = status["files"].as_array().expect("files");
        let f = files.iter().find(|f| f["path"] == format!("kafka:{host}")).unwrap_or_else(|| panic!("no entry for {host}: {status:#}"));
        assert!(f["sync_delay_ms"].is_object() || f["sync_delay_ms"].is_number(), "{host}: {f:#}");
    }
    assert_eq!(status["kafka_source"]["records_read"], 700, "{:#}", status["kafka_source"]);
    let edge_status: Value = serde_json::from_str(&a.get("/status")).unwrap();
    assert_eq!(edge_status["kafka"]["messages_produced"], 400, "{:#}", edge_status["kafka"]);
    let metrics = a.get("/metrics");
    assert!(metrics.contains("calllog_bridge_kafka_messages_produced_total 400"), "{metrics}");

    // `lag` shows the hosts too.
    let lag = support::run_for(support::cmd().args(["lag", "--config"]).arg(&hub.config), DEADLINE).expect("lag ends");
    let lag_text = String::from_utf8_lossy(&lag.stdout);
    assert!(lag.status.success() && lag_text.contains("kafka:edge-a") && lag_text.contains("kafka:edge-b"), "lag: {lag_text}");

    // An unchanged channel client (`tail`) gets every record of the fleet
    // from the hub's channel.
    let addr = support::poll_until(DEADLINE, "channel.addr", || fs::read_to_string(hub.state.join("channel.addr")).ok());
    // (`timeout` bounds it: run_for does not read a large stdout while it waits.)
    let out = std::process::Command::new("timeout")
        .arg(DEADLINE.as_secs().to_string())
        .arg(support::bin())
        .args(["tail", &format!("ws://{}/stream", addr.trim()), "--no-reconnect", "--since", "0", "--count", "700", "--token-file"])
        .arg(hub.dir.path().join("token"))
        .output()
        .expect("tail");
    assert!(out.status.success(), "tail: {}", String::from_utf8_lossy(&out.stderr));
    let streamed: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["request_uuid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, all.iter().cloned().collect(), "the channel streams every record of both edges");

    // An independent consumer finds every record with its key and headers.
    if let Some(msgs) = consume_with_kafka_python(test, &broker.addr(), TOPIC, 700, Duration::from_secs(5)) {
        assert_eq!(msgs.len(), 700);
        for m in &msgs {
            let v: Value = serde_json::from_str(&m.value).unwrap();
            assert_eq!(m.key.as_deref(), v["request_uuid"].as_str(), "key = request_uuid");
            assert_eq!(m.headers.get("host").map(String::as_str), v["host"].as_str());
            assert_eq!(m.headers.get("sync_delay_ms").and_then(|d| d.parse::<i64>().ok()), v["sync_delay_ms"].as_i64());
        }
    }
    hub.stop();
    a.stop();
    b.stop();
}

/// Two edges and a hub on a fresh broker, each started.
fn fleet(broker: &Broker) -> (Node, Node, Node) {
    let (mut a, mut b, mut hub) = (Node::edge(&broker.addr(), "edge-a"), Node::edge(&broker.addr(), "edge-b"), Node::hub(&broker.addr()));
    hub.start();
    a.start();
    b.start();
    (a, b, hub)
}

/// Writes `n` records to each edge (uuids `a<round>-*`, `b<round>-*`),
/// adding them to `all`.
fn write(a: &Node, b: &Node, round: &str, n: usize, all: &mut Vec<String>) {
    let (x, y) = (uuids(&format!("a{round}"), n), uuids(&format!("b{round}"), n));
    a.append(&x);
    b.append(&y);
    all.extend(x);
    all.extend(y);
}

#[test]
fn a_broker_outage_of_10_s_while_both_edges_write_loses_nothing() {
    let test = "fleet::a_broker_outage_of_10_s_while_both_edges_write_loses_nothing";
    let Some(broker) = broker(test) else { return };
    let (mut a, mut b, mut hub) = fleet(&broker);
    let mut all = Vec::new();
    write(&a, &b, "0", 200, &mut all);
    hub.wait_for(&all, &[&a, &b]);
    // The broker answers nothing for 10 s (frozen: its in-memory storage
    // stays) while both edges write: produce and fetch requests time out
    // and are retried.
    broker.pause();
    let down = Instant::now();
    write(&a, &b, "1", 300, &mut all);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    broker.resume();
    let got = hub.wait_for(&all, &[&a, &b]);
    let max = got.values().copied().max().unwrap_or(0);
    // A produce whose answer the outage swallowed is sent again, once:
    // the sink drops a connection that did not answer, so its retries
    // wait for a new connection's handshake instead of queueing behind
    // the first request in the frozen broker.
    assert!(max <= 2, "a record came out {max} times");
    eprintln!("fleet: {} records, {} duplicates after a 10 s broker outage", all.len(), got.values().map(|n| n - 1).sum::<usize>());
    hub.stop();
    a.stop();
    b.stop();
}

#[test]
fn kill_9_of_the_hub_and_of_an_edge_mid_stream_loses_nothing() {
    let test = "fleet::kill_9_of_the_hub_and_of_an_edge_mid_stream_loses_nothing";
    let Some(broker) = broker(test) else { return };
    let (mut a, mut b, mut hub) = fleet(&broker);
    let mut all = Vec::new();
    write(&a, &b, "0", 2000, &mut all);
    hub.wait_for(&all[..10], &[&a, &b]);
    // The hub dies with batches read but not acknowledged, positions not
    // written: they are read again after the restart.
    hub.kill9();
    hub.start();
    write(&a, &b, "1", 1000, &mut all);
    // An edge dies with records read from its file but not produced (or
    // produced but not checkpointed): read and produced again.
    std::thread::sleep(Duration::from_millis(100));
    a.kill9();
    a.start();
    write(&a, &b, "2", 300, &mut all);
    let got = hub.wait_for(&all, &[&a, &b]);
    let max = got.values().copied().max().unwrap_or(0);
    // At most once more per kill: the hub's and the edge's.
    assert!(max <= 3, "a record came out {max} times");
    eprintln!(
        "fleet: {} records, {} duplicates after kill -9 of the hub and of an edge",
        all.len(),
        got.values().map(|n| n - 1).sum::<usize>()
    );
    // A clean restart of the hub reads nothing again: its positions were
    // written when it stopped.
    hub.stop();
    let before = hub.counts();
    hub.start();
    write(&a, &b, "3", 50, &mut all);
    let after = hub.wait_for(&all, &[&a, &b]);
    for (u, n) in &before {
        assert_eq!(after.get(u), Some(n), "{u} was read again after a clean restart of the hub");
    }
    hub.stop();
    a.stop();
    b.stop();
}

#[test]
fn kafka_config_mistakes_exit_64_naming_the_key() {
    let cases = [
        ("[kafka]\nbrokers = []\ntopic = \"calls\"\n", "kafka.brokers"),
        ("[kafka]\ntopic = \"calls\"\n", "brokers"),
        ("[kafka]\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"bad topic\"\n", "kafka.topic"),
        ("[kafka]\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\nkey_field = \"nope\"\n", "kafka.key_field"),
        ("[kafka]\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\nsasl_mechanism = \"plain\"\n", "kafka.sasl"),
        // `host` moved to the top level: the old place is refused, saying where.
        ("[kafka]\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\nhost = \"edge-a\"\n", "`kafka.host`: moved: set the top-level `host`"),
        ("[[source]]\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopics = []\ngroup_id = \"g\"\n", "source[1].topics"),
        ("[[source]]\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopics = [\"t\"]\n", "group_id"),
        ("[[source]]\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopics = [\"a b\"]\ngroup_id = \"g\"\n", "source[1].topics"),
    ];
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("logs")).unwrap();
    fs::write(dir.path().join("logs/access.log"), "").unwrap();
    for (i, (section, key)) in cases.iter().enumerate() {
        let text = format!(
            "state_dir = {:?}\n[[source]]\npaths = [{:?}]\nformat = \"le-json\"\n{section}\n[file_output]\npath = {:?}\n",
            dir.path().join("state").to_string_lossy(),
            dir.path().join("logs/access.log").to_string_lossy(),
            dir.path().join("out.ndjson").to_string_lossy()
        );
        let config = dir.path().join(format!("c{i}.toml"));
        fs::write(&config, text).unwrap();
        let out = support::run_for(support::cmd().args(["run", "--config"]).arg(&config), Duration::from_secs(20))
            .unwrap_or_else(|| panic!("case {i}: run did not exit"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "case {i} ({key}): {err}");
        assert!(err.contains(key), "case {i}: the message names {key}: {err}");
    }
}

/// Files in the edge's Kafka spool.
fn spool_files(n: &Node) -> usize {
    fs::read_dir(n.state.join("kafka-spool"))
        .map_or(0, |d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".spool")).count())
}

/// A figure of the edge's `/metrics` (0 when absent).
fn metric(n: &Node, name: &str) -> f64 {
    n.get("/metrics").lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// While the broker is frozen, writes 40 small appends of 25 records to
/// the edge (each its own pipeline batch: more than the sink's queue and
/// its one request in flight hold) and checks that the edge's archive gets
/// every one of them: the Kafka sink spools instead of stalling reading.
fn write_while_frozen(edge: &Node, round: &str, all: &mut Vec<String>) {
    let mut ids = Vec::new();
    for i in 0..40 {
        let x = uuids(&format!("s{round}-{i:02}"), 25);
        edge.append(&x);
        ids.extend(x);
        std::thread::sleep(Duration::from_millis(60));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = edge.counts();
        let missing = ids.iter().filter(|u| !got.contains_key(*u)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} records never reached the edge's archive while the broker was frozen: reading stalled behind Kafka; log:\n{}",
            ids.len(),
            tail(&edge.log_text())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    support::poll_until(Duration::from_secs(10), "records in the kafka spool", || (spool_files(edge) > 0).then_some(()));
    all.extend(ids);
}

#[test]
fn a_broker_frozen_past_spool_after_ms_spools_and_nothing_is_lost_even_with_kill_9() {
    let test = "fleet::a_broker_frozen_past_spool_after_ms_spools_and_nothing_is_lost_even_with_kill_9";
    let Some(broker) = broker(test) else { return };
    let mut hub = Node::hub(&broker.addr());
    let mut edge = Node::edge_with(&broker.addr(), "edge-s", "max_in_flight = 1\nbatch_max_records = 25\nspool_after_ms = 1000\n");
    hub.start();
    edge.start();
    let mut all = uuids("s0", 50);
    edge.append(&all);
    hub.wait_for(&all, &[&edge]);

    // Frozen longer than spool_after_ms while the edge writes: its archive
    // keeps flowing, the rest is spooled; once the broker is back the
    // spool drains into the topic.
    broker.pause();
    write_while_frozen(&edge, "1", &mut all);
    assert!(metric(&edge, "calllog_bridge_kafka_messages_spooled_total") > 0.0, "spooled messages are counted");
    assert!(metric(&edge, "calllog_bridge_kafka_spool_records") > 0.0, "the spool's size is shown");
    broker.resume();
    hub.wait_for(&all, &[&edge]);
    support::poll_until(DEADLINE, "the kafka spool to drain", || (spool_files(&edge) == 0).then_some(()));
    assert_eq!(metric(&edge, "calllog_bridge_kafka_spool_records"), 0.0);

    // kill -9 with records only in the spool (acknowledged, their source
    // offsets possibly checkpointed): sent after the restart.
    broker.pause();
    write_while_frozen(&edge, "2", &mut all);
    edge.kill9();
    broker.resume();
    edge.start();
    let got = hub.wait_for(&all, &[&edge]);
    support::poll_until(DEADLINE, "the kafka spool to drain after the restart", || (spool_files(&edge) == 0).then_some(()));
    let max = got.values().copied().max().unwrap_or(0);
    // Once more at most: a request the freeze swallowed the answer of is
    // spooled and sent again, or a batch acknowledged but not yet
    // checkpointed at the kill is read again.
    assert!(max <= 2, "a record came out {max} times");
    eprintln!("fleet: {} records through the kafka spool, {} duplicates", all.len(), got.values().map(|n| n - 1).sum::<usize>());

    // SIGTERM with records the frozen broker never acknowledged (before
    // spool_after_ms): after the grace period they go to the spool, the
    // bridge exits, and the restart sends them.
    broker.pause();
    let late = uuids("s3", 25);
    edge.append(&late);
    support::poll_until(DEADLINE, "the edge to archive the last records", || {
        let got = edge.counts();
        late.iter().all(|u| got.contains_key(u)).then_some(())
    });
    all.extend(late);
    edge.stop();
    assert!(spool_files(&edge) > 0, "SIGTERM while the brokers fail spools what is held; log:\n{}", tail(&edge.log_text()));
    broker.resume();
    edge.start();
    hub.wait_for(&all, &[&edge]);
    support::poll_until(DEADLINE, "the kafka spool to drain after SIGTERM", || (spool_files(&edge) == 0).then_some(()));
    hub.stop();
    edge.stop();
}

/// Issue 13's rule for the Kafka sink: a file deleted while the brokers do
/// not answer, its records read (and archived) but held by the Kafka sink,
/// long before `spool_after_ms`: those records go to the spool at once, so
/// a `kill -9` right after loses none of them.
#[test]
fn a_file_deleted_while_the_broker_is_frozen_is_spooled_at_once_and_survives_kill_9() {
    let test = "fleet::a_file_deleted_while_the_broker_is_frozen_is_spooled_at_once_and_survives_kill_9";
    let Some(broker) = broker(test) else { return };
    let mut hub = Node::hub(&broker.addr());
    // Only the deleted file can make this edge spool.
    let mut edge = Node::edge_with(&broker.addr(), "edge-d", "spool_after_ms = 600000\n");
    hub.start();
    edge.start();
    let mut all = uuids("d0", 20);
    edge.append(&all);
    hub.wait_for(&all, &[&edge]);

    broker.pause();
    let gone = uuids("d1", 200);
    edge.append(&gone);
    support::poll_until(DEADLINE, "the edge to archive the records", || {
        let got = edge.counts();
        gone.iter().all(|u| got.contains_key(u)).then_some(())
    });
    assert_eq!(spool_files(&edge), 0, "nothing spooled before the file went away");
    // Local Edition rotates the file away and deletes it.
    fs::remove_file(edge.dir.path().join("logs/access.log")).unwrap();
    support::poll_until(DEADLINE, "the deleted file's records in the kafka spool", || {
        (metric(&edge, "calllog_bridge_kafka_spool_records") >= gone.len() as f64).then_some(())
    });
    edge.kill9();
    broker.resume();
    all.extend(gone);
    edge.start();
    hub.wait_for(&all, &[&edge]);
    support::poll_until(DEADLINE, "the kafka spool to drain after the restart", || (spool_files(&edge) == 0).then_some(()));
    hub.stop();
    edge.stop();
}

/// A figure of a bridge's `/status` section (`None` while absent).
fn figure(n: &Node, section: &str, name: &str) -> Option<i64> {
    let status: Value = serde_json::from_str(&n.get("/status")).ok()?;
    status[section][name].as_i64()
}

/// Issue 22: the broker loses its log (tansu's memory storage, restarted)
/// and the topic is created again, so new messages are numbered from 0,
/// below the hub's positions. The hub used to skip every new message until
/// the offsets passed its old positions (310 of 600 lost, nothing said).
/// Now it finds the reset, says so (log, `/status`, `lag`), and reads the
/// new log from the beginning: every record written after the reset
/// arrives. Then the topic is deleted and created again while the broker
/// runs: the same.
#[test]
fn a_topic_reset_loses_nothing_written_after_it_and_is_reported() {
    let test = "fleet::a_topic_reset_loses_nothing_written_after_it_and_is_reported";
    let Some(mut broker) = broker(test) else { return };
    let mut hub = Node::hub(&broker.addr());
    let mut edge = Node::edge(&broker.addr(), "edge-r");
    hub.start();
    edge.start();
    let before = uuids("r0", 300);
    edge.append(&before);
    hub.wait_for(&before, &[&edge]);

    broker.stop();
    broker.start_again();
    broker.create_topic(TOPIC, 3);
    let after = uuids("r1", 300);
    edge.append(&after);
    hub.wait_for(&after, &[&edge]);
    let resets =
        support::poll_until(DEADLINE, "the reset in /status", || figure(&hub, "kafka_source", "partition_resets").filter(|n| *n > 0));
    assert!(resets <= 3, "one reset per partition at most: {resets}");
    assert!(hub.log_text().contains("TOPIC RESET"), "the reset is logged loudly:\n{}", tail(&hub.log_text()));
    let lag = support::run_for(support::cmd().args(["lag", "--config"]).arg(&hub.config), DEADLINE).expect("lag ends");
    let lag_text = String::from_utf8_lossy(&lag.stdout);
    assert!(lag.status.success() && lag_text.contains("TOPIC RESET"), "lag shows the reset: {lag_text}");

    // Deleted and created again while everything runs.
    if broker.delete_topic(TOPIC) {
        broker.create_topic(TOPIC, 3);
        let again = uuids("r2", 300);
        edge.append(&again);
        hub.wait_for(&again, &[&edge]);
        support::poll_until(DEADLINE, "a second reset in /status", || {
            figure(&hub, "kafka_source", "partition_resets").filter(|n| *n > resets)
        });
    }
    let got = hub.counts();
    assert!(got.values().all(|n| *n == 1), "a reset reads nothing twice: {:?}", got.iter().find(|(_, n)| **n > 1));
    hub.stop();
    edge.stop();
}

/// Issue 22: one producer naming a random host per record (30,000 of them)
/// took the hub to 1.4 GB and a 28 MB `/status`. Now the hub tracks at
/// most `max_hosts` (256) hosts, counts the rest under one entry, cuts
/// hosts over 255 bytes, and stays under 64 MiB with a bounded `/status`;
/// every record is still delivered.
#[test]
fn thirty_thousand_random_hosts_keep_the_hub_under_64_mib() {
    let test = "fleet::thirty_thousand_random_hosts_keep_the_hub_under_64_mib";
    let Some(broker) = broker(test) else { return };
    let mut hub = Node::hub(&broker.addr());
    hub.start();
    let n = 30_000;
    let long = "L".repeat(70_000);
    let values: Vec<String> = (0..n)
        .map(|i| {
            let host = if i % 10_000 == 0 { format!("{long}-{i}") } else { format!("edge-{i:05}-{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) };
            format!(
                "{{\"request_time\":\"2026-01-01T00:00:00Z\",\"request_uuid\":\"h-{i:05}\",\"bytes\":100,\"ingestion_time\":\"2026-01-01T00:00:01Z\",\"sync_delay_ms\":1000,\"host\":\"{host}\"}}"
            )
        })
        .collect();
    produce_values(&broker.addr(), TOPIC, 3, &values);
    support::poll_until(Duration::from_secs(120), "the hub to read every record", || {
        (figure(&hub, "kafka_source", "records_read") == Some(n as i64)).then_some(())
    });
    let ids: Vec<String> = (0..n).map(|i| format!("h-{i:05}")).collect();
    hub.wait_for(&ids, &[]);
    let pid = hub.child.as_ref().expect("running").id();
    let peak = support::peak_memory_bytes(pid);
    let status = hub.get("/status");
    let v: Value = serde_json::from_str(&status).unwrap();
    let k = &v["kafka_source"];
    eprintln!(
        "fleet: {n} hosts: hub peak {:.1} MiB (VmHWM - RssFile), /status {} KiB, {} hosts tracked, {} records from untracked hosts, {} hosts cut",
        peak as f64 / (1 << 20) as f64,
        status.len() / 1024,
        k["hosts_tracked"],
        k["records_from_untracked_hosts"],
        k["hosts_cut"]
    );
    assert!(peak < 64 << 20, "the hub grew to {} MiB", peak >> 20);
    assert!(status.len() < 1 << 20, "/status is {} KiB", status.len() / 1024);
    assert_eq!(k["hosts_tracked"], 256, "{k:#}");
    // 29,998 distinct hosts (the three long ones are one once cut): the
    // records of all but 256 of them are counted apart (the long host's
    // three among them or not, as the partitions are read).
    let untracked = k["records_from_untracked_hosts"].as_i64().unwrap_or(0);
    assert!((n as i64 - 258..=n as i64 - 256).contains(&untracked), "{k:#}");
    assert_eq!(k["hosts_cut"], 3, "{k:#}");
    let files = v["files"].as_array().expect("files");
    assert!(files.iter().any(|f| f["path"] == "kafka:(other hosts)"), "the untracked hosts' entry");
    assert!(files.iter().all(|f| f["path"].as_str().is_some_and(|p| p.len() <= 6 + 255)), "hosts are cut to 255 bytes");
    // Cut at the hub, in what it delivers too.
    let archived = hub.archived();
    let cut = archived.iter().find(|r| r["request_uuid"] == "h-00000").expect("the long host's record");
    assert_eq!(cut["host"].as_str().map(str::len), Some(255));
    assert!(hub.log_text().contains("more source hosts than max_hosts"), "said in the log");
    // (`timeout` bounds it: run_for does not read a large stdout while it waits.)
    let lag = std::process::Command::new("timeout")
        .arg(DEADLINE.as_secs().to_string())
        .arg(support::bin())
        .args(["lag", "--config"])
        .arg(&hub.config)
        .output()
        .expect("lag");
    let lag_text = String::from_utf8_lossy(&lag.stdout);
    assert!(lag.status.success(), "lag: {}", String::from_utf8_lossy(&lag.stderr));
    assert!(lag_text.contains("kafka:(other hosts)") && lag_text.contains("more hosts than max_hosts"), "{lag_text}");
    hub.stop();
}

/// Issue 25: a hub catching up a backlog (full edge records, lz4, three
/// partitions) peaked at 145-173 MiB: its readers fetched and decoded
/// without waiting for the memory budget. Now they wait for room before a
/// fetch and decode a fetch in budgeted batches: the hub (archive and
/// channel) stays under 64 MiB with the default `memory_max_bytes`.
#[test]
fn a_backlog_of_full_records_keeps_the_hub_under_64_mib() {
    use calllog_bridge::parse::Format;
    use calllog_bridge::record::Shape;
    let test = "fleet::a_backlog_of_full_records_keeps_the_hub_under_64_mib";
    let Some(broker) = broker(test) else { return };
    let n = 60_000;
    let mut gen = calllog_bridge::sim::Generator::new(25);
    let now = calllog_bridge::time::now_ms();
    let values: Vec<String> = (0..n)
        .map(|i| {
            let mut rec = gen.next_call(now - 60_000 + i as i64 / 10, 1000).expected(Format::Le6);
            rec.stamp_observed(now);
            rec.host = std::borrow::Cow::Borrowed("edge-backlog");
            let mut v = Vec::new();
            rec.write_json(Shape::Ndjson, &mut v);
            String::from_utf8(v).expect("utf-8")
        })
        .collect();
    let bytes: usize = values.iter().map(String::len).sum();
    produce_values_with(&broker.addr(), TOPIC, 3, &values, rskafka::client::partition::Compression::Lz4);
    let mut hub = Node::hub(&broker.addr());
    hub.start();
    support::poll_until(Duration::from_secs(180), "the hub to read the backlog", || {
        (figure(&hub, "kafka_source", "records_read") == Some(n as i64)).then_some(())
    });
    support::poll_until(DEADLINE, "every record archived", || (hub.archived().len() >= n).then_some(()));
    let pid = hub.child.as_ref().expect("running").id();
    let peak = support::peak_memory_bytes(pid);
    eprintln!(
        "fleet: a backlog of {n} records ({} MB of values): hub peak {:.1} MiB (VmHWM - RssFile)",
        bytes / 1_000_000,
        peak as f64 / (1 << 20) as f64
    );
    assert!(peak < 64 << 20, "the hub grew to {} MiB", peak >> 20);
    hub.stop();
}

/// Issue 23: while the topic was missing, the Kafka client logged 35
/// "Establishing new connection" INFO lines a second into the journal.
/// Other crates now log at WARN unless asked, and when asked
/// (`info,rskafka=info`) their repeated lines are rate limited.
#[test]
fn dependency_log_lines_stay_at_warn_and_repeated_ones_are_limited() {
    let test = "fleet::dependency_log_lines_stay_at_warn_and_repeated_ones_are_limited";
    // No topic: the edge's produce requests fail and are retried.
    let Some(broker) = Broker::start_with(test, Options { memory: true, ..Options::default() }) else { return };
    let edge_config = |level: &str| {
        Node::with_log_level(
            level,
            &format!(
                "host = \"edge-l\"\n\n[[source]]\npaths = [\"{{logs}}/access*.log\"]\nformat = \"le-json\"\npoll_interval_ms = 50\n\n\
                 [kafka]\nbrokers = [\"{}\"]\ntopic = \"{TOPIC}\"\nretry_initial_ms = 10\nretry_max_ms = 50\nrequest_timeout_ms = 1000\nshutdown_grace_ms = 500\n",
                broker.addr()
            ),
        )
    };
    let connections = |n: &Node| n.log_text().lines().filter(|l| l.contains("Establishing new connection")).count();
    for (level, asked) in [("info", false), ("info,rskafka=info", true)] {
        let mut edge = edge_config(level);
        edge.append(&uuids("l", 20));
        edge.start();
        std::thread::sleep(Duration::from_secs(4));
        edge.stop();
        let log = edge.log_text();
        let rskafka_lines = log.lines().filter(|l| l.contains("rskafka")).count();
        eprintln!("fleet: log_level {level:?}: {rskafka_lines} rskafka lines in 4 s, {} 'Establishing new connection'", connections(&edge));
        if asked {
            let n = connections(&edge);
            assert!((1..=10).contains(&n), "asked for, the client's line comes, at most 10 per 10 s: {n}\n{}", tail(&log));
        } else {
            let info = log.lines().filter(|l| l.contains("rskafka") && l.contains("INFO")).count();
            assert_eq!(info, 0, "the client's INFO lines stay out by default ({rskafka_lines} rskafka lines):\n{log}");
        }
        assert!(rskafka_lines <= 40, "{rskafka_lines} rskafka lines in 4 s");
        assert!(log.contains("topic"), "the bridge itself says what is wrong:\n{}", tail(&log));
    }
}

/// A step of the README's fleet trial.
#[derive(Debug)]
enum TrialStep {
    /// A config file to write: name and text.
    File(String, String),
    /// Shell commands, one per entry (continuation lines joined).
    Commands(Vec<String>),
}

/// The steps the README marks with `<!-- fleet-trial -->` (commands) and
/// `<!-- fleet-trial: FILE -->` (a file's text), in order.
fn readme_trial() -> Vec<TrialStep> {
    let readme = fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let mut steps = Vec::new();
    let mut rest = readme.as_str();
    while let Some(at) = rest.find("<!-- fleet-trial") {
        rest = &rest[at + "<!-- fleet-trial".len()..];
        let (marker, after) = rest.split_once("-->").expect("a closed marker");
        let file = marker.trim().strip_prefix(':').map(|f| f.trim().to_string());
        let fence = after.trim_start();
        assert!(fence.starts_with("```"), "a fleet-trial marker is followed by a code block: {:?}", &fence[..fence.len().min(80)]);
        let body_start = fence.find('\n').expect("a code block") + 1;
        let body_len = fence[body_start..].find("\n```").expect("a closed code block") + 1;
        let body = &fence[body_start..body_start + body_len];
        rest = &fence[body_start + body_len..];
        steps.push(match file {
            Some(f) => TrialStep::File(f, body.to_string()),
            None => {
                let mut commands = Vec::new();
                let mut cur = String::new();
                for line in body.lines() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    match line.strip_suffix('\\') {
                        Some(l) => cur.push_str(l),
                        None => {
                            cur.push_str(line);
                            commands.push(std::mem::take(&mut cur));
                        }
                    }
                }
                TrialStep::Commands(commands)
            }
        });
    }
    steps
}

/// Every `127.0.0.1:PORT` of `text` with the port mapped to a free one
/// (the same one for the same port).
fn map_ports(text: &str, ports: &mut BTreeMap<String, u16>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("127.0.0.1:") {
        let (head, tail) = rest.split_at(at + "127.0.0.1:".len());
        out.push_str(head);
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            let port = *ports.entry(digits.clone()).or_insert_with(crate::support_tools::free_port);
            out.push_str(&port.to_string());
        }
        rest = &tail[digits.len()..];
    }
    out.push_str(rest);
    out
}

/// Processes a trial left running; killed when dropped.
struct Running(Vec<(String, Child)>);

impl Drop for Running {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Issue 23: the README's fleet section takes a new user from nothing to
/// edge → Kafka → hub. Its marked trial runs here exactly as written (each
/// loopback port mapped to a free one, `calllog-bridge` and `tansu` on
/// PATH, in an empty directory), through tansu: each command must succeed
/// (retried while the processes started before it come up), `lag` must
/// list the edge's host and the channel must stream its records. A README
/// that drifts (a key renamed, a step missing) fails here.
#[test]
fn the_readme_fleet_trial_runs_as_written() {
    let test = "fleet::the_readme_fleet_trial_runs_as_written";
    let Some(tansu) = crate::support_tools::tool(crate::support_tools::Tool::Tansu, test) else { return };
    let steps = readme_trial();
    assert!(steps.len() >= 5, "the README's fleet trial: {steps:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::join_paths(
        [support::bin().parent().unwrap().to_path_buf(), tansu.parent().unwrap().to_path_buf()]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut ports = BTreeMap::new();
    let mut running = Running(Vec::new());
    let mut outputs: Vec<(String, String)> = Vec::new();
    let sh = |command: &str| {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(command).current_dir(dir.path()).env("PATH", &path).env_remove("RUST_LOG").stdin(std::process::Stdio::null());
        c
    };
    for step in steps {
        match step {
            TrialStep::File(name, text) => fs::write(dir.path().join(&name), map_ports(&text, &mut ports)).unwrap(),
            TrialStep::Commands(commands) => {
                for command in commands {
                    let command = map_ports(&command, &mut ports);
                    if let Some(bg) = command.strip_suffix('&') {
                        let log = fs::File::create(dir.path().join(format!("background-{}.log", running.0.len()))).unwrap();
                        let child = sh(&format!("exec {}", bg.trim()))
                            .stdout(log.try_clone().unwrap())
                            .stderr(log)
                            .spawn()
                            .unwrap_or_else(|e| panic!("{command}: {e}"));
                        running.0.push((command.clone(), child));
                        continue;
                    }
                    // What the README says this command shows.
                    let expect = if command.starts_with("calllog-bridge lag") {
                        Some("kafka:tm-trial-01")
                    } else if command.starts_with("calllog-bridge subscribe") {
                        Some("\"host\":\"tm-trial-01\"")
                    } else {
                        None
                    };
                    let deadline = Instant::now() + DEADLINE;
                    let stdout = loop {
                        let out = sh(&command).output().expect("sh");
                        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                        if out.status.success() && expect.is_none_or(|e| stdout.contains(e)) {
                            break stdout;
                        }
                        let logs: String = (0..running.0.len())
                            .map(|i| {
                                format!(
                                    "--- {}:\n{}\n",
                                    running.0[i].0,
                                    tail(&fs::read_to_string(dir.path().join(format!("background-{i}.log"))).unwrap_or_default())
                                )
                            })
                            .collect();
                        assert!(
                            Instant::now() < deadline,
                            "`{command}` did not succeed{}: exit {:?}\n{stdout}{}\n{logs}",
                            expect.map(|e| format!(" showing {e}")).unwrap_or_default(),
                            out.status.code(),
                            String::from_utf8_lossy(&out.stderr)
                        );
                        std::thread::sleep(Duration::from_millis(300));
                    };
                    outputs.push((command, stdout));
                }
            }
        }
    }
    let (_, streamed) = outputs.iter().find(|(c, _)| c.starts_with("calllog-bridge subscribe")).expect("the trial subscribes");
    let records: Vec<Value> = streamed.lines().map(|l| serde_json::from_str(l).expect("a JSON record")).collect();
    assert_eq!(records.len(), 5, "{streamed}");
    assert!(
        records.iter().all(|r| r["host"] == "tm-trial-01" && r["sync_delay_ms"].as_str().is_some_and(|d| d.parse::<i64>().is_ok())),
        "{streamed}"
    );
    // Everything it started stops cleanly: bridges first, the broker last.
    for (command, child) in running.0.iter_mut().rev() {
        let status = support::terminate(child, DEADLINE);
        if command.starts_with("calllog-bridge") {
            assert!(status.success(), "`{command}` exited with {status}");
        }
    }
}

/// Issue 24: a hub whose `[enrich]` masks applies the same rule to what it
/// reads from Kafka as a bridge does to what it reads from files: an edge
/// that does not mask sends the secrets (its archive keeps them), and no
/// record the hub archives or streams on its channel carries them in any
/// field (`api_key`, `oauth_access_token`, and the key in `uri`,
/// `request_id`, `referrer`, percent-encoded too).
#[test]
fn a_masking_hub_masks_what_it_reads_from_kafka_in_every_output() {
    use crate::enrich::{assert_masked, secret_lines, KEY};
    let test = "fleet::a_masking_hub_masks_what_it_reads_from_kafka_in_every_output";
    let Some(broker) = broker(test) else { return };
    let mut edge = Node::edge(&broker.addr(), "edge-m");
    let mut hub = Node::new(&format!(
        "[[source]]\nkind = \"kafka\"\nname = \"fleet\"\nbrokers = [\"{}\"]\ntopics = [\"{TOPIC}\"]\ngroup_id = \"hub\"\n\
         fetch_max_wait_ms = 100\nmetadata_refresh_ms = 500\nretry_initial_ms = 50\nretry_max_ms = 500\nrequest_timeout_ms = 3000\n\n\
         [enrich]\nmask_api_key_keep = 4\nmask_oauth_token_keep = 4\n\n\
         [channel]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{{dir}}/token\"\n",
        broker.addr()
    ));
    hub.start();
    edge.start();
    let lines = secret_lines(20);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().create(true).append(true).open(edge.dir.path().join("logs/access.log")).unwrap();
        f.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    }
    let ids: Vec<String> = (0..lines.len()).map(|i| format!("mask-{i:05}")).collect();
    edge.wait_for(&ids, &[]);
    assert!(edge.archived().iter().any(|r| r["api_key"] == KEY), "the edge does not mask: Kafka carries the key");
    hub.wait_for(&ids, &[&edge]);
    let archived = hub.archived();
    assert_eq!(archived.len(), lines.len());
    for r in &archived {
        assert_masked(r, 4);
    }
    let addr = support::poll_until(DEADLINE, "channel.addr", || fs::read_to_string(hub.state.join("channel.addr")).ok());
    let out = std::process::Command::new("timeout")
        .arg(DEADLINE.as_secs().to_string())
        .arg(support::bin())
        .args(["tail", &format!("ws://{}/stream", addr.trim()), "--no-reconnect", "--since", "0", "--count"])
        .arg(lines.len().to_string())
        .arg("--token-file")
        .arg(hub.dir.path().join("token"))
        .output()
        .expect("tail");
    assert!(out.status.success(), "tail: {}", String::from_utf8_lossy(&out.stderr));
    let streamed: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(streamed.len(), lines.len());
    for r in &streamed {
        assert_masked(r, 4);
    }
    hub.stop();
    edge.stop();
}
