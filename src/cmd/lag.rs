//! `calllog-bridge lag`: asks a running bridge for `/status` and prints the
//! sync delay per file and the delivery figures per sink, in human units.
//!
//! Where to ask: `--status-url`, else `--config` (the bound address in
//! `<state_dir>/status.addr` when the bridge wrote one, else
//! `[status] listen`), else `http://127.0.0.1:8791`.
//!
//! Exit codes (for cron and monitoring checks):
//! - 0: answered, and (with `--max-lag`) every delay is within the limit;
//! - 1: the bridge answered something unexpected (HTTP error, bad JSON);
//! - 2: `--max-lag` exceeded by any of: the windowed max sync delay of a
//!   file that is not idle; the time a stalled file has had data waiting
//!   without read progress; the age of a sink's oldest undelivered record;
//!   or a source is not doing its job: its paths have matched no file for
//!   longer than `[status] no_files_after_secs`, or a file it matches
//!   cannot be read;
//! - 3: the bridge is not running (no answer at the URL);
//! - 64: bad arguments (`--max-lag` not a duration or a number without its
//!   unit, unreadable `--config`).
//!
//! With `--watch [SECS]` (default 2) the report is redrawn until SIGINT
//! (exit 0); "not running" and `--max-lag` findings are printed on stderr
//! at each refresh instead of ending the command.
//!
//! Whatever answers at the URL is a peer: every string of the document is
//! shown escaped (no control character reaches the terminal), a table
//! cell is cut to [`MAX_CELL_CHARS`] (the middle elided: a path keeps its
//! file name) and a line of free text to [`MAX_TEXT_BYTES`], so one huge
//! host or file name neither breaks the table nor floods a monitoring
//! check's mail. The renderer is fuzzed with hostile documents
//! (`tests/it/fuzz.rs`).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;

use crate::cli::LagArgs;
use crate::config::{Config, EXIT_CONFIG};
use crate::logsafe::{clip, Escaped};
use crate::telemetry::server::addr_file;
use crate::telemetry::{FileState, SourceState, Status};

/// Exit code when `--max-lag` is exceeded.
pub const EXIT_LAGGING: i32 = 2;
/// Exit code when the bridge does not answer.
pub const EXIT_NOT_RUNNING: i32 = 3;
/// How long to wait for `/status`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The default status URL (`[status] listen`'s default).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8791";
/// The largest `/status` document read. Thousands of files make a few MB;
/// whatever answers at the URL cannot make `lag` hold more.
const MAX_STATUS_BYTES: usize = 64 << 20;
/// The widest table cell, in characters (longer ones lose their middle).
pub const MAX_CELL_CHARS: usize = 96;
/// The longest line of free text from the document (an error, a path in
/// a message), in bytes before escaping.
pub const MAX_TEXT_BYTES: usize = 512;

/// Runs the command; returns the exit code.
pub fn run(args: LagArgs) -> anyhow::Result<i32> {
    let max_lag_ms = match args.max_lag.as_deref().map(parse_duration_ms).transpose() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("calllog-bridge lag: --max-lag: {e}");
            return Ok(EXIT_CONFIG);
        }
    };
    let base = match status_base(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("calllog-bridge lag: {}", crate::cmd::describe(&e));
            return Ok(EXIT_CONFIG);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(run_async(&args, &base, max_lag_ms))
}

