//! The Kafka protocol layer against a real broker (tansu): producing with
//! `acks = all`, keys and headers an independent client (kafka-python)
//! reads; an outage answered with a retry, not an error; TLS with SASL
//! SCRAM; reading partitions back into pipeline batches whose
//! acknowledgement advances the durable positions.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calllog_bridge::config::ReadFrom;
use calllog_bridge::delivery::{Outcome, Units};
use calllog_bridge::kafka::client::{ClientSection, ClientSettings};
use calllog_bridge::kafka::consume::{read_partition, Observer, ReaderSettings};
use calllog_bridge::kafka::message::{partition_for, Encoder, Format, KeyField};
use calllog_bridge::kafka::offsets::{Offsets, Partition};
use calllog_bridge::kafka::produce::{Compression, Producer};
use calllog_bridge::parse::Reject;
use calllog_bridge::pipeline::Fanout;
use calllog_bridge::record::{Field, Record, Shape};
use tokio_util::sync::CancellationToken;

use crate::support_kafka::{consume_with_kafka_python, produce_with_kafka_python, Broker, Options};

fn settings(text: &str, base: &Path) -> ClientSettings {
    let s: ClientSection = toml::from_str(text).expect("client section");
    ClientSettings::from_section(s, "kafka", base).expect("client settings")
}

fn plain(broker: &Broker) -> ClientSettings {
    settings(&format!("brokers = [\"{}\"]\nrequest_timeout_ms = 3000", broker.addr()), Path::new(""))
}

fn record(i: usize) -> Record<'static> {
    let mut r = Record::new_ml();
    r.set(Field::RequestUuid, format!("uuid-{i:05}"));
    r.set(Field::ServiceId, format!("svc-{}", i % 7));
    r.set(Field::Uri, "/v1/items?id=\"1\"");
    r.set_request_time_ms(1_700_000_000_000 + i as i64);
    r.stamp_observed(1_700_000_001_000 + 2 * i as i64);
    r.host = Cow::Borrowed("edge-a");
    r
}

