//! Files left unread: a file with a checkpoint that is gone, or no longer
//! matched by any source's globs, while it still had bytes the bridge had
//! not delivered. That is where records go missing without a word: e.g. a
//! pattern that misses rotated names (`access*.log` rather than
//! `access*.log*`) while the bridge was stopped when Local Edition rotated.
//!
//! [`find`] runs once at start-up, after every source has scanned once:
//! every checkpoint that no scan saw is looked for where it was last seen
//! (same device and inode, at its path or renamed within its directory).
//! A file still there but matched by no glob has `size - offset` unread
//! bytes; a file nowhere to be found had `size - offset` unread bytes when
//! the bridge last looked at it. Each is logged loudly and counted on its
//! source ([`crate::telemetry::SourceStats::left_unread`]). Blocking (stat
//! and directory listings).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::checkpoint::Entry;
use crate::settings::SourceConfig;
use crate::telemetry::LeftUnread;
use crate::watch::{is_gz, Watcher};

/// The files left unread among `entries`, each with the index of the
/// source it belongs to (the source whose directories hold it, else the
/// first). `scanned_since_ms`: when the start-up scans began; an entry a
/// scan saw since then is followed and not left unread. An entry whose
/// file cannot be looked at (permission denied, an I/O error) is neither: it is logged here
/// as undecided and left out (the callers log and count what is returned).
pub fn find(entries: &[Entry], sources: &[SourceConfig], scanned_since_ms: i64, now_ms: i64) -> Vec<(usize, LeftUnread)> {
    let watchers: Vec<Option<Watcher>> = sources.iter().map(|s| Watcher::new(s).ok()).collect();
    let matched = |p: &Path| watchers.iter().flatten().any(|w| w.matches(p));
    let mut out = Vec::new();
    for e in entries {
        if e.last_seen_ms >= scanned_since_ms || e.path.is_empty() {
            continue;
        }
        let last = Path::new(&e.path);
        let (reason, now_at, unread) = match locate(last, e.dev, e.ino) {
            Located::Unknown(err) => {
                // Not a verdict: a directory the bridge cannot look into
                // (permissions, a stale mount) hides the file from the scan
                // too, and its source shows that as an error. Its records
                // are read from the checkpoint once it can be seen again.
                tracing::warn!(
                    file = %crate::logsafe::Escaped(&e.path),
                    error = %err,
                    "cannot tell whether this checkpointed file was read to its end: it cannot be looked at now; it is read from its \
                     checkpoint when the source's paths show it again"
                );
                continue;
            }
            Located::At(at, size) => {
                if matched(&at) {
                    // Followed (a file too old to read, or not fingerprinted yet).
                    continue;
                }
                let unread = if is_gz(&at) {
                    if e.gz_complete.is_some() {
                        continue;
                    }
                    None
                } else {
                    match size.checked_sub(e.offset) {
                        Some(n) if n > 0 => Some(n),
                        _ => continue,
                    }
                };
                ("not-matched", Some(at.display().to_string()), unread)
            }
            Located::Gone => {
                let unread = if is_gz(last) {
                    if e.gz_complete.is_some() {
                        continue;
                    }
                    None
                } else {
                    match e.size.checked_sub(e.offset) {
                        Some(n) if n > 0 => Some(n),
                        _ => continue,
                    }
                };
                ("gone", None, unread)
            }
        };
        let source = sources.iter().position(|s| s.watch_dirs().iter().any(|d| last.starts_with(d))).unwrap_or(0);
        out.push((
            source,
            LeftUnread {
                path: e.path.clone(),
                reason: reason.to_string(),
                now_at,
                offset_bytes: e.offset,
                unread_bytes: unread,
                noticed_ms: now_ms,
            },
        ));
    }
    out.sort_by(|a, b| a.1.path.cmp(&b.1.path));
    out
}

/// What [`locate`] found.
#[derive(Debug)]
enum Located {
    /// The file, at this path, of this size.
    At(PathBuf, u64),
    /// Neither at its path nor anywhere in its directory (or the
    /// directory itself is gone).
    Gone,
    /// Cannot tell: its path or its directory could not be looked at
    /// (permission denied, an I/O error): never taken for gone.
    Unknown(std::io::Error),
}

