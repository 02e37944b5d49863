//! `calllog-bridge lag report`: the sync delay over a past time range,
//! from the history the bridge keeps, per window of `request_time`, per
//! host and per file; the worst windows; the episodes above a threshold
//! (when the delay went above it and when it was back below). A table for
//! a terminal, `--json` or `--csv` for a ticket or a spreadsheet, and
//! `--svg` / `--png` charts.
//!
//! What each input can tell (the command says which it read, per file):
//!
//! - the **archive** (`[file_output]`, `ndjson` or `ecls`, rotated files
//!   and their `.gz` too) and the **replay log** (`<state_dir>/replay`,
//!   its segment files or the directory): every record with its
//!   `request_time`, the time the bridge read it (`ingestion_time`), its
//!   `sync_delay_ms` and the `host` that read it. Records do not name the
//!   Local Edition file they came from: the `file` of a series is the
//!   history they were read from (the archive's name without its rotation
//!   suffix, the replay directory).
//! - the **export's slices** (`[export]`, `calllog-*.csv.gz`, or their
//!   directory): the hosted export's columns carry no observed time and no
//!   host; its records are counted per window without a delay.
//! - **raw Local Edition logs** (`le6`, `le5-csv`, `le-json`): no observed
//!   time at all. The file's modification time stands in for it: the delay
//!   shown is at most mtime − `request_time` (the line was in the file by
//!   then). It is exact for the file's last lines and an upper bound for
//!   the others, so it tells most for files a log sync writes whole (or
//!   rotates often); the `file` is the log's name without its rotation
//!   suffix.
//!
//! Every input goes through the same [`Ingest`] stage as `parse` and the
//! running bridge (framing, formats, rejects), with the bridge's own
//! fields kept; replay segments are read with the channel's own segment
//! reader. Memory is bounded by windows × series histograms
//! ([`crate::history`]), never by the number of records.
//!
//! Exit codes: 0 when every input was read, 1 when an input could not be
//! read (the others are still reported), 64 for a bad argument.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{json, Value};

use super::input::{open_input, read_through, recycle, Rejects, READ_BUF_BYTES};
use crate::cli::LagReportArgs;
use crate::cmd::lag::{human_ms, parse_duration_ms};
use crate::enrich::Lookups;
use crate::history::report::{Collector, Report, Settings, Window};
use crate::history::{chart, Percentiles};
use crate::ingest::{Context, Ingest};
use crate::parse::{Format, RejectReason};
use crate::record::{write_csv_cell, Formulas, Kind, Record};
use crate::settings::EXIT_CONFIG;
use crate::sink::channel::replay;
use crate::sink::export::slice::FileName;
use crate::time;

/// More windows than this is a mistake (`--every` too short for the range).
const MAX_WINDOWS: i64 = 100_000;

/// Where the delay of an input's records comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Observed {
    /// The time the bridge read each record (`ingestion_time`).
    IngestionTime,
    /// The file's modification time (an upper bound: raw logs).
    FileMtime,
    /// Nothing: records are counted without a delay.
    None,
}

impl Observed {
    fn name(self) -> &'static str {
        match self {
            Observed::IngestionTime => "ingestion_time",
            Observed::FileMtime => "file_mtime",
            Observed::None => "none",
        }
    }
}

