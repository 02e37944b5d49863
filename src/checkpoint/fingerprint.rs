//! File identity by content: a checksum of the first line.
//!
//! A path says nothing about identity (rotation renames, sync tools replace)
//! and an inode says little more (copies, replacements, reuse after a
//! delete). The first line of an access log holds a unique call, so its
//! checksum names the file wherever it moves, whatever its inode, and also
//! once it is compressed (the `.gz` is fingerprinted on its decompressed
//! content). A first line without any ASCII digit is taken for a CSV header
//! and skipped, so files that share a header do not collide. A file that
//! starts with a pretty-printed JSON document (a lone `{`: a captured
//! stream message) is fingerprinted on that whole first document: its
//! second line (`"data": [`) is the same in every capture.
//!
//! A file that does not yet hold a complete identifying line has no
//! fingerprint yet ([`Probe::NotYet`]): the tailer waits for it.

use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::parse::framing::{opens_document, JsonDepth};

/// A file's identity: a 64-bit checksum of its first data line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map(Fingerprint).map_err(serde::de::Error::custom)
    }
}

/// What probing a file's start found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The identifying line is complete.
    Ready {
        /// The fingerprint.
        fp: Fingerprint,
        /// Byte range `[start, start + len)` of the identifying line (to
        /// check cheaply that a file still holds the same content).
        start: u64,
        /// Length of the identifying line.
        len: u64,
    },
    /// No complete identifying line yet.
    NotYet,
}

/// Checksum of one line: two CRC-32s with different seeds make a 64-bit
/// value, so thousands of files do not collide by chance.
pub fn checksum(line: &[u8]) -> Fingerprint {
    let mut a = crc32fast::Hasher::new();
    a.update(line);
    let mut b = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
    b.update(&(line.len() as u64).to_le_bytes());
    b.update(line);
    Fingerprint((u64::from(a.finalize()) << 32) | u64::from(b.finalize()))
}

/// True when a first line looks like a CSV header (no digit at all: every
/// data line holds a uuid and a time).
fn is_header(line: &[u8]) -> bool {
    !line.is_empty() && !line.iter().any(u8::is_ascii_digit)
}

