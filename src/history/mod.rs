//! Sync-delay history: what the bridge kept, summarised over time.
//!
//! - [`hist`]: [`DelayHist`], the delays of a set of records in bounded
//!   memory (HDR histogram, percentiles within 1%), mergeable.
//! - [`report`]: the `lag report` rules without I/O: windows of
//!   `request_time` per host and file, the worst windows, episodes above a
//!   threshold.
//! - [`minutes`]: the running bridge's recent history, a histogram per
//!   minute of `request_time` per series, bounded (`/history`).
//! - [`chart`]: the report as an SVG chart (and PNG).
//!
//! Invariant: nothing here reads files or a clock; memory is bounded by
//! windows × series, never by the number of records.

pub mod chart;
pub mod hist;
pub mod minutes;
pub mod report;

pub use hist::{DelayHist, Percentiles};

/// A history's name without a rotation suffix, so a log or an archive and
/// its rotations are one series: `access.log.1.gz` → `access.log`,
/// `calls.ndjson.12` → `calls.ndjson`.
pub fn strip_rotation(path: &str) -> &str {
    let s = path.strip_suffix(".gz").unwrap_or(path);
    match s.rsplit_once('.') {
        Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !stem.is_empty() && !stem.ends_with('/') => stem,
        _ => s,
    }
}
