//! `[export]` and `[export.s3]`: the section as written and the typed
//! settings the export runs with (durations as `Duration`, the slice
//! length checked to align with the hour, S3 credentials read from their
//! files once).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::access::{FileAccess, DEFAULT_FILE_MODE};
use crate::record::Formulas;
use crate::settings::{ConfigError, Secret};

/// The `[export]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSection {
    /// Where slice files are written (relative: to the config file).
    pub dir: PathBuf,
    /// Length of a slice in minutes (divides 60, or a whole number of
    /// hours that divides a day), aligned to the hour in UTC.
    #[serde(default = "default_slice_minutes")]
    pub slice_minutes: u32,
    /// A slice is closed this long after its end.
    #[serde(default = "default_close_after_secs")]
    pub close_after_secs: u64,
    /// Append the four organisation columns (39 instead of 35).
    #[serde(default)]
    pub include_org: bool,
    /// Write a header row naming the columns.
    #[serde(default = "yes")]
    pub header: bool,
    /// Append the bridge's own columns (`ingestion_time`, `sync_delay_ms`,
    /// `host`), named in the header: what `lag report` needs to tell the
    /// sync delay from the slices. Off: the hosted export's columns only.
    #[serde(default)]
    pub bridge_columns: bool,
    /// gzip the files (`.csv.gz`); otherwise plain `.csv`.
    #[serde(default = "yes")]
    pub gzip: bool,
    /// gzip level, 1 (fastest, the default) to 9 (smallest).
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    /// fsync at most this often; a batch is acknowledged once synced.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Slice files open at once (main or late); beyond it the one written
    /// least recently is closed early.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Records whose `request_time` is more than this far in the past (of
    /// the time they are written) go to an out-of-window file, not a slice.
    #[serde(default = "default_max_past_hours")]
    pub max_past_hours: u32,
    /// The same for a `request_time` this far in the future.
    #[serde(default = "default_max_future_minutes")]
    pub max_future_minutes: u32,
    /// Write cells a spreadsheet would run as a formula as text (a leading
    /// `'`, quoted); `false` writes every value as it is.
    #[serde(default = "yes")]
    pub escape_formulas: bool,
    /// Permission bits of the files (octal, `"0640"`), whatever the umask.
    #[serde(default = "default_file_mode")]
    pub file_mode: String,
    /// The group of the files and the directory (a name, or a number);
    /// absent: the process's (or a set-group-ID directory's).
    #[serde(default)]
    pub group: Option<String>,
    /// Optional delivery to S3-compatible object storage.
    #[serde(default)]
    pub s3: Option<S3Section>,
}

/// The `[export.s3]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// The bucket.
    pub bucket: String,
    /// Key prefix (`calllog/` gives `calllog/calllog-...csv.gz`).
    #[serde(default)]
    pub prefix: String,
    /// The service URL (`https://minio.example:9000`); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when absent, which most stores accept).
    #[serde(default = "default_region")]
    pub region: String,
    /// File holding the access key id.
    pub access_key_id_file: PathBuf,
    /// File holding the secret access key.
    pub secret_access_key_file: PathBuf,
    /// Address buckets as `endpoint/bucket/key` (on-premises stores)
    /// rather than `bucket.endpoint/key`.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Keep the local file once uploaded.
    #[serde(default = "yes")]
    pub keep_local: bool,
    /// Extra CA certificates (PEM) to trust for the endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// One upload attempt may take this long.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Longest wait between two attempts of a failing upload.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_slice_minutes() -> u32 {
    30
}
fn default_close_after_secs() -> u64 {
    300
}
/// Level 1: ~500,000 records per CPU-second into the export against
/// ~230,000 at level 6, for files ~1.7 times larger (`benches/export.rs`).
fn default_gzip_level() -> u32 {
    1
}
fn default_fsync_interval_ms() -> u64 {
    1000
}
fn default_max_open_files() -> usize {
    64
}
/// A week: a bridge that was stopped for days still puts its backlog in
/// slices (336 of 30 minutes at most); a clock decades off does not make
/// a file per record.
fn default_max_past_hours() -> u32 {
    168
}
/// An hour: more than any clock skew between synchronised hosts.
fn default_max_future_minutes() -> u32 {
    60
}
fn default_file_mode() -> String {
    DEFAULT_FILE_MODE.into()
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_request_timeout_ms() -> u64 {
    60_000
}
fn default_max_backoff_ms() -> u64 {
    300_000
}

/// The export's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// Where slice files are written.
    pub dir: PathBuf,
    /// Slice length.
    pub slice: Duration,
    /// A slice closes this long after its end.
    pub close_after: Duration,
    /// 39 columns instead of 35.
    pub include_org: bool,
    /// A header row opens every file.
    pub header: bool,
    /// The bridge's columns after the export's (needs the header).
    pub bridge_columns: bool,
    /// gzip level, `None` for plain CSV.
    pub gzip: Option<u32>,
    /// How often open files are synced (and batches acknowledged).
    pub fsync_interval: Duration,
    /// Files open at once.
    pub max_open_files: usize,
    /// The accepted window of `request_time` around the time a record is
    /// written: this far back (the running export; the offline command
    /// takes a range instead)...
    pub max_past: Duration,
    /// ... and this far ahead.
    pub max_future: Duration,
    /// How cells a spreadsheet would run as a formula are written.
    pub formulas: Formulas,
    /// Mode and group of the files (and the directory's bits).
    pub access: FileAccess,
    /// Upload closed files.
    pub s3: Option<S3Config>,
}

