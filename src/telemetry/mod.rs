//! Telemetry: per-file and per-sink statistics that the rest of the bridge
//! updates, and from which `/metrics`, `/status` and `lag` are built.
//!
//! # Definitions
//!
//! - **request_time**: when the call reached the traffic manager (the
//!   record's `request_time`, kept to the millisecond in
//!   `Record::request_time_ms`).
//! - **write time**: the line's own write time where the format has one
//!   (LE 6 `log_ingestion`; `Record::write_time_ms`).
//! - **observed**: when the bridge read the bytes of the line (the record's
//!   `ingestion_time`, epoch ms).
//! - **delivered**, per sink: upstream answered 2xx for the batch; the
//!   WebSocket frame was written; the archive line was written.
//! - **sync delay** = observed − request_time: how late Local Edition's
//!   log reached the bridge. Negative when request_time lies in the future
//!   (clock skew between the traffic manager and this host): such delays
//!   are counted (`negative_delays`) and kept negative, never clamped.
//! - **transfer delay** = observed − write time (LE 6 only): the part of
//!   the sync delay after Local Edition wrote the line, i.e. the log sync
//!   itself; sync delay − transfer delay is how late Local Edition wrote
//!   the line.
//! - **delivery delay** = delivered − observed: how long the bridge itself
//!   took to hand the record to a sink.
//!
//! # Shape
//!
//! The handles ([`FileStats`], [`SinkStats`], [`SourceStats`], the
//! [`Figures`] of a component, [`LookupStats`]) are cheap to clone and are
//! updated with relaxed atomics only (no lock on the per-record path): see
//! [`delay`]. Invariant: components only *record* facts here (positions,
//! records read with their sync delay, deliveries, their own counters);
//! every derived figure (percentiles over the window, file state, ages,
//! totals) is computed when a [`Snapshot`] is taken, from a `now_ms` the
//! caller passes ([`snapshot`], rules in [`status`]), so the logic is
//! tested with injected times. `/status` is the snapshot's [`Status`];
//! [`metrics`] renders the same snapshot in the Prometheus text format;
//! [`server`] serves `/metrics`, `/status`, `/healthz` and `/readyz`.
//!
//! Telemetry knows no component: it imports no sink and no enricher.
//! Components push into telemetry types: every sink its [`SinkStats`]
//! (a sink that acknowledges before its records reach their consumer, as
//! the channel does on its ring append, reports the hand-over with
//! [`SinkStats::handed_over`] and the delivery with
//! [`SinkStats::reached_consumer`]); a component's own figures go into its
//! [`Figures`] section ([`Telemetry::figures`], see [`figures`]), which
//! `/status` and `/metrics` render without knowing it; the enricher counts
//! lookups into [`LookupStats`] ([`Telemetry::set_lookups`], which carries
//! the counters of a block replaced by a reload over, so they never go
//! backwards).
//!
//! [`log_limit`] keeps log lines that input can repeat (a rejected line, a
//! failed write) to a few per window with a "suppressed N" summary.

pub mod dashboard;
pub mod delay;
pub mod fault;
pub mod figures;
pub mod history;
pub mod log_limit;
pub mod lookup;
pub mod metrics;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod status;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use delay::{DelayBatch, DelayHistogram, HistogramSnapshot, SampleRing};
pub use fault::{Fault, FaultStatus};
pub use figures::{Counter, Figures, Gauge};
pub use lookup::{LookupSnapshot, LookupStats};
pub use snapshot::Snapshot;

pub use source::{LeftUnread, SourceState, SourceStats, SourceStatus, UnreadableFile};
pub use status::{
    ChannelInfo, EnrichStatus, EnrichTableStatus, FileState, FileStatus, SectionStatus, Sections, SinkStatus, Status, StatusSettings,
    Totals,
};

