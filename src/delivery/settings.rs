//! The delivery keys every sink on the engine has, in one place: their
//! defaults ([`DEFAULTS`], the one table; a sink that must differ declares
//! its own [`Defaults`] next to its section, built from this one), the
//! checks their values pass (errors name the key), and the typed
//! [`Settings`] the engine runs with. Tasks never see `*_ms: u64`.
//!
//! A section still declares the keys itself (serde reads it whole, unknown
//! keys refused), each with its default from its sink's table, and hands
//! them over with [`knobs!`](crate::knobs): the list of keys is written
//! here once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::rotating::Rotation;
use crate::settings::{check_rotate_bytes, millis, resolve, ConfigError};

/// Default values of the delivery keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// A request is sent at this many records ...
    pub batch_max_records: usize,
    /// ... or at this many (uncompressed) bytes ...
    pub batch_max_bytes: usize,
    /// ... or this long after its first record (`flush_interval_ms`; Kafka
    /// calls it `linger_ms`).
    pub flush_interval_ms: u64,
    /// One attempt's time limit (the transport's).
    pub request_timeout_ms: u64,
    /// Requests sent at once.
    pub max_in_flight: usize,
    /// First retry delay; doubles up to `retry_max_ms`, with jitter.
    pub retry_initial_ms: u64,
    /// Longest retry delay (and the longest `Retry-After` honoured).
    pub retry_max_ms: u64,
    /// The disk spool's bound; 0 turns it off.
    pub spool_max_bytes: u64,
    /// How long the peer fails before every request goes to the spool.
    pub spool_after_ms: u64,
    /// SIGTERM grace period to deliver what is held.
    pub shutdown_grace_ms: u64,
    /// The dead-letter file rotates before it passes this size ...
    pub dead_letter_rotate_bytes: u64,
    /// ... keeping this many rotated files.
    pub dead_letter_keep_files: usize,
}

/// The defaults of every sink on the engine (upstream and OpenTelemetry
/// use them as they are; Kafka changes the batch sizes, the linger and the
/// longest retry delay, `crate::kafka::settings`).
pub const DEFAULTS: Defaults = Defaults {
    batch_max_records: 1000,
    batch_max_bytes: 4 << 20,
    flush_interval_ms: 1000,
    request_timeout_ms: 30_000,
    max_in_flight: 4,
    retry_initial_ms: 200,
    retry_max_ms: 60_000,
    spool_max_bytes: 1 << 30,
    spool_after_ms: 30_000,
    shutdown_grace_ms: 5_000,
    dead_letter_rotate_bytes: 64 << 20,
    dead_letter_keep_files: 4,
};

/// serde's `default = "..."` functions for the keys, from [`DEFAULTS`]
/// (`#[serde(default = "crate::delivery::settings::default::spool_after_ms")]`).
pub mod default {
    use super::DEFAULTS;

    /// [`DEFAULTS`]`.batch_max_records`.
    pub fn batch_max_records() -> usize {
        DEFAULTS.batch_max_records
    }
    /// [`DEFAULTS`]`.batch_max_bytes`.
    pub fn batch_max_bytes() -> usize {
        DEFAULTS.batch_max_bytes
    }
    /// [`DEFAULTS`]`.flush_interval_ms`.
    pub fn flush_interval_ms() -> u64 {
        DEFAULTS.flush_interval_ms
    }
    /// [`DEFAULTS`]`.request_timeout_ms`.
    pub fn request_timeout_ms() -> u64 {
        DEFAULTS.request_timeout_ms
    }
    /// [`DEFAULTS`]`.max_in_flight`.
    pub fn max_in_flight() -> usize {
        DEFAULTS.max_in_flight
    }
    /// [`DEFAULTS`]`.retry_initial_ms`.
    pub fn retry_initial_ms() -> u64 {
        DEFAULTS.retry_initial_ms
    }
    /// [`DEFAULTS`]`.retry_max_ms`.
    pub fn retry_max_ms() -> u64 {
        DEFAULTS.retry_max_ms
    }
    /// [`DEFAULTS`]`.spool_max_bytes`.
    pub fn spool_max_bytes() -> u64 {
        DEFAULTS.spool_max_bytes
    }
    /// [`DEFAULTS`]`.spool_after_ms`.
    pub fn spool_after_ms() -> u64 {
        DEFAULTS.spool_after_ms
    }
    /// [`DEFAULTS`]`.shutdown_grace_ms`.
    pub fn shutdown_grace_ms() -> u64 {
        DEFAULTS.shutdown_grace_ms
    }
    /// [`DEFAULTS`]`.dead_letter_rotate_bytes`.
    pub fn dead_letter_rotate_bytes() -> u64 {
        DEFAULTS.dead_letter_rotate_bytes
    }
    /// [`DEFAULTS`]`.dead_letter_keep_files`.
    pub fn dead_letter_keep_files() -> usize {
        DEFAULTS.dead_letter_keep_files
    }
}

