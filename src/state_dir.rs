//! The state directory: every file the bridge keeps in `state_dir`, named
//! in one place, and the one way a small state file is replaced.
//!
//! [`StateDir::LAYOUT`] lists every file and directory the bridge keeps
//! there, with its owner and a sample name; the table in ARCHITECTURE.md
//! is checked against it (a test), `preflight` refuses a source glob that
//! matches any sample, and every path under `state_dir` is joined by a
//! [`StateDir`] method (a test finds any `state_dir.join(` elsewhere).
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

    /// The channel's replay log directory's name.
    pub const REPLAY: &'static str = "replay";

    /// Everything the bridge keeps in `state_dir`, as ARCHITECTURE.md
    /// lists it (a test keeps the two equal).
    pub const LAYOUT: &'static [Entry] = &[
        Entry::new(Self::LOCK, "state_lock", "one bridge per directory (flock + PID)", &[Self::LOCK]),
        Entry::new(Self::CHECKPOINTS, "checkpoint", "acknowledged offset per file", &[Self::CHECKPOINTS]),
        Entry::new(Self::CHANNEL_SEQ, "the channel sink", "next sequence number block", &[Self::CHANNEL_SEQ]),
        Entry::new(Self::CHANNEL_ADDR, "the channel sink", "the address the channel listens on", &[Self::CHANNEL_ADDR]),
        Entry::new(Self::CHANNEL_SLOTS, "the channel sink", "which replay log slot stands for which stream", &[Self::CHANNEL_SLOTS]),
        Entry::new("replay/", "the channel sink", "replay log segments", &["replay/00000000000000000001.seg"]),
        Entry::new(Self::STATUS_ADDR, "the status server", "the address `/status` listens on", &[Self::STATUS_ADDR]),
        Entry::new("rejects.ndjson (+ .1…)", "rejects", "malformed lines", &[Self::REJECTS, "rejects.ndjson.1"]),
        Entry::new("dead-letter.ndjson (+ .1…)", "the upstream sink", "refused records", &[Self::DEAD_LETTER, "dead-letter.ndjson.1"]),
        Entry::new(
            "upstream-spool/<format>/",
            "the upstream sink",
            "undelivered batches",
            &["upstream-spool/ndjson/00000000000000000001.spool"],
        ),
        Entry::new("kafka-spool/", "the Kafka sink", "undelivered messages", &["kafka-spool/00000000000000000001.spool"]),
        Entry::new(
            "kafka-dead-letter.ndjson (+ .1…)",
            "the Kafka sink",
            "refused messages",
            &[Self::KAFKA_DEAD_LETTER, "kafka-dead-letter.ndjson.1"],
        ),
        Entry::new(
            "kafka-offsets-<group_id>.json",
            "the Kafka source",
            "acknowledged position per partition",
            &["kafka-offsets-group.json"],
        ),
        Entry::new(
            "otlp-spool/<format>/",
            "the OpenTelemetry sink",
            "undelivered log records",
            &["otlp-spool/protobuf/00000000000000000001.spool"],
        ),
        Entry::new(
            "otlp-dead-letter.ndjson (+ .1…)",
            "the OpenTelemetry sink",
            "refused log records",
            &[Self::OTLP_DEAD_LETTER, "otlp-dead-letter.ndjson.1"],
        ),
        Entry::new(".<name>.tmp", "write_atomic", "a replacement being written (renamed over `<name>`)", &[".checkpoints.json.tmp"]),
        Entry::new(
            "<name>.damaged-<time>",
            "reset-state",
            "a damaged state file kept aside",
            &["checkpoints.json.damaged-20260101T000000Z"],
        ),
    ];

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

    /// `<state_dir>/channel-slots.json`: which replay log slot stands for
    /// which stream.
    pub fn channel_slots(&self) -> PathBuf {
        self.root.join(Self::CHANNEL_SLOTS)
    }

    /// `<state_dir>/replay`: the channel's replay log.
    pub fn replay(&self) -> PathBuf {
        self.root.join(Self::REPLAY)
    }

    /// `<path>.damaged-<stamp>`: where `reset-state` keeps a damaged
    /// state file aside (`path` one of this directory's files).
    pub fn damaged(path: &Path, stamp: &str) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".damaged-{stamp}"));
        PathBuf::from(name)
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

/// One row of [`StateDir::LAYOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The name as the docs write it (`<...>` stands for a part that
    /// varies, a trailing `/` for a directory).
    pub name: &'static str,
    /// What writes it.
    pub owner: &'static str,
    /// What it holds.
    pub what: &'static str,
    /// Names of files it can be, relative to `state_dir`.
    pub samples: &'static [&'static str],
}

