//! Parsers: one module per Local Edition format, turning one line into
//! call-log records.
//!
//! Invariant: nothing here does I/O. A parser sees one line (without its
//! line terminator) and borrows from it; per-file state (a CSV header, the
//! format `auto` chose) lives in [`LineParser`]. A line that does not parse
//! is a [`Reject`] with a [`RejectReason`]; it never affects its neighbours.
//!
//! Modules: [`le6`], [`le5_csv`], [`le_json`], [`ecle_csv`], [`ecls`] (one
//! per format), [`detect`] (`auto`), [`csv`] and [`json`] (shared
//! machinery), [`normalize`] (docs/FORMATS.md §4), [`framing`] (multi-line JSON
//! documents, for the reader).

use std::fmt;

pub mod csv;
pub mod detect;
pub mod ecle_csv;
pub mod ecls;
pub mod framing;
pub mod json;
pub mod le5_csv;
pub mod le6;
pub mod le_json;
pub mod normalize;

use crate::record::Record;

/// The input formats the bridge understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
pub enum Format {
    /// LE 6 enriched access log: space-separated, quoted and bracketed fields.
    #[serde(rename = "le6")]
    #[value(name = "le6")]
    Le6,
    /// LE 5 enriched access CSV with a header row.
    #[serde(rename = "le5-csv")]
    #[value(name = "le5-csv")]
    Le5Csv,
    /// JSON lines with LE (or schema) field names.
    #[serde(rename = "le-json")]
    #[value(name = "le-json")]
    LeJson,
    /// Call Log Export CSV, 35 or 39 columns, header optional.
    #[serde(rename = "ecle-csv")]
    #[value(name = "ecle-csv")]
    EcleCsv,
    /// Captured stream messages `{"data":[...]}`, one per line.
    #[serde(rename = "ecls")]
    #[value(name = "ecls")]
    Ecls,
    /// Decide per file from its first line.
    #[default]
    #[serde(rename = "auto")]
    #[value(name = "auto")]
    Auto,
}

impl Format {
    /// The name used in config, CLI and logs.
    pub fn name(self) -> &'static str {
        match self {
            Format::Le6 => "le6",
            Format::Le5Csv => "le5-csv",
            Format::LeJson => "le-json",
            Format::EcleCsv => "ecle-csv",
            Format::Ecls => "ecls",
            Format::Auto => "auto",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a line was rejected. The names are stable: they appear in the
/// rejects file, the summary and metrics labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Wrong number of fields or columns.
    ColumnCount,
    /// Unbalanced quotes or brackets, broken CSV quoting.
    Quoting,
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The line is longer than `max_line_bytes`.
    TooLong,
    /// `request_time` (or another time) does not parse.
    BadTime,
    /// Not valid JSON, or JSON of the wrong shape.
    BadJson,
    /// A required field (e.g. `request_uuid`) is missing or malformed.
    BadField,
    /// `auto` could not recognise the file's format from its first line.
    UnknownFormat,
}

impl RejectReason {
    /// The stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::ColumnCount => "column_count",
            RejectReason::Quoting => "quoting",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::TooLong => "too_long",
            RejectReason::BadTime => "bad_time",
            RejectReason::BadJson => "bad_json",
            RejectReason::BadField => "bad_field",
            RejectReason::UnknownFormat => "unknown_format",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A line that did not parse: why, and a short human detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The category, counted per file.
    pub reason: RejectReason,
    /// What exactly was wrong (e.g. "expected 35 columns, found 34").
    pub detail: String,
}

impl Reject {
    /// A reject with a detail message.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject { reason, detail: detail.into() }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// What one line turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// The line produced this many records (pushed onto the output vector).
    Records(usize),
    /// A header row (CSV): remembered, produces nothing.
    Header,
    /// A blank line: ignored, not a reject.
    Blank,
}

/// Per-file parsing state: the chosen format, a CSV header mapping.
///
/// One `LineParser` per file, fed the file's lines in order.
pub struct LineParser {
    /// The format asked for.
    requested: Format,
    /// The format in use (`Auto` until the first non-blank line decides).
    format: Format,
    /// Lines longer than this are rejected with [`RejectReason::TooLong`].
    max_line_bytes: usize,
    /// CSV header mapping and scratch cells (`le5-csv`, `ecle-csv`, `auto`).
    csv: csv::CsvState,
    /// Keep the fields a bridge wrote into JSON records (`ingestion_time`,
    /// `sync_delay_ms`, `host`): reading the bridge's own history.
    bridge_fields: bool,
}

impl LineParser {
    /// A parser for one file.
    pub fn new(format: Format, max_line_bytes: usize) -> Self {
        LineParser { requested: format, format, max_line_bytes, csv: csv::CsvState::default(), bridge_fields: false }
    }

