//! `calllog-bridge subscribe URL` (alias `tail`): a Call Log Stream client
//! for support staff. (`tail` the module is the file follower.)
//!
//! Subscribes to a channel (this bridge's, or any server speaking the
//! stream protocol), prints each record as a JSON line (the record as
//! received, in the `ecls` shape) or, with `--table`, as one compact line
//! (time, status, method, service, uri, total time, sync delay). On a
//! dropped connection it reconnects with backoff and `since=<last seq + 1>`,
//! so nothing is printed twice and nothing the bridge still holds is
//! missed; a `{"lost":...}` notice is reported on stderr (with the running
//! total), and the next reconnect asks from where the notice said records
//! resume, so back-to-back notices never count the same records twice. A
//! notice that `since` is beyond the channel's newest record (a number from
//! another history: a `reset-state`, another bridge) is reported too, and
//! the client goes on from the channel's numbering. The first connection
//! asks from `--since`, or else from a `since=` in the URL, or else starts
//! at the live head.
//!
//! The server is a peer like any other: connecting and the handshake are
//! bounded by `DIAL_TIMEOUT` (10 s), a message by `MAX_MESSAGE_BYTES` (16 MiB), and
//! text from the server that reaches the terminal outside the JSON records
//! (close reasons, refusal bodies, `--table` cells) has its control
//! characters escaped.
//!
//! Exit codes: 0 after `--count` records (or, with `--no-reconnect`, when
//! the server closes the connection); [`EXIT_AUTH`] when the channel refuses
//! the token; 1 for other errors (bad URL, unknown channel, connection
//! failure with `--no-reconnect`). The token is never printed.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::cli::SubscribeArgs;

/// Exit code when the channel refuses the token (EX_NOPERM).
pub const EXIT_AUTH: i32 = 77;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Connecting (TCP, TLS, WebSocket handshake) takes at most this long; a
/// server that accepts and says nothing is retried, not waited on forever.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest server message read (1,000 records per message, the most a
/// client may ask of the bridge, are a few MB); a larger one ends the
/// connection rather than the client's memory.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Runs the command; returns the exit code.
pub fn run(args: SubscribeArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    rt.block_on(subscribe(args))
}

/// A parsed `ws://` / `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// True for `wss://`.
    tls: bool,
    /// Host name or address (no brackets for IPv6).
    host: String,
    /// Port (default 80 / 443).
    port: u16,
    /// Path, starting with `/`.
    path: String,
    /// Query parameters other than `key` and `since`, as given.
    params: Vec<String>,
    /// The `key` parameter, decoded.
    key: Option<String>,
    /// The `since` parameter: where the first connection starts (unless
    /// `--since` says otherwise).
    since: Option<u64>,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else {
            anyhow::bail!("the URL must start with ws:// or wss:// (got `{}`)", redact(url));
        };
        let (authority, path_query) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (if p.is_empty() { "/" } else { p }, q),
            None => (path_query, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, rest) = v6.split_once(']').context("unclosed `[` in the URL's host")?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p.parse().context("bad port in the URL")?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().context("bad port in the URL")?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            anyhow::bail!("the URL has no host");
        }
        let mut params = Vec::new();
        let mut key = None;
        let mut since = None;
        for p in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            match name {
                "key" => key = Some(crate::url::percent_decode(value).context("the URL's key is not valid percent-encoding")?),
                "since" => {
                    since = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| anyhow::anyhow!("the URL's since={} is not a sequence number", crate::logsafe::Escaped(value)))?,
                    )
                }
                _ => params.push(p.to_string()),
            }
        }
        Ok(Target { tls, host, port, path: path.to_string(), params, key, since })
    }

    /// The URL to dial, with the token and `since`.
    fn url(&self, key: &str, since: Option<u64>) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let mut q: Vec<String> = self.params.clone();
        q.push(format!("key={}", percent_encode(key)));
        if let Some(s) = since {
            q.push(format!("since={s}"));
        }
        format!("{scheme}://{host}:{}{}?{}", self.port, self.path, q.join("&"))
    }

    /// The URL without its query, for messages.
    fn display(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
    }
}

/// The URL with its query string removed (it may hold the token).
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How a session ended.
enum Ended {
    /// `--count` records were printed.
    Done,
    /// stdout was closed (`| head`).
    OutputClosed,
    /// The server closed or the connection broke; `progress` when at least
    /// one message arrived (resets the backoff).
    Disconnected { why: String, progress: bool },
}

/// Why a connection attempt failed.
enum DialError {
    /// 401: the token was refused. Final.
    Auth,
    /// Another refusal that retrying will not fix (404, 400). Final.
    Refused(String),
    /// Worth retrying (connection refused, 503, TLS or I/O trouble).
    Retry(String),
}

