//! The channel (local Call Log Stream) with real WebSocket clients over
//! loopback: in process (the sink fed from a queue, a real listener on
//! 127.0.0.1:0), and end to end through the real binary (`run`, `tail`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calllog_bridge::config::Secret;
use calllog_bridge::pipeline::Batch;
use calllog_bridge::record::{Field, Record};
use calllog_bridge::sink::channel::ChannelConfig;
use calllog_bridge::sink::channel::{self, ChannelHandle};
use calllog_bridge::sink::SinkContext;
use calllog_bridge::telemetry::Telemetry;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::support;

pub(crate) const TOKEN: &str = "test-token-5f3a9c";
/// Generous bound for anything that should happen "at once".
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An in-process channel fed through its queue.
pub(crate) struct Chan {
    pub(crate) handle: ChannelHandle,
    tx: Option<mpsc::Sender<Arc<Batch>>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    acked: Arc<AtomicUsize>,
    next_record: u64,
    /// The state directory; removed once the sink task has ended (see Drop).
    dir: Option<tempfile::TempDir>,
}

impl Drop for Chan {
    /// The sink task writes `channel.seq` when its queue closes: the state
    /// directory is removed only once the task has ended, or the file may
    /// land in it while it is being removed and leave it behind in /tmp.
    fn drop(&mut self) {
        self.tx.take();
        let dir = self.dir.take();
        if self.task.is_finished() {
            return;
        }
        let rt = tokio::runtime::Handle::current();
        if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            // Nothing runs the sink task while this thread is here: remove
            // the directory once it has ended, if the test goes on (when the
            // test ends here, the task is never polled again).
            let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
            tokio::spawn(async move {
                let _ = task.await;
                drop(dir);
            });
        } else {
            // Worker threads run it now: wait for it here.
            let task = &mut self.task;
            tokio::task::block_in_place(|| {
                let _ = rt.block_on(tokio::time::timeout(DEADLINE, task));
            });
        }
    }
}

impl Chan {
    /// A channel `chan-1` in area `eu` with the token [`TOKEN`] and the
    /// `extra` settings (`[[stream]]` tables last).
    pub(crate) async fn start(extra: &str) -> Chan {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nchannel_id = \"chan-1\"\narea = \"eu\"\n{extra}");
        let cfg: ChannelConfig = toml::from_str(&toml).unwrap();
        let ctx = SinkContext { state_dir: dir.path().to_path_buf(), shutdown: CancellationToken::new(), telemetry: Telemetry::new() };
        let (tx, rx) = mpsc::channel(16);
        let (handle, task) = channel::spawn(&cfg, &ctx, rx).await.unwrap();
        Chan { handle, tx: Some(tx), task, acked: Arc::new(AtomicUsize::new(0)), next_record: 0, dir: Some(dir) }
    }

    /// The state directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.handle.local_addr())
    }

    /// Sends `n` records as one batch; returns their request_uuids.
    async fn send(&mut self, n: usize) -> Vec<String> {
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.next_record;
            self.next_record += 1;
            let status = if i % 10 == 9 { "503" } else { "200" };
            records.push(record(i, status, if i.is_multiple_of(2) { "svc-even" } else { "svc-odd" }));
        }
        self.send_records(records).await
    }

    /// Sends these records as one batch; returns their request_uuids.
    pub(crate) async fn send_records(&mut self, records: Vec<Record<'static>>) -> Vec<String> {
        let ids: Vec<String> = records.iter().map(|r| r.get(Field::RequestUuid).to_string()).collect();
        let acked = self.acked.clone();
        let batch = Batch::new(
            "test.log".into(),
            records,
            calllog_bridge::time::now_ms(),
            Some(Box::new(move || {
                acked.fetch_add(1, Ordering::SeqCst);
            })),
        );
        // The channel is the only sink: one ack completes the batch.
        let mut f = calllog_bridge::pipeline::Fanout::new();
        f.add("channel", self.tx.clone().unwrap());
        f.send(batch).await.unwrap();
        ids
    }
}

pub(crate) fn record(i: u64, status: &str, service: &str) -> Record<'static> {
    let mut r = Record::new_ml();
    r.set(Field::RequestUuid, format!("uuid-{i:08}"));
    r.set(Field::HttpStatusCode, status.to_string());
    r.set(Field::ServiceId, service.to_string());
    r.set(Field::ApiKey, "k7q2mzp4rb9d3hxw8cyn5ta6");
    r.set(Field::OauthAccessToken, "-");
    r.set(Field::Bytes, "113");
    r.set(Field::HttpMethod, "GET");
    r.set(Field::Uri, format!("/v2/orders/{i}"));
    r.set_request_time_ms(1_555_711_003_068);
    r.stamp_observed(1_555_711_021_034);
    r.into_owned()
}

