//! The tailer in process against an in-memory model (in the style of
//! Vector's file-watcher tests): seeded random sequences of write (whole
//! lines, or ending in a partial line), rename-rotate, copytruncate,
//! truncate in place, delete, pause, read (wait until everything expected
//! came out) and graceful restart, run against real files in a scratch
//! directory, with a [`Tailer`] whose only sink is a test queue that
//! acknowledges every batch.
//!
//! Time is tokio's paused clock: the tailer polls (`poll_interval`), and
//! the partial-line grace, the idle close ([`reader::IDLE_CLOSE`]) and the
//! rescans run on virtual time, so a sequence that spans minutes runs in
//! milliseconds (blocking file work holds the clock: tokio does not
//! auto-advance while a `spawn_blocking` task runs).
//!
//! The model: every line written is expected exactly once, except lines a
//! step may legitimately lose (in a file deleted or truncated before they
//! were read; a partial last line of a rotated file the tailer never knew
//! under its old name), which may come out at most once, and the lines of
//! a file replaced in place by an older, shorter copy of itself, which are
//! read again (at least once, at most once more per replacement). Nothing
//! else may come out, and nothing else twice.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::reader::{self, ReaderShared};
use super::Tailer;
use crate::checkpoint::Checkpointer;
use crate::enrich::Enricher;
use crate::parse::Format;
use crate::pipeline::{Batch, Fanout};
use crate::record::Field;
use crate::settings::{ReadFrom, SourceConfig};
use crate::telemetry::Telemetry;

/// How often the tailer polls (virtual time).
const POLL: Duration = Duration::from_millis(100);
/// The partial-line grace (virtual time).
const GRACE: Duration = Duration::from_millis(300);
/// How long a read step waits for the expected records (virtual time).
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// One le-json line for `uuid`, without its newline.
fn line(uuid: &str) -> String {
    format!("{{\"request_uuid\":\"{uuid}\",\"request_time\":\"2024-01-01T00:00:00Z\",\"status\":\"200\"}}")
}

/// What the model knows of one file on disk.
#[derive(Debug, Default, Clone)]
struct FileModel {
    /// Uuids of its complete lines.
    lines: Vec<String>,
    /// Its partial last line (no newline yet).
    partial: Option<Partial>,
    /// A read step ran while it was `access.log` with a complete line: the
    /// tailer knows its inode, so it sees the rotation (and emits the
    /// partial last line after the grace).
    known: bool,
}

/// A partial last line: a whole JSON object without its newline, or one
/// cut inside (not a record until the rest is written: a reader that
/// handled it too early would lose the record).
#[derive(Debug, Clone)]
struct Partial {
    /// The record's uuid.
    uuid: String,
    /// The rest of the line when cut (written with the newline).
    rest: Option<String>,
}

/// The model's expectations.
#[derive(Default)]
struct Model {
    /// `access.log`, if it exists.
    active: Option<FileModel>,
    /// Rotated files by name.
    rotated: HashMap<String, FileModel>,
    /// Must come out exactly once.
    expected: BTreeSet<String>,
    /// May come out at most once.
    may_lose: BTreeSet<String>,
    /// Must come out, and may come out again this many more times (read
    /// again after as many replacements).
    may_repeat: HashMap<String, usize>,
    /// Next uuid number.
    next_uuid: usize,
    /// Next rotation number.
    next_rot: usize,
    /// Steps so far, for failure messages.
    log: Vec<String>,
}

impl Model {
    fn uuid(&mut self, seed: u64) -> String {
        self.next_uuid += 1;
        format!("m{seed}-{:06}", self.next_uuid)
    }

    /// Lines of a file not delivered yet become "may be lost".
    fn lose_undelivered(&mut self, f: &FileModel, delivered: &HashMap<String, usize>) {
        for u in &f.lines {
            if !delivered.contains_key(u) && self.expected.remove(u) {
                self.may_lose.insert(u.clone());
            }
        }
        if let Some(p) = &f.partial {
            if p.rest.is_none() {
                self.may_lose.insert(p.uuid.clone());
            }
        }
    }
}

/// A running tailer and its sink.
struct Running {
    stop: CancellationToken,
    tailer: tokio::task::JoinHandle<anyhow::Result<()>>,
    sink: tokio::task::JoinHandle<()>,
}

