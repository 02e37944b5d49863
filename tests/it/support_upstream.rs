//! A test HTTP collector on `127.0.0.1:0` for the upstream sink: a small
//! HTTP/1.1 server (keep-alive, `Content-Length` bodies, gzip decoding)
//! that records every request and can inject failures: scripted statuses
//! (503, 429 with `Retry-After`, 400, ...), slow answers, connection
//! resets, 413 above a record limit, a poison record that gets 400, a
//! "down" switch that resets every connection, and collectors that judge
//! records one by one: Elasticsearch `_bulk` item statuses (429, 503, 400
//! per record, for a number of attempts) and Splunk HEC invalid events
//! (400 with `invalid-event-number`). `indexed_*` tell which records a
//! collector actually took.
//!
//! Also used by `benches/upstream.rs` (discard mode: count bytes only).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the collector does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body.
    Status(u16, String),
    /// 429 with `Retry-After: <value>`.
    RetryAfter(String),
    /// Wait this long, then answer 200.
    Slow(Duration),
    /// Reset the connection without answering.
    Reset,
    /// Answer this status with a body that never ends (chunks of 64 KiB
    /// until the client goes away).
    Endless(u16),
}

/// One request as received (body decoded).
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body after gzip decoding.
    pub body: Vec<u8>,
    /// The status answered (0 = reset).
    pub status: u16,
    /// When the request was complete.
    pub at: std::time::Instant,
}

/// Body format the collector parses to count records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// `{"data":[...]}`.
    Ecls,
    /// `_bulk` action/document pairs.
    Bulk,
    /// Concatenated HEC event objects.
    Hec,
}

/// Collector state shared with its tasks.
pub struct State {
    /// Faults for the next requests, in order.
    pub script: Mutex<VecDeque<Fault>>,
    /// Every request received.
    pub received: Mutex<Vec<Received>>,
    /// Reset every connection while set.
    pub down: AtomicBool,
    /// Answer 413 to requests holding more records than this (0 = no limit).
    pub max_records: AtomicUsize,
    /// A request holding a record with this request_uuid gets 400.
    pub poison_uuid: Mutex<Option<String>>,
    /// Discard mode (benchmarks): only count bytes, keep nothing.
    pub discard: bool,
    /// Body bytes received (discard mode).
    pub bytes: AtomicU64,
    /// Requests received.
    pub requests: AtomicU64,
    /// The body format (to count records).
    pub format: Format,
    /// Delay before every unscripted answer, in ms.
    pub delay_ms: AtomicU64,
    /// `_bulk` item statuses per request_uuid, one per attempt (then 201).
    pub item_statuses: Mutex<HashMap<String, VecDeque<u16>>>,
    /// HEC events (by request_uuid) refused as invalid, and how many more
    /// times.
    pub hec_invalid: Mutex<HashMap<String, usize>>,
    /// request_uuids the collector took (indexed), with repeats.
    pub indexed: Mutex<Vec<String>>,
    /// Answer every unscripted request with this status (0 = normally).
    pub fail_with: AtomicU16,
    /// 1: read requests and never answer; 2: answer 200 and drip the body
    /// a byte every 100 ms; 0: answer normally.
    pub stall: AtomicU8,
}

