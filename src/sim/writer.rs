//! The `simulate` loop: writes calls into a directory at a rate, rotating
//! (and gzipping) files the way Local Edition does.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::parse::Format;
use crate::time;

use super::*;
/// How [`run`] writes.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// `le6`, `le5-csv` or `le-json`.
    pub format: Format,
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
    /// Lines per second.
    pub rate: f64,
    /// Seconds to run; 0 = until `stop` is set.
    pub duration_secs: f64,
    /// Rotate when the live file would grow past this many bytes.
    pub rotate_bytes: Option<u64>,
    /// gzip rotated files (`access.log.1.gz`).
    pub gzip_rotated: bool,
    /// `request_time` = now minus this.
    pub lag_ms: i64,
    /// Local Edition writes a line this long after its call ended (the
    /// LE 6 write time); the rest of `lag_ms` is the sync's.
    pub write_delay_ms: i64,
    /// Random seed.
    pub seed: u64,
    /// Write `rate × duration` lines as fast as possible.
    pub burst: bool,
    /// Rotated files kept (`.1` ... `.keep`); older ones are deleted.
    pub keep_rotated: usize,
}

impl SimOptions {
    /// Options with the defaults of the command line.
    pub fn new(format: Format, dir: impl Into<PathBuf>) -> SimOptions {
        SimOptions {
            format,
            dir: dir.into(),
            rate: 100.0,
            duration_secs: 10.0,
            rotate_bytes: None,
            gzip_rotated: false,
            lag_ms: 0,
            write_delay_ms: 0,
            seed: 1,
            burst: false,
            keep_rotated: 10,
        }
    }
}

/// What [`run`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Call lines written in total (CSV header rows not counted).
    pub lines: u64,
    /// Rotations performed.
    pub rotations: u64,
    /// Lines in each file still on disk at the end, live file first, then
    /// `.1`, `.2`, ... (with `.gz` when compressed).
    pub files: Vec<(PathBuf, u64)>,
    /// Lines in rotated files deleted because more than `keep_rotated`
    /// existed.
    pub lines_in_deleted_files: u64,
}

/// The live file name for a format (`access.log`, `access.csv`,
/// `access_worker0.log`), as Local Edition names them.
pub fn live_file_name(format: Format) -> Result<&'static str, SimError> {
    match format {
        Format::Le6 => Ok("access.log"),
        Format::Le5Csv => Ok("access.csv"),
        Format::LeJson => Ok("access_worker0.log"),
        other => Err(SimError::Format(other)),
    }
}

/// Why [`run`] could not write.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Only Local Edition's own formats are simulated as files.
    #[error("simulate writes le6, le5-csv or le-json, not {0}")]
    Format(Format),
    /// `--rate` must be positive and finite.
    #[error("rate must be a positive number of lines per second, got {0}")]
    Rate(f64),
    /// `--burst` needs a bound.
    #[error("--burst needs a --duration above 0")]
    BurstForever,
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SimError + '_ {
    move |source| SimError::Io { path: path.to_path_buf(), source }
}

/// The live file, its rotation, and the line counts per file.
pub(super) struct Output {
    /// The live file's path.
    live: PathBuf,
    /// Header written at the start of each file (CSV).
    header: Option<&'static str>,
    /// Open handle on the live file.
    file: File,
    /// Bytes in the live file.
    size: u64,
    /// Lines in the live file.
    lines: u64,
    /// Lines per rotated file, `.1` first.
    rotated: VecDeque<u64>,
    /// Rotate past this size.
    rotate_bytes: Option<u64>,
    /// Compress rotated files.
    gzip: bool,
    /// Rotated files kept.
    keep: usize,
    /// Rotations so far.
    rotations: u64,
    /// Lines in rotated files that were deleted.
    deleted_lines: u64,
    /// Whole lines waiting to be written in one `write`.
    pending: Vec<u8>,
}

impl Output {
    pub(super) fn open(live: PathBuf, header: Option<&'static str>, opts: &SimOptions) -> Result<Output, SimError> {
        let (file, size) = Self::create(&live, header)?;
        Ok(Output {
            live,
            header,
            file,
            size,
            lines: 0,
            rotated: VecDeque::new(),
            rotate_bytes: opts.rotate_bytes,
            gzip: opts.gzip_rotated,
            keep: opts.keep_rotated.max(1),
            rotations: 0,
            deleted_lines: 0,
            pending: Vec::with_capacity(1 << 16),
        })
    }

    /// Opens the live file for appending (it may exist from an earlier
    /// run); a new or empty CSV file gets the header.
    pub(super) fn create(live: &Path, header: Option<&str>) -> Result<(File, u64), SimError> {
        let mut file = OpenOptions::new().create(true).append(true).open(live).map_err(io_err(live))?;
        let mut size = file.metadata().map_err(io_err(live))?.len();
        if let (Some(h), 0) = (header, size) {
            file.write_all(format!("{h}\n").as_bytes()).map_err(io_err(live))?;
            size = h.len() as u64 + 1;
        }
        Ok((file, size))
    }

    pub(super) fn rotated_name(&self, n: usize) -> PathBuf {
        let mut s = self.live.clone().into_os_string();
        s.push(format!(".{n}"));
        if self.gzip {
            s.push(".gz");
        }
        PathBuf::from(s)
    }

