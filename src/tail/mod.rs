//! Following one source's files: which file is which, where to start, and
//! one [`reader`] task per file being read.
//!
//! The [`Tailer`] of a `[[source]]` keeps every matching file it has seen,
//! keyed by device and inode, with its content [`fingerprint`] (owned by
//! [`crate::checkpoint`], with the offsets it keys). A file's
//! offset belongs to its fingerprint, not to its path or inode, which is
//! what makes the hard cases come out right:
//!
//! - rename rotation: the inode moves to a new path and keeps its reader;
//!   the new file at the old path has a new fingerprint and starts at 0;
//! - copytruncate: the reader sees the file shrink and stops; the copy has
//!   the old fingerprint and continues from the offset already read; the
//!   truncated file's new content is a new fingerprint;
//! - rsync-style replace (new inode, same fingerprint, more content) and a
//!   rotated file compressed later (`.gz`, fingerprinted on its content):
//!   a second file with a fingerprint already being read waits until the
//!   first is finished, then continues from where it ended;
//! - deletion: the file is read to its end through the open descriptor;
//! - inode reuse: a known inode with a different fingerprint is a new file;
//! - a file shorter than the offset already read for its content is one of
//!   two things, decided when it is found and logged once:
//!   - a *copy* (another file, at another path, than the one that was
//!     read up to the offset: a copy in progress, an older partial copy):
//!     it holds nothing new, so no reader starts until it grows past the
//!     offset, and it is read from there (nothing twice);
//!   - the file that was read, *truncated and rewritten* or *replaced* at
//!     its path (by a shorter copy, or a restored state whose offset lies
//!     past its end): its content is read again from its start (nothing
//!     appended is lost; what it held may be delivered twice), counted per
//!     source. A reader that finds the bytes before its offset changed
//!     (rewritten in place and grown past the offset before it looked)
//!     ends the same way.
//!
//!   Where the content was read is the tailer's (the file and path of its
//!   last reader) or, after a restart, the checkpoint's.
//!
//! Each content has one statistics row, named by the file that holds it
//! now (the one being read, else the one that took its path last) and
//! placed with every other row moved by the same change at once
//! ([`crate::telemetry::Telemetry::place_files`]): a rotation never shows
//! two rows under one name. A file in a directory that cannot be listed
//! for a while is unknown, not gone: it keeps its row and its reader.
//!
//! Files are opened with [`open_file`]: unless the source follows
//! symbolic links, what was opened must lie inside the globs'
//! directories, whatever the path looked like when it was scanned.
//!
//! Waking: inotify is read on the runtime ([`crate::watch::Events`], the
//! descriptor in tokio's reactor, no thread of its own). A change after a
//! quiet spell is handled at once; after a round that handled content
//! changes, the descriptor leaves the reactor for the source's
//! `read_delay_ms`, so the kernel merges a writer's line-by-line
//! `IN_MODIFY` events into one and wakes nobody: one wake-up and one
//! inotify read per round, not per line. A round that finds nothing puts
//! the descriptor back. Readers read [`reader::CHUNK_BYTES`] (256 KiB) at a
//! time. At start-up, once every source has scanned, [`left_unread`] logs
//! as `RECORDS LOST` (and counts) checkpointed files gone or no longer
//! matched with bytes unread.
//!
//! Invariant: at most one reader per fingerprint at a time, and a reader
//! for a fingerprint starts where the previous one ended (in memory) or at
//! the durable checkpoint (after a restart).

pub mod left_unread;
pub mod reader;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::checkpoint::fingerprint::{self, Fingerprint, Probe};
use crate::logsafe::Escaped;
use crate::settings::{ReadFrom, SourceConfig};
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::{LeftUnread, SourceStats, Telemetry};
use crate::watch::{Change, Events, Seen, Watcher};
use reader::{Control, Exit, Finished, ReaderShared, Spec};

/// Device and inode.
type Key = (u64, u64);

/// After a file appeared, vanished or moved, a full rescan follows this
/// soon (to find where a renamed file went, or that it is gone).
const RESCAN_AFTER_MOVE: Duration = Duration::from_millis(50);

/// Files without a complete first line held open at most (so that their
/// content can be read if they are deleted before the newline comes): a
/// directory of such files must not use up the process's descriptors.
const MAX_PENDING_OPEN: usize = 256;

/// A file the tailer knows about.
struct Tracked {
    /// Where it was last seen.
    path: PathBuf,
    /// Its fingerprint, once it has a complete first line.
    fp: Option<Fingerprint>,
    /// Size and mtime when last looked at: a change means "look again".
    size: u64,
    /// Modification time (epoch ms) when last looked at.
    mtime_ms: i64,
    /// The running reader's controls.
    reader: Option<Arc<Control>>,
    /// Waiting for the reader of the same fingerprint to finish.
    deferred: bool,
    /// Older than `ignore_older_secs` when found: not read unless it changes.
    ignored: bool,
    /// A file without a complete first line yet, held open so that its
    /// content can still be read if it is deleted before the newline comes.
    pending: Option<File>,
    /// A shorter copy's wait was logged.
    shorter_logged: bool,
    /// When it took its current path (epoch ms): of two files holding one
    /// content, neither read now, the row shows the newer name.
    since_ms: i64,
}

