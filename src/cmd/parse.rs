//! `calllog-bridge parse`: read log files offline and print call-log
//! records.
//!
//! Each input (`-` = stdin) is read with a reusable line buffer; gzip input
//! is recognised by its magic bytes and decompressed (multi-member, as
//! rotated logs are). A pretty-printed JSON document (a line that is a lone
//! `{` in an `ecls`, `le-json` or undecided `auto` file) is joined into one
//! "line" by brace balance. Every line is parsed, enriched and written to
//! stdout in the chosen shape; a line that does not parse is counted by file
//! and reason and written to `--rejects`. A summary goes to stderr.
//!
//! Exit codes: 0 when every input was read (rejects or not), 1 when an input
//! could not be opened or read (the others are still processed), 64 for a
//! lookup file that does not load.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::Path;
use std::rc::Rc;

use anyhow::Context;
use flate2::bufread::MultiGzDecoder;
use memchr::memchr;

use crate::cli::ParseArgs;
use crate::config::EXIT_CONFIG;
use crate::enrich::{Enricher, Lookups};
use crate::parse::framing::{self, JsonDepth};
use crate::parse::{Format, LineKind, LineParser, Reject, RejectReason};
use crate::record::{write_ecls_message, Record, Shape};
use crate::rejects::{RejectEntry, RejectsWriter};
use crate::time;

/// Read buffer size: large enough that bulk files are read in few syscalls.
const READ_BUF_BYTES: usize = 256 * 1024;
/// Inputs at least this large (in total) get a progress bar on a terminal.
const PROGRESS_MIN_BYTES: u64 = 16 * 1024 * 1024;
/// Lines between progress-bar updates.
const PROGRESS_EVERY_LINES: u64 = 8192;

