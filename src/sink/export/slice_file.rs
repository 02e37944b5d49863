//! One file of the export while it is written: rows go through a gzip
//! stream (or straight) into the hidden `.partial` file; [`SliceFile::sync`]
//! makes everything written so far durable and readable (a gzip *sync
//! flush*, then `fdatasync`); [`SliceFile::publish`] ends the stream,
//! syncs, and renames the file to its published name (then syncs the
//! directory), so a reader never sees half a file.
//!
//! Recovery: a `.partial` file left by an unclean stop (or cut back after
//! a failed write) is read back as far as it decodes, its complete rows
//! are parsed with the export's own reader (`parse::ecle_csv`) and written
//! again into a new stream, which then replaces it: a torn row or gzip
//! block at its end is dropped (its batch was never acknowledged, so its
//! records come again). The same row reader serves the dedup sets
//! ([`read_records`]): the files themselves are the record of what was
//! written.
//!
//! Invariant: whatever [`SliceFile::sync`] returned `Ok` for is in the
//! file and decodes, whatever happens after.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::access::FileAccess;
use super::slice::{ExportFileName, FileName};
use crate::parse::{Format, LineKind, LineParser};
use crate::record::{write_csv_header_with, Field, Formulas, Record};

/// Rows buffered before they go to the compressor.
const ROW_BUFFER_BYTES: usize = 256 * 1024;

/// A row longer than this while reading a file back is dropped (a broken
/// file must not make recovery take unbounded memory).
const MAX_ROW_BYTES: usize = 16 << 20;

/// Where the bytes go: through gzip or straight to the file.
enum Sink {
    /// `.csv.gz`.
    Gzip(Box<GzEncoder<File>>),
    /// `.csv`.
    Plain(File),
}

impl Sink {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Sink::Gzip(g) => g.write_all(b),
            Sink::Plain(f) => f.write_all(b),
        }
    }

    /// Hands everything to the file: a gzip sync flush (the stream so far
    /// decodes) and the bytes written.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Gzip(g) => g.flush(),
            Sink::Plain(f) => f.flush(),
        }
    }

    fn file(&self) -> &File {
        match self {
            Sink::Gzip(g) => g.get_ref(),
            Sink::Plain(f) => f,
        }
    }

    /// Ends the stream (the gzip trailer) and gives the file back.
    fn finish(self) -> io::Result<File> {
        match self {
            Sink::Gzip(g) => (*g).finish(),
            Sink::Plain(f) => Ok(f),
        }
    }
}

/// How files are written.
#[derive(Clone, Debug, PartialEq)]
pub struct FileFormat {
    /// The columns, in order.
    pub columns: &'static [Field],
    /// A header row first.
    pub header: bool,
    /// The bridge's own columns after the export's (`[export]
    /// bridge_columns`: `ingestion_time`, `sync_delay_ms`, `host`).
    pub bridge_columns: bool,
    /// gzip level; `None` for plain CSV.
    pub gzip: Option<u32>,
    /// How cells a spreadsheet would run as a formula are written.
    pub formulas: Formulas,
    /// The files' mode and group, given as each is created.
    pub access: FileAccess,
}

/// A file of the export being written (a slice's, by default, or an
/// out-of-window file).
pub struct SliceFile<N = FileName> {
    /// Its name.
    name: N,
    /// The directory.
    dir: PathBuf,
    /// The stream into the `.partial` file.
    sink: Sink,
    /// Rows not yet handed to the stream.
    buf: Vec<u8>,
    /// How formula cells are written.
    formulas: Formulas,
    /// Rows written (header excluded), synced or not.
    rows: u64,
    /// Something was written since the last sync.
    dirty: bool,
    /// Rows carry the bridge's columns.
    bridge_columns: bool,
}

impl<N: ExportFileName> SliceFile<N> {
    /// Starts a new `.partial` file (an old one of that name is replaced)
    /// with its header row.
    pub fn create(dir: &Path, name: N, fmt: &FileFormat) -> io::Result<SliceFile<N>> {
        let path = dir.join(name.partial());
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
        fmt.access.apply(&file)?;
        Ok(Self::start(dir, name, fmt, file))
    }

    fn start(dir: &Path, name: N, fmt: &FileFormat, file: File) -> SliceFile<N> {
        let sink = match fmt.gzip {
            Some(level) => Sink::Gzip(Box::new(GzEncoder::new(file, Compression::new(level)))),
            None => Sink::Plain(file),
        };
        let mut buf = Vec::with_capacity(ROW_BUFFER_BYTES + 8192);
        if fmt.header {
            write_csv_header_with(fmt.columns, fmt.bridge_columns, &mut buf);
        }
        SliceFile {
            name,
            dir: dir.to_path_buf(),
            sink,
            buf,
            formulas: fmt.formulas,
            rows: 0,
            dirty: true,
            bridge_columns: fmt.bridge_columns,
        }
    }

