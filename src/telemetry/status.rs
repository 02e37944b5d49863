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
//! Beside files, sinks and totals: one object per component section
//! ([`super::figures`]; `channel` holds the endpoint the dashboard
//! subscribes to, `listen` / `tls` / `path`, then the channel's figures:
//! connections, refusals and closes by reason, frames and ring figures;
//! never the token), and `enrich` (lookup files, hits and misses per
//! table, reloads, the last reload error), each absent when not
//! configured. Fields added later carry `#[serde(default)]` so `lag` still
//! reads a status from an older bridge; a section reads leniently (values
//! of an unknown shape are skipped), so `lag` also reads a newer one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;

use super::delay::{DelaySummary, HistogramSnapshot};
use super::figures::{ChannelInfo, FigureValue, SectionSnapshot};
use super::lookup::LookupSnapshot;
use super::source::SourceStatus;
use super::status_settings::StatusSettings;
use super::{FileStats, SinkStats, Telemetry};
use crate::time;

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
    /// True once sources and sinks are up, while nothing is in `faults`
    /// and no source has a problem (`sources[].state` not `ok`): exactly
    /// when `/readyz` answers 200.
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
    /// Components' own figures, each at the top level under its name
    /// (`channel`: where the local channel listens, for the dashboard, and
    /// its connection figures; never the token). Absent when no component
    /// declared any.
    #[serde(flatten)]
    pub sections: Sections,
    /// Lookup-table figures (hits, misses, reloads); absent when no
    /// `[enrich] lookups` are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichStatus>,
}

/// Components' sections in `/status`, in registration order (see
/// [`super::figures`]). Equal when they hold the same sections, in
/// whatever order (as JSON objects).
#[derive(Clone, Debug, Default, Eq)]
pub struct Sections(pub Vec<(String, SectionStatus)>);