impl Entry {
    const fn new(name: &'static str, owner: &'static str, what: &'static str, samples: &'static [&'static str]) -> Entry {
        Entry { name, owner, what, samples }
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

    /// Whether `rel` (a path under `state_dir`) is what `entry` names:
    /// `<...>` matches one name part, a trailing `/` a directory and
    /// what is in it, `(+ .1…)` the rotated names.
    fn is_entry(entry: &Entry, rel: &str) -> bool {
        let name = entry.name.trim_end_matches(" (+ .1…)");
        let (pattern, dir) = match name.strip_suffix('/') {
            Some(d) => (d, true),
            None => (name, false),
        };
        let rel_parts: Vec<&str> = rel.split('/').collect();
        let pat_parts: Vec<&str> = pattern.split('/').collect();
        if rel_parts.len() < pat_parts.len() || (!dir && rel_parts.len() != pat_parts.len()) {
            return false;
        }
        let part = |p: &str, r: &str| -> bool {
            if p == r || (entry.name.ends_with(" (+ .1…)") && r.strip_prefix(p).is_some_and(|t| t.starts_with('.'))) {
                return true;
            }
            // The literal pieces between `<...>`, in order, each `<...>`
            // standing for at least one character.
            let mut pieces = Vec::new();
            let mut rest = p;
            while let (Some(a), Some(b)) = (rest.find('<'), rest.find('>')) {
                pieces.push(&rest[..a]);
                rest = &rest[b + 1..];
            }
            if pieces.is_empty() {
                return false;
            }
            pieces.push(rest);
            let mut at = 0;
            for (i, piece) in pieces.iter().enumerate() {
                let found = if i == 0 {
                    r.starts_with(piece).then_some(0)
                } else if i == pieces.len() - 1 {
                    (r.len() >= at + 1 + piece.len() && r.ends_with(piece)).then(|| r.len() - piece.len())
                } else {
                    r.get(at + 1..).and_then(|t| t.find(piece)).map(|x| x + at + 1)
                };
                match found {
                    Some(x) => at = x + piece.len(),
                    None => return false,
                }
            }
            true
        };
        pat_parts.iter().zip(&rel_parts).all(|(p, r)| part(p, r))
    }

    /// What each method names, and each sample, is one row of LAYOUT.
    #[test]
    fn layout_lists_every_path_the_methods_name() {
        let s = StateDir::new("/s");
        let rel = |p: PathBuf| p.strip_prefix("/s").unwrap().to_string_lossy().into_owned();
        let named = [
            s.lock(),
            s.checkpoints(),
            s.channel_seq(),
            s.channel_addr(),
            s.channel_slots(),
            s.replay().join("00000000000000000007.seg"),
            s.status_addr(),
            s.rejects(),
            s.dead_letter(),
            s.upstream_spool("ecls").join("1.spool"),
            s.kafka_spool().join("1.spool"),
            s.kafka_dead_letter(),
            s.kafka_offsets("hub a"),
            s.otlp_spool("json").join("1.spool"),
            s.otlp_dead_letter(),
            StateDir::damaged(&s.channel_seq(), "20260101T000000Z"),
        ];
        for p in named {
            let r = rel(p);
            assert_eq!(StateDir::LAYOUT.iter().filter(|e| is_entry(e, &r)).count(), 1, "{r} is one row of StateDir::LAYOUT");
        }
        for e in StateDir::LAYOUT {
            assert!(!e.samples.is_empty(), "{}", e.name);
            for sample in e.samples {
                assert!(is_entry(e, sample), "{sample} is a name of {}", e.name);
            }
        }
    }

    /// ARCHITECTURE.md's `state_dir` table is LAYOUT, row by row.
    #[test]
    fn the_documented_layout_is_state_dirs() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap();
        let start = doc.find("| in `state_dir` |").expect("ARCHITECTURE.md has the `| in `state_dir` |` table");
        let rows: Vec<(String, String, String)> = doc[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
                let unquote = |c: &str| c.trim_matches('`').replace("` (+ `.1`…)", " (+ .1…)");
                (unquote(cells[0]), cells[1].to_string(), cells[2].to_string())
            })
            .collect();
        let want: Vec<(String, String, String)> =
            StateDir::LAYOUT.iter().map(|e| (e.name.to_string(), doc_owner(e.owner), e.what.to_string())).collect();
        assert_eq!(rows, want, "ARCHITECTURE.md's state_dir table and StateDir::LAYOUT differ");
    }

    /// An owner as the docs write it: a module name in backticks.
    fn doc_owner(owner: &str) -> String {
        if owner.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '-') {
            format!("`{owner}`")
        } else {
            owner.to_string()
        }
    }

    /// Nothing else joins a path under `state_dir` by hand.
    #[test]
    fn every_path_under_state_dir_is_joined_here() {
        fn visit(dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    visit(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("state_dir.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, line) in text.lines().enumerate() {
                        if line.contains("state_dir.join(") && !line.trim_start().starts_with("//") {
                            out.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        visit(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut found);
        assert!(found.is_empty(), "join paths under state_dir through StateDir:\n{}", found.join("\n"));
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
