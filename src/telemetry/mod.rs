//! Telemetry: per-file and per-sink statistics that the rest of the bridge
//! updates, and from which `/metrics`, `/status` and `lag` are built.
//!
//! The handles ([`FileStats`], [`SinkStats`]) are cheap to clone and update
//! with atomics or a short uncontended lock, so the hot path pays little.
//! Invariant: components only *record* facts here (bytes read, records
//! observed with their request time, deliveries); every derived figure
//! (delays, percentiles, file state) is computed when status is read.

pub mod dashboard;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The bridge's statistics registry.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per-file statistics by path.
    files: Mutex<BTreeMap<String, FileStats>>,
    /// Per-sink statistics by name.
    sinks: Mutex<BTreeMap<&'static str, SinkStats>>,
}

impl Telemetry {
    /// An empty registry.
    pub fn new() -> Self {
        Telemetry::default()
    }

    /// The statistics of one followed file (created on first use).
    pub fn file(&self, path: &str) -> FileStats {
        let mut files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        files.entry(path.to_string()).or_insert_with(|| FileStats(Arc::new(FileInner::new(path)))).clone()
    }

    /// Forgets a file that is gone for good.
    pub fn remove_file(&self, path: &str) {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner()).remove(path);
    }

    /// The statistics of one sink (created on first use).
    pub fn sink(&self, name: &'static str) -> SinkStats {
        let mut sinks = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.entry(name).or_insert_with(|| SinkStats(Arc::new(SinkInner::new(name)))).clone()
    }

    /// All files currently known.
    pub fn files(&self) -> Vec<FileStats> {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// All sinks.
    pub fn sinks(&self) -> Vec<SinkStats> {
        self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// Statistics of one followed file.
#[derive(Clone)]
pub struct FileStats(Arc<FileInner>);

/// The shared state behind [`FileStats`].
pub struct FileInner {
    /// The file's path.
    pub path: String,
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
    /// Records whose request_time lies after the time they were observed.
    pub negative_delays: AtomicU64,
    /// Newest request_time read (epoch ms), the watermark; 0 = none yet.
    pub watermark_ms: AtomicI64,
    /// Epoch ms of the last read that returned data; 0 = never.
    pub last_read_ms: AtomicI64,
    /// Recent (observed_ms, sync_delay_ms) samples for windowed percentiles.
    pub recent_delays: Mutex<std::collections::VecDeque<(i64, i64)>>,
}

/// At most this many recent delay samples are kept per file; older samples
/// fall out first. Bounds memory whatever the rate.
pub const MAX_DELAY_SAMPLES: usize = 4096;

impl FileInner {
    fn new(path: &str) -> Self {
        FileInner {
            path: path.to_string(),
            size: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            committed_offset: AtomicU64::new(0),
            records: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            negative_delays: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(0),
            last_read_ms: AtomicI64::new(0),
            recent_delays: Mutex::new(std::collections::VecDeque::new()),
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
    /// The file's size and the offset read up to, after a read.
    pub fn set_position(&self, size: u64, offset: u64) {
        self.0.size.store(size, Ordering::Relaxed);
        self.0.offset.store(offset, Ordering::Relaxed);
    }

    /// The offset now durably checkpointed.
    pub fn set_committed(&self, offset: u64) {
        self.0.committed_offset.store(offset, Ordering::Relaxed);
    }

    /// Records a batch of records observed at `observed_ms`, given each
    /// record's `request_time` in epoch ms (None when it had none).
    pub fn observed(&self, observed_ms: i64, request_times_ms: impl IntoIterator<Item = Option<i64>>) {
        let mut n = 0u64;
        let mut newest = i64::MIN;
        let mut negative = 0u64;
        let mut samples = self.0.recent_delays.lock().unwrap_or_else(|e| e.into_inner());
        for rt in request_times_ms {
            n += 1;
            if let Some(rt) = rt {
                newest = newest.max(rt);
                let d = observed_ms - rt;
                if d < 0 {
                    negative += 1;
                }
                if samples.len() == MAX_DELAY_SAMPLES {
                    samples.pop_front();
                }
                samples.push_back((observed_ms, d));
            }
        }
        drop(samples);
        self.0.records.fetch_add(n, Ordering::Relaxed);
        if negative > 0 {
            self.0.negative_delays.fetch_add(negative, Ordering::Relaxed);
        }
        if newest != i64::MIN {
            self.0.watermark_ms.fetch_max(newest, Ordering::Relaxed);
        }
        if n > 0 {
            self.0.last_read_ms.store(observed_ms, Ordering::Relaxed);
        }
    }

    /// Counts a rejected line.
    pub fn rejected(&self) {
        self.0.rejects.fetch_add(1, Ordering::Relaxed);
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
    /// Observed time (epoch ms) of the oldest record not yet delivered;
    /// 0 = none pending.
    pub oldest_pending_observed_ms: AtomicI64,
    /// Last delivery delay (delivered - observed) in ms.
    pub last_delivery_delay_ms: AtomicI64,
    /// Recent (delivered_ms, delivery_delay_ms) samples.
    pub recent_delays: Mutex<std::collections::VecDeque<(i64, i64)>>,
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
            oldest_pending_observed_ms: AtomicI64::new(0),
            last_delivery_delay_ms: AtomicI64::new(0),
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
    /// `delivered_ms`.
    pub fn delivered(&self, n: usize, observed_ms: i64, delivered_ms: i64) {
        self.0.queued_records.fetch_sub(n as i64, Ordering::Relaxed);
        self.0.delivered_records.fetch_add(n as u64, Ordering::Relaxed);
        self.0.delivered_batches.fetch_add(1, Ordering::Relaxed);
        let d = delivered_ms - observed_ms;
        self.0.last_delivery_delay_ms.store(d, Ordering::Relaxed);
        let mut s = self.0.recent_delays.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == MAX_DELAY_SAMPLES {
            s.pop_front();
        }
        s.push_back((delivered_ms, d));
    }

    /// One retried attempt.
    pub fn retried(&self) {
        self.0.retries.fetch_add(1, Ordering::Relaxed);
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
}