async fn run_async(args: &LagArgs, base: &str, max_lag_ms: Option<i64>) -> anyhow::Result<i32> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        // The status listener is local: never send it through a proxy.
        .no_proxy()
        .build()
        .context("cannot build the HTTP client")?;
    let Some(every) = args.watch else {
        return once(&client, base, args.json, max_lag_ms).await;
    };
    let every = Duration::from_secs(every.max(1));
    let clear = std::io::stdout().is_terminal();
    loop {
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        once(&client, base, args.json, max_lag_ms).await?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One fetch and print; returns the exit code.
async fn once(client: &reqwest::Client, base: &str, json: bool, max_lag_ms: Option<i64>) -> anyhow::Result<i32> {
    let (status, raw) = match fetch(client, base).await {
        Ok(v) => v,
        Err(FetchError::NotRunning) => {
            eprintln!("bridge is not running (no answer at {base})");
            return Ok(EXIT_NOT_RUNNING);
        }
        Err(FetchError::Other(e)) => {
            eprintln!("calllog-bridge lag: {}", crate::cmd::describe(&e));
            return Ok(1);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_else(|_| raw.to_string()));
    } else {
        print!("{}", render_table(&status, base));
    }
    if let Some(limit) = max_lag_ms {
        let over = over_limit(&status, limit);
        if !over.is_empty() {
            for o in &over {
                eprintln!("lag above --max-lag {}: {o}", human_ms(limit));
            }
            return Ok(EXIT_LAGGING);
        }
    }
    Ok(0)
}

enum FetchError {
    /// Nothing answered (connection refused, timeout).
    NotRunning,
    /// Something answered, but not a status document.
    Other(anyhow::Error),
}

/// Pause before the one retry of a request whose connection failed.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Fetches `/status`; a request whose connection failed before the whole
/// answer arrived (refused, reset, closed without an answer) is tried once
/// more before it is reported: a monitoring check built on `--max-lag`
/// must not page someone for one lost connection. A timeout is not retried
/// (the bridge is too busy or stopped; a retry would only double the wait).
async fn fetch(client: &reqwest::Client, base: &str) -> Result<(Status, serde_json::Value), FetchError> {
    match fetch_once(client, base).await {
        Err(Attempt::Connection(_)) => {
            tokio::time::sleep(RETRY_AFTER).await;
            fetch_once(client, base).await.map_err(Attempt::into_error)
        }
        r => r.map_err(Attempt::into_error),
    }
}

/// How one attempt failed.
enum Attempt {
    /// The connection failed before the whole answer arrived: worth one retry.
    Connection(reqwest::Error),
    /// Anything else, as reported.
    Final(FetchError),
}

impl Attempt {
    fn into_error(self) -> FetchError {
        match self {
            Attempt::Connection(e) if e.is_connect() => FetchError::NotRunning,
            Attempt::Connection(e) => {
                let url = e.url().map(|u| u.to_string()).unwrap_or_default();
                FetchError::Other(anyhow::Error::new(e).context(format!("GET {url}")))
            }
            Attempt::Final(e) => e,
        }
    }
}

async fn fetch_once(client: &reqwest::Client, base: &str) -> Result<(Status, serde_json::Value), Attempt> {
    let url = format!("{base}/status");
    let resp = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(Attempt::Final(FetchError::NotRunning)),
        Err(e) if e.is_connect() || e.is_request() => return Err(Attempt::Connection(e)),
        Err(e) => return Err(Attempt::Final(FetchError::Other(anyhow::Error::new(e).context(format!("GET {url}"))))),
    };
    if !resp.status().is_success() {
        return Err(Attempt::Final(FetchError::Other(anyhow::anyhow!("GET {url}: HTTP {}", resp.status()))));
    }
    let mut resp = resp;
    let mut body = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            if e.is_timeout() {
                Attempt::Final(FetchError::NotRunning)
            } else {
                // The connection broke in the middle of the answer.
                Attempt::Connection(e)
            }
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > MAX_STATUS_BYTES {
            return Err(Attempt::Final(FetchError::Other(anyhow::anyhow!(
                "{url} sent more than {} MiB: not a bridge's status document",
                MAX_STATUS_BYTES >> 20
            ))));
        }
        body.extend_from_slice(&chunk);
    }
    read_status(&body).map_err(|e| Attempt::Final(FetchError::Other(anyhow::anyhow!("{url} {e}"))))
}

/// A `/status` body as `lag` reads it: the document and its JSON; the
/// error says what is wrong with it (after the URL).
pub fn read_status(body: &[u8]) -> Result<(Status, serde_json::Value), String> {
    let raw: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("did not return JSON: {e}"))?;
    let status: Status = serde_json::from_value(raw.clone()).map_err(|e| format!("returned JSON this version does not understand: {e}"))?;
    Ok((status, raw))
}

