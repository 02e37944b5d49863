//! The dashboard page as the status listener serves it, over a real socket:
//! the page and its assets with their headers, and the `/status` fields the
//! page's script reads (a contract test between `assets/dashboard/app.js`
//! and `telemetry::status`). The browser end-to-end test is
//! `tests/e2e/dashboard.test.mjs` (run by `scripts/e2e.sh`).

use calllog_bridge::config::StatusConfig;
use calllog_bridge::telemetry::{dashboard, server, ChannelInfo, Telemetry};
use calllog_bridge::time::now_ms;
use tokio_util::sync::CancellationToken;

struct Listener {
    base: String,
    shutdown: CancellationToken,
    server: server::StatusServer,
}

async fn start(telemetry: Telemetry) -> Listener {
    let cfg = StatusConfig { listen: "127.0.0.1:0".parse().unwrap(), ..StatusConfig::default() };
    let shutdown = CancellationToken::new();
    let server = server::start(&cfg, telemetry, shutdown.clone()).await.unwrap();
    Listener { base: format!("http://{}", server.addr), shutdown, server }
}

impl Listener {
    async fn stop(self) {
        self.shutdown.cancel();
        self.server.wait().await.unwrap();
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

#[tokio::test]
async fn page_and_assets_are_served_with_their_types_and_a_strict_policy() {
    let l = start(Telemetry::new()).await;
    let http = reqwest::Client::new();
    for (path, ctype, body) in [
        ("/", "text/html", dashboard::INDEX_HTML),
        ("/dashboard/app.js", "text/javascript", dashboard::APP_JS),
        ("/dashboard/style.css", "text/css", dashboard::STYLE_CSS),
    ] {
        let r = http.get(format!("{}{path}", l.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(header(&r, "content-type").starts_with(ctype), "{path}: {}", header(&r, "content-type"));
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        let csp = header(&r, "content-security-policy").to_string();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{path}: {csp}");
        // No channel registered: this origin only; never any ws:/wss: host.
        assert!(csp.contains("connect-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains(" ws:") && !csp.contains(" wss:"), "no wildcard WebSocket origins: {csp}");
        let text = r.text().await.unwrap();
        if path == "/" {
            assert_eq!(text, body.replace("{{channel_origins}}", ""), "{path}");
        } else {
            assert_eq!(text, body, "{path}");
        }
    }
    l.stop().await;
}

#[tokio::test]
async fn the_policy_allows_the_channel_as_the_page_reaches_it() {
    let tel = Telemetry::new();
    let l = start(tel.clone()).await;
    let http = reqwest::Client::new();
    let connect_src = |csp: &str| csp.split(';').map(str::trim).find_map(|d| d.strip_prefix("connect-src ")).unwrap().to_string();
    let policy = |host: &'static str| {
        let http = http.clone();
        let url = format!("{}/", l.base);
        async move {
            let r = http.get(url).header("host", host).send().await.unwrap();
            header(&r, "content-security-policy").to_string()
        }
    };
    tel.figures("channel").set_endpoint(Some(ChannelInfo { listen: "127.0.0.1:8790".into(), tls: false, path: "/stream".into() }));
    assert_eq!(connect_src(&policy("localhost:8791").await), "'self' ws://127.0.0.1:8790");
    // A channel on every address is reached at the page's host.
    tel.figures("channel").set_endpoint(Some(ChannelInfo { listen: "0.0.0.0:8790".into(), tls: true, path: "/stream".into() }));
    assert_eq!(connect_src(&policy("Gateway-7.example:8791").await), "'self' wss://gateway-7.example:8790");
    assert_eq!(connect_src(&policy("[fd00::7]:8791").await), "'self' wss://[fd00::7]:8790");
    // A Host that is not a host name adds nothing.
    assert_eq!(connect_src(&policy("evil;script-src").await), "'self'");
    l.stop().await;
}

#[tokio::test]
async fn every_asset_the_page_references_resolves() {
    let l = start(Telemetry::new()).await;
    let http = reqwest::Client::new();
    let html = http.get(format!("{}/", l.base)).send().await.unwrap().text().await.unwrap();
    let mut refs = 0;
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let target = &part[..part.find('"').unwrap()];
            if target.starts_with("data:") {
                continue;
            }
            refs += 1;
            let r = http.get(format!("{}/{target}", l.base)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{target}");
        }
    }
    assert_eq!(refs, 3, "the page references its two scripts (app, history panel) and its style sheet");
    l.stop().await;
}

#[tokio::test]
async fn status_carries_every_field_the_page_reads() {
    let tel = Telemetry::new();
    tel.figures("channel").set_endpoint(Some(ChannelInfo {
        listen: "127.0.0.1:8790".into(),
        tls: false,
        path: "/ecls/subscribe/local/local".into(),
    }));
    let now = now_ms();
    let file = tel.file("/var/log/le/access.log");
    file.set_position(2000, 1000);
    file.sync_delays(now, [Some(2500), Some(2400)]);
    file.written(now, [Some(now - 1500), Some(now - 1400)]);
    let sink = tel.sink("channel");
    sink.enqueued(2);
    sink.delivered(2, now, now + 3);
    let l = start(tel).await;
    let st: serde_json::Value = reqwest::get(format!("{}/status", l.base)).await.unwrap().json().await.unwrap();

    // app.js channelFromStatus(): channel.listen, channel.path, channel.tls.
    assert_eq!(st["channel"]["listen"], "127.0.0.1:8790");
    assert_eq!(st["channel"]["path"], "/ecls/subscribe/local/local");
    assert_eq!(st["channel"]["tls"], false);
    // renderFiles() / recordFiles() / fileDelay().
    let f = &st["files"][0];
    assert_eq!(f["path"], "/var/log/le/access.log");
    assert_eq!(f["bytes_behind"], 1000);
    assert_eq!(f["records"], 2);
    assert!(matches!(f["state"].as_str(), Some("caught-up" | "behind" | "idle" | "stalled")), "{f}");
    for k in ["p50", "p95", "max"] {
        assert!(f["sync_delay_ms"][k].is_i64(), "files[].sync_delay_ms.{k}: {f}");
    }
    assert!((2400..=2600).contains(&f["sync_delay_ms"]["p50"].as_i64().unwrap()), "{f}");
    assert!((1400..=1500).contains(&f["transfer_delay_ms"]["p95"].as_i64().unwrap()), "files[].transfer_delay_ms.p95: {f}");
    // renderSinks().
    let s = &st["sinks"][0];
    assert_eq!(s["name"], "channel");
    assert_eq!(s["delivered_records"], 2);
    for k in ["queue_depth", "retries", "dropped_records"] {
        assert!(s[k].is_number(), "sinks[].{k}: {s}");
    }
    assert!(s.get("oldest_undelivered_age_ms").is_some(), "{s}");
    assert_eq!(s["delivery_delay_ms"]["p95"], 3);
    // The page reads these names; a rename in /status must fail here.
    for name in ["sync_delay_ms", "bytes_behind", "queue_depth", "oldest_undelivered_age_ms", "delivery_delay_ms", "first_available"] {
        assert!(dashboard::APP_JS.contains(name), "app.js no longer reads {name}");
    }
    l.stop().await;
}

#[tokio::test]
async fn status_carries_the_export_figures_the_page_reads() {
    use calllog_bridge::sink::export::slice::Slice;
    use calllog_bridge::sink::export::stats::{ExportStats, Synced};

    let tel = Telemetry::new();
    let l = start(tel.clone()).await;
    // No `[export]`: no `export` section, so the page shows no panel.
    let st: serde_json::Value = reqwest::get(format!("{}/status", l.base)).await.unwrap().json().await.unwrap();
    assert!(st.get("export").is_none(), "{st}");

    let stats = ExportStats::published_in(tel.figures("export"));
    let s = Slice { start_ms: 1_795_946_400_000 };
    stats.synced(s, Synced { records: 40, worst_sync_delay_ms: Some(61_000), ..Synced::default() });
    stats.published(s, true, 1_795_946_465_000, false);
    stats.late_file_opened(s, 1);
    stats.synced(s, Synced { records: 5, late: true, worst_sync_delay_ms: Some(2_000), ..Synced::default() });
    let st: serde_json::Value = reqwest::get(format!("{}/status", l.base)).await.unwrap().json().await.unwrap();
    // app.js exportSlices() / renderExport(): per-slice families keyed by
    // the slice's start, and the totals.
    let e = &st["export"];
    let k = "2026-11-29T10:00:00Z";
    assert_eq!(e["slice_open"][k], 0, "{e}");
    assert_eq!(e["slice_records"][k], 40, "{e}");
    assert_eq!(e["slice_late_records"][k], 5, "{e}");
    assert_eq!(e["slice_late_files"][k], 1, "{e}");
    assert_eq!(e["slice_closed_at_seconds"][k], 1_795_946_465, "{e}");
    assert_eq!(e["slice_worst_sync_delay_ms"][k], 61_000, "{e}");
    assert_eq!(e["slice_uploads_pending"][k], 0, "{e}");
    for total in ["records", "late_records", "late_files", "files_published", "uploads_pending", "upload_failures"] {
        assert!(e[total].is_number(), "export.{total}: {e}");
    }
    // The page reads these names; a rename in /status must fail here.
    for name in [
        "slice_open",
        "slice_records",
        "slice_late_records",
        "slice_late_files",
        "slice_closed_at_seconds",
        "slice_worst_sync_delay_ms",
        "slice_uploads_pending",
        "files_published",
        "upload_failures",
    ] {
        assert!(dashboard::APP_JS.contains(name), "app.js no longer reads {name}");
    }
    l.stop().await;
}
