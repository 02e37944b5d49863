//! The ingest stage: the bytes of one file become records or rejects.
//!
//! One [`Ingest`] per file, used by both the running bridge
//! (`tail::reader`) and the offline commands (`parse`, `export`, `lag
//! report`, which read through `cmd::input`), so they cannot drift. It is
//! fed buffers of the file's content (decompressed for gzip), and it:
//!
//! - frames: splits lines, and joins a pretty-printed JSON document (a line
//!   that is a lone `{`, in an `ecls`, `le-json` or undecided `auto` file)
//!   into one "line" by brace balance ([`crate::parse::framing`]);
//! - numbers lines and keeps offsets, so every reject says where it was;
//! - parses ([`LineParser`]), stamps (`ingestion_time`, `sync_delay_ms`,
//!   through [`Record::stamp_observed`], and the bridge's `host`) and
//!   enriches;
//! - hands rejects to the caller ([`RejectOut`]), in file order.
//!
//! Each call says how many bytes it consumed: whole lines and whole
//! documents (and the skipped bytes of an over-long one). The caller keeps
//! the rest (a partial last line, an open document) and passes it again,
//! followed by new bytes, in the next call; on the last call (the input
//! ends) the rest is taken as complete.
//!
//! Invariants:
//! - No I/O and no clock: the caller says when the bytes were observed.
//! - [`Ingest::offset`] is where reading must resume so that nothing handled
//!   is handled again and nothing is skipped: the start of the first line
//!   not handled, of an open document, or of an over-long line or document
//!   being skipped.
//! - The outcome (records, and rejects with their line, offset, reason and
//!   raw bytes) does not depend on how the bytes are cut into buffers.
//! - Bounded memory: what the caller carries is at most
//!   `2 * (max_line_bytes + 1)` bytes (an open document and its partial
//!   line); anything longer is rejected as `too_long` and skipped.
//! - A line or document gives N records, or exactly one reject, and never
//!   disturbs its neighbours.

pub mod rejects;

use memchr::memchr;

use crate::enrich::{Enricher, Lookups};
use crate::parse::framing::{opens_document, JsonDepth};
use crate::parse::{Format, LineKind, LineParser, Reject, RejectReason};
use crate::record::Record;

pub use rejects::{log_reject_summary, RejectBatch, RejectOut, RejectTally, Rejected};

/// What the records of one call are stamped and enriched with.
pub struct Context<'a, 'e> {
    /// The lookup tables records borrow their filled values from.
    pub tables: &'a Lookups,
    /// Lookups and masking; `None` when there is nothing to do.
    pub enricher: Option<&'e Enricher>,
    /// When the bytes were read (epoch ms): stamped on every record as
    /// `ingestion_time` (and `sync_delay_ms`); `None` stamps nothing.
    pub observed_ms: Option<i64>,
    /// The bridge's `host`, stamped on every record that carries none
    /// (a record's own host is never overwritten); empty stamps nothing
    /// (offline `parse`).
    pub host: &'a str,
}

/// What one call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes consumed from the front of the buffer; the caller passes the
    /// rest again, first, in the next call.
    pub consumed: usize,
    /// On the last call: the input ended inside a line (no newline) or
    /// inside a document, and what there was of it was handled.
    pub partial: bool,
}

/// Running counts of one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Lines seen (a multi-line document counts each of its lines).
    pub lines: u64,
    /// Header rows (CSV).
    pub headers: u64,
    /// Blank lines.
    pub blank: u64,
}

/// A multi-line JSON document being joined. It starts at the first byte
/// not consumed (everything before it was handled).
struct Doc {
    /// Brace balance so far.
    depth: JsonDepth,
    /// Line number of its first line (0 = unknown).
    line: u64,
}

/// An over-long line or document whose start was rejected: its remaining
/// bytes are consumed without being kept.
enum Skip {
    /// Up to the end of the line.
    Line {
        /// Offset of the line's start (where reading resumes meanwhile).
        start: u64,
    },
    /// Up to the end of the document (its braces balance), or up to a
    /// line that starts a new object where the document cannot continue.
    Doc {
        /// Offset of the document's start.
        start: u64,
        /// Brace balance so far.
        depth: JsonDepth,
        /// The current line's start was already consumed.
        mid_line: bool,
    },
}

