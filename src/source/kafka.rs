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
//! records lost to retention, partition resets (a re-created topic, brokers
//! that lost their log: see [`crate::kafka::consume`]), partitions
//! failing, and the source hosts tracked.
//!
//! Source hosts are peer data: any producer to the topic names them. The
//! hub tracks at most `max_hosts` of them (each costs its statistics,
//! about 40 KiB, and a row in `/status`); a host that has sent nothing for
//! `host_idle_expiry_ms` makes room (its counters go to the totals), and
//! records of a host that finds no room are counted under one entry,
//! `kafka:(other hosts)`, and in `records_from_untracked_hosts`, with a
//! rate-limited warning. So memory and `/status` stay bounded whatever the
//! topic holds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Check, SourceContext, SourceFound, Started};
use crate::kafka::consume::{Observer, Reset};
use crate::kafka::hub;
use crate::kafka::offsets::Partition;
use crate::kafka::settings::{SourceConfig, SourceSection};
use crate::logsafe::Escaped;
use crate::parse::Reject;
use crate::record::Record;
use crate::settings::ConfigError;
use crate::telemetry::figures::{Counter, Gauge};
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::{FileStats, Telemetry};

/// The figures section of the Kafka sources.
pub const FIGURES: &str = "kafka_source";

/// The name of a source host's entry among the files in `/status`.
pub fn host_entry(host: &str) -> String {
    format!("kafka:{}", if host.is_empty() { UNKNOWN_HOST } else { host })
}

/// The entry name of records without a host.
const UNKNOWN_HOST: &str = "(unknown host)";

/// The entry of the records whose host found no room among `max_hosts`.
pub const OTHER_HOSTS: &str = "kafka:(other hosts)";

/// The identity of [`OTHER_HOSTS`]'s entry (a host of that name keeps its
/// own).
const OTHER_HOSTS_ID: &str = "kafka:\u{0}other-hosts";

/// How often idle hosts are looked for besides when the table is full.
const SWEEP_EVERY_MS: i64 = 60_000;

