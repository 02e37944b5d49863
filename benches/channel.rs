//! Channel benchmarks: fan-out throughput, append-to-client latency, and
//! memory with a stalled client. `cargo bench --bench channel` prints the
//! figures (no harness).
//!
//! Everything runs in one process on loopback: the channel sink fed from
//! its queue (as the fan-out feeds it), and real WebSocket clients
//! (tokio-tungstenite) that count records and check the message `seq`s for
//! gaps. Clients and server share the machine's cores, so the figures are
//! a lower bound for the server alone.
//!
//! 1. Throughput: 5 clients, `records_per_message` = 50, the producer paced
//!    at 100,000 records/s with the default limits (a client that fell
//!    behind would be closed as a slow consumer: none may be); then the
//!    same unpaced (best effort), and unpaced with `records_per_message` = 1.
//! 2. Latency: 5 clients, `records_per_message` = 1, 1,000 records/s, one
//!    record per batch; each record carries its append instant, the client
//!    measures when its frame arrives: p50 / p99 / max.
//! 3. Memory: one client that never reads and one that does, 1,000,000
//!    records at full speed with the default replay log retention
//!    (256 MiB on disk): peak RSS, replay log bytes and segments, slow
//!    consumers closed (a stalled client reads from disk: none until it
//!    falls out of the retention).
//! 4. Channels per organization: 15 clients, `records_per_message` = 50,
//!    unpaced, on (a) the one default channel, (b) three
//!    `[[channel.stream]]` channels of 5 clients each whose `org_name`
//!    filters pass every record (the same deliveries as (a), plus three
//!    filters per record), (c) three channels of 5 clients each filtering
//!    one organization each (records of three organizations in turn). The
//!    channel runs on a runtime of its own (threads `chan-server`), the
//!    clients and the producer on another, so the CPU time counted
//!    (`/proc/self/task/*/stat` of the `chan-server` threads) is the
//!    server's alone: CPU per record per client (a record written to one
//!    client), the ratio of (b) to (a) (the filters' cost), and the peak
//!    RSS of the process (clients included). Best of two rounds.
//!
//! `RECORDS=n` changes the record count of the throughput runs (and of 4:
//! n / 2); `SECTIONS=4` (or `1,2`, ...) runs only those sections.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calllog_bridge::pipeline::{Batch, Fanout};
use calllog_bridge::record::{Field, Record};
use calllog_bridge::sink::channel::ChannelConfig;
use calllog_bridge::sink::channel::{self, ChannelHandle};
use calllog_bridge::sink::SinkContext;
use calllog_bridge::telemetry::Telemetry;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token-0123456789";

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let n: u64 = std::env::var("RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(500_000);
    // `SECTIONS=4` (or `1,2`): only these sections.
    let only = std::env::var("SECTIONS").ok();
    let runs = |k: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x.trim() == k));
    rt.block_on(async {
        println!("channel benchmark: {} CPUs, record size ~{} bytes (ecls JSON)", num_cpus(), record_json_len());
        // Memory first, in a fresh process, so RSS is not blurred by the
        // allocations of the other runs.
        if runs("3") {
            println!("3. memory with one stalled client (default replay log retention, 256 MiB on disk)");
            memory(1_000_000).await;
            println!();
        }
        if runs("1") {
            println!("1. throughput, 5 clients");
            throughput("paced 100,000 records/s, records_per_message=50, default limits", n, 50, Some(100_000), "").await;
            throughput("unpaced, records_per_message=50", n, 50, None, "replay_max_bytes = 4294967296").await;
            throughput("unpaced, records_per_message=1", n / 2, 1, None, "replay_max_bytes = 4294967296").await;
            println!();
        }
        if runs("2") {
            println!("2. append-to-client latency, 5 clients, records_per_message=1, 1,000 records/s");
            latency(10_000).await;
            println!();
        }
        if runs("4") {
            println!("4. channels per organization: 15 clients, records_per_message=50, unpaced");
            channels(n / 2).await;
        }
    });
}

/// A running channel fed through its queue.
struct Bench {
    handle: ChannelHandle,
    fanout: Fanout,
    _dir: tempfile::TempDir,
}

async fn start(extra: &str) -> Bench {
    start_on(&tokio::runtime::Handle::current(), extra).await
}

