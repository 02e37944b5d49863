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
//! Invariant: this module only serves static bytes. It never sees the
//! channel token and holds no state; everything live comes from `/status`
//! and the channel, which do their own authorisation.

use axum::http::header::{HeaderName, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The page.
pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
/// The page's script.
pub const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
/// The page's style sheet.
pub const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");

/// Where the page is served, and its two assets (relative to the page, so a
/// reverse proxy may mount the status listener under a prefix).
pub const INDEX_PATH: &str = "/";
/// Path of the script.
pub const APP_JS_PATH: &str = "/dashboard/app.js";
/// Path of the style sheet.
pub const STYLE_CSS_PATH: &str = "/dashboard/style.css";

/// Everything from this origin only; the channel is another port, so
/// `connect-src` also allows WebSocket URLs. No inline script, no eval.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the status router:
/// `router.merge(dashboard::routes())`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(INDEX_PATH, get(index)).route(APP_JS_PATH, get(app_js)).route(STYLE_CSS_PATH, get(style_css))
}

/// `GET /`: the page.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard/app.js`.
pub async fn app_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /dashboard/style.css`.
pub async fn style_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            // Small and versioned with the binary: revalidate, never serve a
            // stale page after an upgrade.
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
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
        ] {
            assert!(INDEX_HTML.contains(&format!(r#"id="{id}""#)), "missing #{id}");
        }
    }
}
