//! Hostile and broken peers against the real binary's listeners, over real
//! loopback sockets: idle sockets and floods must not lock out legitimate
//! clients or use up the process's file descriptors; protocol violations
//! get their RFC 6455 close codes; a plain HTTP request on the channel is
//! told how to subscribe; weak tokens are refused at start; the dashboard
//! policy names only the bridge's own channel; the `tail` client counts
//! lost records once against a server that sends back-to-back notices.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;

/// The channel token of these tests (at least 16 bytes, as the bridge requires).
const TOKEN: &str = "hostile-net-token-8c41e7";
/// Generous bound for anything that should happen "at once".
const DEADLINE: Duration = Duration::from_secs(20);

/// A bridge with a channel and a status listener on 127.0.0.1:0, killed on
/// drop.
struct Bridge {
    child: Child,
    dir: tempfile::TempDir,
}

impl Bridge {
    /// Starts the bridge; `status_extra` goes into `[status]`;
    /// `fd_soft_limit` lowers the soft RLIMIT_NOFILE it starts with (the
    /// historical default of 1,024), as a shell's `ulimit -Sn` would.
    fn start(status_extra: &str, fd_soft_limit: Option<u64>) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let cfg = format!(
            "state_dir = {state:?}\nlog_level = \"info\"\n[[source]]\npaths = [{glob:?}]\nformat = \"le-json\"\n\
             poll_interval_ms = 200\n[channel]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n\
             [status]\nlisten = \"127.0.0.1:0\"\n{status_extra}\n",
            state = p("state"),
            glob = p("logs/*.log"),
            token = p("token"),
        );
        std::fs::write(dir.path().join("bridge.toml"), cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("bridge.log")).unwrap();
        let mut cmd = match fd_soft_limit {
            None => support::cmd(),
            Some(n) => {
                let mut c = std::process::Command::new("sh");
                c.arg("-c").arg(format!("ulimit -Sn {n} && exec \"$0\" \"$@\"")).arg(support::bin());
                c
            }
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(dir.path().join("bridge.toml"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let b = Bridge { child, dir };
        b.addr("status");
        b.addr("channel");
        b
    }

    fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("bridge.log")).unwrap_or_default()
    }

    /// The address of a listener (`status`, `channel`), from `<state_dir>/NAME.addr`.
    fn addr(&self, name: &str) -> String {
        let f = self.path(&format!("state/{name}.addr"));
        support::poll_until(DEADLINE, &format!("state/{name}.addr"), || {
            std::fs::read_to_string(&f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        })
    }

    fn subscribe_url(&self) -> String {
        format!("ws://{}/stream?key={TOKEN}", self.addr("channel"))
    }

    /// Open file descriptors of the bridge process.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// (soft, hard) RLIMIT_NOFILE of the bridge process.
    fn fd_limits(&self) -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
        let mut f = line["Max open files".len()..].split_whitespace();
        (f.next().unwrap().to_string(), f.next().unwrap().to_string())
    }

    fn status_json(&self) -> serde_json::Value {
        let (code, body) = http_get(&self.addr("status"), "/status", Duration::from_secs(5)).expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET over a fresh socket; (status, body) or an error
/// after `timeout`.
fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Opens `n` TCP connections to `addr` that never send a byte (or, with
/// `partial`, half a request head: slowloris); connections the server
/// closes or never accepts are dropped from the result.
async fn idle_sockets(addr: &str, n: usize, partial: Option<&'static [u8]>) -> Vec<TcpStream> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await.ok()?.ok()?;
            if let Some(p) = partial {
                s.write_all(p).await.ok()?;
            }
            Some(s)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            out.push(s);
        }
    }
    out
}

/// Lets the test process hold the sockets a flood needs.
fn raise_own_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap()
}

