//! The `[export]` sink: the Call Log Export's CSV files, written locally
//! minutes after each slice ends (the hosted export takes hours), and
//! optionally uploaded to S3-compatible object storage.
//!
//! - [`slice`](mod@slice): which slice a record falls in; file names (pure).
//! - [`slice_file`]: one file being written (gzip stream, sync, publish by
//!   rename) and reading files back (recovery, dedup sets).
//! - [`exporter`]: the rules (open, late files, close, dedup), without
//!   tasks or timers; shared with the offline `export` command.
//! - [`dedup`]: `request_uuid` sets.
//! - [`out_of_window`]: records whose `request_time` is outside the
//!   window, in out-of-window files instead of a slice each.
//! - [`stats`]: per-slice figures for `/status`, `/metrics`, the dashboard.
//! - [`config`]: `[export]` and `[export.s3]`.
//! - [`access`]: the files' mode and group (who may read them).
//! - [`s3`]: uploads published files to S3-compatible storage.
//! - [`sink`]: the sink's task (batches in, files synced, acknowledged,
//!   published, queued for upload).
//!
//! Delivery: a batch is acknowledged once its records are durably in a
//! slice file (gzip sync flush and `fdatasync`, at most every
//! `fsync_interval_ms`). Open slices are `.partial` files that survive a
//! restart; see [`exporter`] for how records read again after an unclean
//! stop are kept out of a slice that has them.

pub mod access;
pub mod config;
pub mod dedup;
pub mod exporter;
pub mod out_of_window;
pub mod s3;
pub mod sink;
pub mod slice;
pub mod slice_file;
pub mod stats;

pub use sink::ExportSink;