pub(crate) async fn connect(url: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Connects and expects an HTTP refusal; returns (status, body).
pub(crate) async fn refused(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("{url}: expected a refusal, got an upgrade"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("{url}: expected an HTTP refusal, got {e}"),
    }
}

/// One server message, parsed; `None` when the connection ended.
pub(crate) enum Event {
    Data(Value),
    Text(String),
    Ping,
    Closed(Option<(CloseCode, String)>),
}

pub(crate) async fn next_event(ws: &mut Ws) -> Event {
    loop {
        let m = match tokio::time::timeout(DEADLINE, ws.next()).await.expect("a message within the deadline") {
            None | Some(Err(_)) => return Event::Closed(None),
            Some(Ok(m)) => m,
        };
        return match m {
            Message::Text(t) if t.starts_with("Response To ") => Event::Text(t.to_string()),
            Message::Text(t) => Event::Data(serde_json::from_str(&t).expect("server messages are JSON")),
            Message::Binary(_) => panic!("the channel sends text frames"),
            Message::Ping(_) => Event::Ping,
            Message::Close(f) => Event::Closed(f.map(|f| (f.code, f.reason.to_string()))),
            _ => continue,
        };
    }
}

/// Reads data messages until `n` records arrived; returns (seq of each
/// record, in order, derived from the message seq) and the uuids.
pub(crate) async fn read_records(ws: &mut Ws, n: usize) -> (Vec<u64>, Vec<String>) {
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    while ids.len() < n {
        match next_event(ws).await {
            Event::Data(v) => {
                let data = v["data"].as_array().expect("data array");
                let last = v["seq"].as_u64().expect("seq number");
                for (i, r) in data.iter().enumerate() {
                    seqs.push(last - (data.len() - 1 - i) as u64);
                    ids.push(r["request_uuid"].as_str().unwrap().to_string());
                }
            }
            Event::Text(_) | Event::Ping => {}
            Event::Closed(c) => panic!("closed after {} of {n} records: {c:?}", ids.len()),
        }
    }
    (seqs, ids)
}

pub(crate) async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn records_arrive_in_the_ecls_shape_one_per_message() {
    let mut ch = Chan::start("").await;
    let mut ws = connect(&ch.url("/ecls/subscribe/chan-1/eu?key=test-token-5f3a9c")).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    let ids = ch.send(3).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let Event::Data(v) = next_event(&mut ws).await else { panic!("expected data") };
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "records_per_message = 1 by default");
        let r = data[0].as_object().unwrap();
        assert_eq!(r.len(), 42, "41 schema fields + sync_delay_ms");
        assert!(r.values().all(Value::is_string), "every value a string: {r:?}");
        assert_eq!(r["bytes"], "113");
        assert_eq!(r["log_type"], "ML");
        assert_eq!(r["request_time"], "2019-04-19T21:56:43Z");
        assert_eq!(r["ingestion_time"], "1555711021034");
        got.push((v["seq"].as_u64().unwrap(), r["request_uuid"].as_str().unwrap().to_string()));
    }
    assert_eq!(got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(got[1].0, got[0].0 + 1);
    assert_eq!(got[2].0, got[0].0 + 2);
    // The sink acknowledges without waiting for clients.
    poll("batch acknowledged", || (ch.acked.load(Ordering::SeqCst) == 1).then_some(())).await;
}

#[tokio::test]
async fn records_per_message_batches_and_short_path_works() {
    let mut ch = Chan::start("records_per_message = 50").await;
    let mut ws = connect(&ch.url("/stream?key=test-token-5f3a9c")).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    ch.send(120).await;
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < 120 {
        let Event::Data(v) = next_event(&mut ws).await else { panic!("expected data") };
        let n = v["data"].as_array().unwrap().len();
        sizes.push(n);
        total += n;
    }
    assert_eq!(total, 120);
    assert!(sizes.iter().all(|&n| n <= 50), "{sizes:?}");
    assert!(sizes.len() <= 4, "records are batched: {sizes:?}");
}

#[tokio::test]
async fn a_client_may_ask_for_its_own_records_per_message() {
    // The channel sends one record per message; this client asks for 25.
    let mut ch = Chan::start("").await;
    let mut batched = connect(&ch.url("/stream?key=test-token-5f3a9c&records_per_message=25")).await;
    let mut plain = connect(&ch.url("/stream?key=test-token-5f3a9c")).await;
    poll("connections registered", || (ch.handle.connections() == 2).then_some(())).await;
    let ids = ch.send(100).await;
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    while got.len() < 100 {
        let Event::Data(v) = next_event(&mut batched).await else { panic!("expected data") };
        let data = v["data"].as_array().unwrap();
        sizes.push(data.len());
        got.extend(data.iter().map(|r| r["request_uuid"].as_str().unwrap().to_string()));
    }
    assert_eq!(got, ids, "in order, each once");
    assert!(sizes.iter().all(|&n| n <= 25) && sizes.len() <= 8, "{sizes:?}");
    let (_, plain_ids) = read_records(&mut plain, 100).await;
    assert_eq!(plain_ids, ids, "the other client keeps one record per message");
    assert_eq!(refused(&ch.url("/stream?key=test-token-5f3a9c&records_per_message=0")).await.0, 400);
    assert_eq!(refused(&ch.url("/stream?key=test-token-5f3a9c&records_per_message=5000")).await.0, 400);
}

