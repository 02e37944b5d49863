//! The reliable-delivery engine: at-least-once delivery of records to a
//! remote peer, shared by every sink that sends records away (upstream
//! HTTP collectors, Kafka brokers, OpenTelemetry collectors). As in Fluent
//! Bit, where an output plugin's flush answers OK / RETRY / ERROR and the
//! engine owns retries and the filesystem buffer, a sink here supplies an
//! [`Encode`]r (a record into a unit of bytes, once) and a [`Transport`]
//! (units to the peer, and the peer's answer as an [`Outcome`]); the
//! engine owns the rest, once:
//!
//! - **Requests**: pipeline batches are encoded as they arrive
//!   ([`units`]); a request is sent at `batch_max_records`,
//!   `batch_max_bytes`, or `flush_interval_ms` after its first record. A
//!   pipeline batch may span several requests and a request several
//!   batches: a batch is acknowledged (its file's checkpoint may advance)
//!   when every one of its records was delivered, dead-lettered, or
//!   durably spooled.
//! - **Sending**: at most `max_in_flight` requests at once (a permit per
//!   sender). Answers ([`outcome`]): delivered; retry (exponential backoff
//!   with jitter for as long as it takes, a `Retry-After` honoured up to
//!   `retry_max_ms`); too large (split in halves); poison (dead-lettered);
//!   or judged record by record (`_bulk` items, HEC events, Kafka
//!   partitions, OTLP `partial_success`): only what the peer did not take
//!   is sent again, what it refused for good is dead-lettered
//!   ([`dead_letter`], bounded on disk). The outage clock runs from the
//!   first failed attempt until the peer answers.
//! - **The spill rule** (one for every sink on the engine): a request that
//!   finds every permit held waits for one (backpressure), except that it
//!   goes to the spool at once, never deleting older spooled records, when
//!   waiting would hold up what must not wait: a file went away with
//!   records not yet acknowledged (a [`crate::pipeline::Durability`]
//!   demand), or the readers would wait on this one peer and with it
//!   every other sink (the sink's queue is full, or the memory budget is
//!   reached). Once the peer has been failing for `spool_after_ms`, every
//!   request goes to the spool, those held by senders too, and the oldest
//!   spool files are deleted to make room if it is full (logged, counted
//!   as dropped: never silently). A spooled request is acknowledged once
//!   its file is durable ([`spool`]); the spool is sent first, oldest
//!   first, as permits allow, whenever it holds files (new requests wait
//!   behind it). With `spool_max_bytes = 0` there is no spool: an outage
//!   pauses reading.
//! - **Files that go away**: while a durability demand is held, everything
//!   the sink holds in memory goes to the spool at once and is
//!   acknowledged: the request being built, requests waiting for a permit,
//!   and requests being sent or waiting to retry (those stay with their
//!   sender, which goes on sending the spool file and deletes it once
//!   delivered).
//! - **Memory**: the encoded records a sink holds are charged to the
//!   memory budget ([`crate::budget`]) until their batch is handled.
//! - **Shutdown**: when the queue closes, what is batched is sent and the
//!   sink waits up to `shutdown_grace_ms`; if the peer is failing then,
//!   what is held goes to the spool at once and the sink stops as soon as
//!   everything is acknowledged. When the grace period ends (or the bridge
//!   cancels its shutdown token), what is still pending is spooled if the
//!   spool has room, else left unacknowledged (read again after a
//!   restart).
//! - **Reporting**: the sink's statistics (`/status` `sinks`), the faults
//!   of a spool or dead-letter file that cannot be written, and the
//!   figures a sink declares ([`Declared`]); every log line of the sink's
//!   tasks is in the span `sink{name=...}`.
//!
//! Everything a sink may choose is declared, not copied: [`Declared`]
//! (names, a peer fault, figures), [`Settings`] (from the one defaults
//! table, [`settings::DEFAULTS`]), [`Places`] (its spool directory and
//! dead-letter file). [`http`] holds what HTTP transports share.

pub mod dead_letter;
mod engine;
pub mod http;
pub mod outcome;
mod request;
pub mod settings;
pub mod spool;
pub mod units;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

pub use engine::{start, Control, Declared, FigureNames, Parts, Places};
pub use outcome::{backoff, retry_delay, Item, Outcome};
pub use settings::{Defaults, Knobs, Settings, DEFAULTS};
pub use units::{Span, Units};

use crate::record::Record;

/// A sink's encoder: a record into the bytes that carry it (a unit),
/// once, when it enters the sink.
pub trait Encode: Send + Sync + 'static {
    /// Appends the unit of record `r`, read from `file`, to `units`.
    fn encode(&self, r: &Record<'_>, file: &str, units: &mut Units);

    /// Bytes a body adds around `records` units (counted against
    /// `batch_max_bytes`).
    fn framing_bytes(&self, _records: usize) -> usize {
        0
    }

    /// The format's name, for the dead-letter file.
    fn format(&self) -> &'static str;
}

/// A sink's transport: units to the peer, and what the peer said.
pub trait Transport: Send + Sync + 'static {
    /// What carries a request's units (a compressed HTTP body; nothing
    /// for Kafka, which sends the units as messages). Built once per
    /// request and kept across its retries.
    type Body: Clone + Send + Sync + 'static;

    /// The body for `units` (CPU-bound work goes to the blocking pool);
    /// `None` when it cannot be built (the request is given up: spooled if
    /// it can be, else read again after a restart).
    fn body(&self, units: &Arc<Units>) -> impl Future<Output = Option<Self::Body>> + Send;

    /// One attempt to deliver `units` (as `body`), classified.
    fn attempt(&self, body: &Self::Body, units: &Units) -> impl Future<Output = Outcome> + Send;

    /// Where records go, for logs and the dead-letter file (no
    /// credentials).
    fn destination(&self) -> &str;
}
