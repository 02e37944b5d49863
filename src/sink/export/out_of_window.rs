//! Records whose `request_time` is outside the export's window
//! (`max_past_hours` back, `max_future_minutes` ahead of the time they are
//! written): a clock decades off must not make a slice file per record
//! (years 1970 to 9999 parse), so they go, counted, to one out-of-window
//! file at a time instead: `out-of-window-<slice of now>.csv.gz`, the
//! export's columns, opened at the first such record and published with
//! the rules of a slice's own file (`close_after` past the end of the
//! slice it was opened in). Nothing is lost; nothing is uploaded (they are
//! not the export's slices).
//!
//! Duplicates, as for slices: within a run a record reaches the export
//! once. After an unclean stop the records read again may be in the
//! out-of-window files written before it: the newest two at start (the
//! open one, taken up, and the one before, in case the stop came just
//! after a publish) are read into a set when the first out-of-window
//! record arrives, and a record already there is skipped (counted). The
//! set is dropped once the first file of this run is published: the
//! records read again come first.

use std::fs;
use std::io;
use std::path::Path;

use super::dedup::UuidSet;
use super::slice::{ExportFileName, OutOfWindowName, Slice};
use super::slice_file::{read_records, FileFormat, SliceFile};
use super::stats::ExportStats;
use crate::record::{Field, Record};

/// Out-of-window files of the newest, read for duplicates after a start.
const CHECKED_AT_START: usize = 2;

/// The out-of-window file being written.
struct Open {
    /// The file.
    file: SliceFile<OutOfWindowName>,
    /// Published at this time (epoch ms).
    deadline_ms: i64,
    /// Its size at the last sync: what a repair keeps.
    synced_len: u64,
    /// Records written since the last sync.
    records: u64,
    /// Records skipped as already written, since the last sync.
    duplicates: u64,
}

/// The out-of-window files (see the module docs).
#[derive(Default)]
pub struct OutOfWindow {
    /// The file being written.
    open: Option<Open>,
    /// Files found at start: (name, still `.partial`).
    found: Vec<(OutOfWindowName, bool)>,
    /// The newest files written before this start, for duplicates.
    before: Vec<OutOfWindowName>,
    /// The `request_uuid`s in `before`, once loaded.
    seen: Option<UuidSet>,
}

impl OutOfWindow {
    /// A file found in the directory at start.
    pub fn found(&mut self, name: OutOfWindowName, partial: bool) {
        self.found.push((name, partial));
    }

    /// After the directory was read: the newest `.partial` is taken up
    /// (kept open, published at `deadline(arrival)`), older ones are
    /// published as they are; returns (files, records) taken up.
    pub fn take_up(&mut self, dir: &Path, fmt: &FileFormat, deadline: impl Fn(Slice) -> i64) -> io::Result<(usize, u64)> {
        let mut found = std::mem::take(&mut self.found);
        found.sort();
        let newest_partial = found.iter().rev().find(|(n, p)| *p && n.gzip == fmt.gzip.is_some()).map(|(n, _)| *n);
        let mut taken = (0, 0);
        for (name, partial) in &found {
            if !partial {
                continue;
            }
            if Some(*name) == newest_partial {
                let mut records = 0;
                let file = SliceFile::recover(dir, *name, fmt, None, |_| records += 1)?;
                let synced_len = fs::metadata(dir.join(name.partial()))?.len();
                self.open = Some(Open { file, deadline_ms: deadline(name.arrival), synced_len, records: 0, duplicates: 0 });
                taken = (1, records);
            } else {
                // Another setting's, or left by a stop during a publish:
                // published as it reads (its name says what it is).
                let from = dir.join(name.partial());
                let to = dir.join(name.published());
                fs::rename(&from, &to)?;
                crate::rotating::sync_dir(&to);
            }
        }
        self.before = found.iter().rev().take(CHECKED_AT_START).map(|(n, _)| *n).collect();
        Ok(taken)
    }

