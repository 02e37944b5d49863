//! Fuzzing, kept: a seeded mutation fuzzer for every parser (`le6`,
//! `le5-csv`, `le-json`, `ecle-csv`, `ecls`, `auto` detection, multi-line
//! JSON framing, time spellings), the `parse` command end to end, the
//! rejects file's JSON, the channel's request parsing (the raw HTTP
//! handshake and the admission of its target), the hub's decoding of Kafka
//! message values, the `lag` renderer fed hostile `/status` documents and
//! the replay log's segment reader (segment files damaged in place, or cut,
//! grown and shrunk). Stable Rust, no
//! extra crate: inputs from the corpus are mutated (bytes, tokens of the
//! format, splices) with a seeded PRNG; an input that reaches a new outcome
//! joins the pool, a crude but cheap stand-in for coverage feedback.
//!
//! Each target checks properties, not only "no panic": a line gives N
//! records or exactly one reject, and never disturbs its neighbours (a line
//! that is not a header leaves how the next line parses unchanged); every
//! record serialises to valid JSON in both shapes, with every field once;
//! a record written as an ecls message parses back to the same record; a
//! reject entry is valid JSON that keeps the raw bytes; JSON framing does
//! not depend on where a document is split; a handshake head parses the
//! same whatever follows it; an admitted subscription carries the right
//! token and a refusal never echoes it; a decoded Kafka value keeps hosts
//! within 255 bytes and reads back the same when written again; `lag`
//! renders any document it accepts without a panic, a control character or
//! a line beyond a bound, also with one of its strings blown up past
//! 65,535 characters (what made it panic).
//!
//! - Corpus: `tests/fuzz/corpus/<target>/` (kept in the repository) plus
//!   the shipped samples (`tests/fixtures/samples`) and simulator output.
//! - Findings: an input that fails is minimised and written to
//!   `tests/fuzz/regressions/<target>/`; every file there is replayed
//!   first on every run, so each crash ever found stays a regression test
//!   (commit it with the fix).
//! - Time: `FUZZ_DEFAULT_BUDGET` per target in a normal `cargo test`;
//!   `scripts/fuzz.sh [SECONDS]` runs each target longer (release build,
//!   `nice`, a random seed). `CALLLOG_FUZZ_SECS` and `CALLLOG_FUZZ_SEED`
//!   set the budget and the seed.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use calllog_bridge::cmd::lag;
use calllog_bridge::enrich::{Enricher, Lookups};
use calllog_bridge::kafka::consume::{decode, Decoded, MAX_HOST_BYTES};
use calllog_bridge::parse::framing::{opens_document, JsonDepth};
use calllog_bridge::parse::{Format, LineKind, LineParser};
use calllog_bridge::record::{write_ecls_message, Record, Shape, FIELD_COUNT};
use calllog_bridge::rejects::RejectEntry;
use calllog_bridge::sim::{le5_csv_header, Generator};
use calllog_bridge::sink::channel::request::{admit, parse_handshake, Paths, TokenDigest, MAX_REQUEST_HEAD_BYTES};
use calllog_bridge::url::percent_decode;
use serde_json::Value;

/// How long each target runs in a normal test run (CI): the whole harness
/// stays within seconds.
const FUZZ_DEFAULT_BUDGET: Duration = Duration::from_millis(1200);

/// Inputs longer than this are cut (the interesting structure is short).
const MAX_INPUT: usize = 16 * 1024;

/// Lines of an input a parser target reads (each costs three parses).
const MAX_LINES: usize = 64;

/// `max_line_bytes` of the parsers under test (so `too_long` is reached).
const MAX_LINE: usize = 4096;

/// Inputs kept in the pool of a target.
const POOL_MAX: usize = 2048;

/// An input slower than this is a finding (quadratic behaviour, a loop).
fn slow_limit() -> Duration {
    if cfg!(debug_assertions) {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(250)
    }
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------
// The engine.
// ---------------------------------------------------------------------------

/// splitmix64: small, seedable, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// FNV-1a, for outcome signatures and finding names.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Bytes that break parsers.
const INTERESTING: &[u8] = b"\"',;:[]{}\\ \t\r\n-_0123456789xX%+.eE/\x00\x7f\x80\xbf\xc3\xe2\xef\xf0\xff";

/// Tokens every target may splice in.
const COMMON_TOKENS: &[&str] = &[
    "\"",
    "\\\"",
    "\\u0000",
    "\\ud800",
    "\\uDFFF",
    "\u{feff}",
    "\r",
    "-",
    "",
    "null",
    "true",
    "[]",
    "{}",
    "0",
    "-1",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "NaN",
    "1542643298.014",
    "99999999999.999999",
    "2019-04-19T21:56:43Z",
    "2019-02-29T24:60:60.9999999999+99:99",
    "0000-00-00T00:00:00Z",
    "[15/Feb/2024:08:47:17 +0000]",
    "15/Feb/2024:08:47:17 -2400",
    "200 OK (API)",
    "403 ERR_403_DEVELOPER_INACTIVE (Mashery)",
    "request_uuid",
    "request_time",
    "€",
    "\u{10ffff}",
];

/// What a check returns: a signature of the outcome (inputs with a new
/// one join the pool).
type Signature = u64;

/// Runs one input; panics when a property does not hold.
type Check = Box<dyn Fn(&[u8]) -> Signature>;

/// A fuzz target.
struct Target {
    /// Directory name under `tests/fuzz/{corpus,regressions}`.
    name: &'static str,
    /// Seeds besides the corpus directory.
    seeds: Vec<Vec<u8>>,
    /// Tokens of the format.
    tokens: Vec<String>,
    /// Runs one input; panics when a property does not hold.
    check: Check,
}

thread_local! {
    /// Set while this thread runs fuzz inputs: its panics are expected
    /// and reported by the harness, not printed by the hook.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    /// Where and why the last caught panic happened.
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    /// Time spent in the code under test during the current input, when a
    /// check measures it (a check's own bookkeeping can cost more than the
    /// code it checks).
    static MEASURED: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// Runs `f` as code under test: its time counts towards the slow limit.
fn measured<T>(f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    MEASURED.with(|m| m.set(Some(m.get().unwrap_or_default() + took)));
    r
}

/// Installs (once) a panic hook that keeps quiet on fuzzing threads only;
/// other tests of this binary keep the default hook's output.
fn quiet_panics_on_fuzz_threads() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if FUZZING.with(Cell::get) {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some((at, msg)));
            } else {
                previous(info);
            }
        }));
    });
}

/// A failed input: where it panicked and the message.
#[derive(Debug, Clone)]
struct Failure {
    at: String,
    message: String,
}

/// Runs one input: its signature, or how it failed. An input is slow only
/// when it is slow three times running (a loaded machine stalls threads).
fn exec(t: &Target, input: &[u8]) -> Result<Signature, Failure> {
    let mut fastest = Duration::MAX;
    let mut result = None;
    for _ in 0..3 {
        let (r, took) = exec_once(t, input);
        fastest = fastest.min(took);
        let slow = took > slow_limit();
        result = Some(r);
        if !slow || result.as_ref().is_some_and(Result::is_err) {
            break;
        }
    }
    match result.unwrap_or(Ok(0)) {
        Ok(_) if fastest > slow_limit() => Err(Failure { at: "slow".into(), message: format!("took {fastest:?}") }),
        r => r,
    }
}

