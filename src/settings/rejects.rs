//! `[rejects]`: how much disk the rejects file (`<state_dir>/rejects.ndjson`)
//! may take.

use serde::Deserialize;

use super::ConfigError;
use crate::rotating::Rotation;

/// The smallest `rotate_bytes` accepted for the rejects and dead-letter
/// files: a few entries per file at least.
pub const MIN_ROTATE_BYTES: u64 = 4096;

/// The `[rejects]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectsConfig {
    /// Rotate `rejects.ndjson` before it would pass this size.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Rotated files kept (`rejects.ndjson.1` ...); older ones are deleted.
    #[serde(default = "default_keep_files")]
    pub keep_files: usize,
}

impl Default for RejectsConfig {
    fn default() -> Self {
        RejectsConfig { rotate_bytes: default_rotate_bytes(), keep_files: default_keep_files() }
    }
}

fn default_rotate_bytes() -> u64 {
    16 << 20
}
fn default_keep_files() -> usize {
    3
}

impl RejectsConfig {
    /// The bound on disk.
    pub fn rotation(&self) -> Rotation {
        Rotation { rotate_bytes: self.rotate_bytes, keep_files: self.keep_files }
    }

    /// Checks values; the error names the key under `key` (`rejects`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        check_rotate_bytes(&format!("{key}.rotate_bytes"), self.rotate_bytes)
    }
}

/// A `rotate_bytes` of a bounded file: at least [`MIN_ROTATE_BYTES`].
pub fn check_rotate_bytes(key: &str, v: u64) -> Result<(), ConfigError> {
    if v < MIN_ROTATE_BYTES {
        return Err(ConfigError::invalid(
            key,
            format!("must be at least {MIN_ROTATE_BYTES} (the file is bounded; raise keep_files to keep more)"),
        ));
    }
    Ok(())
}
