//! Per-source statistics: what an operator must see when a `[[source]]`
//! is not doing its job, even though no file row shows it.
//!
//! - files matched by the globs at the last scan, and since when they
//!   match none (a glob that matches nothing is otherwise invisible);
//! - matched files that cannot be opened (permission denied, or a link
//!   the source does not follow), with why, and directories of its paths
//!   that cannot be listed (their files are invisible, not gone);
//! - files found shorter than the offset already read for their content
//!   (truncated and rewritten, replaced by a shorter copy, or behind a
//!   restored state), which are read again from their start;
//! - files left unread: a file with a checkpoint that is gone, or no
//!   longer matched by the globs, while it still had bytes the bridge had
//!   not read (at start-up, after a rotation while the bridge was stopped
//!   with a pattern that misses rotated names, or at run time). Those
//!   records are lost unless the file is put back where the globs see it.
//!
//! The tailer records facts; [`SourceStats::status`] derives the state at
//! a `now_ms` the caller passes (the grace period of `no-files`), like the
//! rest of [`super::status`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::status_settings::StatusSettings;

/// Unreadable files kept by name per source (the count is exact).
pub const MAX_UNREADABLE_SHOWN: usize = 20;

/// Files left unread kept by name per source (the counters are exact).
pub const MAX_LEFT_UNREAD_SHOWN: usize = 20;

/// Statistics of one `[[source]]`. Cheap to clone.
#[derive(Clone)]
pub struct SourceStats(Arc<SourceInner>);

/// The shared state behind [`SourceStats`].
pub struct SourceInner {
    /// The source's name.
    pub name: String,
    /// Files the globs matched at the last scan; -1 before the first scan.
    files_matched: AtomicI64,
    /// Epoch ms since when the globs match no file; 0 while they match some.
    empty_since_ms: AtomicI64,
    /// Matched files that cannot be opened and directories that cannot
    /// be listed: path -> why.
    unreadable: Mutex<BTreeMap<String, Unreadable>>,
    /// Files found shorter than the offset read for their content.
    files_truncated: AtomicU64,
    /// Bytes those files held when found (read again).
    bytes_reread: AtomicU64,
    /// Files left unread since start.
    files_left_unread: AtomicU64,
    /// Bytes known to be left unread since start.
    bytes_left_unread: AtomicU64,
    /// The latest files left unread (bounded).
    left_unread: Mutex<VecDeque<LeftUnread>>,
}

/// Why a path of the source cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unreadable {
    /// The operating system's words, or the policy that refuses it.
    why: String,
    /// A directory that cannot be listed (else a file).
    directory: bool,
}

/// A file left with unread bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftUnread {
    /// Where the file was last seen by the bridge.
    pub path: String,
    /// `gone` (deleted, or nowhere to be found) or `not-matched` (still on
    /// disk, at `now_at`, but no glob of the source matches it).
    pub reason: String,
    /// Where the file is now, when it is still on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_at: Option<String>,
    /// Offset delivered up to, bytes.
    pub offset_bytes: u64,
    /// Bytes after that offset, when known (not for a `.gz`).
    pub unread_bytes: Option<u64>,
    /// When the bridge noticed, epoch ms.
    pub noticed_ms: i64,
}

/// What is wrong with a source, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceState {
    /// Its globs match files and every one of them can be read.
    Ok,
    /// Its globs have matched no file for longer than
    /// `[status] no_files_after_secs`.
    NoFiles,
    /// At least one matched file cannot be opened.
    Unreadable,
}

impl SourceState {
    /// The stable name (`ok`, `no-files`, `unreadable`).
    pub fn name(self) -> &'static str {
        match self {
            SourceState::Ok => "ok",
            SourceState::NoFiles => "no-files",
            SourceState::Unreadable => "unreadable",
        }
    }
}

impl std::fmt::Display for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A matched file that cannot be opened, or a directory of the source's
/// paths that cannot be listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableFile {
    /// The file or directory.
    pub path: String,
    /// Why (the operating system's words: `Permission denied (os error 13)`,
    /// or why a symbolic link is not followed).
    pub error: String,
    /// A directory that cannot be listed: the files in it are not
    /// followed (and not taken for gone) until it can be again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub directory: bool,
}