fn exec_once(t: &Target, input: &[u8]) -> (Result<Signature, Failure>, Duration) {
    FUZZING.with(|f| f.set(true));
    MEASURED.with(|m| m.set(None));
    let started = Instant::now();
    let r = panic::catch_unwind(AssertUnwindSafe(|| (t.check)(input)));
    let took = MEASURED.with(Cell::take).unwrap_or_else(|| started.elapsed());
    FUZZING.with(|f| f.set(false));
    let r = match r {
        Ok(sig) => Ok(sig),
        Err(_) => {
            let (at, message) = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
            Err(Failure { at, message })
        }
    };
    (r, took)
}

fn mutate(rng: &mut Rng, t: &Target, pool: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.below(6);
    for _ in 0..rounds {
        let len = v.len();
        match rng.below(14) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a range (repeated fields, columns, members).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let piece = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, piece);
            }
            5 | 6 => {
                let tok: &[u8] = if rng.chance(2) && !t.tokens.is_empty() {
                    t.tokens[rng.below(t.tokens.len())].as_bytes()
                } else {
                    COMMON_TOKENS[rng.below(COMMON_TOKENS.len())].as_bytes()
                };
                let i = rng.below(len + 1);
                if rng.chance(2) && i < len {
                    // Replace the token-ish run at i.
                    let end = v[i..].iter().position(|b| b" ,\"\t:[]{}".contains(b)).map_or(len, |p| i + p);
                    v.splice(i..end, tok.iter().copied());
                } else {
                    v.splice(i..i, tok.iter().copied());
                }
            }
            7 => {
                v.truncate(rng.below(len + 1));
            }
            8 if !pool.is_empty() => {
                // Splice with another input.
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            9 if len > 0 => {
                // A long run (over-long lines, deep nesting).
                let i = rng.below(len);
                let b = if rng.chance(2) { v[i] } else { INTERESTING[rng.below(INTERESTING.len())] };
                let n = [8, 64, 1024, MAX_LINE + 1][rng.below(4)];
                v.splice(i..i, std::iter::repeat_n(b, n));
            }
            10 if len > 1 => {
                // Swap two bytes.
                let (i, j) = (rng.below(len), rng.below(len));
                v.swap(i, j);
            }
            11 if len > 0 => {
                // Change a number: digits next to each other.
                let i = rng.below(len);
                if v[i].is_ascii_digit() {
                    v[i] = b'0' + rng.below(10) as u8;
                    if rng.chance(3) {
                        v.insert(i, b'0' + rng.below(10) as u8);
                    }
                }
            }
            12 if len > 0 => {
                // Line structure: split or join lines.
                let i = rng.below(len);
                if v[i] == b'\n' {
                    v.remove(i);
                } else {
                    v.insert(i, b'\n');
                }
            }
            _ => {
                // Case flips (names, `xx` classes, hex).
                if len > 0 {
                    let i = rng.below(len);
                    v[i] = if v[i].is_ascii_lowercase() { v[i].to_ascii_uppercase() } else { v[i].to_ascii_lowercase() };
                }
            }
        }
        v.truncate(MAX_INPUT);
    }
    v
}

