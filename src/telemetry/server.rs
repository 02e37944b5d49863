//! The status listener (`[status] listen`, loopback by default): an axum
//! server with
//!
//! - `GET /metrics`: Prometheus text format ([`super::metrics`]);
//! - `GET /status`: the JSON [`super::Status`] that `lag` reads;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 once the bridge called `Telemetry::set_ready(true)`,
//!   503 before (and after `set_ready(false)` at shutdown), and 503 with one
//!   line per problem while a component cannot write (a full disk: see
//!   [`super::fault`]), or a source matches no file (beyond
//!   `no_files_after_secs`) or cannot read one;
//! - `GET /`: the live dashboard ([`super::dashboard`]).
//!
//! Shutdown is a parameter ([`serve`] takes a future, [`start`] a
//! `CancellationToken`), so tests and the bridge stop it the same way.
//! At most [`MAX_CONCURRENT_REQUESTS`] requests are served at once; more
//! get 503 rather than queueing without bound.
//!
//! Every peer is bounded: at most [`MAX_CONNECTIONS`] sockets are open
//! (a place is taken before `accept`; when all are taken, the longest-idle
//! connection is closed to admit the new one, see [`crate::listener`]), a
//! connection with no request in flight for [`IDLE_TIMEOUT`] since its
//! accept or its last response is closed
//! (this also ends a request head trickled byte by byte), and a request
//! head is at most [`MAX_REQUEST_HEAD_BYTES`] and [`MAX_HEADERS`] headers
//! (431 beyond). HTTP/1.1 only: the clients are a scraper, `lag` and a
//! browser.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::status::StatusSettings;
use super::Telemetry;
use super::{dashboard, metrics};
use crate::listener::{Gate, Slot};
use crate::settings::StatusConfig;
use crate::time;

/// Requests served concurrently; the status page is for a scraper and a
/// few operators, so a small bound keeps a misbehaving client from
/// using the bridge's CPU.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;

/// Sockets open at once. A scraper, `lag` and a few browser tabs need a
/// handful; the cap keeps idle or hostile peers from using up the
/// process's file descriptors (the status listener shares them with the
/// followed files and the channel).
pub const MAX_CONNECTIONS: usize = 128;

/// A connection with no request in flight for this long is closed: a
/// keep-alive client reconnects for its next request; a peer that sends
/// nothing, or a request head a byte at a time, holds its socket no longer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A request head must be complete within this long after its first byte
/// (hyper's own check; [`IDLE_TIMEOUT`] covers a connection that sends
/// nothing at all).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers) read; more is
/// answered with 431. The endpoints take short URLs and no body. (hyper's
/// smallest allowed buffer is 8 KiB.)
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 << 10;

/// The most headers a request may carry (431 beyond).
pub const MAX_HEADERS: usize = 32;

/// At shutdown, requests in flight get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Name of the file in the state directory that holds the bound address
/// (useful with `listen = "127.0.0.1:0"`; `lag --config` reads it).
pub const ADDR_FILE: &str = crate::state_dir::StateDir::STATUS_ADDR;

#[derive(Clone)]
struct AppState {
    /// The registry to report.
    telemetry: Telemetry,
    /// Window, idle and stall settings; per-file labels or not.
    settings: StatusSettings,
    /// Permits for concurrent requests.
    permits: Arc<Semaphore>,
}

/// The router with every endpoint (no listener).
pub fn router(telemetry: Telemetry, settings: StatusSettings, dashboard: dashboard::Policy) -> Router {
    let page = dashboard::routes(dashboard, telemetry.clone());
    let state = AppState { telemetry, settings, permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)) };
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/status", get(get_status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/history", get(get_history))
        .route("/history.svg", get(get_history_svg))
        .merge(page)
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit))
        .with_state(state)
}

async fn limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.permits.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "too many concurrent requests\n").into_response(),
    }
}

