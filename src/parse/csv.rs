//! The CSV machinery shared by `le5-csv` and `ecle-csv`: an RFC 4180
//! splitter that borrows from the line, and the column mapping a header row
//! (or a format's default column order) defines.
//!
//! Invariant: a cell is `Cow::Borrowed` from the line unless it holds a
//! doubled quote (`""`), which is the only case that needs a copy.

use std::borrow::Cow;

use memchr::memchr;

use crate::parse::normalize::{self, Finish};
use crate::parse::{Reject, RejectReason};
use crate::record::{Field, Record};

/// One cell of a split line: a byte range of the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// First byte of the value (after an opening quote).
    pub start: usize,
    /// One past the last byte of the value (before a closing quote).
    pub end: usize,
    /// The value holds doubled quotes that must be collapsed.
    pub escaped: bool,
}

impl Cell {
    /// The cell's value, borrowed from `line` unless it needs unescaping.
    pub fn value<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let v = &line[self.start..self.end];
        if self.escaped {
            Cow::Owned(v.replace("\"\"", "\""))
        } else {
            Cow::Borrowed(v)
        }
    }

    /// The raw text between the delimiters (no unescaping).
    pub fn raw<'a>(&self, line: &'a str) -> &'a str {
        &line[self.start..self.end]
    }
}

/// Splits one CSV line (no terminator) into `cells` (cleared first).
///
/// RFC 4180: fields separated by `,`; a field that starts with `"` is
/// quoted, may hold `,` and doubled quotes `""`, and must end with a `"`
/// followed by `,` or the end of the line. A quote inside an unquoted field
/// is taken literally. Errors are [`RejectReason::Quoting`].
pub fn split(line: &str, cells: &mut Vec<Cell>) -> Result<(), Reject> {
    cells.clear();
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            let start = i + 1;
            let mut j = start;
            let mut escaped = false;
            let end = loop {
                match memchr(b'"', &b[j..]) {
                    None => {
                        return Err(Reject::new(RejectReason::Quoting, format!("unterminated quoted field in column {}", cells.len() + 1)));
                    }
                    Some(k) => {
                        let q = j + k;
                        if b.get(q + 1) == Some(&b'"') {
                            escaped = true;
                            j = q + 2;
                        } else {
                            break q;
                        }
                    }
                }
            };
            cells.push(Cell { start, end, escaped });
            match b.get(end + 1) {
                None => return Ok(()),
                Some(b',') => i = end + 2,
                Some(_) => {
                    return Err(Reject::new(
                        RejectReason::Quoting,
                        format!("text after the closing quote of column {} at byte {}", cells.len(), end + 1),
                    ));
                }
            }
        } else {
            match memchr(b',', &b[i..]) {
                None => {
                    cells.push(Cell { start: i, end: b.len(), escaped: false });
                    return Ok(());
                }
                Some(k) => {
                    cells.push(Cell { start: i, end: i + k, escaped: false });
                    i += k + 1;
                }
            }
        }
    }
}

/// How the columns of a CSV file map to schema fields.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Columns {
    /// No header seen: the format's default order(s) apply.
    #[default]
    Default,
    /// From a header row: one entry per column, `None` for columns the
    /// schema has no place for.
    Header(Vec<Option<Field>>),
}

/// Per-file CSV state: the column mapping and a reusable cell buffer.
#[derive(Debug, Default)]
pub struct CsvState {
    /// The mapping in force (from the last header row seen).
    pub columns: Columns,
    /// Scratch space for the current line's cells (reused across lines).
    pub cells: Vec<Cell>,
    /// Where the last header row put the bridge's own columns
    /// (`record::CSV_BRIDGE_COLUMNS`), if it named them.
    pub bridge_columns: [Option<usize>; 3],
}

