//! Peer-supplied text in log lines: escaped, so that a collector's answer,
//! a file name in a watched directory or a header value cannot forge log
//! lines (a newline and a fake timestamp) or send terminal escape
//! sequences to whoever reads the journal.
//!
//! Invariant: every string a peer controls reaches a log line through
//! [`Escaped`] (`tracing::warn!(file = %Escaped(&path), ...)`); control
//! characters (C0, DEL, C1), the Unicode line and paragraph separators and
//! the bidirectional controls (embeddings, overrides, isolates and marks:
//! a right-to-left override makes `gol.exe` read `exe.log` on a terminal,
//! and can make the rest of a line read backwards) are written as `\n`,
//! `\r`, `\t` or `\u{XX}`. Printable text, non-ASCII
//! letters included, is kept as it is, so ordinary names stay readable.
//! No allocation: the escaping happens while the line is formatted.

use std::fmt::{self, Display, Write};
use std::path::Path;

/// Displays a peer-supplied string with its control characters escaped.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl<'a> Escaped<'a> {
    /// A path (a file name found by the globs), lossily as UTF-8.
    pub fn path(p: &'a Path) -> EscapedPath<'a> {
        EscapedPath(p)
    }
}

/// Displays a path with its control characters escaped (see [`Escaped`]).
#[derive(Clone, Copy, Debug)]
pub struct EscapedPath<'a>(pub &'a Path);

/// True for the characters written escaped.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_bidi_control(c)
}

/// The Unicode bidirectional formatting characters (`Bidi_Control`): the
/// marks LRM, RLM and ALM, the embeddings and overrides LRE, RLE, PDF, LRO
/// and RLO, and the isolates LRI, RLI, FSI and PDI.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes `s` with its control characters escaped.
fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let mut rest = s;
    while let Some(i) = rest.find(needs_escape) {
        f.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or('\0');
        match c {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[i + c.len_utf8()..];
    }
    f.write_str(rest)
}

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

impl Display for EscapedPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.to_str() {
            Some(s) => write_escaped(f, s),
            None => write_escaped(f, &self.0.to_string_lossy()),
        }
    }
}

/// At most `max` bytes of `s` (on a character boundary), with `…` when cut:
/// peer-supplied text in a log line is short as well as escaped.
pub fn clip(s: &str, max: usize) -> ClipEscaped<'_> {
    if s.len() <= max {
        return ClipEscaped(s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ClipEscaped(&s[..end], true)
}

/// See [`clip`].
#[derive(Clone, Copy, Debug)]
pub struct ClipEscaped<'a>(&'a str, bool);

impl Display for ClipEscaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)?;
        if self.1 {
            f.write_char('…')?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(Escaped(input).to_string(), expected, "{input:?}");
    }

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        check("plain text, ünïcödé – ok", "plain text, ünïcödé – ok");
        check("", "");
        check("a\nb\r\nc\td", "a\\nb\\r\\nc\\td");
        check("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m");
        check("x\u{7f}y\u{85}z\u{9b}", "x\\u{7f}y\\u{85}z\\u{9b}");
        check("line\u{2028}sep\u{2029}", "line\\u{2028}sep\\u{2029}");
        check("\u{0}", "\\u{0}");
        // Bidirectional controls: an override cannot turn the text around.
        check("error: \u{202e}gol.exe", "error: \\u{202e}gol.exe");
        check("a\u{2066}b\u{2069}c\u{200f}d\u{61c}e\u{202a}", "a\\u{2066}b\\u{2069}c\\u{200f}d\\u{61c}e\\u{202a}");
        // Right-to-left text itself stays readable.
        check("שלום مرحبا", "שלום مرحبا");
        // A forged log line stays on one line.
        let forged = "oops\n2026-01-01T00:00:00Z  INFO calllog_bridge: all good";
        assert!(!Escaped(forged).to_string().contains('\n'));
    }

    #[test]
    fn paths_and_clipping() {
        assert_eq!(Escaped::path(Path::new("/logs/a\nb.log")).to_string(), "/logs/a\\nb.log");
        assert_eq!(clip("abcdef", 3).to_string(), "abc…");
        assert_eq!(clip("abc", 3).to_string(), "abc");
        assert_eq!(clip("ééé", 3).to_string(), "é…");
        assert_eq!(clip("a\nbcdef", 2).to_string(), "a\\n…");
    }
}