/// Runs the command; returns the exit code.
pub fn run(args: ParseArgs) -> anyhow::Result<i32> {
    let enricher = match Enricher::new(&args.lookups, args.mask_keep, args.mask_keep) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("calllog-bridge: --lookups: {e}");
            return Ok(EXIT_CONFIG);
        }
    };
    let tables = enricher.tables();
    let rejects = match &args.rejects {
        Some(p) => {
            let f = File::create(p).with_context(|| format!("cannot create rejects file {}", p.display()))?;
            Some(RejectsWriter::new(BufWriter::new(f)))
        }
        None => None,
    };
    let stdout = io::stdout().lock();
    let total_bytes: u64 = args.files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let progress = !args.no_progress && io::stderr().is_terminal() && total_bytes >= PROGRESS_MIN_BYTES;

    let mut run = Run {
        args: &args,
        enricher: if enricher.is_noop() { None } else { Some(&enricher) },
        out: BufWriter::with_capacity(READ_BUF_BYTES, stdout),
        scratch: Vec::with_capacity(4096),
        rejects,
        spare: Vec::new(),
        output_closed: false,
    };
    let mut totals = FileStats::default();
    let mut failed = 0usize;
    let mut files = 0usize;
    for path in &args.files {
        let name = path.display().to_string();
        let input = match open_input(path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("calllog-bridge: cannot open {name}: {e}");
                failed += 1;
                continue;
            }
        };
        files += 1;
        let bar = if progress && input.size.is_some() { Some(progress_bar(&name, input.size.unwrap_or(0))) } else { None };
        let mut stats = FileStats::default();
        let result = run.file(&name, input, &tables, &mut stats, bar.as_ref());
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        eprintln!("{}", stats.summary_line(&name));
        totals.add(&stats);
        match result {
            Ok(()) => {}
            Err(FileError::Read(e)) => {
                eprintln!("calllog-bridge: error reading {name} after line {}: {e}", stats.lines);
                failed += 1;
            }
            Err(FileError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                run.output_closed = true;
                break;
            }
            Err(FileError::Output(e)) => return Err(e).context("writing records to stdout"),
            Err(FileError::Rejects(e)) => return Err(e).context("writing the rejects file"),
        }
    }
    if !run.output_closed {
        match run.out.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            r => r.context("writing records to stdout")?,
        }
    }
    if let Some(r) = run.rejects.as_mut() {
        r.flush().context("writing the rejects file")?;
    }
    eprintln!("{}", totals.total_line(files));
    if totals.rejected() > 0 && args.rejects.is_none() {
        eprintln!("calllog-bridge: {} lines rejected; --rejects FILE writes them out with file, line and reason", totals.rejected());
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// What went wrong with one input.
enum FileError {
    /// Reading the input failed (the file is counted as failed, the run goes on).
    Read(io::Error),
    /// Writing records to stdout failed.
    Output(io::Error),
    /// Writing the rejects file failed.
    Rejects(io::Error),
}

/// Counts for one file (or the total).
#[derive(Debug, Default)]
struct FileStats {
    /// Lines read (a multi-line document counts each of its lines).
    lines: u64,
    /// Records written.
    records: u64,
    /// Header rows seen.
    headers: u64,
    /// Blank lines.
    blank: u64,
    /// Rejected lines (or documents) by reason.
    rejects: BTreeMap<RejectReason, u64>,
    /// The format in use at the end (what `auto` chose).
    format: Option<Format>,
    /// The format asked for.
    requested: Option<Format>,
}

impl FileStats {
    fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }

    fn add(&mut self, o: &FileStats) {
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

    fn summary_line(&self, name: &str) -> String {
        let format = match (self.requested, self.format) {
            (Some(Format::Auto), Some(Format::Auto) | None) => "auto (undecided)".to_string(),
            (Some(Format::Auto), Some(f)) => format!("auto → {f}"),
            (_, Some(f)) => f.to_string(),
            _ => "-".to_string(),
        };
        format!("file {name}: format {format}: {}", self.counts())
    }

    fn total_line(&self, files: usize) -> String {
        format!("total: {files} files, {}", self.counts())
    }

    /// The counts both summary lines end with.
    fn counts(&self) -> String {
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

/// An opened input.
struct Input {
    /// Decompressed, buffered content.
    reader: Box<dyn BufRead>,
    /// Size on disk (for the progress bar); `None` for stdin.
    size: Option<u64>,
    /// Bytes read from disk so far (compressed bytes for gzip).
    read: Rc<Cell<u64>>,
}

/// Counts the bytes read through it (for the progress bar).
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
fn open_input(path: &Path) -> io::Result<Input> {
    let read = Rc::new(Cell::new(0));
    let (raw, size): (Box<dyn Read>, Option<u64>) = if path.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path)?;
        let meta = f.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        (Box::new(f), Some(meta.len()))
    };
    let mut buffered = BufReader::with_capacity(READ_BUF_BYTES, Counting { inner: raw, read: read.clone() });
    let gz = loop {
        match buffered.fill_buf() {
            Ok(b) => break b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let reader: Box<dyn BufRead> =
        if gz { Box::new(BufReader::with_capacity(READ_BUF_BYTES, MultiGzDecoder::new(buffered))) } else { Box::new(buffered) };
    Ok(Input { reader, size, read })
}

fn progress_bar(name: &str, len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(name.to_string());
    bar
}

/// A message on stderr that a progress bar, if shown, does not overwrite.
fn announce(bar: Option<&indicatif::ProgressBar>, msg: &str) {
    match bar {
        Some(b) => b.println(msg),
        None => eprintln!("{msg}"),
    }
}

/// One line as read.
struct LineRead {
    /// Bytes consumed from the input (terminator included).
    consumed: u64,
    /// Length of the line without its `\n` (may exceed what was kept).
    len: u64,
}

/// Reads the next line into `buf` (cleared; the `\n` not included), keeping
/// at most `cap` bytes of it: a runaway line never takes more memory than
/// that. `None` at end of input.
fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>, cap: usize) -> io::Result<Option<LineRead>> {
    buf.clear();
    let mut consumed = 0u64;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if consumed == 0 { None } else { Some(LineRead { consumed, len: consumed }) });
        }
        let (take, done) = match memchr(b'\n', avail) {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&avail[..take.min(room)]);
        let used = if done { take + 1 } else { take };
        r.consume(used);
        consumed += used as u64;
        if done {
            return Ok(Some(LineRead { consumed, len: consumed - 1 }));
        }
    }
}

