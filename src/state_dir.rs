//! The state directory: every file the bridge keeps in `state_dir`, named
//! in one place, and the one way a small state file is replaced.
//!
//! Layout (all relative to `state_dir`):
//!
//! | name | owner | what |
//! |---|---|---|
//! | `lock` | [`crate::state_lock`] | one bridge per directory (flock + PID) |
//! | `checkpoints.json` | [`crate::checkpoint`] | acknowledged offset per file |
//! | `channel.seq` | the channel sink | next sequence number block |
//! | `channel.addr` | the channel sink | the address the channel listens on |
//! | `channel-slots.json` | the channel sink | which replay log slot stands for which stream |
//! | `status.addr` | the status server | the address `/status` listens on |
//! | `rejects.ndjson` (+ `.1`…) | [`crate::rejects`] | malformed lines |
//! | `dead-letter.ndjson` (+ `.1`…) | the upstream sink | refused records |
//! | `upstream-spool/<format>/` | the upstream sink | undelivered batches |
//! | `kafka-spool/` | the Kafka sink | undelivered messages |
//! | `kafka-dead-letter.ndjson` (+ `.1`…) | the Kafka sink | refused messages |
//! | `kafka-offsets-<group_id>.json` | the Kafka source | acknowledged position per partition |
//! | `otlp-spool/<format>/` | the OpenTelemetry sink | undelivered log records |
//! | `otlp-dead-letter.ndjson` (+ `.1`…) | the OpenTelemetry sink | refused log records |
//!
//! Invariant: a file another process or a restart reads (`checkpoints.json`,
//! `channel.seq`, `channel-slots.json`, the `*.addr` files) is only ever replaced through
//! [`write_atomic`]: write a temp file beside it, fsync it, rename it over
//! the old one, fsync the directory. A reader sees the old or the new
//! content, never half of one, and after a power loss the new content is
//! there once `write_atomic` returned (the directory fsync makes the rename
//! itself durable: without it `channel.seq` could go back and sequence
//! numbers promised monotonic could repeat).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The names of the files in a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The lock file's name.
    pub const LOCK: &'static str = "lock";
    /// The checkpoint file's name.
    pub const CHECKPOINTS: &'static str = "checkpoints.json";
    /// The channel's sequence file's name.
    pub const CHANNEL_SEQ: &'static str = "channel.seq";
    /// The channel's address file's name.
    pub const CHANNEL_ADDR: &'static str = "channel.addr";
    /// The channel's slot file's name (which replay log slot stands for
    /// which stream).
    pub const CHANNEL_SLOTS: &'static str = "channel-slots.json";
    /// The status server's address file's name.
    pub const STATUS_ADDR: &'static str = "status.addr";
    /// The rejects file's name.
    pub const REJECTS: &'static str = "rejects.ndjson";
    /// The upstream sink's default dead-letter file's name.
    pub const DEAD_LETTER: &'static str = "dead-letter.ndjson";
    /// The upstream sink's spool directory's name.
    pub const UPSTREAM_SPOOL: &'static str = "upstream-spool";
    /// The Kafka sink's spool directory's name.
    pub const KAFKA_SPOOL: &'static str = "kafka-spool";
    /// The Kafka sink's default dead-letter file's name.
    pub const KAFKA_DEAD_LETTER: &'static str = "kafka-dead-letter.ndjson";
    /// The OpenTelemetry sink's spool directory's name.
    pub const OTLP_SPOOL: &'static str = "otlp-spool";
    /// The OpenTelemetry sink's default dead-letter file's name.
    pub const OTLP_DEAD_LETTER: &'static str = "otlp-dead-letter.ndjson";

    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<state_dir>/lock`.
    pub fn lock(&self) -> PathBuf {
        self.root.join(Self::LOCK)
    }

    /// `<state_dir>/checkpoints.json`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(Self::CHECKPOINTS)
    }

    /// `<state_dir>/channel.seq`.
    pub fn channel_seq(&self) -> PathBuf {
        self.root.join(Self::CHANNEL_SEQ)
    }

    /// `<state_dir>/channel.addr`.
    pub fn channel_addr(&self) -> PathBuf {
        self.root.join(Self::CHANNEL_ADDR)
    }

    /// `<state_dir>/status.addr`.
    pub fn status_addr(&self) -> PathBuf {
        self.root.join(Self::STATUS_ADDR)
    }

    /// `<state_dir>/rejects.ndjson`.
    pub fn rejects(&self) -> PathBuf {
        self.root.join(Self::REJECTS)
    }

    /// `<state_dir>/dead-letter.ndjson` (when `upstream.dead_letter_file`
    /// is not set).
    pub fn dead_letter(&self) -> PathBuf {
        self.root.join(Self::DEAD_LETTER)
    }

    /// `<state_dir>/upstream-spool`, holding one directory per format.
    pub fn upstream_spool_root(&self) -> PathBuf {
        self.root.join(Self::UPSTREAM_SPOOL)
    }

    /// `<state_dir>/kafka-dead-letter.ndjson` (when
    /// `kafka.dead_letter_file` is not set).
    pub fn kafka_dead_letter(&self) -> PathBuf {
        self.root.join(Self::KAFKA_DEAD_LETTER)
    }

    /// `<state_dir>/kafka-spool`: the Kafka sink's spool (encoded
    /// messages, so one directory whatever `kafka.format`).
    pub fn kafka_spool(&self) -> PathBuf {
        self.root.join(Self::KAFKA_SPOOL)
    }

    /// `<state_dir>/kafka-offsets-<group_id>.json`: a Kafka source's
    /// positions. The group id is the operator's text: anything but
    /// `[A-Za-z0-9._-]` becomes `_` in the name.
    pub fn kafka_offsets(&self, group_id: &str) -> PathBuf {
        let safe: String = group_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        self.root.join(format!("kafka-offsets-{safe}.json"))
    }

    /// `<state_dir>/otlp-spool/<format>`: the OpenTelemetry sink's spool
    /// (its units are log records in the wire format, so one directory
    /// per format).
    pub fn otlp_spool(&self, format: &str) -> PathBuf {
        self.root.join(Self::OTLP_SPOOL).join(format)
    }

    /// `<state_dir>/otlp-dead-letter.ndjson` (when `otlp.dead_letter_file`
    /// is not set).
    pub fn otlp_dead_letter(&self) -> PathBuf {
        self.root.join(Self::OTLP_DEAD_LETTER)
    }

    /// `<state_dir>/upstream-spool/<format>`.
    pub fn upstream_spool(&self, format: &str) -> PathBuf {
        self.upstream_spool_root().join(format)
    }
}

/// Replaces `path` with `bytes` durably and atomically: a temp file beside
/// it (`.<name>.tmp`), fsync, rename over `path`, fsync of the directory.
/// Blocking: call it from a blocking thread (or [`write_atomic_async`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content written in pieces: `write` fills the temp
/// file, the rest is the same.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    replace(path, true, write)
}

/// [`write_atomic`] without the fsync of the directory: the new content is
/// on disk before it replaces the old one, and a crash of the process
/// leaves the one or the other, but after a power loss the previous file
/// may be the one found. For a document that only moves forward and is
/// rewritten often, where finding the previous one is safe: checkpoints,
/// whose older copy means records read again, never records lost. Halves
/// the fsyncs of each rewrite.
pub fn write_atomic_lazy_dir(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, false, |f| f.write_all(bytes))
}

fn replace(path: &Path, sync_dir: bool, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if sync_dir {
            sync_dir_of(path)?;
        }
        Ok(())
    })();
    if res.is_err() {
        // A half-written temp file is never read; remove it so a full disk
        // does not keep it around.
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// [`write_atomic`] from a blocking thread, for async callers.
pub async fn write_atomic_async(path: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await.map_err(io::Error::other)?
}

/// Fsyncs the directory holding `path`, so that a rename or a new file in
/// it survives a power loss.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// The temp file [`write_atomic`] writes before the rename: hidden, in the
/// same directory (a rename across file systems is not atomic).
fn temp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_file_under_the_root() {
        let s = StateDir::new("/var/lib/calllog-bridge");
        assert_eq!(s.checkpoints(), Path::new("/var/lib/calllog-bridge/checkpoints.json"));
        assert_eq!(s.channel_seq(), Path::new("/var/lib/calllog-bridge/channel.seq"));
        assert_eq!(s.upstream_spool("ndjson"), Path::new("/var/lib/calllog-bridge/upstream-spool/ndjson"));
        assert_eq!(s.lock(), Path::new("/var/lib/calllog-bridge/lock"));
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("channel.seq");
        write_atomic(&p, b"1\n").unwrap();
        write_atomic(&p, b"4097\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"4097\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("channel.seq")]);
    }

    #[test]
    fn write_atomic_failure_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoints.json");
        write_atomic(&p, b"old").unwrap();
        // The rename target is a non-empty directory: the rename fails.
        let q = dir.path().join("blocked");
        std::fs::create_dir_all(q.join("x")).unwrap();
        assert!(write_atomic(&q, b"new").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!dir.path().join(".blocked.tmp").exists());
    }

    #[tokio::test]
    async fn async_variant_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.addr");
        write_atomic_async(p.clone(), b"127.0.0.1:1\n".to_vec()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "127.0.0.1:1\n");
    }
}