    /// Adds one line (no terminator), rotating first if it would not fit.
    pub(super) fn push_line(&mut self, line: &str) -> Result<(), SimError> {
        let len = line.len() as u64 + 1;
        if let Some(max) = self.rotate_bytes {
            let header_len = self.header.map_or(0, |h| h.len() as u64 + 1);
            if self.size + len > max && self.size > header_len {
                self.rotate()?;
            }
        }
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        self.size += len;
        self.lines += 1;
        if self.pending.len() >= 1 << 16 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending whole lines in one call.
    pub(super) fn flush(&mut self) -> Result<(), SimError> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending).map_err(io_err(&self.live))?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Size-based rotation as Local Edition does it: shift `.N` → `.N+1`
    /// (dropping the oldest), rename the live file to `.1`, start a new live
    /// file; with gzip, compress `.1` to a temporary name, rename it to
    /// `.1.gz` and remove the uncompressed file.
    pub(super) fn rotate(&mut self) -> Result<(), SimError> {
        self.flush()?;
        let oldest = self.rotated_name(self.keep);
        if self.rotated.len() >= self.keep {
            fs::remove_file(&oldest).or_else(ignore_not_found).map_err(io_err(&oldest))?;
            self.deleted_lines += self.rotated.pop_back().unwrap_or(0);
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated_name(n);
            if from.exists() {
                let to = self.rotated_name(n + 1);
                fs::rename(&from, &to).map_err(io_err(&from))?;
            }
        }
        let mut plain = self.live.clone().into_os_string();
        plain.push(".1");
        let plain = PathBuf::from(plain);
        fs::rename(&self.live, &plain).map_err(io_err(&self.live))?;
        let (file, size) = Self::create(&self.live, self.header)?;
        self.file = file;
        self.size = size;
        self.rotated.push_front(self.lines);
        self.lines = 0;
        self.rotations += 1;
        if self.gzip {
            let gz = self.rotated_name(1);
            let mut tmp = gz.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            gzip_file(&plain, &tmp)?;
            fs::rename(&tmp, &gz).map_err(io_err(&tmp))?;
            fs::remove_file(&plain).map_err(io_err(&plain))?;
        }
        Ok(())
    }

    pub(super) fn summary(&self, lines: u64) -> SimSummary {
        let mut files = vec![(self.live.clone(), self.lines)];
        files.extend(self.rotated.iter().enumerate().map(|(i, n)| (self.rotated_name(i + 1), *n)));
        SimSummary { lines, rotations: self.rotations, files, lines_in_deleted_files: self.deleted_lines }
    }
}

pub(super) fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

pub(super) fn gzip_file(from: &Path, to: &Path) -> Result<(), SimError> {
    let mut input = File::open(from).map_err(io_err(from))?;
    let out = File::create(to).map_err(io_err(to))?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    io::copy(&mut input, &mut enc).map_err(io_err(to))?;
    let out = enc.finish().map_err(io_err(to))?;
    out.sync_all().map_err(io_err(to))?;
    Ok(())
}

/// Pacing granularity: lines are written in small bursts this often, each
/// burst flushed so a tailer sees whole lines.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// Writes simulated traffic into `opts.dir` until `opts.duration_secs` has
/// passed (or, with `burst`, `rate × duration` lines are written) or `stop`
/// is set. Blocking: run it on its own thread.
pub fn run(opts: &SimOptions, stop: &AtomicBool) -> Result<SimSummary, SimError> {
    let name = live_file_name(opts.format)?;
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err(SimError::Rate(opts.rate));
    }
    if opts.burst && opts.duration_secs <= 0.0 {
        return Err(SimError::BurstForever);
    }
    fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
    let header = (opts.format == Format::Le5Csv).then(le5_csv_header);
    let mut out = Output::open(opts.dir.join(name), header, opts)?;
    let mut gen = Generator::new(opts.seed);
    gen.set_write_delay_ms(opts.write_delay_ms);
    let bounded = opts.duration_secs > 0.0;
    let total = if bounded { (opts.rate * opts.duration_secs).round() as u64 } else { u64::MAX };
    let mut written = 0u64;
    let start = Instant::now();
    let mut next_tick = start;
    while written < total && !stop.load(Ordering::Relaxed) {
        let due = if opts.burst {
            total
        } else {
            let elapsed = start.elapsed().as_secs_f64();
            if bounded && elapsed >= opts.duration_secs {
                total
            } else {
                ((opts.rate * elapsed) as u64 + 1).min(total)
            }
        };
        while written < due {
            let line = gen.next_call(time::now_ms(), opts.lag_ms).render(opts.format);
            out.push_line(&line)?;
            written += 1;
            if opts.burst && written.is_multiple_of(4096) && stop.load(Ordering::Relaxed) {
                break;
            }
        }
        out.flush()?;
        if !opts.burst && written < total {
            next_tick += TICK;
            let now = Instant::now();
            if next_tick > now {
                std::thread::sleep(next_tick - now);
            } else {
                next_tick = now;
            }
        }
    }
    out.flush()?;
    Ok(out.summary(written))
}