// ---------------------------------------------------------------- item 3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_lock_legitimate_subscribers_out_of_the_channel() {
    let bridge = Bridge::start("", None);
    let chan = bridge.addr("channel");
    // More sockets than the listener keeps pending handshakes for, each
    // saying nothing: before, they held every handshake slot for 10 s and
    // new clients were dropped at accept.
    let idle = idle_sockets(&chan, 70, None).await;
    assert!(idle.len() >= 64, "only {} idle sockets connected", idle.len());
    let url = bridge.subscribe_url();
    let mut admitted = 0;
    for _round in 0..11 {
        // Five at a time: the channel's max_connections.
        let mut open = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)).await;
            match r {
                Ok(Ok((ws, resp))) => {
                    assert_eq!(resp.status(), 101);
                    assert!(started.elapsed() < Duration::from_secs(5));
                    open.push(ws);
                    admitted += 1;
                }
                Ok(Err(e)) => panic!("a legitimate subscriber was refused after {admitted} admitted: {e}\n{}", bridge.log()),
                Err(_) => panic!("a legitimate subscriber waited 5 s after {admitted} admitted\n{}", bridge.log()),
            }
        }
        for mut ws in open {
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }
        // The slots are free again once the bridge has seen the closes.
        let deadline = Instant::now() + DEADLINE;
        while bridge.status_json()["channel"]["connections"] != 0 {
            assert!(Instant::now() < deadline, "connections never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(admitted, 55);
    // The flood is visible: pending handshakes closed to make room (one
    // per connection that found every slot taken; slots freed by the
    // subscribers' closes need none).
    let st = bridge.status_json();
    assert!(st["channel"]["refused"]["handshake_evicted"].as_u64().unwrap() >= 1, "{}", st["channel"]);
    drop(idle);
}

// ---------------------------------------------------------------- item 4

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_idle_connections_leave_healthz_and_the_channel_answering_within_bounded_descriptors() {
    let own = raise_own_fd_limit();
    // Each listener gets more idle sockets than the bridge's soft limit of
    // 1,024 descriptors (it raises that to the hard limit at start, and
    // its listeners cap what they hold far below either).
    let per_listener = 1100.min((own as usize).saturating_sub(300) / 2);
    let bridge = Bridge::start("", Some(1024));
    let (status, chan) = (bridge.addr("status"), bridge.addr("channel"));
    let (soft, hard) = bridge.fd_limits();
    assert_eq!(soft, hard, "the soft limit on open files is raised to the hard limit at start");

    let mut flood = idle_sockets(&status, per_listener / 2, None).await;
    flood.extend(idle_sockets(&status, per_listener / 2, Some(b"GET /healthz HTTP/1.1\r\nX-Slow: ")).await);
    flood.extend(idle_sockets(&chan, per_listener, None).await);
    eprintln!("flood: {} sockets connected; bridge holds {} descriptors", flood.len(), bridge.open_fds());

    // /healthz answers at once, on a new connection, with every idle one still open.
    let (code, body) = http_get(&status, "/healthz", Duration::from_secs(5)).unwrap_or_else(|e| panic!("/healthz: {e}\n{}", bridge.log()));
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // A subscriber is admitted too.
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(bridge.subscribe_url()))
        .await
        .expect("subscriber admitted within 5 s")
        .expect("subscriber admitted");
    ws.send(tokio_tungstenite::tungstenite::Message::text("ping")).await.unwrap();
    // The listeners hold at most their caps (status 128, channel 5 + 64),
    // whatever the number of peers.
    let fds = bridge.open_fds();
    assert!(fds < 128 + 69 + 100, "the bridge holds {fds} descriptors");
    assert!(!bridge.log().contains("Too many open files"), "{}", bridge.log());
    drop(flood);
}

#[test]
fn status_request_heads_are_bounded() {
    let bridge = Bridge::start("", None);
    let addr: std::net::SocketAddr = bridge.addr("status").parse().unwrap();
    let send = |head: String| -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(head.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string()
    };
    let headers: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert!(send(format!("GET /healthz HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n")).starts_with("HTTP/1.1 431"));
    let long = "a".repeat(20 << 10);
    assert!(send(format!("GET /healthz HTTP/1.1\r\nHost: h\r\nX-Long: {long}\r\nConnection: close\r\n\r\n")).starts_with("HTTP/1.1 431"));
    assert!(send("GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".into()).starts_with("HTTP/1.1 200"));
}

