//! The status listener (`[status] listen`, loopback by default): an axum
//! server with
//!
//! - `GET /metrics`: Prometheus text format ([`super::metrics`]);
//! - `GET /status`: the JSON [`super::Status`] that `lag` reads;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 once the bridge called `Telemetry::set_ready(true)`
//!   and while no component has a fault (a full disk), 503 otherwise (the
//!   body names the faults);
//! - `GET /`: the live dashboard ([`super::dashboard`]).
//!
//! Shutdown is a parameter ([`serve`] takes a future, [`start`] a
//! `CancellationToken`), so tests and the bridge stop it the same way.
//! At most [`MAX_CONCURRENT_REQUESTS`] requests are served at once; more
//! get 503 rather than queueing without bound.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::status::StatusSettings;
use super::Telemetry;
use super::{dashboard, metrics};
use crate::config::StatusConfig;
use crate::time;

/// Requests served concurrently; the status page is for a scraper and a
/// few operators, so a small bound keeps a misbehaving client from
/// using the bridge's CPU.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;

/// Name of the file in the state directory that holds the bound address
/// (useful with `listen = "127.0.0.1:0"`; `lag --config` reads it).
pub const ADDR_FILE: &str = "status.addr";

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
pub fn router(telemetry: Telemetry, settings: StatusSettings) -> Router {
    let state = AppState { telemetry, settings, permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)) };
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/status", get(get_status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(dashboard::routes())
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.telemetry.is_ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut body = String::from("not ready\n");
    for f in st.telemetry.faults() {
        body.push_str(&format!("{} cannot write since {}: {}\n", f.component, f.since, crate::logsafe::Escaped(&f.error)));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Serves the endpoints on `listener` until `shutdown` completes, then
/// finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    telemetry: Telemetry,
    settings: StatusSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(telemetry, settings)).with_graceful_shutdown(shutdown).await
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
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on status.listen = {}", cfg.listen))?;
    let addr = listener.local_addr().context("status listener address")?;
    let settings = StatusSettings::from(cfg);
    let task = tokio::spawn(serve(listener, telemetry, settings, async move { shutdown.cancelled().await }));
    Ok(StatusServer { addr, task })
}

/// Path of the address file in `state_dir`.
pub fn addr_file(state_dir: &Path) -> PathBuf {
    state_dir.join(ADDR_FILE)
}

/// Writes `addr` to `<state_dir>/status.addr` (temp file, then rename, so
/// a reader never sees half an address).
pub async fn write_addr_file(state_dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let path = addr_file(state_dir);
    let tmp = state_dir.join(format!(".{ADDR_FILE}.tmp"));
    tokio::fs::write(&tmp, format!("{addr}\n")).await?;
    tokio::fs::rename(&tmp, &path).await
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
