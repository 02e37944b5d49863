//! Framing of multi-line JSON documents. A captured stream message is
//! sometimes pretty-printed over many lines (the shipped
//! `ecls-message.json`); the ingest stage ([`crate::ingest`], for both
//! `run` and `parse`) joins such a document back into one "line" before
//! handing it to the parser. This module only tracks brace depth; the
//! ingest stage owns the buffers.
//!
//! Invariant: pure; a document starts with a line that is a lone `{` and
//! ends when its braces balance (braces inside JSON strings do not count).
//! A JSON string never spans lines (a raw newline cannot be in one), so the
//! end of a line ends any string left open: a broken line cannot make the
//! rest of the document look like string content. Whether a document is fed
//! whole or line by line (with [`JsonDepth::line_end`] between lines), the
//! outcome is the same.

/// True when the line (terminator stripped) opens a multi-line document:
/// it is `{` alone, surrounding whitespace aside.
pub fn opens_document(line: &[u8]) -> bool {
    line.trim_ascii() == b"{"
}

/// Brace depth of a JSON document fed to it piece by piece.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonDepth {
    /// Open `{` / `[` not yet closed.
    depth: u64,
    /// Inside a JSON string.
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escape: bool,
}

impl JsonDepth {
    /// A tracker at depth 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open braces / brackets not yet closed.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// True when a line starting with `{` cannot continue the document:
    /// directly inside the top-level object (where only a `"key"` or `}`
    /// may come) and not inside a string. The reader uses it to give up on
    /// a lone `{` that was not the start of a document.
    pub fn rejects_object_start(&self) -> bool {
        self.depth == 1 && !self.in_string
    }

    /// Feeds the next piece; returns true when the document that was open
    /// has closed (depth back to 0).
    pub fn feed(&mut self, piece: &[u8]) -> bool {
        let mut closed = false;
        for &c in piece {
            if c == b'\n' {
                self.line_end();
                continue;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if c == b'\\' {
                    self.escape = true;
                } else if c == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match c {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    closed = self.depth == 0;
                }
                _ => {}
            }
        }
        closed && self.depth == 0
    }

    /// The end of a line (the reader feeds lines without their newline):
    /// a string left open there was broken.
    pub fn line_end(&mut self) {
        self.in_string = false;
        self.escape = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_ignoring_strings() {
        let mut d = JsonDepth::new();
        assert!(opens_document(b"  {\r"));
        assert!(!opens_document(b"{\"a\":1}"));
        assert!(!d.feed(b"{"));
        assert!(!d.feed(b"  \"data\": [ { \"x\": \"}]\\\"}\" },"));
        assert!(!d.feed(b"  {}"));
        assert!(!d.feed(b"  ]"));
        assert!(d.feed(b"}"));
    }

    #[test]
    fn a_string_never_spans_lines() {
        // Found by the fuzzer: a backslash at the end of a broken line
        // escaped the first byte of the next line when lines were fed one
        // by one, but the newline when the document was fed whole.
        let mut whole = JsonDepth::new();
        whole.feed(b"{\n\"a\\\n\"}\n}");
        let mut lines = JsonDepth::new();
        for (i, l) in [&b"{"[..], b"\"a\\", b"\"}", b"}"].iter().enumerate() {
            if i > 0 {
                lines.line_end();
            }
            lines.feed(l);
        }
        assert_eq!(whole, lines);
        assert_eq!(whole.depth(), 0, "the broken string ends with its line");
    }
}
