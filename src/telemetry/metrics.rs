//! Prometheus exposition of the telemetry (text format 0.0.4, rendered by
//! prometheus-client from a [`Collector`] that reads the atomics at scrape
//! time).
//!
//! Invariant: label sets are bounded. Sinks and sources are few (`sink`,
//! `source` labels: the config's); reject
//! reasons are a fixed list (`reason`); file states are four (`state`).
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
//! | `ready` | gauge | | 1 once sources and sinks are up and no component has a fault |
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
//! | `source_files_unreadable` | gauge | source | matched files (or directories) that cannot be read |
//! | `source_no_files_seconds` | gauge | source | how long the paths have matched no file |
//! | `source_files_left_unread_total`, `source_bytes_left_unread_total` | counter | source | checkpointed files gone or no longer matched with unread bytes (records lost) |
//! | `channel_connections` | gauge | | WebSocket connections open now |
//! | `channel_connections_accepted_total` | counter | | connections upgraded |
//! | `channel_refused_total` | counter | reason | handshakes refused: `unauthorized` (401), `not_found` (404), `bad_request` (400, 431), `too_many_connections` (503), `not_websocket` (426, 405), `handshake_timeout`, `handshake_evicted` (a pending handshake closed to admit a newer connection) |
//! | `channel_closed_total` | counter | reason | connections closed: `slow_consumer`, `ping_timeout`, `token_changed`, `shutdown`, `protocol_error` (1002, 1007, 1009), `client` (by the client) |
//! | `channel_messages_sent_total`, `channel_records_sent_total`, `channel_records_replayed_total`, `channel_lost_notices_total` | counter | | frames written to clients |
//! | `channel_ring_records`, `channel_ring_bytes` | gauge | | what the replay ring holds |
//! | `enrich_lookups_total` | counter | table, result (`hit`, `miss`) | lookups of loaded tables |
//! | `enrich_table_entries` | gauge | table | ids a loaded table holds |
//! | `enrich_reloads_total` | counter | | successful lookup reloads |
//! | `enrich_reload_failing` | gauge | | 1 while the last reload failed (old tables in use) |
//!
//! The channel series appear only with a `[channel]`, the enrich series
//! only with `[enrich] lookups`.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::delay::{DelaySummary, HistogramSnapshot};
use super::status::{channel_closes, channel_refusals, FileState, StatusSettings};
use super::Telemetry;
use crate::enrich::EnrichStats;
use crate::sink::channel::ChannelStats;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric at `now_ms` in the Prometheus text format.
pub fn render(telemetry: &Telemetry, settings: &StatusSettings, now_ms: i64) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TelemetryCollector { telemetry: telemetry.clone(), settings: *settings, now_ms }));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail; an encoder error would be a bug
    // in a label value, and a partial page is still better than none.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    out
}

/// Reads the telemetry on each scrape.
struct TelemetryCollector {
    /// The registry to read.
    telemetry: Telemetry,
    /// Window, idle and stall settings; per-file labels or not.
    settings: StatusSettings,
    /// The scrape time.
    now_ms: i64,
}

impl fmt::Debug for TelemetryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryCollector").field("now_ms", &self.now_ms).finish()
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

