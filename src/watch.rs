//! Discovers files and changes; never reads content.
//!
//! A [`Watcher`] knows a source's globs. [`Watcher::scan`] lists the files
//! they match now, with device, inode, size and modification time (a full
//! scan: the safety net, and the whole mechanism in polling mode for NFS
//! and other synced mounts where inotify sees nothing). [`Watcher::events`]
//! subscribes to `notify` events on the globs' directories and turns them
//! into [`Change`]s: cheap hints that a path changed, which the tailer
//! confirms with a `stat`.
//!
//! Invariant: nothing here opens a file for reading; identity (fingerprint)
//! and offsets belong to [`crate::tail`].

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::settings::SourceConfig;

/// Change hints buffered between the notify thread and the tailer. When it
/// is full the notify thread asks for a full rescan instead of blocking.
pub const CHANGE_QUEUE: usize = 4096;

// The notify thread pauses for the source's `read_delay` after it passed
// on a content change, before it reads further events. While nobody reads
// them, the kernel merges repeated `IN_MODIFY` events of one file into
// one, so a file written one line per `write()` costs one read of the
// inotify descriptor and one wake-up per `read_delay` instead of per line:
// this is what makes a trickle of lines cheap. The tailer waits as long
// between two rounds of hints anyway, so nothing arrives later. Other
// events queue up in the kernel meanwhile (up to
// `fs.inotify.max_queued_events`; an overflow becomes a rescan).

/// Events handled within this time after a pause are the ones that queued
/// up during it (or were read with the event that started it): they are
/// passed on without pausing again, so a burst of changes to many files
/// costs one pause, not one per file. The one exception is the change that
/// follows a pause at once and is to the same file as the change that
/// started it: that file is still being written, and pausing again is what
/// keeps it at one wake-up per pause.
const PACE_BURST: Duration = Duration::from_millis(1);

/// When the notify thread pauses (see above).
struct Pacer {
    /// How long (the source's `read_delay`; zero: never).
    pause: Duration,
    /// When the last pause ended.
    ended: Option<Instant>,
    /// The file whose change started it.
    trigger: Option<PathBuf>,
    /// Whether any event was handled since it ended.
    handled_since: bool,
}

impl Pacer {
    fn new(pause: Duration) -> Pacer {
        Pacer { pause, ended: None, trigger: None, handled_since: false }
    }

    /// Called for every event notify hands over, ours or not; `modified`
    /// holds its paths when it is a content change of our files. True when
    /// the thread should pause once the change is passed on.
    fn decide(&mut self, modified: Option<&[PathBuf]>) -> bool {
        self.decide_at(modified, Instant::now())
    }

    fn decide_at(&mut self, modified: Option<&[PathBuf]>, now: Instant) -> bool {
        // Any event counts: after a pause, a file opened, written and
        // closed per line (events that do not merge) is not "still hot"
        // because its write comes second.
        let first_after = !std::mem::replace(&mut self.handled_since, true);
        let Some(paths) = modified else { return false };
        if self.pause.is_zero() {
            return false;
        }
        let pause = match self.ended {
            None => true,
            Some(end) => {
                now.saturating_duration_since(end) > PACE_BURST || (first_after && self.trigger.as_ref().is_some_and(|t| paths.contains(t)))
            }
        };
        if pause {
            self.trigger = paths.first().cloned();
        }
        pause
    }

    /// Pauses (after the change was passed on).
    fn pause(&mut self) {
        std::thread::sleep(self.pause);
        self.ended = Some(Instant::now());
        self.handled_since = false;
    }
}

/// A file as a scan or a stat saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The path it was found at.
    pub path: PathBuf,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes (compressed size for `.gz`).
    pub size: u64,
    /// Modification time, epoch ms.
    pub mtime_ms: i64,
}

impl Seen {
    /// Device and inode: which file this is on disk right now.
    pub fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// True for a gzip-compressed file (`.gz`).
    pub fn is_gz(&self) -> bool {
        is_gz(&self.path)
    }
}