/// The token in `--token-file` (trailing newline trimmed). Its errors
/// name the option and the file: this is a command-line argument, not a
/// config key.
fn read_token_file(f: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("--token-file {}: cannot read it: {e}", f.display()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        anyhow::bail!("--token-file {}: the file is empty", f.display());
    }
    Ok(token.to_string())
}

/// What the client keeps across reconnects.
struct Progress {
    /// `seq` of the last message received, or the sequence number before
    /// the `first_available` of the last lost notice: the next connection
    /// asks from the one after.
    last_seq: Option<u64>,
    /// Records printed so far.
    printed: u64,
    /// Records reported lost so far, over every notice.
    lost: u64,
}

async fn subscribe(args: SubscribeArgs) -> anyhow::Result<i32> {
    let target = Target::parse(&args.url)?;
    let key = match &args.token_file {
        Some(f) => Some(read_token_file(f)?),
        None => target.key.clone(),
    };
    let Some(key) = key else {
        anyhow::bail!("no token: add ?key=<token> to the URL or use --token-file");
    };
    let tls = if target.tls { Some(tls_connector(args.ca_file.as_deref())?) } else { None };
    let stdout = std::io::stdout();
    let mut out = Output { w: std::io::BufWriter::new(stdout.lock()), table: args.table, header_done: false };
    let mut progress = Progress { last_seq: None, printed: 0, lost: 0 };
    let mut backoff = MIN_BACKOFF;
    loop {
        let since = progress.last_seq.map(|s| s + 1).or(args.since).or(target.since);
        let url = target.url(&key, since);
        let ended = match dial(&target, &url, tls.as_ref()).await {
            Ok(Conn::Plain(ws)) => session(*ws, &mut out, &mut progress, args.count).await,
            Ok(Conn::Tls(ws)) => session(*ws, &mut out, &mut progress, args.count).await,
            Err(DialError::Auth) => {
                eprintln!("calllog-bridge: authentication failed: the channel refused the token ({})", target.display());
                return Ok(EXIT_AUTH);
            }
            Err(DialError::Refused(why)) => {
                eprintln!("calllog-bridge: {}: {why}", target.display());
                return Ok(1);
            }
            Err(DialError::Retry(why)) => {
                if args.no_reconnect {
                    eprintln!("calllog-bridge: cannot connect to {}: {why}", target.display());
                    return Ok(1);
                }
                eprintln!("calllog-bridge: cannot connect to {}: {why}; retrying in {:.1}s", target.display(), backoff.as_secs_f64());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        match ended {
            Ended::Done | Ended::OutputClosed => return Ok(0),
            Ended::Disconnected { why, progress: made_progress } => {
                if args.no_reconnect {
                    eprintln!("calllog-bridge: connection ended: {why}");
                    return Ok(0);
                }
                if made_progress {
                    backoff = MIN_BACKOFF;
                }
                eprintln!("calllog-bridge: connection ended: {why}; reconnecting in {:.1}s", backoff.as_secs_f64());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A connected client, plain or TLS.
enum Conn {
    /// `ws://`.
    Plain(Box<WebSocketStream<TcpStream>>),
    /// `wss://`.
    Tls(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

async fn dial(target: &Target, url: &str, tls: Option<&tokio_rustls::TlsConnector>) -> Result<Conn, DialError> {
    match tokio::time::timeout(DIAL_TIMEOUT, dial_once(target, url, tls)).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Retry(format!("no answer within {}s", DIAL_TIMEOUT.as_secs()))),
    }
}

async fn dial_once(target: &Target, url: &str, tls: Option<&tokio_rustls::TlsConnector>) -> Result<Conn, DialError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(|e| DialError::Retry(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let config = Some(WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES)));
    match tls {
        None => {
            tokio_tungstenite::client_async_with_config(url, tcp, config).await.map(|(ws, _)| Conn::Plain(Box::new(ws))).map_err(classify)
        }
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| DialError::Refused(format!("bad host name for TLS: {e}")))?;
            let stream = connector.connect(name, tcp).await.map_err(|e| DialError::Retry(format!("TLS: {e}")))?;
            tokio_tungstenite::client_async_with_config(url, stream, config).await.map(|(ws, _)| Conn::Tls(Box::new(ws))).map_err(classify)
        }
    }
}

fn classify(e: tungstenite::Error) -> DialError {
    match e {
        tungstenite::Error::Http(resp) => {
            let body = resp.body().as_ref().map(|b| printable(String::from_utf8_lossy(b).trim())).unwrap_or_default();
            let status = resp.status().as_u16();
            match status {
                401 | 403 => DialError::Auth,
                400 | 404 => DialError::Refused(format!("HTTP {status}: {body}")),
                _ => DialError::Retry(format!("HTTP {status}: {body}")),
            }
        }
        // The URL was built here; other errors are the connection's.
        other => DialError::Retry(other.to_string()),
    }
}

/// A server message: records, or a lost notice.
#[derive(Deserialize)]
struct ServerMessage<'a> {
    /// The records, kept as written (field order preserved).
    #[serde(borrow, default)]
    data: Vec<&'a RawValue>,
    /// Sequence number of the last record.
    seq: Option<u64>,
    /// Set on a lost notice: records skipped.
    lost: Option<u64>,
    /// Set on a lost notice: what was asked for.
    since: Option<u64>,
    /// Set on a lost notice: where the replay starts.
    first_available: Option<u64>,
    /// Set on every notice: the sequence number the stream goes on from.
    next: Option<u64>,
}

async fn session<S>(mut ws: WebSocketStream<S>, out: &mut Output<'_>, progress: &mut Progress, count: Option<u64>) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut got_any = false;
    loop {
        let msg = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Ended::Disconnected { why: e.to_string(), progress: got_any },
            None => return Ended::Disconnected { why: "connection closed".into(), progress: got_any },
        };
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            Message::Binary(b) => match std::str::from_utf8(b) {
                Ok(t) => t,
                Err(_) => continue,
            },
            Message::Close(f) => {
                let why = match f {
                    Some(f) => format!("closed by the server ({}: {})", u16::from(f.code), printable(&f.reason)),
                    None => "closed by the server".into(),
                };
                return Ended::Disconnected { why, progress: got_any };
            }
            _ => continue,
        };
        if text.starts_with("Response To") {
            continue;
        }
        let m: ServerMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("calllog-bridge: skipping a message that is not a stream message: {e}");
                continue;
            }
        };
        got_any = true;
        if let Some(lost) = m.lost {
            progress.lost = progress.lost.saturating_add(lost);
            eprintln!(
                "calllog-bridge: warning: {lost} records are no longer available (asked from {}, resuming at {}; {} lost in total)",
                m.since.map_or("?".into(), |s| s.to_string()),
                m.first_available.map_or("?".into(), |s| s.to_string()),
                progress.lost
            );
            // Should the connection end before a record arrives, the next
            // one asks from where this notice said records resume, so the
            // next notice counts only what was lost since.
            if let Some(f) = m.first_available.filter(|&f| f > 0) {
                progress.last_seq = Some(f - 1);
            }
        } else if let (None, Some(since), Some(next)) = (m.seq, m.since, m.next) {
            // `since` is beyond the channel's newest record: a number from
            // another history. Go on from the channel's numbering.
            eprintln!(
                "calllog-bridge: warning: the channel has no record {since} yet (its numbering restarted, or it is another bridge's); continuing from {next}"
            );
            progress.last_seq = next.checked_sub(1);
        }
        for r in &m.data {
            if out.record(r).is_err() {
                return Ended::OutputClosed;
            }
            progress.printed += 1;
            if count.is_some_and(|c| progress.printed >= c) {
                let _ = out.flush();
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return Ended::Done;
            }
        }
        if out.flush().is_err() {
            return Ended::OutputClosed;
        }
        if let Some(s) = m.seq {
            progress.last_seq = Some(s);
        }
        // Keep the connection's own answers (pongs) moving.
        let _ = ws.flush().await;
    }
}