    /// Opens a `.partial` file left behind: its complete rows are written
    /// into a new stream (with `fmt`'s columns) that replaces it. `limit`
    /// reads only that many bytes of it (what was last synced, after a
    /// failed write). Calls `each` with every record recovered.
    pub fn recover(
        dir: &Path,
        name: N,
        fmt: &FileFormat,
        limit: Option<u64>,
        mut each: impl FnMut(&Record<'_>),
    ) -> io::Result<SliceFile<N>> {
        let path = dir.join(name.partial());
        let rebuild = dir.join(format!("{}.rebuild", name.partial()));
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&rebuild)?;
        fmt.access.apply(&file)?;
        let mut new = Self::start(dir, name, fmt, file);
        read_records(&path, name.gzip(), limit, |r| {
            each(r);
            new.push(r, fmt.columns)
        })?;
        new.sync()?;
        fs::rename(&rebuild, &path)?;
        crate::rotating::sync_dir(&path);
        Ok(new)
    }

    /// The file's name.
    pub fn name(&self) -> N {
        self.name
    }

    /// Rows written so far (synced or not).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one record as a row.
    pub fn push(&mut self, r: &Record<'_>, columns: &[Field]) -> io::Result<()> {
        r.write_csv_row(columns, self.bridge_columns, self.formulas, &mut self.buf);
        self.rows += 1;
        self.dirty = true;
        if self.buf.len() >= ROW_BUFFER_BYTES {
            self.sink.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// True when rows were written since the last sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Makes every row written so far durable and decodable. Returns the
    /// file's size then (what a later recovery may trust).
    pub fn sync(&mut self) -> io::Result<u64> {
        if !self.buf.is_empty() {
            self.sink.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.sink.flush()?;
        let f = self.sink.file();
        f.sync_data()?;
        self.dirty = false;
        f.metadata().map(|m| m.len())
    }

    /// Ends the file and publishes it under its name. Returns the
    /// published path.
    pub fn publish(mut self) -> io::Result<PathBuf> {
        if !self.buf.is_empty() {
            self.sink.write_all(&self.buf)?;
            self.buf.clear();
        }
        let file = self.sink.finish()?;
        file.sync_all()?;
        drop(file);
        let from = self.dir.join(self.name.partial());
        let to = self.dir.join(self.name.published());
        fs::rename(&from, &to)?;
        crate::rotating::sync_dir(&to);
        Ok(to)
    }
}

/// Reads the records of an export file (published or partial, gzip or
/// not, with or without a header row, 35 or 39 columns): every complete
/// row up to `limit` bytes of the file (all when `None`), through the
/// `ecle-csv` reader. A row that does not parse, a torn row or a torn
/// gzip block at the end is skipped; the records before it are kept.
/// Returns the number of rows skipped.
pub fn read_records(path: &Path, gzip: bool, limit: Option<u64>, mut each: impl FnMut(&Record<'_>) -> io::Result<()>) -> io::Result<u64> {
    let file = File::open(path)?;
    let raw: Box<dyn Read> = match limit {
        Some(n) => Box::new(file.take(n)),
        None => Box::new(file),
    };
    let mut input: Box<dyn Read> =
        if gzip { Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, raw))) } else { raw };
    let mut parser = LineParser::new(Format::EcleCsv, MAX_ROW_BYTES);
    // A file with the bridge's columns is recovered with them.
    parser.keep_bridge_fields();
    let mut skipped = 0u64;
    let mut spare: Vec<Record<'static>> = Vec::new();
    let mut rows = RowSplitter::default();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A torn gzip stream (an unclean stop): what decoded is kept.
            Err(e) if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData) => break,
            Err(e) => return Err(e),
        };
        let mut res = Ok(());
        rows.feed(&chunk[..n], |row| {
            if res.is_err() {
                return;
            }
            let mut records: Vec<Record<'_>> = recycle(std::mem::take(&mut spare));
            match parser.parse_line(row, &mut records) {
                Ok(LineKind::Records(_)) => {
                    for r in &records {
                        if let Err(e) = each(r) {
                            res = Err(e);
                            break;
                        }
                    }
                }
                Ok(LineKind::Header | LineKind::Blank) => {}
                Err(_) => skipped += 1,
            }
            spare = recycle(records);
        });
        res?;
    }
    // A row without its terminator at the end: torn, not kept.
    skipped += u64::from(rows.has_partial());
    Ok(skipped)
}

/// An empty vector of another lifetime with the same allocation.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<Record<'_>>) -> Vec<Record<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Splits CSV bytes fed piece by piece into rows: a row ends at a line
/// feed outside quotes (RFC 4180: a quoted value may hold line breaks).
/// Rows are given without their `\n` (a `\r` before it stays; the parser
/// strips it).
#[derive(Default)]
pub struct RowSplitter {
    /// The row so far.
    row: Vec<u8>,
    /// Inside a quoted value.
    quoted: bool,
    /// The row grew past [`MAX_ROW_BYTES`]: dropped up to its end.
    overlong: bool,
}

