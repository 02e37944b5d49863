//! `[[source]]`: which files to follow and how to read them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
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

/// One `[[source]]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A name for logs and metrics; defaults to `source<N>`.
    #[serde(default)]
    pub name: Option<String>,
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
    /// Lines longer than this are rejected (`too_long`).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// A partial last line (no newline) of a file rotated away or deleted
    /// is emitted only after the file has not grown for this long since
    /// then: a writer still holding the file open may complete it.
    #[serde(default = "default_partial_grace_ms")]
    pub partial_grace_ms: u64,
}

fn default_rescan_interval_ms() -> u64 {
    10_000
}

fn default_partial_grace_ms() -> u64 {
    500
}

/// 1 MiB: far above any real access-log line (LE truncates URIs at 2 KiB).
pub fn default_max_line_bytes() -> usize {
    1 << 20
}

impl SourceConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for p in self.paths.iter_mut().chain(self.exclude.iter_mut()) {
            // A pattern that starts with a wildcard (`*.tmp`) matches
            // anywhere and stays as written.
            if Path::new(p.as_str()).is_relative() && !p.starts_with('*') && !base.as_os_str().is_empty() {
                *p = base.join(&*p).to_string_lossy().into_owned();
            }
        }
    }

    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.paths.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.paths"), "needs at least one glob"));
        }
        for (list, name) in [(&self.paths, "paths"), (&self.exclude, "exclude")] {
            for p in list.iter() {
                globset::Glob::new(p).map_err(|e| ConfigError::invalid(format!("{key}.{name}"), format!("bad glob `{p}`: {e}")))?;
            }
        }
        if self.poll_interval_ms == Some(0) {
            return Err(ConfigError::invalid(format!("{key}.poll_interval_ms"), "must be > 0"));
        }
        if self.rescan_interval_ms == 0 {
            return Err(ConfigError::invalid(format!("{key}.rescan_interval_ms"), "must be > 0"));
        }
        if self.max_line_bytes < 256 {
            return Err(ConfigError::invalid(format!("{key}.max_line_bytes"), "must be at least 256"));
        }
        Ok(())
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