/// How often idle hosts are looked for while the table is full.
const SWEEP_FULL_EVERY_MS: i64 = 1000;

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
            let observer: Arc<dyn Observer> = Arc::new(HubObserver::new(&ctx.telemetry, &name, &cfg));
            let source: Arc<str> = format!("kafka:{name}").into();
            let (fanout, stop, enricher) = (ctx.fanout.clone(), ctx.stop.clone(), ctx.enricher.clone());
            started.readers.push((
                name,
                tokio::spawn(async move {
                    hub::run(cfg, offsets, fanout, source, observer, enricher, stop).await;
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
    /// The source hosts tracked.
    hosts: Mutex<Hosts>,
    /// At most this many hosts tracked (`max_hosts`).
    max_hosts: usize,
    /// A host idle this long makes room (`host_idle_expiry_ms`).
    host_idle_expiry_ms: i64,
    messages: Counter,
    rejected: Counter,
    lost: Counter,
    resets: Counter,
    failing: Gauge,
    hosts_tracked: Gauge,
    hosts_expired: Counter,
    untracked: Counter,
    hosts_cut: Counter,
    /// Partitions failing now.
    failing_partitions: Mutex<std::collections::BTreeSet<Partition>>,
    /// Warnings about hosts cut to length.
    cut_log: Mutex<LogLimit>,
}

/// The source hosts a hub tracks.
#[derive(Default)]
struct Hosts {
    /// Each tracked host's entry and when it last sent records (epoch ms).
    tracked: HashMap<String, (FileStats, i64)>,
    /// The entry of records whose host found no room (made on first use).
    others: Option<FileStats>,
    /// When idle hosts were last looked for (epoch ms).
    swept_ms: i64,
    /// Warnings about hosts that found no room.
    full_log: LogLimit,
}

impl Hosts {
    /// The hosts whose entries are in `telemetry` already (the reading
    /// side restarted by a reload): tracked again, so their entries still
    /// count towards `max_hosts` and expire.
    fn known(telemetry: &Telemetry) -> Hosts {
        let now = crate::time::now_ms();
        let mut tracked = HashMap::new();
        for f in telemetry.files() {
            let Some(host) = f.id.strip_prefix("kafka:") else { continue };
            if f.id == OTHER_HOSTS_ID {
                continue;
            }
            let host = if host == UNKNOWN_HOST { "" } else { host };
            let seen = f.last_read_ms.load(std::sync::atomic::Ordering::Relaxed);
            tracked.insert(host.to_string(), (f.clone(), if seen > 0 { seen } else { now }));
        }
        Hosts { tracked, ..Hosts::default() }
    }
}

impl HubObserver {
    fn new(telemetry: &Telemetry, name: &str, cfg: &SourceConfig) -> HubObserver {
        let f = telemetry.figures(FIGURES);
        let hosts = Hosts::known(telemetry);
        let known = hosts.tracked.len() as i64;
        let observer = HubObserver {
            telemetry: telemetry.clone(),
            name: name.to_string(),
            hosts: Mutex::new(hosts),
            max_hosts: cfg.max_hosts,
            host_idle_expiry_ms: i64::try_from(cfg.host_idle_expiry.as_millis()).unwrap_or(i64::MAX),
            messages: f.counter("records_read", "Records read from the topics"),
            rejected: f.counter("values_rejected", "Message values that are not records (logged with topic, partition and offset)"),
            lost: f.counter("messages_lost", "Messages the brokers deleted before they were read (retention)"),
            resets: f.counter(
                "partition_resets",
                "Partitions whose log no longer held what the hub read (a re-created topic, brokers that lost their log), read again from read_from",
            ),
            failing: f.gauge("partitions_failing", "Partitions whose fetches fail now"),
            hosts_tracked: f.gauge("hosts_tracked", "Source hosts with their own entry (at most max_hosts)"),
            hosts_expired: f.counter("hosts_expired", "Source hosts dropped after host_idle_expiry_ms without records (counters kept in the totals)"),
            untracked: f.counter(
                "records_from_untracked_hosts",
                "Records whose host found no room among max_hosts tracked hosts (counted under kafka:(other hosts))",
            ),
            hosts_cut: f.counter("hosts_cut", "Records whose host was longer than 255 bytes, cut to that length"),
            failing_partitions: Mutex::new(Default::default()),
            cut_log: Mutex::new(LogLimit::default()),
        };
        observer.hosts_tracked.set(known);
        observer
    }

    /// The entry of `host`'s records read at `now_ms` (`n` of them).
    fn host(&self, host: &str, now_ms: i64, n: usize) -> FileStats {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, seen)) = hosts.tracked.get_mut(host) {
            *seen = (*seen).max(now_ms);
            return s.clone();
        }
        // Full: idle hosts are looked for at most once a second (a flood
        // of new hosts does not scan the table per record).
        let since = now_ms.saturating_sub(hosts.swept_ms);
        if (hosts.tracked.len() >= self.max_hosts && since >= SWEEP_FULL_EVERY_MS) || since >= SWEEP_EVERY_MS {
            self.sweep(&mut hosts, now_ms);
        }
        if hosts.tracked.len() < self.max_hosts {
            let s = self.telemetry.file(&host_entry(host));
            hosts.tracked.insert(host.to_string(), (s.clone(), now_ms));
            self.hosts_tracked.set(hosts.tracked.len() as i64);
            return s;
        }
        self.untracked.add(n as u64);
        let now = Instant::now();
        if hosts.full_log.allow(now, "no_room") {
            tracing::warn!(
                source = %Escaped(&self.name), host = %Escaped(host), max_hosts = self.max_hosts,
                "kafka source: more source hosts than max_hosts; this host's records are delivered and counted under kafka:(other hosts) \
                 (a producer naming random hosts? raise max_hosts for a larger fleet)"
            );
        } else if let Some(s) = hosts.full_log.summary(now, false) {
            tracing::warn!(source = %Escaped(&self.name), suppressed = s.total, "kafka source: more hosts found no room (suppressed similar lines)");
        }
        let telemetry = &self.telemetry;
        hosts.others.get_or_insert_with(|| telemetry.file_with_id(OTHER_HOSTS_ID, OTHER_HOSTS)).clone()
    }

    /// Drops the hosts idle for `host_idle_expiry_ms` (their counters go
    /// to the totals).
    fn sweep(&self, hosts: &mut Hosts, now_ms: i64) {
        hosts.swept_ms = now_ms;
        let expiry = self.host_idle_expiry_ms;
        let before = hosts.tracked.len();
        let telemetry = &self.telemetry;
        hosts.tracked.retain(|h, (_, seen)| {
            let keep = now_ms.saturating_sub(*seen) < expiry;
            if !keep {
                telemetry.remove_file(&host_entry(h));
            }
            keep
        });
        let expired = before - hosts.tracked.len();
        if expired > 0 {
            self.hosts_expired.add(expired as u64);
            self.hosts_tracked.set(hosts.tracked.len() as i64);
            tracing::info!(source = %Escaped(&self.name), hosts = expired, "kafka source: source hosts idle for host_idle_expiry_ms dropped from /status");
        }
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
            self.host(host, observed_ms, run.len()).records_read(observed_ms, run.iter().map(|r| (r.sync_delay_ms, r.ingestion_time)));
            start = end;
        }
    }

    fn rejected(&self, p: &Partition, offset: i64, reject: &Reject) {
        self.rejected.inc();
        tracing::warn!(source = %Escaped(&self.name), topic = %Escaped(&p.0), partition = p.1, offset, reason = %Escaped(&reject.to_string()), "kafka source: a message value is not a record; skipped");
    }

    fn hosts_cut(&self, p: &Partition, offset: i64, n: usize) {
        self.hosts_cut.add(n as u64);
        let mut log = self.cut_log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if log.allow(now, "host_cut") {
            tracing::warn!(
                source = %Escaped(&self.name), topic = %Escaped(&p.0), partition = p.1, offset, records = n,
                "kafka source: a record's host is longer than 255 bytes (no edge bridge writes that); cut to 255"
            );
        } else if let Some(s) = log.summary(now, false) {
            tracing::warn!(source = %Escaped(&self.name), suppressed = s.total, "kafka source: more hosts cut to 255 bytes (suppressed similar lines)");
        }
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

    fn reset(&self, _p: &Partition, _reset: &Reset) {
        self.resets.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::settings::SourceSection;
    use std::borrow::Cow;

    fn config(max_hosts: usize) -> SourceConfig {
        let s: SourceSection = toml::from_str(&format!(
            "brokers = [\"k:9092\"]\ntopics = [\"calls\"]\ngroup_id = \"hub\"\nmax_hosts = {max_hosts}\nhost_idle_expiry_ms = 1000"
        ))
        .unwrap();
        SourceConfig::from_section(s, "source[1]", Path::new("")).unwrap()
    }

    fn records(hosts: &[&'static str]) -> Vec<Record<'static>> {
        hosts
            .iter()
            .map(|h| {
                let mut r = Record::new_ml();
                r.host = Cow::Borrowed(h);
                r
            })
            .collect()
    }

    fn paths(t: &Telemetry) -> Vec<String> {
        t.files().iter().map(|f| f.path()).collect()
    }

    #[test]
    fn hosts_beyond_max_hosts_share_one_entry_and_idle_ones_make_room() {
        let t = Telemetry::new();
        let o = HubObserver::new(&t, "fleet", &config(2));
        let t0 = 1_700_000_000_000;
        o.read(&records(&["a", "a", "b", "c", "d", ""]), t0);
        assert_eq!(paths(&t), ["kafka:(other hosts)", "kafka:a", "kafka:b"]);
        assert_eq!((o.hosts_tracked.get(), o.untracked.get()), (2, 3), "c, d and the host-less record");
        assert_eq!(t.files().iter().map(|f| f.records.load(std::sync::atomic::Ordering::Relaxed)).sum::<u64>(), 6, "every record counted");
        // a stays busy, b goes idle past host_idle_expiry_ms: c takes its place.
        o.read(&records(&["a"]), t0 + 900);
        o.read(&records(&["c"]), t0 + 1500);
        assert_eq!(paths(&t), ["kafka:(other hosts)", "kafka:a", "kafka:c"]);
        assert_eq!((o.hosts_expired.get(), o.hosts_tracked.get()), (1, 2));
        assert_eq!(t.retired().records, 1, "b's counters stay in the totals");
        // The reading side restarted by a reload: the hosts are known.
        let again = HubObserver::new(&t, "fleet", &config(2));
        assert_eq!(again.hosts_tracked.get(), 2);
        again.read(&records(&["e"]), t0 + 1600);
        assert_eq!(paths(&t).len(), 3, "still at most max_hosts entries (and the shared one)");
    }
}