    /// Writes `r` into the open file, opening one for `arrival` (published
    /// at `deadline_ms`) if none is.
    pub fn write(&mut self, r: &Record<'_>, dir: &Path, fmt: &FileFormat, arrival: Slice, deadline_ms: i64) -> io::Result<()> {
        if self.open.is_none() {
            let mut name = OutOfWindowName { arrival, n: 1, gzip: fmt.gzip.is_some() };
            while dir.join(name.published()).exists() || dir.join(name.partial()).exists() {
                name.n += 1;
            }
            let file = SliceFile::create(dir, name, fmt)?;
            tracing::warn!(
                file = %dir.join(name.published()).display(),
                "export: records whose request_time is outside the window (max_past_hours, max_future_minutes) go to an out-of-window file, not to slices"
            );
            self.open = Some(Open { file, deadline_ms, synced_len: 0, records: 0, duplicates: 0 });
        }
        if self.seen.is_none() && !self.before.is_empty() {
            self.seen = Some(self.load_seen(dir)?);
        }
        let Some(o) = self.open.as_mut() else { return Ok(()) };
        if self.seen.as_ref().is_some_and(|s| s.contains(r.get(Field::RequestUuid))) {
            o.duplicates += 1;
            return Ok(());
        }
        o.file.push(r, fmt.columns)?;
        o.records += 1;
        Ok(())
    }

    /// The `request_uuid`s in the files of `before` (the open one up to
    /// its last sync).
    fn load_seen(&self, dir: &Path) -> io::Result<UuidSet> {
        let mut seen = UuidSet::new();
        for name in &self.before {
            let (path, limit) = match &self.open {
                Some(o) if o.file.name() == *name => (dir.join(name.partial()), Some(o.synced_len)),
                _ => (dir.join(name.published()), None),
            };
            let r = read_records(&path, name.gzip, limit, |r| {
                seen.insert(r.get(Field::RequestUuid));
                Ok(())
            });
            match r {
                Ok(_) => {}
                // Removed by an operator meanwhile: nothing to compare with.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(seen)
    }

    /// True while a file is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// When the open file is due.
    pub fn deadline(&self) -> Option<i64> {
        self.open.as_ref().map(|o| o.deadline_ms)
    }

    /// Makes what was written durable and counts it.
    pub fn sync(&mut self, stats: &ExportStats) -> io::Result<()> {
        let Some(o) = self.open.as_mut() else { return Ok(()) };
        if !o.file.is_dirty() && o.duplicates == 0 {
            return Ok(());
        }
        o.synced_len = o.file.sync()?;
        stats.out_of_window_synced(std::mem::take(&mut o.records), std::mem::take(&mut o.duplicates));
        Ok(())
    }

    /// Cuts the open file back to its last sync (see `Exporter::repair`).
    pub fn repair(&mut self, dir: &Path, fmt: &FileFormat) -> io::Result<()> {
        let Some(o) = self.open.as_mut() else { return Ok(()) };
        let name = o.file.name();
        o.file = if o.synced_len == 0 {
            SliceFile::create(dir, name, fmt)?
        } else {
            SliceFile::recover(dir, name, fmt, Some(o.synced_len), |_| {})?
        };
        o.synced_len = fs::metadata(dir.join(name.partial()))?.len();
        (o.records, o.duplicates) = (0, 0);
        Ok(())
    }

    /// Publishes the open file if it is due at `now_ms` (everything in it
    /// synced first by the caller). On an error it stays open, as it was
    /// at its last sync.
    pub fn publish_due(&mut self, now_ms: i64, dir: &Path, fmt: &FileFormat) -> io::Result<()> {
        if self.open.as_ref().is_none_or(|o| o.deadline_ms > now_ms) {
            return Ok(());
        }
        let Some(o) = self.open.take() else { return Ok(()) };
        let (name, synced_len, rows) = (o.file.name(), o.synced_len, o.file.rows());
        match o.file.publish() {
            Ok(path) => {
                tracing::warn!(file = %path.display(), records = rows, "export: published an out-of-window file");
                // The records read again after a stop came first.
                self.before.clear();
                self.seen = None;
                Ok(())
            }
            Err(e) => {
                let file = SliceFile::recover(dir, name, fmt, Some(synced_len), |_| {})?;
                let synced_len = fs::metadata(dir.join(name.partial()))?.len();
                self.open = Some(Open { file, synced_len, records: 0, duplicates: 0, ..o });
                Err(e)
            }
        }
    }
}
