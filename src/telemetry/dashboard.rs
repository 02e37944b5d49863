//! The live dashboard: one page, served by the status listener at `/`.
//!
//! The page (`assets/dashboard/`: HTML, CSS and plain JavaScript, no
//! library, no build step) is embedded in the binary with `include_str!`, so
//! it works offline and with no other web server. In the browser it reads
//! `/status` every 1.5 s and subscribes to the local channel over WebSocket
//! with the channel token (typed once, or given as `#token=...` in the URL
//! fragment, which never reaches a server log); it aggregates records in the
//! page with bounded buffers and renders a few times per second.
//!
//! Use: open `http://<status listen>/#token=<channel token>` (the token
//! then stays in the tab's session storage and leaves the address bar).
//! The channel URL comes from `/status` (`channel.listen`, `channel.path`);
//! `#ws=ws://host:port/stream` overrides it (a channel behind a proxy), and
//! `#since=<seq>` replays from that sequence number on first connect. On a
//! reconnect the page asks for `since=<last seq + 1>`, so a bridge restart
//! loses nothing; records re-delivered after a crash are dropped by
//! `request_uuid`. Aggregates are on `window.__dashboard` (see
//! `snapshot()`) for tests and the browser console.
//!
//! The token goes only where this bridge says: the page subscribes to the
//! channel that `/status` names, to its own origin, or to an origin listed
//! in `[status] dashboard_channel_origins` ([`Policy`]); a `#ws=` naming any
//! other origin is refused in the page, and the Content-Security-Policy's
//! `connect-src` allows exactly those origins, so a crafted link cannot
//! make the browser send the token elsewhere.
//!
//! Invariant: this module serves fixed bytes (the allow-list is written
//! into the page's `channel-origins` meta tag) with a policy computed per
//! request. It never sees the channel token and holds no state; everything
//! live comes from `/status` and the channel, which do their own
//! authorisation.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::header::{HeaderName, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{ChannelInfo, Telemetry};
use crate::settings::StatusConfig;

/// The page.
pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
/// The page's script.
pub const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
/// The history panel's script.
pub const HISTORY_JS: &str = include_str!("../../assets/dashboard/history.js");
/// The page's style sheet.
pub const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");

/// Where the page is served, and its two assets (relative to the page, so a
/// reverse proxy may mount the status listener under a prefix).
pub const INDEX_PATH: &str = "/";
/// Path of the script.
pub const APP_JS_PATH: &str = "/dashboard/app.js";
/// Path of the history panel's script.
pub const HISTORY_JS_PATH: &str = "/dashboard/history.js";
/// Path of the style sheet.
pub const STYLE_CSS_PATH: &str = "/dashboard/style.css";

/// In `index.html`, replaced by the allow-list (space-separated origins).
const ORIGINS_PLACEHOLDER: &str = "{{channel_origins}}";

/// Where the page may subscribe besides its own origin and the channel
/// `/status` names.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// WebSocket origins from `[status] dashboard_channel_origins`,
    /// normalised (`wss://host[:port]`, lower case, default port left out).
    pub channel_origins: Arc<[String]>,
}

impl From<&StatusConfig> for Policy {
    fn from(c: &StatusConfig) -> Self {
        // The config validated them; an entry that does not normalise is skipped.
        Policy { channel_origins: c.dashboard_channel_origins.iter().filter_map(|o| crate::settings::ws_origin(o)).collect() }
    }
}

/// The dashboard's routes, to merge into the status router:
/// `router.merge(dashboard::routes(policy, telemetry))`.
pub fn routes<S: Clone + Send + Sync + 'static>(policy: Policy, telemetry: Telemetry) -> Router<S> {
    let page = Page(Arc::new((policy, telemetry)));
    let (p1, p2, p3, p4) = (page.clone(), page.clone(), page.clone(), page);
    Router::new()
        .route(INDEX_PATH, get(move |h: HeaderMap| async move { p1.serve(&h, "text/html; charset=utf-8", &p1.index_html()) }))
        .route(APP_JS_PATH, get(move |h: HeaderMap| async move { p2.serve(&h, "text/javascript; charset=utf-8", APP_JS) }))
        .route(STYLE_CSS_PATH, get(move |h: HeaderMap| async move { p3.serve(&h, "text/css; charset=utf-8", STYLE_CSS) }))
        .route(HISTORY_JS_PATH, get(move |h: HeaderMap| async move { p4.serve(&h, "text/javascript; charset=utf-8", HISTORY_JS) }))
}

