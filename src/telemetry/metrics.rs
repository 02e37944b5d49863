//! Prometheus exposition of the telemetry (text format 0.0.4, rendered by
//! prometheus-client from a [`Collector`] over a [`Snapshot`] taken at
//! scrape time, the same kind `/status` is made of; nothing else is read).
//!
//! Invariant: label sets are bounded. Sinks and sources are few (`sink`,
//! `source` labels: the config's); reject
//! reasons are a fixed list (`reason`); file states are four (`state`); a
//! component's families have the label values it declared.
//! Per-file series (`file` label) appear only with
//! `[status] per_file_metrics = true`; otherwise file figures are summed
//! (counters, histograms, bytes behind) or merged (windowed delays) over
//! all files, removed files included, so counters never go backwards.
//!
//! Metric names (all prefixed `calllog_bridge_`):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `build_info` | gauge | version | always 1 |
//! | `uptime_seconds` | gauge | | since start |
//! | `ready` | gauge | | 1 when /readyz answers 200: sources and sinks up, no component fault, no source problem |
//! | `fault` | gauge | component | 1 while `file`, `channel`, `checkpoints`, `upstream_spool` or `dead_letter` cannot write (full disk), 0 after |
//! | `faults_total` | counter | component | fault episodes since start |
//! | `files` | gauge | state | files per state |
//! | `records_total` | counter | [file] | records read |
//! | `rejects_total` | counter | reason, [file] | lines rejected |
//! | `negative_delays_total` | counter | [file] | records with request_time after observed (clock skew) |
//! | `partial_lines_total` | counter | [file] | partial last lines emitted (file rotated away or deleted before the newline) |
//! | `sync_delay_seconds` | histogram | [file] | observed − request_time, 5 ms … 4 h buckets |
//! | `sync_delay_window_seconds` | gauge | stat, [file] | p50 / p95 / max over the window, files not idle |
//! | `transfer_delay_seconds` | histogram | [file] | observed − the line's write time (LE 6), same buckets |
//! | `transfer_delay_window_seconds` | gauge | stat, [file] | p50 / p95 / max over the window, files not idle |
//! | `bytes_behind` | gauge | [file] | size − offset |
//! | `watermark_timestamp_seconds` | gauge | file | newest request_time read (per-file mode only) |
//! | `delivery_delay_seconds` | histogram | sink | delivered − observed; for `channel`, per record written to a client |
//! | `delivered_records_total`, `delivered_batches_total` | counter | sink | |
//! | `retries_total`, `dropped_records_total`, `dead_lettered_records_total` | counter | sink | |
//! | `retry_after_capped_total` | counter | sink | `Retry-After` answers longer than `retry_max_ms`, waited for only that long |
//! | `queue_depth` | gauge | sink | records waiting in the sink |
//! | `oldest_undelivered_age_seconds` | gauge | sink | 0 when nothing is pending |
//! | `source_files` | gauge | source | files the source's paths matched at the last scan |
//! | `source_files_unreadable` | gauge | source | matched files that cannot be read |
//! | `source_dirs_unreadable` | gauge | source | directories of the paths that cannot be listed |
//! | `source_no_files_seconds` | gauge | source | how long the paths have matched no file |
//! | `source_files_left_unread_total`, `source_bytes_left_unread_total` | counter | source | checkpointed files gone or no longer matched with unread bytes (records lost) |
//! | `source_files_truncated_total`, `source_bytes_reread_total` | counter | source | files found shorter than the offset read for their content, read again from their start |
//! | `channel_connections` | gauge | | WebSocket connections open now |
//! | `channel_connections_accepted_total` | counter | | connections upgraded |
//! | `channel_refused_total` | counter | reason | handshakes refused: `unauthorized` (401), `not_found` (404), `bad_request` (400, 431), `too_many_connections` (503), `not_websocket` (426, 405), `handshake_timeout`, `handshake_evicted` (a pending handshake closed to admit a newer connection) |
//! | `channel_closed_total` | counter | reason | connections closed: `slow_consumer` (fell out of the replay log's retention), `ping_timeout`, `token_revoked` (a reload removed its token), `token_expired` (its token passed `not_after`), `channel_changed` (a reload removed its channel or changed its filter), `shutdown`, `protocol_error` (1002, 1007, 1009), `client` (by the client), `replay_error` (1011: its replay log segment could not be read) |
//! | `channel_messages_sent_total`, `channel_records_sent_total`, `channel_records_replayed_total`, `channel_lost_notices_total` | counter | | frames written to clients |
//! | `channel_replay_bytes`, `channel_replay_segments`, `channel_replay_records`, `channel_replay_oldest_age_secs` | gauge | | what the replay log (`<state_dir>/replay`) holds (`replay_first_seq`: in `/status` only) |
//! | `channel_replay_hot_bytes` | gauge | | the replay log's newest records kept in memory |
//! | `channel_connections_by_channel` | gauge | channel | connections open now per channel (the default one under its `channel_id`, each `[[channel.stream]]` under its id) |
//! | `channel_records_sent_by_channel_total`, `channel_records_filtered_by_channel_total`, `channel_lost_notices_by_channel_total`, `channel_slow_consumer_closes_by_channel_total` | counter | channel | per channel: records written to its clients, records its filter left out, lost notices, slow-consumer closes |
//! | `channel_token_connections` | gauge | channel, token | connections open now per token (its `label`, or `sha256:` and 8 hex digits of its digest; never the token) |
//! | `channel_replay_repaired_segments_total`, `channel_replay_repaired_bytes_total` | counter | | segments truncated to their last whole record at start (a torn or corrupt tail) and the bytes dropped |
//! | `enrich_lookups_total` | counter | table, result (`hit`, `miss`) | lookups of loaded tables |
//! | `enrich_table_entries` | gauge | table | ids a loaded table holds |
//! | `enrich_reloads_total` | counter | | successful lookup reloads |
//! | `enrich_reload_failing` | gauge | | 1 while the last reload failed (old tables in use) |
//!
//! The channel series are the channel's section of figures
//! ([`super::figures`]: every component's figures become
//! `calllog_bridge_<component>_<figure>`, with the help text it declared)
//! and appear only with a `[channel]`; the enrich series only with
//! `[enrich] lookups`.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::delay::{DelaySummary, HistogramSnapshot};
use super::figures::{FigureValue, Kind};
use super::snapshot::Snapshot;
use super::status::{EnrichStatus, FileState};
use super::status_settings::StatusSettings;
use super::Telemetry;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric at `now_ms` in the Prometheus text format.
pub fn render(telemetry: &Telemetry, settings: &StatusSettings, now_ms: i64) -> String {
    encode(telemetry.snapshot(now_ms, settings), settings.per_file_metrics)
}