/// [`start`] with the channel's tasks on the runtime `rt`.
async fn start_on(rt: &tokio::runtime::Handle, extra: &str) -> Bench {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{extra}");
    let cfg: ChannelConfig = toml::from_str(&toml).expect("channel config");
    let ctx = SinkContext { state_dir: dir.path().to_path_buf(), shutdown: CancellationToken::new(), telemetry: Telemetry::new() };
    let (tx, rx) = mpsc::channel(calllog_bridge::sink::SINK_QUEUE_BATCHES);
    let (handle, _task) = rt.spawn(async move { channel::spawn(&cfg, &ctx, rx).await }).await.expect("spawn").expect("channel starts");
    let mut fanout = Fanout::new();
    fanout.add("channel", tx);
    Bench { handle, fanout, _dir: dir }
}

/// A realistic record whose values borrow leaked strings, so cloning it
/// costs the producer almost nothing; only `request_uuid` is owned.
fn template() -> Record<'static> {
    let mut r = Record::new_ml();
    let s = |v: &str| -> Cow<'static, str> { Cow::Borrowed(Box::leak(v.to_string().into_boxed_str())) };
    let values: &[(Field, &str)] = &[
        (Field::ApiKey, "k7q2mzp4rb9d3hxw8cyn5ta6"),
        (Field::ApiMethodName, "getOrder"),
        (Field::Bytes, "1874"),
        (Field::CacheHit, "0"),
        (Field::ClientTransferTime, "0.002"),
        (Field::ConnectTime, "0.012"),
        (Field::EndpointName, "Orders v2"),
        (Field::HttpMethod, "POST"),
        (Field::HttpStatusCode, "201"),
        (Field::HttpVersion, "HTTP/1.1"),
        (Field::OauthAccessToken, "-"),
        (Field::PackageName, "Retail"),
        (Field::PackageUuid, "3f1c2a9e-8b7d-4e6f-a5c4-1b2d3e4f5a6b"),
        (Field::PlanName, "Gold"),
        (Field::PlanUuid, "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"),
        (Field::PreTransferTime, "0.001"),
        (Field::QpsThrottleValue, "3"),
        (Field::QuotaValue, "17"),
        (Field::Referrer, "https://shop.example.com/cart"),
        (Field::RemoteTotalTime, "0.094"),
        (Field::RequestHostName, "api.example.com"),
        (Field::RequestId, "1542643301.250_k7q2mzp4rb9d3hxw8cyn5ta6_r2xk9fy4wq8bnc7tz6dd5ev3"),
        (Field::ResponseString, "201_Created_API"),
        (Field::ServiceDefinitionEndpointUuid, "q8w4e2r6t9y3u7i1o5p0a2s4"),
        (Field::ServiceId, "r2xk9fy4wq8bnc7tz6dd5ev3"),
        (Field::ServiceName, "Orders"),
        (Field::SrcIp, "203.0.113.7"),
        (Field::SslEnabled, "1"),
        (Field::TotalRequestExecTime, "0.131"),
        (Field::TrafficManager, "tm-deploy-0-5d5d885577-xsg5m"),
        (Field::TrafficManagerErrorCode, "-"),
        (Field::Uri, "/v2/orders?api_key=k7q2mzp4rb9d3hxw8cyn5ta6"),
        (Field::UserAgent, "Mozilla/5.0 (X11; Linux x86_64)"),
    ];
    for (f, v) in values {
        r.set(*f, s(v));
    }
    r.set_request_time_ms(1_542_643_301_250);
    r.stamp_observed(1_542_643_302_000);
    r
}

fn record_json_len() -> usize {
    let mut buf = Vec::new();
    template().write_json(calllog_bridge::record::Shape::Ecls, &mut buf);
    buf.len()
}

/// What one client saw.
#[derive(Default, Debug)]
struct Seen {
    /// Records received.
    records: u64,
    /// Records missing between consecutive messages (seq gaps).
    gaps: u64,
    /// First and last record arrival.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Latency samples (µs), when the records carry their append instant.
    latencies_us: Vec<u64>,
    /// How the connection ended early, if it did.
    closed: Option<String>,
}