/// One source in `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The source's name.
    pub name: String,
    /// `ok`, `no-files` or `unreadable`.
    pub state: SourceState,
    /// Files its globs matched at the last scan.
    pub files_matched: u64,
    /// Matched files that cannot be opened.
    pub files_unreadable: u64,
    /// Directories of its paths that cannot be listed.
    #[serde(default)]
    pub dirs_unreadable: u64,
    /// Those files and directories (at most [`MAX_UNREADABLE_SHOWN`]),
    /// with why.
    #[serde(default)]
    pub unreadable: Vec<UnreadableFile>,
    /// How long its globs have matched no file, ms (`null` while they
    /// match some).
    pub no_files_for_ms: Option<i64>,
    /// Files left with unread bytes since start (see the module doc).
    #[serde(default)]
    pub files_left_unread: u64,
    /// Bytes known to be left unread since start.
    #[serde(default)]
    pub bytes_left_unread: u64,
    /// The latest of those files (at most [`MAX_LEFT_UNREAD_SHOWN`]).
    #[serde(default)]
    pub left_unread: Vec<LeftUnread>,
    /// Files found shorter than the offset already read for their content
    /// (truncated and rewritten, replaced by a shorter copy, or behind a
    /// restored state), since start: each was read again from its start.
    #[serde(default)]
    pub files_truncated: u64,
    /// Bytes those files held when found: read again, so records among
    /// them may have been delivered twice.
    #[serde(default)]
    pub bytes_reread: u64,
}

impl SourceStatus {
    /// What an operator must act on, one line each (empty when `ok`).
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        match self.state {
            SourceState::Ok => {}
            SourceState::NoFiles => {
                v.push(format!("source {}: its paths have matched no file for {}s", self.name, self.no_files_for_ms.unwrap_or(0) / 1000))
            }
            SourceState::Unreadable => {
                for d in self.unreadable.iter().filter(|u| u.directory) {
                    v.push(format!(
                        "source {}: directory {} cannot be listed ({}): the files in it are not followed",
                        self.name, d.path, d.error
                    ));
                }
                if self.files_unreadable > 0 {
                    let first =
                        self.unreadable.iter().find(|u| !u.directory).map(|u| format!(" ({}: {})", u.path, u.error)).unwrap_or_default();
                    let files = if self.files_unreadable == 1 { "file" } else { "files" };
                    v.push(format!("source {}: {} {files} cannot be read{first}", self.name, self.files_unreadable));
                }
            }
        }
        v
    }
}

