//! Slices and their file names: which slice a `request_time` falls in, and
//! the names of a slice's files, so that a sorted listing is chronological
//! (`calllog-2026-11-29T10-00Z.csv.gz`, then its late files
//! `calllog-2026-11-29T10-00Z.late-1.csv.gz`, ..., then the next slice).
//!
//! Records whose `request_time` is outside the export's window go to
//! out-of-window files, one per slice of the time they were written
//! (`out-of-window-2026-11-29T10-00Z.csv.gz`, then `...-00Z.2.csv.gz` if
//! that name was taken): not a slice file, so a reader's `calllog-*` glob
//! does not take them, and [`FileName::parse`] does not either.
//!
//! Invariant: pure. A file being written has the name of the file it will
//! become with a leading `.` and a `.partial` suffix, so no glob a reader
//! would use (`*.csv.gz`) matches it, and the rename that publishes it is
//! atomic within the directory.

use std::fmt;

use crate::time;

/// Prefix of every export file name.
const PREFIX: &str = "calllog-";
/// Suffix of a file being written.
const PARTIAL: &str = ".partial";
/// Prefix of every out-of-window file name.
const OUT_OF_WINDOW: &str = "out-of-window-";

/// The names of one file of the export: published, and while written.
pub trait ExportFileName: Copy + fmt::Display {
    /// The published name.
    fn published(&self) -> String {
        self.to_string()
    }

    /// The name while it is being written.
    fn partial(&self) -> String {
        format!(".{self}{PARTIAL}")
    }

    /// `.csv.gz` rather than `.csv`.
    fn gzip(&self) -> bool;
}

/// `.partial` stripped (`Some((rest, true))`), or the name as it is.
fn strip_partial(name: &str) -> Option<(&str, bool)> {
    match name.strip_prefix('.') {
        Some(r) => Some((r.strip_suffix(PARTIAL)?, true)),
        None => Some((name, false)),
    }
}

/// `.csv.gz` or `.csv` stripped, and which.
fn strip_csv(name: &str) -> Option<(&str, bool)> {
    match name.strip_suffix(".csv.gz") {
        Some(r) => Some((r, true)),
        None => Some((name.strip_suffix(".csv")?, false)),
    }
}

/// A slice's start read back from its label (`2026-11-29T10-00Z`).
fn parse_label(label: &str) -> Option<Slice> {
    if label.len() != 17 || label.as_bytes()[13] != b'-' || !label.ends_with('Z') {
        return None;
    }
    let iso = format!("{}:{}:00Z", label.get(..13)?, label.get(14..16)?);
    Some(Slice { start_ms: time::parse_iso(&iso)? })
}

/// A slice: `[start_ms, start_ms + len)` in UTC, aligned to its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice {
    /// Its first millisecond (epoch ms, a multiple of the slice length).
    pub start_ms: i64,
}

impl Slice {
    /// The slice of length `len_ms` that holds `ms`.
    pub fn of(ms: i64, len_ms: i64) -> Slice {
        Slice { start_ms: ms.div_euclid(len_ms) * len_ms }
    }

    /// One past its last millisecond.
    pub fn end_ms(self, len_ms: i64) -> i64 {
        self.start_ms.saturating_add(len_ms)
    }

    /// `2026-11-29T10-00Z`: the start in UTC, to the minute, with `-` for
    /// `:` (which some file systems and object stores refuse).
    pub fn label(self) -> String {
        let iso = time::format_iso_seconds(self.start_ms);
        // `2026-11-29T10:00:00Z` -> `2026-11-29T10-00Z`.
        let cut = iso.len().saturating_sub(4);
        format!("{}Z", iso[..cut].replace(':', "-"))
    }

    /// The start as ISO 8601 (`2026-11-29T10:00:00Z`), for status output.
    pub fn iso(self) -> String {
        time::format_iso_seconds(self.start_ms)
    }
}

/// Which file of a slice: the slice itself or its n-th late file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// The slice's file, published when the slice closes.
    Main,
    /// Records that arrived after the slice was closed: `late-n`, n ≥ 1.
    Late(u32),
}

/// A file of the export: slice, part, compressed or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileName {
    /// The slice.
    pub slice: Slice,
    /// Main or late.
    pub part: Part,
    /// `.csv.gz` rather than `.csv`.
    pub gzip: bool,
}

impl ExportFileName for FileName {
    fn gzip(&self) -> bool {
        self.gzip
    }
}

impl FileName {
    /// The published name.
    pub fn published(&self) -> String {
        ExportFileName::published(self)
    }

    /// The name while it is being written.
    pub fn partial(&self) -> String {
        ExportFileName::partial(self)
    }

    /// Reads a name back: `Some((name, partial))` for a file of the export
    /// (published, or being written), `None` for anything else.
    pub fn parse(name: &str) -> Option<(FileName, bool)> {
        let (whole, partial) = strip_partial(name)?;
        let rest = whole.strip_prefix(PREFIX)?;
        let (rest, gzip) = strip_csv(rest)?;
        // `2026-11-29T10-00Z` is 17 bytes.
        let (label, part) = (rest.get(..17)?, rest.get(17..)?);
        let part = match part.strip_prefix(".late-") {
            None if part.is_empty() => Part::Main,
            None => return None,
            Some(n) => Part::Late(parse_counter(n)?),
        };
        let fname = FileName { slice: parse_label(label)?, part, gzip };
        // Only names this module writes (the round trip is exact).
        (fname.to_string() == whole).then_some((fname, partial))
    }
}

/// `n` ≥ 1 as this module writes it (not `01`, not `+1`).
fn parse_counter(n: &str) -> Option<u32> {
    let v: u32 = n.parse().ok().filter(|v| *v >= 1)?;
    (v.to_string() == n).then_some(v)
}

