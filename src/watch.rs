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
//! Symbolic links (anyone who can write in a log directory can plant one,
//! say `access.log.9 -> /etc/shadow`): unless the source says
//! `follow_symlinks`, a scan descends no linked directory, and a matched
//! link is listed only when it leads to a regular file inside the globs'
//! directories ([`Watcher::roots_now`]); the others are reported
//! ([`Scan::links`]) and never read. The tailer opens files through
//! [`crate::tail::open_file`], which checks what it opened, not the path.
//!
//! A scan is bounded: it stops after `max_scan_entries` entries or
//! `max_scan_ms`, or when asked to stop, and says so
//! ([`Scan::incomplete`]): a glob like `/**/*` never walks a whole
//! filesystem for minutes, and a stop is never waited for.
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
use tokio_util::sync::CancellationToken;

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

/// A [`Seen`] for `p` with metadata `m`, when it is a regular file.
fn seen(p: &Path, m: std::fs::Metadata) -> Option<Seen> {
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

/// True when the path names a gzip file.
pub fn is_gz(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "gz")
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Matching files (a file reached by two paths is listed once).
    pub files: Vec<Seen>,
    /// Directories that exist but cannot be listed (permission denied),
    /// with why: their files are invisible, not gone.
    pub dir_errors: Vec<(PathBuf, String)>,
    /// Matched paths that are symbolic links the source does not follow
    /// (they lead outside the globs' directories), with why.
    pub links: Vec<(PathBuf, String)>,
    /// Linked directories the scan did not descend (the globs could reach
    /// files below them).
    pub linked_dirs: Vec<PathBuf>,
    /// Set when the scan stopped before its end (too many entries, too
    /// long, asked to stop): why. What it did not reach is unknown, not
    /// gone.
    pub incomplete: Option<String>,
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
    /// Follow symbolic links wherever they point.
    follow_symlinks: bool,
    /// A scan stops after this many entries.
    max_entries: usize,
    /// A scan stops after this long.
    max_time: Duration,
    /// The globs, for messages.
    globs: Vec<String>,
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
        Ok(Watcher {
            include: build(&cfg.paths)?,
            exclude: build(&cfg.exclude)?,
            roots,
            read_delay: cfg.read_delay,
            follow_symlinks: cfg.follow_symlinks,
            max_entries: cfg.max_scan_entries,
            max_time: cfg.max_scan,
            globs: cfg.paths.clone(),
        })
    }

    /// The globs' directories as they resolve now (symbolic links in the
    /// paths the operator wrote are followed), those that exist: where
    /// files may be read from. `None` when the source follows links
    /// wherever they point.
    pub fn roots_now(&self) -> Option<Vec<PathBuf>> {
        if self.follow_symlinks {
            return None;
        }
        Some(self.roots.iter().filter_map(|(d, _)| std::fs::canonicalize(d).ok()).collect())
    }

    /// Where the link `p` leads when the source may read it: a regular
    /// file inside `roots`. `Err` says why not.
    fn link_target(p: &Path, roots: &[PathBuf]) -> Result<PathBuf, String> {
        let target = std::fs::canonicalize(p).map_err(|e| format!("a symbolic link that does not resolve ({e})"))?;
        if !roots.iter().any(|r| target.starts_with(r)) {
            return Err(format!(
                "a symbolic link to {}, outside the source's directories: not followed (follow_symlinks = true follows links)",
                crate::logsafe::Escaped::path(&target)
            ));
        }
        if !std::fs::metadata(&target).is_ok_and(|m| m.is_file()) {
            return Err("a symbolic link to something other than a regular file: not followed".to_string());
        }
        Ok(target)
    }

    /// True when the path is one of the source's files.
    pub fn matches(&self, p: &Path) -> bool {
        self.include.is_match(p) && !self.exclude.is_match(p)
    }

    /// The directories whose events matter.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(|(d, _)| d.as_path())
    }

    /// Stats one path, following symbolic links (None when it is missing
    /// or not a regular file).
    pub fn stat(p: &Path) -> Option<Seen> {
        seen(p, std::fs::metadata(p).ok()?)
    }

    /// Stats one path as the source may read it: a symbolic link only when
    /// the source follows links, or it leads to a regular file inside the
    /// globs' directories (`roots`, from [`Watcher::roots_now`]).
    pub fn stat_as_source(&self, p: &Path, roots: Option<&[PathBuf]>) -> Option<Seen> {
        let m = std::fs::symlink_metadata(p).ok()?;
        if let Some(roots) = roots {
            // A path through a linked directory (notify watches inside
            // them) is not the source's.
            let dir = std::fs::canonicalize(p.parent()?).ok()?;
            if !roots.iter().any(|r| dir.starts_with(r)) {
                return None;
            }
        }
        match roots {
            Some(roots) if m.file_type().is_symlink() => {
                let target = Watcher::link_target(p, roots).ok()?;
                seen(p, std::fs::metadata(target).ok()?)
            }
            _ if m.file_type().is_symlink() => Watcher::stat(p),
            _ => seen(p, m),
        }
    }

    /// Lists every matching file now, within the scan's bounds and with no
    /// way to stop it early (blocking: run it off the runtime).
    pub fn scan(&self) -> Vec<Seen> {
        self.scan_until(None).files
    }

    /// Lists every matching file now (blocking: run it off the runtime),
    /// with what an operator must hear about: directories that exist but
    /// cannot be listed, links not followed, and whether the scan stopped
    /// early (after `max_scan_entries` entries or `max_scan_ms`, or once
    /// `stop` is cancelled). A directory that does not exist is not an
    /// error here (its files may come later). A file reached by two paths
    /// (a hard link, a link inside the directories) is listed once.
    pub fn scan_until(&self, stop: Option<&CancellationToken>) -> Scan {
        let mut out = Scan::default();
        let mut keys = HashSet::new();
        let roots = self.roots_now();
        let started = Instant::now();
        let mut entries = 0usize;
        'roots: for (dir, depth) in &self.roots {
            for entry in walkdir::WalkDir::new(dir).min_depth(1).max_depth(*depth).follow_links(self.follow_symlinks) {
                entries += 1;
                if entries > self.max_entries {
                    out.incomplete = Some(format!(
                        "scanning {} for `{}` stopped after {} entries (max_scan_entries): narrow the paths, or raise max_scan_entries",
                        dir.display(),
                        self.globs.join("`, `"),
                        self.max_entries
                    ));
                    break 'roots;
                }
                if entries.is_multiple_of(64) {
                    if started.elapsed() > self.max_time {
                        out.incomplete = Some(format!(
                            "scanning {} for `{}` took longer than {} ms (max_scan_ms; {entries} entries so far): narrow the paths, or raise max_scan_ms",
                            dir.display(),
                            self.globs.join("`, `"),
                            self.max_time.as_millis()
                        ));
                        break 'roots;
                    }
                    if stop.is_some_and(CancellationToken::is_cancelled) {
                        out.incomplete = Some("the scan was stopped".to_string());
                        break 'roots;
                    }
                }
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let missing = e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                        if !missing {
                            let at = e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.clone());
                            let why = e.io_error().map_or_else(|| e.to_string(), ToString::to_string);
                            out.dir_errors.push((at, why));
                        }
                        continue;
                    }
                };
                let s = match (&roots, entry.file_type()) {
                    (_, t) if t.is_file() => {
                        if !self.matches(entry.path()) {
                            continue;
                        }
                        entry.metadata().ok().and_then(|m| seen(entry.path(), m))
                    }
                    (Some(roots), t) if t.is_symlink() => {
                        let is_dir = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
                        if is_dir {
                            if entry.depth() < *depth {
                                out.linked_dirs.push(entry.path().to_path_buf());
                            }
                            continue;
                        }
                        if !self.matches(entry.path()) {
                            continue;
                        }
                        match Watcher::link_target(entry.path(), roots) {
                            Ok(target) => std::fs::metadata(target).ok().and_then(|m| seen(entry.path(), m)),
                            Err(why) => {
                                out.links.push((entry.path().to_path_buf(), why));
                                continue;
                            }
                        }
                    }
                    _ => continue,
                };
                if let Some(s) = s {
                    if keys.insert(s.key()) {
                        out.files.push(s);
                    }
                }
            }
        }
        out
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
        let follow = self.follow_symlinks;
        let handler = move |res: notify::Result<notify::Event>| {
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
        };
        // No watches inside linked directories unless the source follows
        // links (their files are not the source's).
        let watcher = notify::RecommendedWatcher::new(handler, notify::Config::default().with_follow_symlinks(follow))?;
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

    fn names(scan: &Scan) -> Vec<String> {
        let mut v: Vec<String> = scan.files.iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn links_out_of_the_directories_are_reported_not_listed_and_linked_directories_not_descended() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, secret) = (dir.path().join("logs"), dir.path().join("secret"));
        std::fs::create_dir_all(logs.join("sub")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("token"), "x\n").unwrap();
        std::fs::write(secret.join("access.log"), "x\n").unwrap();
        std::fs::write(logs.join("access.log.2024"), "x\n").unwrap();
        std::fs::write(logs.join("sub/access.log"), "x\n").unwrap();
        std::os::unix::fs::symlink(secret.join("token"), logs.join("access.log.9")).unwrap();
        std::os::unix::fs::symlink(logs.join("access.log.2024"), logs.join("access.log")).unwrap();
        std::os::unix::fs::symlink(&secret, logs.join("linked")).unwrap();
        let g = format!("{}/**/access*", logs.display());
        let w = Watcher::new(&source(&[&g], &[])).unwrap();
        let scan = w.scan_until(None);
        // The in-directory link and its target are one file, listed once.
        assert_eq!(scan.files.len(), 2, "{:?}", scan.files);
        assert!(names(&scan).contains(&"access.log".to_string()) || names(&scan).contains(&"access.log.2024".to_string()));
        assert_eq!(scan.links.len(), 1, "{:?}", scan.links);
        assert!(scan.links[0].0.ends_with("access.log.9") && scan.links[0].1.contains("outside the source's directories"));
        assert_eq!(scan.linked_dirs, vec![logs.join("linked")]);
        assert!(w.stat_as_source(&logs.join("access.log.9"), w.roots_now().as_deref()).is_none());
        assert!(w.stat_as_source(&logs.join("access.log"), w.roots_now().as_deref()).is_some());
        assert!(w.stat_as_source(&logs.join("linked/access.log"), w.roots_now().as_deref()).is_none(), "not through a linked directory");

        // Opted in: everything is followed.
        let mut cfg = source(&[&g], &[]);
        cfg.follow_symlinks = true;
        let w = Watcher::new(&cfg).unwrap();
        let scan = w.scan_until(None);
        assert!(scan.links.is_empty() && scan.linked_dirs.is_empty());
        assert_eq!(scan.files.len(), 4, "{:?}", scan.files);
        assert!(w.roots_now().is_none());
    }

    #[test]
    fn a_scan_stops_at_its_bound_or_when_asked_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200 {
            std::fs::write(dir.path().join(format!("f{i}.log")), "x\n").unwrap();
        }
        let g = format!("{}/*.log", dir.path().display());
        let mut cfg = source(&[&g], &[]);
        assert!(Watcher::new(&cfg).unwrap().scan_until(None).incomplete.is_none());
        cfg.max_scan_entries = 100;
        let scan = Watcher::new(&cfg).unwrap().scan_until(None);
        let why = scan.incomplete.expect("stopped");
        assert!(why.contains("max_scan_entries") && why.contains("100"), "{why}");
        assert!(scan.files.len() <= 100);
        cfg.max_scan_entries = 1000;
        let stop = CancellationToken::new();
        stop.cancel();
        let scan = Watcher::new(&cfg).unwrap().scan_until(Some(&stop));
        assert!(scan.incomplete.is_some() && scan.files.len() < 200);
    }
}