impl RowSplitter {
    /// Feeds bytes; calls `row` for each row completed.
    pub fn feed(&mut self, mut b: &[u8], mut row: impl FnMut(&[u8])) {
        while !b.is_empty() {
            // Within a row only quotes and line feeds matter.
            let Some(i) = memchr::memchr2(b'"', b'\n', b) else {
                self.take(b);
                return;
            };
            self.take(&b[..i]);
            if b[i] == b'"' {
                self.quoted = !self.quoted;
                self.take(b"\"");
            } else if self.quoted {
                self.take(b"\n");
            } else {
                if !self.overlong {
                    row(&self.row);
                }
                self.row.clear();
                self.overlong = false;
            }
            b = &b[i + 1..];
        }
    }

    fn take(&mut self, b: &[u8]) {
        if self.row.len() + b.len() > MAX_ROW_BYTES {
            self.overlong = true;
            self.row.clear();
        }
        if !self.overlong {
            self.row.extend_from_slice(b);
        }
    }

    /// True when bytes of an unfinished row are held.
    pub fn has_partial(&self) -> bool {
        !self.row.is_empty() || self.overlong
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::ecle_csv::NATURAL;
    use crate::sink::export::slice::{Part, Slice};

    fn fmt(gzip: Option<u32>) -> FileFormat {
        FileFormat {
            columns: &NATURAL[..35],
            header: true,
            bridge_columns: false,
            gzip,
            formulas: Formulas::Neutralised,
            access: FileAccess::default(),
        }
    }

    fn name(gzip: bool) -> FileName {
        FileName { slice: Slice { start_ms: 1_764_410_400_000 }, part: Part::Main, gzip }
    }

    fn rec(uuid: &str, ua: &str) -> Record<'static> {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, uuid.to_string());
        r.set(Field::UserAgent, ua.to_string());
        r.set(Field::RequestId, format!("1764410400.5_k_{uuid}"));
        r.set_request_time_ms(1_764_410_400_500);
        r
    }

    fn uuids(path: &Path, gzip: bool, limit: Option<u64>) -> Vec<String> {
        let mut v = Vec::new();
        read_records(path, gzip, limit, |r| {
            v.push(r.get(Field::RequestUuid).to_string());
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn rows_split_outside_quotes_only() {
        let mut s = RowSplitter::default();
        let mut rows: Vec<String> = Vec::new();
        for piece in [&b"a,\"x\ny\",b\r\nc,\"q"[..], b"\"\"\"\r\n", b"tail"] {
            s.feed(piece, |r| rows.push(String::from_utf8(r.to_vec()).unwrap()));
        }
        assert_eq!(rows, vec!["a,\"x\ny\",b\r", "c,\"q\"\"\"\r"]);
        assert!(s.has_partial());
    }

    #[test]
    fn synced_rows_survive_a_torn_tail_and_recovery_rewrites_the_file() {
        for gzip in [Some(6), None] {
            let dir = tempfile::tempdir().unwrap();
            let (f, n) = (fmt(gzip), name(gzip.is_some()));
            let mut file = SliceFile::create(dir.path(), n, &f).unwrap();
            file.push(&rec("u1", "a, \"quoted\"\nua"), f.columns).unwrap();
            file.push(&rec("u2", "plain"), f.columns).unwrap();
            let synced = file.sync().unwrap();
            // Written after the sync, then the process dies: a torn tail.
            for i in 0..2000 {
                file.push(&rec(&format!("late{i}"), "x"), f.columns).unwrap();
            }
            file.sink.write_all(&file.buf).unwrap();
            drop(file);
            let partial = dir.path().join(n.partial());
            assert!(fs::metadata(&partial).unwrap().len() > synced);
            // Cut back to the last sync: exactly the synced rows.
            let mut seen = Vec::new();
            let mut again =
                SliceFile::recover(dir.path(), n, &f, Some(synced), |r| seen.push(r.get(Field::RequestUuid).to_string())).unwrap();
            assert_eq!(seen, ["u1", "u2"]);
            again.push(&rec("u3", "z"), f.columns).unwrap();
            let published = again.publish().unwrap();
            assert!(!partial.exists());
            assert_eq!(uuids(&published, gzip.is_some(), None), ["u1", "u2", "u3"]);
            // The published gzip is one ordinary member.
            if gzip.is_some() {
                let mut text = String::new();
                flate2::read::GzDecoder::new(File::open(&published).unwrap()).read_to_string(&mut text).unwrap();
                assert!(text.starts_with("request_host_name,src_ip,request_uuid,"), "{text}");
                assert!(text.contains("\"a, \"\"quoted\"\"\nua\""), "{text}");
            }
        }
    }

    #[test]
    fn an_unsynced_tail_read_without_a_limit_keeps_what_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let (f, n) = (fmt(Some(1)), name(true));
        let mut file = SliceFile::create(dir.path(), n, &f).unwrap();
        for i in 0..50 {
            file.push(&rec(&format!("u{i}"), "x"), f.columns).unwrap();
        }
        file.sync().unwrap();
        drop(file);
        // kill -9 right after the sync: everything synced is there.
        let mut seen = 0;
        let again = SliceFile::recover(dir.path(), n, &f, None, |_| seen += 1).unwrap();
        assert_eq!((seen, again.rows()), (50, 50));
    }
}
