//! Reading a whole input offline (`parse`, `lag report`): open a file or
//! stdin (gzip recognised by its magic bytes, multi-member as rotated logs
//! are), read it in large buffers, and hand each buffer, after the bytes
//! the previous step did not consume, to a step that feeds the file's
//! [`Ingest`](super::Ingest). The running bridge reads through
//! `tail::reader` instead (offsets, rotation, budget); both feed the same
//! ingest stage.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use flate2::bufread::MultiGzDecoder;

use crate::record::Record;

/// Read buffer size: large enough that bulk files are read in few syscalls.
pub const READ_BUF_BYTES: usize = 256 * 1024;

/// An opened input.
pub struct Input {
    /// Decompressed content.
    pub reader: Box<dyn Read>,
    /// Size on disk (for a progress bar); `None` for stdin.
    pub size: Option<u64>,
    /// Bytes read from disk so far (compressed bytes for gzip).
    pub read: Rc<Cell<u64>>,
    /// The file's modification time (epoch ms); `None` for stdin.
    pub modified_ms: Option<i64>,
}

/// Counts the bytes read through it (for the progress bar).
struct Counting<R> {
    /// The source.
    inner: R,
    /// Shared running total.
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Opens a file (`-` = stdin), decompressing gzip (recognised by its magic
/// bytes, whatever the name).
pub fn open_input(path: &Path) -> io::Result<Input> {
    let read = Rc::new(Cell::new(0));
    let (raw, size, modified_ms): (Box<dyn Read>, Option<u64>, Option<i64>) = if path.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None, None)
    } else {
        let f = File::open(path)?;
        let meta = f.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_millis() as i64);
        (Box::new(f), Some(meta.len()), modified)
    };
    let mut buffered = BufReader::with_capacity(READ_BUF_BYTES, Counting { inner: raw, read: read.clone() });
    let gz = loop {
        match buffered.fill_buf() {
            Ok(b) => break b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let reader: Box<dyn Read> = if gz { Box::new(MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
    Ok(Input { reader, size, read, modified_ms })
}

/// Turns a vector of records into an empty one of another lifetime,
/// keeping its allocation (records borrow the read buffer, which changes
/// every read).
// `filter_map` (not `filter`) because it changes the item type; the
// in-place collect reuses the allocation since the layouts are equal.
#[allow(clippy::unnecessary_filter_map)]
pub fn recycle<'b>(mut v: Vec<Record<'_>>) -> Vec<Record<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Reads once into `buf` after its first `filled` bytes (growing it when
/// full: an open document is carried); returns the bytes read, 0 at the
/// end of the input.
fn read_some(r: &mut dyn Read, buf: &mut Vec<u8>, filled: usize) -> io::Result<usize> {
    if buf.len() < filled + READ_BUF_BYTES / 2 {
        buf.resize(filled + READ_BUF_BYTES, 0);
    }
    loop {
        match r.read(&mut buf[filled..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Reads `reader` to its end: each call of `step` gets the bytes it did
/// not consume last time followed by new ones, and whether the input ends
/// there (`last`), and returns how many bytes it consumed (the whole
/// buffer when `last`). A read error ends the input: what was read is
/// handled as its end, then the error is returned (`Ok(Some(e))`); an
/// error of the step stops at once (`Err`). `buf` is the reusable buffer
/// (kept at most [`READ_BUF_BYTES`] afterwards).
pub fn read_through<E>(
    reader: &mut dyn Read,
    buf: &mut Vec<u8>,
    mut step: impl FnMut(&[u8], bool) -> Result<usize, E>,
) -> Result<Option<io::Error>, E> {
    // buf[..filled]: what the step did not consume, then new bytes.
    let mut filled = 0;
    let mut failed = None;
    loop {
        let (n, last) = match read_some(reader, buf, filled) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) => {
                failed = Some(e);
                (0, true)
            }
        };
        filled += n;
        let consumed = step(&buf[..filled], last)?.min(filled);
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if last {
            break;
        }
    }
    // A buffer grown for a long document is not kept.
    buf.truncate(READ_BUF_BYTES);
    buf.shrink_to(READ_BUF_BYTES);
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycle_keeps_the_allocation() {
        let mut v: Vec<Record<'static>> = Vec::with_capacity(16);
        v.push(Record::default());
        let cap = v.capacity();
        let w: Vec<Record<'_>> = recycle(v);
        assert!(w.is_empty());
        assert_eq!(w.capacity(), cap);
    }

    #[test]
    fn the_step_sees_its_unconsumed_bytes_again_and_the_end_once() {
        let data: Vec<u8> = (0..READ_BUF_BYTES * 3 + 17).map(|i| if i % 100 == 99 { b'\n' } else { b'x' }).collect();
        let mut seen = Vec::new();
        let mut lasts = 0;
        let mut buf = Vec::new();
        let r = read_through(&mut &data[..], &mut buf, |b: &[u8], last| -> Result<usize, ()> {
            lasts += usize::from(last);
            // Consume whole lines only, like the ingest stage.
            let n = if last { b.len() } else { b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1) };
            seen.extend_from_slice(&b[..n]);
            Ok(n)
        });
        assert!(matches!(r, Ok(None)));
        assert_eq!(lasts, 1);
        assert_eq!(seen, data);
        assert!(buf.len() <= READ_BUF_BYTES);
    }
}