/// Reads until `expect` records arrived (or the connection ends).
async fn client(url: String, expect: u64, base: Instant, measure_latency: bool) -> Seen {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("client connects");
    let finder = memchr::memmem::Finder::new(b"\"request_uuid\":\"");
    let mut seen = Seen::default();
    let mut next_seq: Option<u64> = None;
    while seen.records < expect {
        let m = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                seen.closed = Some(e.to_string());
                break;
            }
            Ok(None) => {
                seen.closed = Some("ended".into());
                break;
            }
            Err(_) => {
                seen.closed = Some("no data for 30 s".into());
                break;
            }
        };
        let t = match m {
            Message::Text(t) => t,
            Message::Close(f) => {
                seen.closed = Some(format!("closed: {f:?}"));
                break;
            }
            _ => continue,
        };
        let now = Instant::now();
        let bytes = t.as_bytes();
        let n = finder.find_iter(bytes).count() as u64;
        if n == 0 {
            continue;
        }
        let seq = parse_seq(bytes);
        if let (Some(exp), Some(s)) = (next_seq, seq) {
            let first = s + 1 - n;
            if first > exp {
                seen.gaps += first - exp;
            }
        }
        next_seq = seq.map(|s| s + 1);
        seen.records += n;
        seen.first.get_or_insert(now);
        seen.last = Some(now);
        if measure_latency {
            for pos in finder.find_iter(bytes) {
                let rest = &bytes[pos + 16..];
                // request_uuid = "bench-<µs since base>"
                if let Some(us) = rest.strip_prefix(b"bench-").and_then(|r| {
                    let end = r.iter().position(|c| !c.is_ascii_digit())?;
                    std::str::from_utf8(&r[..end]).ok()?.parse::<u64>().ok()
                }) {
                    let now_us = now.duration_since(base).as_micros() as u64;
                    seen.latencies_us.push(now_us.saturating_sub(us));
                }
            }
        }
    }
    seen
}