/// Removes what is not needed for the input to fail the same way: whole
/// lines first, then ever smaller byte ranges (bounded in tries and time).
fn minimise(t: &Target, input: &[u8], failure: &Failure) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let same = |cand: &[u8]| matches!(exec(t, cand), Err(f) if f.at == failure.at);
    let mut cur = input.to_vec();
    // Lines.
    let mut i = 0;
    loop {
        let lines: Vec<&[u8]> = cur.split(|&b| b == b'\n').collect();
        if i >= lines.len() || lines.len() < 2 || Instant::now() > deadline {
            break;
        }
        let cand = lines.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| *l).collect::<Vec<_>>().join(&b'\n');
        if same(&cand) {
            cur = cand;
        } else {
            i += 1;
        }
    }
    // Bytes.
    let mut chunk = cur.len().div_ceil(2).max(1);
    while Instant::now() < deadline {
        let mut removed = false;
        let mut i = 0;
        while i < cur.len() && Instant::now() < deadline {
            let end = (i + chunk).min(cur.len());
            let cand: Vec<u8> = cur[..i].iter().chain(&cur[end..]).copied().collect();
            if same(&cand) {
                cur = cand;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if !removed {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    cur
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn env_seed(name: &str) -> u64 {
    match std::env::var("CALLLOG_FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(s) => s ^ fnv(name.as_bytes()),
        None => 0x5eed ^ fnv(name.as_bytes()),
    }
}

fn env_budget() -> Duration {
    std::env::var("CALLLOG_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).map_or(FUZZ_DEFAULT_BUDGET, Duration::from_secs_f64)
}

/// Replays the regressions and the corpus, then fuzzes for the budget.
fn run(t: Target) {
    quiet_panics_on_fuzz_threads();
    let regressions = repo("tests/fuzz/regressions").join(t.name);
    for f in files_in(&regressions) {
        let input = std::fs::read(&f).unwrap();
        if let Err(e) = exec(&t, &input) {
            panic!("{}: regression {} fails again at {}: {}", t.name, f.display(), e.at, e.message);
        }
    }
    let mut pool: Vec<Vec<u8>> = t.seeds.clone();
    pool.extend(files_in(&repo("tests/fuzz/corpus").join(t.name)).iter().map(|f| std::fs::read(f).unwrap()));
    let mut seen: HashSet<Signature> = HashSet::new();
    for input in pool.clone() {
        match exec(&t, &input) {
            Ok(sig) => {
                seen.insert(sig);
            }
            Err(e) => fail(&t, &input, e),
        }
    }
    let seed = env_seed(t.name);
    let mut rng = Rng(seed);
    let budget = env_budget();
    let started = Instant::now();
    let mut execs = 0u64;
    while started.elapsed() < budget {
        let base = pool[rng.below(pool.len())].clone();
        let input = mutate(&mut rng, &t, &pool, &base);
        execs += 1;
        match exec(&t, &input) {
            Ok(sig) => {
                if seen.insert(sig) {
                    if pool.len() >= POOL_MAX {
                        let i = t.seeds.len() + rng.below(pool.len() - t.seeds.len());
                        pool.swap_remove(i);
                    }
                    pool.push(input);
                }
            }
            Err(e) => fail(&t, &input, e),
        }
    }
    eprintln!(
        "fuzz {}: {execs} inputs in {:.1} s (seed {seed}), {} outcomes, pool {}",
        t.name,
        started.elapsed().as_secs_f64(),
        seen.len(),
        pool.len()
    );
}

/// Minimises a failing input, keeps it as a regression, and fails.
fn fail(t: &Target, input: &[u8], e: Failure) -> ! {
    eprintln!("fuzz {}: an input fails at {}: {}; minimising", t.name, e.at, e.message);
    let small = minimise(t, input, &e);
    let dir = repo("tests/fuzz/regressions").join(t.name);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{:016x}", fnv(&small)));
    let _ = std::fs::write(&path, &small);
    panic!(
        "{}: input fails at {}: {}\nminimised to {} bytes, kept as {} (commit it with the fix): {:?}",
        t.name,
        e.at,
        e.message,
        small.len(),
        path.display(),
        String::from_utf8_lossy(&small[..small.len().min(400)])
    );
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

/// An enricher with the example lookup tables and masking, so enrichment
/// and masking run on fuzzed values too.
fn enricher() -> &'static (Enricher, Arc<Lookups>) {
    static E: OnceLock<(Enricher, Arc<Lookups>)> = OnceLock::new();
    E.get_or_init(|| {
        let files: Vec<PathBuf> =
            ["services.csv", "endpoints.csv", "keys.csv", "plans.json"].iter().map(|f| repo("examples/lookups").join(f)).collect();
        let e = Enricher::new(&files, Some(4), Some(3)).expect("example lookups load");
        let t = e.tables();
        (e, t)
    })
}

/// Every record serialises to valid JSON in both shapes with every field
/// once, and written as an ecls message parses back to the same record.
fn check_record(rec: &Record<'_>) {
    let mut buf = Vec::new();
    rec.write_json(Shape::Ndjson, &mut buf);
    let v: Value =
        serde_json::from_slice(&buf).unwrap_or_else(|e| panic!("ndjson record is not JSON ({e}): {}", String::from_utf8_lossy(&buf)));
    let obj = v.as_object().expect("an ndjson record is an object");
    // A bridge's record (a hub's, read from Kafka) carries its host too.
    let host = usize::from(!rec.host.is_empty());
    assert_eq!(obj.len(), FIELD_COUNT + 2 + host, "ndjson: every field once, plus ingestion_time and sync_delay_ms (and host)");
    buf.clear();
    rec.write_json(Shape::Ecls, &mut buf);
    let e: Value =
        serde_json::from_slice(&buf).unwrap_or_else(|e| panic!("ecls record is not JSON ({e}): {}", String::from_utf8_lossy(&buf)));
    let eobj = e.as_object().expect("an ecls record is an object");
    assert_eq!(eobj.len(), FIELD_COUNT + 1 + usize::from(rec.sync_delay_ms.is_some()) + host, "ecls: every field once");
    assert!(eobj.values().all(Value::is_string), "ecls: every value is a string: {e}");
    buf.clear();
    write_ecls_message([rec], &mut buf);
    let mut back = Vec::new();
    let mut p = LineParser::new(Format::Ecls, usize::MAX);
    match p.parse_line(&buf, &mut back) {
        Ok(LineKind::Records(1)) => {}
        other => panic!("a record written as an ecls message does not parse back: {other:?}\n{}", String::from_utf8_lossy(&buf)),
    }
    let mut again = back[0].to_value(Shape::Ecls);
    let mut first = e.clone();
    // sync_delay_ms and host are the bridge's, not read back from a file.
    for v in [&mut again, &mut first] {
        v.as_object_mut().expect("object").remove("sync_delay_ms");
        v.as_object_mut().expect("object").remove("host");
    }
    assert_eq!(again, first, "an ecls record read back differs");
}

/// The outcome of one line, for signatures and comparisons.
fn outcome(r: &Result<LineKind, calllog_bridge::parse::Reject>, records: &[Record<'_>]) -> String {
    match r {
        Ok(LineKind::Records(n)) => {
            format!("records {n}: {}", records.iter().map(|r| r.to_value(Shape::Ecls).to_string()).collect::<Vec<_>>().join(","))
        }
        Ok(k) => format!("{k:?}"),
        Err(rej) => format!("reject {}", rej.reason),
    }
}

/// Parses one line with the contract's checks; returns a short signature
/// of what happened.
fn check_line(p: &mut LineParser, line: &[u8], observed_ms: i64) -> (String, Option<LineKind>) {
    let sentinel = Record::new_ml();
    let mut out = vec![sentinel.clone()];
    let r = measured(|| p.parse_line(line, &mut out));
    match &r {
        Ok(LineKind::Records(n)) => assert_eq!(out.len(), 1 + n, "Records({n}) but {} pushed", out.len() - 1),
        Ok(_) => assert_eq!(out.len(), 1, "a header or blank line pushed records"),
        Err(rej) => {
            assert_eq!(out.len(), 1, "a reject pushed records");
            assert!(!rej.detail.is_empty(), "a reject without detail");
        }
    }
    assert_eq!(out[0], sentinel, "a line changed the record before it");
    let (e, tables) = enricher();
    for rec in &mut out[1..] {
        measured(|| {
            rec.stamp_observed(observed_ms);
            e.enrich(tables, rec);
        });
        check_record(rec);
    }
    let sig = match &r {
        Ok(LineKind::Records(n)) => format!("r{n}"),
        Ok(k) => format!("{k:?}"),
        Err(rej) => format!("{}:{}", rej.reason, rej.detail.split(|c: char| c.is_ascii_digit() || c == '"').next().unwrap_or("")),
    };
    (sig, r.ok())
}

/// A parser target: the input is a file; each line is parsed in order by
/// one parser. Between lines, a reference line of the format is parsed
/// before and after each fuzzed line: unless the fuzzed line is a header,
/// it must parse the same both times.
fn parse_target(name: &'static str, format: Format, seeds: Vec<Vec<u8>>, reference: Option<String>) -> Target {
    let tokens: Vec<String> = match format {
        Format::Le6 => {
            ["PROXY_ACCESS", "INFO", " ", "\"", "[", "]", "15-02-2024", "08:47:17.389", "(API)", "(Mashery)"].map(String::from).to_vec()
        }
        Format::Le5Csv | Format::EcleCsv => {
            [",", "\"\"", "\"", ",\"a,b\",", "request_uuid", "request_host_name", "api_key", "request_time", "\r\n"]
                .map(String::from)
                .to_vec()
        }
        _ => [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"data\":",
            "\"request_uuid\":",
            "\"request_time\":",
            "\"status\":",
            "\"proxy\":",
            "\"exec_time\":",
            "\"spkey\":",
        ]
        .map(String::from)
        .to_vec(),
    };
    let check = move |input: &[u8]| -> Signature {
        let mut p = LineParser::new(format, MAX_LINE);
        let mut sig = Vec::new();
        for line in input.split(|&b| b == b'\n').take(MAX_LINES) {
            let before = reference.as_ref().map(|r| {
                let mut out = Vec::new();
                let res = p.parse_line(r.as_bytes(), &mut out);
                outcome(&res, &out)
            });
            let (s, kind) = check_line(&mut p, line, 1_700_000_000_000);
            if let (Some(r), Some(before)) = (&reference, before) {
                if kind != Some(LineKind::Header) {
                    let mut out = Vec::new();
                    let res = p.parse_line(r.as_bytes(), &mut out);
                    assert_eq!(
                        outcome(&res, &out),
                        before,
                        "the line {:?} changed how the next line parses",
                        String::from_utf8_lossy(line)
                    );
                }
            }
            sig.extend_from_slice(s.as_bytes());
            sig.push(b'|');
        }
        fnv(&sig)
    };
    Target { name, seeds, tokens, check: Box::new(check) }
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(repo("tests/fixtures/samples").join(name)).unwrap()
}

/// `n` simulator lines in `format`, one input each, and one input of all.
fn simulated(format: Format, n: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(7);
    let lines: Vec<String> = (0..n).map(|i| g.next_call(1_700_000_000_000 + i as i64 * 1000, 1500).render(format)).collect();
    let mut v: Vec<Vec<u8>> = lines.iter().map(|l| l.clone().into_bytes()).collect();
    v.push(lines.concat().into_bytes());
    v
}

fn one_line(format: Format) -> String {
    let l = Generator::new(11).next_call(1_700_000_000_000, 2000).render(format);
    l.trim_end_matches('\n').to_string()
}

#[test]
fn fuzz_le6() {
    let mut seeds = vec![sample("le6-enriched-access.log")];
    seeds.extend(simulated(Format::Le6, 20));
    run(parse_target("le6", Format::Le6, seeds, Some(one_line(Format::Le6))));
}

#[test]
fn fuzz_le5_csv() {
    let header = le5_csv_header().trim_end().to_string();
    let mut seeds = vec![sample("le5-enriched-access.csv")];
    for s in simulated(Format::Le5Csv, 20) {
        let mut v = format!("{header}\n").into_bytes();
        v.extend(s);
        seeds.push(v);
    }
    // The reference row after the sample's header maps the same columns.
    run(parse_target("le5_csv", Format::Le5Csv, seeds, Some(one_line(Format::Le5Csv))));
}

#[test]
fn fuzz_le_json() {
    let mut seeds = vec![sample("le-access.ndjson")];
    seeds.extend(simulated(Format::LeJson, 20));
    run(parse_target("le_json", Format::LeJson, seeds, Some(one_line(Format::LeJson))));
}

#[test]
fn fuzz_ecle_csv() {
    let mut seeds = vec![sample("ecle-export.csv")];
    seeds.extend(simulated(Format::EcleCsv, 20));
    run(parse_target("ecle_csv", Format::EcleCsv, seeds, Some(one_line(Format::EcleCsv))));
}

#[test]
fn fuzz_ecls() {
    let compact: Value = serde_json::from_slice(&sample("ecls-message.json")).unwrap();
    let mut seeds = vec![compact.to_string().into_bytes(), sample("ecls-message.json")];
    let mut g = Generator::new(5);
    let recs: Vec<Record<'static>> = (0..3).map(|i| g.next_call(1_700_000_000_000 + i, 100).expected(Format::LeJson)).collect();
    let mut msg = Vec::new();
    write_ecls_message(recs.iter(), &mut msg);
    seeds.push(msg);
    let reference = compact.to_string();
    run(parse_target("ecls", Format::Ecls, seeds, Some(reference)));
}

#[test]
fn fuzz_auto_detection() {
    let mut seeds: Vec<Vec<u8>> =
        ["le6-enriched-access.log", "le5-enriched-access.csv", "le-access.ndjson", "ecle-export.csv", "ecls-message.json"]
            .map(sample)
            .to_vec();
    for f in [Format::Le6, Format::LeJson, Format::Le5Csv, Format::EcleCsv] {
        seeds.extend(simulated(f, 3));
    }
    // `auto` decides on the first line: no reference line before it.
    run(parse_target("auto", Format::Auto, seeds, None));
}

/// Multi-line JSON framing: the brace depth after a document does not
/// depend on how it is cut into pieces; a document that serde_json reads
/// as one object closes exactly at its end.
#[test]
fn fuzz_framing() {
    let check = |input: &[u8]| -> Signature {
        let mut whole = JsonDepth::new();
        let closed_whole = whole.feed(input);
        for cut in [1, input.len() / 3, input.len() / 2, input.len().saturating_sub(1)] {
            let cut = cut.min(input.len());
            let mut d = JsonDepth::new();
            d.feed(&input[..cut]);
            d.feed(&input[cut..]);
            assert_eq!(d, whole, "the depth depends on the cut at {cut}");
        }
        let mut lines = JsonDepth::new();
        let mut closed_at = None;
        let parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        for (i, l) in parts.iter().enumerate() {
            if i > 0 {
                lines.line_end();
            }
            if lines.feed(l) && closed_at.is_none() {
                closed_at = Some(i);
            }
        }
        assert_eq!(lines, whole, "line by line differs from whole");
        if let Ok(Value::Object(_)) = serde_json::from_slice::<Value>(input) {
            assert!(closed_whole && whole.depth() == 0, "a JSON object does not close");
            if opens_document(parts[0]) {
                assert_eq!(closed_at, Some(parts.iter().rposition(|l| !l.trim_ascii().is_empty()).unwrap_or(0)), "closes before its end");
            }
        }
        fnv(format!("{}{}{:?}", whole.depth().min(8), closed_whole, closed_at.map(|c| c.min(3))).as_bytes())
    };
    let seeds = vec![sample("ecls-message.json"), b"{\n  \"a\": \"}\\\"{\",\n  \"b\": [ {}, [] ]\n}".to_vec(), b"{\n{\"a\":1}\n".to_vec()];
    run(Target {
        name: "framing",
        seeds,
        tokens: ["{", "}", "[", "]", "\"", "\\", "\\\""].map(String::from).to_vec(),
        check: Box::new(check),
    });
}

/// Time spellings: what parses formats back to the same instant.
#[test]
fn fuzz_time() {
    let check = |input: &[u8]| -> Signature {
        let Ok(s) = std::str::from_utf8(input) else { return 0 };
        match calllog_bridge::time::parse_any(s) {
            Some(ms) => {
                let iso = calllog_bridge::time::format_iso_millis(ms);
                assert_eq!(calllog_bridge::time::parse_any(&iso), Some(ms), "{s:?} -> {ms} -> {iso:?} does not read back");
                1
            }
            None => 2,
        }
    };
    let seeds = [
        "2019-04-19T21:56:43Z",
        "2018-11-19T17:01:41.250+01:00",
        "2018-11-19 16:01:41",
        "1542643298.014",
        "[15/Feb/2024:08:47:17 +0000]",
        "15/Feb/2024:09:47:17 +0100",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    run(Target { name: "time", seeds, tokens: ["T", "Z", "+", ":", ".", "/"].map(String::from).to_vec(), check: Box::new(check) });
}

/// A rejects-file entry is one JSON object that keeps the raw bytes
/// (`raw_hex` when they are not UTF-8) and the file name and detail.
#[test]
fn fuzz_rejects_entry() {
    let check = |input: &[u8]| -> Signature {
        let (file, rest) = input.split_at(input.len().min(12));
        let file = String::from_utf8_lossy(file);
        let detail = String::from_utf8_lossy(&rest[..rest.len().min(40)]);
        let e = RejectEntry {
            file: &file,
            line: 3,
            offset: 9,
            reason: calllog_bridge::parse::RejectReason::BadJson,
            detail: &detail,
            raw: rest,
            observed_ms: Some(1),
        };
        let mut out = Vec::new();
        e.write_json(256, &mut out);
        let v: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|err| panic!("reject entry is not JSON ({err}): {}", String::from_utf8_lossy(&out)));
        assert_eq!(v["file"].as_str(), Some(&*file));
        assert_eq!(v["detail"].as_str(), Some(&*detail));
        let kept = &rest[..rest.len().min(256)];
        match v.get("raw_hex") {
            Some(h) => {
                let h = h.as_str().expect("hex string");
                let bytes: Vec<u8> = (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex")).collect();
                assert_eq!(bytes, kept, "raw_hex keeps the bytes");
            }
            None => assert_eq!(v["raw"].as_str().map(str::as_bytes), Some(kept), "raw keeps the line"),
        }
        u64::from(v.get("raw_hex").is_some()) + 2 * u64::from(v.get("raw_truncated").is_some())
    };
    let seeds = vec![b"access.log\n\"quoted\" \\ and \x00 control\t".to_vec(), b"f\xff\xfeinvalid \xc3(".to_vec(), vec![b'x'; 300]];
    run(Target { name: "rejects_entry", seeds, tokens: vec![], check: Box::new(check) });
}

/// The token of the channel under test.
const TOKEN: &str = "s3cret-T0ken-for-fuzzing";

/// Admission properties for one request target: an admitted subscription
/// carries the token (the last `key=`), a refusal is 400, 401 or 404 (404
/// exactly when the path is not served), one line of text, and never shows
/// the token unless the client wrote it elsewhere in the query itself.
fn check_admit(path: &str, query: Option<&str>) -> Signature {
    let paths = Paths { channel_id: "chan-1", area: "eu" };
    let digest = TokenDigest::of(TOKEN);
    let r = admit(&paths, path, query, &digest);
    assert_eq!(r, admit(&paths, path, query, &digest), "not deterministic");
    match &r {
        Ok(sub) => {
            assert!(paths.accepts(path), "admitted on a path it does not serve");
            let last_key = query
                .unwrap_or("")
                .split('&')
                .filter_map(|p| p.split_once('=').or(Some((p, ""))))
                .rfind(|(n, _)| *n == "key")
                .and_then(|(_, v)| percent_decode(v));
            assert_eq!(last_key.as_deref(), Some(TOKEN), "admitted without the token");
            if let Some(n) = sub.records_per_message {
                assert!((1..=1000).contains(&n), "records_per_message {n}");
            }
        }
        Err(refusal) => {
            assert!([400, 401, 404].contains(&refusal.status), "status {}", refusal.status);
            assert_eq!(refusal.status == 404, !paths.accepts(path), "404 exactly when the path is not served");
            let elsewhere = query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.starts_with("key=") && *p != "key")
                .any(|p| percent_decode(p).unwrap_or_else(|| p.to_string()).contains(TOKEN) || p.contains(TOKEN));
            assert!(elsewhere || !refusal.reason.contains(TOKEN), "a refusal echoes the token");
            assert!(!refusal.reason.chars().any(char::is_control), "a refusal is one line of text: {:?}", refusal.reason);
        }
    }
    match r {
        Ok(s) => fnv(format!("ok{}{}{}", s.since.is_some(), s.filter.is_empty(), s.records_per_message.is_some()).as_bytes()),
        Err(e) => u64::from(e.status) * 7 + fnv(e.reason.get(..12).unwrap_or("").as_bytes()),
    }
}

/// The channel's admission: the input is `path?query`.
#[test]
fn fuzz_channel_request() {
    let check = |input: &[u8]| -> Signature {
        // A request target holds no control characters or spaces (the
        // HTTP parser refuses them); decoded values may.
        let Ok(s) = std::str::from_utf8(input) else { return 0 };
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return 0;
        }
        match s.split_once('?') {
            Some((p, q)) => check_admit(p, Some(q)),
            None => check_admit(s, None),
        }
    };
    let seeds = [
        "/stream?key=s3cret-T0ken-for-fuzzing",
        "/stream/?key=s3cret%2DT0ken-for-fuzzing&since=42&records_per_message=50",
        "/ecls/subscribe/chan-1/eu?key=s3cret-T0ken-for-fuzzing&status=5xx,404&service_id=a%2Cb&api_key=k1&api_key=k2&unknown=1",
        "/ecls/subscribe/chan%2D1/eu?since=0&key=s3cret-T0ken-for-fuzzing",
        "/stream?key=wrong&since=x",
        "/nope",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    let tokens =
        ["?", "&", "=", "%", "%2", "%zz", "%ff", "%e2%82%ac", "+", "key=s3cret-T0ken-for-fuzzing", "key=", "since=", "status=", "xx", "/"]
            .map(String::from)
            .to_vec();
    run(Target { name: "channel_request", seeds, tokens, check: Box::new(check) });
}

/// The channel's handshake from raw bytes (the channel parses the HTTP
/// request head itself): it needs more bytes, or gives a head whose length
/// is within the input and which parses the same from the head's bytes
/// alone (and not from any shorter prefix), or refuses with 400, 405, 426
/// or 431 in one line of text; an admitted head then goes through
/// [`check_admit`].
#[test]
fn fuzz_channel_handshake() {
    let check = |input: &[u8]| -> Signature {
        let r = parse_handshake(input);
        match &r {
            Ok(None) => assert!(input.len() < MAX_REQUEST_HEAD_BYTES, "waits for more than {MAX_REQUEST_HEAD_BYTES} bytes"),
            Ok(Some((len, head))) => {
                assert!(*len <= input.len(), "head length {len} past the input");
                assert_eq!(parse_handshake(&input[..*len]), r, "the bytes after the head change it");
                for cut in [*len / 2, len.saturating_sub(1)] {
                    assert!(matches!(parse_handshake(&input[..cut]), Ok(None) | Err(_)), "a prefix of {cut} bytes is already a head");
                }
                assert!(head.path.starts_with('/'), "path {:?}", head.path);
                assert_eq!(head.key.len(), 24);
                return 1 + check_admit(&head.path, head.query.as_deref());
            }
            Err(refusal) => {
                assert!([400, 405, 426, 431].contains(&refusal.status), "status {}", refusal.status);
                assert!(!refusal.reason.chars().any(char::is_control), "a refusal is one line of text: {:?}", refusal.reason);
            }
        }
        match r {
            Ok(None) => 2,
            Ok(Some(_)) => 3,
            Err(e) => u64::from(e.status),
        }
    };
    let head = |target: &str, extra: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8790\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    let seeds = vec![
        head("/stream?key=s3cret-T0ken-for-fuzzing&since=3", ""),
        head(
            "/ecls/subscribe/chan-1/eu?key=s3cret-T0ken-for-fuzzing&status=5xx",
            "Origin: http://127.0.0.1\r\nConnection: keep-alive, Upgrade\r\n",
        ),
        head("ws://127.0.0.1:8790/stream?key=x", ""),
        [head("/stream", ""), b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58".to_vec()].concat(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /stream HTTP/1.0\r\n\r\n".to_vec(),
    ];
    let tokens = [
        "\r\n",
        ": ",
        "Upgrade",
        "websocket",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "13",
        "HTTP/1.1",
        "GET ",
        "?key=",
        "%",
    ]
    .map(String::from)
    .to_vec();
    run(Target { name: "channel_handshake", seeds, tokens, check: Box::new(check) });
}

/// `calllog-bridge parse` end to end on a fuzzed file (framing of
/// multi-line documents, bounded line reading, gzip detection, the
/// rejects file): it exits 0, every stdout line is a JSON record, every
/// rejects-file line is JSON, and the summary's counts match.
#[test]
fn fuzz_parse_command() {
    let dir = tempfile::tempdir().unwrap();
    let input_path = dir.path().join("input.log");
    let rejects_path = dir.path().join("rejects.ndjson");
    let check = move |input: &[u8]| -> Signature {
        std::fs::write(&input_path, input).unwrap();
        let out = crate::support::cmd()
            .args(["parse", "--format", "auto", "--max-line-bytes", "4096", "--no-progress", "--rejects"])
            .arg(&rejects_path)
            .arg(&input_path)
            .output()
            .expect("run parse");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // 1: the file could not be read to its end (a broken gzip stream),
        // which parse reports; anything else is a failure.
        match out.status.code() {
            Some(0) => {}
            Some(1) if stderr.contains("error reading") => {}
            other => panic!("parse exited with {other:?}: {stderr}"),
        }
        let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
        let records = stdout.lines().inspect(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"));
            assert!(v.is_object());
        });
        let n_records = records.count();
        let rejects = std::fs::read_to_string(&rejects_path).unwrap_or_default();
        for l in rejects.lines() {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("rejects line is not JSON ({e}): {l}"));
        }
        let total = stderr.lines().last().unwrap_or("");
        assert!(total.contains(&format!(" {n_records} records")), "summary {total:?} but {n_records} records on stdout\n{stderr}");
        assert!(
            total.contains(&format!(" {} rejects", rejects.lines().count())),
            "summary {total:?} but {} rejects written",
            rejects.lines().count()
        );
        fnv(format!("{}{}", n_records.min(4), rejects.lines().count().min(4)).as_bytes())
    };
    let mut seeds: Vec<Vec<u8>> =
        ["le6-enriched-access.log", "le5-enriched-access.csv", "le-access.ndjson", "ecle-export.csv", "ecls-message.json"]
            .map(sample)
            .to_vec();
    seeds.push([sample("ecls-message.json"), b"\n".to_vec(), sample("ecls-message.json")].concat());
    run(Target {
        name: "parse_command",
        seeds,
        tokens: ["{", "}", "\n{\n", "\n}\n", "\r\n"].map(String::from).to_vec(),
        check: Box::new(check),
    });
}

/// The hub's decoding of a Kafka message value (what an edge bridge, or
/// any producer to the topic, wrote): records, or one reject that leaves
/// nothing behind; every record is valid in both shapes, its host at most
/// 255 bytes, and written again as an edge writes it (the ndjson shape and
/// an ecls message), it decodes to the same record.
#[test]
fn fuzz_kafka_decode() {
    let check = |input: &[u8]| -> Signature {
        let sentinel = Record::new_ml();
        let mut out = vec![sentinel.clone()];
        let r = measured(|| decode(input, &mut out));
        assert_eq!(out[0], sentinel, "decoding disturbed a record before it");
        let got = &out[1..];
        match &r {
            Ok(Decoded { records, hosts_cut }) => {
                assert_eq!(*records, got.len(), "the count says what was pushed");
                assert!(*hosts_cut <= *records);
                for rec in got {
                    assert!(rec.host.len() <= MAX_HOST_BYTES, "a host of {} bytes kept", rec.host.len());
                    check_record(rec);
                    for shape in [Shape::Ndjson, Shape::Ecls] {
                        let mut again = Vec::new();
                        match shape {
                            Shape::Ndjson => rec.write_json(Shape::Ndjson, &mut again),
                            _ => write_ecls_message([rec], &mut again),
                        }
                        let mut back = Vec::new();
                        let d = decode(&again, &mut back).unwrap_or_else(|e| {
                            panic!("a decoded record written again ({shape:?}) is refused: {e}\n{}", String::from_utf8_lossy(&again))
                        });
                        assert_eq!((d.records, d.hosts_cut), (1, 0));
                        assert_eq!(
                            back[0].to_value(Shape::Ndjson),
                            rec.to_value(Shape::Ndjson),
                            "{shape:?} round trip differs: {}",
                            String::from_utf8_lossy(&again)
                        );
                        assert_eq!(
                            (back[0].host.as_ref(), back[0].sync_delay_ms, back[0].ingestion_time),
                            (rec.host.as_ref(), rec.sync_delay_ms, rec.ingestion_time)
                        );
                    }
                }
            }
            Err(rej) => assert!(got.is_empty(), "a rejected value left {} records behind ({})", got.len(), rej.reason),
        }
        match r {
            Ok(d) => fnv(format!("ok{}{}", d.records.min(4), d.hosts_cut.min(2)).as_bytes()),
            Err(e) => fnv(format!("reject {}", e.reason).as_bytes()),
        }
    };
    let mut g = Generator::new(11);
    let mut seeds = Vec::new();
    for i in 0..4 {
        let mut rec = g.next_call(1_700_000_000_000 + i, 1500).expected(Format::LeJson);
        rec.stamp_observed(1_700_000_002_000 + i);
        rec.host = std::borrow::Cow::Owned(format!("tm-dc{i}-01"));
        let mut v = Vec::new();
        if i % 2 == 0 {
            rec.write_json(Shape::Ndjson, &mut v);
        } else {
            write_ecls_message([&rec], &mut v);
        }
        seeds.push(v);
    }
    seeds.push(
        format!("{{\"request_time\":\"2019-04-19T21:56:43Z\",\"request_uuid\":\"u\",\"host\":\"{}\"}}", "h".repeat(300)).into_bytes(),
    );
    let tokens =
        ["\"host\":", "\"sync_delay_ms\":", "\"ingestion_time\":", "\"data\":[", "{\"data\":[]}", "\\u00e9", "é", "\\ud83d\\ude00"]
            .map(String::from)
            .to_vec();
    run(Target { name: "kafka_decode", seeds, tokens, check: Box::new(check) });
}

/// The longest line `lag` may print for any document: a table row (a
/// dozen cells of at most 96 characters) or a line of two clipped texts
/// whose every byte was escaped.
const LAG_MAX_LINE_CHARS: usize = 8192;

/// What `lag` prints must be safe on a terminal and bounded per line.
fn check_terminal_text(t: &str) {
    for l in t.lines() {
        assert!(!l.chars().any(char::is_control), "a control character reaches the terminal: {:?}", &l[..l.len().min(200)]);
        assert!(l.chars().count() <= LAG_MAX_LINE_CHARS, "a line of {} characters", l.chars().count());
    }
}

/// `lag` on one `/status` body: read as `lag` reads it, then rendered
/// (the table, and `--max-lag` findings at several limits).
fn check_lag_body(body: &[u8]) -> Signature {
    match measured(|| lag::read_status(body)) {
        Err(e) => {
            assert!(!e.is_empty() && !e.contains('\n'), "an error is one line: {e:?}");
            fnv(e.get(..e.len().min(48)).unwrap_or("").as_bytes())
        }
        Ok((st, _)) => {
            let table = measured(|| lag::render_table(&st, "http://127.0.0.1:8791"));
            check_terminal_text(&table);
            let mut findings = 0;
            for limit in [i64::MIN, 0, 60_000, i64::MAX] {
                for f in measured(|| lag::over_limit(&st, limit)) {
                    check_terminal_text(&f);
                    assert!(!f.contains('\n'), "a finding is one line");
                    findings += 1;
                }
            }
            fnv(format!("ok{}{}{}{}", st.files.len().min(3), st.sinks.len().min(2), st.sections.0.len().min(3), findings.min(3)).as_bytes())
        }
    }
}

/// The strings of a JSON document, by pointer-ish path (for blowing one up).
fn string_count(v: &Value) -> usize {
    match v {
        Value::String(_) => 1,
        Value::Array(a) => a.iter().map(string_count).sum(),
        Value::Object(o) => o.values().map(string_count).sum(),
        _ => 0,
    }
}

/// Replaces the `k`-th string of `v` by itself repeated past 70,000
/// characters; true when there was one.
fn blow_up(v: &mut Value, k: &mut usize) -> bool {
    match v {
        Value::String(s) => {
            if *k == 0 {
                let unit = if s.is_empty() { "x".to_string() } else { s.clone() };
                *s = unit.repeat(70_000 / unit.chars().count().max(1) + 1);
                return true;
            }
            *k -= 1;
            false
        }
        Value::Array(a) => a.iter_mut().any(|x| blow_up(x, k)),
        Value::Object(o) => o.values_mut().any(|x| blow_up(x, k)),
        _ => false,
    }
}

/// The values of a JSON document, itself included.
fn node_count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(node_count).sum(),
        Value::Object(o) => o.values().map(node_count).sum(),
        _ => 0,
    }
}

/// Replaces the `k`-th value of `v` (pre-order) by `new`.
fn replace_node(v: &mut Value, k: &mut usize, new: &Value) -> bool {
    if *k == 0 {
        *v = new.clone();
        return true;
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| replace_node(x, k, new)),
        Value::Object(o) => o.values_mut().any(|x| replace_node(x, k, new)),
        _ => false,
    }
}

/// Values of the wrong type, size or content for any member.
fn hostile_values() -> Vec<Value> {
    let mut deep = Value::Null;
    for _ in 0..100 {
        deep = Value::Array(vec![deep]);
    }
    vec![
        Value::Null,
        serde_json::json!(-1),
        serde_json::json!(u64::MAX),
        serde_json::json!(i64::MIN),
        serde_json::json!(1.7976931348623157e308),
        serde_json::json!(""),
        serde_json::json!("\u{1b}[2J\u{1b}]0;t\u{7}\r\nFAKE\u{202e}"),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!(true),
        serde_json::json!({"p50": i64::MAX, "p95": i64::MIN, "max": i64::MAX, "min": i64::MIN, "samples": u64::MAX}),
        deep,
    ]
}

/// `lag` against hostile `/status` documents (whatever answers at the URL
/// is a peer): wrong types, missing and unknown members, deep nesting,
/// control characters and escapes, huge numbers. Byte mutations mostly
/// break the JSON; so for every input that is JSON the check also renders
/// two structural variants chosen by the input: one value replaced by a
/// hostile one (wrong type, extreme number, escapes, nesting), and one
/// string blown up past 65,535 characters (beyond what a fuzzer input
/// holds).
#[test]
fn fuzz_lag_status() {
    let hostile = hostile_values();
    let check = move |input: &[u8]| -> Signature {
        let mut sig = check_lag_body(input);
        let Ok(v) = serde_json::from_slice::<Value>(input) else { return sig };
        let h = fnv(input);
        let mut swapped = v.clone();
        let mut k = (h % node_count(&v) as u64) as usize;
        replace_node(&mut swapped, &mut k, &hostile[(h >> 32) as usize % hostile.len()]);
        sig ^= check_lag_body(&serde_json::to_vec(&swapped).expect("serialises")).rotate_left(1);
        let n = string_count(&v);
        if n > 0 {
            let mut big = v;
            let mut k = (h.rotate_left(17) % n as u64) as usize;
            blow_up(&mut big, &mut k);
            sig ^= check_lag_body(&serde_json::to_vec(&big).expect("serialises")).rotate_left(2);
        }
        sig
    };
    let fixture = std::fs::read(repo("tests/fixtures/telemetry/status.json")).expect("the status fixture");
    let mut hub: Value = serde_json::from_slice(&fixture).expect("fixture JSON");
    hub["kafka_source"] = serde_json::json!({"records_read": 700, "values_rejected": 1, "messages_lost": 3, "partition_resets": 1,
        "partitions_failing": 0, "hosts_tracked": 2, "hosts_expired": 0, "records_from_untracked_hosts": 5, "hosts_cut": 1});
    hub["channel"] = serde_json::json!({"listen": "127.0.0.1:8790", "tls": false, "path": "/stream", "connections": 1,
        "connections_accepted": 4, "refused": {"bad_token": 2, "too_many": 0}, "closed": {"slow_consumer": 1}});
    hub["faults"] = serde_json::json!([{"component": "file", "error": "No space left on device (os error 28)", "since_ms": 1, "since": "2026-01-01T00:00:00Z", "attempts": 3}]);
    hub["enrich"] = serde_json::json!({"files": ["/etc/l.csv"], "tables": [{"table": "keys", "loaded": true, "entries": 2, "hits": 3, "misses": 4}],
        "hits": 3, "misses": 4, "reloads": 1, "last_reload_error": "l.csv line 2: \u{1b}[31m"});
    if let Some(f) = hub["files"].get_mut(0) {
        f["path"] = Value::String("kafka:tm-dc1-01".into());
    }
    let seeds = vec![fixture, serde_json::to_vec(&hub).expect("serialises"), serde_json::to_vec_pretty(&hub).expect("serialises")];
    let tokens = [
        "\\u001b[2J",
        "\\u0007",
        "\\u009b",
        "\\u202e",
        "[[[[[[[[[[[[[[[[",
        "{\"a\":{\"a\":{\"a\":",
        "\"files\":",
        "\"sinks\":",
        "\"path\":",
        "\"name\":",
        "\"state\":\"stalled\"",
        "\"kafka_source\":{\"partition_resets\":9223372036854775807}",
        "\"refused\":{\"x\":9223372036854775807,\"y\":9223372036854775807}",
        "1e400",
        "-0",
        "\"uptime_secs\":1.7976931348623157e308",
        "\"delay_window_secs\":18446744073709551615",
    ]
    .map(String::from)
    .to_vec();
    run(Target { name: "lag_status", seeds, tokens, check: Box::new(check) });
}

// ---------------------------------------------------------------------------
// The replay log's segment reader.
// ---------------------------------------------------------------------------

/// Records in the clean segment the replay target damages.
const SEGMENT_RECORDS: u64 = 24;

/// The records of that segment: (seq, JSON), numbered from 1.
fn segment_items() -> Vec<(u64, Arc<calllog_bridge::sink::channel::replay::Item>)> {
    use calllog_bridge::sink::channel::replay::{key_digest, Item};
    (1..=SEGMENT_RECORDS)
        .map(|i| {
            let json = format!("{{\"request_uuid\":\"r-{i}\",\"pad\":\"{}\"}}", "x".repeat(((i * 37) % 200 + 5) as usize));
            let item = Item {
                json: json.into(),
                service_id: format!("svc-{}", i % 3).into(),
                key_digest: key_digest("k"),
                status: 200,
                observed_ms: 1,
            };
            (i, Arc::new(item))
        })
        .collect()
}

/// The clean segment file: its name and bytes, written once by the log
/// itself.
fn clean_segment() -> &'static (String, Vec<u8>) {
    use calllog_bridge::sink::channel::replay::{ReplayLog, Retention};
    static CLEAN: OnceLock<(String, Vec<u8>)> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ReplayLog::open(dir.path(), Retention::new(1 << 30, i64::MAX / 2), 1).unwrap();
        let items: Vec<_> = segment_items().into_iter().map(|(_, it)| it).collect();
        log.append(&items, 1_000).unwrap();
        drop(log);
        let seg = files_in(dir.path()).pop().unwrap();
        (seg.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&seg).unwrap())
    })
}