impl Collector for TelemetryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let (tel, s, now) = (&self.telemetry, &self.settings, self.now_ms);
        let none = Labels::new;

        gauge(
            &mut enc,
            "calllog_bridge_build_info",
            "The bridge's version (always 1)",
            &[(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1.0)],
        )?;
        gauge(&mut enc, "calllog_bridge_uptime_seconds", "Seconds since the bridge started", &[(none(), secs(now - tel.started_ms()))])?;
        gauge(
            &mut enc,
            "calllog_bridge_ready",
            "1 once sources and sinks are up and no component has a fault",
            &[(none(), if tel.is_ready() { 1.0 } else { 0.0 })],
        )?;
        let faults = tel.fault_summary();
        let fault_now: Vec<(Labels, f64)> =
            faults.iter().map(|&(c, open, _)| (vec![("component", c.to_string())], if open { 1.0 } else { 0.0 })).collect();
        let fault_total: Vec<(Labels, u64)> = faults.iter().map(|&(c, _, n)| (vec![("component", c.to_string())], n)).collect();
        gauge(
            &mut enc,
            "calllog_bridge_fault",
            "1 while the component cannot write (e.g. a full disk); it keeps its data and retries",
            &fault_now,
        )?;
        counter(&mut enc, "calllog_bridge_faults", "Fault episodes since start", &fault_total)?;

        // Files.
        let files = tel.files();
        let retired = tel.retired();
        let mut by_state: BTreeMap<FileState, f64> = FileState::ALL.iter().map(|&st| (st, 0.0)).collect();
        let mut records = Vec::new();
        let mut rejects = Vec::new();
        let mut negative = Vec::new();
        let mut partial = Vec::new();
        let mut hist = Vec::new();
        let mut thist = Vec::new();
        let mut twindow = Vec::new();
        let mut behind = Vec::new();
        let mut window = Vec::new();
        let mut watermark = Vec::new();
        let mut agg_hist = retired.sync_delay.clone();
        let mut agg_thist = retired.transfer_delay.clone();
        let mut agg_twindow = Vec::new();
        let mut agg_rejects = retired.rejects.clone();
        let (mut agg_records, mut agg_negative, mut agg_behind) = (retired.records, retired.negative_delays, 0u64);
        let mut agg_partial = retired.partial_lines;
        let mut agg_window = Vec::new();
        for f in &files {
            let st = f.status(now, s);
            *by_state.entry(st.state).or_default() += 1.0;
            let h = f.sync_delay_histogram();
            let th = f.transfer_delay_histogram();
            let reasons = f.rejects_by_reason();
            if s.per_file_metrics {
                // `file_id` keeps two rows unique while a rotation moves a
                // path from one file to the next.
                let l = vec![("file", st.path.clone()), ("file_id", st.id.clone())];
                records.push((l.clone(), st.records));
                negative.push((l.clone(), st.negative_delays));
                partial.push((l.clone(), st.partial_lines));
                for (reason, n) in reasons {
                    let mut lr = l.clone();
                    lr.push(("reason", reason.to_string()));
                    rejects.push((lr, n));
                }
                hist.push((l.clone(), h));
                thist.push((l.clone(), th));
                behind.push((l.clone(), st.bytes_behind as f64));
                if let Some(d) = &st.sync_delay_ms {
                    window_series(&l, d, &mut window);
                }
                if let Some(d) = &st.transfer_delay_ms {
                    window_series(&l, d, &mut twindow);
                }
                if let Some(w) = st.watermark_ms {
                    watermark.push((l, secs(w)));
                }
            } else {
                agg_records += st.records;
                agg_negative += st.negative_delays;
                agg_partial += st.partial_lines;
                agg_behind += st.bytes_behind;
                for (reason, n) in reasons {
                    *agg_rejects.entry(reason).or_default() += n;
                }
                agg_hist.merge(&h);
                agg_thist.merge(&th);
                if st.state != FileState::Idle {
                    f.sync_ring.delays_since(now - s.delay_window_ms, &mut agg_window);
                    if let Some(r) = f.transfer_ring.get() {
                        r.delays_since(now - s.delay_window_ms, &mut agg_twindow);
                    }
                }
            }
        }
        if s.per_file_metrics {
            // Removed files keep their totals under an empty `file` label.
            if retired.records > 0 || retired.negative_delays > 0 || retired.partial_lines > 0 || !retired.rejects.is_empty() {
                let l = vec![("file", String::new())];
                records.push((l.clone(), retired.records));
                negative.push((l.clone(), retired.negative_delays));
                partial.push((l.clone(), retired.partial_lines));
                for (reason, n) in &retired.rejects {
                    rejects.push((vec![("file", String::new()), ("reason", reason.to_string())], *n));
                }
                hist.push((l.clone(), retired.sync_delay.clone()));
                thist.push((l, retired.transfer_delay.clone()));
            }
        } else {
            records.push((none(), agg_records));
            negative.push((none(), agg_negative));
            partial.push((none(), agg_partial));
            for (reason, n) in agg_rejects {
                rejects.push((vec![("reason", reason.to_string())], n));
            }
            hist.push((none(), agg_hist));
            thist.push((none(), agg_thist));
            behind.push((none(), agg_behind as f64));
            if let Some(d) = DelaySummary::of(&mut agg_window) {
                window_series(&none(), &d, &mut window);
            }
            if let Some(d) = DelaySummary::of(&mut agg_twindow) {
                window_series(&none(), &d, &mut twindow);
            }
        }
        let states: Vec<(Labels, f64)> = by_state.into_iter().map(|(st, n)| (vec![("state", st.name().to_string())], n)).collect();
        gauge(&mut enc, "calllog_bridge_files", "Followed files per state (caught-up, behind, idle, stalled)", &states)?;
        counter(&mut enc, "calllog_bridge_records", "Records read", &records)?;
        counter(&mut enc, "calllog_bridge_rejects", "Lines rejected, by reason", &rejects)?;
        counter(
            &mut enc,
            "calllog_bridge_negative_delays",
            "Records whose request_time lies after the time they were observed (clock skew)",
            &negative,
        )?;
        counter(
            &mut enc,
            "calllog_bridge_partial_lines",
            "Partial last lines (no newline) emitted because their file was rotated away or deleted",
            &partial,
        )?;
        histogram(&mut enc, "calllog_bridge_sync_delay_seconds", "Sync delay: observed minus request_time", &hist)?;
        gauge(
            &mut enc,
            "calllog_bridge_sync_delay_window_seconds",
            "Sync delay p50, p95 and max over the recent window, files that are not idle",
            &window,
        )?;
        histogram(
            &mut enc,
            "calllog_bridge_transfer_delay_seconds",
            "Transfer delay: observed minus the line's write time (LE 6 log_ingestion); the sync's share of the sync delay",
            &thist,
        )?;
        gauge(
            &mut enc,
            "calllog_bridge_transfer_delay_window_seconds",
            "Transfer delay p50, p95 and max over the recent window, files that are not idle",
            &twindow,
        )?;
        gauge(&mut enc, "calllog_bridge_bytes_behind", "Bytes written but not read yet (size minus offset)", &behind)?;
        if s.per_file_metrics {
            gauge(&mut enc, "calllog_bridge_watermark_timestamp_seconds", "Newest request_time read (epoch seconds)", &watermark)?;
        }

        // Sinks.
        let sinks = tel.sinks();
        let channel = tel.channel_stats();
        let mut delivered = Vec::new();
        let mut batches = Vec::new();
        let mut retries = Vec::new();
        let mut dropped = Vec::new();
        let mut dead = Vec::new();
        let mut capped = Vec::new();
        let mut depth = Vec::new();
        let mut oldest = Vec::new();
        let mut dhist = Vec::new();
        for k in &sinks {
            let st = k.status(now, s);
            let l = vec![("sink", st.name.clone())];
            delivered.push((l.clone(), st.delivered_records));
            batches.push((l.clone(), st.delivered_batches));
            retries.push((l.clone(), st.retries));
            dropped.push((l.clone(), st.dropped_records));
            dead.push((l.clone(), st.dead_lettered_records));
            capped.push((l.clone(), st.retry_after_capped));
            depth.push((l.clone(), st.queue_depth as f64));
            oldest.push((l.clone(), secs(st.oldest_undelivered_age_ms.unwrap_or(0))));
            // The channel delivers when a frame is written to a client.
            let h = match &channel {
                Some(ch) if st.name == crate::sink::channel::NAME => ch.frame_delay_histogram(),
                _ => k.delivery_delay_histogram(),
            };
            dhist.push((l, h));
        }
        histogram(&mut enc, "calllog_bridge_delivery_delay_seconds", "Delivery delay: delivered minus observed, per record", &dhist)?;
        counter(&mut enc, "calllog_bridge_delivered_records", "Records delivered", &delivered)?;
        counter(&mut enc, "calllog_bridge_delivered_batches", "Batches delivered", &batches)?;
        counter(&mut enc, "calllog_bridge_retries", "Retried delivery attempts", &retries)?;
        counter(&mut enc, "calllog_bridge_dropped_records", "Records dropped (each logged)", &dropped)?;
        counter(&mut enc, "calllog_bridge_dead_lettered_records", "Records written to the dead-letter file", &dead)?;
        counter(
            &mut enc,
            "calllog_bridge_retry_after_capped",
            "Retry-After answers asking for longer than retry_max_ms, waited for only that long",
            &capped,
        )?;
        gauge(&mut enc, "calllog_bridge_queue_depth", "Records waiting in the sink", &depth)?;
        gauge(
            &mut enc,
            "calllog_bridge_oldest_undelivered_age_seconds",
            "Age of the oldest record not yet delivered (0 when none)",
            &oldest,
        )?;

        encode_sources(&mut enc, tel, s, now)?;
        if let Some(ch) = &channel {
            encode_channel(&mut enc, ch)?;
        }
        if let Some((_, es)) = tel.enrich_stats().filter(|(files, _)| !files.is_empty()) {
            encode_enrich(&mut enc, &es)?;
        }
        Ok(())
    }
}

