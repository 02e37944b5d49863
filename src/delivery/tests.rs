//! The engine in process, with a scripted transport: the rules every sink
//! on it shares (partial answers, the memory charge, the spill rule).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::budget::MemoryBudget;
use crate::pipeline::{Batch, Fanout};
use crate::record::{Field, Record};
use crate::telemetry::Telemetry;

static TEST: Declared =
    Declared { name: "test", spool_fault: "test_spool", dead_letter_fault: "test_dead_letter", peer_fault: None, figures: None };

/// Units are the record's `{"request_uuid":...}`.
struct Uuids;

impl Encode for Uuids {
    fn encode(&self, r: &Record<'_>, _file: &str, units: &mut Units) {
        let start = units.buf.len();
        units.buf.extend_from_slice(format!("{{\"request_uuid\":\"{}\"}}", r.get(Field::RequestUuid)).as_bytes());
        units.spans.push(Span { end: units.buf.len(), doc_start: start, doc_end: units.buf.len() });
    }

    fn format(&self) -> &'static str {
        "test"
    }
}

/// Answers from a script (then `Delivered`); each attempt first takes a
/// permit of `gate` when there is one (a peer that answers when told).
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Outcome>>,
    attempts: Mutex<Vec<usize>>,
    gate: Option<Arc<Semaphore>>,
}

struct Fake(Arc<Script>);

impl Transport for Fake {
    type Body = ();

    async fn body(&self, _units: &Arc<Units>) -> Option<()> {
        Some(())
    }

    async fn attempt(&self, _body: &(), units: &Units) -> Outcome {
        self.0.attempts.lock().unwrap().push(units.len());
        if let Some(g) = &self.0.gate {
            g.acquire().await.unwrap().forget();
        }
        self.0.answers.lock().unwrap().pop_front().unwrap_or(Outcome::Delivered)
    }

    fn destination(&self) -> &str {
        "test://peer"
    }
}

fn settings(extra: impl FnOnce(&mut Knobs)) -> Settings {
    let mut k = Knobs::defaults(&DEFAULTS);
    k.retry_initial_ms = 1;
    k.retry_max_ms = 5;
    k.flush_interval_ms = 5;
    extra(&mut k);
    Settings::from_knobs(k, "test", Path::new("")).unwrap()
}

/// A running sink on the engine and what it acknowledged.
struct Sink {
    fanout: Fanout,
    acked: Arc<AtomicUsize>,
    telemetry: Telemetry,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(dir: &Path, settings: Settings, script: &Arc<Script>, budget: Arc<MemoryBudget>, queue: usize) -> Sink {
    let telemetry = Telemetry::new();
    let mut fanout = Fanout::with_budget(budget);
    let parts = Parts { settings, encoder: Uuids, transport: Fake(script.clone()) };
    let places = Places { spool: dir.join("spool"), dead_letter: dir.join("dead-letter.ndjson") };
    let (task, _) = start_engine(parts, places, &telemetry, &mut fanout, mpsc::channel(queue)).await.expect("engine starts");
    Sink { fanout, acked: Arc::new(AtomicUsize::new(0)), telemetry, task }
}

async fn start_engine(
    parts: Parts<Uuids, Fake>,
    places: Places,
    telemetry: &Telemetry,
    fanout: &mut Fanout,
    queue: (mpsc::Sender<Arc<Batch>>, mpsc::Receiver<Arc<Batch>>),
) -> anyhow::Result<(tokio::task::JoinHandle<anyhow::Result<()>>, Control<Uuids, Fake>)> {
    super::start(&TEST, parts, places, telemetry, CancellationToken::new(), fanout, queue).await
}

impl Sink {
    fn batch(&self, ids: std::ops::Range<usize>) -> Batch {
        let records: Vec<Record<'static>> = ids
            .map(|i| {
                let mut r = Record::new_ml();
                r.set(Field::RequestUuid, format!("u{i}"));
                r
            })
            .collect();
        let acked = self.acked.clone();
        Batch::new(
            "f.log".into(),
            records,
            crate::time::now_ms(),
            Some(Box::new(move || {
                acked.fetch_add(1, Ordering::SeqCst);
            })),
        )
    }