/// A running collector.
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<State>,
    /// Stops the server when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Collector {
    /// Starts a collector on its own thread and runtime.
    pub fn start(format: Format) -> Collector {
        Self::start_with(format, false)
    }

    /// A collector that only counts bytes (benchmarks).
    pub fn start_discarding(format: Format) -> Collector {
        Self::start_with(format, true)
    }

    fn start_with(format: Format, discard: bool) -> Collector {
        let state = Arc::new(State {
            script: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            max_records: AtomicUsize::new(0),
            poison_uuid: Mutex::new(None),
            discard,
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            format,
            delay_ms: AtomicU64::new(0),
            item_statuses: Mutex::new(HashMap::new()),
            hec_invalid: Mutex::new(HashMap::new()),
            indexed: Mutex::new(Vec::new()),
            fail_with: AtomicU16::new(0),
            stall: AtomicU8::new(0),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind collector");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("collector runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        acc = listener.accept() => {
                            let Ok((sock, _)) = acc else { continue };
                            let st = st.clone();
                            tokio::spawn(async move { let _ = serve(sock, st).await; });
                        }
                    }
                }
            });
        });
        Collector { addr, state, _stop: stop_tx }
    }

    /// The URL to POST to (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Queues faults for the next requests.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.script.lock().unwrap().extend(faults);
    }

    /// Resets every connection while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Answers every unscripted request with `status` (`None`: normally).
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.fail_with.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Never answers (`1`), drips a 200 answer a byte every 100 ms (`2`),
    /// or answers normally (`0`), from the next request on.
    pub fn set_stall(&self, mode: u8) {
        self.state.stall.store(mode, Ordering::SeqCst);
    }

    /// Waits this long before every unscripted answer.
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// 413 above this many records per request.
    pub fn set_max_records(&self, n: usize) {
        self.state.max_records.store(n, Ordering::SeqCst);
    }

    /// 400 for requests holding this request_uuid.
    pub fn set_poison(&self, uuid: &str) {
        *self.state.poison_uuid.lock().unwrap() = Some(uuid.to_string());
    }

    /// `_bulk`: answer these item statuses for the record `uuid`, one per
    /// attempt, then 201.
    pub fn item_statuses(&self, uuid: &str, statuses: &[u16]) {
        self.state.item_statuses.lock().unwrap().insert(uuid.to_string(), statuses.iter().copied().collect());
    }

    /// HEC: refuse the event `uuid` as invalid this many times (400 with
    /// `invalid-event-number`; the events before it are indexed, as HEC
    /// does).
    pub fn hec_invalid(&self, uuid: &str, times: usize) {
        self.state.hec_invalid.lock().unwrap().insert(uuid.to_string(), times);
    }

    /// request_uuids the collector took, with repeats.
    pub fn indexed_uuids(&self) -> Vec<String> {
        self.state.indexed.lock().unwrap().clone()
    }

    /// Distinct request_uuids the collector took.
    pub fn indexed_set(&self) -> std::collections::HashSet<String> {
        self.indexed_uuids().into_iter().collect()
    }

    /// All requests so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// request_uuids of every record in a 2xx-answered request, with
    /// repeats (a record delivered twice appears twice).
    pub fn delivered_uuids(&self) -> Vec<String> {
        let f = self.state.format;
        self.received().iter().filter(|r| (200..300).contains(&r.status)).flat_map(|r| uuids(f, &r.body)).collect()
    }

    /// Distinct delivered request_uuids.
    pub fn delivered_set(&self) -> std::collections::HashSet<String> {
        self.delivered_uuids().into_iter().collect()
    }
}

/// The documents (records) in a body of the given format.
pub fn documents(format: Format, body: &[u8]) -> Vec<serde_json::Value> {
    let text = std::str::from_utf8(body).expect("utf-8 body");
    match format {
        Format::Ndjson => text.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).expect("ndjson line")).collect(),
        Format::Ecls => {
            let v: serde_json::Value = serde_json::from_str(text).expect("ecls body");
            v["data"].as_array().expect("data array").clone()
        }
        Format::Bulk => {
            let lines: Vec<&str> = text.split_terminator('\n').collect();
            assert!(lines.len().is_multiple_of(2), "_bulk body has an odd number of lines");
            assert!(text.ends_with('\n'), "_bulk body must end with a newline");
            lines
                .chunks(2)
                .map(|p| {
                    let action: serde_json::Value = serde_json::from_str(p[0]).expect("action line");
                    let doc: serde_json::Value = serde_json::from_str(p[1]).expect("document line");
                    assert_eq!(action["index"]["_id"], doc["request_uuid"], "_id must be the request_uuid");
                    doc
                })
                .collect()
        }
        Format::Hec => serde_json::Deserializer::from_str(text)
            .into_iter::<serde_json::Value>()
            .map(|e| {
                let e = e.expect("HEC event object");
                assert!(e.get("event").is_some(), "HEC object without event: {e}");
                e["event"].clone()
            })
            .collect(),
    }
}

fn uuids(format: Format, body: &[u8]) -> Vec<String> {
    documents(format, body).iter().map(|d| d["request_uuid"].as_str().unwrap_or_default().to_string()).collect()
}