/// Renders a snapshot in the Prometheus text format; `per_file` labels
/// file figures per file instead of aggregating them.
pub fn encode(snapshot: Snapshot, per_file: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { snapshot, per_file }));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail; an encoder error would be a bug
    // in a label value, and a partial page is still better than none.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    out
}

/// Renders one snapshot (prometheus-client wants an owned collector).
struct SnapshotCollector {
    /// What to render.
    snapshot: Snapshot,
    /// Label file figures per file (else aggregate them).
    per_file: bool,
}

impl fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCollector").field("now_ms", &self.snapshot.status.now_ms).finish()
    }
}

type Labels = Vec<(&'static str, String)>;

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, series: &[(Labels, u64)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            m.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, series: &[(Labels, f64)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn histogram(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, series: &[(Labels, HistogramSnapshot)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        let (sum, count, buckets) = (secs(h.sum_ms), h.count(), h.buckets_seconds());
        if labels.is_empty() {
            m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        } else {
            m.encode_family(labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
    }
    Ok(())
}

fn window_series(labels: &Labels, d: &DelaySummary, out: &mut Vec<(Labels, f64)>) {
    for (stat, v) in [("p50", d.p50), ("p95", d.p95), ("max", d.max)] {
        let mut l = labels.clone();
        l.push(("stat", stat.to_string()));
        out.push((l, secs(v)));
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snap = &self.snapshot;
        encode_process(&mut enc, snap)?;
        let files = if self.per_file { FileSeries::per_file(snap) } else { FileSeries::aggregate(snap) };
        files.encode(&mut enc)?;
        encode_sinks(&mut enc, snap)?;
        encode_sources(&mut enc, snap)?;
        encode_sections(&mut enc, snap)?;
        if let Some(e) = &snap.status.enrich {
            encode_lookups(&mut enc, e)?;
        }
        Ok(())
    }
}

/// Build, uptime, readiness and faults.
fn encode_process(enc: &mut DescriptorEncoder<'_>, snap: &Snapshot) -> fmt::Result {
    let none = Labels::new;
    gauge(enc, "calllog_bridge_build_info", "The bridge's version (always 1)", &[(vec![("version", snap.status.version.clone())], 1.0)])?;
    gauge(
        enc,
        "calllog_bridge_uptime_seconds",
        "Seconds since the bridge started",
        &[(none(), secs(snap.status.now_ms - snap.started_ms))],
    )?;
    gauge(
        enc,
        "calllog_bridge_ready",
        "1 when /readyz answers 200: sources and sinks up, no component fault, no source problem",
        &[(none(), if snap.status.ready { 1.0 } else { 0.0 })],
    )?;
    let faults = &snap.fault_summary;
    let fault_now: Vec<(Labels, f64)> =
        faults.iter().map(|&(c, open, _)| (vec![("component", c.to_string())], if open { 1.0 } else { 0.0 })).collect();
    let fault_total: Vec<(Labels, u64)> = faults.iter().map(|&(c, _, n)| (vec![("component", c.to_string())], n)).collect();
    gauge(enc, "calllog_bridge_fault", "1 while the component cannot write (e.g. a full disk); it keeps its data and retries", &fault_now)?;
    counter(enc, "calllog_bridge_faults", "Fault episodes since start", &fault_total)
}

/// The file series: per file (with a `file` label) or aggregated.
#[derive(Default)]
struct FileSeries {
    /// Files per state.
    by_state: Vec<(Labels, f64)>,
    /// Records read.
    records: Vec<(Labels, u64)>,
    /// Lines rejected, by reason.
    rejects: Vec<(Labels, u64)>,
    /// Negative sync delays.
    negative: Vec<(Labels, u64)>,
    /// Partial last lines emitted.
    partial: Vec<(Labels, u64)>,
    /// Sync-delay histograms.
    sync_hist: Vec<(Labels, HistogramSnapshot)>,
    /// Sync-delay window percentiles.
    sync_window: Vec<(Labels, f64)>,
    /// Transfer-delay histograms.
    transfer_hist: Vec<(Labels, HistogramSnapshot)>,
    /// Transfer-delay window percentiles.
    transfer_window: Vec<(Labels, f64)>,
    /// Bytes behind.
    behind: Vec<(Labels, f64)>,
    /// Watermarks (per-file mode only).
    watermark: Option<Vec<(Labels, f64)>>,
}

impl FileSeries {
    /// Files per state, every state present.
    fn states(snap: &Snapshot) -> Vec<(Labels, f64)> {
        let mut by_state: BTreeMap<FileState, f64> = FileState::ALL.iter().map(|&st| (st, 0.0)).collect();
        for f in &snap.status.files {
            *by_state.entry(f.state).or_default() += 1.0;
        }
        by_state.into_iter().map(|(st, n)| (vec![("state", st.name().to_string())], n)).collect()
    }

    /// One series per file; removed files keep their totals under an
    /// empty `file` label.
    fn per_file(snap: &Snapshot) -> FileSeries {
        let mut x = FileSeries { by_state: Self::states(snap), watermark: Some(Vec::new()), ..FileSeries::default() };
        for (st, fig) in snap.status.files.iter().zip(&snap.files) {
            // `file_id` keeps two rows unique while a rotation moves a
            // path from one file to the next.
            let l = vec![("file", st.path.clone()), ("file_id", st.id.clone())];
            x.records.push((l.clone(), st.records));
            x.negative.push((l.clone(), st.negative_delays));
            x.partial.push((l.clone(), st.partial_lines));
            for (reason, n) in &st.rejects_by_reason {
                let mut lr = l.clone();
                lr.push(("reason", reason.clone()));
                x.rejects.push((lr, *n));
            }
            x.sync_hist.push((l.clone(), fig.sync_delay.clone()));
            x.transfer_hist.push((l.clone(), fig.transfer_delay.clone()));
            x.behind.push((l.clone(), st.bytes_behind as f64));
            if let Some(d) = &st.sync_delay_ms {
                window_series(&l, d, &mut x.sync_window);
            }
            if let Some(d) = &st.transfer_delay_ms {
                window_series(&l, d, &mut x.transfer_window);
            }
            if let (Some(w), Some(marks)) = (st.watermark_ms, x.watermark.as_mut()) {
                marks.push((l, secs(w)));
            }
        }
        let r = &snap.retired;
        if r.records > 0 || r.negative_delays > 0 || r.partial_lines > 0 || !r.rejects.is_empty() {
            let l = vec![("file", String::new())];
            x.records.push((l.clone(), r.records));
            x.negative.push((l.clone(), r.negative_delays));
            x.partial.push((l.clone(), r.partial_lines));
            for (reason, n) in &r.rejects {
                x.rejects.push((vec![("file", String::new()), ("reason", reason.to_string())], *n));
            }
            x.sync_hist.push((l.clone(), r.sync_delay.clone()));
            x.transfer_hist.push((l, r.transfer_delay.clone()));
        }
        x
    }

    /// One series over every file, removed files included (windows over
    /// the files that are not idle).
    fn aggregate(snap: &Snapshot) -> FileSeries {
        let r = &snap.retired;
        let (mut records, mut negative, mut partial, mut behind) = (r.records, r.negative_delays, r.partial_lines, 0u64);
        let mut rejects: BTreeMap<String, u64> = r.rejects.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (mut sync_hist, mut transfer_hist) = (r.sync_delay.clone(), r.transfer_delay.clone());
        let (mut sync_window, mut transfer_window) = (Vec::new(), Vec::new());
        for (st, fig) in snap.status.files.iter().zip(&snap.files) {
            records += st.records;
            negative += st.negative_delays;
            partial += st.partial_lines;
            behind += st.bytes_behind;
            for (reason, n) in &st.rejects_by_reason {
                *rejects.entry(reason.clone()).or_default() += n;
            }
            sync_hist.merge(&fig.sync_delay);
            transfer_hist.merge(&fig.transfer_delay);
            sync_window.extend_from_slice(&fig.sync_window);
            transfer_window.extend_from_slice(&fig.transfer_window);
        }
        let none = Labels::new;
        let mut x = FileSeries {
            by_state: Self::states(snap),
            records: vec![(none(), records)],
            rejects: rejects.into_iter().map(|(reason, n)| (vec![("reason", reason)], n)).collect(),
            negative: vec![(none(), negative)],
            partial: vec![(none(), partial)],
            sync_hist: vec![(none(), sync_hist)],
            transfer_hist: vec![(none(), transfer_hist)],
            behind: vec![(none(), behind as f64)],
            ..FileSeries::default()
        };
        if let Some(d) = DelaySummary::of(&mut sync_window) {
            window_series(&none(), &d, &mut x.sync_window);
        }
        if let Some(d) = DelaySummary::of(&mut transfer_window) {
            window_series(&none(), &d, &mut x.transfer_window);
        }
        x
    }

    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        gauge(enc, "calllog_bridge_files", "Followed files per state (caught-up, behind, idle, stalled)", &self.by_state)?;
        counter(enc, "calllog_bridge_records", "Records read", &self.records)?;
        counter(enc, "calllog_bridge_rejects", "Lines rejected, by reason", &self.rejects)?;
        counter(
            enc,
            "calllog_bridge_negative_delays",
            "Records whose request_time lies after the time they were observed (clock skew)",
            &self.negative,
        )?;
        counter(
            enc,
            "calllog_bridge_partial_lines",
            "Partial last lines (no newline) emitted because their file was rotated away or deleted",
            &self.partial,
        )?;
        histogram(enc, "calllog_bridge_sync_delay_seconds", "Sync delay: observed minus request_time", &self.sync_hist)?;
        gauge(
            enc,
            "calllog_bridge_sync_delay_window_seconds",
            "Sync delay p50, p95 and max over the recent window, files that are not idle",
            &self.sync_window,
        )?;
        histogram(
            enc,
            "calllog_bridge_transfer_delay_seconds",
            "Transfer delay: observed minus the line's write time (LE 6 log_ingestion); the sync's share of the sync delay",
            &self.transfer_hist,
        )?;
        gauge(
            enc,
            "calllog_bridge_transfer_delay_window_seconds",
            "Transfer delay p50, p95 and max over the recent window, files that are not idle",
            &self.transfer_window,
        )?;
        gauge(enc, "calllog_bridge_bytes_behind", "Bytes written but not read yet (size minus offset)", &self.behind)?;
        if let Some(marks) = &self.watermark {
            gauge(enc, "calllog_bridge_watermark_timestamp_seconds", "Newest request_time read (epoch seconds)", marks)?;
        }
        Ok(())
    }
}

/// Per sink (a bounded label set: the configured sinks).
fn encode_sinks(enc: &mut DescriptorEncoder<'_>, snap: &Snapshot) -> fmt::Result {
    let mut delivered = Vec::new();
    let mut batches = Vec::new();
    let mut retries = Vec::new();
    let mut dropped = Vec::new();
    let mut dead = Vec::new();
    let mut capped = Vec::new();
    let mut depth = Vec::new();
    let mut oldest = Vec::new();
    let mut dhist = Vec::new();
    for (st, h) in snap.status.sinks.iter().zip(&snap.sinks) {
        let l = vec![("sink", st.name.clone())];
        delivered.push((l.clone(), st.delivered_records));
        batches.push((l.clone(), st.delivered_batches));
        retries.push((l.clone(), st.retries));
        dropped.push((l.clone(), st.dropped_records));
        dead.push((l.clone(), st.dead_lettered_records));
        capped.push((l.clone(), st.retry_after_capped));
        depth.push((l.clone(), st.queue_depth as f64));
        oldest.push((l.clone(), secs(st.oldest_undelivered_age_ms.unwrap_or(0))));
        dhist.push((l, h.clone()));
    }
    histogram(enc, "calllog_bridge_delivery_delay_seconds", "Delivery delay: delivered minus observed, per record", &dhist)?;
    counter(enc, "calllog_bridge_delivered_records", "Records delivered", &delivered)?;
    counter(enc, "calllog_bridge_delivered_batches", "Batches delivered", &batches)?;
    counter(enc, "calllog_bridge_retries", "Retried delivery attempts", &retries)?;
    counter(enc, "calllog_bridge_dropped_records", "Records dropped (each logged)", &dropped)?;
    counter(enc, "calllog_bridge_dead_lettered_records", "Records written to the dead-letter file", &dead)?;
    counter(
        enc,
        "calllog_bridge_retry_after_capped",
        "Retry-After answers asking for longer than retry_max_ms, waited for only that long",
        &capped,
    )?;
    gauge(enc, "calllog_bridge_queue_depth", "Records waiting in the sink", &depth)?;
    gauge(enc, "calllog_bridge_oldest_undelivered_age_seconds", "Age of the oldest record not yet delivered (0 when none)", &oldest)
}

/// Per `[[source]]` (a bounded label set: the sources of the config):
/// files matched, files that cannot be read, files left unread.
fn encode_sources(enc: &mut DescriptorEncoder<'_>, snap: &Snapshot) -> fmt::Result {
    let label = |name: &str| vec![("source", name.to_string())];
    let (mut matched, mut unreadable, mut unlistable, mut no_files, mut left, mut left_bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut truncated, mut reread) = (Vec::new(), Vec::new());
    for st in &snap.status.sources {
        matched.push((label(&st.name), st.files_matched as f64));
        unreadable.push((label(&st.name), st.files_unreadable as f64));
        unlistable.push((label(&st.name), st.dirs_unreadable as f64));
        truncated.push((label(&st.name), st.files_truncated));
        reread.push((label(&st.name), st.bytes_reread));
        no_files.push((label(&st.name), secs(st.no_files_for_ms.unwrap_or(0))));
        left.push((label(&st.name), st.files_left_unread));
        left_bytes.push((label(&st.name), st.bytes_left_unread));
    }
    gauge(enc, "calllog_bridge_source_files", "Files the source's paths matched at the last scan", &matched)?;
    gauge(enc, "calllog_bridge_source_files_unreadable", "Matched files the bridge cannot read", &unreadable)?;
    gauge(
        enc,
        "calllog_bridge_source_dirs_unreadable",
        "Directories of the source's paths the bridge cannot list (their files are not followed meanwhile)",
        &unlistable,
    )?;
    gauge(
        enc,
        "calllog_bridge_source_no_files_seconds",
        "How long the source's paths have matched no file (0 while they match some)",
        &no_files,
    )?;
    counter(
        enc,
        "calllog_bridge_source_files_left_unread",
        "Files with a checkpoint that were gone or no longer matched while they still had unread bytes (records lost)",
        &left,
    )?;
    counter(enc, "calllog_bridge_source_bytes_left_unread", "Bytes known to be left unread in those files", &left_bytes)?;
    counter(
        enc,
        "calllog_bridge_source_files_truncated",
        "Files found shorter than the offset already read for their content (truncated, replaced by a shorter copy, or a restored state), read again from their start",
        &truncated,
    )?;
    counter(enc, "calllog_bridge_source_bytes_reread", "Bytes those files held when found, read again (records may come twice)", &reread)
}

/// Components' own figures ([`super::figures`]):
/// `calllog_bridge_<section>_<figure>`, a family with its label; figures
/// declared for `/status` only are left out.
fn encode_sections(enc: &mut DescriptorEncoder<'_>, snap: &Snapshot) -> fmt::Result {
    for section in &snap.sections {
        for f in &section.figures {
            let Some(help) = f.help else { continue };
            let name = format!("calllog_bridge_{}_{}", section.name, f.name);
            let series: Vec<(Labels, i64)> = match &f.value {
                FigureValue::One(v) => vec![(Labels::new(), *v)],
                FigureValue::ByLabel { label, values } => values.iter().map(|(k, v)| (vec![(*label, k.clone())], *v)).collect(),
                FigureValue::ByLabels { labels, values } => {
                    values.iter().map(|((a, b), v)| (vec![(labels[0], a.clone()), (labels[1], b.clone())], *v)).collect()
                }
            };
            match f.kind {
                Kind::Counter => {
                    let series: Vec<(Labels, u64)> = series.into_iter().map(|(l, v)| (l, v.max(0) as u64)).collect();
                    counter(enc, &name, help, &series)?;
                }
                Kind::Gauge => {
                    let series: Vec<(Labels, f64)> = series.into_iter().map(|(l, v)| (l, v as f64)).collect();
                    gauge(enc, &name, help, &series)?;
                }
            }
        }
    }
    Ok(())
}

/// Lookup hits and misses per loaded table, reloads, a failing reload.
fn encode_lookups(enc: &mut DescriptorEncoder<'_>, e: &EnrichStatus) -> fmt::Result {
    let none = Labels::new;
    let mut lookups = Vec::new();
    let mut entries = Vec::new();
    for t in e.tables.iter().filter(|t| t.loaded || t.hits > 0 || t.misses > 0) {
        lookups.push((vec![("table", t.table.clone()), ("result", "hit".to_string())], t.hits));
        lookups.push((vec![("table", t.table.clone()), ("result", "miss".to_string())], t.misses));
        entries.push((vec![("table", t.table.clone())], t.entries as f64));
    }
    counter(
        enc,
        "calllog_bridge_enrich_lookups",
        "Lookups by table and result (hit: id found; miss: id not in the loaded table)",
        &lookups,
    )?;
    gauge(enc, "calllog_bridge_enrich_table_entries", "Ids each loaded lookup table holds", &entries)?;
    counter(enc, "calllog_bridge_enrich_reloads", "Successful lookup-table reloads", &[(none(), e.reloads)])?;
    gauge(
        enc,
        "calllog_bridge_enrich_reload_failing",
        "1 while the last lookup reload failed (the previous tables stay in use)",
        &[(none(), if e.last_reload_error.is_some() { 1.0 } else { 0.0 })],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_000;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition")
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<prometheus_parse::Value> {
        scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(|s| s.value.clone())
    }

    fn fixture() -> Telemetry {
        let tel = Telemetry::new();
        let a = tel.file("/le/a.log");
        a.set_position_at(100, 100, T0);
        // Read at T0, called 2 s, 2 s and -50 ms before (clock skew).
        a.sync_delays(T0, [Some(2000), Some(2000), Some(-50)]);
        // Written 1.5 s after the calls: 0.5 s of the 2 s is the transfer.
        a.written(T0, [Some(T0 - 500), Some(T0 - 500), None]);
        a.rejected_for("column_count");
        let b = tel.file("/le/b.log");
        b.set_position_at(5000, 1000, T0);
        b.sync_delays(T0, [Some(30)]);
        let k = tel.sink("upstream");
        k.enqueued(4);
        k.delivered(4, T0, T0 + 120);
        k.retried();
        tel
    }

    #[test]
    fn aggregate_metrics_have_no_file_label() {
        let tel = fixture();
        let s = StatusSettings { per_file_metrics: false, ..StatusSettings::default() };
        let text = render(&tel, &s, T0 + 1000);
        assert!(!text.contains("file=\""), "{text}");
        let m = parse(&text);
        use prometheus_parse::Value::*;
        assert!(matches!(value(&m, "calllog_bridge_records_total", &[]), Some(Counter(v)) if v == 4.0));
        assert!(matches!(value(&m, "calllog_bridge_negative_delays_total", &[]), Some(Counter(v)) if v == 1.0));
        assert!(matches!(value(&m, "calllog_bridge_rejects_total", &[("reason", "column_count")]), Some(Counter(v)) if v == 1.0));
        assert!(matches!(value(&m, "calllog_bridge_bytes_behind", &[]), Some(Gauge(v)) if v == 4000.0));
        assert!(matches!(value(&m, "calllog_bridge_sync_delay_window_seconds", &[("stat", "max")]), Some(Gauge(v)) if v == 2.0));
        assert!(matches!(value(&m, "calllog_bridge_files", &[("state", "caught-up")]), Some(Gauge(v)) if v == 1.0));
        assert!(matches!(value(&m, "calllog_bridge_files", &[("state", "behind")]), Some(Gauge(v)) if v == 1.0));
        match value(&m, "calllog_bridge_sync_delay_seconds", &[]) {
            Some(Histogram(h)) => {
                let le = |b: f64| h.iter().find(|x| x.less_than == b).map(|x| x.count);
                // -50 ms and 30 ms are <= 0.05 s; 2 s twice is <= 2.5 s.
                assert_eq!(le(0.005), Some(1.0));
                assert_eq!(le(0.05), Some(2.0));
                assert_eq!(le(2.5), Some(4.0));
                assert_eq!(le(f64::INFINITY), Some(4.0));
            }
            other => panic!("no sync-delay histogram: {other:?}"),
        }
        match value(&m, "calllog_bridge_delivery_delay_seconds", &[("sink", "upstream")]) {
            Some(Histogram(h)) => assert_eq!(h.iter().find(|x| x.less_than == 0.25).map(|x| x.count), Some(4.0)),
            other => panic!("no delivery-delay histogram: {other:?}"),
        }
        assert!(matches!(value(&m, "calllog_bridge_retries_total", &[("sink", "upstream")]), Some(Counter(v)) if v == 1.0));
        match value(&m, "calllog_bridge_transfer_delay_seconds", &[]) {
            Some(Histogram(h)) => {
                let le = |b: f64| h.iter().find(|x| x.less_than == b).map(|x| x.count);
                assert_eq!(le(0.25), Some(0.0));
                assert_eq!(le(0.5), Some(2.0));
                assert_eq!(le(f64::INFINITY), Some(2.0), "records without a write time are not counted");
            }
            other => panic!("no transfer-delay histogram: {other:?}"),
        }
        assert!(matches!(value(&m, "calllog_bridge_transfer_delay_window_seconds", &[("stat", "p95")]), Some(Gauge(v)) if v == 0.5));
    }

    #[test]
    fn per_file_metrics_label_each_file() {
        let tel = fixture();
        let s = StatusSettings { per_file_metrics: true, ..StatusSettings::default() };
        let m = parse(&render(&tel, &s, T0 + 1000));
        use prometheus_parse::Value::*;
        assert!(matches!(value(&m, "calllog_bridge_records_total", &[("file", "/le/a.log")]), Some(Counter(v)) if v == 3.0));
        assert!(matches!(value(&m, "calllog_bridge_bytes_behind", &[("file", "/le/b.log")]), Some(Gauge(v)) if v == 4000.0));
        assert!(
            matches!(value(&m, "calllog_bridge_watermark_timestamp_seconds", &[("file", "/le/a.log")]), Some(Gauge(v)) if v == secs(T0 + 50))
        );
    }

    #[test]
    fn removing_a_file_keeps_aggregate_counters() {
        let tel = fixture();
        let s = StatusSettings::default();
        tel.remove_file("/le/a.log");
        let m = parse(&render(&tel, &s, T0 + 1000));
        use prometheus_parse::Value::*;
        assert!(matches!(value(&m, "calllog_bridge_records_total", &[]), Some(Counter(v)) if v == 4.0));
        assert!(matches!(value(&m, "calllog_bridge_rejects_total", &[("reason", "column_count")]), Some(Counter(v)) if v == 1.0));
    }

    #[test]
    fn partial_line_series_and_no_section_or_lookup_series_unless_registered() {
        let tel = fixture();
        tel.file("/le/a.log").partial_line();
        // Without a component's figures or lookups, none of their series.
        let text = render(&tel, &StatusSettings::default(), T0 + 1000);
        assert!(!text.contains("calllog_bridge_channel_") && !text.contains("calllog_bridge_enrich_"), "{text}");
        assert!(
            matches!(value(&parse(&text), "calllog_bridge_partial_lines_total", &[]), Some(prometheus_parse::Value::Counter(v)) if v == 1.0)
        );
    }

    #[test]
    fn a_section_becomes_series_with_its_help_and_label() {
        use prometheus_parse::Value::*;
        let tel = fixture();
        let f = tel.figures("kafka");
        f.counter("messages_produced", "Messages the brokers acknowledged").add(7);
        let [timeout, _refused] = f.counters_by("errors", "Produce errors, by reason", "reason", ["timeout", "refused"]);
        timeout.inc();
        f.gauge("in_flight", "Requests waiting").set(2);
        f.status_gauge("last_offset").set(99);
        let text = render(&tel, &StatusSettings::default(), T0 + 1000);
        assert!(text.contains("# HELP calllog_bridge_kafka_messages_produced_total Messages the brokers acknowledged"), "{text}");
        assert!(!text.contains("last_offset"), "a /status-only figure has no series: {text}");
        let m = parse(&text);
        assert!(matches!(value(&m, "calllog_bridge_kafka_messages_produced_total", &[]), Some(Counter(v)) if v == 7.0));
        assert!(matches!(value(&m, "calllog_bridge_kafka_errors_total", &[("reason", "timeout")]), Some(Counter(v)) if v == 1.0));
        assert!(matches!(value(&m, "calllog_bridge_kafka_errors_total", &[("reason", "refused")]), Some(Counter(v)) if v == 0.0));
        assert!(matches!(value(&m, "calllog_bridge_kafka_in_flight", &[]), Some(Gauge(v)) if v == 2.0));
    }
}