/// What the tailer knows about one fingerprint.
#[derive(Default)]
struct FpInfo {
    /// Offset read up to (sent to the sinks) by the last reader.
    offset: Option<u64>,
    /// The file being read for it now.
    active: Option<Key>,
    /// The file (device and inode) whose reader found it truncated or
    /// rewritten in place: opened again with this content, it is read
    /// again from its start.
    truncated: Option<Key>,
    /// The file its last reader read, and where that file is now.
    read_at: Option<(Key, PathBuf)>,
}

/// Follows the files of one `[[source]]`.
pub struct Tailer {
    /// The source's settings.
    cfg: SourceConfig,
    /// The source's name, for logs.
    name: String,
    /// Globs and scans.
    watcher: Arc<Watcher>,
    /// What readers share.
    shared: ReaderShared,
    /// Per-file statistics.
    telemetry: Telemetry,
    /// Files by device and inode.
    files: HashMap<Key, Tracked>,
    /// Path -> file, to route change events.
    by_path: HashMap<PathBuf, Key>,
    /// Per-fingerprint read state.
    fps: HashMap<Fingerprint, FpInfo>,
    /// Readers report here when they stop (one message each, so the
    /// queue never holds more than the number of readers).
    exit_tx: mpsc::UnboundedSender<Finished>,
    /// See `exit_tx`.
    exit_rx: mpsc::UnboundedReceiver<Finished>,
    /// The reader tasks.
    readers: JoinSet<()>,
    /// The source's statistics: files matched, unreadable, left unread.
    source: SourceStats,
    /// Directories the last scan could not list and links it did not
    /// follow (reported as unreadable until a scan finds them fine).
    scan_problems: HashSet<PathBuf>,
    /// Told once the first scan is done (see [`Tailer::on_first_scan`]).
    first_scan: Option<tokio::sync::oneshot::Sender<()>>,
    /// The per-file statistics rows, by content: a file keeps its row when
    /// it is renamed, rotated or compressed (a `.gz` continues it).
    rows: HashMap<Fingerprint, crate::telemetry::FileStats>,
    /// Limits log lines a directory's content can repeat at every scan
    /// (files not held open).
    file_notes: LogLimit,
}

impl Tailer {
    /// A tailer for one source.
    pub fn new(cfg: SourceConfig, name: String, shared: ReaderShared, telemetry: Telemetry) -> anyhow::Result<Tailer> {
        let watcher = Arc::new(Watcher::new(&cfg)?);
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let source = telemetry.source(&name);
        Ok(Tailer {
            source,
            scan_problems: HashSet::new(),
            first_scan: None,
            rows: HashMap::new(),
            cfg,
            name,
            watcher,
            shared,
            telemetry,
            files: HashMap::new(),
            by_path: HashMap::new(),
            fps: HashMap::new(),
            exit_tx,
            exit_rx,
            readers: JoinSet::new(),
            file_notes: LogLimit::default(),
        })
    }

    /// Has `tx` told once the first scan is done: every file matched then
    /// is known and fingerprinted (the start-up check for files left
    /// unread waits for every source's).
    pub fn on_first_scan(&mut self, tx: tokio::sync::oneshot::Sender<()>) {
        self.first_scan = Some(tx);
    }