/// Where records are printed.
struct Output<'a> {
    /// Buffered stdout.
    w: std::io::BufWriter<std::io::StdoutLock<'a>>,
    /// One compact line per record instead of JSON.
    table: bool,
    /// The table header has been printed.
    header_done: bool,
}

impl Output<'_> {
    fn record(&mut self, raw: &RawValue) -> std::io::Result<()> {
        if !self.table {
            self.w.write_all(raw.get().as_bytes())?;
            return self.w.write_all(b"\n");
        }
        if !self.header_done {
            self.header_done = true;
            writeln!(self.w, "{}", table_header())?;
        }
        let fields: std::collections::HashMap<&str, serde_json::Value> = serde_json::from_str(raw.get()).unwrap_or_default();
        writeln!(self.w, "{}", table_row(&fields))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

fn table_header() -> String {
    format!("{:<20} {:>3} {:<7} {:<24} {:<48} {:>8} {:>8}", "TIME", "ST", "METHOD", "SERVICE", "URI", "TOTAL", "DELAY")
}

/// One compact line: time, status, method, service, uri, total time,
/// sync delay.
fn table_row(f: &std::collections::HashMap<&str, serde_json::Value>) -> String {
    // Values are the server's: escaped, so a record cannot drive the terminal.
    let s = |k: &str| -> String {
        match f.get(k) {
            Some(serde_json::Value::String(v)) => printable(v),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }
    };
    let service = match s("service_name") {
        n if n.is_empty() || n == "-" => s("service_id"),
        n => n,
    };
    let total = match s("total_request_exec_time").parse::<f64>() {
        Ok(t) => format!("{t:.3}s"),
        Err(_) => "-".into(),
    };
    let delay = match s("sync_delay_ms").parse::<i64>() {
        Ok(ms) => human_ms(ms),
        Err(_) => "-".into(),
    };
    format!(
        "{:<20} {:>3} {:<7} {:<24} {:<48} {:>8} {:>8}",
        s("request_time"),
        s("http_status_code"),
        s("http_method"),
        clip(&service, 24),
        clip(&s("uri"), 48),
        total,
        delay
    )
}

/// `v` with control characters (ESC, CR, C1 controls, ...) escaped
/// ([`crate::logsafe::Escaped`], the one helper for peer text): server text
/// printed on a terminal cannot move the cursor, recolour or retitle it, or
/// forge a line.
fn printable(v: &str) -> String {
    crate::logsafe::Escaped(v).to_string()
}

fn human_ms(ms: i64) -> String {
    let a = ms.unsigned_abs();
    let sign = if ms < 0 { "-" } else { "" };
    if a < 1000 {
        format!("{sign}{a}ms")
    } else if a < 60_000 {
        format!("{sign}{:.1}s", a as f64 / 1000.0)
    } else if a < 3_600_000 {
        format!("{sign}{:.1}m", a as f64 / 60_000.0)
    } else {
        format!("{sign}{:.1}h", a as f64 / 3_600_000.0)
    }
}

fn clip(v: &str, n: usize) -> String {
    if v.chars().count() <= n {
        v.to_string()
    } else {
        let mut s: String = v.chars().take(n - 1).collect();
        s.push('…');
        s
    }
}

/// TLS for `wss://`: the public web roots, plus `ca_file` (PEM) for a
/// bridge with its own certificate authority or a self-signed certificate.
fn tls_connector(ca_file: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = ca_file {
        let pem = std::fs::read(p).with_context(|| format!("--ca-file: cannot read {}", p.display()))?;
        let mut n = 0;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.with_context(|| format!("--ca-file: {} is not PEM", p.display()))?).context("--ca-file: unusable certificate")?;
            n += 1;
        }
        if n == 0 {
            anyhow::bail!("--ca-file: no certificate in {}", p.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_rebuilt_with_key_and_since() {
        let t = Target::parse("ws://127.0.0.1:8790/ecls/subscribe/c/a?key=a%2Bb&status=5xx&since=4").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (false, "127.0.0.1", 8790, "/ecls/subscribe/c/a"));
        assert_eq!(t.key.as_deref(), Some("a+b"));
        assert_eq!(t.params, vec!["status=5xx".to_string()]);
        assert_eq!(t.since, Some(4));
        assert_eq!(t.url("a+b", Some(10)), "ws://127.0.0.1:8790/ecls/subscribe/c/a?status=5xx&key=a%2Bb&since=10");
        assert_eq!(t.display(), "ws://127.0.0.1:8790/ecls/subscribe/c/a");
        let t = Target::parse("wss://bridge.example/stream").unwrap();
        assert_eq!((t.tls, t.port, t.key.clone()), (true, 443, None));
        let t = Target::parse("ws://[::1]:9/stream?key=x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(t.url("x", None), "ws://[::1]:9/stream?key=x");
        assert!(Target::parse("http://h/stream").is_err());
        let e = Target::parse("ws://h/stream?key=x&since=soon").unwrap_err().to_string();
        assert!(e.contains("since=soon"), "{e}");
        let e = Target::parse("http://h/stream?key=secret").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn table_rows() {
        let json = r#"{"request_time":"2019-04-19T21:56:43Z","http_status_code":"200","http_method":"GET","service_id":"svc","service_name":"","uri":"/v1/x","total_request_exec_time":"0.1234","sync_delay_ms":"17966"}"#;
        let f: std::collections::HashMap<&str, serde_json::Value> = serde_json::from_str(json).unwrap();
        let row = table_row(&f);
        assert!(row.starts_with("2019-04-19T21:56:43Z 200 GET     svc "), "{row}");
        assert!(row.contains("0.123s") && row.ends_with("18.0s"), "{row}");
        assert_eq!(human_ms(-250), "-250ms");
        assert_eq!(human_ms(90_000), "1.5m");
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn server_text_is_printed_without_control_characters() {
        assert_eq!(printable("plain é"), "plain é");
        assert_eq!(printable("a\u{1b}[2Jb\r\nc\u{9b}d"), "a\\u{1b}[2Jb\\r\\nc\\u{9b}d");
        let json = r#"{"uri":"/x\u001b]0;pwned\u0007","http_status_code":"200"}"#;
        let f: std::collections::HashMap<&str, serde_json::Value> = serde_json::from_str(json).unwrap();
        let row = table_row(&f);
        assert!(!row.chars().any(char::is_control), "{row:?}");
    }
}
