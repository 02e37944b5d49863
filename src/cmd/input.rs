//! The offline commands' inputs (`parse`, `export`, `lag report`): a file
//! or stdin (`-`) opened, gzip recognised by its magic bytes and
//! decompressed (multi-member, as rotated logs are), read in large buffers
//! through the [`Ingest`] stage the running bridge uses
//! ([`read_through`]), so every command frames lines and pretty-printed
//! JSON documents, bounds them by `max_line_bytes`, numbers them and
//! rejects the same way; rejects are counted by reason and written to
//! `--rejects` ([`Rejects`]), and each file's counts summed up
//! ([`FileTally`]).
//!
//! This is the one offline read loop. It lives with the commands, not in
//! `ingest`, whose stage does no I/O; the running bridge reads through
//! `tail::reader` (offsets, rotation, budget) into the same stage.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read};
use std::path::Path;
use std::rc::Rc;

use anyhow::Context as _;
use flate2::bufread::MultiGzDecoder;

use crate::ingest::{Ingest, RejectOut, Rejected};
use crate::parse::{Format, RejectReason};
use crate::record::Record;
use crate::rejects::RejectsWriter;

/// Read buffer size: large enough that bulk files are read in few syscalls.
pub const READ_BUF_BYTES: usize = 256 * 1024;

/// The rejects file of a command (`--rejects`).
pub type RejectsFile = RejectsWriter<BufWriter<File>>;

/// Creates the `--rejects` file, if asked for.
pub fn create_rejects(path: Option<&Path>) -> anyhow::Result<Option<RejectsFile>> {
    path.map(|p| {
        let f = File::create(p).with_context(|| format!("cannot create rejects file {}", p.display()))?;
        Ok(RejectsWriter::new(BufWriter::new(f)))
    })
    .transpose()
}

/// An opened input.
pub struct Input {
    /// Decompressed content.
    pub reader: Box<dyn Read>,
    /// Size on disk (for a progress bar); `None` for stdin.
    pub size: Option<u64>,
    /// Bytes read from disk so far (compressed bytes for gzip).
    pub read: Rc<Cell<u64>>,
    /// The file's modification time (epoch ms); `None` for stdin.
    pub modified_ms: Option<i64>,
}