/// True when the path names a gzip file.
pub fn is_gz(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "gz")
}

/// A hint from notify.
#[derive(Debug)]
pub enum Change {
    /// The content of these paths changed (append, truncate).
    Modified(Vec<PathBuf>),
    /// Paths appeared, disappeared or moved: stat them and rescan soon.
    Moved(Vec<PathBuf>),
    /// Events were lost (queue full, watcher error): rescan everything.
    Rescan,
}

/// Matches a source's globs and lists its files.
pub struct Watcher {
    /// Globs of files to follow.
    include: GlobSet,
    /// Globs of files to skip.
    exclude: GlobSet,
    /// Directories to list, with how deep to go.
    roots: Vec<(PathBuf, usize)>,
    /// The source's `read_delay`: how long the notify thread pauses after
    /// a content change.
    read_delay: Duration,
}

fn build(globs: &[String]) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(globset::GlobBuilder::new(g).literal_separator(true).build()?);
    }
    b.build()
}

impl Watcher {
    /// A watcher for one source (globs were validated with the config).
    /// Relative globs are taken relative to the working directory (notify
    /// reports absolute paths).
    pub fn new(cfg: &SourceConfig) -> Result<Watcher, globset::Error> {
        let mut cfg = cfg.clone();
        if let Ok(cwd) = std::env::current_dir() {
            for g in cfg.paths.iter_mut().chain(cfg.exclude.iter_mut()) {
                if g.starts_with('*') && !g.starts_with("**/") {
                    // `*.tmp` matches in any directory (see
                    // `SourceConfig::exclude`); `*` alone never crosses a `/`.
                    *g = format!("**/{g}");
                } else if Path::new(g.as_str()).is_relative() {
                    *g = cwd.join(&*g).to_string_lossy().into_owned();
                }
            }
        }
        let cfg = &cfg;
        let dirs = cfg.watch_dirs();
        let mut roots: Vec<(PathBuf, usize)> = Vec::new();
        for (glob, dir) in cfg.paths.iter().zip(dirs) {
            let rest = Path::new(glob).strip_prefix(&dir).map(|r| r.components().count()).unwrap_or(1);
            let depth = if glob.contains("**") { usize::MAX } else { rest.max(1) };
            match roots.iter_mut().find(|(d, _)| *d == dir) {
                Some((_, d)) => *d = (*d).max(depth),
                None => roots.push((dir, depth)),
            }
        }
        Ok(Watcher { include: build(&cfg.paths)?, exclude: build(&cfg.exclude)?, roots, read_delay: cfg.read_delay })
    }

    /// True when the path is one of the source's files.
    pub fn matches(&self, p: &Path) -> bool {
        self.include.is_match(p) && !self.exclude.is_match(p)
    }