/// Turns a vector of records into an empty one of another lifetime,
/// keeping its allocation (records borrow the line buffer, which changes
/// every line).
// `filter_map` (not `filter`) because it changes the item type; the
// in-place collect reuses the allocation since the layouts are equal.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<Record<'_>>) -> Vec<Record<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// A multi-line JSON document being joined.
struct Doc {
    /// The lines so far, joined with `\n` (at most `max_line_bytes + 1`).
    buf: Vec<u8>,
    /// Its full length, even beyond what was kept.
    len: u64,
    /// Line number of its first line.
    line: u64,
    /// Offset of its first line.
    offset: u64,
    /// Brace balance.
    depth: JsonDepth,
}

/// State shared by all inputs of one run.
struct Run<'r, W: Write> {
    /// The command line.
    args: &'r ParseArgs,
    /// Lookups and masking; `None` when there is nothing to do.
    enricher: Option<&'r Enricher>,
    /// Records go here.
    out: BufWriter<W>,
    /// Serialisation buffer, reused for every record.
    scratch: Vec<u8>,
    /// The rejects file, if asked for.
    rejects: Option<RejectsWriter<BufWriter<File>>>,
    /// The records vector's allocation, kept between lines.
    spare: Vec<Record<'static>>,
    /// stdout was closed by the reader (e.g. `| head`): stop quietly.
    output_closed: bool,
}

