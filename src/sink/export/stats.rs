//! The export's figures: per slice (records, late records, late files,
//! when it closed, the worst sync delay in it, its upload) for the most
//! recent slices, and totals. `/status`, `/metrics` and the dashboard read
//! them through [`ExportStats::snapshot`].
//!
//! Figures change when files are synced, closed or uploaded (not per
//! record), under one lock; the list is bounded to [`KEEP_SLICES`]. Each
//! change is copied to the telemetry section `export`
//! ([`ExportStats::published_in`]): totals, and per slice gauge families
//! labelled `slice` (the slice's start) that drop the slices the list
//! drops, so `/metrics` stays bounded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::slice::Slice;
use crate::telemetry::{Counter, Figures, Gauge};

/// Slices kept in the figures (the newest; an open slice is never dropped).
pub const KEEP_SLICES: usize = 48;

/// Where a slice's upload stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Upload {
    /// Files of the slice waiting to be uploaded (closed, not yet stored).
    pub pending: u32,
    /// Files stored in the bucket.
    pub uploaded: u32,
    /// Failed attempts of the file being tried (0 once it worked).
    pub failed_attempts: u32,
    /// The last failure, while the file is still being tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One slice's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SliceFigures {
    /// The slice's start, ISO 8601 UTC.
    pub slice: String,
    /// Its start, epoch ms.
    pub start_ms: i64,
    /// `open` until its file is published, then `closed`.
    pub state: &'static str,
    /// Records in the slice's file (synced).
    pub records: u64,
    /// Records in its late files (synced).
    pub late_records: u64,
    /// Late files opened for it.
    pub late_files: u32,
    /// Records not written because the slice already had them (read
    /// again after an unclean stop, or repeated in the input).
    pub duplicates_skipped: u64,
    /// When its file was published (epoch ms).
    pub closed_at_ms: Option<i64>,
    /// The same, ISO 8601.
    pub closed_at: Option<String>,
    /// The largest `sync_delay_ms` of its records (late ones included).
    pub worst_sync_delay_ms: Option<i64>,
    /// Its upload, when `[export.s3]` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<Upload>,
}

/// Totals since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Records written (synced), late ones included.
    pub records: u64,
    /// Records written into late files.
    pub late_records: u64,
    /// Late files opened.
    pub late_files: u64,
    /// Files published (main and late).
    pub files_published: u64,
    /// Records skipped as already written.
    pub duplicates_skipped: u64,
    /// Records written into out-of-window files (their `request_time`
    /// outside `max_past_hours` .. `max_future_minutes`), not slices.
    pub out_of_window: u64,
    /// Files uploaded.
    pub files_uploaded: u64,
    /// Failed upload attempts.
    pub upload_failures: u64,
    /// Files waiting for upload now.
    pub uploads_pending: u64,
    /// Files open now.
    pub open_files: u64,
}

/// What `/status` shows under `export`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Totals.
    pub totals: Totals,
    /// The newest slices, oldest first.
    pub slices: Vec<SliceFigures>,
}

/// The export's figures, shared by the sink, the uploader and telemetry.
#[derive(Clone, Debug, Default)]
pub struct ExportStats(Arc<Mutex<State>>);

/// The figures and where they are published.
#[derive(Debug, Default)]
struct State {
    /// The figures.
    snap: Snapshot,
    /// The telemetry section they are copied to after every change.
    out: Option<Out>,
}

/// The telemetry section `export` (`/status`, `/metrics`): totals as
/// counters and gauges, per slice as gauge families labelled `slice`,
/// over the same bounded list of slices as [`Snapshot::slices`].
#[derive(Debug)]
struct Out {
    /// The section.
    figures: Figures,
    /// Counters, with the value last added up to.
    counters: Vec<(Counter, u64)>,
    /// `uploads_pending`, `open_files`.
    gauges: [Gauge; 2],
}

/// The totals published as counters: (name, help, value).
type TotalCounter = (&'static str, &'static str, fn(&Totals) -> u64);

