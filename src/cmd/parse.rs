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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};

use anyhow::Context as _;

use crate::cli::ParseArgs;
use crate::config::EXIT_CONFIG;
use crate::enrich::{Enricher, Lookups};
use crate::ingest::read::{open_input, read_through, recycle, Input, READ_BUF_BYTES};
use crate::ingest::{Context, Ingest, RejectOut, Rejected};
use crate::parse::{Format, RejectReason};
use crate::record::{write_ecls_message, Record, Shape};
use crate::rejects::RejectsWriter;
use crate::time;

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
        let result = read_through(&mut *input.reader, &mut buf, |data, last| {
            let consumed = self.ingest(name, &mut ingest, data, last, tables, st)?;
            let c = ingest.counts();
            (st.lines, st.headers, st.blank) = (c.lines, c.headers, c.blank);
            if let Some(b) = bar {
                b.set_position(input.read.get());
            }
            if !announced && ingest.parser().format() != Format::Auto {
                announced = true;
                announce(bar, &format!("file {name}: format auto → {}", ingest.parser().format()));
            }
            Ok(consumed)
        });
        self.buf = buf;
        st.format = Some(ingest.parser().format());
        match result? {
            // What was read is all there is: it was handled, then the
            // error is reported.
            Some(e) => Err(FileError::Read(e)),
            None => Ok(()),
        }
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