/// The scratch directory, the tailer and what came out.
struct Harness {
    _dir: tempfile::TempDir,
    logs: PathBuf,
    state: PathBuf,
    cfg: SourceConfig,
    checkpoints: Checkpointer,
    /// Uuid -> times it came out.
    delivered: Arc<Mutex<HashMap<String, usize>>>,
    /// When set, the next sink takes nothing until it is cancelled (a
    /// backed-up sink).
    held: Option<CancellationToken>,
    running: Option<Running>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let state = dir.path().join("state");
        fs::create_dir_all(&logs).unwrap();
        fs::create_dir_all(&state).unwrap();
        let cfg = SourceConfig {
            paths: vec![logs.join("access.log*").to_string_lossy().into_owned()],
            exclude: Vec::new(),
            format: Format::LeJson,
            read_from: ReadFrom::Beginning,
            ignore_older: None,
            poll_interval: Some(POLL),
            rescan_interval: Duration::from_millis(500),
            read_delay: Duration::from_millis(crate::settings::DEFAULT_READ_DELAY_MS),
            max_line_bytes: 64 * 1024,
            partial_grace: GRACE,
            follow_symlinks: false,
            max_scan_entries: crate::settings::DEFAULT_MAX_SCAN_ENTRIES,
            max_scan: Duration::from_millis(crate::settings::DEFAULT_MAX_SCAN_MS),
        };
        let checkpoints = Checkpointer::load(&state).unwrap();
        Harness { _dir: dir, logs, state, cfg, checkpoints, delivered: Default::default(), held: None, running: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    fn delivered(&self) -> HashMap<String, usize> {
        self.delivered.lock().unwrap().clone()
    }

    fn start(&mut self) {
        assert!(self.running.is_none());
        // A queue as small as a real sink's can be, so backpressure shows.
        let (tx, mut rx) = mpsc::channel::<Arc<Batch>>(2);
        let mut fanout = Fanout::new();
        fanout.add("model", tx);
        let stop = CancellationToken::new();
        let shared = ReaderShared {
            format: self.cfg.format,
            max_line_bytes: self.cfg.max_line_bytes,
            inline_reads: self.cfg.poll_interval.is_none(),
            partial_grace: self.cfg.partial_grace,
            fanout,
            checkpoints: self.checkpoints.clone(),
            enricher: Arc::new(Enricher::new(&[], None, None).unwrap()),
            shutdown: stop.clone(),
            rejects: None,
            reject_log: Default::default(),
            host: Arc::from("model-host"),
        };
        let tailer = Tailer::new(self.cfg.clone(), "model".into(), shared, Telemetry::new()).unwrap();
        let delivered = self.delivered.clone();
        let held = self.held.take();
        let sink = tokio::spawn(async move {
            if let Some(held) = held {
                held.cancelled().await;
            }
            while let Some(b) = rx.recv().await {
                let mut d = delivered.lock().unwrap();
                for r in b.records.iter() {
                    *d.entry(r.get(Field::RequestUuid).to_string()).or_default() += 1;
                }
                drop(d);
                b.ack();
            }
        });
        self.running = Some(Running { stop, tailer: tokio::spawn(tailer.run()), sink });
    }

    /// A graceful stop: the tailer stops at a batch boundary, the sink
    /// acknowledges what it was handed, the checkpoints are written.
    async fn stop(&mut self) {
        let r = self.running.take().expect("running");
        r.stop.cancel();
        r.tailer.await.unwrap().unwrap();
        r.sink.await.unwrap();
        self.checkpoints.write_async(true).await.unwrap();
    }

    /// Stops, then starts again from the checkpoints on disk.
    async fn restart(&mut self) {
        self.stop().await;
        self.checkpoints = Checkpointer::load(&self.state).unwrap();
        self.start();
    }

    fn append(&self, name: &str, text: &str) {
        let mut f = OpenOptions::new().create(true).append(true).open(self.path(name)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Waits (virtual time) until every expected uuid came out.
    async fn read(&self, m: &Model) {
        let deadline = tokio::time::Instant::now() + READ_DEADLINE;
        loop {
            let d = self.delivered();
            let missing: Vec<&String> = m.expected.iter().filter(|u| !d.contains_key(*u)).collect();
            if missing.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} expected records never came out (first: {:?})\nsteps:\n{}\nfiles: {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)],
                    m.log.join("\n"),
                    listing(&self.logs)
                );
            }
            tokio::time::sleep(POLL / 2).await;
        }
    }
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    v.sort();
    v
}