const TOTAL_COUNTERS: [TotalCounter; 8] = [
    ("records", "Records written into export files (late ones included)", |t| t.records),
    ("late_records", "Records written into late files", |t| t.late_records),
    ("late_files", "Late files opened", |t| t.late_files),
    ("files_published", "Export files published (main and late)", |t| t.files_published),
    ("duplicates_skipped", "Records not written again because their slice had them", |t| t.duplicates_skipped),
    (
        "out_of_window",
        "Records whose request_time was outside the accepted window, written to out-of-window files instead of slices",
        |t| t.out_of_window,
    ),
    ("files_uploaded", "Export files uploaded to object storage", |t| t.files_uploaded),
    ("upload_failures", "Failed upload attempts", |t| t.upload_failures),
];

/// Per-slice figures: (name, help, value; `None`: not shown for it).
type SliceGauge = (&'static str, &'static str, fn(&SliceFigures) -> Option<i64>);

const SLICE_GAUGES: [SliceGauge; 7] = [
    ("slice_open", "1 while a recent slice's own file is being written, 0 once it is published", |f| Some(i64::from(f.state == "open"))),
    ("slice_records", "Records in a recent slice's own file", |f| Some(f.records as i64)),
    ("slice_late_records", "Records in a recent slice's late files", |f| Some(f.late_records as i64)),
    ("slice_late_files", "Late files of a recent slice", |f| Some(i64::from(f.late_files))),
    ("slice_closed_at_seconds", "When a recent slice's own file was published (Unix seconds; 0 while open)", |f| {
        Some(f.closed_at_ms.map_or(0, |ms| ms / 1000))
    }),
    ("slice_worst_sync_delay_ms", "The largest sync delay of a recent slice's records", |f| Some(f.worst_sync_delay_ms.unwrap_or(0))),
    ("slice_uploads_pending", "Files of a recent slice waiting for upload", |f| {
        Some(f.upload.as_ref().map_or(0, |u| i64::from(u.pending)))
    }),
];

impl Out {
    fn new(figures: Figures) -> Out {
        let counters = TOTAL_COUNTERS.iter().map(|(name, help, _)| (figures.counter(name, help), 0)).collect();
        let gauges = [
            figures.gauge("uploads_pending", "Export files waiting for upload"),
            figures.gauge("open_files", "Export files being written"),
        ];
        Out { figures, counters, gauges }
    }

    /// Copies the figures to the section (counters by what they grew).
    fn publish(&mut self, s: &Snapshot) {
        for ((c, last), (_, _, get)) in self.counters.iter_mut().zip(TOTAL_COUNTERS.iter()) {
            let v = get(&s.totals);
            if v > *last {
                c.add(v - *last);
                *last = v;
            }
        }
        self.gauges[0].set(s.totals.uploads_pending as i64);
        self.gauges[1].set(s.totals.open_files as i64);
        let labels: Vec<&str> = s.slices.iter().map(|f| f.slice.as_str()).collect();
        for (name, help, get) in SLICE_GAUGES {
            self.figures.retain_values(name, |v| labels.contains(&v));
            let cells = self.figures.gauge_family(name, help, "slice", &labels);
            for (g, f) in cells.iter().zip(&s.slices) {
                g.set(get(f).unwrap_or(0));
            }
        }
    }
}

/// What one sync of one file adds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Synced {
    /// Records written.
    pub records: u64,
    /// They went into a late file.
    pub late: bool,
    /// Records skipped as duplicates.
    pub duplicates: u64,
    /// The largest sync delay among them.
    pub worst_sync_delay_ms: Option<i64>,
}

impl ExportStats {
    /// Empty figures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty figures, published in `figures` (the telemetry section
    /// `export`) whenever they change.
    pub fn published_in(figures: Figures) -> Self {
        let mut out = Out::new(figures);
        let snap = Snapshot::default();
        out.publish(&snap);
        ExportStats(Arc::new(Mutex::new(State { snap, out: Some(out) })))
    }

