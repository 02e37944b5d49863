//! `auto`: recognising a file's format from its first non-blank line.
//!
//! - `le6`: starts with a `dd-mm-yyyy` date and holds `PROXY_ACCESS`;
//! - `ecls`: a JSON object whose first key is `data` holding an array;
//! - `le-json`: any other JSON object;
//! - a CSV header row naming `request_uuid`: `ecle-csv` when it starts with
//!   `request_host_name` (the export's natural order), else `le5-csv`;
//! - a CSV row without header: 35 or 39 columns with a time in column 12
//!   (natural order) → `ecle-csv`; 35 columns with an epoch time in
//!   column 23 (alphabetical order) → `le5-csv`.

use crate::parse::csv::{self, Cell};
use crate::parse::{json, le6, Format};
use crate::time;

/// The format of a file whose first non-blank line is `line`; `None` when
/// it is none of the above. `cells` is scratch space.
pub fn detect(line: &str, cells: &mut Vec<Cell>) -> Option<Format> {
    let t = line.trim_start();
    if le6::looks_like(t) {
        return Some(Format::Le6);
    }
    if t.starts_with('{') {
        return Some(if json::looks_like_message(t) { Format::Ecls } else { Format::LeJson });
    }
    csv::split(t, cells).ok()?;
    if csv::is_header(t, cells) {
        let first = cells[0].raw(t).trim();
        return Some(if first == "request_host_name" { Format::EcleCsv } else { Format::Le5Csv });
    }
    let parses = |i: usize| cells.get(i).is_some_and(|c| time::parse_any(c.raw(t)).is_some());
    match cells.len() {
        35 | 39 if parses(11) => Some(Format::EcleCsv),
        35 if parses(22) => Some(Format::Le5Csv),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<Format>) {
        assert_eq!(detect(input, &mut Vec::new()), expected, "{input:?}");
    }

    #[test]
    fn formats() {
        check("15-02-2024 08:47:17.389 INFO PROXY_ACCESS - host", Some(Format::Le6));
        check("15-02-2024 08:47:17.389 INFO OTHER - host", None);
        check(r#"{"data":[{"a":"b"}]}"#, Some(Format::Ecls));
        check(r#"{ "data" : [ ]}"#, Some(Format::Ecls));
        check(r#"{"method":"GET","data":[]}"#, Some(Format::LeJson));
        check("api_key,request_uuid,request_time", Some(Format::Le5Csv));
        check("request_host_name,src_ip,request_uuid", Some(Format::EcleCsv));
        let natural = format!("h,ip,uuid,GET,/,HTTP/1.1,2,200,-,ua,id,2019-06-06T00:21:55Z{}", ",x".repeat(23));
        check(&natural, Some(Format::EcleCsv));
        let alpha = format!("{}1542643298.014{}", "x,".repeat(22), ",x".repeat(12));
        check(&alpha, Some(Format::Le5Csv));
        check("just some text", None);
        check("a,b,c", None);
    }
}
