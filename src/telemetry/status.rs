//! The `/status` model: what `lag` and dashboards read, and the rules that
//! turn recorded facts into per-file states and windowed delays.
//!
//! Invariant: every function here takes `now_ms` from its caller and does
//! no I/O, so each state is tested with injected times. The JSON shape is
//! decided here only (serde derives); `lag` deserialises the same types.
//!
//! File states (checked in this order):
//! - `stalled`: data is waiting (size > offset) but the offset has not
//!   moved for `stalled_after_secs`.
//! - `behind`: data is waiting and reading progresses.
//! - `caught-up`: everything read (offset >= size) and data arrived within
//!   `idle_after_secs`.
//! - `idle`: everything read and no new data for `idle_after_secs`, or the
//!   file was rotated away (renamed, deleted, compressed) and read to its
//!   end (`finished`). An idle file shows no current sync delay
//!   (`sync_delay_ms` is `null`): an old delay would look current.
//!
//! Files are keyed by identity (`id`: the tailer's source and content
//! fingerprint), not by path: a row follows its file through renames,
//! rotation and compression, shows where it is now, and its counters never
//! go back.
//!
//! Beside files, sinks and totals: `channel` (the endpoint the dashboard
//! subscribes to, `listen` / `tls` / `path`, plus connections, refusals
//! and closes by reason, frames and ring figures; never the token) and
//! `enrich` (lookup files, hits and misses per table, reloads, the last
//! reload error), each absent when not configured. Fields added later carry
//! `#[serde(default)]` so `lag` still reads a status from an older bridge.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::delay::DelaySummary;
use super::source::SourceStatus;
use super::{FileStats, SinkStats, Telemetry};
use crate::enrich::EnrichStats;
use crate::settings::StatusConfig;
use crate::sink::channel::ChannelStats;
use crate::time;

/// The knobs of the derived figures (from `[status]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusSettings {
    /// Window of the sync- and delivery-delay percentiles, ms.
    pub delay_window_ms: i64,
    /// A file with no new data for this long is idle, ms.
    pub idle_after_ms: i64,
    /// A file with data waiting and no read progress for this long is
    /// stalled, ms.
    pub stalled_after_ms: i64,
    /// Label file metrics per file (else aggregate them).
    pub per_file_metrics: bool,
    /// A source matching no file for this long is `no-files`, ms.
    pub no_files_after_ms: i64,
}

impl Default for StatusSettings {
    fn default() -> Self {
        StatusSettings::from(&StatusConfig::default())
    }
}

impl From<&StatusConfig> for StatusSettings {
    fn from(c: &StatusConfig) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        StatusSettings {
            delay_window_ms: ms(c.delay_window),
            idle_after_ms: ms(c.idle_after),
            stalled_after_ms: ms(c.stalled_after),
            per_file_metrics: c.per_file_metrics,
            no_files_after_ms: ms(c.no_files_after),
        }
    }
}

/// The state of one followed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileState {
    /// Everything read, and data arrived recently.
    CaughtUp,
    /// Data waiting; reading progresses.
    Behind,
    /// Everything read; no new data for `idle_after_secs`.
    Idle,
    /// Data waiting; no read progress for `stalled_after_secs`.
    Stalled,
}

impl FileState {
    /// Every state, in display order.
    pub const ALL: [FileState; 4] = [FileState::CaughtUp, FileState::Behind, FileState::Idle, FileState::Stalled];

    /// The stable name (`caught-up`, `behind`, `idle`, `stalled`).
    pub fn name(self) -> &'static str {
        match self {
            FileState::CaughtUp => "caught-up",
            FileState::Behind => "behind",
            FileState::Idle => "idle",
            FileState::Stalled => "stalled",
        }
    }
}

impl std::fmt::Display for FileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `/status`: the whole picture at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The bridge's version.
    pub version: String,
    /// When this status was computed, epoch ms.
    pub now_ms: i64,
    /// When this status was computed, ISO 8601.
    pub now: String,
    /// Seconds since the bridge started.
    pub uptime_secs: f64,
    /// True once sources and sinks are up, and while nothing is in
    /// `faults`.
    pub ready: bool,
    /// Components that cannot write (a full disk): they keep their data
    /// and retry; empty when all is well.
    #[serde(default)]
    pub faults: Vec<super::FaultStatus>,
    /// The settings the figures were computed with.
    pub settings: SettingsView,
    /// One entry per `[[source]]`: files matched, files that cannot be
    /// read, files left unread (absent from an older bridge's status).
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
    /// One entry per followed file, by path.
    pub files: Vec<FileStatus>,
    /// One entry per sink, by name.
    pub sinks: Vec<SinkStatus>,
    /// Sums and maxima over files and sinks.
    pub totals: Totals,
    /// Where the local channel listens (for the dashboard) and its
    /// connection figures; absent when no channel runs. Never holds the
    /// token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelStatus>,
    /// Lookup-table figures (hits, misses, reloads); absent when no
    /// `[enrich] lookups` are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichStatus>,
}