/// The status base URL (without `/status`) from the arguments.
fn status_base(args: &LagArgs) -> anyhow::Result<String> {
    if let Some(u) = &args.status_url {
        return Ok(normalise_url(u));
    }
    if let Some(path) = &args.config {
        let cfg = Config::load(path)?;
        if let Ok(addr) = std::fs::read_to_string(addr_file(&cfg.state_dir)) {
            let addr = addr.trim();
            if !addr.is_empty() {
                return Ok(format!("http://{}", loopback_for_any(addr)));
            }
        }
        return Ok(format!("http://{}", loopback_for_any(&cfg.status.listen.to_string())));
    }
    Ok(DEFAULT_URL.to_string())
}

/// `0.0.0.0:P` / `[::]:P` (listen on all) is reached on loopback.
fn loopback_for_any(addr: &str) -> String {
    if let Some(port) = addr.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = addr.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        addr.to_string()
    }
}

/// Accepts `host:port`, `http://host:port`, with or without `/status`.
fn normalise_url(u: &str) -> String {
    let u = u.trim().trim_end_matches('/');
    let u = u.strip_suffix("/status").unwrap_or(u);
    if u.contains("://") {
        u.to_string()
    } else {
        format!("http://{u}")
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `2d` and combinations (`1m30s`) into
/// milliseconds. A number needs its unit (`5` could be meant as seconds or
/// minutes; a monitoring threshold off by 60 times is worse than a refusal),
/// except `0`.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration (try 30s, 5m, 1h or 500ms)".into());
    }
    if let Ok(n) = t.parse::<f64>() {
        return if n == 0.0 {
            Ok(0)
        } else if n.is_finite() && n > 0.0 {
            Err(format!("`{t}` has no unit: write `{t}s` for seconds (or `{t}m`, `{t}h`, `{t}ms`)"))
        } else {
            Err(format!("`{s}` is not a duration (try 30s, 5m, 1h or 500ms)"))
        };
    }
    let b = t.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let n: f64 = t[start..i].parse().map_err(|_| format!("`{s}` is not a duration (try 30s, 5m, 1h or 500ms)"))?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms = match &t[ustart..i] {
            "ms" => 1.0,
            "s" | "sec" | "secs" => 1000.0,
            "m" | "min" | "mins" => 60_000.0,
            "h" | "hr" | "hrs" => 3_600_000.0,
            "d" => 86_400_000.0,
            u => return Err(format!("`{s}`: unknown unit `{u}` (use ms, s, m, h or d)")),
        };
        total += n * unit_ms;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
    }
    Ok(total.round() as i64)
}

/// A duration in human units: `350ms`, `1.2s`, `45s`, `3m 10s`, `2h 5m`,
/// `3d 4h`; negative with a leading `-`.
pub fn human_ms(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    let body = if a < 1000 {
        format!("{a}ms")
    } else if a < 10_000 {
        format!("{:.1}s", a as f64 / 1000.0)
    } else if a < 60_000 {
        format!("{}s", (a + 500) / 1000)
    } else {
        let s = (a + 500) / 1000;
        if s < 3600 {
            format!("{}m {}s", s / 60, s % 60)
        } else if s < 86_400 {
            format!("{}h {}m", s / 3600, s % 3600 / 60)
        } else {
            format!("{}d {}h", s / 86_400, s % 86_400 / 3600)
        }
    };
    format!("{sign}{body}")
}

/// A size in human units: `512 B`, `1.5 KiB`, `15.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn opt_ms(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), human_ms)
}

/// Peer text as a table cell: escaped, and at most [`MAX_CELL_CHARS`]
/// characters (the middle replaced by `…`, so both ends stay readable).
fn cell(s: &str) -> String {
    let e = Escaped(s).to_string();
    let n = e.chars().count();
    if n <= MAX_CELL_CHARS {
        return e;
    }
    let head = (MAX_CELL_CHARS - 1) / 2;
    let tail = MAX_CELL_CHARS - 1 - head;
    let mut out: String = e.chars().take(head).collect();
    out.push('…');
    out.extend(e.chars().skip(n - tail));
    out
}