#[tokio::test]
async fn reloaded_batching_and_masking_apply_to_new_connections_and_records() {
    let mut ch = Chan::start("").await;
    let mut before = connect(&ch.url("/stream?key=test-token-5f3a9c")).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nchannel_id = \"chan-1\"\narea = \"eu\"\nrecords_per_message = 10\nmask_keep = 2\n"
    );
    ch.handle.reconfigure(&toml::from_str::<ChannelConfig>(&toml).unwrap());
    let mut after = connect(&ch.url("/stream?key=test-token-5f3a9c")).await;
    poll("connections registered", || (ch.handle.connections() == 2).then_some(())).await;
    let ids = ch.send(30).await;
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    while got.len() < 30 {
        let Event::Data(v) = next_event(&mut after).await else { panic!("expected data") };
        let data = v["data"].as_array().unwrap();
        sizes.push(data.len());
        for r in data {
            assert_eq!(r["api_key"], "k7********************a6", "masked after the reload");
            got.push(r["request_uuid"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, ids);
    assert!(sizes.len() < 30 && sizes.iter().all(|&n| n <= 10), "batched by the new setting: {sizes:?}");
    // The connection opened before keeps its one record per message.
    let Event::Data(v) = next_event(&mut before).await else { panic!("expected data") };
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn client_text_frames_get_response_to_answers() {
    let mut ch = Chan::start("").await;
    let mut ws = connect(&ch.url("/stream?key=test-token-5f3a9c")).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    ws.send(Message::text("1700000000123")).await.unwrap();
    ch.send(1).await;
    ws.send(Message::text("hello")).await.unwrap();
    let mut answers = Vec::new();
    let mut data = 0;
    while answers.len() < 2 || data < 1 {
        match next_event(&mut ws).await {
            Event::Text(t) => answers.push(t),
            Event::Data(_) => data += 1,
            Event::Ping => {}
            Event::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    assert_eq!(answers, vec!["Response To 1700000000123".to_string(), "Response To hello".to_string()]);
    // Binary frames are not an error either; the connection stays up.
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ch.send(1).await;
    assert!(matches!(next_event(&mut ws).await, Event::Data(_)));
}

#[tokio::test]
async fn bad_token_wrong_path_and_bad_parameters_are_refused_before_upgrade() {
    let ch = Chan::start("").await;
    let (s, body) = refused(&ch.url("/stream?key=guess-1234")).await;
    assert_eq!(s, 401);
    assert!(body.contains("unauthorized"), "{body}");
    assert!(!body.contains("guess-1234"), "the token is not echoed: {body}");
    assert_eq!(refused(&ch.url("/stream")).await.0, 401);
    assert_eq!(refused(&ch.url("/ecls/subscribe/chan-1/eu")).await.0, 401);
    assert_eq!(refused(&ch.url("/ecls/subscribe/other/eu?key=test-token-5f3a9c")).await.0, 404);
    assert_eq!(refused(&ch.url("/elsewhere?key=test-token-5f3a9c")).await.0, 404);
    assert_eq!(refused(&ch.url("/stream?key=test-token-5f3a9c&since=abc")).await.0, 400);
    assert_eq!(refused(&ch.url("/stream?key=test-token-5f3a9c&status=9xx")).await.0, 400);
    let st = ch.handle.stats();
    assert_eq!(st.refused_unauthorized.get(), 3);
    assert_eq!(st.refused_not_found.get(), 2);
    assert_eq!(st.refused_bad_request.get(), 2);
    assert_eq!(st.connections_accepted.get(), 0);
}

#[tokio::test]
async fn the_sixth_connection_is_refused_with_a_reason() {
    let mut ch = Chan::start("").await;
    let url = ch.url("/stream?key=test-token-5f3a9c");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&url).await);
    }
    let (status, body) = refused(&url).await;
    assert_eq!(status, 503);
    assert!(body.contains("too many connections") && body.contains('5'), "{body}");
    // A wrong token is still a 401 when the channel is full.
    assert_eq!(refused(&ch.url("/stream?key=nope")).await.0, 401);
    // The five keep working.
    ch.send(2).await;
    for ws in clients.iter_mut() {
        read_records(ws, 2).await;
    }
    // One leaves: a new one gets its slot.
    let mut gone = clients.pop().unwrap();
    gone.close(None).await.unwrap();
    drop(gone);
    poll("slot freed", || (ch.handle.connections() == 4).then_some(())).await;
    let deadline = Instant::now() + DEADLINE;
    let mut sixth = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => break ws,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("slot never freed: {e}"),
        }
    };
    ch.send(1).await;
    read_records(&mut sixth, 1).await;
    assert_eq!(ch.handle.stats().refused_full.get(), 1);
}

