//! Discovers files and changes; never reads content.
//!
//! A [`Watcher`] knows a source's globs. [`Watcher::scan`] lists the files
//! they match now, with device, inode, size and modification time (a full
//! scan: the safety net, and the whole mechanism in polling mode for NFS
//! and other synced mounts where inotify sees nothing). [`Watcher::events`]
//! subscribes to inotify events on the globs' directories (read on the
//! runtime, see [`Events`]) and turns them into [`Change`]s: cheap hints
//! that a path changed, which the tailer confirms with a `stat`.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use globset::{GlobSet, GlobSetBuilder};
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio_util::sync::CancellationToken;

use crate::settings::SourceConfig;

/// Changes read from inotify and not yet handed to the tailer, at most:
/// beyond, they collapse into one [`Change::Rescan`].
pub const CHANGE_QUEUE: usize = 4096;

/// Bytes of inotify events read at once.
const EVENT_BUFFER: usize = 16 * 1024;

/// The largest inotify event: its header and a name of `NAME_MAX` bytes
/// with its terminating NUL (a read that leaves this much room took every
/// event queued then).
const MAX_EVENT_BYTES: usize = 16 + 256;

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

/// A hint from inotify.
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
    /// Relative globs are taken relative to the working directory (events
    /// are matched on absolute paths).
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
            // A path through a linked directory (watched when the source
            // follows links) is not the source's.
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

    /// Subscribes to inotify events for the source's directories.
    /// Directories that do not exist yet are skipped (the periodic rescan
    /// finds their files; [`Events::rewatch`] retries). Events for other
    /// files are filtered out as they are read. Must be called on the
    /// runtime (the descriptor is registered with its reactor).
    pub fn events(self: &Arc<Self>) -> std::io::Result<Events> {
        let stream = Inotify::init()?.into_event_stream(vec![0; EVENT_BUFFER])?;
        let mut ev = Events {
            fd: Registration::Live(stream),
            buf: vec![0; EVENT_BUFFER],
            raw: Vec::new(),
            dirs: HashMap::new(),
            watched: HashMap::new(),
            queue: VecDeque::new(),
            watcher: self.clone(),
            last_file: None,
        };
        ev.rewatch(self);
        Ok(ev)
    }
}

/// What is watched for a source's directories: content changes of files
/// (`IN_MODIFY`, `IN_ATTRIB`), names appearing, going and moving, and the
/// directory itself going away. Not opens and closes (the tailer's own
/// reads would wake it).
fn dir_mask(follow_symlinks: bool) -> WatchMask {
    let mask = WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR;
    if follow_symlinks {
        mask
    } else {
        mask | WatchMask::DONT_FOLLOW
    }
}

/// A watched directory.
struct WatchedDir {
    /// Its path.
    path: PathBuf,
    /// Its watch.
    wd: WatchDescriptor,
    /// Levels of subdirectories below it that are watched too (what the
    /// globs can reach): 0 for a directory whose files the globs match
    /// directly and no deeper.
    below: usize,
}

/// One inotify event as read, before it becomes a [`Change`].
struct RawEvent {
    wd: i32,
    mask: EventMask,
    name: Option<std::ffi::OsString>,
}

/// The inotify descriptor, registered with the reactor or not.
enum Registration {
    /// Registered (the inotify crate's stream: tokio's `AsyncFd` on the
    /// descriptor): readiness wakes the task waiting in [`Events::next`].
    Live(EventStream<Vec<u8>>),
    /// Not registered ([`Events::pause`]): events queue up in the kernel
    /// and wake nobody.
    Paused(Inotify),
    /// Registering failed: no events (rescans only).
    Broken,
}

impl Registration {
    fn watches(&self) -> Option<Watches> {
        match self {
            Registration::Live(s) => Some(s.watches()),
            Registration::Paused(i) => Some(i.watches()),
            Registration::Broken => None,
        }
    }
}

