//! Encoded records: every record is encoded once, when it enters a sink
//! on the engine, into a *unit* (the bytes that carry it to the peer: an
//! NDJSON line, a `_bulk` action/document pair, a Kafka message, an OTLP
//! log record), and a request is a run of units. So a split in halves, a
//! partial answer, the spool and the dead-letter file reuse those bytes
//! without encoding again. Each unit names the record's *document* inside
//! it (what the dead-letter file quotes). Invariant: the engine never looks
//! inside a unit; only the sink's encoder knows its layout.

/// Where one record's bytes lie in [`Units::buf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Span {
    /// End of the record's unit (the next unit starts here).
    pub end: usize,
    /// Start of the record's JSON document inside the unit.
    pub doc_start: usize,
    /// End of the record's JSON document inside the unit.
    pub doc_end: usize,
}

/// Encoded records, back to back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Units {
    /// The units, concatenated.
    pub buf: Vec<u8>,
    /// One span per record, in order.
    pub spans: Vec<Span>,
}

impl Units {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Start of record `i`'s unit.
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.spans[i - 1].end
        }
    }

    /// The JSON document of record `i`.
    pub fn doc(&self, i: usize) -> &[u8] {
        let s = self.spans[i];
        &self.buf[s.doc_start..s.doc_end]
    }

    /// The unit of record `i`.
    pub fn unit(&self, i: usize) -> &[u8] {
        &self.buf[self.start(i)..self.spans[i].end]
    }

    /// Drops the last record (used when it made the request too big).
    pub fn pop(&mut self) {
        if self.spans.pop().is_some() {
            let end = self.spans.last().map_or(0, |s| s.end);
            self.buf.truncate(end);
        }
    }

    /// The records at `indices` (ascending), as units of their own.
    pub fn select(&self, indices: &[usize]) -> Units {
        let mut out = Units::default();
        for &i in indices {
            let (start, s) = (self.start(i), self.spans[i]);
            let base = out.buf.len();
            out.buf.extend_from_slice(&self.buf[start..s.end]);
            out.spans.push(Span {
                end: base + (s.end - start),
                doc_start: base + (s.doc_start - start),
                doc_end: base + (s.doc_end - start),
            });
        }
        out
    }

    /// Splits into records `[0, at)` and `[at, len)`.
    pub fn split_at(&self, at: usize) -> (Units, Units) {
        let cut = self.start(at);
        let head = Units { buf: self.buf[..cut].to_vec(), spans: self.spans[..at].to_vec() };
        let tail = Units {
            buf: self.buf[cut..].to_vec(),
            spans: self.spans[at..]
                .iter()
                .map(|s| Span { end: s.end - cut, doc_start: s.doc_start - cut, doc_end: s.doc_end - cut })
                .collect(),
        };
        (head, tail)
    }
}