impl SourceStats {
    /// New statistics for the source `name`.
    pub fn new(name: &str) -> SourceStats {
        SourceStats(Arc::new(SourceInner {
            name: name.to_string(),
            files_matched: AtomicI64::new(-1),
            empty_since_ms: AtomicI64::new(0),
            unreadable: Mutex::new(BTreeMap::new()),
            files_truncated: AtomicU64::new(0),
            bytes_reread: AtomicU64::new(0),
            files_left_unread: AtomicU64::new(0),
            bytes_left_unread: AtomicU64::new(0),
            left_unread: Mutex::new(VecDeque::new()),
        }))
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A scan at `now_ms` found `n` matching files.
    pub fn scanned(&self, n: usize, now_ms: i64) {
        self.0.files_matched.store(n as i64, Ordering::Relaxed);
        if n == 0 {
            let _ = self.0.empty_since_ms.compare_exchange(0, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed);
        } else {
            self.0.empty_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// The matched file `path` cannot be opened (`why`), or can again
    /// (`None`). Returns true when this changes what is known (to log once).
    pub fn set_unreadable(&self, path: &str, why: Option<String>) -> bool {
        self.set(path, why, false)
    }

    /// The directory `path` of the source's paths cannot be listed
    /// (`why`), or can again (`None`). Returns true when this changes what
    /// is known (to log once).
    pub fn set_unlistable(&self, path: &str, why: Option<String>) -> bool {
        self.set(path, why, true)
    }

    fn set(&self, path: &str, why: Option<String>, directory: bool) -> bool {
        let mut u = self.0.unreadable.lock().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(why) => {
                let new = Unreadable { why, directory };
                u.insert(path.to_string(), new.clone()).as_ref() != Some(&new)
            }
            None => u.remove(path).is_some(),
        }
    }

    /// Counts a file found shorter than the offset read for its content,
    /// read again from its start (`bytes` long then).
    pub fn truncated(&self, bytes: u64) {
        self.0.files_truncated.fetch_add(1, Ordering::Relaxed);
        self.0.bytes_reread.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The file `path` is no longer matched or gone: it is not unreadable
    /// any more either.
    pub fn forget(&self, path: &str) {
        self.set_unreadable(path, None);
    }

    /// Counts a file left with unread bytes.
    pub fn left_unread(&self, entry: LeftUnread) {
        self.0.files_left_unread.fetch_add(1, Ordering::Relaxed);
        self.0.bytes_left_unread.fetch_add(entry.unread_bytes.unwrap_or(0), Ordering::Relaxed);
        let mut l = self.0.left_unread.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == MAX_LEFT_UNREAD_SHOWN {
            l.pop_front();
        }
        l.push_back(entry);
    }

    /// Files matched at the last scan (0 before the first).
    pub fn files_matched(&self) -> u64 {
        self.0.files_matched.load(Ordering::Relaxed).max(0) as u64
    }

    /// Files left unread since start.
    pub fn files_left_unread(&self) -> u64 {
        self.0.files_left_unread.load(Ordering::Relaxed)
    }

    /// Bytes known to be left unread since start.
    pub fn bytes_left_unread(&self) -> u64 {
        self.0.bytes_left_unread.load(Ordering::Relaxed)
    }

    /// The source's status at `now_ms`.
    pub fn status(&self, now_ms: i64, s: &StatusSettings) -> SourceStatus {
        let mut unreadable: Vec<UnreadableFile> = self
            .0
            .unreadable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, u)| UnreadableFile { path: p.clone(), error: u.why.clone(), directory: u.directory })
            .collect();
        // Directories first: what they hide matters more than one file.
        unreadable.sort_by_key(|u| !u.directory);
        let dirs_unreadable = unreadable.iter().filter(|u| u.directory).count() as u64;
        let files_unreadable = unreadable.len() as u64 - dirs_unreadable;
        let empty_since = self.0.empty_since_ms.load(Ordering::Relaxed);
        let no_files_for_ms = (empty_since > 0).then(|| (now_ms - empty_since).max(0));
        let state = if files_unreadable + dirs_unreadable > 0 {
            SourceState::Unreadable
        } else if no_files_for_ms.is_some_and(|ms| ms > s.no_files_after_ms) {
            SourceState::NoFiles
        } else {
            SourceState::Ok
        };
        SourceStatus {
            name: self.0.name.clone(),
            state,
            files_matched: self.files_matched(),
            files_unreadable,
            dirs_unreadable,
            unreadable: unreadable.into_iter().take(MAX_UNREADABLE_SHOWN).collect(),
            no_files_for_ms,
            files_left_unread: self.files_left_unread(),
            bytes_left_unread: self.bytes_left_unread(),
            left_unread: self.0.left_unread.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect(),
            files_truncated: self.0.files_truncated.load(Ordering::Relaxed),
            bytes_reread: self.0.bytes_reread.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_000;

    fn settings() -> StatusSettings {
        StatusSettings { no_files_after_ms: 60_000, ..StatusSettings::default() }
    }

    #[test]
    fn no_files_only_after_the_grace_period_and_unreadable_at_once() {
        let s = SourceStats::new("le");
        s.scanned(0, T0);
        s.scanned(0, T0 + 30_000);
        let st = s.status(T0 + 60_000, &settings());
        assert_eq!((st.state, st.no_files_for_ms), (SourceState::Ok, Some(60_000)));
        let st = s.status(T0 + 60_001, &settings());
        assert_eq!(st.state, SourceState::NoFiles);
        assert_eq!(st.problems().len(), 1);
        s.scanned(2, T0 + 70_000);
        let st = s.status(T0 + 70_001, &settings());
        assert_eq!((st.state, st.files_matched, st.no_files_for_ms), (SourceState::Ok, 2, None));
        assert!(s.set_unreadable("/le/a.log", Some("Permission denied (os error 13)".into())));
        assert!(!s.set_unreadable("/le/a.log", Some("Permission denied (os error 13)".into())), "known already");
        let st = s.status(T0 + 70_002, &settings());
        assert_eq!((st.state, st.files_unreadable), (SourceState::Unreadable, 1));
        assert!(st.problems()[0].contains("/le/a.log"), "{:?}", st.problems());
        s.set_unreadable("/le/a.log", None);
        assert_eq!(s.status(T0 + 70_003, &settings()).state, SourceState::Ok);
    }

    #[test]
    fn a_directory_that_cannot_be_listed_is_named_as_a_directory() {
        let s = SourceStats::new("le");
        s.scanned(3, T0);
        assert!(s.set_unlistable("/le", Some("Permission denied (os error 13)".into())));
        let st = s.status(T0, &settings());
        assert_eq!((st.state, st.files_unreadable, st.dirs_unreadable), (SourceState::Unreadable, 0, 1));
        assert!(st.unreadable[0].directory);
        let p = st.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("directory /le cannot be listed") && !p[0].contains("file(s)"), "{p:?}");
        s.set_unreadable("/le/x.log", Some("Permission denied (os error 13)".into()));
        let p = s.status(T0, &settings()).problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[1].contains("1 file cannot be read (/le/x.log"), "{p:?}");
        s.set_unlistable("/le", None);
        s.set_unreadable("/le/x.log", None);
        assert_eq!(s.status(T0, &settings()).state, SourceState::Ok);
    }

    #[test]
    fn files_left_unread_are_counted_and_the_latest_kept() {
        let s = SourceStats::new("le");
        for i in 0..(MAX_LEFT_UNREAD_SHOWN + 5) {
            s.left_unread(LeftUnread {
                path: format!("/le/{i}"),
                reason: "gone".into(),
                now_at: None,
                offset_bytes: 10,
                unread_bytes: Some(5),
                noticed_ms: T0,
            });
        }
        let st = s.status(T0, &settings());
        assert_eq!((st.files_left_unread, st.bytes_left_unread), (25, 125));
        assert_eq!(st.left_unread.len(), MAX_LEFT_UNREAD_SHOWN);
        assert_eq!(st.left_unread[0].path, "/le/5");
    }
}