/// A live inotify subscription, read on the runtime.
///
/// The descriptor is registered with the runtime's reactor: the task that
/// waits in [`Events::next`] is woken by the kernel's readiness itself,
/// with no thread of its own in between. While nobody reads it, the kernel
/// merges a file's repeated `IN_MODIFY` events into the one already
/// queued, without a new wake-up: a reader that waits before it reads
/// again (the tailer's `read_delay`) gets a writer's line-by-line appends
/// as one event. While a file is being written, [`Events::pause`] takes
/// the descriptor out of the reactor altogether, so that even the first
/// event after a read wakes nobody: the tailer then reads what queued up
/// once per round, on its own timer ([`Events::try_next`]).
pub struct Events {
    /// The inotify descriptor.
    fd: Registration,
    /// Events are read into this while paused.
    buf: Vec<u8>,
    /// Events read, not yet turned into changes.
    raw: Vec<RawEvent>,
    /// Watched directories by watch descriptor.
    dirs: HashMap<i32, WatchedDir>,
    /// Watch descriptors by directory path.
    watched: HashMap<PathBuf, i32>,
    /// Changes read and not yet handed out.
    queue: VecDeque<Change>,
    /// The source's globs.
    watcher: Arc<Watcher>,
    /// The last file an event named, and whether the globs match it: a
    /// file written line by line is named by every round's event, and
    /// matching its path against the globs each time cost as much as the
    /// rest of reading the event.
    last_file: Option<LastFile>,
}

/// A file named by an event (its directory's watch and its name), with
/// its path when the globs match it.
struct LastFile {
    wd: i32,
    name: std::ffi::OsString,
    path: Option<PathBuf>,
}

impl Events {
    /// Watches the directories not watched yet (e.g. created since), and
    /// below each one the subdirectories its globs can reach. Unless the
    /// source follows links, no linked directory is watched (its files are
    /// not the source's).
    pub fn rewatch(&mut self, w: &Watcher) {
        for (dir, depth) in &w.roots {
            if self.watched.contains_key(dir) {
                continue;
            }
            // A root may be a link the operator wrote: followed.
            if let Err(e) = self.watch_tree(dir, depth.saturating_sub(1), true) {
                tracing::debug!(dir = %crate::logsafe::Escaped::path(dir), error = %e, "cannot watch directory yet; rescans will find its files");
            }
        }
    }

    /// Watches `dir` and the subdirectories up to `below` levels under it
    /// (a walk bounded like a scan: what it does not reach, rescans find).
    fn watch_tree(&mut self, dir: &Path, below: usize, follow_top: bool) -> std::io::Result<()> {
        self.watch_one(dir, below, follow_top || self.watcher.follow_symlinks)?;
        if below == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let walk = walkdir::WalkDir::new(dir).min_depth(1).max_depth(below).follow_links(self.watcher.follow_symlinks);
        for (n, entry) in walk.into_iter().enumerate() {
            if n >= self.watcher.max_entries || started.elapsed() > self.watcher.max_time {
                tracing::debug!(dir = %crate::logsafe::Escaped::path(dir), "stopped adding watches below this directory (max_scan_entries or max_scan_ms); rescans find the rest");
                break;
            }
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_dir() {
                let _ = self.watch_one(entry.path(), below - entry.depth(), self.watcher.follow_symlinks);
            }
        }
        Ok(())
    }

    fn watch_one(&mut self, dir: &Path, below: usize, follow: bool) -> std::io::Result<()> {
        let Some(mut watches) = self.fd.watches() else { return Err(std::io::Error::other("inotify is not available")) };
        let wd = watches.add(dir, dir_mask(follow))?;
        let id = wd.get_watch_descriptor_id();
        match self.dirs.get_mut(&id) {
            // The same directory by another path (a link): one watch.
            Some(d) => d.below = d.below.max(below),
            None => {
                // A watch descriptor may be one used before.
                self.last_file = None;
                self.dirs.insert(id, WatchedDir { path: dir.to_path_buf(), wd, below });
                self.watched.insert(dir.to_path_buf(), id);
            }
        }
        Ok(())
    }

