//! The channel's replay log on disk, through the real binary: `since`
//! across a SIGTERM restart and a kill -9, a torn segment tail, a stalled
//! client while 500,000 records flow (memory bound, closed only once it
//! falls out of the retention), and retention by bytes and by age.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support;

const TOKEN: &str = "replay-test-token-7c1e9a2b";
const DEADLINE: Duration = Duration::from_secs(30);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A short LE JSON access-log line; `UUID` is replaced.
const LINE: &str = r#"{"api_key":"k7q2mzp4rb9d3hxw8cyn5ta6","method":"GET","status":200,"request_time":"2018-11-19T16:01:41.250Z","request_uuid":"UUID","uri":"/v2/orders","src_ip":"203.0.113.7","exec_time":0.131}"#;

/// `GET url` over a plain socket (the tests run inside a runtime).
fn get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// A bridge (`run`) with a channel and `/status`, on a state directory that
/// outlives its processes.
struct Bridge {
    dir: tempfile::TempDir,
    child: Option<Child>,
    channel_extra: String,
}

impl Bridge {
    fn new(channel_extra: &str) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        Bridge { dir, child: None, channel_extra: channel_extra.to_string() }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn replay_dir(&self) -> PathBuf {
        self.state().join("replay")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bridge.log")).unwrap_or_default()
    }

    /// Starts `run` and waits for its listeners.
    fn start(&mut self) {
        let cfg = format!(
            r#"state_dir = "{state}"
[[source]]
paths = ["{logs}/access*.log"]
format = "le-json"
poll_interval_ms = 50
[channel]
listen = "127.0.0.1:0"
token = "{TOKEN}"
records_per_message = 50
{extra}
[status]
listen = "127.0.0.1:0"
"#,
            state = self.state().display(),
            logs = self.dir.path().join("logs").display(),
            extra = self.channel_extra,
        );
        let cfg_path = self.dir.path().join("config.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        for f in ["channel.addr", "status.addr"] {
            let _ = std::fs::remove_file(self.state().join(f));
        }
        self.child = Some(support::spawn_bridge(&cfg_path, &self.dir.path().join("bridge.log")));
        self.channel_addr();
        self.status_url();
    }

    fn addr(&self, file: &str) -> String {
        let path = self.state().join(file);
        support::poll_until(DEADLINE, file, || std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
    }

    fn channel_addr(&self) -> String {
        self.addr("channel.addr")
    }

    fn status_url(&self) -> String {
        format!("http://{}", self.addr("status.addr"))
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/stream?key={TOKEN}{query}", self.channel_addr())
    }

    fn channel_status(&self) -> Value {
        let (code, body) = get(&format!("{}/status", self.status_url()));
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["channel"].clone()
    }

    /// Waits until the channel has numbered `last_seq`.
    fn wait_for_seq(&self, last_seq: u64) -> Value {
        support::poll_until(Duration::from_secs(120), &format!("channel last_seq {last_seq}"), || {
            let c = self.channel_status();
            (c["last_seq"].as_u64().unwrap_or(0) >= last_seq).then_some(c)
        })
    }

    /// Appends records `prefix-<from>..<to>` to the log file.
    fn append(&self, prefix: &str, range: std::ops::Range<usize>) {
        use std::io::Write;
        let path = self.dir.path().join("logs").join("access_worker1.log");
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        for i in range {
            writeln!(w, "{}", LINE.replace("UUID", &format!("{prefix}-{i:07}"))).unwrap();
        }
        w.flush().unwrap();
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn sigterm(&mut self) {
        if let Some(mut c) = self.child.take() {
            let st = support::terminate(&mut c, DEADLINE);
            assert!(st.success(), "run exit: {st:?}\n{}", self.stderr());
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.replay_dir()).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn connect(url: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads `n` records: their seqs and request_uuids.
async fn read_records(ws: &mut Ws, n: usize) -> (Vec<u64>, Vec<String>) {
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    while ids.len() < n {
        match tokio::time::timeout(DEADLINE, ws.next()).await.expect("records within the deadline") {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v.get("lost").is_some() {
                    panic!("unexpected lost notice: {v}");
                }
                let data = v["data"].as_array().expect("data array");
                let last = v["seq"].as_u64().expect("seq");
                for (i, r) in data.iter().enumerate() {
                    seqs.push(last - (data.len() - 1 - i) as u64);
                    ids.push(r["request_uuid"].as_str().unwrap().to_string());
                }
            }
            Some(Ok(Message::Close(f))) => panic!("closed after {} of {n} records: {f:?}", ids.len()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("read failed after {} of {n}: {e}", ids.len()),
            None => panic!("ended after {} of {n}", ids.len()),
        }
    }
    (seqs, ids)
}

/// Nothing more arrives for a moment (no duplicate after the last record).
async fn nothing_more(ws: &mut Ws) {
    let end = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(t)))) => panic!("unexpected message: {t}"),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("stream ended: {other:?}"),
        }
    }
}