/// Per `[[source]]` (a bounded label set: the sources of the config):
/// files matched, files that cannot be read, files left unread.
fn encode_sources(enc: &mut DescriptorEncoder<'_>, tel: &Telemetry, s: &StatusSettings, now: i64) -> fmt::Result {
    let sources = tel.sources();
    let label = |name: &str| vec![("source", name.to_string())];
    let (mut matched, mut unreadable, mut no_files, mut left, mut left_bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for src in &sources {
        let st = src.status(now, s);
        matched.push((label(&st.name), st.files_matched as f64));
        unreadable.push((label(&st.name), st.files_unreadable as f64));
        no_files.push((label(&st.name), secs(st.no_files_for_ms.unwrap_or(0))));
        left.push((label(&st.name), st.files_left_unread));
        left_bytes.push((label(&st.name), st.bytes_left_unread));
    }
    gauge(enc, "calllog_bridge_source_files", "Files the source's paths matched at the last scan", &matched)?;
    gauge(enc, "calllog_bridge_source_files_unreadable", "Matched files (or directories) the bridge cannot read", &unreadable)?;
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
    Ok(())
}

/// The channel's connection, refusal, close and frame counters.
fn encode_channel(enc: &mut DescriptorEncoder<'_>, ch: &ChannelStats) -> fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    let none = Labels::new;
    let by_reason = |pairs: &[(&'static str, u64)]| -> Vec<(Labels, u64)> {
        pairs.iter().map(|&(r, n)| (vec![("reason", r.to_string())], n)).collect()
    };
    gauge(
        enc,
        "calllog_bridge_channel_connections",
        "WebSocket connections open now",
        &[(none(), ch.connections_active.load(Relaxed).max(0) as f64)],
    )?;
    counter(
        enc,
        "calllog_bridge_channel_connections_accepted",
        "WebSocket connections upgraded",
        &[(none(), ch.connections_accepted.load(Relaxed))],
    )?;
    counter(
        enc,
        "calllog_bridge_channel_refused",
        "Handshakes refused, by reason (unauthorized 401, not_found 404, bad_request 400/431, too_many_connections 503, not_websocket 426/405, handshake_timeout, handshake_evicted)",
        &by_reason(&channel_refusals(ch)),
    )?;
    counter(
        enc,
        "calllog_bridge_channel_closed",
        "Connections closed, by reason (slow_consumer, ping_timeout, token_changed, shutdown, protocol_error; client: by the client)",
        &by_reason(&channel_closes(ch)),
    )?;
    counter(enc, "calllog_bridge_channel_messages_sent", "Messages written to clients", &[(none(), ch.messages_sent.load(Relaxed))])?;
    counter(
        enc,
        "calllog_bridge_channel_records_sent",
        "Records written to clients (once per client)",
        &[(none(), ch.records_sent.load(Relaxed))],
    )?;
    counter(
        enc,
        "calllog_bridge_channel_records_replayed",
        "Records written as since= replay",
        &[(none(), ch.records_replayed.load(Relaxed))],
    )?;
    counter(
        enc,
        "calllog_bridge_channel_lost_notices",
        "Notices sent to clients asking for records no longer held",
        &[(none(), ch.lost_notices.load(Relaxed))],
    )?;
    gauge(
        enc,
        "calllog_bridge_channel_ring_records",
        "Records held in the replay ring",
        &[(none(), ch.ring_records.load(Relaxed) as f64)],
    )?;
    gauge(
        enc,
        "calllog_bridge_channel_ring_bytes",
        "Bytes of JSON held in the replay ring",
        &[(none(), ch.ring_bytes.load(Relaxed) as f64)],
    )?;
    Ok(())
}

/// Lookup hits and misses per loaded table, reloads, a failing reload.
fn encode_enrich(enc: &mut DescriptorEncoder<'_>, es: &EnrichStats) -> fmt::Result {
    let none = Labels::new;
    let mut lookups = Vec::new();
    let mut entries = Vec::new();
    for t in es.tables.iter().filter(|t| t.loaded || t.hits > 0 || t.misses > 0) {
        let table = t.table.name().to_string();
        lookups.push((vec![("table", table.clone()), ("result", "hit".to_string())], t.hits));
        lookups.push((vec![("table", table.clone()), ("result", "miss".to_string())], t.misses));
        entries.push((vec![("table", table)], t.entries as f64));
    }
    counter(
        enc,
        "calllog_bridge_enrich_lookups",
        "Lookups by table and result (hit: id found; miss: id not in the loaded table)",
        &lookups,
    )?;
    gauge(enc, "calllog_bridge_enrich_table_entries", "Ids each loaded lookup table holds", &entries)?;
    counter(enc, "calllog_bridge_enrich_reloads", "Successful lookup-table reloads", &[(none(), es.reloads)])?;
    gauge(
        enc,
        "calllog_bridge_enrich_reload_failing",
        "1 while the last lookup reload failed (the previous tables stay in use)",
        &[(none(), if es.last_reload_error.is_some() { 1.0 } else { 0.0 })],
    )?;
    Ok(())
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
        a.observed(T0, [Some(T0 - 2000), Some(T0 - 2000), Some(T0 + 50)]);
        // Written 1.5 s after the calls: 0.5 s of the 2 s is the transfer.
        a.written(T0, [Some(T0 - 500), Some(T0 - 500), None]);
        a.rejected_for("column_count");
        let b = tel.file("/le/b.log");
        b.set_position_at(5000, 1000, T0);
        b.observed(T0, [Some(T0 - 30)]);
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
    fn channel_enrich_and_partial_line_series() {
        use prometheus_parse::Value::*;
        use std::sync::atomic::Ordering::Relaxed;
        let tel = fixture();
        tel.file("/le/a.log").partial_line();
        // Without a channel or lookups, none of their series.
        let text = render(&tel, &StatusSettings::default(), T0 + 1000);
        assert!(!text.contains("calllog_bridge_channel_") && !text.contains("calllog_bridge_enrich_"), "{text}");
        assert!(matches!(value(&parse(&text), "calllog_bridge_partial_lines_total", &[]), Some(Counter(v)) if v == 1.0));

        let ch = ChannelStats::default();
        ch.connections_active.fetch_add(1, Relaxed);
        ch.connections_accepted.fetch_add(2, Relaxed);
        ChannelStats::bump(&ch.refused_unauthorized);
        ChannelStats::bump(&ch.closed_slow_consumer);
        ch.frames_written(1, 3, T0, T0 + 7);
        let k = tel.sink("channel");
        k.enqueued(3);
        k.delivered(3, T0, T0 + 1);
        tel.set_channel_stats(Some(ch));
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services.csv");
        std::fs::write(&services, "service_id,service_name\nsvc1,Orders\n").unwrap();
        let e = std::sync::Arc::new(crate::enrich::Enricher::new(std::slice::from_ref(&services), None, None).unwrap());
        let mut r = crate::record::Record::new_ml();
        r.set(crate::record::Field::ServiceId, "nope");
        e.enrich(&e.tables(), &mut r);
        tel.set_enricher(e.clone());

        let m = parse(&render(&tel, &StatusSettings::default(), T0 + 1000));
        let v = |name: &str, labels: &[(&str, &str)]| match value(&m, name, labels) {
            Some(Counter(v)) | Some(Gauge(v)) => v,
            other => panic!("{name} {labels:?}: {other:?}"),
        };
        assert_eq!(v("calllog_bridge_channel_connections", &[]), 1.0);
        assert_eq!(v("calllog_bridge_channel_connections_accepted_total", &[]), 2.0);
        assert_eq!(v("calllog_bridge_channel_refused_total", &[("reason", "unauthorized")]), 1.0);
        assert_eq!(v("calllog_bridge_channel_refused_total", &[("reason", "too_many_connections")]), 0.0);
        assert_eq!(v("calllog_bridge_channel_closed_total", &[("reason", "slow_consumer")]), 1.0);
        assert_eq!(v("calllog_bridge_channel_records_sent_total", &[]), 3.0);
        // The channel's delivery delay is the frame-written delay (7 ms), not
        // the ring append (1 ms).
        match value(&m, "calllog_bridge_delivery_delay_seconds", &[("sink", "channel")]) {
            Some(Histogram(h)) => {
                assert_eq!(h.iter().find(|x| x.less_than == 0.005).map(|x| x.count), Some(0.0));
                assert_eq!(h.iter().find(|x| x.less_than == 0.01).map(|x| x.count), Some(3.0));
            }
            other => panic!("no channel delivery histogram: {other:?}"),
        }
        assert_eq!(v("calllog_bridge_enrich_lookups_total", &[("table", "services"), ("result", "miss")]), 1.0);
        assert_eq!(v("calllog_bridge_enrich_lookups_total", &[("table", "services"), ("result", "hit")]), 0.0);
        assert!(value(&m, "calllog_bridge_enrich_lookups_total", &[("table", "keys")]).is_none(), "tables not loaded have no series");
        assert_eq!(v("calllog_bridge_enrich_table_entries", &[("table", "services")]), 1.0);
        assert_eq!(v("calllog_bridge_enrich_reloads_total", &[]), 0.0);
        assert_eq!(v("calllog_bridge_enrich_reload_failing", &[]), 0.0);
        std::fs::write(&services, "service_id,colour\nsvc1,red\n").unwrap();
        assert!(e.reload_if_changed().is_err());
        let m = parse(&render(&tel, &StatusSettings::default(), T0 + 1000));
        assert!(matches!(value(&m, "calllog_bridge_enrich_reload_failing", &[]), Some(Gauge(v)) if v == 1.0));
    }
}
