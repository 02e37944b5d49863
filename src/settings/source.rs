//! The file `[[source]]` (`kind = "file"`, the default): which files to
//! follow and how to read them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{millis, secs, ConfigError};
use crate::parse::Format;

/// Where to start in a file that has no checkpoint yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Read the whole file (the default: nothing is lost on first start).
    #[default]
    Beginning,
    /// Start at the current end; only new lines are read.
    End,
}

/// One file `[[source]]` section as written (`name` and `kind`, which
/// every source has, are read by [`crate::config`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Glob patterns of files to follow
    /// (`/mnt/data/trafficmanager/enriched/access/access*.log`).
    pub paths: Vec<String>,
    /// Glob patterns of files to skip even when `paths` matches them. A
    /// pattern starting with `*` (`*.tmp`) matches in any directory.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The files' format (`auto` decides per file).
    #[serde(default)]
    pub format: Format,
    /// Where to start in a file with no checkpoint.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Files last modified longer ago than this are not read (0 = no limit).
    #[serde(default)]
    pub ignore_older_secs: u64,
    /// When set, discover changes by polling every this many ms instead of
    /// relying on inotify (NFS and other synced mounts).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// Full rescan of the globs every this many ms, a safety net for missed
    /// events.
    #[serde(default = "default_rescan_interval_ms")]
    pub rescan_interval_ms: u64,
    /// A change that follows the last read of a file by less than this
    /// waits for the rest of this time and is read with what comes
    /// meanwhile; one after a quiet spell is read at once. A file written
    /// one line per `write()` is then read once per this time, not once
    /// per line (0: read every change at once).
    #[serde(default = "default_read_delay_ms")]
    pub read_delay_ms: u64,
    /// Lines longer than this are rejected (`too_long`).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// A partial last line (no newline) of a file rotated away or deleted
    /// is emitted only after the file has not grown for this long since
    /// then: a writer still holding the file open may complete it.
    #[serde(default = "default_partial_grace_ms")]
    pub partial_grace_ms: u64,
    /// Follow symbolic links among the files and directories the globs
    /// reach, wherever they point. Off by default: a link to a file
    /// outside the globs' directories is not read, and a linked directory
    /// is not descended (anyone who can write in the log directory could
    /// otherwise make the bridge read any file its user can read).
    #[serde(default)]
    pub follow_symlinks: bool,
    /// A scan of the globs' directories stops after this many entries
    /// (files and directories, matched or not), with an error naming the
    /// key: a glob such as `/**/*` must not walk a whole filesystem.
    #[serde(default = "default_max_scan_entries")]
    pub max_scan_entries: usize,
    /// A scan stops after this long, with the same error (a slow or hung
    /// mount).
    #[serde(default = "default_max_scan_ms")]
    pub max_scan_ms: u64,
}

/// See [`SourceSection::max_scan_entries`]: far above a log directory's
/// files (Local Edition keeps tens), far below a filesystem's.
pub const DEFAULT_MAX_SCAN_ENTRIES: usize = 100_000;

fn default_max_scan_entries() -> usize {
    DEFAULT_MAX_SCAN_ENTRIES
}

/// See [`SourceSection::max_scan_ms`].
pub const DEFAULT_MAX_SCAN_MS: u64 = 30_000;

fn default_max_scan_ms() -> u64 {
    DEFAULT_MAX_SCAN_MS
}

fn default_rescan_interval_ms() -> u64 {
    10_000
}

/// See [`SourceSection::read_delay_ms`]: 50 ms keeps a trickle of lines
/// cheap (one read per 50 ms at 1,000 lines/s: most of the CPU of a
/// trickle is the wake-ups per read, not the lines) and is far below what
/// a dashboard shows or a person notices (other agents deliver once per
/// second by default).
pub const DEFAULT_READ_DELAY_MS: u64 = 50;

/// The longest `read_delay_ms` accepted: beyond it, batching lines is no
/// cheaper and only delays them.
pub const MAX_READ_DELAY_MS: u64 = 1000;

fn default_read_delay_ms() -> u64 {
    DEFAULT_READ_DELAY_MS
}

fn default_partial_grace_ms() -> u64 {
    500
}

/// 1 MiB: far above any real access-log line (LE truncates URIs at 2 KiB).
pub fn default_max_line_bytes() -> usize {
    1 << 20
}