async fn get_metrics(State(st): State<AppState>) -> Response {
    let body = metrics::render(&st.telemetry, &st.settings, time::now_ms());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

async fn get_status(State(st): State<AppState>) -> Response {
    Json(st.telemetry.status(time::now_ms(), &st.settings)).into_response()
}

async fn get_history(State(st): State<AppState>, q: axum::extract::Query<super::history::Query>) -> Response {
    match super::history::report_for(&st.telemetry, &q, time::now_ms()) {
        Ok(r) => Json(r.to_json()).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn get_history_svg(State(st): State<AppState>, q: axum::extract::Query<super::history::Query>) -> Response {
    match super::history::report_for(&st.telemetry, &q, time::now_ms()) {
        Ok(r) => {
            ([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-cache")], crate::history::chart::svg(&r)).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AppState>) -> Response {
    let faults = st.telemetry.faults();
    if !st.telemetry.is_ready() && faults.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    // Up, but a component that cannot write, or a source that matches
    // nothing or cannot read a file, is not doing its job: say so rather
    // than answer 200.
    let mut problems: Vec<String> =
        faults.iter().map(|f| format!("{} cannot write since {}: {}", f.component, f.since, crate::logsafe::Escaped(&f.error))).collect();
    problems.extend(st.telemetry.source_problems(time::now_ms(), &st.settings).iter().map(|p| crate::logsafe::Escaped(p).to_string()));
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", problems.join("\n"))).into_response()
    }
}

/// Serves the endpoints on `listener` until `shutdown` completes, then
/// finishes the requests in flight (idle connections close at once).
pub async fn serve(
    listener: TcpListener,
    telemetry: Telemetry,
    settings: StatusSettings,
    dashboard: dashboard::Policy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(telemetry, settings, dashboard);
    let gate = Gate::new("status", MAX_CONNECTIONS);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        // The place first (mini-redis): a full listener makes room before
        // it accepts, so it never holds more than MAX_CONNECTIONS sockets.
        // The connection's idle clock starts at the accept (`fill`).
        let vacancy = tokio::select! {
            s = gate.acquire() => s,
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!(error = %e, "status listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        tracker.spawn(serve_connection(tcp, peer, vacancy.fill(), router.clone(), stop.clone()));
    }
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Serves one connection (HTTP/1.1, keep-alive) until the client closes
/// it, it stays idle for [`IDLE_TIMEOUT`], the gate needs its slot, or
/// `stop` (then in-flight requests get [`SHUTDOWN_GRACE`]).
async fn serve_connection(tcp: TcpStream, peer: SocketAddr, slot: Slot, router: Router, stop: CancellationToken) {
    let _ = tcp.set_nodelay(true);
    let slot = Arc::new(slot);
    let in_service = slot.clone();
    let inner = TowerToHyperService::new(router);
    // A request in flight marks the connection busy: never closed to make
    // room, and its idle time starts when the response is handed over.
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let busy = in_service.busy();
        let response = hyper::service::Service::call(&inner, req);
        async move {
            let r = response.await;
            drop(busy);
            r
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_REQUEST_HEAD_BYTES).max_headers(MAX_HEADERS);
    let conn = http.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "status listener: connection ended with an error");
            }
            return;
        }
        _ = slot.evicted() => {
            debug!(%peer, "status listener: idle connection closed to make room");
            return;
        }
        _ = slot.idle_for(IDLE_TIMEOUT) => {
            debug!(%peer, "status listener: idle connection closed");
            return;
        }
        _ = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}

/// A running status listener.
pub struct StatusServer {
    /// The address actually bound (the port is chosen by the OS for `:0`).
    pub addr: SocketAddr,
    /// The server task; ends after `shutdown` is cancelled.
    pub task: JoinHandle<std::io::Result<()>>,
}

impl StatusServer {
    /// Waits for the server to end (after its shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("status server task panicked")?.context("status server failed")
    }
}

/// Binds `[status] listen` and serves until `shutdown` is cancelled.
pub async fn start(cfg: &StatusConfig, telemetry: Telemetry, shutdown: CancellationToken) -> anyhow::Result<StatusServer> {
    let listener = crate::listener::bind("status.listen", cfg.listen)?;
    start_on(listener, cfg, telemetry, shutdown)
}

/// Serves on `listener`, bound beforehand ([`crate::preflight`] binds every
/// listener before the bridge starts), until `shutdown` is cancelled.
pub fn start_on(
    listener: std::net::TcpListener,
    cfg: &StatusConfig,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<StatusServer> {
    listener.set_nonblocking(true).context("status listener")?;
    let listener = TcpListener::from_std(listener).context("status listener")?;
    let addr = listener.local_addr().context("status listener address")?;
    let settings = StatusSettings::from(cfg);
    let dashboard = dashboard::Policy::from(cfg);
    let task = tokio::spawn(serve(listener, telemetry, settings, dashboard, async move { shutdown.cancelled().await }));
    Ok(StatusServer { addr, task })
}

/// Path of the address file in `state_dir`.
pub fn addr_file(state_dir: &Path) -> PathBuf {
    crate::state_dir::StateDir::new(state_dir).status_addr()
}

/// Writes `addr` to `<state_dir>/status.addr` (atomically, so a reader
/// never sees half an address).
pub async fn write_addr_file(state_dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    crate::state_dir::write_atomic_async(addr_file(state_dir), format!("{addr}\n").into_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_health_and_readiness_then_shuts_down() {
        let tel = Telemetry::new();
        let cfg = StatusConfig { listen: "127.0.0.1:0".parse().unwrap(), ..StatusConfig::default() };
        let stop = CancellationToken::new();
        let srv = start(&cfg, tel.clone(), stop.clone()).await.unwrap();
        let base = format!("http://{}", srv.addr);
        let c = reqwest::Client::new();
        assert_eq!(c.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
        assert_eq!(c.get(format!("{base}/readyz")).send().await.unwrap().status(), 503);
        tel.set_ready(true);
        assert_eq!(c.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
        let r = c.get(format!("{base}/metrics")).send().await.unwrap();
        assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        assert!(r.text().await.unwrap().contains("calllog_bridge_ready 1"));
        stop.cancel();
        srv.wait().await.unwrap();
    }
}