/// The local channel in `/status`: its endpoint (`listen`, `tls`, `path`,
/// at the top level of the object as before) and its statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// Where the channel listens.
    #[serde(flatten)]
    pub endpoint: ChannelInfo,
    /// Connections open now.
    #[serde(default)]
    pub connections: u64,
    /// Connections upgraded since start.
    #[serde(default)]
    pub connections_accepted: u64,
    /// Handshakes refused since start, by reason: `unauthorized` (401),
    /// `not_found` (404), `bad_request` (400), `too_many_connections` (503).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Connections closed since start, by reason: `slow_consumer`,
    /// `ping_timeout`, `token_changed`, `shutdown` (by the bridge) and
    /// `client` (closed or dropped by the client).
    #[serde(default)]
    pub closed: BTreeMap<String, u64>,
    /// `{"data":...}` messages written since start.
    #[serde(default)]
    pub messages_sent: u64,
    /// Records written to clients since start (a record sent to three
    /// clients counts three).
    #[serde(default)]
    pub records_sent: u64,
    /// Records written as `?since=` replay since start.
    #[serde(default)]
    pub records_replayed: u64,
    /// `{"lost":...}` notices sent since start.
    #[serde(default)]
    pub lost_notices: u64,
    /// Records held in the replay ring.
    #[serde(default)]
    pub ring_records: u64,
    /// Bytes of JSON held in the replay ring.
    #[serde(default)]
    pub ring_bytes: u64,
    /// The newest sequence number assigned (0 = none yet).
    #[serde(default)]
    pub last_seq: u64,
}

/// The refusal reasons of the channel, with the counter of each (bounded:
/// the `reason` label of `calllog_bridge_channel_refused_total`).
pub fn channel_refusals(s: &ChannelStats) -> [(&'static str, u64); 7] {
    [
        ("unauthorized", s.refused_unauthorized.load(Ordering::Relaxed)),
        ("not_found", s.refused_not_found.load(Ordering::Relaxed)),
        ("bad_request", s.refused_bad_request.load(Ordering::Relaxed)),
        ("too_many_connections", s.refused_full.load(Ordering::Relaxed)),
        ("not_websocket", s.refused_not_websocket.load(Ordering::Relaxed)),
        ("handshake_timeout", s.handshake_timeout.load(Ordering::Relaxed)),
        ("handshake_evicted", s.handshake_evicted.load(Ordering::Relaxed)),
    ]
}

/// The close reasons the channel counts, with the counter of each
/// (bounded: the `reason` label of `calllog_bridge_channel_closed_total`).
pub fn channel_closes(s: &ChannelStats) -> [(&'static str, u64); 6] {
    [
        ("slow_consumer", s.closed_slow_consumer.load(Ordering::Relaxed)),
        ("ping_timeout", s.closed_ping_timeout.load(Ordering::Relaxed)),
        ("token_changed", s.closed_token_changed.load(Ordering::Relaxed)),
        ("shutdown", s.closed_shutdown.load(Ordering::Relaxed)),
        ("protocol_error", s.closed_protocol_error.load(Ordering::Relaxed)),
        ("client", s.closed_by_client.load(Ordering::Relaxed)),
    ]
}

impl ChannelStatus {
    /// The endpoint with the figures of `stats` (zeros when the channel's
    /// statistics are not registered).
    pub fn of(endpoint: ChannelInfo, stats: Option<&ChannelStats>) -> ChannelStatus {
        let Some(s) = stats else {
            return ChannelStatus {
                endpoint,
                connections: 0,
                connections_accepted: 0,
                refused: BTreeMap::new(),
                closed: BTreeMap::new(),
                messages_sent: 0,
                records_sent: 0,
                records_replayed: 0,
                lost_notices: 0,
                ring_records: 0,
                ring_bytes: 0,
                last_seq: 0,
            };
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        ChannelStatus {
            endpoint,
            connections: s.connections_active.load(Ordering::Relaxed).max(0) as u64,
            connections_accepted: load(&s.connections_accepted),
            refused: channel_refusals(s).iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            closed: channel_closes(s).iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            messages_sent: load(&s.messages_sent),
            records_sent: load(&s.records_sent),
            records_replayed: load(&s.records_replayed),
            lost_notices: load(&s.lost_notices),
            ring_records: load(&s.ring_records),
            ring_bytes: load(&s.ring_bytes),
            last_seq: load(&s.last_seq),
        }
    }
}

/// Lookup tables in `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichStatus {
    /// The lookup files, in load order.
    pub files: Vec<String>,
    /// One entry per table (`keys`, `services`, `endpoints`, `plans`).
    pub tables: Vec<EnrichTableStatus>,
    /// Lookups that found their id, over all tables, since start.
    pub hits: u64,
    /// Lookups of an id a loaded table lacks, over all tables, since start.
    pub misses: u64,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Why the last reload failed (file and place); `null` once a reload
    /// succeeds. The previous tables stay in use meanwhile.
    pub last_reload_error: Option<String>,
}

/// One lookup table in `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichTableStatus {
    /// The table's name.
    pub table: String,
    /// Whether a lookup file provides it.
    pub loaded: bool,
    /// Ids it holds now.
    pub entries: u64,
    /// Lookups that found the id, since start.
    pub hits: u64,
    /// Lookups of an id the table lacks, since start.
    pub misses: u64,
}

impl EnrichStatus {
    /// The status of lookup files `files` with statistics `s`.
    pub fn of(files: &[PathBuf], s: &EnrichStats) -> EnrichStatus {
        let tables: Vec<EnrichTableStatus> = s
            .tables
            .iter()
            .map(|t| EnrichTableStatus {
                table: t.table.name().to_string(),
                loaded: t.loaded,
                entries: t.entries as u64,
                hits: t.hits,
                misses: t.misses,
            })
            .collect();
        EnrichStatus {
            files: files.iter().map(|p| p.display().to_string()).collect(),
            hits: tables.iter().map(|t| t.hits).sum(),
            misses: tables.iter().map(|t| t.misses).sum(),
            tables,
            reloads: s.reloads,
            last_reload_error: s.last_reload_error.clone(),
        }
    }
}

/// The local channel's endpoint, as set by the channel sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The bound address (`127.0.0.1:8790`).
    pub listen: String,
    /// True when the channel serves `wss://`.
    pub tls: bool,
    /// The subscribe path (`/ecls/subscribe/<channel_id>/<area>`).
    pub path: String,
}