    /// Follows the source until `shared.shutdown` is cancelled, then waits
    /// for its readers to stop at a batch boundary.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let shutdown = self.shared.shutdown.clone();
        let mut events: Option<Events> = match self.cfg.poll_interval {
            Some(_) => None,
            None => match self.watcher.events() {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, "file events unavailable; relying on rescans");
                    None
                }
            },
        };
        let every = self.cfg.poll_interval.unwrap_or(self.cfg.rescan_interval);
        tracing::info!(source = %self.name, paths = ?self.cfg.paths, polling = self.cfg.poll_interval.is_some(), "following files");
        let complete = self.full_scan(true, events.as_mut()).await;
        if let Some(tx) = self.first_scan.take() {
            // A scan cut short (stopping, or past its bounds) cannot say
            // which checkpointed files are gone: no verdict then.
            if complete {
                let _ = tx.send(());
            }
        }
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rescan_at: Option<Instant> = None;
        // Rounds. A file written one line per write() gives one inotify
        // event per line, and each would wake this task and the file's
        // reader, and send one batch per line through every sink. A change
        // after a quiet spell is handled at once; after a round that
        // handled content changes, the inotify descriptor is taken out of
        // the reactor (`Events::pause`) for the source's `read_delay`:
        // meanwhile the kernel merges a file's repeated changes into one
        // queued event and wakes nobody, and when the time is up this task
        // reads what queued (one timer wake-up and one read per round,
        // however many lines came). A round that finds nothing puts the
        // descriptor back: the next change is handled at once again. A
        // line waits at most `read_delay` (polling and rescans are not
        // delayed).
        let read_delay = self.cfg.read_delay;
        let mut round_at: Option<Instant> = None;
        loop {
            let changes = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    self.full_scan(false, events.as_mut()).await;
                    crate::ingest::log_reject_summary(&self.shared.reject_log, false);
                    self.log_file_notes_summary();
                    continue;
                }
                _ = sleep_until(rescan_at), if rescan_at.is_some() => {
                    rescan_at = None;
                    self.full_scan(false, events.as_mut()).await;
                    continue;
                }
                Some(fin) = self.exit_rx.recv() => {
                    self.finished(fin).await;
                    continue;
                }
                _ = sleep_until(round_at), if round_at.is_some() => {
                    round_at = None;
                    queued_changes(events.as_mut(), Vec::new())
                }
                change = next_change(&mut events), if events.is_some() && round_at.is_none() => {
                    queued_changes(events.as_mut(), vec![change])
                }
            };
            if changes.is_empty() {
                continue;
            }
            let content = changes.iter().any(|c| matches!(c, Change::Modified(_)));
            if self.changes(changes).await {
                rescan_at.get_or_insert(Instant::now() + RESCAN_AFTER_MOVE);
            }
            if let Some(ev) = events.as_mut().filter(|_| content && !read_delay.is_zero()) {
                ev.pause();
                round_at = Some(Instant::now() + read_delay);
            }
        }
        drop(events);
        while self.readers.join_next().await.is_some() {}
        while let Ok(fin) = self.exit_rx.try_recv() {
            self.note_offset(&fin);
        }
        crate::ingest::log_reject_summary(&self.shared.reject_log, true);
        Ok(())
    }

    /// Handles notify hints; returns true when a rescan should follow.
    async fn changes(&mut self, changes: Vec<Change>) -> bool {
        let mut rescan = false;
        let mut to_stat: Vec<PathBuf> = Vec::new();
        for c in changes {
            match c {
                Change::Modified(paths) => {
                    for p in paths {
                        let reader = self.by_path.get(&p).and_then(|k| self.files.get(k)).and_then(|t| t.reader.clone());
                        match reader {
                            Some(ctl) => ctl.wake.notify_one(),
                            None => to_stat.push(p),
                        }
                    }
                }
                Change::Moved(paths) => {
                    rescan = true;
                    to_stat.extend(paths);
                }
                Change::Rescan => {
                    self.full_scan(false, None).await;
                }
            }
        }
        to_stat.sort();
        to_stat.dedup();
        if !to_stat.is_empty() {
            let w = self.watcher.clone();
            let seen = tokio::task::spawn_blocking(move || {
                let roots = w.roots_now();
                to_stat.iter().filter_map(|p| w.stat_as_source(p, roots.as_deref())).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let (known, new): (Vec<Seen>, Vec<Seen>) = seen.into_iter().partition(|s| self.files.contains_key(&s.key()));
            for s in known {
                self.seen(s, false).await;
            }
            // Renamed files have their names before a new file takes one.
            self.place_rows();
            for s in new {
                self.seen(s, false).await;
            }
            self.place_rows();
        }
        rescan
    }

    /// Lists every file and reconciles: new files, changed files, files
    /// gone from every watched path. A file the scan could not see (its
    /// directory cannot be listed, or the scan stopped early) is unknown,
    /// not gone: it keeps its reader and its row. True when the scan was
    /// not cut short.
    async fn full_scan(&mut self, startup: bool, events: Option<&mut Events>) -> bool {
        let w = self.watcher.clone();
        let stop = self.shared.shutdown.clone();
        let scan = tokio::task::spawn_blocking(move || w.scan_until(Some(&stop))).await.unwrap_or_default();
        if self.shared.shutdown.is_cancelled() {
            // Stopping: a scan cut short says nothing about what is gone.
            return false;
        }
        let complete = scan.incomplete.is_none();
        let present: HashSet<Key> = scan.files.iter().map(Seen::key).collect();
        let hidden = |p: &Path| scan.incomplete.is_some() || scan.dir_errors.iter().any(|(d, _)| p.starts_with(d));
        let unknown: HashSet<Key> = self.files.iter().filter(|(k, t)| !present.contains(k) && hidden(&t.path)).map(|(k, _)| *k).collect();
        let now = crate::time::now_ms();
        self.source.scanned(present.len() + unknown.len(), now);
        self.note_scan_problems(&scan);
        let (known, new): (Vec<Seen>, Vec<Seen>) = scan.files.into_iter().partition(|s| self.files.contains_key(&s.key()));
        for s in known {
            self.seen_scanned(s, startup, now).await;
        }
        // Renamed files have their names before a new file takes one.
        self.place_rows();
        for s in new {
            self.seen_scanned(s, startup, now).await;
        }
        let missing: Vec<Key> = self.files.keys().filter(|k| !present.contains(k) && !unknown.contains(k)).copied().collect();
        for key in missing {
            let Some(t) = self.files.get(&key) else { continue };
            match &t.reader {
                Some(ctl) => {
                    if !ctl.gone.swap(true, Ordering::AcqRel) {
                        tracing::debug!(file = %Escaped::path(&t.path), "file gone from the watched paths; reading it to the end");
                    }
                    ctl.wake.notify_one();
                }
                None => match self.files.get_mut(&key).and_then(|t| t.pending.take()) {
                    Some(file) => self.pending_gone(key, file).await,
                    None => {
                        self.left_unread_now(key, now).await;
                        self.forget(key);
                    }
                },
            }
        }
        // A file the scan could not see is still read as far as it grows
        // (its reader holds it open).
        for key in &unknown {
            if let Some(ctl) = self.files.get(key).and_then(|t| t.reader.as_ref()) {
                ctl.wake.notify_one();
            }
        }
        self.drop_orphan_rows();
        self.place_rows();
        self.shared.checkpoints.prune(now);
        if let Some(ev) = events {
            ev.rewatch(&self.watcher);
        }
        complete
    }

    /// A file a full scan saw, with its checkpoint's last sighting.
    async fn seen_scanned(&mut self, s: Seen, startup: bool, now_ms: i64) {
        let (key, path, size) = (s.key(), s.path.to_string_lossy().into_owned(), s.size);
        self.seen(s, startup).await;
        if let Some(fp) = self.files.get(&key).and_then(|t| t.fp) {
            self.shared.checkpoints.seen(fp, &path, key.0, key.1, size, now_ms);
        }
    }

    fn forget(&mut self, key: Key) {
        if let Some(t) = self.files.remove(&key) {
            self.source.forget(&t.path.to_string_lossy());
            if self.by_path.get(&t.path) == Some(&key) {
                self.by_path.remove(&t.path);
            }
        }
    }

    /// The statistics row of the content `fp`, created at `path` on first
    /// use (an existing row is placed by [`Tailer::place_rows`]).
    fn row(&mut self, fp: Fingerprint, path: &str) -> crate::telemetry::FileStats {
        if let Some(r) = self.rows.get(&fp) {
            return r.clone();
        }
        let r = self.telemetry.file_with_id(&format!("{}/{fp}", self.name), path);
        self.rows.insert(fp, r.clone());
        r
    }

    /// Names every row by the file that holds its content now: the one
    /// being read, else the one that took its path last; a content no
    /// file holds at a watched path any more (deleted or moved out of the
    /// globs while it is read to its end) is marked gone. All rows that
    /// change move at once.
    fn place_rows(&mut self) {
        let mut best: HashMap<Fingerprint, (bool, i64, &PathBuf)> = HashMap::new();
        for (k, t) in &self.files {
            let Some(fp) = t.fp else { continue };
            if self.by_path.get(&t.path) != Some(k) || t.reader.as_ref().is_some_and(|c| c.gone.load(Ordering::Acquire)) {
                continue;
            }
            let active = self.fps.get(&fp).and_then(|i| i.active) == Some(*k);
            let rank = (active, t.since_ms);
            match best.get(&fp) {
                Some(&(a, s, _)) if (a, s) >= rank => {}
                _ => {
                    best.insert(fp, (active, t.since_ms, &t.path));
                }
            }
        }
        let mut places = Vec::new();
        for (fp, row) in &self.rows {
            match best.get(fp) {
                Some((_, _, path)) => {
                    let path = path.to_string_lossy();
                    if row.is_gone() || row.path() != path {
                        places.push((row.clone(), path.into_owned(), false));
                    }
                }
                None if !row.is_gone() => places.push((row.clone(), row.path(), true)),
                None => {}
            }
        }
        if !places.is_empty() {
            self.telemetry.place_files(&places);
        }
    }

    /// Removes the rows of contents no file holds any more (deleted, or
    /// gone from the globs); their counters stay in the totals.
    fn drop_orphan_rows(&mut self) {
        let held: HashSet<Fingerprint> = self.files.values().filter_map(|t| t.fp).collect();
        let orphans: Vec<Fingerprint> = self.rows.keys().filter(|fp| !held.contains(fp)).copied().collect();
        for fp in orphans {
            if let Some(r) = self.rows.remove(&fp) {
                self.telemetry.remove_file(&r.id);
            }
        }
    }

    /// What the scan could not do is shown per source until a scan does
    /// it: directories it could not list, links it did not follow, where
    /// it stopped early.
    fn note_scan_problems(&mut self, scan: &crate::watch::Scan) {
        let mut now: HashSet<PathBuf> = HashSet::new();
        for (dir, why) in &scan.dir_errors {
            now.insert(dir.clone());
            if self.source.set_unlistable(&dir.to_string_lossy(), Some(why.clone())) {
                tracing::warn!(source = %self.name, dir = %Escaped::path(dir), error = %why, "cannot list a directory of the source's paths: its files are not followed until it can be (they are not taken for gone)");
            }
        }
        if let Some(why) = &scan.incomplete {
            if let Some(dir) = self.watcher.dirs().next().map(Path::to_path_buf) {
                now.insert(dir.clone());
                if self.source.set_unlistable(&dir.to_string_lossy(), Some(why.clone())) {
                    tracing::warn!(source = %self.name, error = %Escaped(why), "the scan of the source's paths stopped early: files beyond are not followed");
                }
            }
        }
        for (link, why) in &scan.links {
            now.insert(link.clone());
            if self.source.set_unreadable(&link.to_string_lossy(), Some(why.clone())) {
                tracing::warn!(source = %self.name, file = %Escaped::path(link), "not reading {}: {}", Escaped::path(link), Escaped(why));
            }
        }
        for gone in self.scan_problems.difference(&now) {
            self.source.forget(&gone.to_string_lossy());
        }
        self.scan_problems = now;
    }

    /// A fingerprinted file with no reader left the globs: if it had bytes
    /// not read yet (appended after its reader went idle, then rotated
    /// where no glob matches), they are lost; say so and count it.
    async fn left_unread_now(&mut self, key: Key, now_ms: i64) {
        let Some(t) = self.files.get(&key) else { return };
        let (Some(fp), false) = (t.fp, crate::watch::is_gz(&t.path)) else { return };
        let offset = self.fps.get(&fp).and_then(|i| i.offset).or_else(|| self.shared.checkpoints.resume_offset(fp)).unwrap_or(0);
        let (path, known) = (t.path.clone(), t.size);
        let entry = crate::checkpoint::Entry {
            fingerprint: fp,
            offset,
            path: path.to_string_lossy().into_owned(),
            dev: key.0,
            ino: key.1,
            last_seen_ms: 0,
            size: if known == u64::MAX { 0 } else { known },
            gz_complete: None,
            anchor: None,
        };
        let sources = [self.cfg.clone()];
        let found = tokio::task::spawn_blocking(move || left_unread::find(&[entry], &sources, 1, now_ms)).await.unwrap_or_default();
        for (_, l) in found {
            self.report_left_unread(l);
        }
    }

    /// Logs (loudly) and counts a file left unread.
    pub(crate) fn report_left_unread(&self, l: LeftUnread) {
        tracing::warn!(source = %self.name, file = %Escaped(&l.path), "{}", Escaped(&left_unread::message(&self.name, &l)));
        self.source.left_unread(l);
    }

    /// A file as a scan or stat saw it.
    async fn seen(&mut self, s: Seen, startup: bool) {
        let key = s.key();
        match self.files.get_mut(&key) {
            Some(t) => {
                let moved = t.path != s.path;
                if moved {
                    self.source.forget(&t.path.to_string_lossy());
                    if self.by_path.get(&t.path) == Some(&key) {
                        self.by_path.remove(&t.path);
                    }
                    if let Some(ctl) = &t.reader {
                        tracing::debug!(from = %Escaped::path(&t.path), to = %Escaped::path(&s.path), "file rotated (renamed)");
                        ctl.rotated.store(true, Ordering::Release);
                        ctl.wake.notify_one();
                    }
                    t.path = s.path.clone();
                    t.since_ms = crate::time::now_ms();
                    if let Some(info) = t.fp.and_then(|fp| self.fps.get_mut(&fp)) {
                        if let Some((k, p)) = &mut info.read_at {
                            if *k == key {
                                p.clone_from(&s.path);
                            }
                        }
                    }
                    // Its row follows (Tailer::place_rows).
                }
                self.by_path.insert(s.path.clone(), key);
                // A file not fingerprinted yet is looked at again when it
                // moves, too (it may never have been opened).
                let changed = t.size != s.size || t.mtime_ms != s.mtime_ms || (t.fp.is_none() && moved && !t.ignored);
                t.size = s.size;
                t.mtime_ms = s.mtime_ms;
                if let Some(ctl) = &t.reader {
                    if changed {
                        ctl.wake.notify_one();
                    }
                    return;
                }
                if t.deferred || !changed {
                    return;
                }
                t.ignored = false;
                self.open(key, startup).await;
            }
            None => {
                let older = self.cfg.ignore_older.is_some_and(|d| crate::time::now_ms() - s.mtime_ms > d.as_millis() as i64);
                self.by_path.insert(s.path.clone(), key);
                self.files.insert(
                    key,
                    Tracked {
                        path: s.path,
                        fp: None,
                        size: s.size,
                        mtime_ms: s.mtime_ms,
                        reader: None,
                        deferred: false,
                        ignored: older,
                        pending: None,
                        shorter_logged: false,
                        since_ms: crate::time::now_ms(),
                    },
                );
                if !older {
                    self.open(key, startup).await;
                }
            }
        }
    }

    /// Opens a file, fingerprints it, and starts (or defers) its reader.
    async fn open(&mut self, key: Key, startup: bool) {
        let Some(t) = self.files.get(&key) else { return };
        let path = t.path.clone();
        let max = self.cfg.max_line_bytes;
        let w = self.watcher.clone();
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(File, Probe, u64)>> {
            let file = open_file(&path, w.roots_now().as_deref())?;
            let m = file.metadata()?;
            if (m.dev(), m.ino()) != key {
                // Replaced between stat and open: the next event or scan
                // sees the new file.
                return Ok(None);
            }
            let probe = if crate::watch::is_gz(&path) {
                fingerprint::probe(flate2::read::MultiGzDecoder::new(&file), max)?
            } else {
                fingerprint::probe(&file, max)?
            };
            Ok(Some((file, probe, m.len())))
        })
        .await;
        let (file, probe, size) = match res {
            Ok(Ok(Some(v))) => v,
            Ok(Ok(None)) => {
                // The path now names another file (renamed between the stat
                // and the open): look at this one again at the next scan,
                // wherever it is then.
                if let Some(t) = self.files.get_mut(&key) {
                    t.size = u64::MAX;
                }
                return;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                // Renamed or deleted between the scan and the open (a
                // rotation in progress): routine; the next scan sees where
                // it went.
                if let Some(t) = self.files.get_mut(&key) {
                    tracing::debug!(file = %Escaped::path(&t.path), "file gone before it could be opened");
                    t.size = u64::MAX;
                }
                return;
            }
            Ok(Err(e)) => {
                if let Some(t) = self.files.get_mut(&key) {
                    // Shown per source in /status, /metrics and `lag`; logged
                    // when it starts (or its cause changes), not at every retry.
                    if self.source.set_unreadable(&t.path.to_string_lossy(), Some(e.to_string())) {
                        tracing::warn!(source = %self.name, file = %Escaped::path(&t.path), error = %e, "cannot open file; retried at each scan");
                    } else {
                        tracing::debug!(file = %Escaped::path(&t.path), error = %e, "cannot open file yet");
                    }
                    // Not a size any file has: the next scan sees a change
                    // and tries again (e.g. after EMFILE or EACCES is fixed).
                    t.size = u64::MAX;
                }
                return;
            }
            Err(_) => return,
        };
        let held = match probe {
            Probe::NotYet => self.files.values().filter(|t| t.pending.is_some()).count(),
            Probe::Ready { .. } => 0,
        };
        let Some(t) = self.files.get_mut(&key) else { return };
        // The size as opened is what the reader would find (the scan's
        // may be older).
        t.size = size;
        if self.source.set_unreadable(&t.path.to_string_lossy(), None) {
            tracing::info!(source = %self.name, file = %Escaped::path(&t.path), "file readable again");
        }
        let Probe::Ready { fp, start, len } = probe else {
            // No complete first line yet: looked at again when it changes.
            if t.size > 0 && !crate::watch::is_gz(&t.path) && t.pending.is_none() {
                if held < MAX_PENDING_OPEN {
                    t.pending = Some(file);
                } else if self.file_notes.allow(std::time::Instant::now(), "not_held_open") {
                    tracing::warn!(
                        file = %t.path.display(), held,
                        "too many files without a complete first line are held open; this one is not (if it is deleted before its first newline, its partial line is not read)"
                    );
                }
            }
            return;
        };
        t.pending = None;
        if let Some(old) = t.fp {
            if old != fp {
                // Routine: every rotation that reuses an inode, and every
                // truncate-and-rewrite, lands here.
                tracing::debug!(file = %Escaped::path(&t.path), "different content at a known inode (inode reused or rewritten): a new file");
            }
        }
        t.fp = Some(fp);
        let gz = crate::watch::is_gz(&t.path);
        self.start(key, fp, file, if gz { (0, 0) } else { (start, len) }, startup, false).await;
    }

    /// Starts the reader of a fingerprinted file, or defers it while
    /// another file with the same fingerprint is being read, or decides
    /// what a file shorter than the offset read for its content is (see
    /// the module docs).
    async fn start(&mut self, key: Key, fp: Fingerprint, file: File, fp_range: (u64, u64), startup: bool, gone: bool) {
        let info = self.fps.entry(fp).or_default();
        if let Some(other) = info.active {
            if other != key {
                if let Some(t) = self.files.get_mut(&key) {
                    t.deferred = true;
                    tracing::debug!(file = %Escaped::path(&t.path), "same content as a file being read; continues after it");
                }
                if let Some(ctl) = self.files.get(&other).and_then(|t| t.reader.as_ref()) {
                    ctl.superseded.store(true, Ordering::Release);
                    ctl.wake.notify_one();
                }
                return;
            }
            return;
        }
        let Some(t) = self.files.get_mut(&key) else { return };
        t.deferred = false;
        let gz = crate::watch::is_gz(&t.path);
        if gz && self.shared.checkpoints.gz_done(fp, t.size) {
            tracing::debug!(file = %Escaped::path(&t.path), "gzip file already read to its end; not decompressed again");
            // Shown all the same: a file on disk, read to its end.
            let (path, end) = (t.path.to_string_lossy().into_owned(), self.shared.checkpoints.offset(fp).unwrap_or(0));
            let row = self.row(fp, &path);
            row.set_position(end, end);
            row.set_finished(true);
            return;
        }
        let path_str: Arc<str> = t.path.to_string_lossy().into();
        // resume_offset, not offset: after a reload restarted the tailers,
        // batches still in flight must not be read again.
        let mut offset = match (info.offset, self.shared.checkpoints.resume_offset(fp)) {
            (Some(o), c) => o.max(c.unwrap_or(0)),
            (None, Some(c)) => c,
            (None, None) => {
                let o = if startup && self.cfg.read_from == ReadFrom::End && !gz {
                    let size = t.size;
                    let f = match file.try_clone() {
                        Ok(f) => f,
                        Err(_) => return,
                    };
                    tokio::task::spawn_blocking(move || end_of_last_line(&f, size)).await.unwrap_or(0)
                } else {
                    0
                };
                let now = crate::time::now_ms();
                self.shared.checkpoints.seen(fp, &path_str, key.0, key.1, t.size, now);
                self.shared.checkpoints.start_at(fp, o);
                o
            }
        };
        let rewritten = info.truncated == Some(key);
        if !gz && (offset > t.size || rewritten) {
            // Where the content was read: this tailer's last reader, or the
            // checkpoint's last sighting (after a restart).
            let read_at = info
                .read_at
                .clone()
                .or_else(|| self.shared.checkpoints.location(fp).map(|(path, dev, ino)| ((dev, ino), PathBuf::from(path))));
            let replaced = rewritten || read_at.is_none_or(|(k, p)| k == key || p == t.path);
            if !replaced {
                // A copy, elsewhere, of a file read further (a copy in
                // progress, an older partial copy): nothing in it is new
                // until it grows past the offset; a growth brings it back
                // here.
                if !t.shorter_logged {
                    t.shorter_logged = true;
                    tracing::info!(
                        file = %path_str, offset, size = t.size,
                        "a shorter copy of a file already read further (same first line): nothing new in it; read from the offset if it grows past it"
                    );
                }
                return;
            }
            // The file itself no longer holds what was read: truncated and
            // rewritten, replaced in place by a shorter copy, or a restored
            // state. What it holds now is read again from its start, so
            // nothing appended to it is lost.
            tracing::warn!(
                file = %path_str, offset, size = t.size,
                "file shorter than the offset already read for its content, or rewritten in place (truncated and rewritten, replaced by \
                 a shorter copy, or a restored state): reading it again from its start; records already delivered may come twice"
            );
            self.source.truncated(t.size);
            self.shared.checkpoints.restart_at(fp, 0);
            offset = 0;
        }
        t.shorter_logged = false;
        info.truncated = None;
        info.read_at = Some((key, t.path.clone()));
        info.active = Some(key);
        info.offset = Some(offset);
        let ctl = Arc::new(Control::default());
        ctl.gone.store(gone, Ordering::Release);
        t.reader = Some(ctl.clone());
        let stats = self.row(fp, &path_str);
        stats.set_finished(false);
        tracing::debug!(file = %Escaped(&path_str), fingerprint = %fp, offset, "reading");
        // Resuming where the last reader (or run) stopped: the file must
        // still hold what was read before that offset.
        let anchor = (offset > 0 && self.shared.checkpoints.resume_offset(fp) == Some(offset))
            .then(|| self.shared.checkpoints.resume_anchor(fp))
            .flatten();
        let spec = Spec { key, path: path_str, file, gz, fp, fp_range, offset, anchor };
        let shared = self.shared.clone();
        let tx = self.exit_tx.clone();
        // Everything the reader logs is about this file: one span says so
        // (`file{path=...}`) instead of a field on every line.
        let span = tracing::info_span!("file", path = %Escaped(&spec.path));
        self.readers.spawn(
            async move {
                let fin = reader::run(spec, shared, ctl, stats).await;
                let _ = tx.send(fin);
            }
            .instrument(span),
        );
    }

    /// A file deleted before its first line was complete: its content (one
    /// partial line) is read through the descriptor held open and emitted.
    async fn pending_gone(&mut self, key: Key, file: File) {
        let max = self.cfg.max_line_bytes;
        let res = tokio::task::spawn_blocking(move || {
            let len = file.metadata()?.len().min(max as u64) as usize;
            let mut buf = vec![0u8; len];
            let n = file.read_at(&mut buf, 0)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((file, buf))
        })
        .await;
        let Ok(Ok((file, content))) = res else {
            self.forget(key);
            return;
        };
        let line = content.strip_suffix(b"\r").unwrap_or(&content);
        if line.iter().all(u8::is_ascii_whitespace) {
            self.forget(key);
            return;
        }
        let fp = fingerprint::checksum(line);
        if let Some(t) = self.files.get_mut(&key) {
            t.fp = Some(fp);
        }
        self.start(key, fp, file, (0, 0), false, true).await;
    }

    fn note_offset(&mut self, fin: &Finished) {
        let info = self.fps.entry(fin.fp).or_default();
        info.offset = Some(info.offset.unwrap_or(0).max(fin.offset));
        if info.active == Some(fin.key) {
            info.active = None;
        }
    }

    /// A reader stopped.
    async fn finished(&mut self, fin: Finished) {
        self.note_offset(&fin);
        // Reap finished tasks so the set does not grow.
        while self.readers.try_join_next().is_some() {}
        let mut restat = None;
        if let Some(t) = self.files.get_mut(&fin.key) {
            t.reader = None;
            if !crate::watch::is_gz(&t.path) && fin.size > 0 {
                t.size = fin.size;
            }
            match fin.exit {
                Exit::Gone => {
                    tracing::debug!(file = %Escaped::path(&t.path), offset = fin.offset, "finished a file that is gone");
                    self.forget(fin.key);
                    self.drop_orphan_rows();
                }
                Exit::Truncated => {
                    // Opened again with the same content, it is read again
                    // from its start (see the module docs).
                    self.fps.entry(fin.fp).or_default().truncated = Some(fin.key);
                    restat = Some(t.path.clone());
                    self.forget(fin.key);
                }
                Exit::Complete => {
                    if crate::watch::is_gz(&t.path) {
                        self.shared.checkpoints.mark_gz_complete(fin.fp, t.size, fin.offset);
                        if let Some(row) = self.rows.get(&fin.fp) {
                            row.set_finished(true);
                        }
                    }
                }
                Exit::Idle | Exit::Failed | Exit::Shutdown => {}
            }
        }
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        // A file waiting for this fingerprint continues now.
        let waiting: Vec<Key> = self.files.iter().filter(|(_, t)| t.deferred && t.fp == Some(fin.fp)).map(|(k, _)| *k).collect();
        for key in waiting {
            if let Some(t) = self.files.get_mut(&key) {
                t.deferred = false;
            }
            self.open(key, false).await;
        }
        if let Some(p) = restat {
            let w = self.watcher.clone();
            if let Some(s) = tokio::task::spawn_blocking(move || w.stat_as_source(&p, w.roots_now().as_deref())).await.ok().flatten() {
                self.seen(s, false).await;
            }
        }
        self.place_rows();
    }
}