/// One file's ingest state (see the module documentation).
pub struct Ingest {
    /// Per-file parsing state (the format `auto` chose, a CSV header).
    parser: LineParser,
    /// Lines (and documents) longer than this are rejected.
    max_line_bytes: usize,
    /// Offset in the file of the first byte not consumed: the first byte
    /// of the next buffer.
    pos: u64,
    /// Line numbers are known (reading started at the file's start).
    numbered: bool,
    /// An open document (its bytes are not consumed yet).
    doc: Option<Doc>,
    /// Skipping the rest of an over-long line or document.
    skip: Option<Skip>,
    /// Bytes at the front of the next buffer already split into lines (the
    /// open document's complete lines).
    scanned: usize,
    /// Bytes at the front of the next buffer known to hold no newline past
    /// `scanned` (a partial line carried over).
    searched: usize,
    /// Running counts.
    counts: Counts,
}

/// The bytes of a line that tell whether it starts a new object: its
/// first `max_line_bytes + 1` bytes (so the answer does not depend on how
/// much of a long line has arrived).
fn starts_object(line: &[u8], max_line_bytes: usize) -> bool {
    line[..line.len().min(max_line_bytes.saturating_add(1))].trim_ascii_start().starts_with(b"{")
}

/// The reject of an over-long line or document.
fn too_long(what: &str, max_line_bytes: usize) -> Reject {
    Reject::new(RejectReason::TooLong, format!("{what} longer than max_line_bytes {max_line_bytes}"))
}

/// The first bytes of an over-long line or document, as its reject shows
/// them.
fn head(text: &[u8], max_line_bytes: usize) -> &[u8] {
    &text[..text.len().min(max_line_bytes.saturating_add(1))]
}

impl Ingest {
    /// A file read from `offset` (line numbers are known only from 0).
    pub fn new(format: Format, max_line_bytes: usize, offset: u64) -> Ingest {
        Ingest {
            parser: LineParser::new(format, max_line_bytes),
            max_line_bytes,
            pos: offset,
            numbered: offset == 0,
            doc: None,
            skip: None,
            scanned: 0,
            searched: 0,
            counts: Counts::default(),
        }
    }

    /// The same ingest, keeping the fields a bridge wrote in the records it
    /// reads (see [`LineParser::keep_bridge_fields`]).
    pub fn keep_bridge_fields(mut self) -> Ingest {
        self.parser.keep_bridge_fields();
        self
    }

    /// Where reading must resume to handle everything not handled yet,
    /// once: a checkpoint may point here.
    pub fn offset(&self) -> u64 {
        match &self.skip {
            Some(Skip::Line { start } | Skip::Doc { start, .. }) => *start,
            None => self.pos,
        }
    }

    /// Offset in the file of the first byte of the next buffer.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The file's parser (the format in use).
    pub fn parser(&self) -> &LineParser {
        &self.parser
    }

    /// Lines, header rows and blank lines so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// True while an over-long line or document is being skipped.
    pub fn skipping(&self) -> bool {
        self.skip.is_some()
    }

    /// The 1-based number of the next line (0 when unknown).
    fn next_line_no(&self) -> u64 {
        if self.numbered {
            self.counts.lines + 1
        } else {
            0
        }
    }