/// What was read from one input.
#[derive(Debug)]
struct Source {
    /// The input as given (or found in a directory).
    path: PathBuf,
    /// Its series' `file`.
    file: String,
    /// The format read (what `auto` chose; `replay` for a segment).
    format: String,
    /// Records read (in range or not).
    records: u64,
    /// Records whose delay came from each kind of observed time.
    observed: BTreeMap<&'static str, u64>,
    /// Rejected lines by reason.
    rejects: BTreeMap<RejectReason, u64>,
    /// A damaged replay segment: what was wrong at the first damage met,
    /// and the bytes skipped (the records after them are read).
    damaged: Option<(&'static str, u64)>,
}

/// Runs the command; returns the exit code.
pub fn run(args: LagReportArgs) -> anyhow::Result<i32> {
    let bad = |flag: &str, why: String| {
        eprintln!("calllog-bridge: lag report: {flag}: {why}");
        Ok(EXIT_CONFIG)
    };
    let Some(from_ms) = time::parse_iso(&args.from) else {
        return bad("--from", format!("{:?} is not an ISO 8601 time (2026-11-29T14:00:00Z)", args.from));
    };
    let Some(to_ms) = time::parse_iso(&args.to) else {
        return bad("--to", format!("{:?} is not an ISO 8601 time (2026-11-29T15:00:00Z)", args.to));
    };
    if to_ms <= from_ms {
        return bad("--to", "must be after --from".into());
    }
    let every_ms = match parse_duration_ms(&args.every) {
        Ok(ms) if ms >= 1000 => ms,
        Ok(_) => return bad("--every", format!("{:?} is shorter than a second", args.every)),
        Err(e) => return bad("--every", e),
    };
    let threshold_ms = match parse_duration_ms(&args.threshold) {
        Ok(ms) => ms,
        Err(e) => return bad("--threshold", e),
    };
    let settings = Settings { from_ms, to_ms, every_ms, threshold_ms, statistic: args.threshold_on, worst: args.worst };
    if settings.window_count() > MAX_WINDOWS {
        return bad(
            "--every",
            format!("{} windows of {} from --from to --to; at most {MAX_WINDOWS}", settings.window_count(), human_ms(every_ms)),
        );
    }
    let inputs = match expand(&args.files) {
        Ok(i) => i,
        Err((path, e)) => {
            eprintln!("calllog-bridge: lag report: cannot list {}: {e}", path.display());
            return Ok(1);
        }
    };
    let mut collector = Collector::new(settings);
    let mut sources = Vec::new();
    let mut failed = 0usize;
    let mut buf = Vec::new();
    for (path, file) in inputs {
        let result = if replay::is_segment_name(&path) {
            read_segment(&path, file, &args, &mut collector)
        } else {
            read_text(&path, file, &args, &mut collector, &mut buf)
        };
        let (s, error) = result;
        eprintln!("{}", summary_line(&s));
        if let Some(e) = error {
            eprintln!("calllog-bridge: lag report: cannot read {}: {e}", path.display());
            failed += 1;
        }
        sources.push(s);
    }
    let report = collector.finish();
    if sources.iter().any(|s| s.observed.contains_key(Observed::FileMtime.name())) {
        eprintln!(
            "calllog-bridge: lag report: raw Local Edition logs have no observed time; their delays are at most \
             the file's modification time minus request_time (exact for a file's last lines only)"
        );
    }
    let out = io::stdout();
    let mut out = io::BufWriter::new(out.lock());
    let printed = if args.json {
        serde_json::to_writer_pretty(&mut out, &to_json(&report, &sources)).map_err(io::Error::other).and_then(|_| writeln!(out))
    } else if args.csv {
        write_csv(&mut out, &report)
    } else {
        write_table(&mut out, &report, &sources)
    };
    match printed.and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        r => r.context("writing the report to stdout")?,
    }
    if args.svg.is_some() || args.png.is_some() {
        let svg = chart::svg(&report);
        if let Some(p) = &args.svg {
            std::fs::write(p, &svg).with_context(|| format!("writing the chart to {}", p.display()))?;
        }
        if let Some(p) = &args.png {
            let png = chart::png(&svg).with_context(|| format!("drawing the chart for {}", p.display()))?;
            std::fs::write(p, png).with_context(|| format!("writing the chart to {}", p.display()))?;
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The inputs in reading order, each with its series' `file`: a directory
/// stands for its files (a replay directory for its segments, in order),
/// skipping hidden ones (an export's `.partial` files).
fn expand(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, (PathBuf, io::Error)> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>())
                .map_err(|e| (p.clone(), e))?
                .into_iter()
                .filter(|f| f.is_file() && !f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
                .collect();
            if found.iter().any(|f| replay::is_segment_name(f)) {
                found.retain(|f| replay::is_segment_name(f));
            }
            found.sort();
            let name = p.display().to_string();
            out.extend(found.into_iter().map(|f| (f, name.clone())));
        } else {
            out.push((p.clone(), series_file(p)));
        }
    }
    Ok(out)
}

/// The `file` of the records read from `path`: the history it belongs to.
/// A replay segment or an export slice: its directory. Any other file: its
/// name without a rotation suffix (`calls.ndjson.2.gz` → `calls.ndjson`,
/// `access.log.1` → `access.log`), so a history's rotations are one series.
pub fn series_file(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if replay::is_segment_name(path) || FileName::parse(name).is_some() {
        return path
            .parent()
            .map_or_else(|| ".".to_string(), |d| if d.as_os_str().is_empty() { ".".into() } else { d.display().to_string() });
    }
    crate::history::strip_rotation(&path.display().to_string()).to_string()
}

/// The formats Local Edition writes (no observed time in them).
fn is_raw_log(f: Format) -> bool {
    matches!(f, Format::Le6 | Format::Le5Csv | Format::LeJson)
}

/// Adds a batch of records of one source to the report.
fn collect(records: &[Record<'_>], file: &str, format: Format, mtime_ms: Option<i64>, s: &mut Source, c: &mut Collector) {
    for rec in records {
        s.records += 1;
        let rt = rec.request_time_ms;
        let (delay, observed) = match (rec.sync_delay_ms, rec.ingestion_time, rt, mtime_ms) {
            (Some(d), _, _, _) => (Some(d), Observed::IngestionTime),
            (None, Some(seen), Some(rt), _) => (Some(seen - rt), Observed::IngestionTime),
            (None, None, Some(rt), Some(m)) if is_raw_log(format) => (Some(m - rt), Observed::FileMtime),
            _ => (None, Observed::None),
        };
        *s.observed.entry(observed.name()).or_default() += 1;
        let host = if rec.host.is_empty() { "-" } else { &rec.host };
        c.add(host, file, rt, delay);
    }
}

/// Reads an archive, export slice or raw log through the ingest stage;
/// what was read, and the error that ended it early.
fn read_text(path: &Path, file: String, args: &LagReportArgs, c: &mut Collector, buf: &mut Vec<u8>) -> (Source, Option<io::Error>) {
    let mut s = Source {
        path: path.to_path_buf(),
        file,
        format: args.format.to_string(),
        records: 0,
        observed: BTreeMap::new(),
        rejects: BTreeMap::new(),
        damaged: None,
    };
    let mut input = match open_input(path) {
        Ok(i) => i,
        Err(e) => return (s, Some(e)),
    };
    let tables = Lookups::default();
    let mut ingest = Ingest::new(args.format, args.max_line_bytes, 0).keep_bridge_fields();
    let mut spare: Vec<Record<'static>> = Vec::new();
    let mut rejects = BTreeMap::new();
    let file = s.file.clone();
    let failed = read_through(&mut *input.reader, buf, |data, last| -> Result<usize, io::Error> {
        let mut recs: Vec<Record<'_>> = recycle(std::mem::take(&mut spare));
        let cx = Context { tables: &tables, enricher: None, observed_ms: None, host: "" };
        let fed = ingest.feed(data, last, &cx, &mut recs, &mut Rejects::counting(&mut rejects));
        collect(&recs, &file, ingest.parser().format(), input.modified_ms, &mut s, c);
        spare = recycle(recs);
        Ok(fed.consumed)
    });
    s.rejects = rejects;
    s.format = ingest.parser().format().to_string();
    match failed {
        Ok(Some(e)) | Err(e) => (s, Some(e)),
        Ok(None) => (s, None),
    }
}

/// Reads a replay log segment: its records as the channel sent them
/// (`ecls` shape, one JSON record each), through the ingest stage; what
/// was read, and the error that ended it early.
fn read_segment(path: &Path, file: String, args: &LagReportArgs, c: &mut Collector) -> (Source, Option<io::Error>) {
    let mut s = Source {
        path: path.to_path_buf(),
        file,
        format: "replay".into(),
        records: 0,
        observed: BTreeMap::new(),
        rejects: BTreeMap::new(),
        damaged: None,
    };
    let tables = Lookups::default();
    let mut ingest = Ingest::new(Format::LeJson, args.max_line_bytes, 0).keep_bridge_fields();
    let mut rejects = BTreeMap::new();
    // Records are gathered into lines and fed in large buffers.
    let mut lines: Vec<u8> = Vec::with_capacity(READ_BUF_BYTES * 2);
    let file = s.file.clone();
    let mut feed = |lines: &mut Vec<u8>, s: &mut Source, c: &mut Collector| {
        let mut recs: Vec<Record<'_>> = Vec::new();
        let cx = Context { tables: &tables, enricher: None, observed_ms: None, host: "" };
        ingest.feed(lines, true, &cx, &mut recs, &mut Rejects::counting(&mut rejects));
        collect(&recs, &file, Format::Ecls, None, s, c);
        drop(recs);
        lines.clear();
    };
    let read = replay::read_segment(path, |_observed_ms, json| {
        lines.extend_from_slice(json.as_bytes());
        lines.push(b'\n');
        if lines.len() >= READ_BUF_BYTES {
            feed(&mut lines, &mut s, c);
        }
    });
    feed(&mut lines, &mut s, c);
    s.rejects = rejects;
    match read {
        Ok((_, damage)) => {
            s.damaged = damage.first().map(|d| (d.problem, damage.iter().map(|d| d.bytes).sum()));
            (s, None)
        }
        Err(e) => (s, Some(e)),
    }
}

/// The stderr line for one input.
fn summary_line(s: &Source) -> String {
    let observed: Vec<String> = s.observed.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let rejects: u64 = s.rejects.values().sum();
    let reasons: Vec<String> = s.rejects.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let mut line = format!(
        "file {}: format {}: {} records (observed: {}), {} rejects{}",
        s.path.display(),
        s.format,
        s.records,
        if observed.is_empty() { "-".into() } else { observed.join(", ") },
        rejects,
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
    );
    if let Some((problem, bytes)) = s.damaged {
        line.push_str(&format!("; damaged: {bytes} bytes skipped ({problem}), the records after them read"));
    }
    line
}

/// Milliseconds as RFC 3339 UTC.
fn iso(ms: i64) -> String {
    time::format_iso_seconds(ms)
}

/// The `--json` document: the report's shape, and what was read.
fn to_json(r: &Report, sources: &[Source]) -> Value {
    let mut m = r.to_json();
    let sources: Vec<Value> = sources
        .iter()
        .map(|s| {
            json!({
                "path": s.path.display().to_string(),
                "file": s.file,
                "format": s.format,
                "records": s.records,
                "observed": s.observed,
                "rejects": s.rejects.values().sum::<u64>(),
                "damaged": s.damaged.map(|(problem, _)| problem),
            })
        })
        .collect();
    m.insert("sources".into(), sources.into());
    Value::Object(m)
}

/// The `--csv` rows: one per window (RFC 4180, as the export writes).
fn write_csv(out: &mut dyn Write, r: &Report) -> io::Result<()> {
    writeln!(out, "start,end,host,file,records,p50_ms,p95_ms,p99_ms,max_ms,min_ms,records_without_delay,above_threshold")?;
    let mut line = Vec::new();
    for w in &r.windows {
        let d = |f: fn(&Percentiles) -> i64| w.delay.as_ref().map_or(String::new(), |p| f(p).to_string());
        line.clear();
        line.extend_from_slice(format!("{},{},", iso(w.start_ms), iso(w.end_ms)).as_bytes());
        write_csv_cell(&mut line, Kind::Str, &w.series.host, Formulas::Neutralised);
        line.push(b',');
        write_csv_cell(&mut line, Kind::Str, &w.series.file, Formulas::Neutralised);
        let rest = format!(
            ",{},{},{},{},{},{},{},{}\n",
            w.records,
            d(|p| p.p50),
            d(|p| p.p95),
            d(|p| p.p99),
            d(|p| p.max),
            d(|p| p.min),
            w.without_delay,
            w.above
        );
        line.extend_from_slice(rest.as_bytes());
        out.write_all(&line)?;
    }
    Ok(())
}

/// `2026-11-29 14:05`.
fn minute(ms: i64) -> String {
    let s = iso(ms);
    format!("{} {}", &s[..10], &s[11..16])
}

fn cells(p: Option<Percentiles>) -> [String; 4] {
    match p {
        Some(p) => [human_ms(p.p50), human_ms(p.p95), human_ms(p.p99), human_ms(p.max)],
        None => std::array::from_fn(|_| "-".to_string()),
    }
}

/// The table for a terminal.
fn write_table(out: &mut dyn Write, r: &Report, sources: &[Source]) -> io::Result<()> {
    let st = &r.settings;
    writeln!(
        out,
        "SYNC DELAY by request_time, {} to {} (UTC), every {}; threshold: {} above {}",
        minute(st.from_ms),
        minute(st.to_ms),
        human_ms(st.every_ms),
        st.statistic.name(),
        human_ms(st.threshold_ms)
    )?;
    let read: u64 = sources.iter().map(|s| s.records).sum();
    writeln!(
        out,
        "{read} records read from {} inputs; {} outside the range, {} without request_time",
        sources.len(),
        r.skipped.outside_range,
        r.skipped.no_request_time
    )?;
    writeln!(out)?;
    writeln!(out, "EPISODES ({} above {})", st.statistic.name(), human_ms(st.threshold_ms))?;
    if r.episodes.is_empty() {
        writeln!(out, "  none")?;
    } else {
        writeln!(
            out,
            "  {:<20} {:<32} {:<17} {:<17} {:>9} {:>9} {:>9}",
            "HOST", "FILE", "ABOVE FROM", "BACK BELOW", "LASTED", "P95", "MAX"
        )?;
        for e in &r.episodes {
            let below = if e.recovered { minute(e.end_ms) } else { "not yet".to_string() };
            writeln!(
                out,
                "  {:<20} {:<32} {:<17} {:<17} {:>9} {:>9} {:>9}",
                e.series.host,
                e.series.file,
                minute(e.start_ms),
                below,
                human_ms(e.end_ms - e.start_ms),
                human_ms(e.delay.p95),
                human_ms(e.delay.max)
            )?;
        }
    }
    writeln!(out)?;
    writeln!(out, "WORST WINDOWS (by {})", st.statistic.name())?;
    table_rows(out, &r.worst)?;
    writeln!(out)?;
    writeln!(out, "TOTALS")?;
    writeln!(out, "  {:<20} {:<32} {:>10} {:>9} {:>9} {:>9} {:>9}", "HOST", "FILE", "RECORDS", "P50", "P95", "P99", "MAX")?;
    for t in &r.totals {
        let [p50, p95, p99, max] = cells(t.delay);
        writeln!(out, "  {:<20} {:<32} {:>10} {p50:>9} {p95:>9} {p99:>9} {max:>9}", t.series.host, t.series.file, t.records)?;
    }
    writeln!(out)?;
    writeln!(out, "WINDOWS (* above the threshold)")?;
    table_rows(out, &r.windows)
}

fn table_rows(out: &mut dyn Write, rows: &[Window]) -> io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "  none");
    }
    writeln!(
        out,
        "  {:<17} {:<20} {:<32} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "WINDOW", "HOST", "FILE", "RECORDS", "P50", "P95", "P99", "MAX"
    )?;
    for w in rows {
        let [p50, p95, p99, max] = cells(w.delay);
        writeln!(
            out,
            "{} {:<17} {:<20} {:<32} {:>10} {p50:>9} {p95:>9} {p99:>9} {max:>9}",
            if w.above { "*" } else { " " },
            minute(w.start_ms),
            w.series.host,
            w.series.file,
            w.records
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_and_its_rotations_are_one_series() {
        let check = |p: &str, want: &str| assert_eq!(series_file(Path::new(p)), want, "{p}");
        check("/var/lib/b/calls.ndjson", "/var/lib/b/calls.ndjson");
        check("/var/lib/b/calls.ndjson.1", "/var/lib/b/calls.ndjson");
        check("/var/lib/b/calls.ndjson.12.gz", "/var/lib/b/calls.ndjson");
        check("access.log.1.gz", "access.log");
        check("/le/access_worker0.log", "/le/access_worker0.log");
        check("/s/replay/00000000000000001024.seg", "/s/replay");
        check("/x/export/calllog-2026-11-29T10-00Z.csv.gz", "/x/export");
        check("/x/export/calllog-2026-11-29T10-00Z.late-2.csv", "/x/export");
        check("calllog-2026-11-29T10-00Z.csv.gz", ".");
        check("-", "-");
    }
}