impl Tailer {
    /// Logs how many file notes the limit kept out of the log, once due.
    fn log_file_notes_summary(&mut self) {
        if let Some(s) = self.file_notes.summary(std::time::Instant::now(), false) {
            tracing::warn!(source = %self.name, suppressed = s.total, by_kind = %s.by_label, "files: {} similar log lines suppressed", s.total);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `changes` and the changes queued behind them (at most 1,024 at a time).
fn queued_changes(events: Option<&mut Events>, mut changes: Vec<Change>) -> Vec<Change> {
    if let Some(ev) = events {
        ev.drain(&mut changes, 1024);
    }
    changes
}

async fn next_change(events: &mut Option<Events>) -> Change {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

/// Opens a source file for reading. With `roots` (the globs' directories
/// as they resolve now: the source does not follow symbolic links
/// wherever they point), what was opened must lie inside them: the check
/// is made on the open descriptor (`/proc/self/fd`), not on the path, so
/// a file swapped for a link, or a directory for a linked one, between
/// the scan and the open is refused all the same. The path's last
/// component is opened with `O_NOFOLLOW`; a link there is followed only
/// when that check can be made. A FIFO or a device is refused without
/// blocking (`O_NONBLOCK`; only regular files are read).
pub fn open_file(path: &Path, roots: Option<&[PathBuf]>) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path);
    let descriptors = Path::new("/proc/self/fd");
    let file = match roots {
        None => open(libc::O_NONBLOCK)?,
        Some(_) => match open(libc::O_NONBLOCK | libc::O_NOFOLLOW) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) && descriptors.is_dir() => open(libc::O_NONBLOCK)?,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "a symbolic link: not followed (follow_symlinks = true follows links)",
                ))
            }
            r => r?,
        },
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if let Some(roots) = roots {
        if let Ok(real) = std::fs::read_link(descriptors.join(file.as_raw_fd().to_string())) {
            if !roots.iter().any(|r| real.starts_with(r)) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "it leads to {} (through a symbolic link), outside the source's directories: not read (follow_symlinks = true follows links)",
                        Escaped::path(&real)
                    ),
                ));
            }
        }
    }
    Ok(file)
}