/// The delivery keys as a section wrote them (defaults applied by serde),
/// built with [`knobs!`](crate::knobs).
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `batch_max_records`.
    pub batch_max_records: usize,
    /// `batch_max_bytes`.
    pub batch_max_bytes: usize,
    /// `flush_interval_ms` (Kafka: `linger_ms`).
    pub flush_interval_ms: u64,
    /// `max_in_flight`.
    pub max_in_flight: usize,
    /// `retry_initial_ms`.
    pub retry_initial_ms: u64,
    /// `retry_max_ms`.
    pub retry_max_ms: u64,
    /// `spool_max_bytes`.
    pub spool_max_bytes: u64,
    /// `spool_after_ms`.
    pub spool_after_ms: u64,
    /// `shutdown_grace_ms`.
    pub shutdown_grace_ms: u64,
    /// `dead_letter_file`.
    pub dead_letter_file: Option<PathBuf>,
    /// `dead_letter_rotate_bytes`.
    pub dead_letter_rotate_bytes: u64,
    /// `dead_letter_keep_files`.
    pub dead_letter_keep_files: usize,
}

#[cfg(test)]
impl Knobs {
    /// The keys as `d` sets them (tests).
    pub(crate) fn defaults(d: &Defaults) -> Knobs {
        Knobs {
            batch_max_records: d.batch_max_records,
            batch_max_bytes: d.batch_max_bytes,
            flush_interval_ms: d.flush_interval_ms,
            max_in_flight: d.max_in_flight,
            retry_initial_ms: d.retry_initial_ms,
            retry_max_ms: d.retry_max_ms,
            spool_max_bytes: d.spool_max_bytes,
            spool_after_ms: d.spool_after_ms,
            shutdown_grace_ms: d.shutdown_grace_ms,
            dead_letter_file: None,
            dead_letter_rotate_bytes: d.dead_letter_rotate_bytes,
            dead_letter_keep_files: d.dead_letter_keep_files,
        }
    }
}

/// The delivery keys of a section `$s` (whose flush key is `$flush`:
/// `flush_interval_ms`, or Kafka's `linger_ms`) as [`Knobs`].
#[macro_export]
macro_rules! knobs {
    ($s:expr, $flush:ident) => {
        $crate::delivery::settings::Knobs {
            batch_max_records: $s.batch_max_records,
            batch_max_bytes: $s.batch_max_bytes,
            flush_interval_ms: $s.$flush,
            max_in_flight: $s.max_in_flight,
            retry_initial_ms: $s.retry_initial_ms,
            retry_max_ms: $s.retry_max_ms,
            spool_max_bytes: $s.spool_max_bytes,
            spool_after_ms: $s.spool_after_ms,
            shutdown_grace_ms: $s.shutdown_grace_ms,
            dead_letter_file: $s.dead_letter_file.clone(),
            dead_letter_rotate_bytes: $s.dead_letter_rotate_bytes,
            dead_letter_keep_files: $s.dead_letter_keep_files,
        }
    };
}

