//! `calllog-bridge export`: builds the Call Log Export's slice files
//! offline, for a time range, from the bridge's archive (`[file_output]`,
//! plain or rotated `.gz`) or from raw Local Edition logs, to back-fill a
//! warehouse. The files are the ones the `[export]` sink writes (same
//! names, columns, quoting, gzip), all published at the end; a record
//! repeated in the input is written once per slice.
//!
//! Inputs are read as `parse` reads them ([`super::input`]: gzip, `-` for
//! stdin, the [`crate::ingest`] stage the running bridge uses), so a
//! pretty-printed JSON document gives the records it gives there, a line
//! longer than `--max-line-bytes` is rejected without being held, and
//! rejects are counted by reason and written to `--rejects`.
//!
//! Exit codes: 0 when every input was read, 1 when an input could not be
//! read (the others are still exported) or a slice of the range already
//! has files (unless `--replace`), 64 for a bad argument.

use std::io;

use anyhow::Context as _;

use super::input::{create_rejects, open_input, read_through, recycle, FileTally, Input, Rejects, RejectsFile};
use crate::cli::ExportArgs;
use crate::enrich::{Enricher, Lookups};
use crate::ingest::{Context, Ingest};
use crate::record::{Formulas, Record};
use crate::settings::{ConfigError, EXIT_CONFIG};
use crate::sink::export::access::FileAccess;
use crate::sink::export::config::{slice_minutes_valid, ExportConfig};
use crate::sink::export::exporter::Exporter;

/// Runs the command; returns the exit code.
pub fn run(args: ExportArgs) -> anyhow::Result<i32> {
    let bad = |flag: &str, why: String| {
        eprintln!("calllog-bridge: {flag}: {why}");
        Ok(EXIT_CONFIG)
    };
    let Some(from) = crate::time::parse_iso(&args.from) else {
        return bad("--from", format!("{:?} is not an ISO 8601 time (2026-11-29T10:00:00Z)", args.from));
    };
    let Some(to) = crate::time::parse_iso(&args.to) else {
        return bad("--to", format!("{:?} is not an ISO 8601 time (2026-11-29T12:00:00Z)", args.to));
    };
    if to <= from {
        return bad("--to", "must be after --from".into());
    }
    if !slice_minutes_valid(args.slice_minutes) {
        return bad(
            "--slice-minutes",
            format!("{} does not align to the hour (a divisor of 60, or 120, 180, ... 1440)", args.slice_minutes),
        );
    }
    if !(1..=9).contains(&args.gzip_level) {
        return bad("--gzip-level", format!("{} is not 1 to 9", args.gzip_level));
    }
    let enricher = match Enricher::new(&args.lookups, None, None) {
        Ok(e) => e,
        Err(e) => return bad("--lookups", e.to_string()),
    };
    let tables = enricher.tables();
    let access = match FileAccess::parse(args.file_mode.as_deref(), args.group.as_deref(), "--file-mode", "--group")
        .and_then(|a| a.check(&args.dir, "--group").map(|()| a))
    {
        Ok(a) => a,
        Err(ConfigError::Invalid { key, message } | ConfigError::Unusable { key, message }) => return bad(&key, message),
        Err(e) => return bad("--group", e.to_string()),
    };
    let cfg = ExportConfig {
        dir: args.dir.clone(),
        slice: std::time::Duration::from_secs(u64::from(args.slice_minutes) * 60),
        close_after: std::time::Duration::ZERO,
        include_org: args.include_org,
        header: !args.no_header,
        bridge_columns: args.bridge_columns,
        gzip: (!args.no_gzip).then_some(args.gzip_level),
        fsync_interval: std::time::Duration::from_secs(1),
        max_open_files: 1024,
        // Offline, --from and --to bound what is written.
        max_past: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        formulas: if args.no_escape_formulas { Formulas::Verbatim } else { Formulas::Neutralised },
        access,
        s3: None,
    };
    let mut ex = match Exporter::offline(&cfg, from, to, args.replace) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            eprintln!("calllog-bridge: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write in {}", args.dir.display())),
    };
    let mut rejects = create_rejects(args.rejects.as_deref())?;
    let mut reader = Reader {
        args: &args,
        enricher: if enricher.is_noop() { None } else { Some(&enricher) },
        tables: &tables,
        rejects: rejects.as_mut(),
        spare: Vec::new(),
        buf: Vec::new(),
    };
    let mut failed = 0usize;
    let mut totals = FileTally::default();
    for path in &args.files {
        let name = path.display().to_string();
        let input = match open_input(path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("calllog-bridge: cannot read {name}: {e}");
                failed += 1;
                continue;
            }
        };
        let mut st = FileTally::default();
        let r = reader.file(&name, input, &mut ex, &mut st);
        eprintln!("{}", st.summary_line(&name));
        totals.add(&st);
        match r {
            Ok(()) => {}
            Err(FileError::Read(e)) => {
                eprintln!("calllog-bridge: error reading {name} after line {}: {e}", st.lines);
                failed += 1;
            }
            Err(FileError::Write(e)) => return Err(e).with_context(|| format!("writing the export files in {}", args.dir.display())),
            Err(FileError::Rejects(e)) => return Err(e).context("writing the rejects file"),
        }
    }
    if let Some(r) = rejects.as_mut() {
        r.flush().context("writing the rejects file")?;
    }
    let published = ex.close_all(0).with_context(|| format!("publishing the export files in {}", args.dir.display()))?;
    for p in &published {
        println!("{}", p.path.display());
    }
    let snap = ex.stats().snapshot();
    eprintln!(
        "total: {} records read, {} written into {} files, {} outside the range, {} repeated, {} rejects",
        totals.records,
        snap.totals.records,
        published.len(),
        ex.out_of_range,
        snap.totals.duplicates_skipped,
        totals.rejected()
    );
    if totals.rejected() > 0 && args.rejects.is_none() {
        eprintln!("calllog-bridge: {} lines rejected; --rejects FILE writes them out with file, line and reason", totals.rejected());
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// What went wrong with one input.
enum FileError {
    /// Reading it (the run goes on).
    Read(io::Error),
    /// Writing the export (the run stops).
    Write(io::Error),
    /// Writing the rejects file (the run stops).
    Rejects(io::Error),
}

/// What every input of one run is read with.
struct Reader<'r> {
    /// The command line.
    args: &'r ExportArgs,
    /// Lookups; `None` when there is nothing to do.
    enricher: Option<&'r Enricher>,
    /// The lookup tables records borrow their names from.
    tables: &'r Lookups,
    /// The rejects file, if asked for.
    rejects: Option<&'r mut RejectsFile>,
    /// The records vector's allocation, kept between reads.
    spare: Vec<Record<'static>>,
    /// The read buffer, kept between inputs.
    buf: Vec<u8>,
}