/// The settings, as shown in `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsView {
    /// Window of the delay percentiles, seconds.
    pub delay_window_secs: u64,
    /// Idle after this many seconds without new data.
    pub idle_after_secs: u64,
    /// Stalled after this many seconds without read progress.
    pub stalled_after_secs: u64,
    /// A source is `no-files` after its globs matched nothing this long.
    #[serde(default)]
    pub no_files_after_secs: u64,
}

/// One followed file, keyed by its identity (content), not its path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileStatus {
    /// The file's identity (`<source>/<fingerprint>`): the same file
    /// renamed, rotated or compressed keeps it, so its counters go on.
    #[serde(default)]
    pub id: String,
    /// Where the file is now.
    pub path: String,
    /// Rotated away and read to its end: `idle`, and no longer part of the
    /// current sync delay.
    #[serde(default)]
    pub finished: bool,
    /// `caught-up`, `behind`, `idle` or `stalled`.
    pub state: FileState,
    /// Size of the file when last looked at, bytes.
    pub size_bytes: u64,
    /// Offset read up to, bytes.
    pub offset_bytes: u64,
    /// Offset durably checkpointed (delivered everywhere), bytes.
    pub committed_offset_bytes: u64,
    /// `size - offset`: bytes written but not read yet.
    pub bytes_behind: u64,
    /// Records read since start.
    pub records: u64,
    /// Lines rejected since start.
    pub rejects: u64,
    /// Lines rejected, by reason.
    pub rejects_by_reason: BTreeMap<String, u64>,
    /// Partial last lines (no newline) emitted because the file was
    /// rotated away or deleted before the newline came, since start.
    #[serde(default)]
    pub partial_lines: u64,
    /// Records whose request_time was after the time they were observed
    /// (clock skew), since start.
    pub negative_delays: u64,
    /// Newest request_time read (the watermark), epoch ms.
    pub watermark_ms: Option<i64>,
    /// The watermark, ISO 8601.
    pub watermark: Option<String>,
    /// When records were last read, epoch ms.
    pub last_read_ms: Option<i64>,
    /// Milliseconds since records were last read.
    pub last_read_age_ms: Option<i64>,
    /// Milliseconds since the offset last moved (since the file was first
    /// seen if it never moved).
    pub no_progress_ms: i64,
    /// Sync delay (observed - request_time) over the recent window;
    /// `null` when idle or when no record was read in the window.
    pub sync_delay_ms: Option<DelaySummary>,
    /// Transfer delay (observed - the line's write time) over the recent
    /// window: the part of the sync delay after Local Edition wrote the
    /// line. `null` when idle, or when the format has no write time (only
    /// LE 6 lines carry one).
    #[serde(default)]
    pub transfer_delay_ms: Option<DelaySummary>,
}

/// One sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// The sink's name (`file`, `channel`, `upstream`).
    pub name: String,
    /// Records received and not yet delivered.
    pub queue_depth: i64,
    /// Age of the oldest undelivered record (now - its observed time), ms.
    pub oldest_undelivered_age_ms: Option<i64>,
    /// Records delivered since start.
    pub delivered_records: u64,
    /// Batches delivered since start.
    pub delivered_batches: u64,
    /// Retried attempts since start.
    pub retries: u64,
    /// Records dropped since start.
    pub dropped_records: u64,
    /// Records written to the dead-letter file since start.
    pub dead_lettered_records: u64,
    /// `Retry-After` answers asking for longer than `retry_max_ms` (waited
    /// for only that long) since start.
    #[serde(default)]
    pub retry_after_capped: u64,
    /// Delivery delay of the last delivered batch, ms.
    pub last_delivery_delay_ms: Option<i64>,
    /// Delivery delay (delivered - observed) over the recent window, by
    /// record; `null` when nothing was delivered in the window.
    pub delivery_delay_ms: Option<DelaySummary>,
}

