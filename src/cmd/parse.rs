//! `calllog-bridge parse`: read log files offline and print call-log
//! records.
//!
//! Each input (`-` = stdin) is read in large buffers; gzip input is
//! recognised by its magic bytes and decompressed (multi-member, as rotated
//! logs are). The bytes go through the same [`Ingest`] stage as the running
//! bridge's, so both frame lines and pretty-printed JSON documents, number
//! lines and reject the same way. Records are written to stdout in the
//! chosen shape; a line that does not parse is counted by file and reason
//! and written to `--rejects`. A summary goes to stderr.
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

use anyhow::Context as _;
use flate2::bufread::MultiGzDecoder;

use crate::cli::ParseArgs;
use crate::config::EXIT_CONFIG;
use crate::enrich::{Enricher, Lookups};
use crate::ingest::{Context, Ingest, RejectOut, Rejected};
use crate::parse::{Format, RejectReason};
use crate::record::{write_ecls_message, Record, Shape};
use crate::rejects::RejectsWriter;
use crate::time;

/// Read buffer size: large enough that bulk files are read in few syscalls.
const READ_BUF_BYTES: usize = 256 * 1024;
/// Inputs at least this large (in total) get a progress bar on a terminal.
const PROGRESS_MIN_BYTES: u64 = 16 * 1024 * 1024;

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
        buf: Vec::new(),
        output_closed: false,
    };
    let mut totals = FileTally::default();
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
        let mut stats = FileTally::default();
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
struct FileTally {
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

impl FileTally {
    fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }

    fn add(&mut self, o: &FileTally) {
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
    /// Decompressed content.
    reader: Box<dyn Read>,
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
    let reader: Box<dyn Read> = if gz { Box::new(MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
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

/// Turns a vector of records into an empty one of another lifetime,
/// keeping its allocation (records borrow the read buffer, which changes
/// every read).
// `filter_map` (not `filter`) because it changes the item type; the
// in-place collect reuses the allocation since the layouts are equal.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<Record<'_>>) -> Vec<Record<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
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

/// Where the ingest's rejects go: counted, and written to `--rejects`.
struct ParseRejects<'r, 'f> {
    /// The input's name (as given).
    name: &'f str,
    /// The rejects file, if asked for.
    writer: Option<&'r mut RejectsWriter<BufWriter<File>>>,
    /// Counts by reason.
    counts: &'r mut BTreeMap<RejectReason, u64>,
    /// The first write error (reported once the buffer is done).
    error: Option<io::Error>,
}

impl<'a> RejectOut<'a> for ParseRejects<'_, '_> {
    fn reject(&mut self, r: Rejected<'a>) {
        *self.counts.entry(r.reject.reason).or_default() += 1;
        if let (Some(w), None) = (self.writer.as_deref_mut(), &self.error) {
            if let Err(e) = w.write(&r.entry(self.name, None)) {
                self.error = Some(e);
            }
        }
    }
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
    /// The records vector's allocation, kept between reads.
    spare: Vec<Record<'static>>,
    /// The read buffer, kept between inputs.
    buf: Vec<u8>,
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
        st: &mut FileTally,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<(), FileError> {
        let mut ingest = Ingest::new(self.args.format, self.args.max_line_bytes, 0);
        st.requested = Some(ingest.parser().requested());
        let mut announced = ingest.parser().format() != Format::Auto;
        let mut buf = std::mem::take(&mut self.buf);
        // buf[..filled]: what the ingest did not consume, then new bytes.
        let mut filled = 0;
        let mut result = Ok(());
        loop {
            let (n, last) = match read_some(&mut *input.reader, &mut buf, filled) {
                Ok(0) => (0, true),
                Ok(n) => (n, false),
                // What was read is all there is: it is handled, then the
                // error reported.
                Err(e) => {
                    result = Err(FileError::Read(e));
                    (0, true)
                }
            };
            filled += n;
            let consumed = self.ingest(name, &mut ingest, &buf[..filled], last, tables, st)?;
            let c = ingest.counts();
            (st.lines, st.headers, st.blank) = (c.lines, c.headers, c.blank);
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
            if let Some(b) = bar {
                b.set_position(input.read.get());
            }
            if !announced && ingest.parser().format() != Format::Auto {
                announced = true;
                announce(bar, &format!("file {name}: format auto → {}", ingest.parser().format()));
            }
            if last {
                break;
            }
        }
        // A buffer grown for a long document is not kept.
        buf.truncate(READ_BUF_BYTES);
        buf.shrink_to(READ_BUF_BYTES);
        self.buf = buf;
        st.format = Some(ingest.parser().format());
        result
    }

    /// Ingests one buffer: writes its records, counts and writes its
    /// rejects; returns the bytes consumed.
    fn ingest(
        &mut self,
        name: &str,
        ingest: &mut Ingest,
        data: &[u8],
        last: bool,
        tables: &Lookups,
        st: &mut FileTally,
    ) -> Result<usize, FileError> {
        let mut recs: Vec<Record<'_>> = recycle(std::mem::take(&mut self.spare));
        let observed_ms = if self.args.stamp { Some(time::now_ms()) } else { None };
        // Offline: no host unless asked, as no `ingestion_time` (the
        // output stays what the file says).
        let cx = Context { tables, enricher: self.enricher, observed_ms, host: "" };
        let mut rejects = ParseRejects { name, writer: self.rejects.as_mut(), counts: &mut st.rejects, error: None };
        let fed = ingest.feed(data, last, &cx, &mut recs, &mut rejects);
        if let Some(e) = rejects.error {
            return Err(FileError::Rejects(e));
        }
        for rec in &recs {
            self.scratch.clear();
            match self.args.output {
                Shape::Ndjson => rec.write_json(Shape::Ndjson, &mut self.scratch),
                Shape::Ecls => write_ecls_message([rec], &mut self.scratch),
            }
            self.scratch.push(b'\n');
            self.out.write_all(&self.scratch).map_err(FileError::Output)?;
            st.records += 1;
        }
        self.spare = recycle(recs);
        Ok(fed.consumed)
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
}