/// Damage an input describes, applied to `file`: ops of 4 bytes (kind,
/// position as u16, length) and, for writes and inserts, that many bytes
/// of the input. Returns, for each byte of the result, the offset in the
/// clean file it still holds unchanged (`None`: written, inserted).
fn apply_damage(input: &[u8], file: &mut Vec<u8>, in_place_only: bool) -> Vec<Option<usize>> {
    let mut origin: Vec<Option<usize>> = (0..file.len()).map(Some).collect();
    let mut i = 0;
    let mut ops = 0;
    while i + 4 <= input.len() && ops < 16 {
        let (kind, pos, n) = (input[i] % 4, u16::from_le_bytes([input[i + 1], input[i + 2]]) as usize, input[i + 3] as usize % 160 + 1);
        i += 4;
        ops += 1;
        let pos = pos % (file.len() + 1);
        let take = |i: &mut usize| {
            let b = &input[*i..(*i + n).min(input.len())];
            *i += b.len();
            b.to_vec()
        };
        match (kind, in_place_only) {
            (0, _) => {
                let b = take(&mut i);
                for (j, &v) in b.iter().enumerate() {
                    if let Some(slot) = file.get_mut(pos + j) {
                        if *slot != v {
                            *slot = v;
                            origin[pos + j] = None;
                        }
                    }
                }
            }
            (1, false) => {
                let b = take(&mut i);
                file.splice(pos..pos, b.iter().copied());
                origin.splice(pos..pos, std::iter::repeat_n(None, b.len()));
            }
            (2, false) => {
                let end = (pos + n).min(file.len());
                file.drain(pos..end);
                origin.drain(pos..end);
            }
            (3, false) => {
                file.truncate(pos);
                origin.truncate(pos);
            }
            (1, true) => i += n.min(input.len() - i),
            _ => {}
        }
    }
    origin
}