/// The bridge's statistics registry.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    /// Per-file statistics by path.
    files: Mutex<BTreeMap<String, FileStats>>,
    /// Per-sink statistics by name.
    sinks: Mutex<BTreeMap<&'static str, SinkStats>>,
    /// Per-source statistics by name, in config order.
    sources: Mutex<Vec<SourceStats>>,
    /// Counters of files that were removed, so aggregate counters never go
    /// backwards when a file is forgotten.
    retired: Mutex<Retired>,
    /// Epoch ms when the registry was created (the bridge's start).
    started_ms: i64,
    /// Set by the bridge once its sources and sinks are up (`/readyz`).
    ready: AtomicBool,
    /// Components' own figures, in registration order.
    sections: Mutex<Vec<Figures>>,
    /// The lookup figures `/status` and `/metrics` show (replaced when a
    /// reload brings a new enricher).
    lookups: Mutex<Option<LookupStats>>,
    /// Counters of lookup blocks replaced by a reload, so lookup counters
    /// never go backwards.
    lookups_retired: Mutex<LookupSnapshot>,
    /// Components that cannot write (a full disk): see [`fault`].
    faults: fault::Registry,
    /// Per-minute sync-delay history: see [`history`].
    history: Arc<history::HistoryRegistry>,
}

/// Totals carried over from removed files.
#[derive(Clone, Debug, Default)]
pub struct Retired {
    /// Records read from removed files.
    pub records: u64,
    /// Lines rejected in removed files, by reason.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Negative delays seen in removed files.
    pub negative_delays: u64,
    /// Partial last lines emitted from removed files.
    pub partial_lines: u64,
    /// Sync-delay histogram of removed files.
    pub sync_delay: HistogramSnapshot,
    /// Transfer-delay histogram of removed files.
    pub transfer_delay: HistogramSnapshot,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// An empty registry; its creation time is the bridge's start (uptime).
    pub fn new() -> Self {
        Telemetry {
            inner: Arc::new(Inner {
                files: Mutex::new(BTreeMap::new()),
                sinks: Mutex::new(BTreeMap::new()),
                sources: Mutex::new(Vec::new()),
                retired: Mutex::new(Retired::default()),
                started_ms: crate::time::now_ms(),
                ready: AtomicBool::new(false),
                sections: Mutex::new(Vec::new()),
                lookups: Mutex::new(None),
                lookups_retired: Mutex::new(LookupSnapshot::default()),
                faults: fault::Registry::default(),
                history: Arc::default(),
            }),
        }
    }

    /// The statistics of the file whose identity is its path (created on
    /// first use): for tests and tools that have no other identity; the
    /// tailer keys files by content ([`Telemetry::file_with_id`]).
    pub fn file(&self, path: &str) -> FileStats {
        self.file_with_id(path, path)
    }

    /// The statistics of the file with identity `id` (the tailer's
    /// `<source>/<fingerprint>`), now at `path` (created on first use; an
    /// existing row takes the new path). A row follows its file through
    /// renames, rotation and compression, so its counters never go back.
    pub fn file_with_id(&self, id: &str, path: &str) -> FileStats {
        let mut files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        let history = &self.inner.history;
        let f = files
            .entry(id.to_string())
            .or_insert_with(|| FileStats(Arc::new(FileInner::new(id, path, crate::time::now_ms(), history.clone()))))
            .clone();
        f.set_path(path);
        f
    }

    /// Forgets a file that is gone for good (by identity: its path for
    /// [`Telemetry::file`]). Its counters are kept in the aggregate figures.
    pub fn remove_file(&self, id: &str) {
        let removed = self.inner.files.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        if let Some(f) = removed {
            let mut r = self.inner.retired.lock().unwrap_or_else(|e| e.into_inner());
            r.records += f.records.load(Ordering::Relaxed);
            r.negative_delays += f.negative_delays.load(Ordering::Relaxed);
            r.partial_lines += f.partial_lines.load(Ordering::Relaxed);
            for (reason, n) in f.rejects_by_reason() {
                *r.rejects.entry(reason).or_default() += n;
            }
            r.sync_delay.merge(&f.sync_hist.snapshot());
            r.transfer_delay.merge(&f.transfer_hist.snapshot());
        }
    }

    /// The per-minute sync-delay history (`/history`).
    pub fn history(&self) -> &history::HistoryRegistry {
        &self.inner.history
    }

    /// The statistics of one sink (created on first use).
    pub fn sink(&self, name: &'static str) -> SinkStats {
        let mut sinks = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.entry(name).or_insert_with(|| SinkStats(Arc::new(SinkInner::new(name)))).clone()
    }

