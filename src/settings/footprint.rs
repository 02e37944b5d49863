//! The top-level keys that bound what the bridge costs the host:
//! `memory_max_bytes` (see [`crate::budget`]) and `checkpoint_interval_ms`
//! (how often acknowledged offsets are written to `checkpoints.json`).

use std::time::Duration;

use super::{millis, ConfigError};

/// Default `memory_max_bytes`: the records read and not yet delivered, in
/// every sink together. With the rest of the process (code, runtime,
/// buffers, the channel's hot tail) the resident size of a bridge
/// catching up a backlog stays under 64 MiB.
pub const DEFAULT_MEMORY_MAX_BYTES: usize = 24 << 20;

/// The smallest `memory_max_bytes`: a few read chunks (a reader reads up
/// to [`crate::tail::reader::CHUNK_BYTES`] at a time), below which reading
/// would pause after every chunk.
pub const MIN_MEMORY_MAX_BYTES: usize = 4 << 20;

/// Default `checkpoint_interval_ms`: at most one checkpoint write (one
/// fsync; the directory's only at a stop) per second; after a `kill -9` the records read
/// again are those acknowledged in the last second at most.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;

/// Bounds of `checkpoint_interval_ms`: below 10 ms the fsyncs cost more
/// than they save; above a minute too much is read again after a crash.
pub const CHECKPOINT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// `memory_max_bytes`, checked.
pub fn memory_max_bytes(v: usize, key: &str) -> Result<usize, ConfigError> {
    if v < MIN_MEMORY_MAX_BYTES {
        return Err(ConfigError::invalid(key, format!("{v} is below the minimum of {MIN_MEMORY_MAX_BYTES} bytes (4 MiB)")));
    }
    Ok(v)
}

/// `checkpoint_interval_ms`, checked.
pub fn checkpoint_interval(ms: u64, key: &str) -> Result<Duration, ConfigError> {
    if !CHECKPOINT_INTERVAL_MS.contains(&ms) {
        return Err(ConfigError::invalid(
            key,
            format!("{ms} ms is outside {}..={} ms", CHECKPOINT_INTERVAL_MS.start(), CHECKPOINT_INTERVAL_MS.end()),
        ));
    }
    Ok(millis(ms))
}

/// The default of `memory_max_bytes` (serde).
pub fn default_memory_max_bytes() -> usize {
    DEFAULT_MEMORY_MAX_BYTES
}

/// The default of `checkpoint_interval_ms` (serde).
pub fn default_checkpoint_interval_ms() -> u64 {
    DEFAULT_CHECKPOINT_INTERVAL_MS
}
