//! One reading of every figure at one instant: `/status` is a
//! [`Snapshot`]'s [`Status`] and `/metrics` renders the same snapshot, so
//! the two never disagree and nothing is read or aggregated twice.
//!
//! Invariant: taking a snapshot reads each atomic once, derives what is
//! derived (states, windows, totals) from the `now_ms` the caller passes,
//! and does no I/O; renderers read only the snapshot.

use super::delay::HistogramSnapshot;
use super::figures::SectionSnapshot;
use super::status::{EnrichStatus, FileFigures, FileStatus, SectionStatus, Sections, SettingsView, SinkStatus, Status, Totals};
use super::status_settings::StatusSettings;
use super::{Retired, Telemetry};
use crate::time;

/// Every figure at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The `/status` document.
    pub status: Status,
    /// Epoch ms when the bridge started.
    pub started_ms: i64,
    /// Per component that ever failed: (failing now, episodes since start).
    pub fault_summary: Vec<(&'static str, bool, u64)>,
    /// What `/metrics` shows of each file beyond its [`FileStatus`], in the
    /// order of `status.files`.
    pub files: Vec<FileFigures>,
    /// Counters of removed files.
    pub retired: Retired,
    /// Each sink's delivery-delay histogram, in the order of
    /// `status.sinks`.
    pub sinks: Vec<HistogramSnapshot>,
    /// Components' figures with their kinds and help texts, in the order
    /// of `status.sections`.
    pub sections: Vec<SectionSnapshot>,
}

impl Telemetry {
    /// Every figure at `now_ms`, derived with settings `s`.
    pub fn snapshot(&self, now_ms: i64, s: &StatusSettings) -> Snapshot {
        let (files, file_figures): (Vec<FileStatus>, Vec<FileFigures>) = self.files().iter().map(|f| f.read(now_ms, s)).unzip();
        let (sinks, sink_hists): (Vec<SinkStatus>, Vec<HistogramSnapshot>) = self.sinks().iter().map(|k| k.read(now_ms, s)).unzip();
        let sections: Vec<SectionSnapshot> =
            self.sections().iter().map(|f| f.snapshot()).filter(|s| !s.figures.is_empty() || s.endpoint.is_some()).collect();
        let retired = self.retired();
        let totals = totals(&files, &sinks, &retired);
        let sources: Vec<_> = self.sources().iter().map(|x| x.status(now_ms, s)).collect();
        // What /readyz answers, from the same facts: up, no fault, and no
        // source problem (a directory that cannot be listed, a file that
        // cannot be read, paths that match nothing).
        let ready = self.is_ready() && sources.iter().all(|x| x.problems().is_empty());
        let status = Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            now_ms,
            now: time::format_iso_millis(now_ms),
            uptime_secs: ((now_ms - self.started_ms()).max(0) as f64) / 1000.0,
            ready,
            faults: self.faults(),
            settings: SettingsView {
                delay_window_secs: (s.delay_window_ms / 1000) as u64,
                idle_after_secs: (s.idle_after_ms / 1000) as u64,
                stalled_after_secs: (s.stalled_after_ms / 1000) as u64,
                no_files_after_secs: (s.no_files_after_ms / 1000) as u64,
            },
            sources,
            files,
            sinks,
            totals,
            sections: Sections(sections.iter().map(|x| (x.name.to_string(), SectionStatus::of(x))).collect()),
            enrich: self.lookups().filter(|l| !l.files.is_empty()).map(|l| EnrichStatus::of(&l)),
        };
        Snapshot {
            status,
            started_ms: self.started_ms(),
            fault_summary: self.fault_summary(),
            files: file_figures,
            retired,
            sinks: sink_hists,
            sections,
        }
    }
}

/// Sums and maxima over files (removed ones included) and sinks.
fn totals(files: &[FileStatus], sinks: &[SinkStatus], retired: &Retired) -> Totals {
    let mut t = Totals {
        files: files.len() as u64,
        records: retired.records,
        rejects: retired.rejects.values().sum(),
        negative_delays: retired.negative_delays,
        partial_lines: retired.partial_lines,
        ..Totals::default()
    };
    for f in files {
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
    for k in sinks {
        t.queue_depth += k.queue_depth;
        t.delivered_records += k.delivered_records;
        t.retries += k.retries;
        t.dropped_records += k.dropped_records;
        t.dead_lettered_records += k.dead_lettered_records;
        if let Some(a) = k.oldest_undelivered_age_ms {
            t.max_oldest_undelivered_age_ms = Some(t.max_oldest_undelivered_age_ms.map_or(a, |m| m.max(a)));
        }
    }
    t
}