/// What a read of a whole log gave: the records (seq, JSON) and the lost
/// ranges reported (first, last), in order.
type ReplayRead = (Vec<(u64, String)>, Vec<(u64, u64)>);

/// Reads a log from the start as a connection does; panics on a loop.
fn read_log_all(log: &calllog_bridge::sink::channel::replay::ReplayLog) -> ReplayRead {
    use calllog_bridge::sink::channel::replay::Plan;
    let (mut records, mut lost) = (Vec::new(), Vec::new());
    // Damage at the start moves the oldest record held: what is before
    // it, a client asking from 1 is told is lost (the eviction notice).
    let mut from = log.first_seq();
    if from > 1 {
        lost.push((1, from - 1));
    }
    let mut rounds = 0;
    while from < log.next_seq() {
        rounds += 1;
        assert!(rounds < 4 * SEGMENT_RECORDS as usize + 10, "reading loops at {from}: {records:?} {lost:?}");
        let mut out = Vec::new();
        let skip = match log.read(from, 7, 1 << 20, &mut out).expect("nothing evicted") {
            Plan::Hot { skip_to } => skip_to,
            Plan::Lost { first, last } => {
                lost.push((first, last));
                last + 1
            }
            Plan::Disk(d) => {
                let outcome = d.run(&mut out).expect("a damaged segment reads without an error");
                if let Some((a, b)) = outcome.lost {
                    assert!(
                        a >= from && out.first().is_none_or(|e| e.seq > b),
                        "lost {a}..={b} from {from} before {:?}",
                        out.first().map(|e| e.seq)
                    );
                    lost.push((a, b));
                    if out.is_empty() {
                        from = b + 1;
                        continue;
                    }
                }
                d.gap_to
            }
        };
        match out.last() {
            Some(l) => from = l.seq + 1,
            None => from = skip.max(from + 1),
        }
        records.extend(out.into_iter().map(|e| (e.seq, e.item.json.to_string())));
    }
    (records, lost)
}

