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
use crate::support_kafka::{consume_with_kafka_python, Broker, Options};
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
        let dir = tempfile::tempdir().expect("tempdir");
        let (state, out, logs) = (dir.path().join("state"), dir.path().join("out/out.ndjson"), dir.path().join("logs"));
        fs::create_dir_all(&logs).unwrap();
        let body = body.replace("{logs}", &logs.to_string_lossy()).replace("{dir}", &dir.path().to_string_lossy());
        fs::write(dir.path().join("token"), format!("{CHANNEL_TOKEN}\n")).unwrap();
        let text = format!(
            "state_dir = {state:?}\nlog_level = \"debug\"\n{body}\n[file_output]\npath = {out:?}\nfsync_interval_ms = 20\n\n[status]\nlisten = \"127.0.0.1:0\"\n",
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
