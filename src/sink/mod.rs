//! Sinks: where batches go. Each sink is a task that receives
//! `Arc<Batch>` from its bounded queue (filled by [`crate::pipeline::Fanout`])
//! and calls [`crate::pipeline::Batch::ack`] once per batch when it is
//! delivered. A sink ends when its queue closes (all senders dropped, the
//! tailers have stopped) after draining what it holds, or when `shutdown`
//! is cancelled after the grace period.

pub mod channel;
pub mod export;
pub mod file;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::{Batch, Fanout};
use crate::telemetry::Telemetry;

/// Batches buffered between the fan-out and one sink. Small: backpressure
/// should reach the tailers quickly rather than grow memory.
pub const SINK_QUEUE_BATCHES: usize = 16;

/// What every sink gets when it starts.
#[derive(Clone)]
pub struct SinkContext {
    /// The bridge's state directory (spool, dead letters).
    pub state_dir: PathBuf,
    /// Cancelled when the sink must stop now (grace period over).
    pub shutdown: CancellationToken,
    /// Statistics registry.
    pub telemetry: Telemetry,
}

/// A running sink.
pub struct SinkHandle {
    /// The sink's name (`file`, `channel`, `upstream`).
    pub name: &'static str,
    /// The sink's task; ends after draining when its queue closes.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// A new bounded queue for a sink.
pub fn queue() -> (mpsc::Sender<Arc<Batch>>, mpsc::Receiver<Arc<Batch>>) {
    mpsc::channel(SINK_QUEUE_BATCHES)
}

/// Handles to control running sinks (config reload, shutdown).
#[derive(Clone, Default)]
pub struct SinkControls {
    /// The channel, when `[channel]` is configured: its bound address,
    /// [`channel::ChannelHandle::set_token`] for a reload, and
    /// [`channel::ChannelHandle::shutdown`].
    pub channel: Option<channel::ChannelHandle>,
    /// The file sink, when `[file_output]` is configured:
    /// [`file::FileHandle::reconfigure`] for a reload.
    pub file: Option<file::FileHandle>,
    /// The upstream sink, when `[upstream]` is configured:
    /// [`upstream::UpstreamHandle::reconfigure`] for a reload.
    pub upstream: Option<upstream::UpstreamHandle>,
}

/// Starts every sink the config names and registers its queue on `fanout`.
pub async fn start_all(cfg: &Config, ctx: &SinkContext, fanout: &mut Fanout) -> anyhow::Result<Vec<SinkHandle>> {
    Ok(start_all_with_controls(cfg, ctx, fanout, None).await?.0)
}

/// [`start_all`], also returning the handles that control running sinks.
/// `channel_listener` is the channel's listener when it was bound
/// beforehand ([`crate::preflight`]); `None` binds `channel.listen` here.
pub async fn start_all_with_controls(
    cfg: &Config,
    ctx: &SinkContext,
    fanout: &mut Fanout,
    channel_listener: Option<std::net::TcpListener>,
) -> anyhow::Result<(Vec<SinkHandle>, SinkControls)> {
    let mut handles = Vec::new();
    let mut controls = SinkControls::default();
    // Each sink module adds its start call here:
    if let Some(c) = &cfg.file_output {
        let (h, f) = file::start(c, ctx, fanout).await?;
        handles.push(h);
        controls.file = Some(f);
    }
    if let Some(c) = &cfg.upstream {
        let (h, up) = upstream::start(c, ctx, fanout).await?;
        handles.push(h);
        controls.upstream = Some(up);
    }
    if let Some(c) = &cfg.channel {
        let (h, ch) = channel::start(c, ctx, fanout, channel_listener).await?;
        handles.push(h);
        controls.channel = Some(ch);
    }
    Ok((handles, controls))
}