    async fn wait_acked(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(tokio::time::Instant::now() < deadline, "{} of {n} batches acknowledged", self.acked.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn close(self) {
        drop(self.fanout);
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_batch_holds_its_encoded_records_against_the_memory_budget_until_handled() {
    let dir = tempfile::tempdir().unwrap();
    let budget = MemoryBudget::new(1 << 20, &Telemetry::new());
    let gate = Arc::new(Semaphore::new(0));
    let script = Arc::new(Script { gate: Some(gate.clone()), ..Script::default() });
    let sink = start(dir.path(), settings(|_| {}), &script, budget.clone(), 16).await;
    sink.fanout.send(sink.batch(0..200)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while script.attempts.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The batch itself is let go once encoded; its 200 units stay charged.
    assert!(budget.used() >= 200 * "{\"request_uuid\":\"u0\"}".len(), "charged {}", budget.used());
    gate.add_permits(1);
    sink.wait_acked(1).await;
    assert_eq!(budget.used(), 0, "released once delivered");
    sink.close().await;
}

#[tokio::test]
async fn partial_answers_send_again_only_what_was_not_taken_and_dead_letter_what_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Item::Rejected { status: 400, error: "bad".into() };
    let script = Arc::new(Script::default());
    script.answers.lock().unwrap().extend([
        Outcome::Partial { items: vec![Item::Done, Item::Retry, refused.clone(), Item::Retry, Item::Done], reason: "2 to retry".into() },
        Outcome::Retry { reason: "503".into(), after: None },
    ]);
    let sink = start(dir.path(), settings(|_| {}), &script, Arc::new(MemoryBudget::unbounded()), 16).await;
    sink.fanout.send(sink.batch(0..5)).await.unwrap();
    sink.wait_acked(1).await;
    assert_eq!(*script.attempts.lock().unwrap(), vec![5, 2, 2], "only the records not taken are sent again");
    let stats = sink.telemetry.sink("test");
    assert_eq!(stats.delivered_records.load(Ordering::Relaxed), 4);
    assert_eq!(stats.dead_lettered_records.load(Ordering::Relaxed), 1);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
    let dl = std::fs::read_to_string(dir.path().join("dead-letter.ndjson")).unwrap();
    let line: serde_json::Value = serde_json::from_str(dl.lines().next().unwrap()).unwrap();
    assert_eq!((line["status"].as_u64(), line["records"][0]["request_uuid"].as_str()), (Some(400), Some("u2")));
    sink.close().await;
}

#[tokio::test]
async fn a_full_queue_spills_to_the_spool_without_evicting_and_without_a_spool_reading_waits() {
    for spool in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        // A peer that never answers, one permit, one record per request.
        let script = Arc::new(Script { gate: Some(Arc::new(Semaphore::new(0))), ..Script::default() });
        let s = settings(|k| {
            k.max_in_flight = 1;
            k.batch_max_records = 1;
            k.spool_max_bytes = if spool { 1 << 20 } else { 0 };
        });
        let sink = start(dir.path(), s, &script, Arc::new(MemoryBudget::unbounded()), 2).await;
        let mut sent = 0;
        for i in 0..20 {
            let send = sink.fanout.send(sink.batch(i..i + 1));
            if tokio::time::timeout(Duration::from_millis(500), send).await.is_err() {
                break;
            }
            sent += 1;
        }
        let stats = sink.telemetry.sink("test");
        if spool {
            assert_eq!(sent, 20, "reading never waits on a silent peer while the spool has room");
            // What is not spooled: the request being sent, the one waiting
            // for the permit, and the queue's two (it is not full now).
            sink.wait_acked(16).await;
            assert_eq!(stats.dropped_records.load(Ordering::Relaxed), 0, "a spill never deletes spooled records");
            assert!(std::fs::read_dir(dir.path().join("spool")).unwrap().count() >= 16);
        } else {
            assert!(sent < 20, "without a spool, the full queue holds reading back");
            assert_eq!(sink.acked.load(Ordering::SeqCst), 0);
        }
        sink.task.abort();
    }
}