    /// Keeps the fields a bridge wrote (`ingestion_time` in either
    /// spelling, `sync_delay_ms`, `host`) in `ecls` and JSON records and in
    /// export CSV files with the bridge's columns, as they are: for reading the bridge's archive or replay log (`lag
    /// report`). Files read by the bridge leave them to the stamping.
    pub fn keep_bridge_fields(&mut self) {
        self.bridge_fields = true;
    }

    /// The format in use: what was asked for, or what `auto` chose once it
    /// has seen the first non-blank line (`Auto` before that).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The format that was asked for (`Auto` stays `Auto`).
    pub fn requested(&self) -> Format {
        self.requested
    }

    /// The longest line accepted, in bytes.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// True when the file may hold pretty-printed JSON documents spread over
    /// several lines, which the ingest stage joins (see [`framing`]): the format
    /// is `ecls`, `le-json`, or `auto` not yet decided.
    pub fn accepts_json_documents(&self) -> bool {
        matches!(self.format, Format::Ecls | Format::LeJson | Format::Auto)
    }

    /// Parses one line (no terminator; a trailing `\r` is allowed) and
    /// pushes the records it holds onto `out`. On a reject nothing is
    /// pushed.
    pub fn parse_line<'a>(&mut self, line: &'a [u8], out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line_bytes {
            return Err(Reject::new(RejectReason::TooLong, format!("{} bytes > max_line_bytes {}", line.len(), self.max_line_bytes)));
        }
        let s = match std::str::from_utf8(line) {
            Ok(s) => s,
            Err(e) => return Err(Reject::new(RejectReason::InvalidUtf8, format!("invalid UTF-8 at byte {}", e.valid_up_to()))),
        };
        // A byte-order mark may open a file written on Windows.
        let s = s.strip_prefix('\u{feff}').unwrap_or(s);
        if s.trim_ascii().is_empty() {
            return Ok(LineKind::Blank);
        }
        if self.format == Format::Auto {
            match detect::detect(s, &mut self.csv.cells) {
                Some(f) => self.format = f,
                None => {
                    // Not a word of the line: the detail is logged, and a file
                    // of unknown content (a link to a secret, a binary) must
                    // not reach the log. The rejects file keeps a short,
                    // escaped prefix (`rejects::UNKNOWN_FORMAT_RAW_BYTES`).
                    return Err(Reject::new(RejectReason::UnknownFormat, format!("not a line of any known format ({} bytes)", s.len())));
                }
            }
        }
        let before = out.len();
        let r = match self.format {
            Format::Le6 => le6::parse(s, out),
            Format::Le5Csv => le5_csv::parse(s, &mut self.csv, out),
            Format::EcleCsv => ecle_csv::parse_with(s, &mut self.csv, self.bridge_fields, out),
            Format::LeJson => le_json::parse_with(s, self.bridge_fields, out),
            Format::Ecls => ecls::parse_with(s, self.bridge_fields, out),
            Format::Auto => Err(Reject::new(RejectReason::UnknownFormat, "format not decided")),
        };
        if r.is_err() {
            out.truncate(before);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{le5_csv_header, Generator};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Parses `line` and checks the contract: on success the records pushed
    /// match the count returned; on a reject nothing is pushed.
    fn parse_checked(p: &mut LineParser, line: &[u8]) -> Result<LineKind, Reject> {
        let mut out = vec![Record::default()];
        let r = p.parse_line(line, &mut out);
        match &r {
            Ok(LineKind::Records(n)) => assert_eq!(out.len(), 1 + n),
            _ => assert_eq!(out.len(), 1, "nothing pushed for {r:?}"),
        }
        r
    }

    #[test]
    fn random_mutations_never_panic_and_keep_the_contract() {
        let mut rng = StdRng::seed_from_u64(42);
        for format in [Format::Le6, Format::Le5Csv, Format::LeJson, Format::EcleCsv, Format::Ecls, Format::Auto] {
            let mut g = Generator::new(3);
            let mut p = LineParser::new(format, 4096);
            if format == Format::Le5Csv {
                assert_eq!(parse_checked(&mut p, le5_csv_header().as_bytes()), Ok(LineKind::Header));
            }
            let (mut ok, mut rejected) = (0, 0);
            for _ in 0..3000 {
                let mut l = g.next_call(1_732_000_000_000, 0).render(format).into_bytes();
                let valid = match rng.random_range(0..5) {
                    0 => true,
                    1 => {
                        l = (0..rng.random_range(0..300)).map(|_| rng.random::<u8>()).collect();
                        false
                    }
                    2 => {
                        for _ in 0..rng.random_range(1..6) {
                            let i = rng.random_range(0..l.len());
                            l[i] = *[b'"', b',', b' ', b'[', b']', b'\\', b'{', b'}', b'_', 0xc3, b'\r']
                                .get(rng.random_range(0..11))
                                .unwrap_or(&b'x');
                        }
                        false
                    }
                    3 => {
                        l.truncate(rng.random_range(0..l.len()));
                        false
                    }
                    _ => {
                        let i = rng.random_range(0..l.len());
                        let j = rng.random_range(i..l.len());
                        l.drain(i..j);
                        false
                    }
                };
                match parse_checked(&mut p, &l) {
                    Ok(_) => ok += 1,
                    Err(r) => {
                        assert!(!valid, "{format}: a valid line was rejected: {r}");
                        assert!(!r.detail.is_empty());
                        rejected += 1;
                    }
                }
            }
            assert_eq!(ok + rejected, 3000);
            assert!(ok > 500 && rejected > 500, "{format}: {ok} ok, {rejected} rejected");
        }
    }

    #[test]
    fn every_line_level_reason() {
        let mut p = LineParser::new(Format::Le6, 10);
        assert_eq!(parse_checked(&mut p, b"0123456789ab").unwrap_err().reason, RejectReason::TooLong);
        assert_eq!(
            parse_checked(&mut p, b"0123456789\r"),
            Err(Reject::new(RejectReason::ColumnCount, "expected 71 fields (72 with class), found 1"))
        );
        assert_eq!(parse_checked(&mut p, b"ab\xffcd").unwrap_err().reason, RejectReason::InvalidUtf8);
        assert_eq!(parse_checked(&mut p, b"  \r"), Ok(LineKind::Blank));
        let mut a = LineParser::new(Format::Auto, 100);
        assert_eq!(parse_checked(&mut a, b"hello").unwrap_err().reason, RejectReason::UnknownFormat);
        assert_eq!(a.format(), Format::Auto);
        assert_eq!(parse_checked(&mut a, b"\xef\xbb\xbfrequest_uuid,request_time"), Ok(LineKind::Header));
        assert_eq!(a.format(), Format::Le5Csv);
        assert_eq!(parse_checked(&mut a, b"u1,1542643298.014"), Ok(LineKind::Records(1)));
    }
}
