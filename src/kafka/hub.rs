//! A hub's Kafka source at work: connects (retrying for as long as it
//! takes), finds the partitions of its topics, runs one
//! [`read_partition`] per partition, writes the positions as they advance,
//! and looks the partitions up again every `metadata_refresh_ms` so that
//! partitions (and topics) that appear later are read too.
//!
//! Stopping (`stop` cancelled: shutdown, or a reload restarting the
//! reading side): readers stop at a batch boundary; the sinks go on
//! acknowledging what they hold, and once they have (at most
//! `DRAIN_WAIT`), the positions are written one last time. What is still
//! unacknowledged then is read again after the restart (at-least-once).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::UnknownTopicHandling;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::connect;
use super::consume::{read_partition, Observer, ReaderSettings};
use super::offsets::{Offsets, Partition};
use super::settings::SourceConfig;
use crate::checkpoint::DamagedState;
use crate::enrich::Enricher;
use crate::logsafe::Escaped;
use crate::pipeline::Fanout;

/// How long position writes are gathered before one write: the same
/// coalescing as file checkpoints.
const WRITE_COALESCE: Duration = Duration::from_millis(20);

/// How long a stopping source waits for the sinks to acknowledge the
/// batches they hold before its last write of the positions (within the
/// bridge's 20 s drain).
const DRAIN_WAIT: Duration = Duration::from_secs(15);

/// Loads the positions of `cfg`'s group; a damaged file stops the bridge.
pub fn load_offsets(state_dir: &Path, cfg: &SourceConfig) -> Result<Offsets, DamagedState> {
    Offsets::load(state_dir, &cfg.group_id)
}

/// Reads `cfg`'s topics into `fanout` until `stop`, every record through
/// `enricher` (lookups, masking) as file records go. `source` names the
/// batches (`kafka:<source name>`). Returns after the last write of the
/// positions.
pub async fn run(
    cfg: SourceConfig,
    offsets: Offsets,
    fanout: Fanout,
    source: Arc<str>,
    observer: Arc<dyn Observer>,
    enricher: Arc<Enricher>,
    stop: CancellationToken,
) {
    let reader = ReaderSettings {
        fetch_max_bytes: cfg.fetch_max_bytes,
        fetch_max_wait: cfg.fetch_max_wait,
        request_timeout: cfg.client.request_timeout,
        read_from: cfg.read_from,
        retry_initial: cfg.retry_initial,
        retry_max: cfg.retry_max,
        enricher: (!enricher.is_noop()).then_some(enricher),
    };
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(write_positions(offsets.clone(), writer_stop.clone()));
    let mut readers = JoinSet::new();
    let mut running: BTreeSet<Partition> = BTreeSet::new();
    let mut delay = cfg.retry_initial;
    let mut client = None;
    let mut failing = false;
    loop {
        if client.is_none() {
            match connect(&cfg.client).await {
                Ok(c) => client = Some(Arc::new(c)),
                Err(e) => {
                    if !failing {
                        tracing::warn!(brokers = %cfg.client.for_logs(), error = %Escaped(&e.to_string()), "kafka source: cannot connect; retrying with backoff");
                        failing = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(cfg.retry_max);
                    continue;
                }
            }
        }
        let Some(c) = client.clone() else { continue };
        match tokio::time::timeout(cfg.client.request_timeout, c.list_topics()).await {
            Ok(Ok(topics)) => {
                if failing {
                    tracing::info!(brokers = %cfg.client.for_logs(), "kafka source: connected");
                    failing = false;
                }
                delay = cfg.retry_initial;
                for name in &cfg.topics {
                    match topics.iter().find(|t| &t.name == name) {
                        Some(t) => {
                            for &p in &t.partitions {
                                let key: Partition = (name.clone(), p);
                                if running.contains(&key) {
                                    continue;
                                }
                                match c.partition_client(name.clone(), p, UnknownTopicHandling::Retry).await {
                                    Ok(pc) => {
                                        tracing::info!(topic = %Escaped(name), partition = p, position = ?offsets.resume(&key), "kafka source: reading partition");
                                        running.insert(key);
                                        readers.spawn(read_partition(
                                            Arc::new(pc),
                                            offsets.clone(),
                                            fanout.clone(),
                                            reader.clone(),
                                            source.clone(),
                                            observer.clone(),
                                            stop.clone(),
                                        ));
                                    }
                                    Err(e) => {
                                        tracing::warn!(topic = %Escaped(name), partition = p, error = %Escaped(&e.to_string()), "kafka source: no leader for the partition yet; trying again");
                                    }
                                }
                            }
                        }
                        None if running.iter().all(|(t, _)| t != name) => {
                            tracing::warn!(topic = %Escaped(name), brokers = %cfg.client.for_logs(), "kafka source: the topic does not exist (yet); looking again later");
                        }
                        None => {}
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %Escaped(&e.to_string()), "kafka source: cannot list the topics; trying again");
            }
            Err(_) => tracing::warn!("kafka source: no metadata answer; trying again"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(cfg.metadata_refresh) => {}
        }
    }
    while readers.join_next().await.is_some() {}
    // The sinks go on acknowledging what they hold: wait for that (within
    // a bound) so the last write has their positions.
    drop(fanout);
    let drained = async {
        while offsets.in_flight() > 0 {
            tokio::time::sleep(WRITE_COALESCE).await;
        }
    };
    if tokio::time::timeout(DRAIN_WAIT, drained).await.is_err() {
        tracing::warn!(
            batches = offsets.in_flight(),
            "kafka source: stopping with batches not acknowledged yet; their messages are read again after the restart"
        );
    }
    writer_stop.cancel();
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "kafka source: the position writer failed");
    }
}

/// Writes the positions when they advance (gathered over
/// [`WRITE_COALESCE`]), and once more when `stop` is cancelled. A write
/// that fails is retried with the next change (and at least every
/// second), and logged.
async fn write_positions(offsets: Offsets, stop: CancellationToken) {
    let mut failed = false;
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = offsets.changed() => false,
            _ = tokio::time::sleep(Duration::from_secs(1)), if failed => false,
        };
        if !stopping {
            tokio::time::sleep(WRITE_COALESCE).await;
        }
        match offsets.write_async(false).await {
            Ok(_) => {
                if failed {
                    tracing::info!(file = %Escaped::path(offsets.path()), "kafka source: positions written again");
                }
                failed = false;
            }
            Err(e) => {
                if !failed {
                    tracing::error!(file = %Escaped::path(offsets.path()), error = %e, "kafka source: cannot write the positions; retrying");
                }
                failed = true;
            }
        }
        if stopping {
            return;
        }
    }
}
