//! The export's state, without tasks or timers: which slice a record goes
//! to, which file of it is open, when files close, what was already
//! written. Used by the `[export]` sink (on a blocking thread) and by the
//! offline `export` command. Every call takes the time it runs at, so the
//! rules are tested with injected times.
//!
//! Rules:
//! - A record goes to the slice of its `request_time` (UTC, aligned), if
//!   that is within the window (`max_past` before and `max_future` after
//!   the time it is written); else to the out-of-window file
//!   ([`super::out_of_window`]). Offline, the range decides instead.
//! - A slice's own file is open from its first record until
//!   `close_after` past the slice's end (or, for a slice whose first record
//!   arrives later than that, a catch-up, `close_after` past that
//!   arrival); then it is published. A record for a slice already
//!   published goes into the slice's next late file, which is published
//!   `close_after` after it was opened.
//! - At most `max_open_files` files are open; opening one more first
//!   publishes the one written least recently.
//! - Duplicates: in the running bridge a record reaches the export once,
//!   except after an unclean stop, when the records not yet acknowledged
//!   by every sink are read again. The export *records what was written*:
//!   its files. For a slice that had files before this start, the
//!   `request_uuid`s in them are loaded when the slice is first written
//!   to, and a record already there is skipped (counted); the set is
//!   dropped when that file is published, and loaded again if the slice
//!   is written to later. Slices first written in this run need no set.
//!   The offline export keeps a set for every slice (its input, an archive,
//!   may hold a record twice).
//!
//! Invariant: a record is in the files once [`Exporter::sync`] returned
//! `Ok` after it was written; after a failed write or sync,
//! [`Exporter::repair`] cuts every open file back to its last sync, so
//! writing the unacknowledged batches again gives each record once.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::config::ExportConfig;
use super::dedup::UuidSet;
use super::out_of_window::OutOfWindow;
use super::slice::{FileName, OutOfWindowName, Part, Slice};
use super::slice_file::{read_records, FileFormat, SliceFile};
use super::stats::{ExportStats, Synced};
use crate::parse::ecle_csv::NATURAL;
use crate::record::{Field, Record};

/// A duration in milliseconds, saturating (the offline command's window
/// is unbounded).
fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The export's columns: the 35 natural-order columns, or all 39 with the
/// organisation columns.
pub fn columns(include_org: bool) -> &'static [Field] {
    if include_org {
        &NATURAL
    } else {
        &NATURAL[..35]
    }
}

/// A file being written, with what is not yet synced in it.
struct Open {
    file: SliceFile,
    /// Published at this time (epoch ms); `i64::MAX` offline.
    deadline_ms: i64,
    /// Order of the last write (for closing the least recent one).
    last_write: u64,
    /// Its size at the last sync: what a repair keeps.
    synced_len: u64,
    /// Since the last sync.
    unsynced: Synced,
}

/// What is known of a slice.
#[derive(Default)]
struct Known {
    /// Its own file is published (records now go to late files).
    main_published: bool,
    /// Late files opened so far (the next is `late_files + 1`).
    late_files: u32,
    /// It had files when this run started: records may be there already.
    before_start: bool,
    /// The `request_uuid`s in its files, when they must be checked.
    seen: Option<UuidSet>,
}

/// A file just published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its name.
    pub name: FileName,
    /// Where it is.
    pub path: PathBuf,
}

/// What a start found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// `.partial` files taken up again.
    pub files: usize,
    /// Records in them.
    pub records: u64,
    /// Torn or unreadable rows dropped from them.
    pub dropped_rows: u64,
}

/// The export's state (see the module docs).
pub struct Exporter {
    dir: PathBuf,
    fmt: FileFormat,
    slice_ms: i64,
    close_after_ms: i64,
    max_open: usize,
    /// Offline: keep a `request_uuid` set for every slice; keep records
    /// in `range` only.
    offline: bool,
    range: (i64, i64),
    /// The running export's window: `request_time` from `now - .0` to
    /// `now + .1` goes to slices.
    window_ms: (i64, i64),
    /// Records outside the window.
    out_of_window: OutOfWindow,
    /// Upload is configured (published files are queued).
    uploading: bool,
    open: HashMap<Slice, Open>,
    known: HashMap<Slice, Known>,
    /// Write counter for `last_write`.
    writes: u64,
    stats: ExportStats,
    /// Records outside `range` (offline).
    pub out_of_range: u64,
}