// ---------------------------------------------------------------- smaller things: the channel's protocol

/// A raw subscription: the upgrade request written by hand, the 101 read.
async fn raw_subscribe(bridge: &Bridge) -> TcpStream {
    let mut s = TcpStream::connect(bridge.addr("channel")).await.unwrap();
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
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// Reads server frames until a close frame; its (code, reason), or `None`
/// when the socket ends without one.
async fn close_frame(s: &mut TcpStream) -> Option<(u16, String)> {
    let read = async {
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.ok()?;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.ok()?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.ok()?;
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            s.read_exact(&mut payload).await.ok()?;
            if h[0] & 0x0f == 8 {
                let code = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
                return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.expect("the server answers within the deadline")
}

/// A masked client frame.
pub(crate) fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_their_rfc_6455_codes() {
    let bridge = Bridge::start("", None);
    // An unmasked client frame: 1002.
    let mut s = raw_subscribe(&bridge).await;
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(close_frame(&mut s).await.map(|c| c.0), Some(1002));
    // A text frame that is not UTF-8: 1007.
    let mut s = raw_subscribe(&bridge).await;
    s.write_all(&masked(0x1, &[0xff, 0xfe, 0xfd])).await.unwrap();
    assert_eq!(close_frame(&mut s).await.map(|c| c.0), Some(1007));
    // A frame over the 64 KiB a client may send: 1009 (the header is enough).
    let mut s = raw_subscribe(&bridge).await;
    let big = masked(0x2, &vec![0u8; 200 << 10]);
    let _ = s.write_all(&big[..14]).await;
    let (code, reason) = close_frame(&mut s).await.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    // A well-behaved client in the meantime is answered as before.
    let mut s = raw_subscribe(&bridge).await;
    s.write_all(&masked(0x1, b"hello")).await.unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(h[0], 0x81, "a text frame answers");
    let deadline = Instant::now() + DEADLINE;
    while bridge.status_json()["channel"]["closed"]["protocol_error"] != 3 {
        assert!(Instant::now() < deadline, "{}", bridge.status_json()["channel"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_plain_http_get_on_the_channel_is_told_how_to_subscribe() {
    let bridge = Bridge::start("", None);
    let chan = bridge.addr("channel");
    for path in ["/stream", "/", &format!("/stream?key={TOKEN}")] {
        let addr: std::net::SocketAddr = chan.parse().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {chan}\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{path}: {out:?}");
        assert!(out.contains("\r\nUpgrade: websocket\r\n"), "{out}");
        let body = out.split_once("\r\n\r\n").unwrap().1;
        assert!(body.contains("WebSocket") && body.contains("/stream?key=<token>") && body.ends_with('\n'), "{body}");
        assert!(!body.contains(TOKEN), "{body}");
    }
    assert_eq!(bridge.status_json()["channel"]["refused"]["not_websocket"], 3);
}

// ---------------------------------------------------------------- item 9

/// `check-config` and `run` on a config whose channel token is `token`
/// (inline) or the content of a token file; both must exit 64 naming the key.
#[test]
fn weak_tokens_are_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // An existing log directory: check-config also checks that the globs
    // match (an empty directory is only a warning).
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let cfg = |channel: &str| -> PathBuf {
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!(
                "state_dir = {:?}\n[[source]]\npaths = [{:?}]\n[channel]\nlisten = \"127.0.0.1:0\"\n{channel}\n\
                 [status]\nenabled = false\n",
                dir.path().join("state").display().to_string(),
                dir.path().join("logs/*.log").display().to_string()
            ),
        )
        .unwrap();
        p
    };
    let token_file = dir.path().join("channel.token");
    let file_key = format!("token_file = {:?}", token_file.display().to_string());
    let cases: [(&str, &str, &str); 8] = [
        ("token = \" \"", "", "channel.token"),
        ("token = \"aaaaaaaaaaaaaaaa\"", "", "channel.token"),
        (&file_key, "s3cret-s3cret-s3cret-s3cret-\n", "channel.token_file"),
        ("token = \"                \"", "", "channel.token"),
        ("token = \"s3cret\"", "", "channel.token"),
        ("token = \"0123456789abcde\"", "", "channel.token"),
        (&file_key, "tiny\n", "channel.token_file"),
        (&file_key, "with a space in the middle\n", "channel.token_file"),
    ];
    for (channel, file, key) in cases {
        std::fs::write(&token_file, file).unwrap();
        let c = cfg(channel);
        for cmd in ["check-config", "run"] {
            let out = support::cmd().args([cmd, "--config"]).arg(&c).stdin(Stdio::null()).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{cmd} with {channel:?} / {file:?}: {err}");
            assert!(err.contains(key), "{cmd}: the message names {key}: {err}");
            assert!(!err.contains("s3cret") && !err.contains("tiny") && !err.contains("the middle"), "the token is not printed: {err}");
        }
    }
    // At the minimum length, it runs.
    std::fs::write(&token_file, "0123456789abcdef\n").unwrap();
    let out = support::cmd().args(["check-config", "--config"]).arg(cfg(&file_key)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_demo_token_and_example_configs_pass_the_token_rule() {
    assert!(calllog_bridge::demo::DEMO_TOKEN.len() >= calllog_bridge::config::MIN_TOKEN_BYTES);
    calllog_bridge::config::check_token("demo", &calllog_bridge::config::Secret::new(calllog_bridge::demo::DEMO_TOKEN)).unwrap();
    for example in ["examples/bridge.toml", "packaging/config.toml"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(example)).unwrap();
        for line in text.lines().filter(|l| l.trim_start().trim_start_matches('#').trim_start().starts_with("token =")) {
            let v = line.split_once('=').unwrap().1.trim().trim_matches('"');
            calllog_bridge::config::check_token(example, &calllog_bridge::config::Secret::new(v))
                .unwrap_or_else(|e| panic!("{example}: an example token an operator may copy fails the rule: {e}"));
        }
    }
}

// ---------------------------------------------------------------- item 7

#[test]
fn the_dashboard_policy_allows_only_this_bridges_channel_and_the_allow_list() {
    let bridge = Bridge::start("dashboard_channel_origins = [\"wss://Bridge.Example.com:443/\"]", None);
    let status = bridge.addr("status");
    let chan = bridge.addr("channel");
    let addr: std::net::SocketAddr = status.parse().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let csp = out.lines().find_map(|l| l.strip_prefix("content-security-policy: ")).unwrap_or_else(|| panic!("no CSP: {out}")).to_string();
    let connect = csp.split(';').map(str::trim).find_map(|d| d.strip_prefix("connect-src ")).unwrap();
    let sources: Vec<&str> = connect.split_whitespace().collect();
    assert_eq!(sources, ["'self'", &format!("ws://{chan}"), "wss://bridge.example.com"], "{csp}");
    assert!(out.contains(r#"<meta name="channel-origins" content="wss://bridge.example.com">"#), "the page knows the allow-list");
    // A bad entry is a config error naming the key.
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c.toml");
    std::fs::write(
        &c,
        "[[source]]\npaths = [\"/x/*.log\"]\n[file_output]\npath = \"/tmp/o\"\n[status]\ndashboard_channel_origins = [\"ws:\"]\n",
    )
    .unwrap();
    let out = support::cmd().args(["check-config", "--config"]).arg(&c).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("status.dashboard_channel_origins"), "{out:?}");
}

// ---------------------------------------------------------------- smaller things: tail

/// A stream server (tungstenite's, with its handshake callback) that answers each subscription with a lost notice for
/// what it asked (`lost = first_available - since`, the oldest record
/// moving on by 50 per connection) and closes, then on the fourth
/// connection sends one record. Returns the `since` of each connection.
// The callback's error type (an HTTP response) is tungstenite's.
#[allow(clippy::result_large_err)]
async fn lossy_server(listener: tokio::net::TcpListener) -> Vec<u64> {
    let mut asked = Vec::new();
    for n in 0..4u64 {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut since = 0;
        let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            let q = req.uri().query().unwrap_or("");
            since = q.split('&').find_map(|p| p.strip_prefix("since=")).and_then(|v| v.parse().ok()).unwrap_or(0);
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, cb).await.unwrap();
        asked.push(since);
        let first_available = 101 + 50 * n;
        let msg = if n < 3 {
            format!(
                r#"{{"data":[],"lost":{},"since":{since},"first_available":{first_available}}}"#,
                first_available.saturating_sub(since.max(1))
            )
        } else {
            format!(r#"{{"data":[{{"request_uuid":"u-{since}"}}],"seq":{since}}}"#)
        };
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg)).await.unwrap();
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    }
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_counts_lost_records_once_across_back_to_back_notices() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/stream?key={TOKEN}", listener.local_addr().unwrap());
    let server = tokio::spawn(lossy_server(listener));
    let out = tokio::task::spawn_blocking(move || {
        support::cmd().args(["tail", &url, "--since", "1", "--count", "1"]).stdin(Stdio::null()).output().unwrap()
    })
    .await
    .unwrap();
    let asked = server.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Each reconnect resumes where the previous notice said records are.
    assert_eq!(asked, [1, 101, 151, 201], "{err}");
    let reported: Vec<u64> = err
        .lines()
        .filter(|l| l.contains("no longer available"))
        .map(|l| l.split("warning: ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    // 1..=200 are gone: 100, then 50, then 50; never 100 + 150 + 200.
    assert_eq!(reported, [100, 50, 50], "{err}");
    assert!(err.contains("200 lost in total"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"request_uuid":"u-201"}"#);
}

// ---------------------------------------------------------------- the same class elsewhere

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_a_byte_at_a_time_is_cut_off_on_both_listeners() {
    let bridge = Bridge::start("", None);
    let mut status = TcpStream::connect(bridge.addr("status")).await.unwrap();
    let mut chan = TcpStream::connect(bridge.addr("channel")).await.unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    // One byte a second (slowloris): each byte keeps any per-read timeout
    // from firing; the head never completes.
    let mut closed = [None, None];
    for &b in head.iter().cycle().take(40) {
        for (i, s) in [&mut status, &mut chan].into_iter().enumerate() {
            if closed[i].is_none() && s.write_all(&[b]).await.is_err() {
                closed[i] = Some(started.elapsed());
            }
            // A close shows on read as EOF, a reset, or a last answer.
            let mut buf = [0u8; 512];
            if closed[i].is_none() && tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await.is_ok() {
                closed[i] = Some(started.elapsed());
            }
        }
        if closed.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (name, c) in ["status", "channel"].iter().zip(closed) {
        let c = c.unwrap_or_else(|| panic!("{name}: a head trickled for 40 s was never cut off"));
        assert!(c < Duration::from_secs(15), "{name}: cut off after {c:?}");
    }
    assert_eq!(bridge.status_json()["channel"]["refused"]["handshake_timeout"], 1);
}

/// A server at the `--status-url` that answers 200 and sends `total`
/// bytes of JSON-ish body, then holds the connection.
async fn endless_status(listener: tokio::net::TcpListener, total: usize) {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut req = [0u8; 1024];
    let _ = s.read(&mut req).await;
    let _ = s
        .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n[", total + 10).as_bytes())
        .await;
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0;
    while sent < total {
        if s.write_all(&chunk).await.is_err() {
            return;
        }
        sent += chunk.len();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_reads_a_bounded_status_document_whatever_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(endless_status(listener, 100 << 20));
    let out = tokio::task::spawn_blocking(move || support::cmd().args(["lag", "--status-url", &url]).output().unwrap()).await.unwrap();
    server.abort();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sent more than 64 MiB"), "{err}");
}