/// Where the file with device `dev` and inode `ino`, last seen at `last`,
/// is now: at `last`, or renamed within its directory; with its size.
fn locate(last: &Path, dev: u64, ino: u64) -> Located {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    let same = |m: &std::fs::Metadata| m.is_file() && m.dev() == dev && m.ino() == ino;
    match std::fs::metadata(last) {
        Ok(m) if same(&m) => return Located::At(last.to_path_buf(), m.len()),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), NotFound | NotADirectory) => {}
        Err(e) => return Located::Unknown(e),
    }
    if dev == 0 && ino == 0 {
        return Located::Gone;
    }
    let Some(dir) = last.parent() else { return Located::Gone };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), NotFound | NotADirectory) => return Located::Gone,
        Err(e) => return Located::Unknown(e),
    };
    let mut unknown = None;
    for entry in entries {
        match entry.and_then(|en| Ok((en.path(), en.metadata()?))) {
            Ok((path, m)) if same(&m) => return Located::At(path, m.len()),
            Ok(_) => {}
            // Removed while listed: not this file's business.
            Err(e) if e.kind() == NotFound => {}
            Err(e) => unknown = Some(e),
        }
    }
    unknown.map_or(Located::Gone, Located::Unknown)
}

/// The warning for one file left unread (loud: records are lost).
pub fn message(source: &str, l: &LeftUnread) -> String {
    let bytes = l.unread_bytes.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string());
    let where_now = match &l.now_at {
        Some(at) => format!("is now {at}, which the paths of source `{source}` do not match"),
        None => "is gone".to_string(),
    };
    format!(
        "RECORDS LOST: {} had {bytes} bytes after offset {} the bridge never read, and {where_now}; put the file back where the paths \
         match it, and include rotated names in the source's paths (e.g. access*.log*) so that rotation while the bridge is stopped \
         loses nothing",
        l.path, l.offset_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::fingerprint::Fingerprint;

    fn entry(path: &Path, offset: u64, size: u64, seen: i64) -> Entry {
        let m = std::fs::metadata(path).ok();
        Entry {
            fingerprint: Fingerprint(offset ^ size),
            offset,
            path: path.display().to_string(),
            dev: m.as_ref().map_or(0, |m| m.dev()),
            ino: m.as_ref().map_or(0, |m| m.ino()),
            last_seen_ms: seen,
            size,
            gz_complete: None,
            anchor: None,
        }
    }

    fn source(glob: &Path) -> SourceConfig {
        toml::from_str(&format!("paths = [{:?}]\n", glob.display().to_string())).unwrap()
    }

    #[test]
    fn a_rotated_file_no_glob_matches_and_a_deleted_one_are_found_a_followed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("access.log"), "0123456789\n0123456789\n").unwrap();
        std::fs::write(d.join("other.log"), "abc\n").unwrap();
        let rotated = entry(&d.join("access.log"), 11, 11, 5);
        let followed = entry(&d.join("other.log"), 0, 4, 5);
        let read_to_end = entry(&d.join("other.log"), 4, 4, 5);
        std::fs::rename(d.join("access.log"), d.join("access.log.1")).unwrap();
        let deleted =
            Entry { path: d.join("gone.log").display().to_string(), dev: 1, ino: 999_999_999, ..entry(&d.join("x"), 100, 250, 5) };
        let seen_now = entry(&d.join("x"), 0, 10, 50);
        let sources = [source(&d.join("*.log"))];
        let found = find(&[rotated, followed, read_to_end, deleted, seen_now], &sources, 10, 60);
        let got: Vec<(&str, Option<u64>, Option<&str>)> =
            found.iter().map(|(_, l)| (l.reason.as_str(), l.unread_bytes, l.now_at.as_deref())).collect();
        let at = d.join("access.log.1").display().to_string();
        assert_eq!(got, vec![("not-matched", Some(11), Some(at.as_str())), ("gone", Some(150), None)]);
        assert!(message("le", &found[0].1).contains("RECORDS LOST"));
    }

    /// A file that cannot be looked at (here a path through a symbolic
    /// link loop, which fails for root too; for the service user, a
    /// directory it may not search) is not taken for gone: no records are
    /// said lost. A directory replaced by a file is gone.
    #[test]
    fn a_file_that_cannot_be_looked_at_is_not_said_lost() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::os::unix::fs::symlink(d.join("loop"), d.join("loop")).unwrap();
        let hidden = d.join("loop/access.log");
        assert!(matches!(locate(&hidden, 1, 2), Located::Unknown(_)), "{:?}", locate(&hidden, 1, 2));
        let unknown = Entry { path: hidden.display().to_string(), dev: 1, ino: 2, ..entry(&d.join("x"), 10, 500, 5) };
        std::fs::write(d.join("plain"), "x").unwrap();
        let under_a_file = d.join("plain/access.log");
        assert!(matches!(locate(&under_a_file, 1, 2), Located::Gone));
        let gone = Entry { path: under_a_file.display().to_string(), dev: 1, ino: 2, ..entry(&d.join("x"), 10, 500, 5) };
        let sources = [source(&d.join("*/*.log"))];
        let found = find(&[unknown, gone], &sources, 10, 60);
        let paths: Vec<&str> = found.iter().map(|(_, l)| l.path.as_str()).collect();
        assert_eq!(paths, vec![under_a_file.display().to_string().as_str()]);
    }
}