/// The `[export.s3]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix.
    pub prefix: String,
    /// Service URL; `None` for AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Access key id (read from its file).
    pub access_key_id: Secret,
    /// Secret access key (read from its file).
    pub secret_access_key: Secret,
    /// Path-style addressing.
    pub path_style: bool,
    /// Keep the local file once uploaded.
    pub keep_local: bool,
    /// Extra CA certificates (PEM bytes, read once).
    pub ca_pem: Option<Vec<u8>>,
    /// One attempt's limit.
    pub request_timeout: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

/// The largest `max_past_hours`: ten years.
const MAX_PAST_HOURS: u32 = 87_600;

/// The largest `max_future_minutes`: a week.
const MAX_FUTURE_MINUTES: u32 = 10_080;

/// Slice lengths that tile the hour, or the day in whole hours, so that
/// every slice starts on a boundary a reader expects (`10:00`, `10:30`).
pub fn slice_minutes_valid(m: u32) -> bool {
    m > 0 && (60 % m == 0 || (m.is_multiple_of(60) && 1440 % m == 0))
}

impl ExportConfig {
    /// The settings of a section: `base` resolves relative paths (the
    /// config file's directory); credentials and the CA file are read.
    pub fn from_section(s: ExportSection, base: &Path) -> Result<ExportConfig, ConfigError> {
        if s.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("export.dir", "is empty"));
        }
        if !slice_minutes_valid(s.slice_minutes) {
            return Err(ConfigError::invalid(
                "export.slice_minutes",
                format!(
                    "{} does not align to the hour: use a divisor of 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60) or 120, 180, 240, 360, 480, 720, 1440",
                    s.slice_minutes
                ),
            ));
        }
        if !(1..=9).contains(&s.gzip_level) {
            return Err(ConfigError::invalid("export.gzip_level", format!("{} is not 1 to 9", s.gzip_level)));
        }
        if s.fsync_interval_ms == 0 {
            return Err(ConfigError::invalid("export.fsync_interval_ms", "must be > 0"));
        }
        if s.max_open_files < 2 {
            return Err(ConfigError::invalid("export.max_open_files", "must be at least 2"));
        }
        if s.close_after_secs > 7 * 86_400 {
            return Err(ConfigError::invalid("export.close_after_secs", "must be at most a week (604800)"));
        }
        if !(1..=MAX_PAST_HOURS).contains(&s.max_past_hours) {
            return Err(ConfigError::invalid(
                "export.max_past_hours",
                format!("{} is not 1 to {MAX_PAST_HOURS} (ten years)", s.max_past_hours),
            ));
        }
        if s.max_future_minutes > MAX_FUTURE_MINUTES {
            return Err(ConfigError::invalid(
                "export.max_future_minutes",
                format!("{} is more than a week ({MAX_FUTURE_MINUTES})", s.max_future_minutes),
            ));
        }
        if s.bridge_columns && !s.header {
            return Err(ConfigError::invalid("export.bridge_columns", "needs `header = true`: readers find the bridge's columns by name"));
        }
        let s3 = s.s3.map(|c| S3Config::from_section(c, base)).transpose()?;
        let dir = base.join(&s.dir);
        let access = FileAccess::parse(Some(&s.file_mode), s.group.as_deref(), "export.file_mode", "export.group")?;
        access.check(&dir, "export.group")?;
        Ok(ExportConfig {
            dir,
            slice: Duration::from_secs(u64::from(s.slice_minutes) * 60),
            close_after: Duration::from_secs(s.close_after_secs),
            include_org: s.include_org,
            header: s.header,
            bridge_columns: s.bridge_columns,
            gzip: s.gzip.then_some(s.gzip_level),
            fsync_interval: Duration::from_millis(s.fsync_interval_ms),
            max_open_files: s.max_open_files,
            max_past: Duration::from_secs(u64::from(s.max_past_hours) * 3600),
            max_future: Duration::from_secs(u64::from(s.max_future_minutes) * 60),
            formulas: if s.escape_formulas { Formulas::Neutralised } else { Formulas::Verbatim },
            access,
            s3,
        })
    }

    /// The slice length in milliseconds.
    pub fn slice_ms(&self) -> i64 {
        self.slice.as_millis() as i64
    }
}