fn units(n: usize, encoder: &Encoder) -> Units {
    let mut u = Units::default();
    for i in 0..n {
        encoder.push(&record(i), "/logs/access.log", &mut u);
    }
    u
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn produced_messages_carry_key_headers_and_the_record_for_an_independent_consumer() {
    const TEST: &str = "kafka::produced_messages_carry_key_headers_and_the_record_for_an_independent_consumer";
    let Some(broker) = Broker::start(TEST) else { return };
    broker.create_topic("calls", 3);
    let rt = runtime();
    let encoder = Encoder::new(Format::Ndjson, KeyField::Field(Field::RequestUuid), "");
    let n = 300;
    // gzip: the codec kafka-python reads without extra packages.
    let p = Producer::new(plain(&broker), "calls".into(), Compression::Gzip);
    let u = units(n, &encoder);
    assert_eq!(rt.block_on(p.attempt(&u)), Outcome::Delivered);
    // The ecls shape on a second topic, keyed by service_id.
    broker.create_topic("calls-ecls", 3);
    let p2 = Producer::new(plain(&broker), "calls-ecls".into(), Compression::Gzip);
    let ecls = Encoder::new(Format::Ecls, KeyField::Field(Field::ServiceId), "");
    assert_eq!(rt.block_on(p2.attempt(&units(20, &ecls))), Outcome::Delivered);

    let Some(got) = consume_with_kafka_python(TEST, &broker.addr(), "calls", n, Duration::from_secs(10)) else { return };
    assert_eq!(got.len(), n, "every message is read back");
    let mut seen = BTreeSet::new();
    for m in &got {
        let key = m.key.clone().expect("keyed");
        assert_eq!(m.partition as usize, partition_for(key.as_bytes(), 3), "placed as Kafka's own clients place keys");
        let v: serde_json::Value = serde_json::from_str(&m.value).expect("ndjson value");
        assert_eq!(v["request_uuid"].as_str(), Some(key.as_str()), "the key is the record's request_uuid");
        assert_eq!(v["host"], "edge-a");
        assert!(v["sync_delay_ms"].is_i64(), "ndjson numbers stay numbers: {v}");
        assert_eq!(m.headers.get("host").map(String::as_str), Some("edge-a"));
        assert_eq!(m.headers.get("file").map(String::as_str), Some("/logs/access.log"));
        assert_eq!(m.headers.get("sync_delay_ms"), Some(&v["sync_delay_ms"].to_string()));
        seen.insert(key);
    }
    assert_eq!(seen.len(), n);
    let partitions: BTreeSet<i32> = got.iter().map(|m| m.partition).collect();
    assert_eq!(partitions.len(), 3, "keys spread over the partitions");

    let Some(got) = consume_with_kafka_python(TEST, &broker.addr(), "calls-ecls", 20, Duration::from_secs(10)) else { return };
    assert_eq!(got.len(), 20);
    for m in &got {
        let v: serde_json::Value = serde_json::from_str(&m.value).expect("ecls value");
        let rec = &v["data"][0];
        assert_eq!(v["data"].as_array().map(Vec::len), Some(1), "one record per message");
        assert_eq!(rec["service_id"].as_str(), m.key.as_deref(), "keyed by service_id");
        assert!(rec["sync_delay_ms"].is_string(), "ecls: every value a string");
    }
}

#[test]
fn an_unreachable_broker_is_a_retry_and_delivery_resumes_when_it_is_back() {
    const TEST: &str = "kafka::an_unreachable_broker_is_a_retry_and_delivery_resumes_when_it_is_back";
    let Some(mut broker) = Broker::start(TEST) else { return };
    broker.create_topic("calls", 3);
    let rt = runtime();
    let p = Producer::new(plain(&broker), "calls".into(), Compression::Lz4);
    let encoder = Encoder::new(Format::Ndjson, KeyField::Field(Field::RequestUuid), "");
    assert_eq!(rt.block_on(p.attempt(&units(10, &encoder))), Outcome::Delivered);
    broker.stop();
    let t = Instant::now();
    match rt.block_on(p.attempt(&units(10, &encoder))) {
        Outcome::Retry { reason, .. } => assert!(!reason.is_empty()),
        o => panic!("a stopped broker must be retried, got {o:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(15), "an outage is reported within the request timeout, not hidden: {:?}", t.elapsed());
    broker.start_again();
    crate::support::poll_until(Duration::from_secs(30), "delivery after the broker is back", || {
        matches!(rt.block_on(p.attempt(&units(10, &encoder))), Outcome::Delivered).then_some(())
    });
    // A topic that does not exist is a retry too (it may be created).
    let missing = Producer::new(plain(&broker), "no-such-topic".into(), Compression::None);
    match rt.block_on(missing.attempt(&units(1, &encoder))) {
        Outcome::Retry { reason, .. } => assert!(reason.contains("no-such-topic"), "{reason}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn sasl_scram_against_the_broker() {
    const TEST: &str = "kafka::sasl_scram_against_the_broker";
    let Some(mut broker) = Broker::start(TEST) else { return };
    broker.create_topic("secure", 1);
    broker.create_user("bridge", "bridge-secret-1");
    broker.require_authentication();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "bridge-secret-1\n").unwrap();
    std::fs::write(dir.path().join("wrong"), "not-the-password\n").unwrap();
    let client = |pw: &str| {
        settings(
            &format!(
                "brokers = [\"{}\"]\nrequest_timeout_ms = 3000\nsasl_mechanism = \"scram-sha-512\"\nsasl_username = \"bridge\"\nsasl_password_file = \"{pw}\"",
                broker.addr()
            ),
            dir.path(),
        )
    };
    let rt = runtime();
    let encoder = Encoder::new(Format::Ndjson, KeyField::Field(Field::RequestUuid), "");
    let p = Producer::new(client("pw"), "secure".into(), Compression::Zstd);
    assert_eq!(rt.block_on(p.attempt(&units(5, &encoder))), Outcome::Delivered, "SCRAM-SHA-512 with the right password");
    let bad = Producer::new(client("wrong"), "secure".into(), Compression::Zstd);
    match rt.block_on(bad.attempt(&units(1, &encoder))) {
        Outcome::Retry { reason, .. } => assert!(!reason.contains("not-the-password"), "the password never shows: {reason}"),
        o => panic!("refused credentials are retried, not dead-lettered: {o:?}"),
    }
    let anonymous = Producer::new(plain(&broker), "secure".into(), Compression::None);
    assert!(matches!(rt.block_on(anonymous.attempt(&units(1, &encoder))), Outcome::Retry { .. }));
}

#[test]
fn mutual_tls_to_the_broker() {
    const TEST: &str = "kafka::mutual_tls_to_the_broker";
    use crate::upstream_tls::{Pki, TlsFront};
    // tansu 0.6 does not serve TLS: a TLS server in front of it (the one
    // the upstream TLS tests use) terminates it, and the broker tells
    // clients to connect there.
    let pki = Pki::generate();
    let port = crate::support_tools::free_port();
    let front = TlsFront::start(pki.server_config(true), ([127, 0, 0, 1], port).into());
    let opts = Options { port: Some(port), advertised_port: Some(front.addr.port()), ..Options::default() };
    let Some(broker) = Broker::start_with(TEST, opts) else { return };
    broker.create_topic("tls", 2);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki.write(dir.path());
    let tls =
        |extra: &str| settings(&format!("brokers = [\"{}\"]\nrequest_timeout_ms = 3000\ntls = true\n{extra}", front.addr), dir.path());
    let rt = runtime();
    let encoder = Encoder::new(Format::Ndjson, KeyField::Field(Field::RequestUuid), "");
    let full = format!("ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"", ca.display(), cert.display(), key.display());
    let p = Producer::new(tls(&full), "tls".into(), Compression::Snappy);
    assert_eq!(rt.block_on(p.attempt(&units(20, &encoder))), Outcome::Delivered, "over TLS with a client certificate");
    assert!(front.handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let failed_before = front.failed.load(std::sync::atomic::Ordering::SeqCst);
    let untrusted = Producer::new(tls(""), "tls".into(), Compression::None);
    match rt.block_on(untrusted.attempt(&units(1, &encoder))) {
        Outcome::Retry { reason, .. } => assert!(!reason.is_empty()),
        o => panic!("an untrusted server certificate is retried: {o:?}"),
    }
    assert!(front.failed.load(std::sync::atomic::Ordering::SeqCst) > failed_before, "the handshake was refused");
}

/// Counts what a partition reader reports.
#[derive(Default)]
struct Seen {
    rejected: std::sync::Mutex<Vec<(Partition, i64)>>,
}

impl Observer for Seen {
    fn read(&self, _records: &[Record<'_>], _observed_ms: i64) {}
    fn rejected(&self, partition: &Partition, offset: i64, _reject: &Reject) {
        self.rejected.lock().unwrap().push((partition.clone(), offset));
    }
    fn hosts_cut(&self, _partition: &Partition, _offset: i64, _n: usize) {}
    fn failing(&self, _partition: &Partition, _error: Option<&str>) {}
    fn lost(&self, _partition: &Partition, _from: i64, _to: i64) {}
    fn reset(&self, _partition: &Partition, _reset: &calllog_bridge::kafka::consume::Reset) {}
}

#[test]
fn partitions_are_read_into_batches_and_positions_advance_only_when_acknowledged() {
    const TEST: &str = "kafka::partitions_are_read_into_batches_and_positions_advance_only_when_acknowledged";
    let Some(broker) = Broker::start(TEST) else { return };
    broker.create_topic("fleet", 1);
    // An independent producer writes what edges would, plus one value
    // that is not a record.
    let mut values: Vec<String> = (0..50)
        .map(|i| {
            let mut v = Vec::new();
            record(i).write_json(if i % 2 == 0 { Shape::Ndjson } else { Shape::Ecls }, &mut v);
            String::from_utf8(v).unwrap()
        })
        .collect();
    values.insert(10, "not a record".to_string());
    if produce_with_kafka_python(TEST, &broker.addr(), "fleet", &values).is_none() {
        return;
    }
    let rt = runtime();
    let state = tempfile::tempdir().unwrap();
    let reader = ReaderSettings {
        fetch_max_bytes: 4096,
        fetch_max_wait: Duration::from_millis(200),
        request_timeout: Duration::from_secs(3),
        read_from: ReadFrom::Beginning,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        enricher: None,
    };
    let p: Partition = ("fleet".into(), 0);
    let run = |ack: bool| {
        let offsets = Offsets::load(state.path(), "hub").unwrap();
        let seen = Arc::new(Seen::default());
        let got = rt.block_on(async {
            let client = calllog_bridge::kafka::client::connect(&plain(&broker)).await.unwrap();
            let pc = Arc::new(client.partition_client("fleet", 0, rskafka::client::partition::UnknownTopicHandling::Retry).await.unwrap());
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let mut fanout = Fanout::new();
            fanout.add("test", tx);
            let stop = CancellationToken::new();
            let task =
                tokio::spawn(read_partition(pc, offsets.clone(), fanout, reader.clone(), "kafka:fleet".into(), seen.clone(), stop.clone()));
            let mut got = Vec::new();
            while got.len() < 50 {
                let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await else { break };
                for r in b.records.iter() {
                    got.push((r.get(Field::RequestUuid).to_string(), r.host.to_string(), r.sync_delay_ms, r.ingestion_time));
                }
                if ack {
                    b.ack();
                }
            }
            stop.cancel();
            task.await.unwrap();
            offsets.write_async(false).await.unwrap();
            got
        });
        (got, offsets, seen)
    };
    let (got, offsets, seen) = run(false);
    assert_eq!(got.len(), 50, "every record, the bad value skipped");
    let expect = record(3);
    assert!(got.contains(&("uuid-00003".into(), "edge-a".into(), expect.sync_delay_ms, expect.ingestion_time)), "edge fields kept");
    assert_eq!(seen.rejected.lock().unwrap().as_slice(), &[(p.clone(), 10)], "the bad value is reported with its offset");
    assert_eq!(offsets.position(&p), Some(0), "nothing acknowledged: the position stays");
    // Unacknowledged: everything is read again, then acknowledged.
    let (got, offsets, _) = run(true);
    assert_eq!(got.len(), 50, "read again after a restart without acknowledgement");
    assert_eq!(offsets.position(&p), Some(51));
    assert_eq!(Offsets::load(state.path(), "hub").unwrap().position(&p), Some(51), "durable");
}