/// Sums and maxima.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Files followed.
    pub files: u64,
    /// Files per state.
    pub files_by_state: BTreeMap<FileState, u64>,
    /// Records read since start (removed files included).
    pub records: u64,
    /// Lines rejected since start (removed files included).
    pub rejects: u64,
    /// Negative delays since start (removed files included).
    pub negative_delays: u64,
    /// Partial last lines emitted since start (removed files included).
    #[serde(default)]
    pub partial_lines: u64,
    /// Bytes behind over all files.
    pub bytes_behind: u64,
    /// Largest windowed sync delay over files that are not idle, ms.
    pub max_sync_delay_ms: Option<i64>,
    /// Records waiting in sinks.
    pub queue_depth: i64,
    /// Oldest undelivered record's age over all sinks, ms.
    pub max_oldest_undelivered_age_ms: Option<i64>,
    /// Records delivered over all sinks.
    pub delivered_records: u64,
    /// Retries over all sinks.
    pub retries: u64,
    /// Dropped records over all sinks.
    pub dropped_records: u64,
    /// Dead-lettered records over all sinks.
    pub dead_lettered_records: u64,
}

fn nonzero(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

impl FileStats {
    /// The file's state at `now_ms`.
    pub fn state(&self, now_ms: i64, s: &StatusSettings) -> FileState {
        let size = self.size.load(Ordering::Relaxed);
        let offset = self.offset.load(Ordering::Relaxed);
        if size > offset {
            if self.no_progress_ms(now_ms) > s.stalled_after_ms {
                FileState::Stalled
            } else {
                FileState::Behind
            }
        } else {
            let last_data = self.last_read_ms.load(Ordering::Relaxed).max(self.last_progress_ms.load(Ordering::Relaxed));
            if self.is_finished() || last_data == 0 || now_ms - last_data > s.idle_after_ms {
                FileState::Idle
            } else {
                FileState::CaughtUp
            }
        }
    }

    /// Milliseconds since the offset last moved (or since the file was
    /// first seen, if it never moved).
    fn no_progress_ms(&self, now_ms: i64) -> i64 {
        let progress = self.last_progress_ms.load(Ordering::Relaxed);
        let since = if progress != 0 {
            progress
        } else {
            match self.first_position_ms.load(Ordering::Relaxed) {
                0 => self.created_ms,
                t => t,
            }
        };
        (now_ms - since).max(0)
    }

    /// Windowed sync-delay percentiles at `now_ms` (ignoring idleness).
    pub fn sync_delay_window(&self, now_ms: i64, s: &StatusSettings) -> Option<DelaySummary> {
        let mut v = Vec::new();
        self.sync_ring.delays_since(now_ms - s.delay_window_ms, &mut v);
        DelaySummary::of(&mut v)
    }

    /// Windowed transfer-delay percentiles at `now_ms` (ignoring idleness).
    pub fn transfer_delay_window(&self, now_ms: i64, s: &StatusSettings) -> Option<DelaySummary> {
        let mut v = Vec::new();
        self.transfer_ring.get()?.delays_since(now_ms - s.delay_window_ms, &mut v);
        DelaySummary::of(&mut v)
    }

    /// The file's status at `now_ms`.
    pub fn status(&self, now_ms: i64, s: &StatusSettings) -> FileStatus {
        let size = self.size.load(Ordering::Relaxed);
        let offset = self.offset.load(Ordering::Relaxed);
        let state = self.state(now_ms, s);
        let watermark_ms = nonzero(self.watermark_ms.load(Ordering::Relaxed));
        let last_read_ms = nonzero(self.last_read_ms.load(Ordering::Relaxed));
        let sync_delay_ms = if state == FileState::Idle { None } else { self.sync_delay_window(now_ms, s) };
        let transfer_delay_ms = if state == FileState::Idle { None } else { self.transfer_delay_window(now_ms, s) };
        FileStatus {
            id: self.id.clone(),
            path: self.path(),
            finished: self.is_finished(),
            state,
            size_bytes: size,
            offset_bytes: offset,
            committed_offset_bytes: self.committed_offset.load(Ordering::Relaxed),
            bytes_behind: size.saturating_sub(offset),
            records: self.records.load(Ordering::Relaxed),
            rejects: self.rejects.load(Ordering::Relaxed),
            rejects_by_reason: self.rejects_by_reason().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            partial_lines: self.partial_lines.load(Ordering::Relaxed),
            negative_delays: self.negative_delays.load(Ordering::Relaxed),
            watermark_ms,
            watermark: watermark_ms.map(time::format_iso_millis),
            last_read_ms,
            last_read_age_ms: last_read_ms.map(|t| now_ms - t),
            no_progress_ms: self.no_progress_ms(now_ms),
            sync_delay_ms,
            transfer_delay_ms,
        }
    }
}

impl SinkStats {
    /// The sink's status at `now_ms`.
    pub fn status(&self, now_ms: i64, s: &StatusSettings) -> SinkStatus {
        let mut samples = self.delays_since(now_ms - s.delay_window_ms);
        let batches = self.delivered_batches.load(Ordering::Relaxed);
        SinkStatus {
            name: self.name.to_string(),
            queue_depth: self.queued_records.load(Ordering::Relaxed),
            oldest_undelivered_age_ms: nonzero(self.oldest_pending_observed_ms.load(Ordering::Relaxed)).map(|t| now_ms - t),
            delivered_records: self.delivered_records.load(Ordering::Relaxed),
            delivered_batches: batches,
            retries: self.retries.load(Ordering::Relaxed),
            dropped_records: self.dropped_records.load(Ordering::Relaxed),
            dead_lettered_records: self.dead_lettered_records.load(Ordering::Relaxed),
            retry_after_capped: self.retry_after_capped.load(Ordering::Relaxed),
            last_delivery_delay_ms: (batches > 0).then(|| self.last_delivery_delay_ms.load(Ordering::Relaxed)),
            delivery_delay_ms: DelaySummary::of_weighted(&mut samples),
        }
    }
}

/// The channel's delivery delay over the window: written − observed of the
/// frames written to clients (one sample per flush; `null` when no client
/// received anything in the window).
pub fn channel_delivery_window(ch: &ChannelStats, now_ms: i64, s: &StatusSettings) -> Option<DelaySummary> {
    DelaySummary::of(&mut ch.frame_delays_since(now_ms - s.delay_window_ms))
}

impl Telemetry {
    /// What is wrong with the sources at `now_ms`, one line each: paths
    /// matching no file beyond the grace period, files that cannot be read.
    pub fn source_problems(&self, now_ms: i64, s: &StatusSettings) -> Vec<String> {
        self.sources().iter().flat_map(|x| x.status(now_ms, s).problems()).collect()
    }

    /// The whole status at `now_ms`.
    pub fn status(&self, now_ms: i64, s: &StatusSettings) -> Status {
        let files: Vec<FileStatus> = self.files().iter().map(|f| f.status(now_ms, s)).collect();
        let mut sinks: Vec<SinkStatus> = self.sinks().iter().map(|k| k.status(now_ms, s)).collect();
        let channel_stats = self.channel_stats();
        if let Some(ch) = &channel_stats {
            // The channel's records are delivered when their frame is
            // written to a client, not when the sink hands them to the ring.
            if let Some(k) = sinks.iter_mut().find(|k| k.name == crate::sink::channel::NAME) {
                k.delivery_delay_ms = channel_delivery_window(ch, now_ms, s);
                k.last_delivery_delay_ms = ch.last_frame_delay_ms();
            }
        }
        let retired = self.retired();
        let mut t = Totals {
            files: files.len() as u64,
            records: retired.records,
            rejects: retired.rejects.values().sum(),
            negative_delays: retired.negative_delays,
            partial_lines: retired.partial_lines,
            ..Totals::default()
        };
        for f in &files {
            *t.files_by_state.entry(f.state).or_default() += 1;
            t.records += f.records;
            t.rejects += f.rejects;
            t.negative_delays += f.negative_delays;
            t.partial_lines += f.partial_lines;
            t.bytes_behind += f.bytes_behind;
            if let Some(d) = &f.sync_delay_ms {
                t.max_sync_delay_ms = Some(t.max_sync_delay_ms.map_or(d.max, |m| m.max(d.max)));
            }
        }
        for k in &sinks {
            t.queue_depth += k.queue_depth;
            t.delivered_records += k.delivered_records;
            t.retries += k.retries;
            t.dropped_records += k.dropped_records;
            t.dead_lettered_records += k.dead_lettered_records;
            if let Some(a) = k.oldest_undelivered_age_ms {
                t.max_oldest_undelivered_age_ms = Some(t.max_oldest_undelivered_age_ms.map_or(a, |m| m.max(a)));
            }
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            now_ms,
            now: time::format_iso_millis(now_ms),
            uptime_secs: ((now_ms - self.started_ms()).max(0) as f64) / 1000.0,
            ready: self.is_ready(),
            faults: self.faults(),
            settings: SettingsView {
                delay_window_secs: (s.delay_window_ms / 1000) as u64,
                idle_after_secs: (s.idle_after_ms / 1000) as u64,
                stalled_after_secs: (s.stalled_after_ms / 1000) as u64,
                no_files_after_secs: (s.no_files_after_ms / 1000) as u64,
            },
            sources: self.sources().iter().map(|x| x.status(now_ms, s)).collect(),
            files,
            sinks,
            totals: t,
            channel: self.channel().map(|c| ChannelStatus::of(c, channel_stats.as_ref())),
            enrich: self.enrich_stats().filter(|(files, _)| !files.is_empty()).map(|(files, st)| EnrichStatus::of(&files, &st)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000;

    fn settings() -> StatusSettings {
        StatusSettings {
            delay_window_ms: 300_000,
            idle_after_ms: 60_000,
            stalled_after_ms: 30_000,
            per_file_metrics: false,
            no_files_after_ms: 60_000,
        }
    }

    /// A file that read 1000 bytes holding 10 records, each written
    /// `delay_ms` before it was observed at `t`.
    fn file_read_at(tel: &Telemetry, path: &str, t: i64, delay_ms: i64) -> FileStats {
        let f = tel.file(path);
        f.set_position_at(1000, 1000, t);
        f.observed(t, (0..10).map(|_| Some(t - delay_ms)));
        f
    }

    #[test]
    fn caught_up_shows_the_current_delay() {
        let tel = Telemetry::new();
        let f = file_read_at(&tel, "/le/a.log", T0, 1500);
        let st = f.status(T0 + 5_000, &settings());
        assert_eq!(st.state, FileState::CaughtUp);
        assert_eq!(st.bytes_behind, 0);
        let d = st.sync_delay_ms.expect("a current delay");
        assert_eq!((d.p50, d.p95, d.max, d.samples), (1500, 1500, 1500, 10));
        assert_eq!(st.watermark_ms, Some(T0 - 1500));
        assert_eq!(st.last_read_age_ms, Some(5_000));
        assert_eq!(st.negative_delays, 0);
    }

    #[test]
    fn behind_while_reading_progresses() {
        let tel = Telemetry::new();
        let f = file_read_at(&tel, "/le/a.log", T0, 100);
        f.set_position_at(50_000, 1000, T0 + 1000);
        // The offset moves on: still behind, never stalled.
        for i in 1..=10 {
            f.set_position_at(50_000, 1000 + i * 1000, T0 + i as i64 * 20_000);
        }
        let st = f.status(T0 + 210_000, &settings());
        assert_eq!(st.state, FileState::Behind);
        assert_eq!(st.bytes_behind, 39_000);
    }

    #[test]
    fn stalled_when_data_waits_and_the_offset_does_not_move() {
        let tel = Telemetry::new();
        let f = file_read_at(&tel, "/le/a.log", T0, 100);
        f.set_position_at(9000, 1000, T0 + 1000);
        let s = settings();
        assert_eq!(f.state(T0 + 30_000, &s), FileState::Behind);
        let st = f.status(T0 + 30_001, &s);
        assert_eq!(st.state, FileState::Stalled);
        assert_eq!(st.bytes_behind, 8000);
        assert_eq!(st.no_progress_ms, 30_001);
        // Reading resumes: behind again.
        f.set_position_at(9000, 5000, T0 + 40_000);
        assert_eq!(f.state(T0 + 40_001, &s), FileState::Behind);
    }

    #[test]
    fn a_file_that_never_moved_stalls_from_its_first_position() {
        let tel = Telemetry::new();
        let f = tel.file("/le/new.log");
        f.set_position_at(4096, 0, T0);
        let s = settings();
        assert_eq!(f.state(T0 + 29_000, &s), FileState::Behind);
        assert_eq!(f.state(T0 + 31_000, &s), FileState::Stalled);
        assert_eq!(f.status(T0 + 31_000, &s).sync_delay_ms, None);
    }

    #[test]
    fn idle_hides_the_old_delay() {
        let tel = Telemetry::new();
        let f = file_read_at(&tel, "/le/a.log", T0, 7_000);
        let s = settings();
        assert!(f.status(T0 + 60_000, &s).sync_delay_ms.is_some());
        let st = f.status(T0 + 60_001, &s);
        assert_eq!(st.state, FileState::Idle);
        assert_eq!(st.sync_delay_ms, None, "an idle file must not show an old delay as current");
        // The watermark and counters stay.
        assert_eq!(st.records, 10);
        assert_eq!(st.watermark_ms, Some(T0 - 7_000));
        // A never-read file is idle too.
        assert_eq!(tel.file("/le/empty.log").status(T0, &s).state, FileState::Idle);
        // New data: caught up again, with the new delay only.
        f.set_position_at(2000, 2000, T0 + 400_000);
        f.observed(T0 + 400_000, [Some(T0 + 400_000 - 250)]);
        let st = f.status(T0 + 400_001, &s);
        assert_eq!(st.state, FileState::CaughtUp);
        let d = st.sync_delay_ms.unwrap();
        assert_eq!((d.max, d.samples), (250, 1), "samples older than the window are ignored");
    }

    #[test]
    fn transfer_delay_splits_the_sync_delay_where_lines_carry_a_write_time() {
        let tel = Telemetry::new();
        let f = file_read_at(&tel, "/le/a.log", T0, 9_000);
        let s = settings();
        assert_eq!(f.status(T0 + 1, &s).transfer_delay_ms, None, "no write times: no transfer delay");
        // Local Edition wrote the lines 1 s after the calls; the sync took 8 s.
        f.written(T0, (0..10).map(|_| Some(T0 - 8_000)));
        let st = f.status(T0 + 1, &s);
        let (sync, transfer) = (st.sync_delay_ms.unwrap(), st.transfer_delay_ms.unwrap());
        assert_eq!((sync.p95, transfer.p95, transfer.samples), (9_000, 8_000, 10));
        assert_eq!(f.status(T0 + 60_001, &s).transfer_delay_ms, None, "idle: no old delay shown as current");
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["transfer_delay_ms"]["p95"], 8_000);
    }

    #[test]
    fn window_drops_old_samples_while_active() {
        let tel = Telemetry::new();
        let f = file_read_at(&tel, "/le/a.log", T0, 60_000);
        let s = StatusSettings { idle_after_ms: 3_600_000, ..settings() };
        f.observed(T0 + 200_000, [Some(T0 + 200_000 - 200)]);
        let d = f.status(T0 + 250_000, &s).sync_delay_ms.unwrap();
        assert_eq!((d.max, d.samples), (60_000, 11));
        let d = f.status(T0 + 301_000, &s).sync_delay_ms.unwrap();
        assert_eq!((d.p50, d.max, d.samples), (200, 200, 1));
    }

    #[test]
    fn negative_delays_are_counted_and_shown() {
        let tel = Telemetry::new();
        let f = tel.file("/le/skew.log");
        f.set_position_at(300, 300, T0);
        // Three records from a traffic manager whose clock is 2 s ahead,
        // one record on time, one without a request_time.
        f.observed(T0, [Some(T0 + 2000), Some(T0 + 2000), Some(T0 + 2100), Some(T0 - 40), None]);
        let st = f.status(T0 + 10, &settings());
        assert_eq!(st.negative_delays, 3);
        assert_eq!(st.records, 5);
        let d = st.sync_delay_ms.unwrap();
        assert_eq!((d.min, d.p50, d.max, d.samples), (-2100, -2000, 40, 4));
        let h = f.sync_delay_histogram();
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_ms, -2000 - 2000 - 2100 + 40);
        let all = tel.status(T0 + 10, &settings());
        assert_eq!(all.totals.negative_delays, 3);
        assert_eq!(all.totals.max_sync_delay_ms, Some(40));
    }

    #[test]
    fn sink_delays_queue_and_oldest_pending() {
        let tel = Telemetry::new();
        let k = tel.sink("upstream");
        k.enqueued(30);
        k.set_oldest_pending(T0 - 4000);
        k.delivered(10, T0 - 500, T0);
        k.delivered(10, T0 - 100, T0 + 100);
        k.retried();
        k.dropped(2);
        k.dead_lettered(3);
        let st = k.status(T0 + 1000, &settings());
        assert_eq!(st.queue_depth, 5);
        assert_eq!(st.oldest_undelivered_age_ms, Some(5000));
        assert_eq!((st.delivered_records, st.delivered_batches, st.retries), (20, 2, 1));
        assert_eq!((st.dropped_records, st.dead_lettered_records), (2, 3));
        let d = st.delivery_delay_ms.unwrap();
        assert_eq!((d.p50, d.max, d.samples), (200, 500, 20));
        k.set_oldest_pending(0);
        assert_eq!(k.status(T0 + 1000, &settings()).oldest_undelivered_age_ms, None);
        assert_eq!(k.status(T0 + 400_000, &settings()).delivery_delay_ms, None);
    }

    #[test]
    fn totals_keep_removed_files() {
        let tel = Telemetry::new();
        file_read_at(&tel, "/le/a.log", T0, 100).rejected_for("column_count");
        file_read_at(&tel, "/le/b.log", T0, 900);
        let s = settings();
        let st = tel.status(T0 + 1000, &s);
        assert_eq!((st.totals.files, st.totals.records, st.totals.rejects), (2, 20, 1));
        assert_eq!(st.totals.max_sync_delay_ms, Some(900));
        assert_eq!(st.totals.files_by_state.get(&FileState::CaughtUp), Some(&2));
        tel.remove_file("/le/a.log");
        let st = tel.status(T0 + 1000, &s);
        assert_eq!((st.totals.files, st.totals.records, st.totals.rejects), (1, 20, 1));
    }

    #[test]
    fn status_json_round_trips() {
        let tel = Telemetry::new();
        file_read_at(&tel, "/le/a.log", T0, 100);
        tel.sink("channel").delivered(1, T0, T0 + 3);
        let st = tel.status(T0 + 1000, &settings());
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["files"][0]["state"], "caught-up");
        assert_eq!(json["files"][0]["sync_delay_ms"]["p95"], 100);
        assert_eq!(json["sinks"][0]["delivery_delay_ms"]["max"], 3);
        assert_eq!(json["totals"]["files_by_state"]["caught-up"], 1);
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn channel_figures_extend_the_endpoint_and_feed_the_sink_delay() {
        let tel = Telemetry::new();
        let info = ChannelInfo { listen: "127.0.0.1:8790".into(), tls: false, path: "/stream".into() };
        tel.set_channel(Some(info.clone()));
        // Without registered statistics: the endpoint with zero figures.
        let st = tel.status(T0, &settings());
        assert_eq!(st.channel.as_ref().map(|c| (&c.endpoint, c.connections)), Some((&info, 0)));

        let ch = ChannelStats::default();
        ch.connections_accepted.fetch_add(3, Ordering::Relaxed);
        ch.connections_active.fetch_add(2, Ordering::Relaxed);
        ChannelStats::bump(&ch.refused_unauthorized);
        ChannelStats::bump(&ch.refused_full);
        ChannelStats::bump(&ch.closed_slow_consumer);
        // The sink handed 10 records to the ring 1 ms after reading them;
        // clients got their frames 40 and 90 ms after.
        let k = tel.sink("channel");
        k.enqueued(10);
        k.delivered(10, T0, T0 + 1);
        ch.frames_written(1, 4, T0, T0 + 40);
        ch.frames_written(2, 6, T0, T0 + 90);
        tel.set_channel_stats(Some(ch));

        let st = tel.status(T0 + 100, &settings());
        let c = st.channel.clone().unwrap();
        assert_eq!((c.connections, c.connections_accepted, c.messages_sent, c.records_sent), (2, 3, 3, 10));
        assert_eq!(c.refused.get("unauthorized"), Some(&1));
        assert_eq!(c.refused.get("too_many_connections"), Some(&1));
        assert_eq!(c.refused.get("not_found"), Some(&0));
        assert_eq!(c.closed.get("slow_consumer"), Some(&1));
        assert_eq!(c.closed.get("ping_timeout"), Some(&0));
        let sink = &st.sinks[0];
        assert_eq!(sink.delivered_records, 10, "records handed over are still counted by the sink");
        let d = sink.delivery_delay_ms.unwrap();
        assert_eq!((d.min, d.max, d.samples), (40, 90, 2), "delivered = frame written");
        assert_eq!(sink.last_delivery_delay_ms, Some(90));

        // The JSON keeps listen/tls/path at the top of `channel`, never a token.
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["channel"]["listen"], "127.0.0.1:8790");
        assert_eq!(json["channel"]["tls"], false);
        assert_eq!(json["channel"]["refused"]["unauthorized"], 1);
        assert!(json["channel"].get("token").is_none());
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, st);
        // A status from a bridge without these figures still reads.
        let old = serde_json::json!({"listen": "127.0.0.1:1", "tls": true, "path": "/stream"});
        let c: ChannelStatus = serde_json::from_value(old).unwrap();
        assert_eq!((c.endpoint.tls, c.connections, c.refused.len()), (true, 0, 0));
    }

    #[test]
    fn enrich_figures_survive_a_replaced_enricher() {
        use crate::enrich::Enricher;
        use crate::record::{Field, Record};
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services.csv");
        std::fs::write(&services, "service_id,service_name\nsvc1,Orders\n").unwrap();
        let lookup = |e: &Enricher, id: &'static str| {
            let tables = e.tables();
            let mut r = Record::new_ml();
            r.set(Field::ServiceId, id);
            e.enrich(&tables, &mut r);
        };
        let tel = Telemetry::new();
        // Masking only: no lookup files, no `enrich` object.
        tel.set_enricher(std::sync::Arc::new(Enricher::new(&[], Some(2), None).unwrap()));
        assert_eq!(tel.status(T0, &settings()).enrich, None);

        let e1 = std::sync::Arc::new(Enricher::new(std::slice::from_ref(&services), None, None).unwrap());
        tel.set_enricher(e1.clone());
        lookup(&e1, "svc1");
        lookup(&e1, "svc1");
        lookup(&e1, "nope");
        let en = tel.status(T0, &settings()).enrich.unwrap();
        assert_eq!((en.hits, en.misses, en.reloads, en.last_reload_error.as_deref()), (2, 1, 0, None));
        let svc = en.tables.iter().find(|t| t.table == "services").unwrap();
        assert_eq!((svc.loaded, svc.entries, svc.hits, svc.misses), (true, 1, 2, 1));
        assert!(!en.tables.iter().find(|t| t.table == "keys").unwrap().loaded);
        assert_eq!(en.files, vec![services.display().to_string()]);

        // A reload brings a new enricher: counters carry on.
        let e2 = std::sync::Arc::new(Enricher::new(std::slice::from_ref(&services), None, None).unwrap());
        tel.set_enricher(e2.clone());
        tel.set_enricher(e2.clone()); // the same one again changes nothing
        lookup(&e2, "other");
        let en = tel.status(T0, &settings()).enrich.unwrap();
        assert_eq!((en.hits, en.misses), (2, 2));

        // A broken file: the error is shown, the old tables stay.
        std::fs::write(&services, "service_id,colour\nsvc1,red\n").unwrap();
        assert!(e2.reload_if_changed().is_err());
        let en = tel.status(T0, &settings()).enrich.unwrap();
        assert!(en.last_reload_error.as_deref().unwrap_or("").contains("services.csv"), "{en:?}");
        assert_eq!(en.tables.iter().find(|t| t.table == "services").unwrap().entries, 1);
    }

    #[test]
    fn partial_lines_per_file_and_in_totals() {
        let tel = Telemetry::new();
        let a = file_read_at(&tel, "/le/a.log", T0, 100);
        a.partial_line();
        a.partial_line();
        file_read_at(&tel, "/le/b.log", T0, 100).partial_line();
        let st = tel.status(T0 + 10, &settings());
        assert_eq!(st.files.iter().map(|f| f.partial_lines).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(st.totals.partial_lines, 3);
        tel.remove_file("/le/a.log");
        assert_eq!(tel.status(T0 + 10, &settings()).totals.partial_lines, 3, "removed files keep counting");
    }
}