/// Connects with a tiny receive buffer, so that a client that stops
/// reading is felt by the server after a few kilobytes, not megabytes.
async fn connect_small_buffer(url: &str, addr: std::net::SocketAddr) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await.unwrap();
    ws
}

/// A reader for bulk tests: uuids and message seqs, typed (fast) parsing.
async fn read_uuids(ws: &mut Ws, n: usize) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Msg {
        data: Vec<Rec>,
    }
    #[derive(serde::Deserialize)]
    struct Rec {
        request_uuid: String,
    }
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        match tokio::time::timeout(DEADLINE, ws.next()).await.expect("data within the deadline") {
            Some(Ok(Message::Text(t))) => {
                let m: Msg = serde_json::from_str(&t).unwrap();
                ids.extend(m.data.into_iter().map(|r| r.request_uuid));
            }
            Some(Ok(Message::Close(f))) => panic!("closed after {} of {n} records: {f:?}", ids.len()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("read failed after {} of {n} records: {e}", ids.len()),
            None => panic!("ended after {} of {n} records", ids.len()),
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_stays_open_while_the_others_get_everything() {
    // The stalled client is far behind but within the replay log's
    // retention: it reads from disk when it resumes, and is never closed
    // for being slow (before the replay log, it was closed as soon as its
    // unsent bytes stayed over send_queue_bytes for a second).
    let mut ch = Chan::start("records_per_message = 20").await;
    let url = ch.url("/stream?key=test-token-5f3a9c");
    // The stalled client never reads (for now).
    let mut stalled = connect_small_buffer(&url, ch.handle.local_addr()).await;
    let mut readers = Vec::new();
    const TOTAL: usize = 20_000;
    for _ in 0..4 {
        let mut ws = connect(&url).await;
        readers.push(tokio::spawn(async move {
            let ids = read_uuids(&mut ws, TOTAL).await;
            (ids, ws)
        }));
    }
    poll("connections registered", || (ch.handle.connections() == 5).then_some(())).await;
    // About 10,000 records/s: well within what a reading client takes.
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..(TOTAL / 500) {
        tick.tick().await;
        sent.extend(ch.send(500).await);
    }
    // Every batch was acknowledged: the stalled client never held the sink.
    poll("all batches acknowledged", || (ch.acked.load(Ordering::SeqCst) == TOTAL / 500).then_some(())).await;
    let mut open = Vec::new();
    for r in readers {
        let (ids, ws) = r.await.unwrap();
        assert!(ids == sent, "a reading client gets every record, in order");
        open.push(ws);
    }
    // Well past the old one-second grace: still open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ch.handle.stats().closed_slow_consumer.get(), 0);
    assert_eq!(ch.handle.connections(), 5);
    // It resumes reading and gets everything, in order, from the log.
    let got = read_uuids(&mut stalled, TOTAL).await;
    assert!(got == sent, "the stalled client gets every record once it reads");
}

#[tokio::test]
async fn since_replays_with_no_gap_and_no_duplicate() {
    let mut ch = Chan::start("records_per_message = 7").await;
    let url = ch.url("/stream?key=test-token-5f3a9c");
    let mut ws = connect(&url).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    let first = ch.send(100).await;
    let (seqs1, ids1) = read_records(&mut ws, 100).await;
    assert_eq!(ids1, first);
    drop(ws);
    // Missed while away.
    let missed = ch.send(250).await;
    let since = seqs1.last().unwrap() + 1;
    let mut ws = connect(&format!("{url}&since={since}")).await;
    // More arrive while the replay is being sent.
    let live = ch.send(150).await;
    let (seqs2, ids2) = read_records(&mut ws, 400).await;
    let expected: Vec<String> = missed.into_iter().chain(live).collect();
    assert_eq!(ids2, expected, "replay then live, in order");
    assert_eq!(seqs2.first(), Some(&since));
    assert!(seqs2.windows(2).all(|w| w[1] == w[0] + 1), "no gap, no duplicate");
    let unique: BTreeSet<_> = ids1.iter().chain(ids2.iter()).collect();
    assert_eq!(unique.len(), 500);
    assert!(ch.handle.stats().records_replayed.get() >= 250);
}

#[tokio::test]
async fn since_older_than_the_log_is_told_how_many_were_lost() {
    // 64 KiB of retention in 16 KiB segments: about 50 of the 200 records.
    let mut ch = Chan::start("replay_max_bytes = 65536").await;
    let mut sent = Vec::new();
    for _ in 0..20 {
        sent.extend(ch.send(10).await);
    }
    poll("all batches acknowledged", || (ch.acked.load(Ordering::SeqCst) == 20).then_some(())).await;
    let mut ws = connect(&ch.url("/stream?key=test-token-5f3a9c&since=1")).await;
    let Event::Data(notice) = next_event(&mut ws).await else { panic!("expected the lost notice") };
    let first = notice["first_available"].as_u64().unwrap();
    assert!(first > 100 && first < 200, "{notice}");
    assert_eq!(notice["lost"], first - 1, "{notice}");
    assert_eq!(notice["since"], 1);
    assert_eq!(notice["data"].as_array().map(Vec::len), Some(0));
    let n = 201 - first as usize;
    let (seqs, ids) = read_records(&mut ws, n).await;
    assert_eq!(ids, sent[first as usize - 1..]);
    assert_eq!(seqs.first(), Some(&first));
}

#[tokio::test]
async fn filters_and_masking() {
    let mut ch = Chan::start("mask_keep = 2").await;
    let mut errors = connect(&ch.url("/stream?key=test-token-5f3a9c&status=5xx")).await;
    let mut odd = connect(&ch.url("/stream?key=test-token-5f3a9c&service_id=svc-odd&api_key=k7q2mzp4rb9d3hxw8cyn5ta6")).await;
    poll("connections registered", || (ch.handle.connections() == 2).then_some(())).await;
    let ids = ch.send(40).await;
    let (_, got) = read_records(&mut errors, 4).await;
    assert_eq!(got, vec![ids[9].clone(), ids[19].clone(), ids[29].clone(), ids[39].clone()]);
    let Event::Data(v) = next_event(&mut odd).await else { panic!("expected data") };
    let r = &v["data"][0];
    assert_eq!(r["service_id"], "svc-odd");
    assert_eq!(r["api_key"], "k7********************a6", "masked, 2 kept at each end");
    assert_eq!(r["oauth_access_token"], "-", "absent stays absent");
    let (_, rest) = read_records(&mut odd, 19).await;
    assert_eq!(rest.len(), 19);
}

#[tokio::test]
async fn server_pings_and_a_silent_client_is_closed() {
    let mut ch = Chan::start("ping_interval_secs = 1").await;
    let url = ch.url("/stream?key=test-token-5f3a9c");
    let mut alive = connect(&url).await;
    // This client never reads, so it never answers a ping.
    let mut silent = connect(&url).await;
    poll("connections registered", || (ch.handle.connections() == 2).then_some(())).await;
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        match next_event(&mut alive).await {
            Event::Ping => pings += 1,
            Event::Closed(c) => panic!("a client that answers pings was closed: {c:?}"),
            _ => {}
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(2500));
    poll("silent client closed", || (ch.handle.stats().closed_ping_timeout.get() == 1).then_some(())).await;
    // The silent client finds the pings and then the close frame.
    let closed = loop {
        match next_event(&mut silent).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed, Some((CloseCode::Policy, "ping timeout".to_string())));
    // The answering client is still served.
    ch.send(1).await;
    read_records(&mut alive, 1).await;
}

#[tokio::test]
async fn a_new_token_ends_connections_that_used_the_old_one() {
    let mut ch = Chan::start("").await;
    let mut old = connect(&ch.url("/stream?key=test-token-5f3a9c")).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    ch.handle.set_token(Secret::new(TOKEN));
    ch.send(1).await;
    read_records(&mut old, 1).await;
    ch.handle.set_token(Secret::new("rotated-token-0123"));
    let closed = loop {
        match next_event(&mut old).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed, Some((CloseCode::Policy, "token revoked".to_string())));
    assert_eq!(refused(&ch.url("/stream?key=test-token-5f3a9c")).await.0, 401);
    let mut new = connect(&ch.url("/stream?key=rotated-token-0123")).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    ch.send(1).await;
    read_records(&mut new, 1).await;
}

#[tokio::test]
async fn shutdown_closes_with_going_away_after_sending_what_is_pending() {
    let mut ch = Chan::start("").await;
    let mut ws = connect(&ch.url("/stream?key=test-token-5f3a9c")).await;
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    let ids = ch.send(5).await;
    // The queue closes (the tailers stopped): the sink drains and closes.
    drop(ch.tx.take());
    let (_, got) = read_records(&mut ws, 5).await;
    assert_eq!(got, ids);
    let closed = loop {
        match next_event(&mut ws).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed.map(|c| c.0), Some(CloseCode::Away));
    tokio::time::timeout(DEADLINE, &mut ch.task).await.expect("sink task ends").unwrap().unwrap();
}

#[tokio::test]
async fn wss_with_tls_cert_and_key() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data");
    let extra =
        format!("tls_cert = \"{}\"\ntls_key = \"{}\"", data.join("channel-cert.pem").display(), data.join("channel-key.pem").display());
    let mut ch = Chan::start(&extra).await;
    let addr = ch.handle.local_addr();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tls_connector(&data.join("channel-cert.pem"));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/stream?key={TOKEN}", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("upgrade over TLS");
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    let ids = ch.send(2).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            got.push(v["data"][0]["request_uuid"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, ids);
}

fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

// ---------------------------------------------------------------------
// End to end: the real binary.

pub(crate) const LE_LINE: &str = r#"{"api_key":"k7q2mzp4rb9d3hxw8cyn5ta6","api_method":"getOrder","bytes":1874,"cache_hit":0,"client_transfer_time":0.002,"connect_time":0.012,"endpoint_name":"","method":"POST","status":201,"http_version":"HTTP/1.1","oauth_access_token":"-","package_name":"","package_uuid":"","plan_name":"","plan_uuid":"","pre_transfer_time":0.001,"throttle_value":3,"quota_value":17,"referrer":"-","remote_total_time":0.094,"request_host_name":"api.example.com","request_id":"1542643301.250_k7q2mzp4rb9d3hxw8cyn5ta6_r2xk9fy4wq8bnc7tz6dd5ev3","request_time":"2018-11-19T16:01:41.250Z","request_uuid":"UUID","response_string":"201 Created (API)","epkey":"q8w4e2r6t9y3u7i1o5p0a2s4","spkey":"r2xk9fy4wq8bnc7tz6dd5ev3","service_name":"","src_ip":"203.0.113.7","ssl_enabled":1,"exec_time":0.131,"proxy":"tm-1","proxy_error_code":"-","uri":"/v2/orders","user_agent":"curl/8","org_name":"","org_uuid":"","sub_org_name":"","sub_org_uuid":""}"#;

/// A running `calllog-bridge run` with a channel; killed on drop.
struct Bridge {
    child: std::process::Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Bridge {
    fn start() -> Bridge {
        Bridge::start_with("", "")
    }

    /// A bridge with these top-level keys and these extra sections
    /// (`{dir}` in them is its scratch directory).
    fn start_with(top: &str, sections: &str) -> Bridge {
        Bridge::start_full(top, "", sections)
    }

    /// [`Bridge::start_with`], with `channel_extra` in `[channel]`.
    fn start_full(top: &str, channel_extra: &str, sections: &str) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let cfg = format!(
            r#"{top}
state_dir = "{state}"
[[source]]
paths = ["{logs}/access*.log"]
format = "le-json"
poll_interval_ms = 50
[channel]
listen = "127.0.0.1:0"
token_file = "{token}"
{channel_extra}
[status]
listen = "127.0.0.1:0"
{sections}
"#,
            sections = sections.replace("{dir}", &dir.path().to_string_lossy()),
            state = dir.path().join("state").display(),
            logs = logs.display(),
            token = dir.path().join("token").display(),
        );
        let cfg_path = dir.path().join("config.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = support::cmd()
            .args(["run", "--config"])
            .arg(&cfg_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr_file = dir.path().join("state").join(channel::ADDR_FILE);
        let addr = support::poll_until(DEADLINE, "the bridge to write channel.addr", || {
            std::fs::read_to_string(&addr_file).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        });
        Bridge { child, dir, addr }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("logs").join("access_worker1.log")
    }

    fn append(&self, uuids: &[String]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        for u in uuids {
            writeln!(f, "{}", LE_LINE.replace("UUID", u)).unwrap();
        }
    }

    fn url(&self, key: &str) -> String {
        format!("ws://{}/ecls/subscribe/local/local?key={key}", self.addr)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the bridge did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uuids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_run_serves_the_channel_and_tail_prints_and_replays() {
    let mut bridge = Bridge::start();
    let mut ws = connect(&bridge.url(TOKEN)).await;
    let first = uuids("e2e-a", 20);
    bridge.append(&first);
    let (seqs, got) = read_records(&mut ws, 20).await;
    assert_eq!(got, first);

    // `tail` replays from a sequence number and stops after --count.
    let token_file = bridge.dir.path().join("token");
    let url = format!("ws://{}/stream", bridge.addr);
    let out = tokio::task::spawn_blocking({
        let (url, tf, since) = (url.clone(), token_file.clone(), seqs[5]);
        move || {
            support::cmd()
                .args(["tail", &url, "--token-file"])
                .arg(&tf)
                .args(["--since", &since.to_string(), "--count", "10"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "tail failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines.iter().map(|v| v["request_uuid"].as_str().unwrap().to_string()).collect::<Vec<_>>(), first[5..15]);

    // --table prints one line per record.
    let out = tokio::task::spawn_blocking({
        let (url, tf, since) = (url.clone(), token_file.clone(), seqs[0]);
        move || {
            support::cmd()
                .args(["tail", &url, "--table", "--no-reconnect", "--token-file"])
                .arg(&tf)
                .args(["--since", &since.to_string(), "--count", "3"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "tail --table failed: {}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("/v2/orders")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].contains("201") && rows[0].contains("POST") && rows[0].contains("2018-11-19T16:01:41Z"), "{table}");

    // Shutdown: the client is told the bridge is going away (1001).
    let status = tokio::task::spawn_blocking(move || {
        let s = bridge.terminate();
        (s, bridge)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "run exit: {:?}", status.0);
    let closed = loop {
        match next_event(&mut ws).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed.map(|c| c.0), Some(CloseCode::Away));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_tail_exits_non_zero_on_a_bad_token() {
    let bridge = Bridge::start();
    let (s, _) = refused(&bridge.url("wrong-token")).await;
    assert_eq!(s, 401);
    let bad = bridge.dir.path().join("bad-token");
    std::fs::write(&bad, "wrong-token\n").unwrap();
    let url = format!("ws://{}/stream", bridge.addr);
    let out =
        tokio::task::spawn_blocking(move || support::cmd().args(["tail", &url, "--token-file"]).arg(&bad).output().unwrap()).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed: the channel refused the token"), "{err}");
    assert!(!err.contains("wrong-token"), "the token is not printed: {err}");
}

#[test]
fn a_bad_tls_file_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{state}\"\n[[source]]\npaths = [\"{state}/*.log\"]\n[channel]\ntoken = \"tls-test-token-0123\"\ntls_cert = \"{key}\"\ntls_key = \"{key}\"\n",
            state = dir.path().display(),
            key = data.join("channel-key.pem").display()
        ),
    )
    .unwrap();
    let out = support::cmd().arg("check-config").arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("channel.tls_cert"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_a_reload_with_a_new_token_ends_old_connections() {
    let bridge = Bridge::start();
    let mut ws = connect(&bridge.url(TOKEN)).await;
    bridge.append(&uuids("reload-a", 1));
    read_records(&mut ws, 1).await;
    std::fs::write(bridge.dir.path().join("token"), "rotated-token-0123\n").unwrap();
    let pid = bridge.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let closed = loop {
        match next_event(&mut ws).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed, Some((CloseCode::Policy, "token revoked".to_string())));
    assert_eq!(refused(&bridge.url(TOKEN)).await.0, 401);
    let mut new = connect(&bridge.url("rotated-token-0123")).await;
    let ids = uuids("reload-b", 2);
    bridge.append(&ids);
    let (_, got) = read_records(&mut new, 2).await;
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reconnects_with_since_and_prints_nothing_twice() {
    use std::io::BufRead;
    let mut ch = Chan::start("").await;
    let url = ch.url(&format!("/stream?key={TOKEN}"));
    let mut child = support::cmd()
        .args(["subscribe", &url, "--count", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    async fn take(lines: &mut mpsc::UnboundedReceiver<String>, printed: &mut Vec<String>, n: usize) {
        while printed.len() < n {
            let l = tokio::time::timeout(DEADLINE, lines.recv()).await.expect("tail prints").expect("tail running");
            let v: Value = serde_json::from_str(&l).unwrap();
            printed.push(v["request_uuid"].as_str().unwrap().to_string());
        }
    }
    poll("tail connected", || (ch.handle.connections() == 1).then_some(())).await;
    let mut sent = ch.send(10).await;
    take(&mut lines, &mut printed, 10).await;
    // Drop tail's connection (a token change and back), then send while it
    // is away: it must come back with since=<last seq + 1>.
    ch.handle.set_token(Secret::new("interim-token-0123"));
    ch.handle.set_token(Secret::new(TOKEN));
    poll("tail disconnected", || (ch.handle.connections() == 0).then_some(())).await;
    sent.extend(ch.send(10).await);
    poll("tail reconnected", || (ch.handle.connections() == 1).then_some(())).await;
    sent.extend(ch.send(10).await);
    take(&mut lines, &mut printed, 30).await;
    assert_eq!(printed, sent, "every record once, in order, across the reconnect");
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(status.status.success(), "{status:?}");
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(err.contains("reconnecting"), "{err}");
    assert!(!err.contains(TOKEN), "the token is never printed: {err}");
}

#[tokio::test]
async fn a_client_offering_permessage_deflate_is_served_uncompressed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut ch = Chan::start("").await;
    let mut req = ch.url(&format!("/stream?key={TOKEN}")).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
    assert!(resp.headers().get("sec-websocket-extensions").is_none(), "the extension is declined");
    poll("connection registered", || (ch.handle.connections() == 1).then_some(())).await;
    let ids = ch.send(2).await;
    let (_, got) = read_records(&mut ws, 2).await;
    assert_eq!(got, ids);
}

/// Every record of the channel and the archive carries the bridge's
/// top-level `host`: the configured one, and the machine's host name by
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_and_archived_record_carries_the_bridge_host() {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let archive = "[file_output]\npath = \"{dir}/out.ndjson\"\nfsync_interval_ms = 20\n";
    for (top, host) in [("host = \"tm-dc1-07\"", "tm-dc1-07"), ("", machine.as_str())] {
        let mut bridge = Bridge::start_with(top, archive);
        let mut ws = connect(&bridge.url(TOKEN)).await;
        let ids = uuids("host", 30);
        bridge.append(&ids);
        let mut seen = Vec::new();
        while seen.len() < ids.len() {
            if let Event::Data(v) = next_event(&mut ws).await {
                for r in v["data"].as_array().expect("data array") {
                    assert_eq!(r["host"], host, "channel record {r}");
                    seen.push(r["request_uuid"].as_str().unwrap().to_string());
                }
            }
        }
        assert_eq!(seen, ids);
        let out = bridge.dir.path().join("out.ndjson");
        let archived: Vec<Value> = poll("every record archived", || {
            let text = std::fs::read_to_string(&out).ok()?;
            let v: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            (v.len() >= ids.len()).then_some(v)
        })
        .await;
        for r in &archived {
            assert_eq!(r["host"], host, "archived record {r}");
        }
        assert!(bridge.terminate().success());
    }
}

/// `[channel] mask_keep` masks every field a secret appears in (`uri`,
/// `request_id`, `referrer`, percent-encoded too), under the same rule as
/// `[enrich]`'s keys: no channel record carries a key or a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_keep_leaves_the_key_in_no_field_of_any_channel_record() {
    let bridge = Bridge::start_full("", "mask_keep = 2", "");
    let mut ws = connect(&bridge.url(TOKEN)).await;
    let lines = crate::enrich::secret_lines(60);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(bridge.log()).unwrap();
        f.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    }
    let mut seen = 0;
    while seen < lines.len() {
        match next_event(&mut ws).await {
            Event::Data(v) => {
                for r in v["data"].as_array().expect("data array") {
                    crate::enrich::assert_masked(r, 2);
                    seen += 1;
                }
            }
            Event::Text(_) | Event::Ping => {}
            Event::Closed(c) => panic!("closed after {seen} records: {c:?}"),
        }
    }
}

/// A subscription upgraded by hand on a socket with a small receive
/// buffer (a client that does not read fills it at once).
async fn raw_subscriber(addr: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr.parse().unwrap()).await.unwrap();
    let req = format!(
        "GET /stream?key={TOKEN} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "the server closed during the handshake");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Clients with a valid token that flood the bridge and never read:
/// masked pings (125 bytes, in blocks of 500 frames) and 60 KiB text
/// frames (each answered with `Response To ...`). What each connection
/// holds stays within the channel's stated per-connection bound
/// (`CONNECTION_MEMORY_BYTES`): the bridge answers only the latest ping
/// and stops reading from a client whose answers are not drained; and it
/// goes on serving the other clients meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_flooding_pings_and_text_without_reading_stay_within_the_connection_bound() {
    use tokio::io::AsyncWriteExt;
    let bridge = Bridge::start_with("memory_max_bytes = 4194304", "");
    let pid = bridge.child.id();
    let anon = || support::proc_status_bytes(pid, "VmRSS").saturating_sub(support::proc_status_bytes(pid, "RssFile"));
    let mut ws = connect(&bridge.url(TOKEN)).await;
    bridge.append(&uuids("before", 10));
    read_records(&mut ws, 10).await;
    let baseline = anon();
    let pings: Vec<u8> = (0..500).flat_map(|_| crate::hostile_net::masked(0x9, &[b'p'; 125])).collect();
    let texts = crate::hostile_net::masked(0x1, &vec![b't'; 60 << 10]);
    let mut flooders = Vec::new();
    for block in [pings, texts] {
        let mut s = raw_subscriber(&bridge.addr).await;
        flooders.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while s.write_all(&block).await.is_ok() {
                sent += block.len();
            }
            sent
        }));
    }
    // Budget (4 MiB) aside, two connections may hold their bound each;
    // the allocator keeps a little more than what is live.
    let bound = 2 * channel::CONNECTION_MEMORY_BYTES as u64 + (4 << 20);
    let started = Instant::now();
    let mut peak = 0;
    let mut served = false;
    while started.elapsed() < Duration::from_secs(8) {
        let grown = anon().saturating_sub(baseline);
        peak = peak.max(grown);
        if grown > bound + (256 << 20) {
            break;
        }
        if !served && started.elapsed() > Duration::from_secs(2) {
            // The others are served meanwhile.
            let ids = uuids("during", 10);
            bridge.append(&ids);
            assert_eq!(read_records(&mut ws, 10).await.1, ids);
            served = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in &flooders {
        f.abort();
    }
    eprintln!("flood: the bridge's memory grew by {} KiB at most (bound {} KiB)", peak >> 10, bound >> 10);
    assert!(peak <= bound, "the bridge's memory grew by {} MiB under the flood (bound {} MiB)", peak >> 20, bound >> 20);
    assert!(served, "the other client was served during the flood");
}