impl Reader<'_> {
    /// Reads one input (gzip recognised by its magic bytes) into the
    /// export, counting into `st`.
    fn file(&mut self, name: &str, mut input: Input, ex: &mut Exporter, st: &mut FileTally) -> Result<(), FileError> {
        let mut ingest = Ingest::new(self.args.format, self.args.max_line_bytes, 0);
        if self.args.bridge_columns {
            // The archive's own fields go into the bridge's columns.
            ingest = ingest.keep_bridge_fields();
        }
        st.requested = Some(ingest.parser().requested());
        let mut buf = std::mem::take(&mut self.buf);
        let ended = read_through(&mut *input.reader, &mut buf, |data, last| {
            let mut recs: Vec<Record<'_>> = recycle(std::mem::take(&mut self.spare));
            // Offline: no `ingestion_time`, no host (the files say what
            // the input says).
            let cx = Context { tables: self.tables, enricher: self.enricher, observed_ms: None, host: "" };
            let mut rejects = Rejects { name, writer: self.rejects.as_deref_mut(), counts: &mut st.rejects, error: None };
            let fed = ingest.feed(data, last, &cx, &mut recs, &mut rejects);
            if let Some(e) = rejects.error {
                return Err(FileError::Rejects(e));
            }
            st.records += recs.len() as u64;
            st.counted(&ingest);
            // Records without a request_time fall outside any range.
            ex.write(&recs, i64::MIN, 0).map_err(FileError::Write)?;
            self.spare = recycle(recs);
            Ok(fed.consumed)
        });
        self.buf = buf;
        st.format = Some(ingest.parser().format());
        match ended? {
            Some(e) => Err(FileError::Read(e)),
            None => Ok(()),
        }
    }
}