    /// The directories whose events matter.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(|(d, _)| d.as_path())
    }

    /// Stats one path (None when it is missing or not a regular file).
    pub fn stat(p: &Path) -> Option<Seen> {
        let m = std::fs::metadata(p).ok()?;
        if !m.is_file() {
            return None;
        }
        Some(Seen {
            path: p.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ms: m.mtime() * 1000 + m.mtime_nsec() / 1_000_000,
        })
    }

    /// Lists every matching file now (blocking: run it off the runtime).
    /// A path seen twice (hard link) is reported once.
    pub fn scan(&self) -> Vec<Seen> {
        self.scan_reporting().0
    }

    /// [`Watcher::scan`], also returning the directories that exist but
    /// cannot be listed (permission denied), with why: their files are
    /// invisible, which an operator must hear about. A directory that does
    /// not exist is not an error here (its files may come later).
    pub fn scan_reporting(&self) -> (Vec<Seen>, Vec<(PathBuf, String)>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut keys = HashSet::new();
        for (dir, depth) in &self.roots {
            for entry in walkdir::WalkDir::new(dir).min_depth(1).max_depth(*depth).follow_links(true) {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let missing = e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                        if !missing {
                            let at = e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.clone());
                            let why = e.io_error().map_or_else(|| e.to_string(), ToString::to_string);
                            errors.push((at, why));
                        }
                        continue;
                    }
                };
                if !entry.file_type().is_file() || !self.matches(entry.path()) {
                    continue;
                }
                if let Some(s) = Watcher::stat(entry.path()) {
                    if keys.insert(s.key()) {
                        out.push(s);
                    }
                }
            }
        }
        (out, errors)
    }

    /// Subscribes to notify events for the source's directories. Directories
    /// that do not exist yet are skipped (the periodic rescan finds their
    /// files; [`Events::rewatch`] retries). Events for other files are
    /// filtered out here.
    pub fn events(self: &Arc<Self>) -> notify::Result<Events> {
        let (tx, rx) = mpsc::channel(CHANGE_QUEUE);
        let lost = Arc::new(AtomicBool::new(false));
        let this = self.clone();
        let lost2 = lost.clone();
        let tx2 = tx.clone();
        let mut pacer = Pacer::new(self.read_delay);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let change = match res {
                Ok(ev) => {
                    let need_rescan = ev.need_rescan();
                    let paths: Vec<PathBuf> = ev.paths.into_iter().filter(|p| this.matches(p)).collect();
                    match ev.kind {
                        // Opens and closes (ours too): not a change.
                        EventKind::Access(_) => {
                            pacer.decide(None);
                            return;
                        }
                        _ if paths.is_empty() => {
                            if need_rescan {
                                Change::Rescan
                            } else {
                                pacer.decide(None);
                                return;
                            }
                        }
                        EventKind::Modify(notify::event::ModifyKind::Data(_)) | EventKind::Modify(notify::event::ModifyKind::Any) => {
                            Change::Modified(paths)
                        }
                        EventKind::Modify(notify::event::ModifyKind::Metadata(_)) => Change::Modified(paths),
                        _ => Change::Moved(paths),
                    }
                }
                Err(_) => Change::Rescan,
            };
            let pause = pacer.decide(match &change {
                Change::Modified(paths) => Some(paths),
                _ => None,
            });
            if tx2.try_send(change).is_err() {
                lost2.store(true, Ordering::Release);
            }
            // This runs on notify's own thread: pausing it leaves the next
            // events in the kernel, which merges a file's repeated changes.
            if pause {
                pacer.pause();
            }
        })?;
        let mut ev = Events { watcher, rx, lost, watched: HashSet::new(), _tx: tx };
        ev.rewatch(self);
        Ok(ev)
    }
}

/// A live notify subscription.
pub struct Events {
    /// The notify watcher; dropping it stops the events.
    watcher: notify::RecommendedWatcher,
    /// Changes from the notify thread.
    rx: mpsc::Receiver<Change>,
    /// Set when a change could not be queued.
    lost: Arc<AtomicBool>,
    /// Directories watched so far.
    watched: HashSet<PathBuf>,
    /// Keeps the channel open even when notify stops.
    _tx: mpsc::Sender<Change>,
}