/// What the handlers need: the allow-list and where the channel listens.
#[derive(Clone)]
struct Page(Arc<(Policy, Telemetry)>);

impl Page {
    /// The page with the allow-list in its `channel-origins` meta tag.
    fn index_html(&self) -> String {
        INDEX_HTML.replace(ORIGINS_PLACEHOLDER, &self.0 .0.channel_origins.join(" "))
    }

    fn serve(&self, headers: &HeaderMap, content_type: &'static str, body: &str) -> Response {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let policy = csp(self.0 .1.channel().as_ref(), host, &self.0 .0.channel_origins);
        // Every part of the policy is validated ASCII; fall back to the
        // strictest policy should that ever not hold.
        let policy = HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"));
        (
            [
                (CONTENT_TYPE, HeaderValue::from_static(content_type)),
                // Small and versioned with the binary: revalidate, never serve a
                // stale page after an upgrade.
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (CONTENT_SECURITY_POLICY, policy),
                (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                (HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer")),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

/// The Content-Security-Policy: everything from this origin only, no
/// inline script, no eval; `connect-src` allows this origin (`/status`,
/// and a channel served under the same origin by a proxy), the bridge's
/// channel (`channel`, as the page reaches it from `host`, the request's
/// `Host`), and the allow-list. No other WebSocket origin.
pub fn csp(channel: Option<&ChannelInfo>, host: Option<&str>, allowed: &[String]) -> String {
    let mut connect = String::from("'self'");
    if let Some(origin) = channel.and_then(|c| channel_origin(c, host)) {
        connect.push(' ');
        connect.push_str(&origin);
    }
    for o in allowed {
        connect.push(' ');
        connect.push_str(o);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The channel's WebSocket origin as the page computes it from `/status`
/// (`channelFromStatus` in app.js): its listen address, or the page's host
/// when the channel listens on every address. `None` when `host` is needed
/// and is not a plain host name or address.
pub fn channel_origin(channel: &ChannelInfo, host: Option<&str>) -> Option<String> {
    let addr: SocketAddr = channel.listen.parse().ok()?;
    let scheme = if channel.tls { "wss" } else { "ws" };
    let name = match addr.ip() {
        ip if ip.is_unspecified() => hostname(host?)?,
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    Some(format!("{scheme}://{name}:{}", addr.port()))
}

/// The host name of a `Host` header value (`name[:port]`, `[v6][:port]`),
/// lower case; `None` unless it is made of host-name characters only (it
/// goes into a header).
fn hostname(host: &str) -> Option<String> {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            let (inner, _) = rest.split_once(']')?;
            if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return None;
            }
            return Some(format!("[{}]", inner.to_ascii_lowercase()));
        }
        None => host.split(':').next().unwrap_or(""),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_refers_to_its_assets_relatively() {
        // Relative references keep working under a reverse-proxy prefix.
        assert!(INDEX_HTML.contains(r#"src="dashboard/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="dashboard/style.css""#));
        assert_eq!(APP_JS_PATH.trim_start_matches('/'), "dashboard/app.js");
        assert_eq!(STYLE_CSS_PATH.trim_start_matches('/'), "dashboard/style.css");
    }

    #[test]
    fn page_loads_nothing_from_elsewhere() {
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", APP_JS), ("style.css", STYLE_CSS)] {
            for bad in ["http://", "https://", "//cdn", "@import", "<script>"] {
                assert!(!text.contains(bad), "{name} contains {bad:?}");
            }
        }
    }

    #[test]
    fn page_has_the_ids_tests_and_operators_rely_on() {
        for id in [
            "conn-state",
            "calls-total",
            "calls-per-sec",
            "status-2xx",
            "status-4xx",
            "status-5xx",
            "errors-mashery",
            "errors-api",
            "last-seq",
            "files",
            "sync-chart",
            "tail",
            "tail-filter",
            "export-panel",
            "export-slices",
        ] {
            assert!(INDEX_HTML.contains(&format!(r#"id="{id}""#)), "missing #{id}");
        }
    }
}