    /// Changes the figures (files synced, published, uploaded: not per
    /// record), then publishes them.
    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *g;
        let r = f(&mut st.snap);
        if let Some(out) = st.out.as_mut() {
            out.publish(&st.snap);
        }
        r
    }

    fn slice(s: &mut Snapshot, slice: Slice) -> &mut SliceFigures {
        let i = match s.slices.binary_search_by_key(&slice.start_ms, |f| f.start_ms) {
            Ok(i) => i,
            Err(i) => {
                s.slices.insert(i, SliceFigures { slice: slice.iso(), start_ms: slice.start_ms, state: "open", ..SliceFigures::default() });
                i
            }
        };
        &mut s.slices[i]
    }

    /// Drops the oldest closed slices beyond [`KEEP_SLICES`].
    fn trim(s: &mut Snapshot) {
        while s.slices.len() > KEEP_SLICES {
            match s.slices.iter().position(|f| f.state != "open" && f.upload.as_ref().is_none_or(|u| u.pending == 0)) {
                Some(i) => {
                    s.slices.remove(i);
                }
                None => break,
            }
        }
    }

    /// A file of `slice` was synced.
    pub fn synced(&self, slice: Slice, d: Synced) {
        if d.records == 0 && d.duplicates == 0 {
            return;
        }
        self.with(|s| {
            s.totals.records += d.records;
            s.totals.duplicates_skipped += d.duplicates;
            if d.late {
                s.totals.late_records += d.records;
            }
            let f = Self::slice(s, slice);
            if d.late {
                f.late_records += d.records;
            } else {
                f.records += d.records;
            }
            f.duplicates_skipped += d.duplicates;
            f.worst_sync_delay_ms = f.worst_sync_delay_ms.max(d.worst_sync_delay_ms);
            Self::trim(s);
        });
    }

    /// Records were synced into an out-of-window file (and `duplicates`
    /// skipped as already in one).
    pub fn out_of_window_synced(&self, records: u64, duplicates: u64) {
        if records == 0 && duplicates == 0 {
            return;
        }
        self.with(|s| {
            s.totals.out_of_window += records;
            s.totals.duplicates_skipped += duplicates;
        });
    }

    /// Records of a slice found in its file after a restart.
    pub fn recovered(&self, slice: Slice, records: u64, late: bool) {
        self.with(|s| {
            let f = Self::slice(s, slice);
            if late {
                f.late_records += records;
            } else {
                f.records += records;
            }
        });
    }

    /// A late file was opened for `slice` (`n` late files so far).
    pub fn late_file_opened(&self, slice: Slice, n: u32) {
        self.with(|s| {
            s.totals.late_files += 1;
            let f = Self::slice(s, slice);
            f.late_files = f.late_files.max(n);
            if f.state == "open" {
                f.state = "closed";
            }
        });
    }

    /// The slice was closed before this start (its file is published).
    pub fn known_closed(&self, slice: Slice, late_files: u32) {
        self.with(|s| {
            let f = Self::slice(s, slice);
            f.state = "closed";
            f.late_files = f.late_files.max(late_files);
            Self::trim(s);
        });
    }

    /// A file of `slice` was published at `at_ms` (`main`: the slice's
    /// own file, which closes the slice).
    pub fn published(&self, slice: Slice, main: bool, at_ms: i64, uploading: bool) {
        self.with(|s| {
            s.totals.files_published += 1;
            if uploading {
                s.totals.uploads_pending += 1;
            }
            let f = Self::slice(s, slice);
            if main {
                f.state = "closed";
                f.closed_at_ms = Some(at_ms);
                f.closed_at = Some(crate::time::format_iso_seconds(at_ms));
            }
            if uploading {
                f.upload.get_or_insert_with(Upload::default).pending += 1;
            }
            Self::trim(s);
        });
    }

    /// A file found waiting for upload at start.
    pub fn upload_queued(&self, slice: Slice) {
        self.with(|s| {
            s.totals.uploads_pending += 1;
            let f = Self::slice(s, slice);
            if f.state == "open" {
                f.state = "closed";
            }
            f.upload.get_or_insert_with(Upload::default).pending += 1;
        });
    }

    /// An upload attempt of a file of `slice` failed.
    pub fn upload_failed(&self, slice: Slice, error: &str) {
        self.with(|s| {
            s.totals.upload_failures += 1;
            let u = Self::slice(s, slice).upload.get_or_insert_with(Upload::default);
            u.failed_attempts += 1;
            u.last_error = Some(error.chars().take(300).collect());
        });
    }

    /// A file of `slice` is in the bucket.
    pub fn uploaded(&self, slice: Slice) {
        self.with(|s| {
            s.totals.files_uploaded += 1;
            s.totals.uploads_pending = s.totals.uploads_pending.saturating_sub(1);
            let u = Self::slice(s, slice).upload.get_or_insert_with(Upload::default);
            u.pending = u.pending.saturating_sub(1);
            u.uploaded += 1;
            u.failed_attempts = 0;
            u.last_error = None;
            Self::trim(s);
        });
    }

    /// Files open now.
    pub fn set_open_files(&self, n: usize) {
        self.with(|s| s.totals.open_files = n as u64);
    }

    /// A copy of the figures.
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).snap.clone()
    }
}

