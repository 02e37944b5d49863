//! Where the ingest stage's rejects go: [`RejectOut`], implemented by the
//! `parse` command (written at once to `--rejects`) and by the running
//! bridge ([`RejectBatch`]: written to the rejects file in batches,
//! counted by reason, a few kept for a rate-limited log).
//!
//! Invariant: a reject costs bounded memory whatever the input: a buffer
//! of a hundred thousand one-byte junk lines holds at most
//! [`REJECT_BATCH`] rejects at once, and the log sees at most
//! [`REJECT_SAMPLES`] per buffer.

use std::sync::Mutex;

use crate::logsafe::Escaped;
use crate::parse::{Reject, RejectReason};
use crate::rejects::{RejectEntry, RejectsFile};
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::FileStats;

/// A line (or joined document) that did not parse, with where it came
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected<'a> {
    /// Offset of its first byte in the file (decompressed content).
    pub offset: u64,
    /// 1-based number of its (first) line; 0 when unknown (reading did
    /// not start at the file's start).
    pub line: u64,
    /// Why.
    pub reject: Reject,
    /// The line as read, without its newline (for an over-long line or
    /// document, its first `max_line_bytes + 1` bytes).
    pub raw: &'a [u8],
}

impl Rejected<'_> {
    /// The rejects-file entry for it.
    pub fn entry<'b>(&'b self, file: &'b str, observed_ms: Option<i64>) -> RejectEntry<'b> {
        RejectEntry {
            file,
            line: self.line,
            offset: self.offset,
            reason: self.reject.reason,
            detail: &self.reject.detail,
            raw: self.raw,
            observed_ms,
        }
    }
}

/// Takes the rejects of an [`Ingest`](super::Ingest), in file order. They
/// may borrow the buffer being ingested.
pub trait RejectOut<'a> {
    /// One reject.
    fn reject(&mut self, r: Rejected<'a>);
}

impl<'a> RejectOut<'a> for Vec<Rejected<'a>> {
    fn reject(&mut self, r: Rejected<'a>) {
        self.push(r);
    }
}

/// Rejects held at most before they are written out: a 256 KB buffer can
/// hold a hundred thousand one-byte junk lines, and each held reject costs
/// far more than its line.
pub const REJECT_BATCH: usize = 1024;

/// Rejects of one buffer kept for the log (the first ones).
pub const REJECT_SAMPLES: usize = 16;

/// A reject kept for the log.
#[derive(Debug, Clone)]
pub struct RejectSample {
    /// Offset of the line.
    pub offset: u64,
    /// Its line number (0 = unknown).
    pub line: u64,
    /// Why.
    pub reject: Reject,
}

/// What a buffer rejected: counts by reason and the first few.
#[derive(Debug, Default)]
pub struct RejectTally {
    /// Rejected lines by reason.
    pub counts: Vec<(RejectReason, u64)>,
    /// The first ones, for the log.
    pub samples: Vec<RejectSample>,
}

impl RejectTally {
    /// Rejects counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// True when nothing was rejected.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn add(&mut self, r: &Rejected<'_>) {
        match self.counts.iter_mut().find(|(reason, _)| *reason == r.reject.reason) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((r.reject.reason, 1)),
        }
        if self.samples.len() < REJECT_SAMPLES {
            self.samples.push(RejectSample { offset: r.offset, line: r.line, reject: r.reject.clone() });
        }
    }

    /// Counts the rejects in the file's statistics and logs the samples,
    /// within the source's log limit (the rest is counted as suppressed
    /// and summarised once the limit's window is over).
    pub fn report(&self, file: &str, stats: &FileStats, limit: &Mutex<LogLimit>) {
        if self.counts.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let mut l = limit.lock().unwrap_or_else(|e| e.into_inner());
        for r in &self.samples {
            if l.allow(now, r.reject.reason.name()) {
                tracing::warn!(file = %Escaped(file), offset = r.offset, reason = %r.reject.reason, detail = %Escaped(&r.reject.detail), "rejected line");
            }
        }
        for &(reason, n) in &self.counts {
            for _ in 0..n {
                stats.rejected_for(reason.name());
            }
            // The rejects beyond the samples are not logged one by one.
            let sampled = self.samples.iter().filter(|r| r.reject.reason == reason).count() as u64;
            l.suppressed(now, reason.name(), n - sampled);
        }
        drop(l);
        log_reject_summary(limit, false);
    }
}

/// Logs the summary of "rejected line" log lines not written, when the
/// window is over (or at once with `force`).
pub fn log_reject_summary(limit: &Mutex<LogLimit>, force: bool) {
    let mut l = limit.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = l.summary(std::time::Instant::now(), force) {
        tracing::warn!(
            suppressed = s.total, by_reason = %s.by_label,
            "rejected lines: {} similar log lines suppressed in the last {} s (every reject is counted in /metrics and written to the rejects file)",
            s.total, l.window().as_secs()
        );
    }
}

/// The running bridge's [`RejectOut`] for one buffer: rejects go to the
/// rejects file every [`REJECT_BATCH`] (and when dropped), and are
/// tallied. Blocking I/O: used on the blocking pool.
pub struct RejectBatch<'s, 'a> {
    /// The rejects file, if any.
    sink: Option<&'s RejectsFile>,
    /// The file being read (for the entries).
    file: &'s str,
    /// When the buffer was read.
    observed_ms: i64,
    /// Not written yet.
    pending: Vec<Rejected<'a>>,
    /// What the buffer rejected.
    tally: &'s mut RejectTally,
}

impl<'s, 'a> RejectBatch<'s, 'a> {
    /// Rejects of `file` read at `observed_ms`, tallied into `tally`.
    pub fn new(sink: Option<&'s RejectsFile>, file: &'s str, observed_ms: i64, tally: &'s mut RejectTally) -> Self {
        RejectBatch { sink, file, observed_ms, pending: Vec::new(), tally }
    }

    /// Writes out what is pending.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(sink) = self.sink {
            let (file, observed) = (self.file, Some(self.observed_ms));
            sink.write_all(self.pending.iter().map(|r| r.entry(file, observed)));
        }
        self.pending.clear();
    }

    /// The most rejects held at once so far (the batch's capacity).
    pub fn held_capacity(&self) -> usize {
        self.pending.capacity()
    }
}

impl<'a> RejectOut<'a> for RejectBatch<'_, 'a> {
    fn reject(&mut self, r: Rejected<'a>) {
        self.tally.add(&r);
        self.pending.push(r);
        if self.pending.len() >= REJECT_BATCH {
            self.flush();
        }
    }
}

impl Drop for RejectBatch<'_, '_> {
    fn drop(&mut self) {
        self.flush();
    }
}