fn uuids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:07}")).collect()
}

fn strictly_increasing(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[1] > w[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_survives_a_sigterm_restart_exactly_once_and_in_order() {
    let mut b = Bridge::new("");
    b.start();
    b.append("a", 0..300);
    b.wait_for_seq(300);
    b.sigterm();
    // The records of the first run are in the log on disk.
    assert!(!b.segments().is_empty());
    b.start();
    b.append("b", 0..200);
    b.wait_for_seq(500);
    let mut ws = connect(&b.url("&since=1")).await;
    let (seqs, ids) = read_records(&mut ws, 500).await;
    let want: Vec<String> = uuids("a", 0..300).into_iter().chain(uuids("b", 0..200)).collect();
    assert_eq!(ids, want, "every record from before and after the restart, once, in order");
    // A clean shutdown continues the numbering without a jump.
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    // Live records follow the replay.
    b.append("c", 0..10);
    let (seqs2, ids2) = read_records(&mut ws, 10).await;
    assert_eq!(ids2, uuids("c", 0..10));
    assert_eq!(seqs2.first(), Some(&501));
    nothing_more(&mut ws).await;
    let c = b.channel_status();
    assert_eq!(c["replay_records"], 510, "{c}");
    assert_eq!(c["replay_first_seq"], 1, "{c}");
    assert!(c["replay_bytes"].as_u64().unwrap() > 510 * 300, "{c}");
    // The reconnect from the middle gets the rest, once.
    drop(ws);
    let mut ws = connect(&b.url("&since=250")).await;
    let (seqs, ids) = read_records(&mut ws, 261).await;
    assert_eq!(seqs, (250..=510).collect::<Vec<u64>>());
    assert_eq!(ids[..251], want[249..]);
    assert_eq!(ids[251..], uuids("c", 0..10)[..]);
    nothing_more(&mut ws).await;
    b.sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_survives_a_kill_with_no_sequence_number_used_twice() {
    let mut b = Bridge::new("");
    b.start();
    b.append("a", 0..400);
    b.wait_for_seq(400);
    b.kill9();
    b.start();
    b.append("b", 0..100);
    support::poll_until(DEADLINE, "the new records", || {
        let c = b.channel_status();
        (c["replay_records"].as_u64().unwrap_or(0) >= 500).then_some(())
    });
    let mut ws = connect(&b.url("&since=1")).await;
    // After a kill, the tailer may read records again whose checkpoint had
    // not advanced (at-least-once), and those can be in the log before the
    // second run's: read what the log holds until every `b` came.
    let (mut seqs, mut ids) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + DEADLINE;
    while ids.iter().filter(|i: &&String| i.starts_with("b-")).count() < 100 {
        assert!(std::time::Instant::now() < deadline, "the second run's records did not all come: {:?}", b.channel_status());
        let n = b.channel_status()["replay_records"].as_u64().unwrap_or(0) as usize;
        if n > seqs.len() {
            let (s, i) = read_records(&mut ws, n - seqs.len()).await;
            seqs.extend(s);
            ids.extend(i);
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert!(strictly_increasing(&seqs), "no sequence number twice, in order");
    assert_eq!(seqs[..400], (1..=400).collect::<Vec<u64>>()[..], "the first run's records, as numbered then");
    assert_eq!(ids[..400], uuids("a", 0..400)[..]);
    // The second run numbers after the first run's reservation.
    assert!(seqs[400] > 400, "{}", seqs[400]);
    let mut seen_b: Vec<&String> = ids.iter().filter(|i| i.starts_with("b-")).collect();
    seen_b.dedup();
    assert_eq!(seen_b.len(), 100, "every record of the second run");
    nothing_more(&mut ws).await;
    b.sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_segment_tail_is_truncated_counted_and_logged() {
    let mut b = Bridge::new("");
    b.start();
    b.append("a", 0..100);
    b.wait_for_seq(100);
    b.kill9();
    // What a kill in the middle of a write leaves: half a record.
    let seg = b.segments().pop().unwrap();
    let whole = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 1, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
    }
    b.start();
    let c = b.channel_status();
    assert_eq!(c["replay_repaired_segments"], 1, "{c}");
    assert_eq!(c["replay_repaired_bytes"], 11, "{c}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
    let log = b.stderr();
    assert!(log.contains("replay log segment truncated to its last whole record"), "{log}");
    let mut ws = connect(&b.url("&since=1")).await;
    let (seqs, ids) = read_records(&mut ws, 100).await;
    assert_eq!(ids, uuids("a", 0..100));
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    b.sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_bytes_and_by_age_removes_old_segments() {
    // 256 KiB in 32 KiB segments.
    let mut b = Bridge::new("replay_max_bytes = 262144\nreplay_max_age_secs = 2");
    b.start();
    b.append("a", 0..3000);
    b.wait_for_seq(3000);
    let c = b.channel_status();
    let bytes = c["replay_bytes"].as_u64().unwrap();
    assert!(bytes <= 262_144 + 32_768 && bytes > 100_000, "{c}");
    let on_disk: u64 = b.segments().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(on_disk, bytes, "the figure is the files");
    assert_eq!(c["replay_segments"].as_u64().unwrap(), b.segments().len() as u64);
    let first = c["replay_first_seq"].as_u64().unwrap();
    assert!(first > 1, "{c}");
    // A client asking for what is gone is told, then gets the rest.
    let mut ws = connect(&b.url("&since=1")).await;
    let notice = match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(notice["first_available"], first, "{notice}");
    assert_eq!(notice["lost"], first - 1, "{notice}");
    let (seqs, _) = read_records(&mut ws, (3001 - first) as usize).await;
    assert_eq!(seqs.first(), Some(&first));
    drop(ws);
    // By age: two seconds after the last record everything goes, the
    // numbering goes on.
    // The figures are published after the files go: wait for both.
    let c = support::poll_until(DEADLINE, "segments aged out, on disk and in /status", || {
        let c = b.channel_status();
        (b.segments().is_empty() && (c["replay_segments"].as_u64(), c["replay_bytes"].as_u64()) == (Some(0), Some(0))).then_some(c)
    });
    assert_eq!(c["replay_first_seq"], 3001, "{c}");
    b.append("b", 0..5);
    b.wait_for_seq(3005);
    let mut ws = connect(&b.url("&since=3001")).await;
    let (seqs, ids) = read_records(&mut ws, 5).await;
    assert_eq!(seqs, (3001..=3005).collect::<Vec<u64>>());
    assert_eq!(ids, uuids("b", 0..5));
    b.sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_costs_no_memory_and_is_closed_only_out_of_retention() {
    const TOTAL: usize = 500_000;
    const CHUNK: usize = 10_000;
    // 32 MiB of retention (4 MiB segments): about 100,000 short records.
    let mut b = Bridge::new("replay_max_bytes = 33554432");
    b.start();
    let pid = b.pid();
    // The stalled client: a small receive buffer, never reads.
    let addr: std::net::SocketAddr = b.channel_addr().parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(b.url(""), tcp).await.unwrap();
    support::poll_until(DEADLINE, "the client registered", || (b.channel_status()["connections"] == 1).then_some(()));
    // Paced in chunks the bridge keeps up with, so the figures are the
    // channel's and not the tailer's read-ahead.
    let mut written = 0usize;
    let mut rss_within_retention = 0;
    while written < TOTAL {
        b.append("s", written..written + CHUNK);
        written += CHUNK;
        let c = b.wait_for_seq(written as u64);
        let closed = c["closed"]["slow_consumer"].as_u64().unwrap();
        let first = c["replay_first_seq"].as_u64().unwrap();
        if first <= 2 {
            // Everything the client has not read is still in the log: far
            // behind (its socket buffers hold a few KB), but open.
            assert_eq!(closed, 0, "closed while within the retention: {c}");
            assert_eq!(c["connections"], 1, "{c}");
            rss_within_retention = support::proc_status_bytes(pid, "VmRSS");
        }
    }
    assert!(rss_within_retention > 0, "the log held the first records for a while");
    let c = support::poll_until(DEADLINE, "the stalled client closed", || {
        let c = b.channel_status();
        (c["closed"]["slow_consumer"] == 1).then_some(c)
    });
    assert_eq!(c["connections"], 0, "{c}");
    assert!(c["replay_bytes"].as_u64().unwrap() <= 32 * 1024 * 1024 + 4 * 1024 * 1024, "{c}");
    let (rss, hwm) = (support::proc_status_bytes(pid, "VmRSS"), support::proc_status_bytes(pid, "VmHWM"));
    eprintln!("stalled client, {TOTAL} records: RSS {} MiB, peak {} MiB, replay log {c}", rss >> 20, hwm >> 20);
    // The bound: this debug build settles at 75-115 MiB for the whole
    // pipeline at this rate (tailer, parser, telemetry windows), the same
    // with or without the client; the old in-memory ring alone held
    // 100,000 records (~100 MB more at this record size). Now the log is
    // on disk and the stalled client costs at most one read chunk.
    assert!(hwm < 144 << 20, "peak RSS {} MiB", hwm >> 20);
    // The client finds what its socket held, then the documented close
    // (the close frame itself only when it fitted behind the unread data
    // within the close timeout: a stalled client may never take it; the
    // reason is counted above either way).
    let closed = loop {
        match tokio::time::timeout(DEADLINE, stalled.next()).await.expect("stream ends") {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    if let Some(f) = closed {
        assert_eq!((f.code, f.reason.as_str()), (CloseCode::Again, "slow consumer"));
    }
    b.sigterm();
}

/// The deprecated keys are accepted, and said so at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_replay_keys_start_with_a_warning() {
    let mut b = Bridge::new("replay_records = 1000\nsend_queue_bytes = 8388608");
    b.start();
    let log = b.stderr();
    assert!(log.contains("channel.replay_records is deprecated: replay_records = 1000 is read as replay_max_bytes = 2048000"), "{log}");
    assert!(log.contains("channel.send_queue_bytes is deprecated and ignored"), "{log}");
    b.sigterm();
}

/// The records of a segment file as written: (offset, end, seq), read
/// with the layout of `sink/channel/replay.rs` (len, crc, then a body
/// starting with the seq).
fn segment_records(path: &std::path::Path) -> Vec<(u64, u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= bytes.len() {
        // The body's length (its high bit marks the record format).
        let len = (u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) & 0x7fff_ffff) as usize;
        let seq = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().unwrap());
        out.push((off as u64, (off + 8 + len) as u64, seq));
        off += 8 + len;
    }
    out
}

/// Reads messages until `n` records came; returns (seq, request_uuid) of
/// each record and every notice (a message without `seq`).
async fn read_with_notices(ws: &mut Ws, n: usize) -> (Vec<(u64, String)>, Vec<Value>) {
    let mut records = Vec::new();
    let mut notices = Vec::new();
    while records.len() < n {
        match tokio::time::timeout(DEADLINE, ws.next()).await.expect("a message within the deadline") {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let data = v["data"].as_array().expect("data array").clone();
                match v["seq"].as_u64() {
                    None => {
                        assert!(data.is_empty(), "a notice has no records: {v}");
                        notices.push(v);
                    }
                    Some(last) => {
                        for (i, r) in data.iter().enumerate() {
                            records.push((last - (data.len() - 1 - i) as u64, r["request_uuid"].as_str().unwrap().to_string()));
                        }
                    }
                }
            }
            Some(Ok(Message::Close(f))) => panic!("closed after {} of {n} records: {f:?}; notices {notices:?}", records.len()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("read failed after {} of {n}: {e}", records.len()),
            None => panic!("ended after {} of {n}", records.len()),
        }
    }
    (records, notices)
}

/// `subscribe` from `since` for `count` records, without reconnecting:
/// (exit code, printed request_uuids, stderr).
async fn subscribe(url: String, count: usize) -> (Option<i32>, Vec<String>, String) {
    let out = tokio::task::spawn_blocking(move || {
        let mut child = support::cmd()
            .args(["subscribe", &url, "--no-reconnect", "--count", &count.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Its output is larger than a pipe holds: read it meanwhile.
        let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut v).map(|_| v)
        });
        let err = std::thread::spawn(move || std::io::read_to_string(&mut stderr));
        let deadline = std::time::Instant::now() + DEADLINE * 2;
        let ended = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (ended, out.join().unwrap().unwrap(), err.join().unwrap().unwrap())
    })
    .await
    .unwrap();
    let Some(status) = out.0 else { return (None, Vec::new(), format!("subscribe did not end: {}", out.2)) };
    let out = std::process::Output { status, stdout: out.1, stderr: out.2.into_bytes() };
    let ids = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["request_uuid"].as_str().unwrap().to_string())
        .collect();
    (out.status.code(), ids, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// 4 KB of garbage in the middle of a segment, on disk only (behind the
/// hot tail): every client gets every good record, in order, and one
/// exact `lost` notice for the records the garbage destroyed, while the
/// bridge runs (it skips past the bad bytes to the next good record) and
/// after a restart (the repair knows the gap by sequence numbers); the
/// `subscribe` client gets there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_segment_gives_every_good_record_and_an_exact_lost_notice_before_and_after_a_restart() {
    const N: usize = 5000;
    let mut b = Bridge::new("");
    b.start();
    b.append("a", 0..N);
    b.wait_for_seq(N as u64);
    let seg = b.segments().pop().unwrap();
    let records = segment_records(&seg);
    assert_eq!(records.len(), N);
    // A quarter in: older than the 2 MiB kept in memory.
    let at = std::fs::metadata(&seg).unwrap().len() / 4;
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.seek(std::io::SeekFrom::Start(at)).unwrap();
        let mut x: u32 = 0x9e37_79b9;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        f.write_all(&garbage).unwrap();
    }
    let damaged: Vec<u64> = records.iter().filter(|(o, e, _)| *e > at && *o < at + 4096).map(|r| r.2).collect();
    let (first, last) = (damaged[0], *damaged.last().unwrap());
    assert_eq!(damaged, (first..=last).collect::<Vec<u64>>());
    let lost = last - first + 1;
    let good: Vec<(u64, String)> = (1..=N as u64).filter(|s| !damaged.contains(s)).map(|s| (s, format!("a-{:07}", s - 1))).collect();
    let expected_notice = |since: u64| serde_json::json!({"data": [], "lost": last + 1 - since, "since": since, "first_available": last + 1, "next": last + 1});

    for run in ["running", "after a restart"] {
        // From the start: everything but the damaged records, and the notice where they were.
        let mut ws = connect(&b.url("&since=1")).await;
        let (got, notices) = read_with_notices(&mut ws, good.len()).await;
        assert_eq!(got, good, "{run}: every good record, once, in order");
        assert_eq!(notices, vec![expected_notice(first)], "{run}");
        nothing_more(&mut ws).await;
        // From inside the damage: the notice first.
        let mut ws = connect(&b.url(&format!("&since={}", first + 1))).await;
        let (got, notices) = read_with_notices(&mut ws, 10).await;
        assert_eq!(notices, vec![expected_notice(first + 1)], "{run}");
        assert_eq!(got[..10], good[first as usize - 1..first as usize + 9], "{run}");
        // `subscribe` gets every good record and says how many were lost.
        let (code, ids, err) = subscribe(b.url("&since=1"), good.len()).await;
        assert_eq!(code, Some(0), "{run}: {err}");
        assert_eq!(ids, good.iter().map(|g| g.1.clone()).collect::<Vec<_>>(), "{run}: {err}");
        assert!(err.contains(&format!("{lost} records are no longer available")), "{run}: {err}");
        let c = b.channel_status();
        assert_eq!(c["closed"]["replay_error"], 0, "{run}: {c}");
        assert_eq!(c["replay_damaged_records"], lost, "{run}: {c}");
        if run == "running" {
            b.sigterm();
            b.start();
        }
    }
    let log = b.stderr();
    assert!(log.contains(&format!("records {first}..={last}")), "{log}");
    b.sigterm();
}

/// The replay directory removed while the bridge runs: it is made again,
/// the channel's fault (if any) clears by itself, and a client asking from
/// the start is told exactly what went with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_directory_deleted_while_running_is_made_again_and_no_fault_stays() {
    // 128 KiB segments: new ones every ~140 records.
    let mut b = Bridge::new("replay_max_bytes = 1048576");
    b.start();
    b.append("a", 0..200);
    b.wait_for_seq(200);
    std::fs::remove_dir_all(b.replay_dir()).unwrap();
    support::poll_until(DEADLINE, "the replay directory made again", || b.replay_dir().is_dir().then_some(()));
    b.append("b", 0..300);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let st = {
            let (code, body) = get(&format!("{}/status", b.status_url()));
            assert_eq!(code, 200);
            serde_json::from_str::<Value>(&body).unwrap()
        };
        if st["channel"]["last_seq"] == 500 && st["faults"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the channel did not recover: {}\n{}", st["faults"], b.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b.segments().is_empty(), "new segments in the new directory");
    let mut ws = connect(&b.url("&since=1")).await;
    let (got, notices) = read_with_notices(&mut ws, 300).await;
    assert_eq!(notices, vec![serde_json::json!({"data": [], "lost": 200, "since": 1, "first_available": 201, "next": 201})]);
    assert_eq!(got, (0..300).map(|i| (201 + i as u64, format!("b-{i:07}"))).collect::<Vec<_>>());
    nothing_more(&mut ws).await;
    b.sigterm();
}

/// A subscription without `since` starts at the live head; one with a
/// `since` above the newest sequence number (a number from another
/// history: before a `reset-state`, another bridge) is told so first, then
/// gets the live records; `subscribe` honours a `since=` in its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_from_another_history_gets_a_notice_and_subscribe_honours_since_in_its_url() {
    let mut b = Bridge::new("");
    b.start();
    b.append("a", 0..10);
    b.wait_for_seq(10);
    let mut ahead = connect(&b.url("&since=5000")).await;
    let mut live = connect(&b.url("")).await;
    support::poll_until(DEADLINE, "both registered", || (b.channel_status()["connections"] == 2).then_some(()));
    b.append("b", 0..3);
    let (got, notices) = read_with_notices(&mut ahead, 3).await;
    assert_eq!(notices, vec![serde_json::json!({"data": [], "since": 5000, "next": 11})]);
    assert_eq!(got, (0..3).map(|i| (11 + i as u64, format!("b-{i:07}"))).collect::<Vec<_>>());
    let (got, notices) = read_with_notices(&mut live, 3).await;
    assert!(notices.is_empty(), "{notices:?}");
    assert_eq!(got[0].0, 11, "live starts at the head");
    // `since=` in the URL.
    let (code, ids, err) = subscribe(b.url("&since=4"), 5).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(ids, (3..8).map(|i| format!("a-{i:07}")).collect::<Vec<_>>(), "{err}");
    // A since from another history is reported, and the live records follow.
    let url = b.url("&since=9000");
    let child = tokio::task::spawn_blocking(move || support::run_for(support::cmd().args(["subscribe", &url, "--count", "2"]), DEADLINE));
    support::poll_until(DEADLINE, "subscribe connected", || (b.channel_status()["connections"] == 3).then_some(()));
    b.append("c", 0..2);
    let out = child.await.unwrap().expect("subscribe ends after 2 records");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("9000") && err.contains("continuing from 14"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    b.sigterm();
}