/// Figures by slice, for tests.
impl Snapshot {
    /// The figures of the slice starting at `start_ms`.
    pub fn slice(&self, start_ms: i64) -> Option<&SliceFigures> {
        self.slices.iter().find(|f| f.start_ms == start_ms)
    }

    /// Slices by start.
    pub fn by_start(&self) -> BTreeMap<i64, &SliceFigures> {
        self.slices.iter().map(|f| (f.start_ms, f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_slice_figures_and_bounded_list() {
        let st = ExportStats::new();
        let s0 = Slice { start_ms: 0 };
        st.synced(s0, Synced { records: 5, worst_sync_delay_ms: Some(900), ..Synced::default() });
        st.published(s0, true, 1_800_000 + 300_000, true);
        st.late_file_opened(s0, 1);
        st.synced(s0, Synced { records: 2, late: true, duplicates: 1, worst_sync_delay_ms: Some(4_000) });
        st.upload_failed(s0, "connection refused");
        let snap = st.snapshot();
        let f = snap.slice(0).unwrap();
        assert_eq!((f.records, f.late_records, f.late_files, f.duplicates_skipped), (5, 2, 1, 1));
        assert_eq!(f.worst_sync_delay_ms, Some(4_000));
        assert_eq!(f.closed_at.as_deref(), Some("1970-01-01T00:35:00Z"));
        assert_eq!(f.upload.as_ref().unwrap().last_error.as_deref(), Some("connection refused"));
        st.uploaded(s0);
        assert_eq!(st.snapshot().slice(0).unwrap().upload, Some(Upload { pending: 0, uploaded: 1, failed_attempts: 0, last_error: None }));
        for i in 1..100 {
            let s = Slice { start_ms: i * 1_800_000 };
            st.synced(s, Synced { records: 1, ..Synced::default() });
            if i < 90 {
                st.published(s, true, 0, false);
            }
        }
        let snap = st.snapshot();
        assert_eq!(snap.slices.len(), KEEP_SLICES);
        // The open ones are kept, the oldest closed ones went first.
        assert!(snap.slice(99 * 1_800_000).is_some() && snap.slice(0).is_none());
        assert_eq!(snap.totals.records, 5 + 2 + 99);
    }

    #[test]
    fn figures_are_published_and_the_slice_families_stay_bounded() {
        use crate::telemetry::figures::FigureValue;
        let t = crate::telemetry::Telemetry::new();
        let st = ExportStats::published_in(t.figures("export"));
        for i in 0..100 {
            let s = Slice { start_ms: i * 1_800_000 };
            st.synced(s, Synced { records: 2, worst_sync_delay_ms: Some(i), ..Synced::default() });
            st.published(s, true, (i + 1) * 1_800_000, false);
        }
        let snap = t.figures("export").snapshot();
        let get = |name: &str| snap.figures.iter().find(|f| f.name == name).unwrap().value.clone();
        assert_eq!(get("records"), FigureValue::One(200));
        assert_eq!(get("files_published"), FigureValue::One(100));
        let FigureValue::ByLabel { values, .. } = get("slice_records") else { panic!("a family") };
        assert_eq!(values.len(), KEEP_SLICES);
        assert_eq!(values.last().unwrap(), &(Slice { start_ms: 99 * 1_800_000 }.iso(), 2));
        let FigureValue::ByLabel { values, .. } = get("slice_worst_sync_delay_ms") else { panic!("a family") };
        assert_eq!(values.last().unwrap().1, 99);
    }
}