/// Checks what a read of a damaged segment gave: every record is one of
/// the clean segment's, in order; every intact record (its bytes all
/// there, unchanged and together) is among them; records and lost ranges
/// never overlap and together cover every sequence number up to `covered`
/// (lost ranges may go beyond the last record: damage after it may have
/// held more).
fn check_replay_read(records: &[(u64, String)], lost: &[(u64, u64)], origin: &[Option<usize>], covered: u64) {
    let items = segment_items();
    let (_, clean) = clean_segment();
    for w in records.windows(2) {
        assert!(w[0].0 < w[1].0, "records out of order: {} then {}", w[0].0, w[1].0);
    }
    for (seq, json) in records {
        let want = items.get(*seq as usize - 1).map(|(_, it)| &*it.json);
        assert_eq!(Some(json.as_str()), want, "record {seq} is not the one written");
    }
    // Where each clean record is, unchanged, in the damaged file.
    let mut at = vec![None; clean.len()];
    for (p, o) in origin.iter().enumerate() {
        if let Some(o) = o {
            at[*o] = Some(p);
        }
    }
    let mut off = 0usize;
    for (seq, _) in &items {
        let len = 8 + u32::from_le_bytes(clean[off..off + 4].try_into().unwrap()) as usize;
        let intact = at[off].is_some_and(|p| (0..len).all(|k| at[off + k] == Some(p + k)));
        if intact {
            assert!(records.iter().any(|r| r.0 == *seq), "intact record {seq} was not returned (lost {lost:?})");
        }
        off += len;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (seq, _) in records {
        seen.insert(*seq);
    }
    for &(a, b) in lost {
        assert!(a <= b, "empty lost range {a}..={b}");
        for s in a..=b {
            assert!(seen.insert(s), "{s} both returned and lost, or lost twice: {lost:?}");
        }
    }
    let missing: Vec<u64> = (1..=covered).filter(|s| !seen.contains(s)).collect();
    assert!(missing.is_empty(), "sequence numbers neither returned nor reported lost: {missing:?} (lost {lost:?})");
    let beyond: Vec<u64> = seen.iter().copied().filter(|&s| s > SEGMENT_RECORDS).collect();
    assert!(beyond.iter().all(|&s| s > SEGMENT_RECORDS && lost.iter().any(|l| l.0 <= s && s <= l.1)), "{beyond:?}");
}

/// The replay log's segment reader on damaged segment files, while the
/// bridge runs (bytes overwritten in place under a log that knows the
/// clean segment) and at start (bytes also inserted, removed, cut): it
/// never panics, never loops, errs on nothing, returns only records that
/// were written, every intact one, and reports every other sequence
/// number as lost (at start, a torn tail may be cut silently: a write a
/// kill interrupted, never acknowledged).
#[test]
fn fuzz_replay_segment() {
    use calllog_bridge::sink::channel::replay::{ReplayLog, Retention};
    let check = |input: &[u8]| -> Signature {
        let (name, clean) = clean_segment();
        let retention = Retention::new(1 << 30, i64::MAX / 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        // Running: the log scanned the clean file, then it was damaged.
        std::fs::write(&path, clean).unwrap();
        let (log, repairs) = ReplayLog::open(dir.path(), retention, SEGMENT_RECORDS + 1).unwrap();
        assert!(repairs.is_empty());
        let mut file = clean.clone();
        let origin = apply_damage(input, &mut file, true);
        std::fs::write(&path, &file).unwrap();
        let (records, lost) = measured(|| read_log_all(&log));
        check_replay_read(&records, &lost, &origin, SEGMENT_RECORDS);
        let running = (records.len(), lost.len());
        drop(log);
        // At start: the damaged file is scanned (and maybe cut).
        let mut file = clean.clone();
        let origin = apply_damage(input, &mut file, false);
        std::fs::write(&path, &file).unwrap();
        let (log, repairs) = measured(|| ReplayLog::open(dir.path(), retention, SEGMENT_RECORDS + 1)).expect("a damaged segment opens");
        let (records, lost) = measured(|| read_log_all(&log));
        let torn = repairs.iter().any(|r| r.truncated);
        // A file whose end is gone (cut, maybe at a record boundary, where
        // nothing tells a loss from numbers a crash skipped) may lose its
        // last records silently.
        let cut = torn || origin.last() != Some(&Some(clean.len() - 1));
        let covered = match cut {
            true => records.last().map(|r| r.0).into_iter().chain(lost.last().map(|l| l.1)).max().unwrap_or(0),
            false => SEGMENT_RECORDS,
        };
        check_replay_read(&records, &lost, &origin, covered);
        // A second start finds the same.
        drop(log);
        let (log, _) = ReplayLog::open(dir.path(), retention, SEGMENT_RECORDS + 1).unwrap();
        assert_eq!(read_log_all(&log), (records.clone(), lost.clone()), "a second start reads otherwise");
        fnv(format!("{running:?}{}{}{torn}", records.len().min(30), lost.len().min(8)).as_bytes())
    };
    let seeds = vec![
        vec![],
        // 300 bytes of garbage written in the middle.
        [vec![0, 0xd0, 0x07, 0xff], (0..255u8).map(|b| b.wrapping_mul(31)).collect()].concat(),
        // Zeros over the first record; a cut near the end.
        [vec![0, 0, 0, 60], vec![0; 61], vec![3, 0x40, 0x0f, 0]].concat(),
        // Bytes inserted and removed.
        [vec![1, 0x10, 0x02, 20], b"{\"garbage\":\"inserted\"}".to_vec(), vec![2, 0x00, 0x05, 90]].concat(),
    ];
    run(Target { name: "replay_segment", seeds, tokens: vec![], check: Box::new(check) });
}
