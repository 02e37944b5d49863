//! Sync-delay history: what the bridge kept, summarised over time.
//!
//! - [`hist`]: [`DelayHist`], the delays of a set of records in bounded
//!   memory (HDR histogram, percentiles within 1%), mergeable.
//! - [`report`]: the `lag report` rules without I/O: windows of
//!   `request_time` per host and file, the worst windows, episodes above a
//!   threshold.
//! - [`chart`]: the report as an SVG chart (and PNG).
//!
//! Invariant: nothing here reads files or a clock; memory is bounded by
//! windows × series, never by the number of records.

pub mod chart;
pub mod hist;
pub mod report;

pub use hist::{DelayHist, Percentiles};