impl PartialEq for Sections {
    fn eq(&self, other: &Sections) -> bool {
        self.0.len() == other.0.len() && self.0.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Sections {
    /// The section of component `name`.
    pub fn get(&self, name: &str) -> Option<&SectionStatus> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

/// One component's section in `/status`: its endpoint (if it serves
/// clients), then its figures in declaration order. Two sections are equal
/// when they hold the same values, in whatever order (as JSON objects).
#[derive(Clone, Debug, Default, Eq)]
pub struct SectionStatus(pub Vec<(String, SectionValue)>);

impl PartialEq for SectionStatus {
    fn eq(&self, other: &SectionStatus) -> bool {
        self.0.len() == other.0.len() && self.0.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// A value in a section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SectionValue {
    /// `tls` of an endpoint.
    Flag(bool),
    /// A counter or a gauge.
    Number(i64),
    /// `listen` and `path` of an endpoint.
    Text(String),
    /// A family: value by label value.
    ByLabel(BTreeMap<String, i64>),
    /// A family over two labels: by the first label's value, then by the
    /// second's.
    ByLabels(BTreeMap<String, BTreeMap<String, i64>>),
}

impl SectionStatus {
    /// The section of a component's figures.
    pub fn of(s: &SectionSnapshot) -> SectionStatus {
        let mut v = Vec::with_capacity(s.figures.len() + 3);
        if let Some(e) = &s.endpoint {
            v.push(("listen".to_string(), SectionValue::Text(e.listen.clone())));
            v.push(("tls".to_string(), SectionValue::Flag(e.tls)));
            v.push(("path".to_string(), SectionValue::Text(e.path.clone())));
        }
        for f in &s.figures {
            let value = match &f.value {
                FigureValue::One(n) => SectionValue::Number(*n),
                FigureValue::ByLabel { values, .. } => SectionValue::ByLabel(values.iter().cloned().collect()),
                FigureValue::ByLabels { values, .. } => {
                    let mut m: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
                    for ((a, b), n) in values {
                        m.entry(a.clone()).or_default().insert(b.clone(), *n);
                    }
                    SectionValue::ByLabels(m)
                }
            };
            v.push((f.name.to_string(), value));
        }
        SectionStatus(v)
    }

    /// The value named `name`.
    pub fn get(&self, name: &str) -> Option<&SectionValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The counter or gauge `name` (0 when absent: a status from an older
    /// bridge).
    pub fn number(&self, name: &str) -> i64 {
        match self.get(name) {
            Some(SectionValue::Number(n)) => *n,
            _ => 0,
        }
    }

    /// The family `name` by label value (empty when absent).
    pub fn by_label(&self, name: &str) -> BTreeMap<String, i64> {
        match self.get(name) {
            Some(SectionValue::ByLabel(m)) => m.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// The family over two labels `name`, by the first label's value then
    /// the second's (empty when absent).
    pub fn by_labels(&self, name: &str) -> BTreeMap<String, BTreeMap<String, i64>> {
        match self.get(name) {
            Some(SectionValue::ByLabels(m)) => m.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// Where clients subscribe, if the section says.
    pub fn endpoint(&self) -> Option<ChannelInfo> {
        match (self.get("listen"), self.get("tls"), self.get("path")) {
            (Some(SectionValue::Text(listen)), Some(SectionValue::Flag(tls)), Some(SectionValue::Text(path))) => {
                Some(ChannelInfo { listen: listen.clone(), tls: *tls, path: path.clone() })
            }
            _ => None,
        }
    }
}

impl Serialize for SectionStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Sections {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A section value as read: one of an unknown shape (a newer bridge) is
/// kept as `None` and dropped.
#[derive(Deserialize)]
#[serde(untagged)]
enum LenientValue {
    /// A value this version knows.
    Known(SectionValue),
    /// Anything else.
    Other(serde::de::IgnoredAny),
}

/// A top-level value that is a section (an object), or `None` for any
/// other value (a top-level field this version does not know).
struct MaybeSection(Option<SectionStatus>);

impl<'de> Deserialize<'de> for MaybeSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeSection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<MaybeSection, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, LenientValue>()? {
                    if let LenientValue::Known(val) = val {
                        v.push((k, val));
                    }
                }
                Ok(MaybeSection(Some(SectionStatus(v))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeSection, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeSection(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeSection, E> {
                Ok(MaybeSection(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeSection, E> {
                Ok(MaybeSection(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeSection, E> {
                Ok(MaybeSection(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeSection, E> {
                Ok(MaybeSection(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<MaybeSection, E> {
                Ok(MaybeSection(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeSection, E> {
                Ok(MaybeSection(None))
            }
            fn visit_none<E>(self) -> Result<MaybeSection, E> {
                Ok(MaybeSection(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<MaybeSection, D::Error> {
                MaybeSection::deserialize(d)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for SectionStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(MaybeSection::deserialize(deserializer)?.0.unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for Sections {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sections;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("component sections")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Sections, A::Error> {
                let mut v = Vec::new();
                while let Some((k, MaybeSection(s))) = map.next_entry::<String, MaybeSection>()? {
                    if let Some(s) = s {
                        v.push((k, s));
                    }
                }
                Ok(Sections(v))
            }
        }
        deserializer.deserialize_map(V)
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
    /// The status of the lookup figures `s`.
    pub fn of(s: &LookupSnapshot) -> EnrichStatus {
        let tables: Vec<EnrichTableStatus> = s
            .tables
            .iter()
            .map(|t| EnrichTableStatus { table: t.name.to_string(), loaded: t.loaded, entries: t.entries, hits: t.hits, misses: t.misses })
            .collect();
        EnrichStatus {
            files: s.files.clone(),
            hits: tables.iter().map(|t| t.hits).sum(),
            misses: tables.iter().map(|t| t.misses).sum(),
            tables,
            reloads: s.reloads,
            last_reload_error: s.last_reload_error.clone(),
        }
    }
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
    /// Where the file is now (its current name: a rotated file shows its
    /// new name at once).
    pub path: String,
    /// No file of this content is at a watched path any more (deleted, or
    /// moved where no glob matches) while it is read to its end: `path` is
    /// where it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
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

/// What `/metrics` shows of one file beyond its [`FileStatus`].
#[derive(Clone, Debug, Default)]
pub struct FileFigures {
    /// Sync-delay histogram since start.
    pub sync_delay: HistogramSnapshot,
    /// Transfer-delay histogram since start.
    pub transfer_delay: HistogramSnapshot,
    /// Sync delays sampled within the window (sorted; empty when idle).
    pub sync_window: Vec<i64>,
    /// Transfer delays sampled within the window (sorted; empty when idle).
    pub transfer_window: Vec<i64>,
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

    /// The sync delays sampled within the window at `now_ms`, unsorted.
    fn sync_window_samples(&self, now_ms: i64, s: &StatusSettings) -> Vec<i64> {
        let mut v = Vec::new();
        self.sync_ring.delays_since(now_ms - s.delay_window_ms, &mut v);
        v
    }

    /// The transfer delays sampled within the window at `now_ms`, unsorted.
    fn transfer_window_samples(&self, now_ms: i64, s: &StatusSettings) -> Vec<i64> {
        let mut v = Vec::new();
        if let Some(r) = self.transfer_ring.get() {
            r.delays_since(now_ms - s.delay_window_ms, &mut v);
        }
        v
    }

    /// The file's status at `now_ms`.
    pub fn status(&self, now_ms: i64, s: &StatusSettings) -> FileStatus {
        self.read(now_ms, s).0
    }

    /// The file's status at `now_ms` and, read in the same pass, what
    /// `/metrics` shows beyond it (histograms, the window's samples).
    pub fn read(&self, now_ms: i64, s: &StatusSettings) -> (FileStatus, FileFigures) {
        let size = self.size.load(Ordering::Relaxed);
        let offset = self.offset.load(Ordering::Relaxed);
        let state = self.state(now_ms, s);
        let watermark_ms = nonzero(self.watermark_ms.load(Ordering::Relaxed));
        let last_read_ms = nonzero(self.last_read_ms.load(Ordering::Relaxed));
        // An idle file shows no current delay: its old samples are not read.
        let (mut sync_window, mut transfer_window) = if state == FileState::Idle {
            (Vec::new(), Vec::new())
        } else {
            (self.sync_window_samples(now_ms, s), self.transfer_window_samples(now_ms, s))
        };
        let status = FileStatus {
            id: self.id.clone(),
            path: self.path(),
            gone: self.is_gone(),
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
            sync_delay_ms: DelaySummary::of(&mut sync_window),
            transfer_delay_ms: DelaySummary::of(&mut transfer_window),
        };
        let figures = FileFigures {
            sync_delay: self.sync_delay_histogram(),
            transfer_delay: self.transfer_delay_histogram(),
            sync_window,
            transfer_window,
        };
        (status, figures)
    }
}

impl SinkStats {
    /// The sink's status at `now_ms`.
    pub fn status(&self, now_ms: i64, s: &StatusSettings) -> SinkStatus {
        self.read(now_ms, s).0
    }

    /// The sink's status at `now_ms` and, read in the same pass, its
    /// delivery-delay histogram.
    pub fn read(&self, now_ms: i64, s: &StatusSettings) -> (SinkStatus, HistogramSnapshot) {
        let mut samples = self.delays_since(now_ms - s.delay_window_ms);
        let status = SinkStatus {
            name: self.name.to_string(),
            queue_depth: self.queued_records.load(Ordering::Relaxed),
            oldest_undelivered_age_ms: nonzero(self.oldest_pending_observed_ms.load(Ordering::Relaxed)).map(|t| now_ms - t),
            delivered_records: self.delivered_records.load(Ordering::Relaxed),
            delivered_batches: self.delivered_batches.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dropped_records: self.dropped_records.load(Ordering::Relaxed),
            dead_lettered_records: self.dead_lettered_records.load(Ordering::Relaxed),
            retry_after_capped: self.retry_after_capped.load(Ordering::Relaxed),
            last_delivery_delay_ms: self.last_delivery_delay(),
            delivery_delay_ms: DelaySummary::of_weighted(&mut samples),
        };
        (status, self.delivery_delay_histogram())
    }
}

impl Telemetry {
    /// What is wrong with the sources at `now_ms`, one line each: paths
    /// matching no file beyond the grace period, files that cannot be read.
    pub fn source_problems(&self, now_ms: i64, s: &StatusSettings) -> Vec<String> {
        self.sources().iter().flat_map(|x| x.status(now_ms, s).problems()).collect()
    }

    /// The whole status at `now_ms` (the [`Telemetry::snapshot`]'s).
    pub fn status(&self, now_ms: i64, s: &StatusSettings) -> Status {
        self.snapshot(now_ms, s).status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::LookupStats;

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
        f.sync_delays(t, (0..10).map(|_| Some(delay_ms)));
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
        f.sync_delays(T0 + 400_000, [Some(250)]);
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
        f.sync_delays(T0 + 200_000, [Some(200)]);
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
        f.sync_delays(T0, [Some(-2000), Some(-2000), Some(-2100), Some(40), None]);
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
    fn a_section_shows_its_endpoint_then_its_figures_in_order() {
        let tel = Telemetry::new();
        let f = tel.figures("kafka");
        // Declared but not yet counting: shown with zeros.
        let sent = f.counter("messages_produced", "Messages the brokers acknowledged");
        let [timeout, _] = f.counters_by("errors", "Produce errors, by reason", "reason", ["timeout", "refused"]);
        f.status_gauge("last_offset").set(-1);
        sent.add(5);
        timeout.inc();
        let st = tel.status(T0, &settings());
        let json = serde_json::to_string(&st).unwrap();
        assert!(
            json.contains(r#""totals":{"#)
                && json.contains(r#""kafka":{"messages_produced":5,"errors":{"refused":0,"timeout":1},"last_offset":-1}"#),
            "{json}"
        );
        let k = st.sections.get("kafka").unwrap();
        assert_eq!((k.number("messages_produced"), k.by_label("errors").get("timeout").copied(), k.endpoint()), (5, Some(1), None));
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);

        // A section with an endpoint shows it first.
        let ch = tel.figures("stream");
        ch.set_endpoint(Some(ChannelInfo { listen: "127.0.0.1:1".into(), tls: true, path: "/s".into() }));
        ch.gauge("connections", "Open").set(2);
        let json = serde_json::to_string(&tel.status(T0, &settings())).unwrap();
        assert!(json.contains(r#""stream":{"listen":"127.0.0.1:1","tls":true,"path":"/s","connections":2}"#), "{json}");
        assert_eq!(tel.channel().map(|c| c.path), Some("/s".to_string()), "the dashboard's endpoint");
    }

    #[test]
    fn a_status_with_unknown_fields_still_reads() {
        let tel = Telemetry::new();
        tel.figures("kafka").counter("sent", "Sent").add(3);
        let mut json = serde_json::to_value(tel.status(T0, &settings())).unwrap();
        // A newer bridge: a top-level field that is no section, a section
        // value of a shape this version does not know.
        json["state_dir"] = serde_json::json!("/var/lib/calllog-bridge");
        json["kafka"]["ratio"] = serde_json::json!(0.5);
        json["kafka"]["brokers"] = serde_json::json!(["a", "b"]);
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back.sections.0.len(), 1, "{:?}", back.sections);
        assert_eq!(back.sections.get("kafka").map(|k| k.number("sent")), Some(3));
        // An older bridge's document has no sections at all.
        let mut json = serde_json::to_value(Telemetry::new().status(T0, &settings())).unwrap();
        json.as_object_mut().unwrap().remove("sources");
        let back: Status = serde_json::from_value(json).unwrap();
        assert!(back.sections.0.is_empty() && back.sources.is_empty());
    }

    #[test]
    fn lookup_figures_carry_over_a_replaced_block() {
        let tel = Telemetry::new();
        let names = ["keys", "services"];
        // Registered, but no lookup files (masking only): no `enrich` object.
        tel.set_lookups(LookupStats::new(&[], &names));
        assert_eq!(tel.status(T0, &settings()).enrich, None);
        let files = [std::path::PathBuf::from("/etc/lookups/services.csv")];
        let a = LookupStats::new(&files, &names);
        a.set_table(1, true, 3);
        tel.set_lookups(a.clone());
        a.hit(1);
        a.miss(1);
        a.reloaded();
        let b = LookupStats::new(&files, &names);
        b.set_table(1, true, 4);
        tel.set_lookups(b.clone());
        tel.set_lookups(b.clone()); // the same one again changes nothing
        b.miss(1);
        b.reload_failed("services.csv line 2: no service_id".into());
        let en = tel.status(T0, &settings()).enrich.unwrap();
        assert_eq!((en.hits, en.misses, en.reloads), (1, 2, 1));
        assert_eq!(en.files, vec!["/etc/lookups/services.csv".to_string()]);
        let svc = &en.tables[1];
        assert_eq!((svc.table.as_str(), svc.loaded, svc.entries, svc.hits, svc.misses), ("services", true, 4, 1, 2));
        assert!(en.last_reload_error.unwrap().contains("services.csv"));
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