/// An out-of-window file: records written while `arrival` was the
/// current slice whose own `request_time` was outside the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutOfWindowName {
    /// The slice of the time its first record was written.
    pub arrival: Slice,
    /// 1, or more when a file of that arrival slice existed already.
    pub n: u32,
    /// `.csv.gz` rather than `.csv`.
    pub gzip: bool,
}

impl ExportFileName for OutOfWindowName {
    fn gzip(&self) -> bool {
        self.gzip
    }
}

impl OutOfWindowName {
    /// Reads a name back: `Some((name, partial))` for an out-of-window
    /// file, `None` for anything else.
    pub fn parse(name: &str) -> Option<(OutOfWindowName, bool)> {
        let (whole, partial) = strip_partial(name)?;
        let (rest, gzip) = strip_csv(whole.strip_prefix(OUT_OF_WINDOW)?)?;
        let (label, n) = (rest.get(..17)?, rest.get(17..)?);
        let n = match n.strip_prefix('.') {
            None if n.is_empty() => 1,
            None => return None,
            Some(n) => parse_counter(n).filter(|n| *n >= 2)?,
        };
        let fname = OutOfWindowName { arrival: parse_label(label)?, n, gzip };
        (fname.to_string() == whole).then_some((fname, partial))
    }
}

impl fmt::Display for OutOfWindowName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(OUT_OF_WINDOW)?;
        f.write_str(&self.arrival.label())?;
        if self.n > 1 {
            write!(f, ".{}", self.n)?;
        }
        f.write_str(if self.gzip { ".csv.gz" } else { ".csv" })
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str(&self.slice.label())?;
        if let Part::Late(n) = self.part {
            write!(f, ".late-{n}")?;
        }
        f.write_str(if self.gzip { ".csv.gz" } else { ".csv" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_HOUR: i64 = 30 * 60_000;

    #[test]
    fn slices_are_aligned_in_utc() {
        let t = time::parse_iso("2026-11-29T10:29:59.999Z").unwrap();
        assert_eq!(Slice::of(t, HALF_HOUR).iso(), "2026-11-29T10:00:00Z");
        assert_eq!(Slice::of(t + 1, HALF_HOUR).iso(), "2026-11-29T10:30:00Z");
        assert_eq!(Slice::of(t + 1, HALF_HOUR).end_ms(HALF_HOUR), t + 1 + HALF_HOUR);
        // Before the epoch too (floor, not truncation).
        assert_eq!(Slice::of(-1, HALF_HOUR).start_ms, -HALF_HOUR);
        assert_eq!(Slice::of(t, 86_400_000).iso(), "2026-11-29T00:00:00Z");
    }

    #[test]
    fn names_sort_chronologically_and_parse_back() {
        let s = |iso: &str| Slice { start_ms: time::parse_iso(iso).unwrap() };
        let a = FileName { slice: s("2026-11-29T10:00:00Z"), part: Part::Main, gzip: true };
        let a1 = FileName { part: Part::Late(1), ..a };
        let b = FileName { slice: s("2026-11-29T10:30:00Z"), ..a };
        let c = FileName { slice: s("2026-11-30T00:00:00Z"), ..a };
        assert_eq!(a.published(), "calllog-2026-11-29T10-00Z.csv.gz");
        assert_eq!(a1.published(), "calllog-2026-11-29T10-00Z.late-1.csv.gz");
        assert_eq!(a.partial(), ".calllog-2026-11-29T10-00Z.csv.gz.partial");
        let mut names = vec![c.published(), b.published(), a1.published(), a.published()];
        names.sort();
        assert_eq!(names, vec![a.published(), a1.published(), b.published(), c.published()]);
        for f in [a, a1, b, c, FileName { gzip: false, ..a1 }] {
            assert_eq!(FileName::parse(&f.published()), Some((f, false)));
            assert_eq!(FileName::parse(&f.partial()), Some((f, true)));
        }
        for other in [
            "calllog-2026-11-29T10-00Z.csv.gz.1",
            "calllog-2026-11-29T10-00Z.late-0.csv.gz",
            "calllog-2026-11-29T10-00Z.late-01.csv.gz",
            "calllog-2026-11-29T10-07Z.csvx",
            "calllog-2026-13-29T10-00Z.csv",
            ".calllog-2026-11-29T10-00Z.csv.gz",
            "notes.txt",
            "calllog-",
        ] {
            assert_eq!(FileName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn out_of_window_names_are_no_slice_names_and_parse_back() {
        let arrival = Slice { start_ms: time::parse_iso("2026-11-29T10:30:00Z").unwrap() };
        let a = OutOfWindowName { arrival, n: 1, gzip: true };
        let a2 = OutOfWindowName { n: 2, ..a };
        assert_eq!(a.published(), "out-of-window-2026-11-29T10-30Z.csv.gz");
        assert_eq!(a2.published(), "out-of-window-2026-11-29T10-30Z.2.csv.gz");
        assert_eq!(a.partial(), ".out-of-window-2026-11-29T10-30Z.csv.gz.partial");
        for f in [a, a2, OutOfWindowName { gzip: false, ..a2 }] {
            assert_eq!(OutOfWindowName::parse(&f.published()), Some((f, false)));
            assert_eq!(OutOfWindowName::parse(&f.partial()), Some((f, true)));
            assert_eq!(FileName::parse(&f.published()), None);
        }
        for other in
            ["out-of-window-2026-11-29T10-30Z.1.csv.gz", "out-of-window-2026-11-29T10-30Z.02.csv.gz", "calllog-2026-11-29T10-30Z.csv.gz"]
        {
            assert_eq!(OutOfWindowName::parse(other), None, "{other}");
        }
    }
}
