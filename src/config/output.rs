//! `[file_output]`: the local archive of records.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use crate::record::Shape;

/// The `[file_output]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutputConfig {
    /// The file records are appended to; rotated files get `.1`, `.2`, ...
    pub path: PathBuf,
    /// `ndjson` (default) or `ecls` (one `{"data":[record]}` per line).
    #[serde(default)]
    pub shape: Shape,
    /// Rotate when the file reaches this size (0 = never).
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// How many rotated files to keep.
    #[serde(default = "default_keep_files")]
    pub keep_files: usize,
    /// fsync at most this often; a batch is acknowledged once it is synced.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

fn default_rotate_bytes() -> u64 {
    100 << 20
}
fn default_keep_files() -> usize {
    5
}
fn default_fsync_interval_ms() -> u64 {
    1000
}

impl FileOutputConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(format!("{key}.path"), "is empty"));
        }
        if self.fsync_interval_ms == 0 {
            return Err(ConfigError::invalid(format!("{key}.fsync_interval_ms"), "must be > 0"));
        }
        Ok(())
    }
}