/// The engine's settings of one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// A request is sent at this many records ...
    pub batch_max_records: usize,
    /// ... or at this many (uncompressed) bytes ...
    pub batch_max_bytes: usize,
    /// ... or this long after its first record (`flush_interval_ms`,
    /// `linger_ms`).
    pub flush_interval: Duration,
    /// Requests sent at once (fixed while the sink runs).
    pub max_in_flight: usize,
    /// First retry delay (`retry_initial_ms`).
    pub retry_initial: Duration,
    /// Longest retry delay (`retry_max_ms`).
    pub retry_max: Duration,
    /// The disk spool's bound; 0 turns it off (fixed while the sink runs).
    pub spool_max_bytes: u64,
    /// How long the peer fails before every request goes to the spool
    /// (`spool_after_ms`).
    pub spool_after: Duration,
    /// SIGTERM grace period (`shutdown_grace_ms`).
    pub shutdown_grace: Duration,
    /// Where refused records go; `None`: the sink's file under
    /// `state_dir` (fixed while the sink runs).
    pub dead_letter_file: Option<PathBuf>,
    /// The dead-letter file's bound on disk (`dead_letter_rotate_bytes`,
    /// `dead_letter_keep_files`).
    pub dead_letter_rotation: Rotation,
}

impl Settings {
    /// The settings of the keys `k` of section `section` (`upstream`):
    /// values checked, errors naming the key (`upstream.retry_max_ms`),
    /// `dead_letter_file` resolved against `base`.
    pub fn from_knobs(mut k: Knobs, section: &str, base: &Path) -> Result<Settings, ConfigError> {
        let key = |name: &str| format!("{section}.{name}");
        for (v, min, name) in [
            (k.batch_max_records as u64, 1, "batch_max_records"),
            (k.batch_max_bytes as u64, 1024, "batch_max_bytes"),
            (k.max_in_flight as u64, 1, "max_in_flight"),
            (k.retry_initial_ms, 1, "retry_initial_ms"),
        ] {
            if v < min {
                return Err(ConfigError::invalid(key(name), format!("must be at least {min}")));
            }
        }
        if k.retry_max_ms < k.retry_initial_ms {
            return Err(ConfigError::invalid(key("retry_max_ms"), "must be >= retry_initial_ms"));
        }
        check_rotate_bytes(&key("dead_letter_rotate_bytes"), k.dead_letter_rotate_bytes)?;
        if let Some(p) = &mut k.dead_letter_file {
            resolve(base, p);
        }
        Ok(Settings {
            batch_max_records: k.batch_max_records,
            batch_max_bytes: k.batch_max_bytes,
            flush_interval: millis(k.flush_interval_ms),
            max_in_flight: k.max_in_flight,
            retry_initial: millis(k.retry_initial_ms),
            retry_max: millis(k.retry_max_ms),
            spool_max_bytes: k.spool_max_bytes,
            spool_after: millis(k.spool_after_ms),
            shutdown_grace: millis(k.shutdown_grace_ms),
            dead_letter_file: k.dead_letter_file,
            dead_letter_rotation: Rotation { rotate_bytes: k.dead_letter_rotate_bytes, keep_files: k.dead_letter_keep_files },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        Knobs { dead_letter_file: Some("dl.ndjson".into()), ..Knobs::defaults(&DEFAULTS) }
    }

    #[test]
    fn checks_name_the_key_of_the_section() {
        let s = Settings::from_knobs(knobs(), "otlp", Path::new("/etc/bridge")).unwrap();
        assert_eq!((s.retry_max, s.spool_after), (Duration::from_secs(60), Duration::from_secs(30)));
        assert_eq!(s.dead_letter_file.as_deref(), Some(Path::new("/etc/bridge/dl.ndjson")));
        let key = |k: Knobs| Settings::from_knobs(k, "otlp", Path::new("")).unwrap_err().key().map(str::to_string);
        assert_eq!(key(Knobs { retry_max_ms: 1, ..knobs() }), Some("otlp.retry_max_ms".into()));
        assert_eq!(key(Knobs { batch_max_bytes: 10, ..knobs() }), Some("otlp.batch_max_bytes".into()));
        assert_eq!(key(Knobs { max_in_flight: 0, ..knobs() }), Some("otlp.max_in_flight".into()));
        assert_eq!(key(Knobs { dead_letter_rotate_bytes: 10, ..knobs() }), Some("otlp.dead_letter_rotate_bytes".into()));
        // A flush interval of 0 sends each pipeline batch at once.
        assert!(Settings::from_knobs(Knobs { flush_interval_ms: 0, ..knobs() }, "otlp", Path::new("")).is_ok());
    }
}