/// The offset just after the last newline at or before `size`: where
/// `read_from = "end"` starts, so no half line is read.
pub fn end_of_last_line(f: &File, size: u64) -> u64 {
    let from = size.saturating_sub(64 * 1024);
    let mut buf = vec![0u8; (size - from) as usize];
    match f.read_exact_at(&mut buf, from) {
        Ok(()) => memchr::memrchr(b'\n', &buf).map(|i| from + i as u64 + 1).unwrap_or(size),
        Err(_) => size,
    }
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_reads_only_regular_files_inside_the_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, secret) = (dir.path().join("logs"), dir.path().join("secret"));
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(secret.join("sub")).unwrap();
        std::fs::write(logs.join("a.log"), "x\n").unwrap();
        std::fs::write(logs.join("b.log"), "x\n").unwrap();
        std::fs::write(secret.join("token"), "s\n").unwrap();
        std::fs::write(secret.join("sub/c.log"), "s\n").unwrap();
        let roots = vec![std::fs::canonicalize(&logs).unwrap()];
        let roots = Some(roots.as_slice());
        assert!(open_file(&logs.join("a.log"), roots).is_ok());
        // A link inside the directories is followed.
        std::os::unix::fs::symlink(logs.join("b.log"), logs.join("current.log")).unwrap();
        assert!(open_file(&logs.join("current.log"), roots).is_ok());
        // A file swapped for a link to a secret after the scan.
        std::fs::remove_file(logs.join("a.log")).unwrap();
        std::os::unix::fs::symlink(secret.join("token"), logs.join("a.log")).unwrap();
        let e = open_file(&logs.join("a.log"), roots).unwrap_err();
        assert!(e.to_string().contains("outside the source's directories"), "{e}");
        // A directory swapped for a link: the last component is no link,
        // what was opened is checked all the same.
        std::os::unix::fs::symlink(secret.join("sub"), logs.join("sub")).unwrap();
        let e = open_file(&logs.join("sub/c.log"), roots).unwrap_err();
        assert!(e.to_string().contains("outside the source's directories"), "{e}");
        // Followed when the source says so.
        assert!(open_file(&logs.join("a.log"), None).is_ok());
        // A FIFO is refused at once, not waited on.
        let fifo = logs.join("fifo.log");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            let e = open_file(&fifo, roots).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }
}