/// Reads the start of a file (plain or decompressed) and fingerprints it.
/// Reads at most `2 * (max_line_bytes + 1)` bytes; a first line (or first
/// document) longer than `max_line_bytes` is fingerprinted on its first
/// `max_line_bytes` bytes.
pub fn probe(mut r: impl Read, max_line_bytes: usize) -> io::Result<Probe> {
    let limit = 2 * (max_line_bytes + 1);
    let mut buf = Vec::with_capacity(8192.min(limit));
    let mut chunk = [0u8; 8192];
    let mut line_start = 0usize;
    // The first line opened a JSON document: its brace balance so far.
    let mut doc: Option<JsonDepth> = None;
    loop {
        // Look for the identifying line in what we have.
        while let Some(nl) = memchr::memchr(b'\n', &buf[line_start..]) {
            let end = line_start + nl;
            let mut line = &buf[line_start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if let Some(depth) = &mut doc {
                depth.line_end();
                if depth.feed(line) {
                    let len = (line_start + line.len()).min(max_line_bytes);
                    return Ok(Probe::Ready { fp: checksum(&buf[..len]), start: 0, len: len as u64 });
                }
                line_start = end + 1;
                continue;
            }
            if line_start == 0 && opens_document(line) {
                let mut depth = JsonDepth::new();
                depth.feed(line);
                doc = Some(depth);
                line_start = end + 1;
                continue;
            }
            if line_start == 0 && is_header(line) {
                line_start = end + 1;
                continue;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                line_start = end + 1;
                continue;
            }
            return Ok(Probe::Ready { fp: checksum(line), start: line_start as u64, len: line.len() as u64 });
        }
        if doc.is_some() && buf.len() > max_line_bytes {
            return Ok(Probe::Ready { fp: checksum(&buf[..max_line_bytes]), start: 0, len: max_line_bytes as u64 });
        }
        if buf.len() - line_start > max_line_bytes {
            let line = &buf[line_start..line_start + max_line_bytes];
            return Ok(Probe::Ready { fp: checksum(line), start: line_start as u64, len: line.len() as u64 });
        }
        if buf.len() >= limit {
            return Ok(Probe::NotYet);
        }
        let n = match r.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A gzip file still being written ends early: not yet.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Probe::NotYet),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Probe::NotYet);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Probe {
        probe(s.as_bytes(), 256).unwrap()
    }

    #[test]
    fn first_line_decides() {
        assert_eq!(p("abc1\nxyz2\n"), p("abc1\nother3\n"));
        assert_ne!(p("abc1\n"), p("abd1\n"));
        assert_eq!(p("abc1"), Probe::NotYet);
        assert_eq!(p(""), Probe::NotYet);
    }

    #[test]
    fn csv_header_is_skipped() {
        let a = p("api_key,bytes\nk1,10\n");
        let b = p("api_key,bytes\nk2,10\n");
        assert_ne!(a, b);
        assert_eq!(p("api_key,bytes\n"), Probe::NotYet);
        assert!(matches!(a, Probe::Ready { start: 14, len: 5, .. }), "{a:?}");
    }

    #[test]
    fn crlf_and_blank_lines() {
        let fp = |s: &str| match p(s) {
            Probe::Ready { fp, .. } => fp,
            Probe::NotYet => panic!("not ready"),
        };
        assert_eq!(fp("\n\nabc1\r\n"), fp("abc1\n"));
    }

    #[test]
    fn gzip_is_fingerprinted_on_its_content() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"abc1\nmore2\n").unwrap();
        let gz = enc.finish().unwrap();
        let got = probe(flate2::read::MultiGzDecoder::new(&gz[..]), 256).unwrap();
        assert_eq!(got, p("abc1\n"));
        let half = probe(flate2::read::MultiGzDecoder::new(&gz[..gz.len() / 2]), 256).unwrap();
        assert_eq!(half, Probe::NotYet);
    }

    /// Captured stream messages, pretty-printed, all begin `{` then
    /// `"data": [`: each is named by its whole first document, which holds
    /// its uuid.
    #[test]
    fn a_pretty_printed_document_is_fingerprinted_whole() {
        let msg =
            |u: &str| format!("{{\n  \"data\": [\n    {{\n      \"api_key\": \"\",\n      \"request_uuid\": \"{u}\"\n    }}\n  ]\n}}\n");
        let (a, b) = (msg("u-1"), msg("u-2"));
        assert_ne!(p(&a), p(&b));
        assert_eq!(p(&a), p(&format!("{a}{b}")), "only the first document counts");
        assert!(matches!(p(&a), Probe::Ready { start: 0, len, .. } if len == a.len() as u64 - 1), "{:?}", p(&a));
        assert_eq!(p(&a[..a.len() - 1]), Probe::NotYet, "not before the document's last newline");
        assert_eq!(p(&a[..a.len() / 2]), Probe::NotYet);
        // Longer than max_line_bytes (256 here): its first 256 bytes.
        let long = msg(&"x".repeat(300));
        assert!(matches!(p(&long), Probe::Ready { start: 0, len: 256, .. }), "{:?}", p(&long));
        // A one-line JSON file is unchanged: its first line.
        assert_eq!(p("{\"a\":1}\n"), p("{\"a\":1}\nmore2\n"));
        assert!(matches!(p("{\"a\":1}\n"), Probe::Ready { start: 0, len: 7, .. }));
    }

    #[test]
    fn fingerprint_roundtrips_as_hex() {
        let f = Fingerprint(0x0123_4567_89ab_cdef);
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(s, "\"0123456789abcdef\"");
        assert_eq!(serde_json::from_str::<Fingerprint>(&s).unwrap(), f);
    }
}
