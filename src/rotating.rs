//! Append-only files of JSON lines bounded on disk: the file is rotated by
//! size and only the newest `keep_files` rotated files are kept (`<path>.1`
//! the newest, then `.2`, ...). The rejects file and the upstream
//! dead-letter file are written through [`RotatingFile`]; the archive
//! (`sink::file`) shares [`shift`] for its own rotation.
//!
//! Why: what goes into these files is driven by input (a small `.gz` of
//! junk lines, a collector that refuses every batch), so without a bound
//! one bad peer fills the disk. Invariants: a line never straddles two
//! files (a line longer than `rotate_bytes` gets a file of its own); the
//! disk used is at most `(keep_files + 1) * rotate_bytes` plus one line per
//! file. Blocking I/O: call from the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How a [`RotatingFile`] is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a write would take the file past this size.
    pub rotate_bytes: u64,
    /// Rotated files kept; older ones are deleted (0: the file is started
    /// again empty).
    pub keep_files: usize,
}

/// `<path>.<n>`.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Moves `path` to `<path>.1` (shifting `.1` to `.2` and so on, deleting
/// what would pass `.keep_files`; with `keep_files` 0 `path` is deleted).
/// Returns the bytes deleted. The caller reopens `path` and syncs the
/// directory.
pub fn shift(path: &Path, keep_files: usize) -> io::Result<u64> {
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if keep_files == 0 {
        let n = size(path);
        fs::remove_file(path)?;
        return Ok(n);
    }
    let oldest = rotated_path(path, keep_files);
    let deleted = size(&oldest);
    match fs::remove_file(&oldest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for n in (1..keep_files).rev() {
        let from = rotated_path(path, n);
        if from.exists() {
            fs::rename(&from, rotated_path(path, n + 1))?;
        }
    }
    fs::rename(path, rotated_path(path, 1))?;
    Ok(deleted)
}

/// Fsyncs the directory holding `path` (after a rename), best effort.
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// What an append did besides writing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The file was rotated first.
    pub rotated: bool,
    /// Bytes of the oldest rotated file deleted to stay within the bound.
    pub deleted_bytes: u64,
}

/// An append-only file rotated by size (see the module documentation).
/// Opened on the first write, so nothing is created until there is
/// something to keep.
pub struct RotatingFile {
    /// The current file's path.
    path: PathBuf,
    /// The open file and its size.
    file: Option<(File, u64)>,
}

impl RotatingFile {
    /// A file at `path` (not opened yet).
    pub fn new(path: PathBuf) -> RotatingFile {
        RotatingFile { path, file: None }
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines (`lines` ends with a newline), rotating whenever
    /// the next line would take the file past `rotation.rotate_bytes` (a
    /// line longer than that gets a file of its own).
    pub fn append(&mut self, mut lines: &[u8], rotation: Rotation) -> io::Result<Appended> {
        let mut done = Appended::default();
        let (mut file, mut size) = match self.file.take() {
            Some(f) => f,
            None => self.open()?,
        };
        while !lines.is_empty() {
            let room = rotation.rotate_bytes.saturating_sub(size);
            // The whole lines that fit; at least one line into an empty file.
            let take = if lines.len() as u64 <= room {
                lines.len()
            } else {
                match memchr::memrchr(b'\n', &lines[..room as usize]) {
                    Some(i) => i + 1,
                    None if size == 0 => memchr::memchr(b'\n', lines).map_or(lines.len(), |i| i + 1),
                    None => 0,
                }
            };
            if take == 0 {
                drop(file);
                done.deleted_bytes += shift(&self.path, rotation.keep_files)?;
                done.rotated = true;
                (file, size) = self.open()?;
                sync_dir(&self.path);
                continue;
            }
            if let Err(e) = file.write_all(&lines[..take]) {
                // What was written counts (a short write).
                let written = file.metadata().map(|m| m.len()).unwrap_or(size);
                self.file = Some((file, written));
                return Err(e);
            }
            size += take as u64;
            lines = &lines[take..];
        }
        self.file = Some((file, size));
        Ok(done)
    }

    /// Flushes what was appended to disk (fdatasync).
    pub fn sync(&mut self) -> io::Result<()> {
        match &self.file {
            Some((f, _)) => f.sync_data(),
            None => Ok(()),
        }
    }

    fn open(&self) -> io::Result<(File, u64)> {
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir)?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(path: &Path, n: usize) -> Vec<u64> {
        (0..=n + 1)
            .map(|i| if i == 0 { path.to_path_buf() } else { rotated_path(path, i) })
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect()
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/r.ndjson");
        let mut f = RotatingFile::new(path.clone());
        let rot = Rotation { rotate_bytes: 100, keep_files: 2 };
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        let mut rotations = 0;
        let mut deleted = 0;
        for _ in 0..20 {
            let a = f.append(&line, rot).unwrap();
            rotations += a.rotated as usize;
            deleted += a.deleted_bytes;
        }
        // 2 lines (80 bytes) per file: 10 files written, 9 rotations.
        assert_eq!(rotations, 9);
        assert_eq!(sizes(&path, 2), vec![80, 80, 80, 0]);
        assert_eq!(deleted, 80 * 7);
        // A line longer than rotate_bytes gets a file of its own.
        let long = [b'y'; 150].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        assert!(f.append(&long, rot).unwrap().rotated);
        assert!(f.append(&line, rot).unwrap().rotated);
        assert_eq!(sizes(&path, 2), vec![40, 151, 80, 0]);
        // Many lines in one append are split between files at line ends.
        let many: Vec<u8> = line.iter().copied().cycle().take(40 * 7).collect();
        let a = f.append(&many, rot).unwrap();
        assert!(a.rotated);
        assert_eq!(sizes(&path, 2), vec![80, 80, 80, 0]);
    }

    #[test]
    fn keep_zero_starts_the_file_again_and_nothing_is_created_before_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ndjson");
        let mut f = RotatingFile::new(path.clone());
        f.sync().unwrap();
        assert!(!path.exists());
        let rot = Rotation { rotate_bytes: 10, keep_files: 0 };
        f.append(b"12345678\n", rot).unwrap();
        let a = f.append(b"abc\n", rot).unwrap();
        assert_eq!(a, Appended { rotated: true, deleted_bytes: 9 });
        assert_eq!(fs::read_to_string(&path).unwrap(), "abc\n");
        assert!(!rotated_path(&path, 1).exists());
    }

    #[test]
    fn an_existing_file_counts_towards_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ndjson");
        fs::write(&path, "0123456789\n").unwrap();
        let mut f = RotatingFile::new(path.clone());
        assert!(f.append(b"x\n", Rotation { rotate_bytes: 12, keep_files: 1 }).unwrap().rotated);
        assert_eq!(fs::read_to_string(rotated_path(&path, 1)).unwrap(), "0123456789\n");
    }
}