    /// Forgets the watches of `dir` and of every directory under it
    /// (removing them from inotify unless the kernel did: `gone`).
    fn unwatch_tree(&mut self, dir: &Path, gone: bool) {
        self.last_file = None;
        let ids: Vec<i32> = self.dirs.iter().filter(|(_, d)| d.path.starts_with(dir)).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(d) = self.dirs.remove(&id) {
                self.watched.remove(&d.path);
                if let Some(mut watches) = self.fd.watches().filter(|_| !gone || d.path != dir) {
                    let _ = watches.remove(d.wd);
                }
            }
        }
    }

    /// Stops waking anyone until the next [`Events::next`]: events queue
    /// up in the kernel (a file's repeated changes merge into one), to be
    /// read with [`Events::try_next`]. The tailer pauses while a file is
    /// being written, between its rounds.
    pub fn pause(&mut self) {
        if !matches!(self.fd, Registration::Live(_)) {
            return;
        }
        let Registration::Live(mut stream) = std::mem::replace(&mut self.fd, Registration::Broken) else { return };
        // Events the stream read but did not hand out yet are kept.
        while let Some(Some(r)) = futures_util::FutureExt::now_or_never(stream.next()) {
            match r {
                Ok(ev) => self.raw.push(RawEvent { wd: ev.wd.get_watch_descriptor_id(), mask: ev.mask, name: ev.name }),
                Err(_) => self.raw.push(RawEvent { wd: -1, mask: EventMask::Q_OVERFLOW, name: None }),
            }
        }
        self.fd = Registration::Paused(stream.into_inotify());
        self.decode();
    }

    /// The next change (`Rescan` when events were lost or inotify
    /// failed), waiting for it.
    pub async fn next(&mut self) -> Change {
        if let Registration::Paused(_) = self.fd {
            if let Registration::Paused(inotify) = std::mem::replace(&mut self.fd, Registration::Broken) {
                match inotify.into_event_stream(vec![0; EVENT_BUFFER]) {
                    Ok(stream) => self.fd = Registration::Live(stream),
                    Err(e) => {
                        tracing::warn!(error = %e, "file events unavailable from now on; relying on rescans");
                        return Change::Rescan;
                    }
                }
            }
        }
        loop {
            if let Some(c) = self.queue.pop_front() {
                return c;
            }
            let Registration::Live(stream) = &mut self.fd else { return std::future::pending().await };
            match stream.next().await {
                Some(Ok(ev)) => self.raw.push(RawEvent { wd: ev.wd.get_watch_descriptor_id(), mask: ev.mask, name: ev.name }),
                _ => return Change::Rescan,
            }
            // And whatever else that read brought.
            while let Some(Some(Ok(ev))) = futures_util::FutureExt::now_or_never(stream.next()) {
                self.raw.push(RawEvent { wd: ev.wd.get_watch_descriptor_id(), mask: ev.mask, name: ev.name });
            }
            self.decode();
        }
    }

    /// A change already read or queued in the kernel, without waiting.
    pub fn try_next(&mut self) -> Option<Change> {
        if let Some(c) = self.queue.pop_front() {
            return Some(c);
        }
        match &mut self.fd {
            Registration::Live(stream) => loop {
                match futures_util::FutureExt::now_or_never(stream.next()) {
                    Some(Some(Ok(ev))) => self.raw.push(RawEvent { wd: ev.wd.get_watch_descriptor_id(), mask: ev.mask, name: ev.name }),
                    Some(_) => return Some(Change::Rescan),
                    None => break,
                }
            },
            Registration::Paused(inotify) => match read_raw(inotify, &mut self.buf, &mut self.raw) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Some(Change::Rescan),
            },
            Registration::Broken => return None,
        }
        self.decode();
        self.queue.pop_front()
    }

    /// Every change read or queued in the kernel now, without waiting
    /// (at most `max`): what a round handles. While paused, a read that
    /// left room for more took all there was: no read more to find out.
    pub fn drain(&mut self, changes: &mut Vec<Change>, max: usize) {
        let mut read_all = false;
        while changes.len() < max {
            if let Some(c) = self.queue.pop_front() {
                changes.push(c);
                continue;
            }
            if read_all {
                return;
            }
            let Registration::Paused(inotify) = &mut self.fd else {
                match self.try_next() {
                    Some(c) => changes.push(c),
                    None => return,
                }
                continue;
            };
            match read_raw(inotify, &mut self.buf, &mut self.raw) {
                Ok(all) => {
                    read_all = all;
                    self.decode();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    changes.push(Change::Rescan);
                    return;
                }
            }
        }
    }

    /// Turns the events read into changes: paths the globs match, watches
    /// added for new subdirectories the globs can reach and dropped for
    /// directories gone.
    fn decode(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        for ev in &raw {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                self.push(Change::Rescan);
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd) else { continue };
            if ev.mask.contains(EventMask::IGNORED) {
                let path = dir.path.clone();
                self.unwatch_tree(&path, true);
                continue;
            }
            let Some(name) = &ev.name else {
                // The directory itself deleted or moved: watched again
                // once it is back (rescans call rewatch).
                if ev.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
                    let path = dir.path.clone();
                    self.unwatch_tree(&path, ev.mask.contains(EventMask::DELETE_SELF));
                    self.push(Change::Rescan);
                }
                continue;
            };
            if ev.mask.contains(EventMask::ISDIR) {
                let path = dir.path.join(name);
                let below = dir.below;
                if ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) && below > 0 {
                    // Files may have been created in it before its watch:
                    // a rescan finds them.
                    let _ = self.watch_tree(&path, below - 1, false);
                    self.push(Change::Rescan);
                } else if ev.mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
                    self.unwatch_tree(&path, false);
                }
                continue;
            }
            let path = match &self.last_file {
                Some(last) if last.wd == ev.wd && last.name == *name => last.path.clone(),
                _ => {
                    let path = dir.path.join(name);
                    let path = self.watcher.matches(&path).then_some(path);
                    self.last_file = Some(LastFile { wd: ev.wd, name: name.clone(), path: path.clone() });
                    path
                }
            };
            let Some(path) = path else { continue };
            if ev.mask.intersects(EventMask::MODIFY | EventMask::ATTRIB) {
                // A file written line by line: one change per path.
                if let Some(Change::Modified(paths)) = self.queue.back_mut() {
                    if !paths.contains(&path) {
                        paths.push(path);
                    }
                    continue;
                }
                self.push(Change::Modified(vec![path]));
            } else {
                self.push(Change::Moved(vec![path]));
            }
        }
        self.raw = raw;
        self.raw.clear();
    }

    fn push(&mut self, c: Change) {
        if self.queue.len() >= CHANGE_QUEUE {
            self.queue.clear();
            self.queue.push_back(Change::Rescan);
            return;
        }
        self.queue.push_back(c);
    }
}

