//! Time parsing and formatting without allocation on the parse path.
//!
//! Local Edition writes times as ISO 8601, as epoch seconds with a fraction
//! (`1542643298.014`), as `[15/Feb/2024:08:47:17 +0000]`, and (LE 6 line
//! prefix) as `15-02-2024 08:47:17.389`. Everything is converted to epoch
//! milliseconds (UTC); the schema's `request_time` is formatted back as
//! ISO 8601 UTC with seconds precision, as the hosted stream writes it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date for a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push2(s: &mut String, v: u32) {
    s.push((b'0' + (v / 10) as u8) as char);
    s.push((b'0' + (v % 10) as u8) as char);
}

fn format_iso(ms: i64, millis: bool) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut s = String::with_capacity(24);
    if (0..=9999).contains(&y) {
        let y = y as u32;
        push2(&mut s, y / 100);
        push2(&mut s, y % 100);
    } else {
        s.push_str(&format!("{y:04}"));
    }
    s.push('-');
    push2(&mut s, m);
    s.push('-');
    push2(&mut s, d);
    s.push('T');
    push2(&mut s, sod / 3600);
    s.push(':');
    push2(&mut s, sod / 60 % 60);
    s.push(':');
    push2(&mut s, sod % 60);
    if millis {
        s.push('.');
        s.push((b'0' + (frac / 100) as u8) as char);
        push2(&mut s, frac % 100);
    }
    s.push('Z');
    s
}

/// `2019-04-19T21:56:43Z`: the stream's `request_time` spelling.
pub fn format_iso_seconds(ms: i64) -> String {
    format_iso(ms, false)
}

/// `2019-04-19T21:56:43.068Z`.
pub fn format_iso_millis(ms: i64) -> String {
    format_iso(ms, true)
}