    /// Handles `data`: the bytes not consumed by the previous call, then
    /// new ones. Records go to `out` (they may borrow from `data` and the
    /// context's tables), rejects to `rejects`. With `last`, the input
    /// ends after `data`: everything is consumed.
    pub fn feed<'a>(
        &mut self,
        data: &'a [u8],
        last: bool,
        cx: &Context<'a, '_>,
        out: &mut Vec<Record<'a>>,
        rejects: &mut dyn RejectOut<'a>,
    ) -> Fed {
        debug_assert!(self.searched <= data.len(), "the carried bytes were not passed again");
        // data[consumed..at] are complete lines of the open document;
        // data[at..] is not split into lines yet.
        let mut consumed = 0usize;
        let mut at = self.scanned;
        let mut search = self.searched.max(at);
        let mut step = Step { data, cx, out, rejects };
        while let Some(i) = memchr(b'\n', &data[search..]) {
            let end = search + i;
            self.line(&mut step, &mut consumed, at, end, true);
            self.counts.lines += 1;
            at = end + 1;
            search = at;
        }
        let mut partial = false;
        if last {
            // The input ends inside a line (maybe an over-long one being
            // skipped) or inside a document.
            partial = matches!(self.skip, Some(Skip::Line { .. } | Skip::Doc { mid_line: true, .. }));
            if at < data.len() {
                partial = true;
                self.line(&mut step, &mut consumed, at, data.len(), false);
                self.counts.lines += 1;
            }
            partial |= matches!(self.skip, Some(Skip::Doc { .. }));
            if let Some(doc) = self.doc.take() {
                // What there is of the document is handled (and reported
                // as incomplete).
                let end = data.len() - usize::from(data.last() == Some(&b'\n'));
                self.handle(&mut step, consumed, end.max(consumed), doc.line, true);
                partial = true;
            }
            self.skip = None;
            consumed = data.len();
        } else if at < data.len() {
            self.rest(&mut step, &mut consumed, at);
        }
        let (scanned, searched) = if consumed == data.len() { (0, 0) } else { (at.max(consumed) - consumed, data.len() - consumed) };
        self.scanned = scanned;
        self.searched = searched;
        self.pos += consumed as u64;
        Fed { consumed, partial }
    }

    /// One line, `data[at..end]` (`terminated`: a newline follows it).
    fn line<'a>(&mut self, s: &mut Step<'a, '_>, consumed: &mut usize, at: usize, end: usize, terminated: bool) {
        let data = s.data;
        let line = &data[at..end];
        let next = if terminated { end + 1 } else { end };
        match &mut self.skip {
            Some(Skip::Line { .. }) => {
                // The end of an over-long line already rejected.
                self.skip = None;
                *consumed = next;
                return;
            }
            Some(Skip::Doc { depth, mid_line, .. }) => {
                if *mid_line || !(depth.rejects_object_start() && starts_object(line, self.max_line_bytes)) {
                    if !*mid_line {
                        depth.line_end();
                    }
                    *mid_line = false;
                    depth.feed(line);
                    // Closed at the end of the line (it was open at its
                    // start), however the line arrived.
                    if depth.depth() == 0 {
                        self.skip = None;
                    }
                    *consumed = next;
                    return;
                }
                // A new object where the document cannot continue: the
                // document (already rejected) ends before this line.
                self.skip = None;
            }
            None => {}
        }
        if let Some(doc) = &mut self.doc {
            let doc_start = *consumed;
            if doc.depth.rejects_object_start() && starts_object(line, self.max_line_bytes) {
                // The lone `{` did not open a document after all: it is
                // rejected, and this line is read on its own.
                self.reject_lone_open(s, doc_start, at, consumed);
            } else {
                doc.depth.line_end();
                if doc.depth.feed(line) {
                    let line_no = doc.line;
                    self.doc = None;
                    self.handle(s, doc_start, end, line_no, true);
                    *consumed = next;
                } else if end - doc_start > self.max_line_bytes {
                    // Longer than any document may be, and not closed: it
                    // is rejected now and the rest of it skipped.
                    let start = self.pos + doc_start as u64;
                    let r = Rejected {
                        offset: start,
                        line: doc.line,
                        reject: too_long("document", self.max_line_bytes),
                        raw: head(&data[doc_start..end], self.max_line_bytes),
                    };
                    let depth = std::mem::take(&mut doc.depth);
                    self.doc = None;
                    s.rejects.reject(r);
                    self.skip = Some(Skip::Doc { start, depth, mid_line: false });
                    *consumed = next;
                }
                return;
            }
        }
        debug_assert_eq!(*consumed, at);
        let body = line.strip_suffix(b"\r").unwrap_or(line);
        if body.len() <= self.max_line_bytes && self.parser.accepts_json_documents() && opens_document(line) {
            let mut depth = JsonDepth::new();
            depth.feed(line);
            self.doc = Some(Doc { depth, line: self.next_line_no() });
            return;
        }
        let line_no = self.next_line_no();
        self.handle(s, at, end, line_no, false);
        *consumed = next;
    }

    /// The bytes after the last newline, `data[at..]`, when more may
    /// follow: kept for the next call unless they are already too long.
    fn rest<'a>(&mut self, s: &mut Step<'a, '_>, consumed: &mut usize, at: usize) {
        let data = s.data;
        let rest = &data[at..];
        let over = rest.len() > self.max_line_bytes.saturating_add(1);
        match &mut self.skip {
            Some(Skip::Line { .. }) => {
                *consumed = data.len();
                return;
            }
            Some(Skip::Doc { depth, mid_line, .. }) => {
                if !*mid_line && !over {
                    // Whether this line continues the document is known
                    // once more of it arrives.
                    *consumed = at;
                    return;
                }
                if *mid_line || !(depth.rejects_object_start() && starts_object(rest, self.max_line_bytes)) {
                    // Part of the document: whether it closes is known at
                    // the end of the line.
                    if !*mid_line {
                        depth.line_end();
                    }
                    *mid_line = true;
                    depth.feed(rest);
                    *consumed = data.len();
                    return;
                }
                self.skip = None;
            }
            None => {}
        }
        if let Some(doc) = &mut self.doc {
            let doc_start = *consumed;
            if !over {
                *consumed = doc_start;
                return;
            }
            if doc.depth.rejects_object_start() && starts_object(rest, self.max_line_bytes) {
                self.reject_lone_open(s, doc_start, at, consumed);
            } else {
                // An over-long line inside the document: the document is
                // too long.
                let start = self.pos + doc_start as u64;
                let r = Rejected {
                    offset: start,
                    line: doc.line,
                    reject: too_long("document", self.max_line_bytes),
                    raw: head(&data[doc_start..], self.max_line_bytes),
                };
                let mut depth = std::mem::take(&mut doc.depth);
                self.doc = None;
                s.rejects.reject(r);
                depth.line_end();
                depth.feed(rest);
                self.skip = Some(Skip::Doc { start, depth, mid_line: true });
                *consumed = data.len();
                return;
            }
        }
        debug_assert_eq!(*consumed, at);
        if over {
            // Already longer than a line may be: rejected now (not when its
            // end arrives, which may be never), and skipped up to its end.
            let start = self.pos + at as u64;
            let r = Rejected {
                offset: start,
                line: self.next_line_no(),
                reject: too_long("line", self.max_line_bytes),
                raw: head(rest, self.max_line_bytes),
            };
            s.rejects.reject(r);
            self.skip = Some(Skip::Line { start });
            *consumed = data.len();
        }
    }

    /// Parses one line or joined document, `data[from..to]`, and stamps
    /// and enriches its records, or rejects it.
    /// The lone `{` that opened `self.doc` (at `doc_start`) did not open a
    /// document after all, since a new object starts at `at` where the
    /// document cannot continue: it is rejected, and reading goes on at
    /// `at`.
    fn reject_lone_open<'a>(&mut self, s: &mut Step<'a, '_>, doc_start: usize, at: usize, consumed: &mut usize) {
        let Some(doc) = self.doc.take() else { return };
        let reject = Reject::new(RejectReason::BadJson, "a lone `{` not followed by a JSON document");
        let raw = &s.data[doc_start..at.saturating_sub(1).max(doc_start)];
        s.rejects.reject(Rejected { offset: self.pos + doc_start as u64, line: doc.line, reject, raw });
        *consumed = at;
    }

    fn handle<'a>(&mut self, s: &mut Step<'a, '_>, from: usize, to: usize, line_no: u64, doc: bool) {
        let text = &s.data[from..to];
        let offset = self.pos + from as u64;
        let body = text.strip_suffix(b"\r").unwrap_or(text);
        if body.len() > self.max_line_bytes {
            let what = if doc { "document" } else { "line" };
            s.rejects.reject(Rejected {
                offset,
                line: line_no,
                reject: too_long(what, self.max_line_bytes),
                raw: head(text, self.max_line_bytes),
            });
            return;
        }
        let first = s.out.len();
        match self.parser.parse_line(text, s.out) {
            Ok(LineKind::Records(_)) => {
                for rec in &mut s.out[first..] {
                    if let Some(ms) = s.cx.observed_ms {
                        rec.stamp_observed(ms);
                    }
                    if rec.host.is_empty() && !s.cx.host.is_empty() {
                        rec.host = std::borrow::Cow::Borrowed(s.cx.host);
                    }
                    if let Some(e) = s.cx.enricher {
                        e.enrich(s.cx.tables, rec);
                    }
                }
            }
            Ok(LineKind::Header) => self.counts.headers += 1,
            Ok(LineKind::Blank) => self.counts.blank += 1,
            Err(reject) => s.rejects.reject(Rejected { offset, line: line_no, reject, raw: text }),
        }
    }
}

/// What one call works on.
struct Step<'a, 'o> {
    /// The buffer.
    data: &'a [u8],
    /// Stamping and enrichment.
    cx: &'o Context<'a, 'o>,
    /// Records.
    out: &'o mut Vec<Record<'a>>,
    /// Rejects.
    rejects: &'o mut dyn RejectOut<'a>,
}

#[cfg(test)]
mod tests;