/// Reads the events queued now into `out` (without waiting); true when
/// that was all of them (the read left room for one more event of any
/// size).
fn read_raw(inotify: &mut Inotify, buf: &mut [u8], out: &mut Vec<RawEvent>) -> std::io::Result<bool> {
    let mut n = 0usize;
    for ev in inotify.read_events(buf)? {
        n += 1;
        out.push(RawEvent { wd: ev.wd.get_watch_descriptor_id(), mask: ev.mask, name: ev.name.map(ToOwned::to_owned) });
    }
    Ok((n + 1) * MAX_EVENT_BYTES <= buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(paths: &[&str], exclude: &[&str]) -> SourceConfig {
        let mut t = format!("paths = {paths:?}\n");
        t.push_str(&format!("exclude = {exclude:?}\n"));
        toml::from_str(&t).unwrap()
    }

    fn paths(c: &Change) -> Vec<String> {
        let ps = match c {
            Change::Modified(p) | Change::Moved(p) => p,
            Change::Rescan => return vec!["<rescan>".into()],
        };
        ps.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    async fn next(ev: &mut Events) -> Change {
        tokio::time::timeout(Duration::from_secs(10), ev.next()).await.expect("an event within 10 s")
    }

    #[tokio::test]
    async fn events_are_read_on_the_runtime_and_a_paused_file_queues_one_change_however_many_writes() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        let w = Arc::new(Watcher::new(&source(&[&format!("{}/*.log", d.display())], &[])).unwrap());
        let mut ev = w.events().unwrap();
        // Another file, and our own reads (opens and closes): nothing.
        std::fs::write(d.join("other.txt"), "x\n").unwrap();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(d.join("a.log")).unwrap();
        let c = next(&mut ev).await;
        assert!(matches!(c, Change::Moved(_)) && paths(&c) == ["a.log"], "{c:?}");
        let _ = std::fs::read(d.join("a.log")).unwrap();
        f.write_all(b"1\n").unwrap();
        let c = next(&mut ev).await;
        assert!(matches!(c, Change::Modified(_)) && paths(&c) == ["a.log"], "{c:?}");
        assert!(ev.try_next().is_none(), "our read of the file is no change");
        // Paused: a hundred appends wait in the kernel as one change.
        ev.pause();
        for _ in 0..100 {
            f.write_all(b"x\n").unwrap();
        }
        let c = ev.try_next().expect("the queued change");
        assert!(matches!(c, Change::Modified(_)) && paths(&c) == ["a.log"], "{c:?}");
        assert!(ev.try_next().is_none(), "merged into one: {:?}", ev.try_next());
        // Waiting again puts the descriptor back: the next change wakes.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let writer = std::thread::spawn(move || {
            let _ = rx.blocking_recv();
            f.write_all(b"y\n").unwrap();
        });
        let waiting = tokio::spawn(async move {
            let c = next(&mut ev).await;
            (c, ev)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(()).unwrap();
        let (c, mut ev) = waiting.await.unwrap();
        writer.join().unwrap();
        assert!(matches!(c, Change::Modified(_)) && paths(&c) == ["a.log"], "{c:?}");
        // Renamed away and deleted: names that went.
        std::fs::rename(d.join("a.log"), d.join("a.log.1")).unwrap();
        let c = next(&mut ev).await;
        assert!(matches!(c, Change::Moved(_)) && paths(&c) == ["a.log"], "{c:?}");
        std::fs::remove_file(d.join("a.log.1")).unwrap();
        assert!(ev.try_next().is_none(), "a.log.1 is not the source's");
    }

    #[tokio::test]
    async fn files_written_in_turn_each_get_their_own_verdict_from_the_globs() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        let w = Arc::new(Watcher::new(&source(&[&format!("{}/*.log", d.display())], &[&format!("{}/skip.log", d.display())])).unwrap());
        let open = |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(d.join(name)).unwrap();
        let (mut a, mut other, mut skip, mut b) = (open("a.log"), open("other.txt"), open("skip.log"), open("b.log"));
        let mut ev = w.events().unwrap();
        // Each in turn, twice over: the verdict and path remembered for
        // the last file named are never taken for another one.
        for _ in 0..2 {
            for f in [&mut a, &mut other, &mut skip, &mut b] {
                f.write_all(b"x\n").unwrap();
            }
        }
        let mut seen: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.iter().any(|p| p == "b.log") && Instant::now() < deadline {
            seen.extend(paths(&next(&mut ev).await));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Some(c) = ev.try_next() {
            seen.extend(paths(&c));
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen, ["a.log", "b.log"]);
        // A file that goes and comes back under the same name is matched
        // again (a new watch may reuse a descriptor number).
        drop(a);
        std::fs::remove_file(d.join("a.log")).unwrap();
        let mut b = open("a.log");
        b.write_all(b"y\n").unwrap();
        let mut names = Vec::new();
        while !names.iter().any(|n: &String| n == "a.log") {
            names.extend(paths(&next(&mut ev).await));
        }
    }

    #[tokio::test]
    async fn a_recursive_glob_watches_new_subdirectories_and_asks_for_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(d.join("old")).unwrap();
        let w = Arc::new(Watcher::new(&source(&[&format!("{}/**/*.log", d.display())], &[])).unwrap());
        let mut ev = w.events().unwrap();
        std::fs::write(d.join("old/a.log"), "1\n").unwrap();
        let c = next(&mut ev).await;
        assert_eq!(paths(&c), ["a.log"], "a subdirectory that existed is watched: {c:?}");
        while ev.try_next().is_some() {}
        std::fs::create_dir_all(d.join("new/deeper")).unwrap();
        let c = next(&mut ev).await;
        assert!(matches!(c, Change::Rescan), "files may be there before their watch: {c:?}");
        while ev.try_next().is_some() {}
        std::fs::write(d.join("new/deeper/b.log"), "1\n").unwrap();
        let c = next(&mut ev).await;
        assert_eq!(paths(&c), ["b.log"], "{c:?}");
    }

    #[tokio::test]
    async fn a_linked_directory_is_not_watched_unless_the_source_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(d.join("logs")).unwrap();
        std::fs::create_dir_all(d.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("logs/linked")).unwrap();
        let g = format!("{}/logs/**/*.log", d.display());
        let w = Arc::new(Watcher::new(&source(&[&g], &[])).unwrap());
        let mut ev = w.events().unwrap();
        std::fs::write(d.join("elsewhere/x.log"), "1\n").unwrap();
        std::fs::write(d.join("logs/y.log"), "1\n").unwrap();
        let c = next(&mut ev).await;
        assert_eq!(paths(&c), ["y.log"], "nothing from the linked directory: {c:?}");
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
