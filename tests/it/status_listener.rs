//! The status listener answers every request: thousands of requests from
//! several clients (fresh connections, keep-alive connections, a client
//! that connects before it has its request ready (not under the flood), `lag`) while records
//! flow, before and after the listener sat idle longer than its idle
//! timeout, and while a flood of idle connections holds more sockets than
//! its cap. Not one request may go unanswered. `lag` retries once when a
//! connection closes without an answer, and wants a unit on `--max-lag`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;

/// Generous bound for anything that should happen "at once".
const DEADLINE: Duration = Duration::from_secs(20);

/// The status listener's idle timeout (`telemetry::server::IDLE_TIMEOUT`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sockets the status listener keeps open at most
/// (`telemetry::server::MAX_CONNECTIONS`).
const STATUS_CAP: usize = 128;

/// A bridge following a log that `simulate` writes to all along, with a
/// channel (so the records go somewhere) and a status listener on
/// 127.0.0.1:0; both killed on drop.
struct Bridge {
    child: Child,
    writer: Child,
    dir: tempfile::TempDir,
}

impl Bridge {
    fn start() -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("token"), "status-listener-token-5d0c9e\n").unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let cfg = format!(
            "state_dir = {state:?}\nlog_level = \"info\"\n[[source]]\npaths = [{glob:?}]\nformat = \"le6\"\n\
             [channel]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n[status]\nlisten = \"127.0.0.1:0\"\n",
            state = p("state"),
            glob = p("logs/access.log*"),
            token = p("token"),
        );
        std::fs::write(dir.path().join("bridge.toml"), cfg).unwrap();
        // The first lines before the bridge starts (its glob must match a file).
        let out = support::run(&["simulate", "--dir", &p("logs"), "--rate", "50", "--duration", "1", "--burst", "--seed", "1"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let child = support::spawn_bridge(&dir.path().join("bridge.toml"), &dir.path().join("bridge.log"));
        // Then records flow for as long as the test runs.
        let writer = support::cmd()
            .args(["simulate", "--dir", &p("logs"), "--rate", "300", "--duration", "0", "--seed", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Bridge { child, writer, dir };
        b.addr();
        b
    }

    fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.path("bridge.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The status listener's address, from `<state_dir>/status.addr`.
    fn addr(&self) -> String {
        let f = self.path("state/status.addr");
        support::poll_until(DEADLINE, "state/status.addr", || {
            std::fs::read_to_string(&f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        })
    }

    /// Records read so far (`/status` `totals.records`).
    fn records(&self) -> u64 {
        let (code, body) = get(&self.addr(), "/status", Duration::ZERO).expect("GET /status");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["totals"]["records"].as_u64().unwrap()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for c in [&mut self.writer, &mut self.child] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 GET on a new connection (`Connection: close`); when
/// `think` is not zero, the client connects, then waits that long before
/// it sends its request (as a browser's preconnected socket does).
/// (status, body), or what went wrong.
fn get(addr: &str, path: &str, think: Duration) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(10);
    let sa: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    if !think.is_zero() {
        std::thread::sleep(think);
    }
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    if out.is_empty() {
        return Err("closed without an answer (empty reply)".into());
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line: {text:.80?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The endpoints the clients take turns on (all answer 200 while the
/// bridge runs; `/readyz` may not, so it is left out).
const PATHS: [&str; 4] = ["/status", "/metrics", "/healthz", "/"];

/// Requests answered and the failures, over all clients.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, client: &str, path: &str, r: Result<u16, String>) {
        match r {
            Ok(200) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(code) => self.failed.lock().unwrap().push(format!("{client} {path}: HTTP {code}")),
            Err(e) => self.failed.lock().unwrap().push(format!("{client} {path}: {e}")),
        }
    }

    fn failed(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }
}

/// Several clients at once, `per_client` requests each: two open a new
/// connection per request, two keep one connection alive (reqwest's pool),
/// one runs `lag`, and with `preconnect` one connects 30 ms before it sends
/// (a browser's preconnect). Not under a flood of silent sockets above the
/// cap: a socket that says nothing is one of them until it speaks, closed
/// once the cap's worth of newer ones arrived (see `crate::listener`).
async fn clients(addr: &str, per_client: usize, preconnect: bool, tally: &Arc<Tally>) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..2 {
        let (addr, tally) = (addr.to_string(), tally.clone());
        tasks.spawn_blocking(move || {
            for i in 0..per_client {
                let path = PATHS[(i + c) % PATHS.len()];
                tally.record("fresh", path, get(&addr, path, Duration::ZERO).map(|(code, _)| code));
            }
        });
    }
    for c in 0..2 {
        let (addr, tally) = (addr.to_string(), tally.clone());
        tasks.spawn(async move {
            // Idle pooled connections are dropped before the server's idle
            // timeout could close them under a request.
            let client = reqwest::Client::builder().no_proxy().pool_idle_timeout(Duration::from_secs(10)).build().unwrap();
            for i in 0..per_client {
                let path = PATHS[(i + c) % PATHS.len()];
                let r = async {
                    let resp = client.get(format!("http://{addr}{path}")).send().await.map_err(|e| format!("{e:?}"))?;
                    let code = resp.status().as_u16();
                    resp.bytes().await.map_err(|e| format!("body: {e:?}"))?;
                    Ok(code)
                };
                tally.record("keep-alive", path, r.await);
            }
        });
    }
    if preconnect {
        let (addr, tally) = (addr.to_string(), tally.clone());
        tasks.spawn_blocking(move || {
            for i in 0..per_client / 20 {
                let path = PATHS[i % PATHS.len()];
                tally.record("preconnect", path, get(&addr, path, Duration::from_millis(30)).map(|(code, _)| code));
            }
        });
    }
    {
        let (addr, tally) = (addr.to_string(), tally.clone());
        tasks.spawn_blocking(move || {
            for _ in 0..per_client / 100 {
                tally.record("lag", "/status", lag(&addr));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// `lag --max-lag 1h` against `addr`: Ok(200) when it exits 0.
fn lag(addr: &str) -> Result<u16, String> {
    let out = support::run(&["lag", "--status-url", addr, "--max-lag", "1h"]);
    match out.status.code() {
        Some(0) => Ok(200),
        c => Err(format!("lag exited {c:?}: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// Holds `n` idle connections to `addr` open until `stop`: a third send
/// half a request head and nothing more; a connection the server closes
/// (to make room, or idle) is opened again.
fn idle_flood(addr: &str, n: usize, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..n)
        .map(|i| {
            let (addr, stop) = (addr.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut opened = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&addr)).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    opened += 1;
                    if i % 3 == 0 && s.write_all(b"GET /status HTTP/1.1\r\nX-Slow: ").await.is_err() {
                        continue;
                    }
                    let mut buf = [0u8; 64];
                    // Until the server closes it (or the flood ends).
                    loop {
                        tokio::select! {
                            r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                            _ = tokio::time::sleep(Duration::from_millis(100)) => if stop.load(Ordering::Relaxed) { break },
                        }
                    }
                    // A pause before the next one, as a real idle peer's
                    // reconnect would have; the flood stays above the cap.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                opened
            })
        })
        .collect()
}

fn assert_none_failed(tally: &Tally, bridge: &Bridge, phase: &str) {
    let failed = tally.failed();
    assert!(
        failed.is_empty(),
        "{phase}: {} of {} requests failed, first: {:#?}\nbridge log:\n{}",
        failed.len(),
        failed.len() as u64 + tally.ok.load(Ordering::Relaxed),
        &failed[..failed.len().min(10)],
        bridge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_listener_answers_every_request_after_idle_periods_and_under_an_idle_flood() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let bridge = Bridge::start();
    let addr = bridge.addr();
    support::poll_until(DEADLINE, "records read", || (bridge.records() > 0).then_some(()));
    let records_before = bridge.records();
    let tally = Arc::new(Tally::default());

    // 1. Several clients, no flood.
    clients(&addr, 1300, true, &tally).await;
    assert_none_failed(&tally, &bridge, "without a flood");

    // 2. The listener sits idle for longer than its idle timeout (a
    //    Prometheus scrape every minute): its next connection is new,
    //    and is answered, also when the request follows the connect by a
    //    moment; `lag` too.
    tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(3)).await;
    let started = Instant::now();
    let first = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || get(&addr, "/status", Duration::from_millis(100)).map(|(code, _)| code)
    })
    .await
    .unwrap();
    tally.record("after idle", "/status", first);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_none_failed(&tally, &bridge, "the first request after the listener sat idle");

    // 3. A flood of idle connections, more than the listener's cap, held
    //    open (and reopened when closed) while the clients run again.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = idle_flood(&addr, STATUS_CAP + 40, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    clients(&addr, 1300, false, &tally).await;
    stop.store(true, Ordering::Relaxed);
    let mut flood_opened = 0;
    for f in flood {
        flood_opened += f.await.unwrap();
    }
    assert_none_failed(&tally, &bridge, "under an idle flood");

    let answered = tally.ok.load(Ordering::Relaxed);
    assert!(answered >= 10_000, "only {answered} requests answered");
    assert!(flood_opened as usize > STATUS_CAP, "the flood opened only {flood_opened} connections");
    let records_after = bridge.records();
    assert!(records_after > records_before, "records flowed meanwhile ({records_before} then {records_after})");
    eprintln!("{answered} requests answered, none failed; the flood opened {flood_opened} connections; records {records_before} -> {records_after}");
}

/// A server at `lag`'s `--status-url` that closes its first `drop_first`
/// connections without an answer (after reading the request) and answers
/// the next ones with a status document; returns how many it accepted.
async fn flaky_status(listener: tokio::net::TcpListener, drop_first: usize, stop: Arc<AtomicBool>) -> usize {
    let doc = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/telemetry/status.json")).unwrap();
    let mut accepted = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await else { continue };
        accepted += 1;
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req).await;
        if accepted <= drop_first {
            continue; // dropped: closed without an answer
        }
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", doc.len());
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&doc).await;
    }
    accepted
}

/// Runs `lag --status-url URL ARGS` against a [`flaky_status`] server.
async fn lag_against_flaky(drop_first: usize, args: &[&str]) -> (std::process::Output, usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(flaky_status(listener, drop_first, stop.clone()));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || support::cmd().args(["lag", "--status-url", &url]).args(&args).output().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    (out, server.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_retries_once_when_a_connection_closes_without_an_answer() {
    // One connection lost: the retry gets the document.
    let (out, accepted) = lag_against_flaky(1, &["--json"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(accepted, 2);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["totals"]["records"], 6);
    // Two in a row: reported (exit 1, the reason), after exactly one retry.
    let (out, accepted) = lag_against_flaky(2, &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/status"), "{err}");
    assert_eq!(accepted, 2);
}

#[test]
fn max_lag_needs_a_unit() {
    // An address nothing listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = support::run(&["lag", "--status-url", &addr, "--max-lag", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("--max-lag: `5` has no unit: write `5s` for seconds"), "{err}");
    let out = support::run(&["lag", "--status-url", &addr, "--max-lag", "5s"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