impl S3Config {
    fn from_section(s: S3Section, base: &Path) -> Result<S3Config, ConfigError> {
        if !valid_bucket(&s.bucket) {
            return Err(ConfigError::invalid(
                "export.s3.bucket",
                format!("{:?} is not a bucket name (3 to 63 of a-z, 0-9, `.`, `-`)", s.bucket),
            ));
        }
        if s.prefix.starts_with('/') || s.prefix.contains("//") || s.prefix.chars().any(char::is_control) {
            return Err(ConfigError::invalid("export.s3.prefix", "must not start with `/`, hold `//` or control characters"));
        }
        if let Some(e) = &s.endpoint {
            let ok = (e.starts_with("http://") || e.starts_with("https://")) && !e.contains('@') && !e.contains('?');
            if !ok {
                return Err(ConfigError::invalid("export.s3.endpoint", "must be an http:// or https:// URL without credentials or query"));
            }
        }
        if s.region.is_empty() {
            return Err(ConfigError::invalid("export.s3.region", "is empty"));
        }
        if s.request_timeout_ms == 0 {
            return Err(ConfigError::invalid("export.s3.request_timeout_ms", "must be > 0"));
        }
        if s.max_backoff_ms < 1000 {
            return Err(ConfigError::invalid("export.s3.max_backoff_ms", "must be at least 1000"));
        }
        let secret = |file: &Path, key: &str| -> Result<Secret, ConfigError> {
            let p = base.join(file);
            Secret::resolve(None, Some(&p), key, key)?.ok_or_else(|| ConfigError::invalid(key, "is empty"))
        };
        let ca_pem = match &s.ca_file {
            Some(f) => {
                let p = base.join(f);
                Some(
                    std::fs::read(&p)
                        .map_err(|e| ConfigError::invalid("export.s3.ca_file", format!("cannot read {}: {e}", p.display())))?,
                )
            }
            None => None,
        };
        Ok(S3Config {
            bucket: s.bucket,
            prefix: s.prefix,
            endpoint: s.endpoint.map(|e| e.trim_end_matches('/').to_string()),
            region: s.region,
            access_key_id: secret(&s.access_key_id_file, "export.s3.access_key_id_file")?,
            secret_access_key: secret(&s.secret_access_key_file, "export.s3.secret_access_key_file")?,
            path_style: s.path_style,
            keep_local: s.keep_local,
            ca_pem,
            request_timeout: Duration::from_millis(s.request_timeout_ms),
            max_backoff: Duration::from_millis(s.max_backoff_ms),
        })
    }