impl Exporter {
    /// The running bridge's export: creates `dir` if needed, takes up the
    /// `.partial` files an earlier run left, and notes the slices that
    /// have files.
    pub fn start(cfg: &ExportConfig, stats: ExportStats, now_ms: i64) -> io::Result<(Exporter, Recovery)> {
        let mut e = Self::new(cfg, stats, false, (i64::MIN, i64::MAX));
        let rec = e.scan(now_ms)?;
        Ok((e, rec))
    }

    /// The offline export of records whose `request_time` is in
    /// `[from_ms, to_ms)`. Files of those slices already in `dir` are an
    /// error, unless `replace`, which removes them first.
    pub fn offline(cfg: &ExportConfig, from_ms: i64, to_ms: i64, replace: bool) -> io::Result<Exporter> {
        let e = Self::new(cfg, ExportStats::new(), true, (from_ms, to_ms));
        e.fmt.access.prepare_dir(&e.dir)?;
        let first = Slice::of(from_ms, e.slice_ms).start_ms;
        for entry in fs::read_dir(&e.dir)? {
            let entry = entry?;
            let Some((name, _)) = entry.file_name().to_str().and_then(FileName::parse) else { continue };
            if name.slice.start_ms < first || name.slice.start_ms >= to_ms {
                continue;
            }
            if !replace {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists (--replace removes the files of the slices exported)", entry.path().display()),
                ));
            }
            fs::remove_file(entry.path())?;
        }
        Ok(e)
    }

    fn new(cfg: &ExportConfig, stats: ExportStats, offline: bool, range: (i64, i64)) -> Exporter {
        Exporter {
            dir: cfg.dir.clone(),
            fmt: FileFormat {
                columns: columns(cfg.include_org),
                header: cfg.header,
                bridge_columns: cfg.bridge_columns,
                gzip: cfg.gzip,
                formulas: cfg.formulas,
                access: cfg.access.clone(),
            },
            slice_ms: cfg.slice_ms(),
            close_after_ms: cfg.close_after.as_millis() as i64,
            max_open: if offline { cfg.max_open_files.max(1024) } else { cfg.max_open_files },
            offline,
            range,
            window_ms: (duration_ms(cfg.max_past), duration_ms(cfg.max_future)),
            out_of_window: OutOfWindow::default(),
            uploading: cfg.s3.is_some() && !offline,
            open: HashMap::new(),
            known: HashMap::new(),
            writes: 0,
            stats,
            out_of_range: 0,
        }
    }

    /// The figures.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files open now (the out-of-window file included).
    pub fn open_files(&self) -> usize {
        self.open.len() + usize::from(self.out_of_window.is_open())
    }

    /// Reads `dir`: published files make their slice known (closed, late
    /// numbers); `.partial` files are recovered and stay open.
    fn scan(&mut self, now_ms: i64) -> io::Result<Recovery> {
        self.fmt.access.prepare_dir(&self.dir)?;
        let mut partials = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let fname = entry.file_name();
            let Some(s) = fname.to_str() else { continue };
            if (s.starts_with(".calllog-") || s.starts_with(".out-of-window-")) && s.ends_with(".partial.rebuild") {
                // A recovery that did not finish: the `.partial` is intact.
                fs::remove_file(entry.path())?;
                continue;
            }
            let parsed = FileName::parse(s);
            let outside = OutOfWindowName::parse(s);
            if parsed.is_none() && outside.is_none() {
                continue;
            }
            // Files of an earlier run (or version, or setting) get the
            // mode and group readers are told about.
            if let Err(e) = File::open(entry.path()).and_then(|f| self.fmt.access.apply(&f)) {
                tracing::warn!(file = %entry.path().display(), error = %e, "export: cannot give a file the configured file_mode and group");
            }
            let Some((name, partial)) = parsed else {
                if let Some((name, partial)) = outside {
                    self.out_of_window.found(name, partial);
                }
                continue;
            };
            let k = self.known.entry(name.slice).or_default();
            k.before_start = true;
            match (name.part, partial) {
                (Part::Main, false) => k.main_published = true,
                (Part::Late(n), _) => k.late_files = k.late_files.max(n),
                (Part::Main, true) => {}
            }
            if partial {
                partials.push(name);
            }
        }
        for (slice, k) in &self.known {
            if k.main_published {
                self.stats.known_closed(*slice, k.late_files);
            }
        }
        let mut rec = Recovery::default();
        partials.sort();
        for name in partials {
            if name.gzip != self.fmt.gzip.is_some() {
                // Written under the other `gzip` setting: publish it as it is
                // (its name says what it is) rather than lose it.
                let from = self.dir.join(name.partial());
                let to = self.dir.join(name.published());
                fs::rename(&from, &to)?;
                crate::rotating::sync_dir(&to);
                if name.part == Part::Main {
                    self.known.entry(name.slice).or_default().main_published = true;
                }
                tracing::warn!(file = %to.display(), "export: published a partial file written with the other gzip setting as it was");
                continue;
            }
            if name.part == Part::Main && self.known.get(&name.slice).is_some_and(|k| k.main_published) {
                tracing::warn!(file = %self.dir.join(name.partial()).display(), "export: a partial file of a slice already published; left aside");
                continue;
            }
            let mut records = 0u64;
            let file = SliceFile::recover(&self.dir, name, &self.fmt, None, |_| records += 1)?;
            let synced_len = fs::metadata(self.dir.join(name.partial()))?.len();
            rec.files += 1;
            rec.records += records;
            self.stats.recovered(name.slice, records, name.part != Part::Main);
            let deadline_ms = match name.part {
                Part::Main => self.main_deadline(name.slice, now_ms),
                Part::Late(_) => now_ms + self.close_after_ms,
            };
            self.writes += 1;
            self.open.insert(name.slice, Open { file, deadline_ms, last_write: self.writes, synced_len, unsynced: Synced::default() });
        }
        let mut outside = std::mem::take(&mut self.out_of_window);
        let taken = outside.take_up(&self.dir, &self.fmt, |arrival| self.main_deadline(arrival, now_ms));
        self.out_of_window = outside;
        let (files, records) = taken?;
        rec.files += files;
        rec.records += records;
        self.stats.set_open_files(self.open_files());
        Ok(rec)
    }

    /// When a slice's own file opened now is published.
    fn main_deadline(&self, slice: Slice, now_ms: i64) -> i64 {
        if self.offline {
            return i64::MAX;
        }
        let due = slice.end_ms(self.slice_ms).saturating_add(self.close_after_ms);
        if now_ms < due {
            due
        } else {
            now_ms.saturating_add(self.close_after_ms)
        }
    }

    /// Writes records (not yet durable: see [`Exporter::sync`]).
    /// `fallback_ms` places a record without a `request_time`. Returns the
    /// files published to make room (at most `max_open_files` are open).
    pub fn write<'r, 'a: 'r>(
        &mut self,
        records: impl IntoIterator<Item = &'r Record<'a>>,
        fallback_ms: i64,
        now_ms: i64,
    ) -> io::Result<Vec<Published>> {
        let mut published = Vec::new();
        let mut last: Option<Slice> = None;
        for r in records {
            let t = r.request_time_ms.unwrap_or(fallback_ms);
            if t < self.range.0 || t >= self.range.1 {
                self.out_of_range += 1;
                continue;
            }
            if !self.offline && (t < now_ms.saturating_sub(self.window_ms.0) || t > now_ms.saturating_add(self.window_ms.1)) {
                let arrival = Slice::of(now_ms, self.slice_ms);
                let deadline_ms = self.main_deadline(arrival, now_ms);
                let was_open = self.out_of_window.is_open();
                self.out_of_window.write(r, &self.dir, &self.fmt, arrival, deadline_ms)?;
                if !was_open {
                    self.stats.set_open_files(self.open_files());
                }
                continue;
            }
            let slice = Slice::of(t, self.slice_ms);
            if last != Some(slice) || !self.open.contains_key(&slice) {
                self.open_for(slice, now_ms, &mut published)?;
                last = Some(slice);
            }
            let k = self.known.entry(slice).or_default();
            let Some(o) = self.open.get_mut(&slice) else { continue };
            if let Some(seen) = k.seen.as_mut() {
                if !seen.insert(r.get(Field::RequestUuid)) {
                    o.unsynced.duplicates += 1;
                    continue;
                }
            }
            o.file.push(r, self.fmt.columns)?;
            o.unsynced.records += 1;
            o.unsynced.worst_sync_delay_ms = o.unsynced.worst_sync_delay_ms.max(r.sync_delay_ms);
        }
        if let Some(s) = last {
            self.writes += 1;
            if let Some(o) = self.open.get_mut(&s) {
                o.last_write = self.writes;
            }
        }
        Ok(published)
    }

    /// Makes sure the file records of `slice` go to is open.
    fn open_for(&mut self, slice: Slice, now_ms: i64, published: &mut Vec<Published>) -> io::Result<()> {
        self.writes += 1;
        if let Some(o) = self.open.get_mut(&slice) {
            o.last_write = self.writes;
            // A file taken up at start: what it holds is checked.
            if self.known.get(&slice).is_some_and(|k| k.before_start && k.seen.is_none()) {
                let seen = self.load_seen(slice)?;
                self.known.entry(slice).or_default().seen = Some(seen);
            }
            return Ok(());
        }
        if self.open.len() >= self.max_open {
            if let Some((&oldest, _)) = self.open.iter().min_by_key(|(_, o)| o.last_write) {
                published.push(self.publish(oldest, now_ms)?);
            }
        }
        let k = self.known.entry(slice).or_default();
        let (part, deadline_ms) = if !k.main_published {
            (Part::Main, None)
        } else {
            k.late_files += 1;
            (Part::Late(k.late_files), Some(now_ms.saturating_add(self.close_after_ms)))
        };
        let late_n = k.late_files;
        let load = k.seen.is_none() && (self.offline || k.before_start);
        let deadline_ms = deadline_ms.unwrap_or_else(|| self.main_deadline(slice, now_ms));
        if load {
            let seen = self.load_seen(slice)?;
            self.known.entry(slice).or_default().seen = Some(seen);
        }
        if let Part::Late(_) = part {
            self.stats.late_file_opened(slice, late_n);
        }
        let name = FileName { slice, part, gzip: self.fmt.gzip.is_some() };
        let file = SliceFile::create(&self.dir, name, &self.fmt)?;
        self.open.insert(slice, Open { file, deadline_ms, last_write: self.writes, synced_len: 0, unsynced: Synced::default() });
        self.stats.set_open_files(self.open_files());
        Ok(())
    }

    /// The `request_uuid`s in the files of `slice` now on disk (published,
    /// and the open one up to its last sync).
    fn load_seen(&self, slice: Slice) -> io::Result<UuidSet> {
        let mut seen = UuidSet::new();
        if self.offline {
            return Ok(seen);
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some((name, partial)) = entry.file_name().to_str().and_then(FileName::parse) else { continue };
            if name.slice == slice {
                let limit = if partial { self.open.get(&slice).map(|o| o.synced_len) } else { None };
                if partial && limit.is_none() {
                    continue;
                }
                files.push((entry.path(), name.gzip, limit));
            }
        }
        for (path, gzip, limit) in files {
            read_records(&path, gzip, limit, |r| {
                seen.insert(r.get(Field::RequestUuid));
                Ok(())
            })?;
        }
        Ok(seen)
    }

    /// Makes everything written durable (gzip sync flush, `fdatasync`).
    /// After an error, call [`Exporter::repair`].
    pub fn sync(&mut self) -> io::Result<()> {
        for (slice, o) in self.open.iter_mut() {
            if !o.file.is_dirty() && o.unsynced.duplicates == 0 {
                continue;
            }
            o.synced_len = o.file.sync()?;
            let d = std::mem::take(&mut o.unsynced);
            self.stats.synced(*slice, Synced { late: o.file.name().part != Part::Main, ..d });
        }
        self.out_of_window.sync(&self.stats)
    }

    /// After a failed write, sync or publish: cuts every open file back to
    /// its last sync (rebuilding its stream) and forgets what was written
    /// since. The caller then writes its unacknowledged batches again.
    pub fn repair(&mut self) -> io::Result<()> {
        self.out_of_window.repair(&self.dir, &self.fmt)?;
        let slices: Vec<Slice> = self.open.keys().copied().collect();
        for slice in slices {
            let Some(o) = self.open.get(&slice) else { continue };
            let (name, limit) = (o.file.name(), o.synced_len);
            let file = if limit == 0 {
                SliceFile::create(&self.dir, name, &self.fmt)?
            } else {
                SliceFile::recover(&self.dir, name, &self.fmt, Some(limit), |_| {})?
            };
            let synced_len = fs::metadata(self.dir.join(name.partial()))?.len();
            if let Some(o) = self.open.get_mut(&slice) {
                o.file = file;
                o.synced_len = synced_len;
                o.unsynced = Synced::default();
            }
        }
        // What the sets hold may include records cut away: load again.
        for k in self.known.values_mut() {
            if !self.offline {
                k.seen = None;
            }
        }
        if self.offline {
            // Offline writes are not repaired (the command stops on a
            // write error); nothing else to do.
        }
        Ok(())
    }

    /// The earliest time a file is due to be published.
    pub fn next_deadline(&self) -> Option<i64> {
        self.open.values().map(|o| o.deadline_ms).chain(self.out_of_window.deadline()).min()
    }

    /// Publishes the files due at `now_ms` (call after a successful
    /// [`Exporter::sync`]: publishing makes durable whatever is in them).
    pub fn close_due(&mut self, now_ms: i64) -> io::Result<Vec<Published>> {
        let mut due: Vec<Slice> = self.open.iter().filter(|(_, o)| o.deadline_ms <= now_ms).map(|(s, _)| *s).collect();
        due.sort();
        let mut out = Vec::new();
        for s in due {
            out.push(self.publish(s, now_ms)?);
        }
        if self.out_of_window.deadline().is_some_and(|d| d <= now_ms) {
            self.out_of_window.publish_due(now_ms, &self.dir, &self.fmt)?;
            self.stats.set_open_files(self.open_files());
        }
        Ok(out)
    }

    /// Publishes every open file (the offline export's end).
    pub fn close_all(&mut self, now_ms: i64) -> io::Result<Vec<Published>> {
        self.sync()?;
        let mut all: Vec<Slice> = self.open.keys().copied().collect();
        all.sort();
        let mut out = Vec::new();
        for s in all {
            out.push(self.publish(s, now_ms)?);
        }
        Ok(out)
    }

    fn publish(&mut self, slice: Slice, now_ms: i64) -> io::Result<Published> {
        let Some(mut o) = self.open.remove(&slice) else {
            return Err(io::Error::other("publish: no such open file"));
        };
        let name = o.file.name();
        let unsynced = std::mem::take(&mut o.unsynced);
        // The upload marker first: a file is never published unmarked.
        let published = if self.uploading { super::s3::mark_pending(&self.dir, &name) } else { Ok(()) };
        let path = match published.and_then(|()| o.file.publish()) {
            Ok(p) => p,
            Err(e) => {
                // The file stays a `.partial` on disk; take it up again from
                // its last sync so the caller can repair and retry.
                let file = SliceFile::recover(&self.dir, name, &self.fmt, Some(o.synced_len), |_| {})?;
                let synced_len = fs::metadata(self.dir.join(name.partial()))?.len();
                self.open.insert(slice, Open { file, synced_len, unsynced: Synced::default(), ..o });
                return Err(e);
            }
        };
        self.stats.synced(slice, Synced { late: name.part != Part::Main, ..unsynced });
        let k = self.known.entry(slice).or_default();
        if name.part == Part::Main {
            k.main_published = true;
        }
        if !self.offline {
            k.seen = None;
        }
        self.stats.published(slice, name.part == Part::Main, now_ms, self.uploading);
        self.stats.set_open_files(self.open_files());
        Ok(Published { name, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_iso;

    fn cfg(dir: &Path) -> ExportConfig {
        let s: super::super::config::ExportSection = toml::from_str(&format!("dir = {:?}\n", dir.to_string_lossy())).unwrap();
        ExportConfig::from_section(s, Path::new("/")).unwrap()
    }

    fn t(iso: &str) -> i64 {
        parse_iso(iso).unwrap()
    }

    fn rec(uuid: &str, iso: &str) -> Record<'static> {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, uuid.to_string());
        r.set(Field::RequestId, format!("1_k_{uuid}"));
        r.set_request_time_ms(t(iso));
        r.stamp_observed(t(iso) + 1000);
        r
    }

    fn contents(dir: &Path) -> Vec<(String, Vec<String>)> {
        let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let mut u = Vec::new();
                if let Some((f, _)) = FileName::parse(&n) {
                    read_records(&dir.join(&n), f.gzip, None, |r| {
                        u.push(r.get(Field::RequestUuid).to_string());
                        Ok(())
                    })
                    .unwrap();
                }
                (n, u)
            })
            .collect()
    }

    #[test]
    fn slices_close_after_their_end_and_late_records_go_to_late_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let (mut e, rec0) = Exporter::start(&c, ExportStats::new(), t("2026-11-29T10:10:00Z")).unwrap();
        assert_eq!(rec0, Recovery::default());
        let now = t("2026-11-29T10:10:00Z");
        e.write(&[rec("a1", "2026-11-29T10:05:00Z"), rec("b1", "2026-11-29T10:31:00Z")], 0, now).unwrap();
        e.sync().unwrap();
        assert_eq!(e.next_deadline(), Some(t("2026-11-29T10:35:00Z")));
        assert!(e.close_due(t("2026-11-29T10:34:59Z")).unwrap().is_empty());
        let p = e.close_due(t("2026-11-29T10:35:00Z")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name.published(), "calllog-2026-11-29T10-00Z.csv.gz");
        // A record of the closed slice arrives: a late file.
        let now = t("2026-11-29T10:40:00Z");
        e.write(&[rec("a2", "2026-11-29T10:29:59Z"), rec("b2", "2026-11-29T10:45:00Z")], 0, now).unwrap();
        e.sync().unwrap();
        assert_eq!(e.next_deadline(), Some(t("2026-11-29T10:45:00Z")));
        let p = e.close_due(t("2026-11-29T10:45:00Z")).unwrap();
        assert_eq!(p[0].name.published(), "calllog-2026-11-29T10-00Z.late-1.csv.gz");
        e.write(&[rec("a3", "2026-11-29T10:00:00Z")], 0, t("2026-11-29T11:00:00Z")).unwrap();
        e.sync().unwrap();
        let all = e.close_due(t("2026-11-29T12:00:00Z")).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            contents(dir.path()),
            vec![
                ("calllog-2026-11-29T10-00Z.csv.gz".to_string(), vec!["a1".to_string()]),
                ("calllog-2026-11-29T10-00Z.late-1.csv.gz".to_string(), vec!["a2".to_string()]),
                ("calllog-2026-11-29T10-00Z.late-2.csv.gz".to_string(), vec!["a3".to_string()]),
                ("calllog-2026-11-29T10-30Z.csv.gz".to_string(), vec!["b1".to_string(), "b2".to_string()]),
            ]
        );
        let snap = e.stats().snapshot();
        let s10 = snap.slice(t("2026-11-29T10:00:00Z")).unwrap();
        assert_eq!((s10.records, s10.late_records, s10.late_files), (1, 2, 2));
        assert_eq!(s10.closed_at_ms, Some(t("2026-11-29T10:35:00Z")));
        assert_eq!(s10.worst_sync_delay_ms, Some(1000));
    }

    #[test]
    fn a_catch_up_keeps_the_slice_open_close_after_past_the_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut e, _) = Exporter::start(&cfg(dir.path()), ExportStats::new(), 0).unwrap();
        let now = t("2026-11-29T14:00:00Z");
        e.write(&[rec("old", "2026-11-29T10:05:00Z")], 0, now).unwrap();
        assert_eq!(e.next_deadline(), Some(now + 300_000));
        e.write(&[rec("old2", "2026-11-29T10:06:00Z")], 0, now + 1000).unwrap();
        e.sync().unwrap();
        assert_eq!(e.close_due(now + 300_000).unwrap().len(), 1);
        assert_eq!(contents(dir.path())[0].1, vec!["old", "old2"]);
    }

    #[test]
    fn a_restart_takes_up_partial_files_and_skips_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let now = t("2026-11-29T10:10:00Z");
        let (mut e, _) = Exporter::start(&c, ExportStats::new(), now).unwrap();
        e.write(&[rec("a1", "2026-11-29T10:05:00Z"), rec("a2", "2026-11-29T10:06:00Z")], 0, now).unwrap();
        e.sync().unwrap();
        // Closed earlier slice with a published file: replays for it are
        // checked against that file too.
        e.write(&[rec("z1", "2026-11-29T09:05:00Z")], 0, now).unwrap();
        e.sync().unwrap();
        assert_eq!(e.close_due(now + 300_000).unwrap().len(), 1, "the catch-up slice 09:00 is published");
        // Written but never synced: no batch was acknowledged for it.
        e.write(&[rec("a3", "2026-11-29T10:07:00Z")], 0, now).unwrap();
        drop(e); // kill -9
        let stats = ExportStats::new();
        let (mut e, r) = Exporter::start(&c, stats.clone(), now + 5000).unwrap();
        assert_eq!(r.files, 1, "the 10:00 slice's partial file");
        assert_eq!(r.records, 2, "a3 was never written out: {r:?}");
        // The batches not acknowledged come again: a1, a2, a3.
        e.write(&[rec("a1", "2026-11-29T10:05:00Z"), rec("a2", "2026-11-29T10:06:00Z"), rec("a3", "2026-11-29T10:07:00Z")], 0, now + 6000)
            .unwrap();
        e.write(&[rec("z1", "2026-11-29T09:05:00Z")], 0, now + 6000).unwrap();
        e.sync().unwrap();
        e.close_due(t("2026-11-29T13:00:00Z")).unwrap();
        let files = contents(dir.path());
        let mut all: Vec<String> = files.iter().flat_map(|(_, u)| u.clone()).collect();
        all.sort();
        assert_eq!(all, vec!["a1", "a2", "a3", "z1"], "{files:?}");
        assert!(stats.snapshot().totals.duplicates_skipped >= 3);
    }

    #[test]
    fn the_least_recently_written_file_is_published_to_stay_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.max_open_files = 2;
        let now = t("2026-11-29T10:10:00Z");
        let (mut e, _) = Exporter::start(&c, ExportStats::new(), now).unwrap();
        e.write(&[rec("a", "2026-11-29T08:00:00Z")], 0, now).unwrap();
        e.write(&[rec("b", "2026-11-29T09:00:00Z")], 0, now).unwrap();
        e.write(&[rec("a2", "2026-11-29T08:00:01Z")], 0, now).unwrap();
        let p = e.write(&[rec("c", "2026-11-29T10:00:00Z")], 0, now).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name.slice.iso(), "2026-11-29T09:00:00Z");
        assert_eq!(e.open_files(), 2);
    }

    #[test]
    fn records_outside_the_window_go_to_one_out_of_window_file_read_again_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let now = t("2026-11-29T10:10:00Z");
        let (mut e, _) = Exporter::start(&c, ExportStats::new(), now).unwrap();
        let far = [rec("old", "1970-01-01T00:00:00Z"), rec("week", "2026-11-22T10:09:59Z"), rec("ahead", "2026-11-29T11:10:01Z")];
        let near = [rec("in", "2026-11-22T10:10:00Z"), rec("soon", "2026-11-29T11:10:00Z")];
        e.write(far.iter().chain(&near), 0, now).unwrap();
        e.sync().unwrap();
        assert_eq!(e.stats().snapshot().totals.out_of_window, 3);
        assert_eq!(e.stats().snapshot().totals.records, 2);
        assert_eq!(e.open_files(), 3, "two slices and the out-of-window file");
        // kill -9, then the same records read again: skipped.
        drop(e);
        let stats = ExportStats::new();
        let (mut e, r) = Exporter::start(&c, stats.clone(), now + 1000).unwrap();
        assert_eq!((r.files, r.records), (3, 5));
        e.write(far.iter().chain([&rec("new", "1980-01-01T00:00:00Z")]), 0, now).unwrap();
        e.sync().unwrap();
        let totals = stats.snapshot().totals;
        assert_eq!((totals.out_of_window, totals.duplicates_skipped), (1, 3));
        // Published like the slice of its opening: close_after past its end.
        let published = |d: &Path| d.join("out-of-window-2026-11-29T10-00Z.csv.gz").exists();
        e.close_due(t("2026-11-29T10:34:59Z")).unwrap();
        assert!(!published(dir.path()));
        e.close_due(t("2026-11-29T10:35:00Z")).unwrap();
        assert!(published(dir.path()));
        e.close_due(t("2026-11-29T11:20:00Z")).unwrap();
        let files = contents(dir.path());
        let outside: Vec<_> = files.iter().filter(|(n, _)| n.starts_with("out-of-window-")).collect();
        assert_eq!(outside.len(), 1, "{files:?}");
        assert_eq!(outside[0].0, "out-of-window-2026-11-29T10-00Z.csv.gz");
        let mut got = Vec::new();
        read_records(&dir.path().join(&outside[0].0), true, None, |r| {
            got.push(r.get(Field::RequestUuid).to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, ["old", "week", "ahead", "new"]);
        // Later in the same slice of arrival: a second file of that name.
        e.write(&[rec("later", "1990-01-01T00:00:00Z")], 0, t("2026-11-29T10:20:00Z")).unwrap();
        e.sync().unwrap();
        e.close_due(t("2026-11-29T12:00:00Z")).unwrap();
        assert!(dir.path().join("out-of-window-2026-11-29T10-00Z.2.csv.gz").exists());
        assert_eq!(e.open_files(), 0);
    }

    #[test]
    fn offline_keeps_the_range_and_one_of_each_record() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let mut e = Exporter::offline(&c, t("2026-11-29T10:00:00Z"), t("2026-11-29T11:00:00Z"), false).unwrap();
        let recs = [
            rec("x", "2026-11-29T09:59:59Z"),
            rec("a", "2026-11-29T10:00:00Z"),
            rec("a", "2026-11-29T10:00:00Z"),
            rec("b", "2026-11-29T10:59:59Z"),
            rec("y", "2026-11-29T11:00:00Z"),
        ];
        e.write(&recs, 0, 0).unwrap();
        let p = e.close_all(0).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(e.out_of_range, 2);
        let files = contents(dir.path());
        assert_eq!(files[0].1, vec!["a"]);
        assert_eq!(files[1].1, vec!["b"]);
        // Again over the same range: refused unless replacing.
        let err = Exporter::offline(&c, t("2026-11-29T10:00:00Z"), t("2026-11-29T11:00:00Z"), false).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        Exporter::offline(&c, t("2026-11-29T10:00:00Z"), t("2026-11-29T11:00:00Z"), true).unwrap();
        assert!(contents(dir.path()).is_empty());
    }
}