/// A small cursor over ASCII bytes.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.i..self.i + n)?;
        let mut v = 0u32;
        for &c in s {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as u32;
        }
        self.i += n;
        Some(v)
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    /// Fraction digits after a '.', as milliseconds (extra digits truncated).
    fn fraction_ms(&mut self) -> Option<i64> {
        let start = self.i;
        let mut ms = 0i64;
        let mut n = 0;
        while let Some(c) = self.peek() {
            if !c.is_ascii_digit() {
                break;
            }
            if n < 3 {
                ms = ms * 10 + (c - b'0') as i64;
            }
            n += 1;
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        for _ in n..3 {
            ms *= 10;
        }
        Some(ms)
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

/// The earliest time accepted: 0000-01-01T00:00:00.000Z.
const MIN_MS: i64 = -62_167_219_200_000;

/// The latest time accepted: 9999-12-31T23:59:59.999Z.
const MAX_MS: i64 = 253_402_300_799_999;

/// A parsed time within the years ISO 8601 writes with four digits, so
/// that what is parsed formats back into a spelling that parses again
/// (the fuzzer found `992542643298`, epoch seconds in the year 33422).
fn in_range(ms: i64) -> Option<i64> {
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

fn valid_date(m: u32, d: u32, h: u32, mi: u32, s: u32) -> bool {
    (1..=12).contains(&m) && (1..=31).contains(&d) && h <= 23 && mi <= 59 && s <= 60
}

#[allow(clippy::too_many_arguments)]
fn to_ms(y: i64, m: u32, d: u32, h: u32, mi: u32, s: u32, frac_ms: i64, offset_secs: i64) -> i64 {
    let days = days_from_civil(y, m, d);
    (days * 86_400 + (h * 3600 + mi * 60 + s) as i64 - offset_secs) * 1000 + frac_ms
}

/// Parses ISO 8601 / RFC 3339: `2019-04-19T21:56:43Z`,
/// `2018-11-19T16:01:41.250Z`, `2024-02-15 08:47:17+01:00`; a time with no
/// zone is taken as UTC.
pub fn parse_iso(s: &str) -> Option<i64> {
    let mut c = Cur { b: s.as_bytes(), i: 0 };
    let y = c.digits(4)?;
    if !c.eat(b'-') {
        return None;
    }
    let m = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let d = c.digits(2)?;
    if !(c.eat(b'T') || c.eat(b' ') || c.eat(b't')) {
        return None;
    }
    let h = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let mi = c.digits(2)?;
    let sec = if c.eat(b':') { c.digits(2)? } else { 0 };
    let frac = if c.eat(b'.') || c.eat(b',') { c.fraction_ms()? } else { 0 };
    let offset = parse_offset(&mut c)?;
    if !c.done() || !valid_date(m, d, h, mi, sec) {
        return None;
    }
    in_range(to_ms(y as i64, m, d, h, mi, sec, frac, offset))
}

/// `Z`, `+hh:mm`, `+hhmm`, `+hh` or nothing (UTC), as seconds east of UTC.
fn parse_offset(c: &mut Cur<'_>) -> Option<i64> {
    match c.peek() {
        None => Some(0),
        Some(b'Z') | Some(b'z') => {
            c.i += 1;
            Some(0)
        }
        Some(sign @ (b'+' | b'-')) => {
            c.i += 1;
            let h = c.digits(2)?;
            c.eat(b':');
            let m = if c.done() { 0 } else { c.digits(2)? };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = (h * 3600 + m * 60) as i64;
            Some(if sign == b'-' { -secs } else { secs })
        }
        Some(_) => None,
    }
}

/// Parses epoch seconds with an optional fraction: `1542643298.014`.
pub fn parse_epoch_seconds(s: &str) -> Option<i64> {
    let mut c = Cur { b: s.as_bytes(), i: 0 };
    let start = c.i;
    let mut secs = 0i64;
    while let Some(ch) = c.peek() {
        if !ch.is_ascii_digit() {
            break;
        }
        secs = secs.checked_mul(10)?.checked_add((ch - b'0') as i64)?;
        c.i += 1;
    }
    if c.i == start || c.i - start > 12 {
        return None;
    }
    let frac = if c.eat(b'.') { c.fraction_ms()? } else { 0 };
    if !c.done() {
        return None;
    }
    in_range(secs * 1000 + frac)
}

const MONTHS: [&[u8; 3]; 12] = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// Parses the common-log-format time `[15/Feb/2024:08:47:17 +0000]`
/// (brackets optional).
pub fn parse_clf(s: &str) -> Option<i64> {
    let s = s.strip_prefix('[').unwrap_or(s);
    let s = s.strip_suffix(']').unwrap_or(s);
    let mut c = Cur { b: s.as_bytes(), i: 0 };
    let d = c.digits(2)?;
    if !c.eat(b'/') {
        return None;
    }
    let mon = c.b.get(c.i..c.i + 3)?;
    let m = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(mon))? as u32 + 1;
    c.i += 3;
    if !c.eat(b'/') {
        return None;
    }
    let y = c.digits(4)?;
    if !c.eat(b':') {
        return None;
    }
    let h = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let mi = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let sec = c.digits(2)?;
    let frac = if c.eat(b'.') { c.fraction_ms()? } else { 0 };
    c.eat(b' ');
    let offset = parse_offset(&mut c)?;
    if !c.done() || !valid_date(m, d, h, mi, sec) {
        return None;
    }
    in_range(to_ms(y as i64, m, d, h, mi, sec, frac, offset))
}

/// Parses the LE 6 line prefix `15-02-2024 08:47:17.389` (day first, UTC).
pub fn parse_le6_prefix(date: &str, clock: &str) -> Option<i64> {
    let mut c = Cur { b: date.as_bytes(), i: 0 };
    let d = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let m = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let y = c.digits(4)?;
    if !c.done() {
        return None;
    }
    let mut c = Cur { b: clock.as_bytes(), i: 0 };
    let h = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let mi = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let sec = c.digits(2)?;
    let frac = if c.eat(b'.') { c.fraction_ms()? } else { 0 };
    if !c.done() || !valid_date(m, d, h, mi, sec) {
        return None;
    }
    in_range(to_ms(y as i64, m, d, h, mi, sec, frac, 0))
}

/// Parses any `request_time` spelling Local Edition uses (ISO 8601, epoch
/// seconds with a fraction, common-log format).
pub fn parse_any(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    match b.first()? {
        b'[' => parse_clf(s),
        _ if b.len() > 4 && b[4] == b'-' => parse_iso(s),
        _ if b.len() > 2 && b[2] == b'/' => parse_clf(s),
        _ => parse_epoch_seconds(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected_iso_ms: &str) {
        let ms = parse_any(input).unwrap_or_else(|| panic!("did not parse {input:?}"));
        assert_eq!(format_iso_millis(ms), expected_iso_ms, "{input}");
    }

    #[test]
    fn every_spelling() {
        check("2019-04-19T21:56:43Z", "2019-04-19T21:56:43.000Z");
        check("2018-11-19T16:01:41.250Z", "2018-11-19T16:01:41.250Z");
        check("2018-11-19T17:01:41.250+01:00", "2018-11-19T16:01:41.250Z");
        check("2018-11-19 16:01:41", "2018-11-19T16:01:41.000Z");
        check("1542643298.014", "2018-11-19T16:01:38.014Z");
        check("1542643298", "2018-11-19T16:01:38.000Z");
        check("1707986837.3439", "2024-02-15T08:47:17.343Z");
        check("[15/Feb/2024:08:47:17 +0000]", "2024-02-15T08:47:17.000Z");
        check("15/Feb/2024:09:47:17 +0100", "2024-02-15T08:47:17.000Z");
        assert_eq!(format_iso_millis(parse_le6_prefix("15-02-2024", "08:47:17.389").unwrap()), "2024-02-15T08:47:17.389Z");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "-",
            "yesterday",
            "2019-13-01T00:00:00Z",
            "2019-04-19T25:00:00Z",
            "15/Foo/2024:08:47:17 +0000",
            "1e9",
            "12.",
            "2019-04-19T21:56:43Zjunk",
            // Outside the four-digit years (found by the fuzzer).
            "992542643298",
            "9999-12-31T23:59:59-00:01",
            "0000-01-01T00:00:00+00:01",
            "[31/Dec/9999:23:59:59 -0100]",
        ] {
            assert!(parse_any(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_iso_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_iso_seconds(-1), "1969-12-31T23:59:59Z");
    }
}
