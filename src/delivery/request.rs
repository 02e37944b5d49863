//! What the engine holds: pipeline batches not yet handled ([`Pending`],
//! only their receipts and a counter), and requests ([`Request`]: encoded
//! units with the batches they cover, in order), which split, narrow to
//! what a peer did not take, and acknowledge their batches as their
//! records are handled.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::outcome::Item;
use super::units::Units;
use crate::budget::Charge;
use crate::pipeline::Receipt;

/// A pipeline batch held by the engine, with its records not yet handled.
/// Its records are encoded when it arrives; only its [`Receipt`] is kept,
/// so the chunk they were read from is not pinned while requests retry.
pub(super) struct Pending {
    /// The batch's acknowledgement (when `remaining` reaches zero).
    pub batch: Receipt,
    /// Key in the pending set (oldest-pending statistic).
    pub id: u64,
    /// Records of the batch not yet delivered, dead-lettered or spooled.
    pub remaining: AtomicUsize,
    /// The memory its encoded records hold (in requests being built, sent
    /// or retried), charged to the memory budget until the last request
    /// covering the batch is handled.
    pub charge: std::sync::OnceLock<Charge>,
}

/// `count` consecutive records of a request that belong to one pipeline
/// batch.
pub(super) struct Cover {
    /// The pipeline batch.
    pub pending: Arc<Pending>,
    /// How many of its records.
    pub count: usize,
}

/// Where a request's records come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Origin {
    /// Pipeline batches in memory (acknowledged when handled).
    Memory,
    /// A spool file (already acknowledged; deleted when handled).
    Spool(u64),
}

/// One request's records.
pub(super) struct Request {
    /// The encoded records.
    pub units: Arc<Units>,
    /// Which pipeline batches they belong to, in order (empty for spool).
    pub covers: Vec<Cover>,
    /// Observed time of the oldest record (delivery delay).
    pub observed_ms: i64,
    /// Memory or spool.
    pub origin: Origin,
}

/// A request's records sorted by what the peer did with them.
pub(super) struct Judged {
    /// Taken.
    pub done: Option<Request>,
    /// To send again.
    pub retry: Option<Request>,
    /// Refused for good, with each refused record's status and error.
    pub refused: Option<(Request, Vec<(u16, String)>)>,
}

impl Request {
    /// The records at `indices` (ascending) as a request of their own, with
    /// their covers.
    pub fn subset(&self, indices: &[usize]) -> Request {
        let units = self.units.select(indices);
        let mut covers: Vec<Cover> = Vec::new();
        let (mut ci, mut cover_end) = (0, self.covers.first().map_or(0, |c| c.count));
        for &i in indices {
            while ci < self.covers.len() && i >= cover_end {
                ci += 1;
                cover_end += self.covers.get(ci).map_or(0, |c| c.count);
            }
            if let Some(c) = self.covers.get(ci) {
                match covers.last_mut() {
                    Some(l) if Arc::ptr_eq(&l.pending, &c.pending) => l.count += 1,
                    _ => covers.push(Cover { pending: c.pending.clone(), count: 1 }),
                }
            }
        }
        let observed_ms = covers.iter().map(|c| c.pending.batch.observed_ms).min().unwrap_or(self.observed_ms);
        Request { units: Arc::new(units), covers, observed_ms, origin: self.origin }
    }

    /// Splits by what the peer did with each record: taken, to send
    /// again, refused. A record the answer does not mention is sent again.
    pub fn judge(self, items: &[Item]) -> Judged {
        let (mut done, mut retry, mut refused, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.units.len() {
            match items.get(i) {
                Some(Item::Done) => done.push(i),
                Some(Item::Rejected { status, error }) => {
                    refused.push(i);
                    errors.push((*status, error.clone()));
                }
                Some(Item::Retry) | None => retry.push(i),
            }
        }
        let part = |ix: &[usize]| (!ix.is_empty()).then(|| self.subset(ix));
        Judged { done: part(&done), retry: part(&retry), refused: part(&refused).map(|r| (r, errors)) }
    }

    /// Splits in halves (a request too large for the peer), keeping the
    /// covers aligned with the records.
    pub fn split(self) -> (Request, Request) {
        let at = self.units.len() / 2;
        let (a, b) = self.units.split_at(at);
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        let mut seen = 0;
        for c in self.covers {
            if seen >= at {
                cb.push(c);
            } else if seen + c.count <= at {
                seen += c.count;
                ca.push(c);
            } else {
                let head = at - seen;
                seen += c.count;
                ca.push(Cover { pending: c.pending.clone(), count: head });
                cb.push(Cover { pending: c.pending, count: c.count - head });
            }
        }
        let obs = |cs: &[Cover], dflt| cs.iter().map(|c| c.pending.batch.observed_ms).min().unwrap_or(dflt);
        let (oa, ob) = (obs(&ca, self.observed_ms), obs(&cb, self.observed_ms));
        (
            Request { units: Arc::new(a), covers: ca, observed_ms: oa, origin: self.origin },
            Request { units: Arc::new(b), covers: cb, observed_ms: ob, origin: self.origin },
        )
    }
}

/// The request being built.
#[derive(Default)]
pub(super) struct Builder {
    /// Encoded records.
    pub units: Units,
    /// Their pipeline batches.
    pub covers: Vec<Cover>,
}

impl Builder {
    /// The record just encoded belongs to `p`.
    pub fn note(&mut self, p: &Arc<Pending>) {
        match self.covers.last_mut() {
            Some(c) if Arc::ptr_eq(&c.pending, p) => c.count += 1,
            _ => self.covers.push(Cover { pending: p.clone(), count: 1 }),
        }
    }

    /// The last record was taken back.
    pub fn unnote(&mut self) {
        if let Some(c) = self.covers.last_mut() {
            c.count -= 1;
            if c.count == 0 {
                self.covers.pop();
            }
        }
    }

    /// The request built so far, if any.
    pub fn take(&mut self) -> Option<Request> {
        if self.units.is_empty() {
            return None;
        }
        // The next request will likely be as large: allocate once.
        let cap = self.units.buf.len();
        let b = std::mem::take(self);
        self.units.buf.reserve(cap);
        let observed_ms = b.covers.iter().map(|c| c.pending.batch.observed_ms).min().unwrap_or(0);
        Some(Request { units: Arc::new(b.units), covers: b.covers, observed_ms, origin: Origin::Memory })
    }
}
