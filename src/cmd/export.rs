//! `calllog-bridge export`: builds the Call Log Export's slice files
//! offline, for a time range, from the bridge's archive (`[file_output]`,
//! plain or rotated `.gz`) or from raw Local Edition logs, to back-fill a
//! warehouse. The files are the ones the `[export]` sink writes (same
//! names, columns, quoting, gzip), all published at the end; a record
//! repeated in the input is written once per slice.
//!
//! Exit codes: 0 when every input was read, 1 when an input could not be
//! read (the others are still exported) or a slice of the range already
//! has files (unless `--replace`), 64 for a bad argument.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use flate2::bufread::MultiGzDecoder;

use crate::cli::ExportArgs;
use crate::enrich::Enricher;
use crate::parse::{LineKind, LineParser};
use crate::record::Record;
use crate::settings::EXIT_CONFIG;
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
    let mut failed = 0usize;
    let (mut records, mut rejects) = (0u64, 0u64);
    for path in &args.files {
        match export_file(path, &args, &enricher, &tables, &mut ex) {
            Ok((r, j)) => {
                eprintln!("file {}: {r} records, {j} rejects", path.display());
                records += r;
                rejects += j;
            }
            Err(FileError::Read(e)) => {
                eprintln!("calllog-bridge: cannot read {}: {e}", path.display());
                failed += 1;
            }
            Err(FileError::Write(e)) => return Err(e).with_context(|| format!("writing the export files in {}", args.dir.display())),
        }
    }
    let published = ex.close_all(0).with_context(|| format!("publishing the export files in {}", args.dir.display()))?;
    for p in &published {
        println!("{}", p.path.display());
    }
    let snap = ex.stats().snapshot();
    eprintln!(
        "total: {records} records read, {} written into {} files, {} outside the range, {} repeated, {rejects} rejects",
        snap.totals.records,
        published.len(),
        ex.out_of_range,
        snap.totals.duplicates_skipped
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

/// What went wrong with one input.
enum FileError {
    /// Reading it (the run goes on).
    Read(io::Error),
    /// Writing the export (the run stops).
    Write(io::Error),
}

/// Reads one input (gzip recognised by its magic bytes) into the export:
/// (records, rejected lines).
fn export_file(
    path: &Path,
    args: &ExportArgs,
    enricher: &Enricher,
    tables: &crate::enrich::Lookups,
    ex: &mut Exporter,
) -> Result<(u64, u64), FileError> {
    let f = File::open(path).map_err(FileError::Read)?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let gz = r.fill_buf().map_err(FileError::Read)?.starts_with(&[0x1f, 0x8b]);
    let mut input: Box<dyn BufRead> = if gz { Box::new(BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(r))) } else { Box::new(r) };
    let mut parser = LineParser::new(args.format, 1 << 20);
    if args.bridge_columns {
        // The archive's own fields go into the bridge's columns.
        parser.keep_bridge_fields();
    }
    let mut line = Vec::with_capacity(4096);
    let (mut records, mut rejects) = (0u64, 0u64);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(FileError::Read)? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let mut recs: Vec<Record<'_>> = Vec::new();
        match parser.parse_line(text, &mut recs) {
            Ok(LineKind::Records(_)) => {
                if !enricher.is_noop() {
                    for rec in recs.iter_mut() {
                        enricher.enrich(tables, rec);
                    }
                }
                records += recs.len() as u64;
                // Records without a request_time fall outside any range.
                ex.write(&recs, i64::MIN, 0).map_err(FileError::Write)?;
            }
            Ok(_) => {}
            Err(_) => rejects += 1,
        }
    }
    Ok((records, rejects))
}