    /// The statistics of one `[[source]]` (created on first use).
    pub fn source(&self, name: &str) -> SourceStats {
        let mut sources = self.inner.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sources.iter().find(|s| s.name() == name) {
            return s.clone();
        }
        let s = SourceStats::new(name);
        sources.push(s.clone());
        s
    }

    /// Keeps the statistics of the sources named `names` only, in that
    /// order (a reload that removes or renames a source).
    pub fn retain_sources(&self, names: &[String]) {
        let mut sources = self.inner.sources.lock().unwrap_or_else(|e| e.into_inner());
        let kept: Vec<SourceStats> = names.iter().filter_map(|n| sources.iter().find(|s| s.name() == n).cloned()).collect();
        *sources = kept;
    }

    /// All sources, in config order.
    pub fn sources(&self) -> Vec<SourceStats> {
        self.inner.sources.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// All files currently known, by current path in natural order
    /// (`access.log.2.gz` before `access.log.10.gz`). The paths are read
    /// under the registry's lock, so a [`Telemetry::place_files`] is seen
    /// whole or not at all.
    pub fn files(&self) -> Vec<FileStats> {
        let mut v: Vec<(String, FileStats)> =
            self.inner.files.lock().unwrap_or_else(|e| e.into_inner()).values().map(|f| (f.path(), f.clone())).collect();
        v.sort_by(|a, b| natural_cmp(&a.0, &b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        v.into_iter().map(|(_, f)| f).collect()
    }

    /// Moves several rows at once (a rotation renames many files in one
    /// go): each row takes its path and whether its file is gone from the
    /// watched paths, under the registry's lock, so `/status` never shows
    /// a row at a name another row just left (or two rows at one name).
    pub fn place_files(&self, places: &[(FileStats, String, bool)]) {
        let _registry = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        for (f, path, gone) in places {
            f.set_path(path);
            f.0.gone.store(*gone, Ordering::Relaxed);
        }
    }

    /// All sinks, by name.
    pub fn sinks(&self) -> Vec<SinkStats> {
        self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Marks the bridge ready (sources and sinks are up) or not; `/readyz`
    /// answers 200 only while ready.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// True once [`Telemetry::set_ready`] said so and while no component
    /// has an open [`Fault`] (a full disk makes the bridge not ready).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed) && self.faults().is_empty()
    }

    /// The fault handle of a component (`file`, `channel`, `checkpoints`).
    pub fn fault(&self, component: &'static str) -> Fault {
        Fault::new(self.inner.faults.clone(), component)
    }

    /// The open faults, by component.
    pub fn faults(&self) -> Vec<FaultStatus> {
        fault::open(&self.inner.faults)
    }

    /// Per component that ever failed: (failing now, episodes since start).
    pub fn fault_summary(&self) -> Vec<(&'static str, bool, u64)> {
        fault::summary(&self.inner.faults)
    }

    /// The section of a component's own figures (created on first use):
    /// what it declares there is shown in `/status` under `name` and in
    /// `/metrics` as `calllog_bridge_<name>_*` (see [`figures`]).
    pub fn figures(&self, name: &'static str) -> Figures {
        let mut sections = self.inner.sections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = sections.iter().find(|f| f.name() == name) {
            return f.clone();
        }
        let f = Figures::new(name);
        sections.push(f.clone());
        f
    }

    /// Every component's section, in registration order.
    pub fn sections(&self) -> Vec<Figures> {
        self.inner.sections.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the dashboard subscribes: the endpoint a component set with
    /// [`Figures::set_endpoint`] (the local channel), if any.
    pub fn channel(&self) -> Option<ChannelInfo> {
        self.sections().iter().find_map(|f| f.endpoint())
    }

    /// Registers the lookup figures `/status` and `/metrics` show. A
    /// different block (a reload's new enricher) replaces the previous
    /// one, whose counters are kept in the totals. Call it once the
    /// previous enricher is no longer used, so its counters are final.
    pub fn set_lookups(&self, stats: LookupStats) {
        let mut cur = self.inner.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = cur.as_ref() {
            if old.same(&stats) {
                return;
            }
            self.inner.lookups_retired.lock().unwrap_or_else(|e| e.into_inner()).add_counters(&old.snapshot());
        }
        *cur = Some(stats);
    }

    /// The lookup figures with the counters of replaced blocks added;
    /// `None` when none is registered.
    pub fn lookups(&self) -> Option<LookupSnapshot> {
        let cur = self.inner.lookups.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let mut s = cur.snapshot();
        s.add_counters(&self.inner.lookups_retired.lock().unwrap_or_else(|e| e.into_inner()));
        Some(s)
    }

    /// Epoch ms when the registry (the bridge) started.
    pub fn started_ms(&self) -> i64 {
        self.inner.started_ms
    }

    /// Counters carried over from removed files.
    pub fn retired(&self) -> Retired {
        self.inner.retired.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Compares two names in natural order: runs of digits by their value,
/// the rest byte by byte (`access.log.2.gz` < `access.log.10.gz`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let run = |s: &[u8], k: usize| k + s[k..].iter().take_while(|c| c.is_ascii_digit()).count();
            let (ie, je) = (run(a, i), run(b, j));
            let trim = |s: &[u8]| -> usize { s.iter().take_while(|c| **c == b'0').count().min(s.len().saturating_sub(1)) };
            let (x, y) = (&a[i + trim(&a[i..ie])..ie], &b[j + trim(&b[j..je])..je]);
            // Value first (a longer run without leading zeros is larger),
            // then fewer leading zeros first.
            let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y)).then_with(|| (ie - i).cmp(&(je - j)));
            if o != Ordering::Equal {
                return o;
            }
            (i, j) = (ie, je);
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// Statistics of one followed file.
#[derive(Clone)]
pub struct FileStats(Arc<FileInner>);

/// The shared state behind [`FileStats`].
pub struct FileInner {
    /// The file's identity: `<source>/<fingerprint>` for the tailer's
    /// files (a rotated, renamed or compressed file keeps it).
    pub id: String,
    /// Where the file is now (changes when it is renamed or compressed).
    path: Mutex<Arc<str>>,
    /// Rotated away (renamed, deleted or compressed) and read to its end:
    /// it is not part of the current sync delay any more.
    finished: AtomicBool,
    /// No file of this content is at a watched path any more (deleted, or
    /// moved where no glob matches) while it is still read to its end:
    /// its path is where it was, not a name it has now.
    gone: AtomicBool,
    /// Size of the file when last looked at.
    pub size: AtomicU64,
    /// Offset read up to.
    pub offset: AtomicU64,
    /// Offset durably checkpointed (delivered to every sink).
    pub committed_offset: AtomicU64,
    /// Records read.
    pub records: AtomicU64,
    /// Lines rejected.
    pub rejects: AtomicU64,
    /// Partial last lines (no newline) emitted because their file was
    /// rotated away or deleted.
    pub partial_lines: AtomicU64,
    /// Records whose request_time lies after the time they were observed.
    pub negative_delays: AtomicU64,
    /// Newest request_time read (epoch ms), the watermark; 0 = none yet.
    pub watermark_ms: AtomicI64,
    /// Epoch ms of the last read that returned records; 0 = never.
    pub last_read_ms: AtomicI64,
    /// Epoch ms when the offset last moved; 0 = never.
    last_progress_ms: AtomicI64,
    /// Epoch ms of the first position report; 0 = none yet.
    first_position_ms: AtomicI64,
    /// Epoch ms when these statistics were created.
    created_ms: i64,
    /// Sync-delay histogram since start (Prometheus).
    sync_hist: DelayHistogram,
    /// Recent sync-delay samples (windowed percentiles in `/status`).
    sync_ring: SampleRing,
    /// Transfer-delay histogram since start (records with a write time).
    transfer_hist: DelayHistogram,
    /// Recent transfer-delay samples; allocated when the first record with
    /// a write time arrives (formats without one pay nothing).
    transfer_ring: std::sync::OnceLock<SampleRing>,
    /// Rejected lines by reason name (rare: a lock is fine here).
    rejects_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// Where the history series come from.
    registry: Arc<history::HistoryRegistry>,
    /// The history series of the file's current name (`None`: no history);
    /// locked once per batch.
    history: Mutex<Option<history::Series>>,
}

/// At most this many recent delay samples are kept per file; older samples
/// fall out first. Bounds memory whatever the rate.
pub const MAX_DELAY_SAMPLES: usize = delay::RING_SAMPLES;

/// Recent transfer-delay samples kept per file (8 KiB).
pub const MAX_TRANSFER_SAMPLES: usize = 1024;

/// The reason name counted by [`FileStats::rejected`], which does not say
/// why.
pub const UNSPECIFIED_REASON: &str = "unspecified";

impl FileInner {
    fn new(id: &str, path: &str, now_ms: i64, registry: Arc<history::HistoryRegistry>) -> Self {
        let series = registry.series(path);
        FileInner {
            id: id.to_string(),
            path: Mutex::new(Arc::from(path)),
            finished: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            size: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            committed_offset: AtomicU64::new(0),
            records: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            partial_lines: AtomicU64::new(0),
            negative_delays: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(0),
            last_read_ms: AtomicI64::new(0),
            last_progress_ms: AtomicI64::new(0),
            first_position_ms: AtomicI64::new(0),
            created_ms: now_ms,
            sync_hist: DelayHistogram::default(),
            sync_ring: SampleRing::default(),
            transfer_hist: DelayHistogram::default(),
            transfer_ring: std::sync::OnceLock::new(),
            rejects_by_reason: Mutex::new(BTreeMap::new()),
            registry,
            history: Mutex::new(series),
        }
    }
}

impl std::ops::Deref for FileStats {
    type Target = FileInner;
    fn deref(&self) -> &FileInner {
        &self.0
    }
}

impl FileStats {
    /// Where the file is now.
    pub fn path(&self) -> String {
        self.0.path.lock().unwrap_or_else(|e| e.into_inner()).to_string()
    }

    /// The file is now at `path` (renamed, or continued by its `.gz`).
    pub fn set_path(&self, path: &str) {
        let mut p = self.0.path.lock().unwrap_or_else(|e| e.into_inner());
        if &**p != path {
            if history::series_name(&p) != history::series_name(path) {
                *self.0.history.lock().unwrap_or_else(|e| e.into_inner()) = self.0.registry.series(path);
            }
            *p = Arc::from(path);
        }
    }

    /// The file was rotated away and read to its end (`true`), or is being
    /// read again (`false`): a finished file is `idle` whatever its last
    /// read, so its old delays never count as current.
    pub fn set_finished(&self, finished: bool) {
        self.0.finished.store(finished, Ordering::Relaxed);
    }

    /// See [`FileStats::set_finished`].
    pub fn is_finished(&self) -> bool {
        self.0.finished.load(Ordering::Relaxed)
    }

    /// True while no file of this content is at a watched path (see
    /// [`Telemetry::place_files`]).
    pub fn is_gone(&self) -> bool {
        self.0.gone.load(Ordering::Relaxed)
    }

    /// The file's size and the offset read up to, after a read (or after
    /// looking at the file's size).
    pub fn set_position(&self, size: u64, offset: u64) {
        self.set_position_at(size, offset, crate::time::now_ms());
    }

    /// [`FileStats::set_position`] at an explicit time (tests, replays).
    /// A change of offset (forward, or back to 0 after a truncation) is
    /// read progress.
    pub fn set_position_at(&self, size: u64, offset: u64, now_ms: i64) {
        self.0.size.store(size, Ordering::Relaxed);
        let prev = self.0.offset.swap(offset, Ordering::Relaxed);
        if prev != offset {
            self.0.last_progress_ms.store(now_ms, Ordering::Relaxed);
        }
        if self.0.first_position_ms.load(Ordering::Relaxed) == 0 {
            self.0.first_position_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// The offset now durably checkpointed.
    pub fn set_committed(&self, offset: u64) {
        self.0.committed_offset.store(offset, Ordering::Relaxed);
    }

    /// Records a batch of records read together at `observed_ms`: each
    /// record's `(sync_delay_ms, write_time_ms)`, the sync delay as
    /// [`crate::record::Record::stamp_observed`] stamped it with the same
    /// `observed_ms` (the one place it is computed), `None` without a
    /// request_time or a write time. Counts the records, feeds the sync-
    /// and transfer-delay histograms and windows, moves the watermark.
    ///
    /// Hot path: no lock, no allocation; per record a bucket search and one
    /// plain store per delay, per call a handful of relaxed atomic adds.
    /// Two tight passes over the records cost less than one loop doing
    /// both. One tailer reports a file; if two threads ever reported the
    /// same file at once, some ring samples could overwrite each other
    /// (counters stay exact).
    pub fn records_read<I>(&self, observed_ms: i64, records: I)
    where
        I: IntoIterator<Item = (Option<i64>, Option<i64>)>,
        I::IntoIter: Clone,
    {
        let records = records.into_iter();
        self.written(observed_ms, records.clone().map(|(_, wt)| wt));
        self.sync_delays(observed_ms, records.map(|(d, _)| d));
    }

    /// The sync-delay part of [`FileStats::records_read`]: each record's
    /// sync delay (None when it had no request_time), all stamped at
    /// `observed_ms`, so the newest request_time (the watermark) is
    /// `observed_ms` minus the smallest delay.
    pub fn sync_delays(&self, observed_ms: i64, sync_delays_ms: impl IntoIterator<Item = Option<i64>>) {
        let inner = &*self.0;
        let mut n = 0u64;
        let mut smallest = i64::MAX;
        let mut negative = 0u64;
        let mut batch = DelayBatch::new(&inner.sync_ring, observed_ms);
        // The history: one lock per batch (request_time = observed − delay).
        let series = inner.history.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut minutes = series.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
        for d in sync_delays_ms {
            n += 1;
            if let Some(d) = d {
                smallest = smallest.min(d);
                negative += (d < 0) as u64;
                batch.add(d);
                if let Some(m) = minutes.as_mut() {
                    m.record(observed_ms.saturating_sub(d), d);
                }
            }
        }
        if let Some(m) = minutes.as_mut() {
            m.flush();
        }
        drop(minutes);
        if n == 0 {
            return;
        }
        inner.records.fetch_add(n, Ordering::Relaxed);
        if negative > 0 && inner.negative_delays.fetch_add(negative, Ordering::Relaxed) == 0 {
            // Once per file: the counter and /status show the rest.
            tracing::warn!(
                file = %crate::logsafe::Escaped(&self.path()),
                ahead_ms = -smallest,
                "request_time lies after the time the line was read: the traffic manager's clock is ahead of this host's \
                 (negative sync delays are counted in negative_delays, not clamped)"
            );
        }
        if batch.finish(&inner.sync_hist) {
            inner.watermark_ms.fetch_max(observed_ms.saturating_sub(smallest), Ordering::Relaxed);
        }
        inner.last_read_ms.fetch_max(observed_ms, Ordering::Relaxed);
    }

    /// Records the transfer delays (`observed_ms` − write time) of a batch
    /// of records, given each record's write time (None when the line has
    /// none): the only place the transfer delay is computed. Same cost
    /// model as [`FileStats::records_read`].
    pub fn written(&self, observed_ms: i64, write_times_ms: impl IntoIterator<Item = Option<i64>>) {
        let inner = &*self.0;
        let mut write_times = write_times_ms.into_iter().flatten().peekable();
        if write_times.peek().is_none() {
            return;
        }
        let ring = inner.transfer_ring.get_or_init(|| SampleRing::with_capacity(MAX_TRANSFER_SAMPLES));
        let mut batch = DelayBatch::new(ring, observed_ms);
        for wt in write_times {
            batch.add(observed_ms - wt);
        }
        batch.finish(&inner.transfer_hist);
    }

    /// Counts a partial last line emitted (its file was rotated away or
    /// deleted before the newline came).
    pub fn partial_line(&self) {
        self.0.partial_lines.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rejected line whose reason is not known here (counted under
    /// [`UNSPECIFIED_REASON`]); prefer [`FileStats::rejected_for`].
    pub fn rejected(&self) {
        self.rejected_for(UNSPECIFIED_REASON);
    }

    /// Counts a rejected line with its reason (`RejectReason::name()`,
    /// e.g. `column_count`), which becomes the `reason` metrics label.
    pub fn rejected_for(&self, reason: &'static str) {
        self.0.rejects.fetch_add(1, Ordering::Relaxed);
        *self.0.rejects_by_reason.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// Rejected lines by reason.
    pub fn rejects_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.0.rejects_by_reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The sync-delay histogram since start.
    pub fn sync_delay_histogram(&self) -> HistogramSnapshot {
        self.0.sync_hist.snapshot()
    }

    /// The transfer-delay histogram since start.
    pub fn transfer_delay_histogram(&self) -> HistogramSnapshot {
        self.0.transfer_hist.snapshot()
    }
}

/// Statistics of one sink.
#[derive(Clone)]
pub struct SinkStats(Arc<SinkInner>);

/// The shared state behind [`SinkStats`].
pub struct SinkInner {
    /// The sink's name (`file`, `channel`, `upstream`).
    pub name: &'static str,
    /// Records waiting in the sink (received, not yet delivered).
    pub queued_records: AtomicI64,
    /// Records delivered.
    pub delivered_records: AtomicU64,
    /// Batches delivered.
    pub delivered_batches: AtomicU64,
    /// Retried attempts.
    pub retries: AtomicU64,
    /// Records dropped (with a loud log line); never silently.
    pub dropped_records: AtomicU64,
    /// Records written to a dead-letter file.
    pub dead_lettered_records: AtomicU64,
    /// `Retry-After` answers asking for longer than `retry_max_ms`, which
    /// were waited for only that long.
    pub retry_after_capped: AtomicU64,
    /// Observed time (epoch ms) of the oldest record not yet delivered;
    /// 0 = none pending.
    pub oldest_pending_observed_ms: AtomicI64,
    /// Last delivery delay (delivered - observed) in ms.
    pub last_delivery_delay_ms: AtomicI64,
    /// A delivery delay was recorded (`last_delivery_delay_ms` means
    /// something).
    delay_seen: AtomicBool,
    /// Delivery-delay histogram since start, one observation per record.
    delivery_hist: DelayHistogram,
    /// Recent (delivered_ms, delivery_delay_ms, weight) samples, one per
    /// delivered batch weighted by its records, or one per
    /// [`SinkStats::reached_consumer`] (a lock per batch, not per record).
    recent_delays: Mutex<std::collections::VecDeque<(i64, i64, u64)>>,
}

impl std::ops::Deref for SinkStats {
    type Target = SinkInner;
    fn deref(&self) -> &SinkInner {
        &self.0
    }
}

impl SinkInner {
    fn new(name: &'static str) -> Self {
        SinkInner {
            name,
            queued_records: AtomicI64::new(0),
            delivered_records: AtomicU64::new(0),
            delivered_batches: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dropped_records: AtomicU64::new(0),
            dead_lettered_records: AtomicU64::new(0),
            retry_after_capped: AtomicU64::new(0),
            oldest_pending_observed_ms: AtomicI64::new(0),
            last_delivery_delay_ms: AtomicI64::new(0),
            delay_seen: AtomicBool::new(false),
            delivery_hist: DelayHistogram::default(),
            recent_delays: Mutex::new(std::collections::VecDeque::new()),
        }
    }
}

impl SinkStats {
    /// `n` records entered the sink's queue.
    pub fn enqueued(&self, n: usize) {
        self.0.queued_records.fetch_add(n as i64, Ordering::Relaxed);
    }

    /// Sets the observed time of the oldest record still pending (0 = none).
    pub fn set_oldest_pending(&self, observed_ms: i64) {
        self.0.oldest_pending_observed_ms.store(observed_ms, Ordering::Relaxed);
    }

    /// `n` records first observed at `observed_ms` were delivered at
    /// `delivered_ms`: counted, and their delivery delay recorded (one
    /// window sample weighted by `n`).
    pub fn delivered(&self, n: usize, observed_ms: i64, delivered_ms: i64) {
        self.handed_over(n);
        let d = delivered_ms - observed_ms;
        self.delay(d, n, n as u64, delivered_ms);
    }

    /// `n` records left the sink's hands (acknowledged) but reach their
    /// consumers later: counted as delivered, with no delivery delay. A
    /// sink that acknowledges on hand-over (the channel, on its replay
    /// ring's append) reports the delay with
    /// [`SinkStats::reached_consumer`] when the records get there.
    pub fn handed_over(&self, n: usize) {
        self.0.queued_records.fetch_sub(n as i64, Ordering::Relaxed);
        self.0.delivered_records.fetch_add(n as u64, Ordering::Relaxed);
        self.0.delivered_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// `records` records, the newest observed at `observed_ms`, reached a
    /// consumer at `delivered_ms` (for the channel: one flush of frames to
    /// one client). The sink's delivery delay: one observation per record
    /// in the histogram, one sample per call in the window.
    pub fn reached_consumer(&self, records: usize, observed_ms: i64, delivered_ms: i64) {
        self.delay(delivered_ms - observed_ms, records, 1, delivered_ms);
    }

    /// Records delivery delay `d` of `records` records, with window weight
    /// `weight`.
    fn delay(&self, d: i64, records: usize, weight: u64, delivered_ms: i64) {
        self.0.last_delivery_delay_ms.store(d, Ordering::Relaxed);
        self.0.delay_seen.store(true, Ordering::Relaxed);
        if records > 0 {
            self.0.delivery_hist.observe_n(d, records as u64);
            self.0.delivery_hist.add_sum(d.saturating_mul(records as i64));
        }
        if weight == 0 {
            return;
        }
        let mut s = self.0.recent_delays.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == MAX_DELAY_SAMPLES {
            s.pop_front();
        }
        s.push_back((delivered_ms, d, weight));
    }

    /// The last delivery delay, if one was recorded.
    pub fn last_delivery_delay(&self) -> Option<i64> {
        self.0.delay_seen.load(Ordering::Relaxed).then(|| self.0.last_delivery_delay_ms.load(Ordering::Relaxed))
    }

    /// One retried attempt.
    pub fn retried(&self) {
        self.0.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// One `Retry-After` cut down to `retry_max_ms`.
    pub fn retry_after_capped(&self) {
        self.0.retry_after_capped.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` records dropped (after a loud log line).
    pub fn dropped(&self, n: usize) {
        self.0.queued_records.fetch_sub(n as i64, Ordering::Relaxed);
        self.0.dropped_records.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` records written to the dead-letter file.
    pub fn dead_lettered(&self, n: usize) {
        self.0.queued_records.fetch_sub(n as i64, Ordering::Relaxed);
        self.0.dead_lettered_records.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The delivery-delay histogram since start.
    pub fn delivery_delay_histogram(&self) -> HistogramSnapshot {
        self.0.delivery_hist.snapshot()
    }

    /// Recent `(delivery_delay_ms, records)` samples delivered at or after
    /// `since_ms`.
    pub(crate) fn delays_since(&self, since_ms: i64) -> Vec<(i64, u64)> {
        let s = self.0.recent_delays.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().filter(|(t, _, _)| *t >= since_ms).map(|&(_, d, n)| (d, n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_naturally() {
        let mut v = vec![
            "access.log.10.gz",
            "access.log.2.gz",
            "access.log",
            "access.log.1",
            "access.log.002.gz",
            "access.log.1.gz",
            "b.log",
            "access.log.9",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "access.log",
                "access.log.1",
                "access.log.1.gz",
                "access.log.2.gz",
                "access.log.002.gz",
                "access.log.9",
                "access.log.10.gz",
                "b.log"
            ]
        );
        assert_eq!(natural_cmp("a99999999999999999999999", "a100000000000000000000000"), std::cmp::Ordering::Less);
    }

    #[test]
    fn rows_are_listed_in_natural_order_and_moved_together() {
        let tel = Telemetry::new();
        let a = tel.file_with_id("s/a", "/l/access.log.10");
        let b = tel.file_with_id("s/b", "/l/access.log.2");
        let paths = |t: &Telemetry| t.files().iter().map(|f| f.path()).collect::<Vec<_>>();
        assert_eq!(paths(&tel), ["/l/access.log.2", "/l/access.log.10"]);
        tel.place_files(&[(a.clone(), "/l/access.log.11".into(), false), (b.clone(), "/l/access.log.10".into(), true)]);
        assert_eq!(paths(&tel), ["/l/access.log.10", "/l/access.log.11"]);
        assert!(b.is_gone() && !a.is_gone());
    }
}
