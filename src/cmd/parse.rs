//! `calllog-bridge parse`: read log files offline and print call-log
//! records.
//!
//! Each input (`-` = stdin) is read through [`super::input`]: gzip
//! decompressed, and the bytes through the same [`Ingest`] stage as the
//! running bridge's (and `export`), so all frame lines and pretty-printed
//! JSON documents, number lines and reject the same way. Records are
//! written to stdout in the chosen shape; a line that does not parse is
//! counted by file and reason and written to `--rejects`. A summary goes
//! to stderr.
//!
//! Exit codes: 0 when every input was read (rejects or not), 1 when an input
//! could not be opened or read (the others are still processed), 64 for a
//! lookup file that does not load.

use std::io::{self, BufWriter, IsTerminal, Write};

use anyhow::Context as _;

use super::input::{create_rejects, open_input, read_through, recycle, FileTally, Input, Rejects, RejectsFile, READ_BUF_BYTES};
use crate::cli::ParseArgs;
use crate::config::EXIT_CONFIG;
use crate::enrich::{Enricher, Lookups};
use crate::ingest::{Context, Ingest};
use crate::parse::Format;
use crate::record::{write_ecls_message, Record, Shape};
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
    let rejects = create_rejects(args.rejects.as_deref())?;
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
    eprintln!("total: {files} files, {}", totals.counts());
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
    rejects: Option<RejectsFile>,
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
        let read = input.read.clone();
        let ended = read_through(&mut *input.reader, &mut buf, |data, last| {
            let consumed = self.ingest(name, &mut ingest, data, last, tables, st)?;
            st.counted(&ingest);
            if let Some(b) = bar {
                b.set_position(read.get());
            }
            if !announced && ingest.parser().format() != Format::Auto {
                announced = true;
                announce(bar, &format!("file {name}: format auto → {}", ingest.parser().format()));
            }
            Ok(consumed)
        });
        self.buf = buf;
        st.format = Some(ingest.parser().format());
        // What was read before a read error is handled, then the error
        // reported.
        match ended? {
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
        let mut rejects = Rejects { name, writer: self.rejects.as_mut(), counts: &mut st.rejects, error: None };
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