async fn serve(mut sock: TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        // Read a head.
        let (head_len, path, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let headers: HashMap<String, String> =
                    req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned())).collect();
                break (n, req.path.unwrap_or("/").to_string(), headers);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if st.down.load(Ordering::SeqCst) {
            sock.set_zero_linger()?;
            return Ok(());
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_len + len {
            let mut chunk = vec![0u8; (head_len + len - buf.len()).min(256 * 1024)];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let at = std::time::Instant::now();
        let raw: Vec<u8> = buf[head_len..head_len + len].to_vec();
        buf.drain(..head_len + len);
        st.requests.fetch_add(1, Ordering::Relaxed);
        if st.discard {
            st.bytes.fetch_add(len as u64, Ordering::Relaxed);
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
            continue;
        }
        let body = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)?;
            out
        } else {
            raw
        };
        match st.stall.load(Ordering::SeqCst) {
            1 => {
                // Hold the connection, never answer.
                let mut sink = [0u8; 4096];
                while sock.read(&mut sink).await? > 0 {}
                return Ok(());
            }
            2 => {
                st.received.lock().unwrap().push(Received { path, headers, body, status: 200, at });
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n").await?;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    sock.write_all(b"x").await?;
                }
            }
            _ => {}
        }
        let fault = st.script.lock().unwrap().pop_front();
        let n_records = || uuids(st.format, &body);
        let (status, extra, text): (u16, String, String) = match fault {
            Some(Fault::Reset) => {
                st.received.lock().unwrap().push(Received { path, headers, body, status: 0, at });
                sock.set_zero_linger()?;
                return Ok(());
            }
            Some(Fault::Status(s, t)) => (s, String::new(), t),
            Some(Fault::Endless(s)) => {
                st.received.lock().unwrap().push(Received { path, headers, body, status: s, at });
                sock.write_all(format!("HTTP/1.1 {s} X\r\ntransfer-encoding: chunked\r\n\r\n").as_bytes()).await?;
                let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
                chunk.extend(std::iter::repeat_n(b'x', 64 * 1024));
                chunk.extend_from_slice(b"\r\n");
                loop {
                    sock.write_all(&chunk).await?;
                }
            }
            Some(Fault::RetryAfter(v)) => (429, format!("retry-after: {v}\r\n"), "slow down".into()),
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                st.indexed.lock().unwrap().extend(n_records());
                (200, String::new(), "{}".into())
            }
            None if st.fail_with.load(Ordering::SeqCst) != 0 => (st.fail_with.load(Ordering::SeqCst), String::new(), "unavailable".into()),
            None => {
                let delay = st.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let ids = n_records();
                let max = st.max_records.load(Ordering::SeqCst);
                let poison = st.poison_uuid.lock().unwrap().clone();
                if max > 0 && ids.len() > max {
                    (413, String::new(), "request entity too large".into())
                } else if poison.is_some_and(|p| ids.contains(&p)) {
                    (400, String::new(), "{\"error\":\"mapper_parsing_exception: failed to parse field [bytes]\"}".into())
                } else if st.format == Format::Bulk {
                    (200, String::new(), bulk_answer(&st, &ids))
                } else if let Some(n) = hec_refusal(&st, &ids) {
                    st.indexed.lock().unwrap().extend(ids[..n].iter().cloned());
                    (400, String::new(), format!("{{\"text\":\"Invalid data format\",\"code\":6,\"invalid-event-number\":{n}}}"))
                } else {
                    st.indexed.lock().unwrap().extend(ids);
                    (200, String::new(), "{\"errors\":false}".into())
                }
            }
        };
        st.received.lock().unwrap().push(Received { path, headers, body, status, at });
        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n{text}", text.len());
        sock.write_all(resp.as_bytes()).await?;
    }
}

/// A `_bulk` answer with one item per record: the record's next scripted
/// status, else 201; records answered 2xx are indexed.
fn bulk_answer(st: &State, ids: &[String]) -> String {
    let mut scripted = st.item_statuses.lock().unwrap();
    let mut indexed = st.indexed.lock().unwrap();
    let mut errors = false;
    let items: Vec<String> = ids
        .iter()
        .map(|id| {
            let status = scripted.get_mut(id).and_then(VecDeque::pop_front).unwrap_or(201);
            if (200..300).contains(&status) {
                indexed.push(id.clone());
                format!("{{\"index\":{{\"_index\":\"calllogs\",\"_id\":\"{id}\",\"result\":\"created\",\"status\":{status}}}}}")
            } else {
                errors = true;
                let kind = if status == 429 { "es_rejected_execution_exception" } else { "mapper_parsing_exception" };
                format!(
                    "{{\"index\":{{\"_index\":\"calllogs\",\"_id\":\"{id}\",\"status\":{status},\"error\":{{\"type\":\"{kind}\",\"reason\":\"item {id} refused\"}}}}}}"
                )
            }
        })
        .collect();
    format!("{{\"took\":3,\"errors\":{errors},\"items\":[{}]}}", items.join(","))
}

/// HEC: the index of the first event still to be refused as invalid.
fn hec_refusal(st: &State, ids: &[String]) -> Option<usize> {
    if st.format != Format::Hec {
        return None;
    }
    let mut invalid = st.hec_invalid.lock().unwrap();
    let n = ids.iter().position(|id| invalid.get(id).is_some_and(|&t| t > 0))?;
    if let Some(t) = invalid.get_mut(&ids[n]) {
        *t -= 1;
    }
    Some(n)
}