fn parse_seq(b: &[u8]) -> Option<u64> {
    let pos = memchr::memmem::rfind(b, b"\"seq\":")?;
    let rest = &b[pos + 6..];
    let end = rest.iter().position(|c| !c.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Sends `n` records in batches of `batch`, optionally paced at `rate`
/// records/s; `stamp` puts the append instant into `request_uuid`.
async fn produce(fanout: &Fanout, n: u64, batch: u64, rate: Option<u64>, base: Instant, stamp: bool) -> Duration {
    produce_orgs(fanout, n, batch, rate, base, stamp, &[]).await
}

/// [`produce`] with record i of organization `orgs[i % len]` (`org_name`).
async fn produce_orgs(
    fanout: &Fanout,
    n: u64,
    batch: u64,
    rate: Option<u64>,
    base: Instant,
    stamp: bool,
    orgs: &[&'static str],
) -> Duration {
    let t = template();
    let started = Instant::now();
    let mut sent = 0u64;
    let counter = Arc::new(AtomicU64::new(0));
    while sent < n {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let k = batch.min(n - sent);
        let mut records = Vec::with_capacity(k as usize);
        for i in 0..k {
            let mut r = t.clone();
            let id = if stamp { format!("bench-{}", base.elapsed().as_micros()) } else { format!("rec-{}", sent + i) };
            r.set(Field::RequestUuid, id);
            if !orgs.is_empty() {
                r.set(Field::OrgName, Cow::Borrowed(orgs[((sent + i) % orgs.len() as u64) as usize]));
            }
            records.push(r);
        }
        let c = counter.clone();
        let b = Batch::new(
            "bench".into(),
            records,
            calllog_bridge::time::now_ms(),
            Some(Box::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            })),
        );
        fanout.send(b).await.expect("channel running");
        sent += k;
    }
    started.elapsed()
}

async fn connect_clients(b: &Bench, k: usize, expect: u64, base: Instant, latency: bool) -> Vec<tokio::task::JoinHandle<Seen>> {
    connect_clients_with(b, TOKEN, k, expect, base, latency).await
}

/// [`connect_clients`] with the token `key` (a stream's).
async fn connect_clients_with(
    b: &Bench,
    key: &str,
    k: usize,
    expect: u64,
    base: Instant,
    latency: bool,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let url = format!("ws://{}/stream?key={key}", b.handle.local_addr());
    let before = b.handle.connections();
    let clients: Vec<_> = (0..k).map(|_| tokio::spawn(client(url.clone(), expect, base, latency))).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.handle.connections() < before + k {
        assert!(Instant::now() < deadline, "clients did not connect");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clients
}

async fn throughput(label: &str, n: u64, per_message: usize, rate: Option<u64>, extra: &str) {
    let b = start(&format!("records_per_message = {per_message}\nmax_connections = 5\n{extra}")).await;
    let base = Instant::now();
    let clients = connect_clients(&b, 5, n, base, false).await;
    let produce_time = produce(&b.fanout, n, 500, rate, base, false).await;
    let mut rates = Vec::new();
    let mut problems = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let s = c.await.expect("client task");
        let span = match (s.first, s.last) {
            (Some(f), Some(l)) if l > f => l.duration_since(f).as_secs_f64(),
            _ => f64::NAN,
        };
        rates.push(s.records as f64 / span);
        if s.records < n || s.gaps > 0 || s.closed.is_some() {
            problems.push(format!("client {i}: {} of {n} records, {} missing, {:?}", s.records, s.gaps, s.closed));
        }
    }
    let st = b.handle.stats();
    let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = rates.iter().cloned().fold(0.0, f64::max);
    println!(
        "   [load average {}] {label}: {n} records; producer {:.0} records/s; per client {:.0} .. {:.0} records/s; slow consumers closed {}; {}",
        loadavg(),
        n as f64 / produce_time.as_secs_f64(),
        min,
        max,
        st.closed_slow_consumer.get(),
        if problems.is_empty() { "no drops".to_string() } else { problems.join("; ") }
    );
    b.handle.shutdown();
}

async fn latency(n: u64) {
    let b = start("records_per_message = 1").await;
    let base = Instant::now();
    let clients = connect_clients(&b, 5, n, base, true).await;
    produce(&b.fanout, n, 1, Some(1_000), base, true).await;
    let mut all = Vec::new();
    for c in clients {
        let s = c.await.expect("client task");
        all.extend(s.latencies_us);
    }
    all.sort_unstable();
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0;
    println!(
        "   {} samples: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        all.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    b.handle.shutdown();
}

async fn memory(n: u64) {
    let b = start("records_per_message = 50").await;
    let base = Instant::now();
    let rss_before = rss_kib();
    // The stalled client: connects with a small receive buffer, never reads.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    let _ = sock.set_recv_buffer_size(4096);
    let tcp = sock.connect(b.handle.local_addr()).await.expect("connect");
    let url = format!("ws://{}/stream?key={TOKEN}", b.handle.local_addr());
    let (_stalled, _) = tokio_tungstenite::client_async(url, tcp).await.expect("stalled client connects");
    let reader = connect_clients(&b, 1, n, base, false).await.pop();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let t = produce(&b.fanout, n, 500, Some(100_000), base, false).await;
    let seen = match reader {
        Some(r) => r.await.expect("reader"),
        None => Seen::default(),
    };
    // Let the slow-consumer check run once more without traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sampler.abort();
    let rss_after = rss_kib();
    let st = b.handle.stats();
    println!(
        "   {n} records in {:.1} s; RSS before {} MiB, peak {} MiB, after {} MiB; replay log {} records, {} MiB in {} segments; slow consumers closed {}; reading client got {} records, {} missing",
        t.as_secs_f64(),
        rss_before / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        rss_after / 1024,
        st.replay_records.get(),
        st.replay_bytes.get() >> 20,
        st.replay_segments.get(),
        st.closed_slow_consumer.get(),
        seen.records,
        seen.gaps
    );
    b.handle.shutdown();
}

/// The organizations of section 4, and their streams' tokens.
const ORGS: [&str; 3] = ["Partner A", "Partner B", "Partner C"];
const STREAM_TOKENS: [&str; 3] = ["bench-partner-a-token-0123", "bench-partner-b-token-4567", "bench-partner-c-token-89ab"];

/// The three layouts of section 4.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// (a) The default channel, 15 clients.
    One,
    /// (b) Three streams whose filters pass every record, 5 clients each.
    ThreePassing,
    /// (c) Three streams of one organization each, 5 clients each.
    ThreeByOrg,
}

/// What one run of section 4 measured.
struct ChannelsRun {
    /// Records written to clients, all clients together.
    deliveries: u64,
    /// CPU seconds of the channel's threads.
    server_cpu: f64,
    /// Peak RSS of the process (KiB).
    peak_rss_kib: u64,
    problems: Vec<String>,
}

impl ChannelsRun {
    fn us_per_delivery(&self) -> f64 {
        self.server_cpu * 1e6 / self.deliveries as f64
    }
}

async fn channels(n: u64) {
    let n = n - n % 3;
    let mut best: Vec<Option<ChannelsRun>> = vec![None, None, None];
    let layouts = [Layout::One, Layout::ThreePassing, Layout::ThreeByOrg];
    for _round in 0..2 {
        for (i, layout) in layouts.iter().enumerate() {
            let run = channels_run(*layout, n).await;
            if best[i].as_ref().is_none_or(|b| run.us_per_delivery() < b.us_per_delivery()) {
                best[i] = Some(run);
            }
        }
    }
    let labels = [
        "(a) one channel, 15 clients",
        "(b) 3 channels x 5 clients, filters passing every record",
        "(c) 3 channels x 5 clients, one organization each",
    ];
    for (label, run) in labels.iter().zip(&best) {
        let Some(r) = run else { continue };
        println!(
            "   [load average {}] {label}: {n} records, {} written to clients; server {:.2} CPU-s: {:.3} us per record per client ({:.0} records to clients per CPU-s); peak RSS {} MiB; {}",
            loadavg(),
            r.deliveries,
            r.server_cpu,
            r.us_per_delivery(),
            r.deliveries as f64 / r.server_cpu,
            r.peak_rss_kib / 1024,
            if r.problems.is_empty() { "no drops".to_string() } else { r.problems.join("; ") }
        );
    }
    if let (Some(a), Some(b), Some(c)) = (&best[0], &best[1], &best[2]) {
        println!(
            "   filters: (b) / (a) = {:.3} of one channel's CPU per record per client; (c) / (a) = {:.3}",
            b.us_per_delivery() / a.us_per_delivery(),
            c.us_per_delivery() / a.us_per_delivery()
        );
    }
}

/// One run of section 4: a channel on a runtime of its own, 15 clients.
async fn channels_run(layout: Layout, n: u64) -> ChannelsRun {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("chan-server")
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start the channel's runtime: {e}"),
    };
    let mut extra = "records_per_message = 50\nmax_connections = 15\nreplay_max_bytes = 4294967296\n".to_string();
    if layout != Layout::One {
        for (i, token) in STREAM_TOKENS.iter().enumerate() {
            let orgs: Vec<String> = if layout == Layout::ThreePassing {
                ORGS.iter().map(|o| format!("{o:?}")).collect()
            } else {
                vec![format!("{:?}", ORGS[i])]
            };
            extra.push_str(&format!(
                "[[stream]]\nid = \"org-{i}\"\ntokens = [\"{token}\"]\norg_name = [{}]\nmax_connections = 5\n",
                orgs.join(", ")
            ));
        }
    }
    let b = start_on(rt.handle(), &extra).await;
    let base = Instant::now();
    let mut clients = Vec::new();
    match layout {
        Layout::One => clients.extend(connect_clients(&b, 15, n, base, false).await),
        Layout::ThreePassing => {
            for token in STREAM_TOKENS {
                clients.extend(connect_clients_with(&b, token, 5, n, base, false).await);
            }
        }
        Layout::ThreeByOrg => {
            for token in STREAM_TOKENS {
                clients.extend(connect_clients_with(&b, token, 5, n / 3, base, false).await);
            }
        }
    }
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let cpu_before = threads_cpu_secs("chan-server");
    produce_orgs(&b.fanout, n, 500, None, base, false, &ORGS).await;
    let mut deliveries = 0;
    let mut problems = Vec::new();
    let gaps_expected = layout == Layout::ThreeByOrg;
    let expect = if gaps_expected { n / 3 } else { n };
    for (i, c) in clients.into_iter().enumerate() {
        let s = c.await.expect("client task");
        deliveries += s.records;
        if s.records < expect || (s.gaps > 0 && !gaps_expected) || s.closed.is_some() {
            problems.push(format!("client {i}: {} of {expect} records, {} missing, {:?}", s.records, s.gaps, s.closed));
        }
    }
    let server_cpu = threads_cpu_secs("chan-server") - cpu_before;
    sampler.abort();
    b.handle.shutdown();
    drop(b);
    rt.shutdown_background();
    ChannelsRun { deliveries, server_cpu, peak_rss_kib: peak.load(Ordering::Relaxed), problems }
}

/// CPU seconds (user + system) of this process's threads named `name`
/// (Linux; 0 when unknown).
fn threads_cpu_secs(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // pid (comm) state ...: comm may hold spaces, so split after ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        let u: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let s: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks += u + s;
    }
    ticks as f64 / ticks_per_sec
}

/// Resident set size of this process in KiB (Linux), 0 when unknown.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The 1-minute load average (the machine is shared: a figure taken while
/// other work runs is lower).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().map(str::to_string)).unwrap_or_default()
}
