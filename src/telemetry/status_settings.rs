//! The knobs of the derived figures (`StatusSettings`, from `[status]`):
//! the delay window and the idle, stalled and no-files thresholds that
//! per-file, per-source and per-sink states are derived with. Its own file
//! so that `status.rs`, `source.rs` and `snapshot.rs` all take it from
//! below (no circle among them).

use crate::settings::StatusConfig;

/// The knobs of the derived figures (from `[status]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusSettings {
    /// Window of the sync- and delivery-delay percentiles, ms.
    pub delay_window_ms: i64,
    /// A file with no new data for this long is idle, ms.
    pub idle_after_ms: i64,
    /// A file with data waiting and no read progress for this long is
    /// stalled, ms.
    pub stalled_after_ms: i64,
    /// Label file metrics per file (else aggregate them).
    pub per_file_metrics: bool,
    /// A source matching no file for this long is `no-files`, ms.
    pub no_files_after_ms: i64,
}

impl Default for StatusSettings {
    fn default() -> Self {
        StatusSettings::from(&StatusConfig::default())
    }
}

impl From<&StatusConfig> for StatusSettings {
    fn from(c: &StatusConfig) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        StatusSettings {
            delay_window_ms: ms(c.delay_window),
            idle_after_ms: ms(c.idle_after),
            stalled_after_ms: ms(c.stalled_after),
            per_file_metrics: c.per_file_metrics,
            no_files_after_ms: ms(c.no_files_after),
        }
    }
}