/// One seeded sequence of `steps` steps.
async fn run_sequence(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::new();
    let mut m = Model::default();
    h.start();
    for _ in 0..steps {
        let roll = rng.random_range(0..100);
        match roll {
            // Write whole lines, maybe ending in a partial one.
            0..=39 => {
                let n = rng.random_range(1..=20);
                let partial = rng.random_bool(0.3);
                let mut f = m.active.take().unwrap_or_default();
                let mut text = String::new();
                if let Some(p) = f.partial.take() {
                    // Completed: now it must come out.
                    text.push_str(p.rest.as_deref().unwrap_or(""));
                    text.push('\n');
                    m.expected.insert(p.uuid.clone());
                    f.lines.push(p.uuid);
                }
                for _ in 0..n {
                    let u = m.uuid(seed);
                    text.push_str(&line(&u));
                    text.push('\n');
                    m.expected.insert(u.clone());
                    f.lines.push(u);
                }
                if partial {
                    let u = m.uuid(seed);
                    // Not expected while the file may still grow.
                    let l = line(&u);
                    let rest = if rng.random_bool(0.5) {
                        let cut = rng.random_range(1..l.len());
                        text.push_str(&l[..cut]);
                        Some(l[cut..].to_string())
                    } else {
                        text.push_str(&l);
                        None
                    };
                    f.partial = Some(Partial { uuid: u, rest });
                }
                h.append("access.log", &text);
                m.active = Some(f);
                m.log.push(format!("write {n} lines{}", if partial { " + partial" } else { "" }));
            }
            // Rename-rotate.
            40..=51 => {
                let Some(f) = m.active.take() else { continue };
                m.next_rot += 1;
                let name = format!("access.log.{}", m.next_rot);
                fs::rename(h.path("access.log"), h.path(&name)).unwrap();
                if let Some(Partial { uuid: u, rest: None }) = &f.partial {
                    if f.known && !f.lines.is_empty() {
                        // Rotated away: emitted once the grace has passed.
                        m.expected.insert(u.clone());
                    } else {
                        // Found under its new name only: its last line may
                        // still grow, so it need not be emitted.
                        m.may_lose.insert(u.clone());
                    }
                }
                m.log.push(format!("rotate to {name}"));
                m.rotated.insert(name, f);
            }
            // Copytruncate (the partial line completed first: a copy is
            // read as a continuation, its partial line is not emitted).
            52..=59 => {
                let Some(mut f) = m.active.take() else { continue };
                if let Some(p) = f.partial.take() {
                    h.append("access.log", &format!("{}\n", p.rest.as_deref().unwrap_or("")));
                    m.expected.insert(p.uuid.clone());
                    f.lines.push(p.uuid);
                }
                m.next_rot += 1;
                let name = format!("access.log.{}", m.next_rot);
                fs::copy(h.path("access.log"), h.path(&name)).unwrap();
                OpenOptions::new().write(true).open(h.path("access.log")).unwrap().set_len(0).unwrap();
                m.log.push(format!("copytruncate to {name}"));
                m.rotated.insert(name, FileModel { known: false, ..f });
                m.active = Some(FileModel::default());
            }
            // Replace in place by an older, shorter copy of itself (`cp`
            // over it: same inode, same first line), which later grows:
            // read again from its start, nothing appended lost.
            62..=63 => {
                let Some(mut f) = m.active.take() else { continue };
                if f.partial.is_some() || f.lines.len() < 2 {
                    m.active = Some(f);
                    continue;
                }
                let k = rng.random_range(1..f.lines.len());
                let d = h.delivered();
                let rest = FileModel { lines: f.lines.split_off(k), ..FileModel::default() };
                m.lose_undelivered(&rest, &d);
                for u in &f.lines {
                    *m.may_repeat.entry(u.clone()).or_default() += 1;
                }
                let text: String = f.lines.iter().map(|u| format!("{}\n", line(u))).collect();
                fs::write(h.path("access.log"), text).unwrap();
                m.active = Some(f);
                m.log.push(format!("replace in place by its first {k} lines"));
            }
            // Truncate in place: what was not read yet is lost.
            60..=61 => {
                let Some(f) = m.active.take() else { continue };
                let d = h.delivered();
                m.lose_undelivered(&f, &d);
                OpenOptions::new().write(true).open(h.path("access.log")).unwrap().set_len(0).unwrap();
                m.active = Some(FileModel::default());
                m.log.push("truncate".into());
            }
            // Delete a rotated file.
            64..=71 => {
                let mut names: Vec<String> = m.rotated.keys().cloned().collect();
                if names.is_empty() {
                    continue;
                }
                names.sort();
                let name = names.swap_remove(rng.random_range(0..names.len()));
                let f = m.rotated.remove(&name).unwrap_or_default();
                let d = h.delivered();
                m.lose_undelivered(&f, &d);
                fs::remove_file(h.path(&name)).unwrap();
                m.log.push(format!("delete {name}"));
            }
            // Let time pass: a little, or past the idle close.
            72..=81 => {
                let ms = if rng.random_bool(0.2) { reader::IDLE_CLOSE.as_millis() as u64 + 5_000 } else { rng.random_range(10..1_000) };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                m.log.push(format!("pause {ms} ms"));
            }
            // Read: everything expected comes out.
            82..=93 => {
                h.read(&m).await;
                if let Some(f) = &mut m.active {
                    f.known |= !f.lines.is_empty();
                }
                m.log.push("read".into());
            }
            // Graceful restart.
            _ => {
                // A rotated file's partial line is emitted only by a reader
                // that saw the rotation; after the restart it is a file
                // like any other.
                let d = h.delivered();
                let partials: Vec<String> =
                    m.rotated.values().filter_map(|f| f.partial.as_ref().filter(|p| p.rest.is_none()).map(|p| p.uuid.clone())).collect();
                for u in partials {
                    if !d.contains_key(&u) && m.expected.remove(&u) {
                        m.may_lose.insert(u);
                    }
                }
                h.restart().await;
                for f in m.rotated.values_mut().chain(m.active.as_mut()) {
                    f.known = false;
                }
                m.log.push("restart".into());
            }
        }
        // A little virtual time between steps, so the tailer interleaves.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..2 * POLL.as_millis() as u64))).await;
    }
    h.read(&m).await;
    h.stop().await;
    let d = h.delivered();
    let twice: Vec<_> =
        d.iter().filter(|(u, n)| **n > 1 + m.may_repeat.get(*u).copied().unwrap_or(0)).map(|(u, n)| format!("{u} x{n}")).collect();
    assert!(twice.is_empty(), "seed {seed}: came out more than once: {twice:?}\nsteps:\n{}", m.log.join("\n"));
    let unexpected: Vec<_> = d.keys().filter(|u| !m.expected.contains(*u) && !m.may_lose.contains(*u)).collect();
    assert!(unexpected.is_empty(), "seed {seed}: came out but never written: {unexpected:?}");
    let missing: Vec<_> = m.expected.iter().filter(|u| !d.contains_key(*u)).collect();
    assert!(missing.is_empty(), "seed {seed}: never came out: {missing:?}\nsteps:\n{}", m.log.join("\n"));
}