    /// The object key of a file name.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            format!("{}{name}", self.prefix)
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

/// S3 bucket naming rules (the subset every store accepts).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, base: &Path) -> Result<ExportConfig, ConfigError> {
        let s: ExportSection = toml::from_str(text).map_err(|e| ConfigError::invalid("toml", e))?;
        ExportConfig::from_section(s, base)
    }

    #[test]
    fn bridge_columns_need_the_header() {
        let dir = Path::new("/tmp");
        assert!(load("dir = \"x\"\nbridge_columns = true\n", dir).unwrap().bridge_columns);
        let e = load("dir = \"x\"\nbridge_columns = true\nheader = false\n", dir).unwrap_err();
        assert!(e.to_string().contains("export.bridge_columns"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = load("dir = \"export\"\n", Path::new("/etc/cb")).unwrap();
        assert_eq!(c.dir, Path::new("/etc/cb/export"));
        assert_eq!(c.slice, Duration::from_secs(1800));
        assert_eq!(c.close_after, Duration::from_secs(300));
        assert!(c.header && !c.include_org);
        assert_eq!(c.gzip, Some(1));
        assert_eq!(c.formulas, Formulas::Neutralised);
        assert_eq!(c.access, FileAccess { file_mode: Some(0o640), group: None });
        assert_eq!((c.max_past, c.max_future), (Duration::from_secs(7 * 86_400), Duration::from_secs(3600)));
        assert!(c.s3.is_none());
        let raw = load("dir = \"export\"\nescape_formulas = false\n", Path::new("/etc/cb")).unwrap();
        assert_eq!(raw.formulas, Formulas::Verbatim);
    }

    #[test]
    fn slice_lengths_align_to_the_hour() {
        for ok in [1, 5, 10, 15, 20, 30, 60, 120, 180, 360, 720, 1440] {
            assert!(slice_minutes_valid(ok), "{ok}");
        }
        for bad in [0, 7, 45, 90, 100, 300, 2880] {
            assert!(!slice_minutes_valid(bad), "{bad}");
        }
        let e = load("dir = \"x\"\nslice_minutes = 45\n", Path::new("/")).unwrap_err();
        assert_eq!(e.key(), Some("export.slice_minutes"));
        for (extra, key) in
            [("max_past_hours = 0\n", "export.max_past_hours"), ("max_future_minutes = 20000\n", "export.max_future_minutes")]
        {
            assert_eq!(load(&format!("dir = \"x\"\n{extra}"), Path::new("/")).unwrap_err().key(), Some(key), "{extra}");
        }
    }

    #[test]
    fn s3_credentials_come_from_files_and_bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ak"), "AKID\n").unwrap();
        std::fs::write(dir.path().join("sk"), "SECRET\n").unwrap();
        let base = "dir = \"x\"\n[s3]\nbucket = \"calls\"\naccess_key_id_file = \"ak\"\nsecret_access_key_file = \"sk\"\n";
        let c = load(&format!("{base}endpoint = \"http://127.0.0.1:9000/\"\nprefix = \"le\"\n"), dir.path()).unwrap();
        let s3 = c.s3.unwrap();
        assert_eq!(s3.access_key_id.expose(), "AKID");
        assert_eq!(s3.secret_access_key.expose(), "SECRET");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.key("a.csv.gz"), "le/a.csv.gz");
        assert!(!format!("{s3:?}").contains("SECRET"));
        for (extra, key) in [
            ("endpoint = \"ftp://x\"\n", "export.s3.endpoint"),
            ("endpoint = \"http://user:pw@x\"\n", "export.s3.endpoint"),
            ("prefix = \"/abs\"\n", "export.s3.prefix"),
            ("max_backoff_ms = 10\n", "export.s3.max_backoff_ms"),
        ] {
            assert_eq!(load(&format!("{base}{extra}"), dir.path()).unwrap_err().key(), Some(key), "{extra}");
        }
        let bad_bucket = base.replace("calls", "Calls_");
        assert_eq!(load(&bad_bucket, dir.path()).unwrap_err().key(), Some("export.s3.bucket"));
        let missing = base.replace("\"sk\"", "\"nope\"");
        assert_eq!(load(&missing, dir.path()).unwrap_err().key(), Some("export.s3.secret_access_key_file"));
    }
}