impl Events {
    /// Watches the directories not watched yet (e.g. created since).
    pub fn rewatch(&mut self, w: &Watcher) {
        for (dir, depth) in &w.roots {
            if self.watched.contains(dir) {
                continue;
            }
            let mode = if *depth > 1 { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
            match self.watcher.watch(dir, mode) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) => {
                    tracing::debug!(dir = %crate::logsafe::Escaped::path(dir), error = %e, "cannot watch directory yet; rescans will find its files")
                }
            }
        }
    }

    /// The next change; `Rescan` when events were lost.
    pub async fn next(&mut self) -> Change {
        if self.lost.swap(false, Ordering::AcqRel) {
            return Change::Rescan;
        }
        self.rx.recv().await.unwrap_or(Change::Rescan)
    }

    /// A change already queued, without waiting.
    pub fn try_next(&mut self) -> Option<Change> {
        if self.lost.swap(false, Ordering::AcqRel) {
            return Some(Change::Rescan);
        }
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(paths: &[&str], exclude: &[&str]) -> SourceConfig {
        let mut t = format!("paths = {paths:?}\n");
        t.push_str(&format!("exclude = {exclude:?}\n"));
        toml::from_str(&t).unwrap()
    }

    #[test]
    fn the_notify_thread_pauses_once_per_round_of_a_hot_file() {
        let (a, b) = (PathBuf::from("/l/a.log"), PathBuf::from("/l/b.log"));
        let ms = Duration::from_millis;
        let mut p = Pacer::new(ms(50));
        let t0 = Instant::now();
        // A change after a quiet spell: passed on, then a pause.
        assert!(p.decide_at(Some(std::slice::from_ref(&a)), t0));
        p.ended = Some(t0 + ms(50));
        p.handled_since = false;
        // The merged change of the same file read right after: still being
        // written, so one more pause (one read per round).
        assert!(p.decide_at(Some(std::slice::from_ref(&a)), t0 + ms(50)));
        p.ended = Some(t0 + ms(100));
        p.handled_since = false;
        // What queued up during a pause for other files (or for this one,
        // behind other events): handled at once, no pause per event.
        assert!(!p.decide_at(Some(std::slice::from_ref(&b)), t0 + ms(100)));
        assert!(!p.decide_at(Some(std::slice::from_ref(&a)), t0 + ms(100)));
        assert!(!p.decide_at(None, t0 + ms(100)));
        assert!(!p.decide_at(Some(std::slice::from_ref(&b)), t0 + ms(100)));
        // A change arriving later, in real time: a pause again.
        assert!(p.decide_at(Some(std::slice::from_ref(&b)), t0 + ms(110)));
        // Other events never pause.
        assert!(!p.decide_at(None, t0 + ms(500)));
    }

    #[test]
    fn a_file_opened_written_and_closed_per_line_does_not_pause_per_event() {
        // Its events (open, modify, close) do not merge: after a pause the
        // queue holds many, read in one go.
        let a = PathBuf::from("/l/a.log");
        let mut p = Pacer::new(Duration::from_millis(50));
        let t0 = Instant::now();
        assert!(p.decide_at(Some(std::slice::from_ref(&a)), t0));
        p.ended = Some(t0);
        p.handled_since = false;
        for _ in 0..100 {
            assert!(!p.decide_at(None, t0)); // open
            assert!(!p.decide_at(Some(std::slice::from_ref(&a)), t0)); // modify
            assert!(!p.decide_at(None, t0)); // close
        }
    }

    #[test]
    fn a_zero_read_delay_never_pauses() {
        let mut p = Pacer::new(Duration::ZERO);
        assert!(!p.decide_at(Some(&[PathBuf::from("/l/a.log")]), Instant::now()));
    }

    #[test]
    fn scan_lists_matching_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("access.log"), "x").unwrap();
        std::fs::write(d.join("access.log.1"), "x").unwrap();
        std::fs::write(d.join("other.txt"), "x").unwrap();
        std::fs::write(d.join("access.skip"), "x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/access.log"), "x").unwrap();
        let g = format!("{}/access*", d.display());
        let x = format!("{}/*.skip", d.display());
        let w = Watcher::new(&source(&[&g], &[&x])).unwrap();
        let mut names: Vec<String> = w.scan().iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["access.log", "access.log.1"]);
    }

    #[test]
    fn an_exclude_starting_with_a_wildcard_matches_in_any_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("access.log.1"), "x").unwrap();
        std::fs::write(d.join("access.log.1.gz.tmp"), "x").unwrap();
        let g = format!("{}/access*.log*", d.display());
        let w = Watcher::new(&source(&[&g], &["*.tmp"])).unwrap();
        let names: Vec<String> = w.scan().iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["access.log.1"]);
        assert!(!w.matches(&d.join("access.log.2.gz.tmp")));
    }

    #[test]
    fn recursive_glob_descends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/x.log"), "x").unwrap();
        let g = format!("{}/**/*.log", d.display());
        let w = Watcher::new(&source(&[&g], &[])).unwrap();
        assert_eq!(w.scan().len(), 1);
    }
}