#[tokio::test(start_paused = true)]
async fn random_sequences_match_the_model() {
    let seeds: u64 = std::env::var("MODEL_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    for seed in 0..seeds {
        run_sequence(seed, 60).await;
    }
}

/// A reload while the sink is backed up: the reader's send waits for
/// room, is given up, and its batch is taken back, so the next reader
/// (same checkpoints, as after a reload) reads it again: every line comes
/// out exactly once, none is skipped.
#[tokio::test(start_paused = true)]
async fn a_send_given_up_while_the_sink_is_backed_up_is_read_again_by_the_next_reader() {
    let mut h = Harness::new();
    let held = CancellationToken::new();
    h.held = Some(held.clone());
    h.start();
    // About five chunks: two fill the sink's queue, the third waits.
    let ids: Vec<String> = (0..14_000).map(|i| format!("b-{i:06}")).collect();
    h.append("access.log", &ids.iter().map(|u| format!("{}\n", line(u))).collect::<String>());
    let fp = loop {
        let fps: Vec<_> = h.checkpoints.entries().iter().map(|e| e.fingerprint).collect();
        if let Some(fp) = fps.into_iter().find(|fp| h.checkpoints.in_flight(*fp)) {
            break fp;
        }
        tokio::time::sleep(POLL).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = h.checkpoints.resume_offset(fp).unwrap();
    assert!(h.delivered().is_empty(), "the sink took nothing yet");
    // The reload: the reader stops; then the sink takes what it was handed.
    let r = h.running.take().unwrap();
    r.stop.cancel();
    r.tailer.await.unwrap().unwrap();
    let queued = h.checkpoints.resume_offset(fp).unwrap();
    assert!(queued < sent, "the batch whose send was given up is taken back ({queued} < {sent})");
    held.cancel();
    r.sink.await.unwrap();
    assert_eq!(h.checkpoints.offset(fp), Some(queued), "the batches in the queue were delivered");
    h.start();
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    while h.delivered().len() < ids.len() {
        assert!(tokio::time::Instant::now() < deadline, "{} of {} came out", h.delivered().len(), ids.len());
        tokio::time::sleep(POLL).await;
    }
    h.stop().await;
    let d = h.delivered();
    assert!(ids.iter().all(|u| d.get(u) == Some(&1)), "every line exactly once");
}

/// Descriptors this process holds on `path`.
fn open_fds(path: &Path) -> usize {
    fs::read_dir("/proc/self/fd").unwrap().flatten().filter(|e| fs::read_link(e.path()).is_ok_and(|t| t == path)).count()
}

/// Waits (virtual time, bounded) until `uuid` came out.
async fn wait_for(h: &Harness, uuid: &str) {
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    while !h.delivered().contains_key(uuid) {
        assert!(tokio::time::Instant::now() < deadline, "{uuid} never came out: {:?}", h.delivered());
        tokio::time::sleep(POLL / 2).await;
    }
}

/// The partial-line grace: a line cut by a rotation and completed in the
/// rotated file within the grace (a logger finishing its last write)
/// comes out whole; a partial line left alone past the grace comes out
/// then, not before.
#[tokio::test(start_paused = true)]
async fn a_partial_line_of_a_rotated_file_waits_for_the_grace() {
    let mut h = Harness::new();
    h.cfg.partial_grace = Duration::from_secs(5);
    h.start();
    let (a, b, c) = (line("g-000001"), line("g-000002"), line("g-000003"));
    h.append("access.log", &format!("{a}\n{}", &b[..20]));
    wait_for(&h, "g-000001").await;
    fs::rename(h.path("access.log"), h.path("access.log.1")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.append("access.log.1", &format!("{}\n{c}", &b[20..]));
    wait_for(&h, "g-000002").await;
    // `c` has no newline: it stays back for the grace, then comes out.
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!h.delivered().contains_key("g-000003"), "a partial line before the grace passed");
    wait_for(&h, "g-000003").await;
    assert!(t0.elapsed() <= Duration::from_secs(5) + 4 * POLL, "emitted {:?} after the last growth", t0.elapsed());
    h.stop().await;
    assert!(h.delivered().values().all(|n| *n == 1), "{:?}", h.delivered());
}

/// A reader at the end of its file closes it after [`reader::IDLE_CLOSE`]
/// without new data (not before), and the file is read again when it
/// grows.
#[tokio::test(start_paused = true)]
async fn an_idle_file_is_closed_and_reopened_when_it_grows() {
    let mut h = Harness::new();
    h.start();
    h.append("access.log", &format!("{}\n", line("i-000001")));
    wait_for(&h, "i-000001").await;
    let path = h.path("access.log");
    assert_eq!(open_fds(&path), 1, "read and held open");
    tokio::time::sleep(reader::IDLE_CLOSE - Duration::from_secs(2)).await;
    assert_eq!(open_fds(&path), 1, "still open before the idle close");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open_fds(&path) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "not closed after the idle close");
        tokio::time::sleep(POLL / 2).await;
    }
    h.append("access.log", &format!("{}\n", line("i-000002")));
    wait_for(&h, "i-000002").await;
    assert_eq!(open_fds(&path), 1, "reopened");
    h.stop().await;
    assert_eq!(h.delivered().len(), 2);
    assert!(h.delivered().values().all(|n| *n == 1), "{:?}", h.delivered());
}

/// A `.gz` that cannot be decompressed yet (logrotate still writing it) is
/// retried when it changes, and its records come out once, after those
/// of the plain file it continues.
#[tokio::test(start_paused = true)]
async fn an_incomplete_gz_is_retried_when_it_changes() {
    let mut h = Harness::new();
    h.start();
    let ids: Vec<String> = (1..=50).map(|i| format!("z-{i:06}")).collect();
    let text: String = ids.iter().map(|u| format!("{}\n", line(u))).collect();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let half = gz.len() / 2;
    h.append("access.log.1.gz", "");
    let mut f = OpenOptions::new().append(true).open(h.path("access.log.1.gz")).unwrap();
    f.write_all(&gz[..half]).unwrap();
    // Several scans see it incomplete.
    tokio::time::sleep(10 * POLL).await;
    f.write_all(&gz[half..]).unwrap();
    drop(f);
    for u in &ids {
        wait_for(&h, u).await;
    }
    tokio::time::sleep(10 * POLL).await;
    h.stop().await;
    let d = h.delivered();
    assert_eq!(d.len(), ids.len());
    assert!(d.values().all(|n| *n == 1), "{d:?}");
}