impl<W: Write> Run<'_, W> {
    /// Reads one input to its end.
    fn file(
        &mut self,
        name: &str,
        mut input: Input,
        tables: &Lookups,
        st: &mut FileStats,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<(), FileError> {
        let mut parser = LineParser::new(self.args.format, self.args.max_line_bytes);
        st.requested = Some(parser.requested());
        let cap = self.args.max_line_bytes.saturating_add(1);
        let mut buf = Vec::with_capacity(4096);
        let mut offset = 0u64;
        let mut doc: Option<Doc> = None;
        let mut announced = parser.format() != Format::Auto;
        let result = loop {
            let read = match read_line(&mut *input.reader, &mut buf, cap) {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(e) => break Err(FileError::Read(e)),
            };
            st.lines += 1;
            let line_no = st.lines;
            let line_offset = offset;
            offset += read.consumed;
            if let (Some(b), true) = (bar, line_no.is_multiple_of(PROGRESS_EVERY_LINES)) {
                b.set_position(input.read.get());
            }

            if let Some(d) = doc.as_mut() {
                if d.depth.rejects_object_start() && buf.trim_ascii_start().starts_with(b"{") {
                    // The lone `{` did not open a document after all: reject
                    // it and read this line on its own.
                    if let Some(d) = doc.take() {
                        let rej = Reject::new(RejectReason::BadJson, "a lone `{` not followed by a JSON document");
                        self.reject(name, d.line, d.offset, rej, &d.buf, st)?;
                    }
                } else {
                    if d.buf.len() < cap {
                        let room = cap - d.buf.len() - 1;
                        d.buf.push(b'\n');
                        d.buf.extend_from_slice(&buf[..buf.len().min(room)]);
                    }
                    d.len += 1 + read.len;
                    d.depth.line_end();
                    if d.depth.feed(&buf) {
                        if let Some(d) = doc.take() {
                            self.handle(name, &mut parser, &d.buf, d.len, d.line, d.offset, tables, st)?;
                        }
                    }
                    continue;
                }
            }
            if parser.accepts_json_documents() && framing::opens_document(&buf) {
                let mut depth = JsonDepth::new();
                depth.feed(&buf);
                doc = Some(Doc { buf: buf.clone(), len: read.len, line: line_no, offset: line_offset, depth });
                continue;
            }
            self.handle(name, &mut parser, &buf, read.len, line_no, line_offset, tables, st)?;
            if !announced && parser.format() != Format::Auto {
                announced = true;
                announce(bar, &format!("file {name}: format auto → {}", parser.format()));
            }
        };
        if let Some(d) = doc.take() {
            // End of input inside a document: parse what there is (it will be
            // reported as incomplete JSON).
            self.handle(name, &mut parser, &d.buf, d.len, d.line, d.offset, tables, st)?;
        }
        if !announced && parser.format() != Format::Auto {
            announce(bar, &format!("file {name}: format auto → {}", parser.format()));
        }
        st.format = Some(parser.format());
        result
    }

    /// Parses, enriches and writes one line (or joined document).
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &mut self,
        name: &str,
        parser: &mut LineParser,
        line: &[u8],
        full_len: u64,
        line_no: u64,
        offset: u64,
        tables: &Lookups,
        st: &mut FileStats,
    ) -> Result<(), FileError> {
        let mut recs: Vec<Record<'_>> = recycle(std::mem::take(&mut self.spare));
        let res = if full_len > line.len() as u64 {
            Err(Reject::new(RejectReason::TooLong, format!("{full_len} bytes > max_line_bytes {}", self.args.max_line_bytes)))
        } else {
            parser.parse_line(line, &mut recs)
        };
        match res {
            Ok(LineKind::Records(_)) => {
                let observed = if self.args.stamp { Some(time::now_ms()) } else { None };
                for rec in recs.iter_mut() {
                    if let Some(e) = self.enricher {
                        e.enrich(tables, rec);
                    }
                    if let Some(ms) = observed {
                        rec.stamp_observed(ms);
                    }
                    self.scratch.clear();
                    match self.args.output {
                        Shape::Ndjson => rec.write_json(Shape::Ndjson, &mut self.scratch),
                        Shape::Ecls => write_ecls_message([&*rec], &mut self.scratch),
                    }
                    self.scratch.push(b'\n');
                    self.out.write_all(&self.scratch).map_err(FileError::Output)?;
                    st.records += 1;
                }
            }
            Ok(LineKind::Header) => st.headers += 1,
            Ok(LineKind::Blank) => st.blank += 1,
            Err(rej) => self.reject(name, line_no, offset, rej, line, st)?,
        }
        self.spare = recycle(recs);
        Ok(())
    }

    fn reject(&mut self, name: &str, line_no: u64, offset: u64, rej: Reject, raw: &[u8], st: &mut FileStats) -> Result<(), FileError> {
        *st.rejects.entry(rej.reason).or_default() += 1;
        if let Some(w) = self.rejects.as_mut() {
            let entry = RejectEntry { file: name, line: line_no, offset, reason: rej.reason, detail: &rej.detail, raw, observed_ms: None };
            w.write(&entry).map_err(FileError::Rejects)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let data = b"short\nthis line is long\r\nlast";
        let mut r: &[u8] = data;
        let mut buf = Vec::new();
        let a = read_line(&mut r, &mut buf, 8).unwrap().unwrap();
        assert_eq!((buf.as_slice(), a.consumed, a.len), (&b"short"[..], 6, 5));
        let b = read_line(&mut r, &mut buf, 8).unwrap().unwrap();
        assert_eq!((buf.as_slice(), b.consumed, b.len), (&b"this lin"[..], 19, 18));
        let c = read_line(&mut r, &mut buf, 8).unwrap().unwrap();
        assert_eq!((buf.as_slice(), c.consumed, c.len), (&b"last"[..], 4, 4));
        assert!(read_line(&mut r, &mut buf, 8).unwrap().is_none());
    }

    #[test]
    fn recycle_keeps_the_allocation() {
        let mut v: Vec<Record<'static>> = Vec::with_capacity(16);
        v.push(Record::default());
        let cap = v.capacity();
        let w: Vec<Record<'_>> = recycle(v);
        assert!(w.is_empty());
        assert_eq!(w.capacity(), cap);
    }
}