/// The settings of one file source: globs, format, and how files are
/// discovered and read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SourceSection")]
pub struct SourceConfig {
    /// Glob patterns of files to follow, relative ones resolved against
    /// the config file's directory.
    pub paths: Vec<String>,
    /// Glob patterns of files to skip; one starting with `*` matches in
    /// any directory.
    pub exclude: Vec<String>,
    /// The files' format (`auto` decides per file).
    pub format: Format,
    /// Where to start in a file with no checkpoint.
    pub read_from: ReadFrom,
    /// Files last modified longer ago than this are not read
    /// (`ignore_older_secs`; `None`: no limit).
    pub ignore_older: Option<Duration>,
    /// Discover changes by polling this often instead of inotify
    /// (`poll_interval_ms`).
    pub poll_interval: Option<Duration>,
    /// Full rescan of the globs this often (`rescan_interval_ms`).
    pub rescan_interval: Duration,
    /// How long a change that follows the last read of a file by less
    /// than this waits, to be read with what follows (`read_delay_ms`).
    pub read_delay: Duration,
    /// Lines longer than this are rejected (`too_long`).
    pub max_line_bytes: usize,
    /// A partial last line of a file gone or rotated away is emitted once
    /// the file has not grown for this long (`partial_grace_ms`).
    pub partial_grace: Duration,
    /// Follow symbolic links wherever they point (`follow_symlinks`);
    /// else only links to files inside the globs' directories are read.
    pub follow_symlinks: bool,
    /// A scan stops (an error) after this many entries (`max_scan_entries`).
    pub max_scan_entries: usize,
    /// A scan stops (an error) after this long (`max_scan_ms`).
    pub max_scan: Duration,
}

/// `toml::from_str::<SourceConfig>` (tests, embedding): the section's
/// settings with paths as written, errors naming `source.<key>`.
impl TryFrom<SourceSection> for SourceConfig {
    type Error = ConfigError;

    fn try_from(s: SourceSection) -> Result<Self, Self::Error> {
        SourceConfig::from_section(s, "source", Path::new(""))
    }
}

impl SourceConfig {
    /// The settings of a file `[[source]]` section: relative globs are
    /// resolved against `base` (the config file's directory), errors
    /// name the key under `key` (`source[0]`).
    pub fn from_section(mut s: SourceSection, key: &str, base: &Path) -> Result<SourceConfig, ConfigError> {
        for p in s.paths.iter_mut().chain(s.exclude.iter_mut()) {
            // A pattern that starts with a wildcard (`*.tmp`) matches
            // anywhere and stays as written.
            if Path::new(p.as_str()).is_relative() && !p.starts_with('*') && !base.as_os_str().is_empty() {
                *p = base.join(&*p).to_string_lossy().into_owned();
            }
        }
        if s.paths.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.paths"), "needs at least one glob"));
        }
        for (list, name) in [(&s.paths, "paths"), (&s.exclude, "exclude")] {
            for p in list.iter() {
                globset::Glob::new(p).map_err(|e| ConfigError::invalid(format!("{key}.{name}"), format!("bad glob `{p}`: {e}")))?;
            }
        }
        if s.poll_interval_ms == Some(0) {
            return Err(ConfigError::invalid(format!("{key}.poll_interval_ms"), "must be > 0"));
        }
        if s.rescan_interval_ms == 0 {
            return Err(ConfigError::invalid(format!("{key}.rescan_interval_ms"), "must be > 0"));
        }
        if s.read_delay_ms > MAX_READ_DELAY_MS {
            return Err(ConfigError::invalid(format!("{key}.read_delay_ms"), format!("must be at most {MAX_READ_DELAY_MS}")));
        }
        if s.max_line_bytes < 256 {
            return Err(ConfigError::invalid(format!("{key}.max_line_bytes"), "must be at least 256"));
        }
        if s.max_scan_entries == 0 {
            return Err(ConfigError::invalid(format!("{key}.max_scan_entries"), "must be > 0"));
        }
        if s.max_scan_ms == 0 {
            return Err(ConfigError::invalid(format!("{key}.max_scan_ms"), "must be > 0"));
        }
        Ok(SourceConfig {
            paths: s.paths,
            exclude: s.exclude,
            format: s.format,
            read_from: s.read_from,
            ignore_older: (s.ignore_older_secs > 0).then(|| secs(s.ignore_older_secs)),
            poll_interval: s.poll_interval_ms.map(millis),
            rescan_interval: millis(s.rescan_interval_ms),
            read_delay: millis(s.read_delay_ms),
            max_line_bytes: s.max_line_bytes,
            partial_grace: millis(s.partial_grace_ms),
            follow_symlinks: s.follow_symlinks,
            max_scan_entries: s.max_scan_entries,
            max_scan: millis(s.max_scan_ms),
        })
    }

    /// The directory part of each glob (the directory to watch).
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        self.paths
            .iter()
            .map(|p| {
                let mut dir = PathBuf::new();
                for c in Path::new(p).components() {
                    let s = c.as_os_str().to_string_lossy();
                    if s.contains(['*', '?', '[', '{']) {
                        break;
                    }
                    dir.push(c);
                }
                if dir == Path::new(p) {
                    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
                } else {
                    dir
                }
            })
            .collect()
    }
}