/// Renders rows as left-aligned columns separated by two spaces. A column
/// is as wide as its widest cell, at most [`MAX_CELL_CHARS`] (cells are
/// cut to it by [`cell`]; padding never goes beyond).
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..n).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0).min(MAX_CELL_CHARS)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human report: a header, a table per file, a table per sink, totals.
pub fn render_table(st: &Status, base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "calllog-bridge {} at {}: up {}, {}, delay window {}",
        cell(&st.version),
        clip(base, MAX_TEXT_BYTES),
        human_ms(secs_to_ms(st.uptime_secs)),
        if st.ready { "ready" } else { "not ready" },
        human_ms(i64::try_from(st.settings.delay_window_secs).unwrap_or(i64::MAX).saturating_mul(1000)),
    );
    out.push('\n');
    if !st.sources.is_empty() {
        let mut rows = vec![["SOURCE", "STATE", "FILES", "UNREADABLE", "LEFT UNREAD"].map(String::from).to_vec()];
        for s in &st.sources {
            let state = match (s.state, s.no_files_for_ms) {
                (SourceState::NoFiles, Some(ms)) => format!("no-files {}", human_ms(ms)),
                (state, _) => state.to_string(),
            };
            let left = if s.files_left_unread == 0 {
                "0".to_string()
            } else {
                format!("{} file(s), {}", s.files_left_unread, human_bytes(s.bytes_left_unread))
            };
            rows.push(vec![cell(&s.name), state, s.files_matched.to_string(), s.files_unreadable.to_string(), left]);
        }
        out.push_str(&columns(&rows));
        for s in &st.sources {
            for u in &s.unreadable {
                let what = if u.directory { "cannot list directory" } else { "cannot read" };
                let _ = writeln!(out, "  {}: {what} {}: {}", cell(&s.name), clip(&u.path, MAX_TEXT_BYTES), clip(&u.error, MAX_TEXT_BYTES));
            }
            for l in &s.left_unread {
                let bytes = l.unread_bytes.map_or_else(|| "unknown bytes".to_string(), human_bytes);
                let now = l.now_at.as_deref().map(|a| format!(", now {}", clip(a, MAX_TEXT_BYTES))).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {}: RECORDS LOST: {} left with {bytes} unread ({}{now})",
                    cell(&s.name),
                    clip(&l.path, MAX_TEXT_BYTES),
                    l.reason
                );
            }
        }
        out.push('\n');
    }
    if st.files.is_empty() {
        out.push_str("no files followed yet\n");
    } else {
        let mut rows =
            vec![["FILE", "STATE", "BEHIND", "SYNC p50", "SYNC p95", "SYNC max", "NEG", "RECORDS", "REJECTS", "WATERMARK", "LAST READ"]
                .map(String::from)
                .to_vec()];
        // Where lines carry their write time (LE 6): the sync's own share.
        let transfer = st.files.iter().any(|f| f.transfer_delay_ms.is_some());
        if transfer {
            rows[0].insert(6, "TRANSFER p95".into());
        }
        for f in &st.files {
            let d = f.sync_delay_ms;
            let state = match f.state {
                FileState::Stalled => format!("stalled {}", human_ms(f.no_progress_ms)),
                s => s.to_string(),
            };
            rows.push(vec![
                // A file (or host) name is peer-supplied text on a terminal.
                // A gone file's name is where it was, not where it is.
                if f.gone { format!("{} (gone)", cell(&f.path)) } else { cell(&f.path) },
                state,
                human_bytes(f.bytes_behind),
                opt_ms(d.map(|d| d.p50)),
                opt_ms(d.map(|d| d.p95)),
                opt_ms(d.map(|d| d.max)),
                f.negative_delays.to_string(),
                f.records.to_string(),
                f.rejects.to_string(),
                f.watermark.as_deref().map_or_else(|| "-".into(), cell),
                f.last_read_age_ms.map_or_else(|| "never".into(), |a| format!("{} ago", human_ms(a))),
            ]);
            if transfer {
                rows.last_mut().expect("a row was just pushed").insert(6, opt_ms(f.transfer_delay_ms.map(|d| d.p95)));
            }
        }
        out.push_str(&columns(&rows));
    }
    out.push('\n');
    if st.sinks.is_empty() {
        out.push_str("no sinks running\n");
    } else {
        let mut rows = vec![[
            "SINK",
            "QUEUE",
            "OLDEST UNDELIVERED",
            "DELIVERY p50",
            "DELIVERY p95",
            "DELIVERY max",
            "DELIVERED",
            "RETRIES",
            "DROPS",
            "DEAD",
        ]
        .map(String::from)
        .to_vec()];
        for k in &st.sinks {
            let d = k.delivery_delay_ms;
            rows.push(vec![
                cell(&k.name),
                k.queue_depth.to_string(),
                opt_ms(k.oldest_undelivered_age_ms),
                opt_ms(d.map(|d| d.p50)),
                opt_ms(d.map(|d| d.p95)),
                opt_ms(d.map(|d| d.max)),
                k.delivered_records.to_string(),
                k.retries.to_string(),
                k.dropped_records.to_string(),
                k.dead_lettered_records.to_string(),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    if let Some((c, endpoint)) = st.sections.get("channel").and_then(|c| Some((c, c.endpoint()?))) {
        let refused_by = c.by_label("refused");
        let refused = refused_by.values().fold(0i64, |a, n| a.saturating_add(*n));
        let reasons: Vec<String> =
            refused_by.iter().filter(|(_, n)| **n > 0).take(16).map(|(r, n)| format!("{n} {}", cell(&r.replace('_', " ")))).collect();
        let slow = c.by_label("closed").get("slow_consumer").copied().unwrap_or(0);
        let scheme = if endpoint.tls { "wss" } else { "ws" };
        let _ = writeln!(
            out,
            "\nchannel {scheme}://{}{}: {} connected ({} since start), {} refused{}, {} closed as slow consumer{}",
            cell(&endpoint.listen),
            cell(&endpoint.path),
            c.number("connections"),
            c.number("connections_accepted"),
            refused,
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
            slow,
            if slow == 1 { "" } else { "s" },
        );
    }
    if let Some(k) = st.sections.get(KAFKA_SOURCE) {
        kafka_source_lines(k, &mut out);
    }
    if let Some(e) = &st.enrich {
        if e.misses > 0 {
            let by_table: Vec<String> =
                e.tables.iter().filter(|t| t.misses > 0).take(16).map(|t| format!("{} {}", cell(&t.table), t.misses)).collect();
            let _ = writeln!(out, "enrich: {} lookup misses of {} ({})", e.misses, e.hits.saturating_add(e.misses), by_table.join(", "));
        }
        if let Some(err) = &e.last_reload_error {
            let _ = writeln!(out, "enrich: last lookup reload failed, previous tables in use: {}", clip(err, MAX_TEXT_BYTES));
        }
    }
    for f in &st.faults {
        let _ = writeln!(
            out,
            "\nFAULT {} cannot write since {} ({} attempts), keeping its data and retrying: {}",
            cell(&f.component),
            cell(&f.since),
            f.attempts,
            clip(&f.error, MAX_TEXT_BYTES)
        );
    }
    let t = &st.totals;
    let states: Vec<String> = t.files_by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(
        out,
        "\ntotal: {} file(s) ({}), {} records, {} rejects, {} negative delays,{} {} behind, max sync delay {}",
        t.files,
        if states.is_empty() { "none".to_string() } else { states.join(", ") },
        t.records,
        t.rejects,
        t.negative_delays,
        if t.partial_lines > 0 { format!(" {} partial lines,", t.partial_lines) } else { String::new() },
        human_bytes(t.bytes_behind),
        opt_ms(t.max_sync_delay_ms),
    );
    out
}

/// The section of a hub's Kafka source figures.
const KAFKA_SOURCE: &str = "kafka_source";

/// A hub's Kafka source figures: one line, and one more for each thing an
/// operator must know (records lost, partitions reset, hosts not tracked).
fn kafka_source_lines(k: &crate::telemetry::SectionStatus, out: &mut String) {
    let n = |name: &str| k.number(name);
    let _ = writeln!(
        out,
        "\nkafka source: {} records read, {} values rejected, {} partitions failing, {} hosts tracked",
        n("records_read"),
        n("values_rejected"),
        n("partitions_failing"),
        n("hosts_tracked"),
    );
    if n("messages_lost") > 0 {
        let _ = writeln!(out, "kafka source: RECORDS LOST: {} messages deleted by the brokers before they were read", n("messages_lost"));
    }
    if n("partition_resets") > 0 {
        let _ = writeln!(
            out,
            "kafka source: TOPIC RESET: {} partition reset(s) since start (a re-created topic, or brokers that lost their log): read again from read_from",
            n("partition_resets")
        );
    }
    if n("records_from_untracked_hosts") > 0 {
        let _ = writeln!(
            out,
            "kafka source: more hosts than max_hosts: {} records counted under kafka:(other hosts)",
            n("records_from_untracked_hosts")
        );
    }
    if n("hosts_cut") > 0 {
        let _ = writeln!(out, "kafka source: {} records had a host over 255 bytes, cut", n("hosts_cut"));
    }
}

/// Seconds (a float from the document) to whole milliseconds, saturating.
fn secs_to_ms(secs: f64) -> i64 {
    // `as` saturates (and maps NaN to 0).
    (secs * 1000.0) as i64
}

/// What exceeds `limit_ms`, one line each (empty when all is well).
pub fn over_limit(st: &Status, limit_ms: i64) -> Vec<String> {
    let mut over: Vec<String> = st.sources.iter().flat_map(|s| s.problems()).map(|l| clip(&l, MAX_TEXT_BYTES).to_string()).collect();
    for f in &st.files {
        if f.state != FileState::Idle {
            if let Some(d) = f.sync_delay_ms.filter(|d| d.max > limit_ms) {
                over.push(format!("{}: sync delay max {} ({})", cell(&f.path), human_ms(d.max), f.state));
            }
        }
        if f.state == FileState::Stalled && f.no_progress_ms > limit_ms {
            over.push(format!(
                "{}: stalled, {} waiting unread for {}",
                cell(&f.path),
                human_bytes(f.bytes_behind),
                human_ms(f.no_progress_ms)
            ));
        }
    }
    for k in &st.sinks {
        if let Some(a) = k.oldest_undelivered_age_ms.filter(|&a| a > limit_ms) {
            over.push(format!("sink {}: oldest undelivered record is {} old", cell(&k.name), human_ms(a)));
        }
    }
    over
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        for (s, ms) in [("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("1m30s", 90_000), ("0", 0), ("1.5s", 1500)] {
            assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
        }
        for bad in ["", "fast", "5 parsecs", "-1", "1y", "5", "2.5"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_ms("5").unwrap_err(), "`5` has no unit: write `5s` for seconds (or `5m`, `5h`, `5ms`)");
    }

    #[test]
    fn human_units() {
        let cases =
            [(0, "0ms"), (350, "350ms"), (1234, "1.2s"), (45_000, "45s"), (190_000, "3m 10s"), (7_500_000, "2h 5m"), (-1200, "-1.2s")];
        for (ms, s) in cases {
            assert_eq!(human_ms(ms), s);
        }
        assert_eq!(human_ms(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16_043_212), "15.3 MiB");
    }

    #[test]
    fn cells_are_escaped_cut_in_the_middle_and_never_padded_beyond_the_limit() {
        assert_eq!(cell("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        let long = format!("kafka:{}.log", "x".repeat(70_000));
        let c = cell(&long);
        assert_eq!(c.chars().count(), MAX_CELL_CHARS);
        assert!(c.starts_with("kafka:xx") && c.ends_with("xx.log") && c.contains('…'), "{c}");
        let rows = vec![vec![c.clone(), "x".into()], vec!["a".into(), "b".into()]];
        let t = columns(&rows);
        assert!(t.lines().all(|l| l.chars().count() <= MAX_CELL_CHARS + 3), "{t}");
        // A cell wider than the limit (not cut by `cell`) is not padded.
        let t = columns(&[vec!["y".repeat(70_000), "z".into()], vec!["a".into(), "b".into()]]);
        assert_eq!(t.lines().nth(1), Some(&*format!("a{}b", " ".repeat(MAX_CELL_CHARS + 1))));
    }

    #[test]
    fn urls_normalise() {
        assert_eq!(normalise_url("127.0.0.1:9"), "http://127.0.0.1:9");
        assert_eq!(normalise_url("http://h:9/status/"), "http://h:9");
        assert_eq!(loopback_for_any("0.0.0.0:8791"), "127.0.0.1:8791");
        assert_eq!(loopback_for_any("[::]:8791"), "[::1]:8791");
    }
}