/// Counts the bytes read through it (for a progress bar).
struct Counting<R> {
    /// The source.
    inner: R,
    /// Shared running total.
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Opens a file (`-` = stdin), decompressing gzip (recognised by its magic
/// bytes, whatever the name).
pub fn open_input(path: &Path) -> io::Result<Input> {
    let read = Rc::new(Cell::new(0));
    let (raw, size, modified_ms): (Box<dyn Read>, Option<u64>, Option<i64>) = if path.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None, None)
    } else {
        let f = File::open(path)?;
        let meta = f.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_millis() as i64);
        (Box::new(f), Some(meta.len()), modified)
    };
    let mut buffered = BufReader::with_capacity(READ_BUF_BYTES, Counting { inner: raw, read: read.clone() });
    let gz = loop {
        match buffered.fill_buf() {
            Ok(b) => break b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let reader: Box<dyn Read> = if gz { Box::new(MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
    Ok(Input { reader, size, read, modified_ms })
}

/// Reads `input` to its end for an [`Ingest`]: `feed` is called with what
/// the ingest did not consume of the previous call followed by new bytes,
/// and whether the input ends after them (pass both to
/// [`Ingest::feed`]); it returns the bytes consumed (the whole buffer when
/// the input ends). A read error ends the input (what was read is fed as
/// its end) and is returned (`Ok(Some(e))`); an error of `feed` stops at
/// once (`Err`). `buf` is the read buffer, kept between inputs (a buffer
/// grown for a long document is not kept).
pub fn read_through<E>(
    input: &mut dyn Read,
    buf: &mut Vec<u8>,
    mut feed: impl FnMut(&[u8], bool) -> Result<usize, E>,
) -> Result<Option<io::Error>, E> {
    // buf[..filled]: what the ingest did not consume, then new bytes.
    let mut filled = 0;
    let mut error = None;
    loop {
        let (n, last) = match read_some(input, buf, filled) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) => {
                error = Some(e);
                (0, true)
            }
        };
        filled += n;
        let consumed = feed(&buf[..filled], last)?.min(filled);
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if last {
            break;
        }
    }
    buf.truncate(READ_BUF_BYTES);
    buf.shrink_to(READ_BUF_BYTES);
    Ok(error)
}

/// Reads once into `buf` after its first `filled` bytes (growing it when
/// full: an open document is carried); returns the bytes read, 0 at the
/// end of the input.
fn read_some(r: &mut dyn Read, buf: &mut Vec<u8>, filled: usize) -> io::Result<usize> {
    if buf.len() < filled + READ_BUF_BYTES / 2 {
        buf.resize(filled + READ_BUF_BYTES, 0);
    }
    loop {
        match r.read(&mut buf[filled..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Turns a vector of records into an empty one of another lifetime,
/// keeping its allocation (records borrow the read buffer, which changes
/// every read).
// `filter_map` (not `filter`) because it changes the item type; the
// in-place collect reuses the allocation since the layouts are equal.
#[allow(clippy::unnecessary_filter_map)]
pub fn recycle<'b>(mut v: Vec<Record<'_>>) -> Vec<Record<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Where an input's rejects go: counted by reason, and written to
/// `--rejects`.
pub struct Rejects<'r, 'f> {
    /// The input's name (as given).
    pub name: &'f str,
    /// The rejects file, if asked for.
    pub writer: Option<&'r mut RejectsFile>,
    /// Counts by reason.
    pub counts: &'r mut BTreeMap<RejectReason, u64>,
    /// The first write error (reported once the buffer is done).
    pub error: Option<io::Error>,
}

impl<'r> Rejects<'r, 'static> {
    /// Counts by reason only, with no rejects file (`lag report`).
    pub fn counting(counts: &'r mut BTreeMap<RejectReason, u64>) -> Self {
        Rejects { name: "", writer: None, counts, error: None }
    }
}

impl<'a> RejectOut<'a> for Rejects<'_, '_> {
    fn reject(&mut self, r: Rejected<'a>) {
        *self.counts.entry(r.reject.reason).or_default() += 1;
        if let (Some(w), None) = (self.writer.as_deref_mut(), &self.error) {
            if let Err(e) = w.write(&r.entry(self.name, None)) {
                self.error = Some(e);
            }
        }
    }
}

/// Counts for one input (or the total).
#[derive(Debug, Default)]
pub struct FileTally {
    /// Lines read (a multi-line document counts each of its lines).
    pub lines: u64,
    /// Records given.
    pub records: u64,
    /// Header rows seen.
    pub headers: u64,
    /// Blank lines.
    pub blank: u64,
    /// Rejected lines (or documents) by reason.
    pub rejects: BTreeMap<RejectReason, u64>,
    /// The format in use at the end (what `auto` chose).
    pub format: Option<Format>,
    /// The format asked for.
    pub requested: Option<Format>,
}

impl FileTally {
    /// Lines (or documents) rejected.
    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }

    /// Takes the ingest's line counts.
    pub fn counted(&mut self, ingest: &Ingest) {
        let c = ingest.counts();
        (self.lines, self.headers, self.blank) = (c.lines, c.headers, c.blank);
    }

    /// Adds another input's counts.
    pub fn add(&mut self, o: &FileTally) {
        self.lines += o.lines;
        self.records += o.records;
        self.headers += o.headers;
        self.blank += o.blank;
        for (r, n) in &o.rejects {
            *self.rejects.entry(*r).or_default() += n;
        }
    }

    fn reasons(&self) -> String {
        if self.rejects.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = self.rejects.iter().map(|(r, n)| format!("{r} {n}")).collect();
        format!(" ({})", parts.join(", "))
    }

    /// `file NAME: format F: N lines, ...`.
    pub fn summary_line(&self, name: &str) -> String {
        let format = match (self.requested, self.format) {
            (Some(Format::Auto), Some(Format::Auto) | None) => "auto (undecided)".to_string(),
            (Some(Format::Auto), Some(f)) => format!("auto → {f}"),
            (_, Some(f)) => f.to_string(),
            _ => "-".to_string(),
        };
        format!("file {name}: format {format}: {}", self.counts())
    }

    /// The counts both summary lines end with.
    pub fn counts(&self) -> String {
        format!(
            "{} lines, {} records, {} rejects{}, {} headers, {} blank",
            self.lines,
            self.records,
            self.rejected(),
            self.reasons(),
            self.headers,
            self.blank
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycle_keeps_the_allocation() {
        let mut v: Vec<Record<'static>> = Vec::with_capacity(16);
        v.push(Record::default());
        let cap = v.capacity();
        let w: Vec<Record<'_>> = recycle(v);
        assert!(w.is_empty());
        assert_eq!(w.capacity(), cap);
    }

    #[test]
    fn feed_sees_its_unconsumed_bytes_again_and_the_end_once() {
        let data: Vec<u8> = (0..READ_BUF_BYTES * 3 + 17).map(|i| if i % 100 == 99 { b'\n' } else { b'x' }).collect();
        let mut seen = Vec::new();
        let mut lasts = 0;
        let mut buf = Vec::new();
        let r = read_through(&mut &data[..], &mut buf, |b: &[u8], last| -> Result<usize, ()> {
            lasts += usize::from(last);
            // Consume whole lines only, like the ingest stage.
            let n = if last { b.len() } else { b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1) };
            seen.extend_from_slice(&b[..n]);
            Ok(n)
        });
        assert!(matches!(r, Ok(None)));
        assert_eq!(lasts, 1);
        assert_eq!(seen, data);
        assert!(buf.len() <= READ_BUF_BYTES);
    }
}
