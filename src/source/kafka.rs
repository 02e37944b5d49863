//! The Kafka source (`[[source]] kind = "kafka"`, the hub of a fleet):
//! reads every partition of `topics` ([`crate::kafka::hub`]) into the
//! pipeline, so the hub's sinks (channel, archive, upstream, dashboard)
//! serve the records of every edge bridge. A partition's position
//! (`<state_dir>/kafka-offsets-<group_id>.json`) advances only when every
//! sink acknowledged the batch read from it: at-least-once end to end.
//!
//! Records arrive as the edges wrote them: `sync_delay_ms` and
//! `ingestion_time` as measured at the edge, and the edge's `host`. The hub
//! shows them per source host (per host instead of per file): each host is
//! an entry `kafka:<host>` among `/status`'s files (and in `/metrics`
//! per-file series and `lag`), with the edge's sync delay and, as its
//! transfer delay, the broker hop (the hub's read time minus the edge's
//! `ingestion_time`). Figures (`/status` `kafka_source`, `/metrics`
//! `calllog_bridge_kafka_source_*`): messages read, rejected values,
//! records lost to retention, partitions failing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{Check, SourceContext, SourceFound, Started};
use crate::kafka::consume::Observer;
use crate::kafka::hub;
use crate::kafka::offsets::Partition;
use crate::kafka::settings::{SourceConfig, SourceSection};
use crate::logsafe::Escaped;
use crate::parse::Reject;
use crate::record::Record;
use crate::settings::ConfigError;
use crate::telemetry::figures::{Counter, Gauge};
use crate::telemetry::{FileStats, Telemetry};

/// The figures section of the Kafka sources.
pub const FIGURES: &str = "kafka_source";

/// The name of a source host's entry among the files in `/status`.
pub fn host_entry(host: &str) -> String {
    format!("kafka:{}", if host.is_empty() { "(unknown host)" } else { host })
}

/// Kafka topics as a [`super::Source`].
pub struct KafkaSource;

impl super::Source for KafkaSource {
    const KIND: &'static str = "kafka";
    type Section = SourceSection;
    type Config = SourceConfig;

    fn config(section: SourceSection, key: &str, base: &Path) -> Result<SourceConfig, ConfigError> {
        SourceConfig::from_section(section, key, base)
    }

    fn check(cfg: &SourceConfig, key: &str) -> Check {
        // The brokers are only probed (by `check-config`, a warning): an
        // outage at start is retried for as long as it takes (and shown in
        // /status), never a refusal to start.
        let peer = crate::probe::Peer::Kafka { key: format!("{key}.brokers"), client: cfg.client.clone(), topics: cfg.topics.clone() };
        Check { peers: vec![peer], ..Check::default() }
    }

    fn summary(c: &SourceConfig, _found: &SourceFound) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "kafka {} topics {} group {} (positions in kafka-offsets-*.json)",
            c.client.for_logs(),
            c.topics.join(", "),
            Escaped(&c.group_id)
        );
        o
    }

    fn start(sources: Vec<(String, SourceConfig)>, ctx: &SourceContext) -> anyhow::Result<Started> {
        let mut started = Started::default();
        let mut groups = std::collections::BTreeSet::new();
        for (name, cfg) in sources {
            if !groups.insert(cfg.group_id.clone()) {
                anyhow::bail!("two kafka sources share group_id `{}`: give each its own (they keep separate positions)", cfg.group_id);
            }
            let offsets = hub::load_offsets(ctx.checkpoints.state_dir(), &cfg)?;
            let observer: Arc<dyn Observer> = Arc::new(HubObserver::new(&ctx.telemetry, &name));
            let source: Arc<str> = format!("kafka:{name}").into();
            let (fanout, stop) = (ctx.fanout.clone(), ctx.stop.clone());
            started.readers.push((
                name,
                tokio::spawn(async move {
                    hub::run(cfg, offsets, fanout, source, observer, stop).await;
                    Ok(())
                }),
            ));
        }
        Ok(started)
    }
}

/// Telemetry of a Kafka source: per source host, and the source's figures.
struct HubObserver {
    telemetry: Telemetry,
    /// The source's name (logs).
    name: String,
    /// Each source host's entry.
    hosts: Mutex<BTreeMap<String, FileStats>>,
    messages: Counter,
    rejected: Counter,
    lost: Counter,
    failing: Gauge,
    /// Partitions failing now.
    failing_partitions: Mutex<std::collections::BTreeSet<Partition>>,
}

impl HubObserver {
    fn new(telemetry: &Telemetry, name: &str) -> HubObserver {
        let f = telemetry.figures(FIGURES);
        HubObserver {
            telemetry: telemetry.clone(),
            name: name.to_string(),
            hosts: Mutex::new(BTreeMap::new()),
            messages: f.counter("records_read", "Records read from the topics"),
            rejected: f.counter("values_rejected", "Message values that are not records (logged with topic, partition and offset)"),
            lost: f.counter("messages_lost", "Messages the brokers deleted before they were read (retention)"),
            failing: f.gauge("partitions_failing", "Partitions whose fetches fail now"),
            failing_partitions: Mutex::new(Default::default()),
        }
    }

    fn host(&self, host: &str) -> FileStats {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = hosts.get(host) {
            return s.clone();
        }
        let s = self.telemetry.file(&host_entry(host));
        hosts.insert(host.to_string(), s.clone());
        s
    }
}

impl Observer for HubObserver {
    fn read(&self, records: &[Record<'_>], observed_ms: i64) {
        self.messages.add(records.len() as u64);
        // Records of one fetch come mostly from one edge (keyed by host,
        // or in runs): report each run of the same host at once.
        let mut start = 0;
        while start < records.len() {
            let host = &records[start].host;
            let end = records[start..].iter().position(|r| r.host != *host).map_or(records.len(), |n| start + n);
            let run = &records[start..end];
            // The edge's sync delay, kept; the broker hop as the transfer
            // delay (the edge stamped ingestion_time when it read the line).
            self.host(host).records_read(observed_ms, run.iter().map(|r| (r.sync_delay_ms, r.ingestion_time)));
            start = end;
        }
    }

    fn rejected(&self, p: &Partition, offset: i64, reject: &Reject) {
        self.rejected.inc();
        tracing::warn!(source = %Escaped(&self.name), topic = %Escaped(&p.0), partition = p.1, offset, reason = %Escaped(&reject.to_string()), "kafka source: a message value is not a record; skipped");
    }

    fn failing(&self, p: &Partition, error: Option<&str>) {
        let mut f = self.failing_partitions.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(_) => f.insert(p.clone()),
            None => f.remove(p),
        };
        self.failing.set(f.len() as i64);
    }

    fn lost(&self, _p: &Partition, from: i64, to: i64) {
        self.lost.add(to.saturating_sub(from).max(0) as u64);
    }
}