/// Parses one CSV line of a file whose default column order(s) are
/// `defaults` (a header row, when present, overrides them): a header row
/// updates the mapping, a data row becomes one record.
pub fn parse_line<'a>(
    line: &'a str,
    st: &mut CsvState,
    defaults: &[&[Field]],
    out: &mut Vec<Record<'a>>,
) -> Result<crate::parse::LineKind, Reject> {
    split(line, &mut st.cells)?;
    if is_header(line, &st.cells) {
        st.columns = Columns::Header(header_columns(line, &st.cells));
        st.bridge_columns = crate::record::CSV_BRIDGE_COLUMNS.map(|name| st.cells.iter().position(|c| c.raw(line).trim() == name));
        return Ok(crate::parse::LineKind::Header);
    }
    match &st.columns {
        Columns::Header(cols) => {
            if st.cells.len() != cols.len() {
                return Err(column_count(&format!("{} (as the header row)", cols.len()), st.cells.len()));
            }
            row_to_record(line, &st.cells, cols, normalize::FINISH_LE, out)?;
        }
        Columns::Default => match defaults.iter().find(|d| d.len() == st.cells.len()) {
            Some(order) => row_to_record_in_order(line, &st.cells, order, normalize::FINISH_LE, out)?,
            None => {
                let counts: Vec<String> = defaults.iter().map(|d| d.len().to_string()).collect();
                return Err(column_count(&counts.join(" or "), st.cells.len()));
            }
        },
    }
    Ok(crate::parse::LineKind::Records(1))
}

/// True when the split line is a header row: one of its cells is exactly
/// `request_uuid` (a data row never holds that value).
pub fn is_header(line: &str, cells: &[Cell]) -> bool {
    cells.iter().any(|c| c.raw(line) == "request_uuid")
}

/// The column mapping a header row defines (names are matched exactly,
/// Local Edition names included; a UTF-8 byte-order mark is ignored).
pub fn header_columns(line: &str, cells: &[Cell]) -> Vec<Option<Field>> {
    cells.iter().map(|c| normalize::field_for_name(c.raw(line).trim().trim_start_matches('\u{feff}'))).collect()
}

/// Builds a record from a split row given its column mapping, normalises
/// it and pushes it onto `out`.
pub fn row_to_record<'a>(
    line: &'a str,
    cells: &[Cell],
    columns: &[Option<Field>],
    how: Finish,
    out: &mut Vec<Record<'a>>,
) -> Result<(), Reject> {
    let mut rec = Record::default();
    for (cell, field) in cells.iter().zip(columns) {
        if let Some(f) = field {
            rec.set(*f, cell.value(line));
        }
    }
    normalize::finish(&mut rec, how)?;
    out.push(rec);
    Ok(())
}

/// The same, for a default order given as a plain field list.
pub fn row_to_record_in_order<'a>(
    line: &'a str,
    cells: &[Cell],
    order: &[Field],
    how: Finish,
    out: &mut Vec<Record<'a>>,
) -> Result<(), Reject> {
    let mut rec = Record::default();
    for (cell, f) in cells.iter().zip(order) {
        rec.set(*f, cell.value(line));
    }
    normalize::finish(&mut rec, how)?;
    out.push(rec);
    Ok(())
}

/// A column-count reject.
pub fn column_count(expected: &str, found: usize) -> Reject {
    Reject::new(RejectReason::ColumnCount, format!("expected {expected} columns, found {found}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&[&str], RejectReason>) {
        let mut cells = Vec::new();
        let got = split(input, &mut cells).map(|()| cells.iter().map(|c| c.value(input).into_owned()).collect::<Vec<_>>());
        match (got, expected) {
            (Ok(v), Ok(e)) => assert_eq!(v, e, "{input:?}"),
            (Err(r), Err(e)) => assert_eq!(r.reason, e, "{input:?}"),
            (g, e) => panic!("{input:?}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn rfc4180() {
        check("a,b,c", Ok(&["a", "b", "c"]));
        check("", Ok(&[""]));
        check("a,,", Ok(&["a", "", ""]));
        check("\"a,b\",c", Ok(&["a,b", "c"]));
        check("\"say \"\"hi\"\"\",x", Ok(&["say \"hi\"", "x"]));
        check("\"\"", Ok(&[""]));
        check("\"\",\"\"", Ok(&["", ""]));
        check("a\"b,c", Ok(&["a\"b", "c"]));
        check("x,\"end\"", Ok(&["x", "end"]));
        check("\"unterminated,x", Err(RejectReason::Quoting));
        check("\"a\"b,c", Err(RejectReason::Quoting));
        check("a,\"b\"\"", Err(RejectReason::Quoting));
    }

    #[test]
    fn borrowed_unless_escaped() {
        let mut cells = Vec::new();
        let line = "plain,\"quoted\",\"with \"\"esc\"\"\"";
        split(line, &mut cells).unwrap();
        assert!(matches!(cells[0].value(line), Cow::Borrowed(_)));
        assert!(matches!(cells[1].value(line), Cow::Borrowed(_)));
        assert!(matches!(cells[2].value(line), Cow::Owned(_)));
    }
}
