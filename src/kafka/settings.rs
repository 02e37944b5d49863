//! The two Kafka sections: `[kafka]` (the sink of an edge bridge) and
//! `[[source]] kind = "kafka"` (the source of a hub), each read as written
//! (serde, unknown keys refused) and then checked into typed settings
//! whose errors name the key. Tasks never see `*_ms: u64`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::client::{ClientSection, ClientSettings, SaslMechanism};
use super::message::{Format, KeyField};
use super::produce::Compression;
use crate::delivery::{Defaults, Settings, DEFAULTS};
use crate::settings::{ConfigError, ReadFrom};

/// The `[kafka]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// The topic records go to.
    pub topic: String,
    /// The value's shape: `ndjson` (default) or `ecls`.
    #[serde(default)]
    pub format: Format,
    /// The record field whose value is the message key.
    #[serde(default = "default_key_field")]
    pub key_field: String,
    /// `none`, `gzip`, `lz4` (default), `snappy` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long a request waits for more records before it is sent.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// A request is sent at this many bytes of messages (before
    /// compression); keep it under the brokers' `message.max.bytes`.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// ... or at this many messages.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Requests in flight at once.
    #[serde(default = "crate::delivery::settings::default::max_in_flight")]
    pub max_in_flight: usize,
    /// First retry delay; doubles up to `retry_max_ms`, with jitter.
    #[serde(default = "crate::delivery::settings::default::retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Messages the brokers refuse for good; default
    /// `<state_dir>/kafka-dead-letter.ndjson`.
    #[serde(default)]
    pub dead_letter_file: Option<PathBuf>,
    /// Rotate the dead-letter file before it would pass this size.
    #[serde(default = "crate::delivery::settings::default::dead_letter_rotate_bytes")]
    pub dead_letter_rotate_bytes: u64,
    /// Rotated dead-letter files kept.
    #[serde(default = "crate::delivery::settings::default::dead_letter_keep_files")]
    pub dead_letter_keep_files: usize,
    /// SIGTERM grace period to send what is batched.
    #[serde(default = "crate::delivery::settings::default::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Disk spool bound during long outages (`<state_dir>/kafka-spool/`);
    /// 0 turns the spool off (an outage then only pauses reading).
    #[serde(default = "crate::delivery::settings::default::spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// How long the brokers must have been failing before requests go to
    /// the spool (and are acknowledged) instead of waiting in memory while
    /// reading pauses.
    #[serde(default = "crate::delivery::settings::default::spool_after_ms")]
    pub spool_after_ms: u64,
    /// The client id the brokers see.
    #[serde(default)]
    pub client_id: Option<String>,
    /// No longer a key of this section: read only to refuse it with a
    /// message saying where it went (the top-level `host`, which names the
    /// bridge on every record, not only on Kafka messages).
    #[serde(default)]
    pub host: Option<String>,
    /// Connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// Extra CA certificates (PEM).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// `plain`, `scram-sha-256` or `scram-sha-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// File holding the SASL password.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// One request's time limit (a produce until every in-sync replica
    /// has the messages).
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

fn default_key_field() -> String {
    "request_uuid".into()
}
/// The Kafka sink's delivery defaults: the engine's table
/// ([`crate::delivery::DEFAULTS`]) but for requests of up to 10,000
/// messages and 900 KiB, under the brokers' default `message.max.bytes`
/// (1 MiB; compression only makes a request smaller), a 50 ms linger, and
/// a longest retry delay of 30 s.
pub const SINK_DEFAULTS: Defaults =
    Defaults { batch_max_records: 10_000, batch_max_bytes: 900 << 10, flush_interval_ms: 50, retry_max_ms: 30_000, ..DEFAULTS };

fn default_linger_ms() -> u64 {
    SINK_DEFAULTS.flush_interval_ms
}
fn default_batch_max_bytes() -> usize {
    SINK_DEFAULTS.batch_max_bytes
}
fn default_batch_max_records() -> usize {
    SINK_DEFAULTS.batch_max_records
}
fn default_retry_max_ms() -> u64 {
    SINK_DEFAULTS.retry_max_ms
}
/// The Kafka source's first retry delay.
fn default_retry_initial_ms() -> u64 {
    DEFAULTS.retry_initial_ms
}

/// The `[kafka]` sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// How to reach the cluster.
    pub client: ClientSettings,
    /// The topic.
    pub topic: String,
    /// The value's shape.
    pub format: Format,
    /// The key's field.
    pub key_field: KeyField,
    /// Message compression.
    pub compression: Compression,
    /// Batching (`linger_ms`), retries, spool, dead letters, shutdown.
    pub delivery: Settings,
}

/// The section name.
pub const SINK_SECTION: &str = "kafka";

impl SinkConfig {
    /// The settings of a `[kafka]` section: paths resolved against
    /// `base`, files read, values checked; errors name the key.
    pub fn from_section(s: SinkSection, base: &Path) -> Result<SinkConfig, ConfigError> {
        let key = |name: &str| format!("{SINK_SECTION}.{name}");
        let client = ClientSettings::from_section(
            ClientSection {
                brokers: s.brokers,
                client_id: s.client_id.unwrap_or_else(|| super::client::DEFAULT_CLIENT_ID.to_string()),
                tls: s.tls,
                ca_file: s.ca_file,
                client_cert: s.client_cert,
                client_key: s.client_key,
                sasl_mechanism: s.sasl_mechanism,
                sasl_username: s.sasl_username,
                sasl_password_file: s.sasl_password_file,
                request_timeout_ms: s.request_timeout_ms.unwrap_or(DEFAULTS.request_timeout_ms),
            },
            SINK_SECTION,
            base,
        )?;
        check_topic(&s.topic).map_err(|m| ConfigError::invalid(key("topic"), m))?;
        let key_field = KeyField::from_name(&s.key_field).ok_or_else(|| {
            ConfigError::invalid(
                key("key_field"),
                format!("`{}` is not a record field (e.g. request_uuid, service_id, api_key, host)", s.key_field),
            )
        })?;
        if s.host.is_some() {
            return Err(ConfigError::invalid(
                key("host"),
                "moved: set the top-level `host` instead (before the first [section]); it names the bridge on every record it reads, not only on Kafka messages",
            ));
        }
        let delivery = Settings::from_knobs(crate::knobs!(s, linger_ms), SINK_SECTION, base)?;
        Ok(SinkConfig { client, topic: s.topic, format: s.format, key_field, compression: s.compression, delivery })
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(t: &str) -> Result<(), &'static str> {
    if t.is_empty() || t.len() > 249 || t == "." || t == ".." {
        return Err("a topic name is 1 to 249 characters, not `.` or `..`");
    }
    if !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err("a topic name holds only letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

/// A `[[source]] kind = "kafka"` section as written (without `kind` and
/// `name`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// The topics to read (every partition of each).
    pub topics: Vec<String>,
    /// Names the consumer's positions (kept under `state_dir`).
    pub group_id: String,
    /// Where a partition with no position starts: `beginning` (default:
    /// nothing is lost) or `end`.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Bytes asked for per fetch and partition. The client holds a fetch
    /// decoded into one allocation per message, and the reader decodes
    /// and sends it in batches of 256 KiB of values: 256 KiB (a file
    /// reader's chunk) keeps what readers hold beside the memory budget
    /// small. A larger value means fewer round trips.
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: u32,
    /// How long the brokers may hold a fetch open waiting for data.
    #[serde(default = "default_fetch_max_wait_ms")]
    pub fetch_max_wait_ms: u64,
    /// How often the topics' partitions are looked up again (partitions
    /// added later are read from then on).
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u64,
    /// First retry delay after a failure; doubles up to `retry_max_ms`.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[serde(default = "default_source_retry_max_ms")]
    pub retry_max_ms: u64,
    /// The client id the brokers see.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// Extra CA certificates (PEM).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// `plain`, `scram-sha-256` or `scram-sha-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// File holding the SASL password.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// One request's time limit.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Source hosts tracked with their own entry (statistics, a row in
    /// `/status`); records of more hosts are counted under one entry.
    #[serde(default = "default_max_hosts")]
    pub max_hosts: usize,
    /// A source host that sent nothing for this long makes room.
    #[serde(default = "default_host_idle_expiry_ms")]
    pub host_idle_expiry_ms: u64,
}

fn default_max_hosts() -> usize {
    256
}
fn default_host_idle_expiry_ms() -> u64 {
    24 * 3600 * 1000
}
fn default_fetch_max_bytes() -> u32 {
    256 << 10
}
fn default_fetch_max_wait_ms() -> u64 {
    500
}
fn default_metadata_refresh_ms() -> u64 {
    30_000
}
fn default_source_retry_max_ms() -> u64 {
    10_000
}

/// A Kafka source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// How to reach the cluster.
    pub client: ClientSettings,
    /// The topics.
    pub topics: Vec<String>,
    /// The positions' namespace.
    pub group_id: String,
    /// Where a new partition starts.
    pub read_from: ReadFrom,
    /// Bytes per fetch.
    pub fetch_max_bytes: i32,
    /// Long-poll time of a fetch (`fetch_max_wait_ms`).
    pub fetch_max_wait: Duration,
    /// Partition lookup interval (`metadata_refresh_ms`).
    pub metadata_refresh: Duration,
    /// First retry delay (`retry_initial_ms`).
    pub retry_initial: Duration,
    /// Longest retry delay (`retry_max_ms`).
    pub retry_max: Duration,
    /// Source hosts tracked at most (`max_hosts`).
    pub max_hosts: usize,
    /// A host idle this long makes room (`host_idle_expiry_ms`).
    pub host_idle_expiry: Duration,
}

impl SourceConfig {
    /// The settings of a Kafka source section named `key` (`source[1]`).
    pub fn from_section(s: SourceSection, key: &str, base: &Path) -> Result<SourceConfig, ConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        let client = ClientSettings::from_section(
            ClientSection {
                brokers: s.brokers,
                client_id: s.client_id.unwrap_or_else(|| super::client::DEFAULT_CLIENT_ID.to_string()),
                tls: s.tls,
                ca_file: s.ca_file,
                client_cert: s.client_cert,
                client_key: s.client_key,
                sasl_mechanism: s.sasl_mechanism,
                sasl_username: s.sasl_username,
                sasl_password_file: s.sasl_password_file,
                request_timeout_ms: s.request_timeout_ms.unwrap_or(10_000),
            },
            key,
            base,
        )?;
        if s.topics.is_empty() {
            return Err(ConfigError::invalid(k("topics"), "name at least one topic"));
        }
        for t in &s.topics {
            check_topic(t).map_err(|m| ConfigError::invalid(k("topics"), format!("`{t}`: {m}")))?;
        }
        if s.group_id.is_empty() || s.group_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(k("group_id"), "must be non-empty printable text"));
        }
        if !(1024..=i32::MAX as u32).contains(&s.fetch_max_bytes) {
            return Err(ConfigError::invalid(k("fetch_max_bytes"), "must be at least 1024"));
        }
        if s.retry_initial_ms == 0 {
            return Err(ConfigError::invalid(k("retry_initial_ms"), "must be at least 1"));
        }
        if s.retry_max_ms < s.retry_initial_ms {
            return Err(ConfigError::invalid(k("retry_max_ms"), "must be >= retry_initial_ms"));
        }
        if s.metadata_refresh_ms < 100 {
            return Err(ConfigError::invalid(k("metadata_refresh_ms"), "must be at least 100"));
        }
        if !(1..=100_000).contains(&s.max_hosts) {
            return Err(ConfigError::invalid(k("max_hosts"), "must be from 1 to 100000 (each host costs about 40 KiB)"));
        }
        if s.host_idle_expiry_ms < 1000 {
            return Err(ConfigError::invalid(k("host_idle_expiry_ms"), "must be at least 1000"));
        }
        Ok(SourceConfig {
            client,
            topics: s.topics,
            group_id: s.group_id,
            read_from: s.read_from,
            fetch_max_bytes: s.fetch_max_bytes as i32,
            fetch_max_wait: Duration::from_millis(s.fetch_max_wait_ms),
            metadata_refresh: Duration::from_millis(s.metadata_refresh_ms),
            retry_initial: Duration::from_millis(s.retry_initial_ms),
            retry_max: Duration::from_millis(s.retry_max_ms),
            max_hosts: s.max_hosts,
            host_idle_expiry: Duration::from_millis(s.host_idle_expiry_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Field;

    fn sink(text: &str) -> Result<SinkConfig, ConfigError> {
        let s: SinkSection = toml::from_str(text).map_err(|e| ConfigError::invalid("kafka", e))?;
        SinkConfig::from_section(s, Path::new(""))
    }

    fn source(text: &str) -> Result<SourceConfig, ConfigError> {
        let s: SourceSection = toml::from_str(text).map_err(|e| ConfigError::invalid("source", e))?;
        SourceConfig::from_section(s, "source[1]", Path::new(""))
    }

    #[test]
    fn sink_defaults_and_checks_name_the_key() {
        let c = sink("brokers = [\"k:9092\"]\ntopic = \"calls\"").unwrap();
        assert_eq!((c.format, c.key_field, c.compression), (Format::Ndjson, KeyField::Field(Field::RequestUuid), Compression::Lz4));
        assert_eq!((c.delivery.flush_interval, c.client.request_timeout), (Duration::from_millis(50), Duration::from_secs(30)));
        assert_eq!(
            (c.delivery.spool_max_bytes, c.delivery.spool_after),
            (1 << 30, Duration::from_secs(30)),
            "the spool is on by default, as upstream's"
        );
        let c = sink("brokers = [\"k:9092\"]\ntopic = \"calls\"\nspool_max_bytes = 0\nspool_after_ms = 1500").unwrap();
        assert_eq!((c.delivery.spool_max_bytes, c.delivery.spool_after), (0, Duration::from_millis(1500)));
        let c = sink("brokers = [\"k:9092\"]\ntopic = \"calls\"\nkey_field = \"service_id\"\nformat = \"ecls\"\ncompression = \"zstd\"")
            .unwrap();
        assert_eq!((c.format, c.key_field, c.compression), (Format::Ecls, KeyField::Field(Field::ServiceId), Compression::Zstd));
        let key = |t: &str| sink(t).unwrap_err().key().map(str::to_string);
        let b = "brokers = [\"k:9092\"]\n";
        assert_eq!(key(&format!("{b}topic = \"a b\"")), Some("kafka.topic".into()));
        assert_eq!(key(&format!("{b}topic = \"t\"\nkey_field = \"nope\"")), Some("kafka.key_field".into()));
        assert_eq!(key(&format!("{b}topic = \"t\"\nbatch_max_bytes = 10")), Some("kafka.batch_max_bytes".into()));
        assert_eq!(key(&format!("{b}topic = \"t\"\nretry_max_ms = 1")), Some("kafka.retry_max_ms".into()));
        assert_eq!(key("brokers = []\ntopic = \"t\""), Some("kafka.brokers".into()));
        // `host` moved to the top level: refused here, naming the key and
        // where it went.
        let e = sink(&format!("{b}topic = \"t\"\nhost = \"edge-a\"")).unwrap_err();
        assert_eq!(e.key(), Some("kafka.host"));
        assert!(e.to_string().contains("top-level `host`"), "{e}");
        assert!(toml::from_str::<SinkSection>(&format!("{b}topic = \"t\"\nacks = 1")).is_err(), "unknown keys are refused");
        assert!(toml::from_str::<SinkSection>(&format!("{b}topic = \"t\"\ncompression = \"brotli\"")).is_err());
    }

    #[test]
    fn source_defaults_and_checks_name_the_key() {
        let c = source("brokers = [\"k:9092\"]\ntopics = [\"calls\"]\ngroup_id = \"hub\"").unwrap();
        assert_eq!((c.read_from, c.fetch_max_bytes, c.fetch_max_wait), (ReadFrom::Beginning, 256 << 10, Duration::from_millis(500)));
        assert_eq!((c.max_hosts, c.host_idle_expiry), (256, Duration::from_secs(86_400)));
        let key = |t: &str| source(t).unwrap_err().key().map(str::to_string);
        let b = "brokers = [\"k:9092\"]\n";
        assert_eq!(key(&format!("{b}topics = []\ngroup_id = \"g\"")), Some("source[1].topics".into()));
        assert_eq!(key(&format!("{b}topics = [\"t\"]\ngroup_id = \"\"")), Some("source[1].group_id".into()));
        assert_eq!(key(&format!("{b}topics = [\"t\"]\ngroup_id = \"g\"\nfetch_max_bytes = 1")), Some("source[1].fetch_max_bytes".into()));
        assert_eq!(key("brokers = [\"k\"]\ntopics = [\"t\"]\ngroup_id = \"g\""), Some("source[1].brokers".into()));
        assert_eq!(key(&format!("{b}topics = [\"t\"]\ngroup_id = \"g\"\nmax_hosts = 0")), Some("source[1].max_hosts".into()));
        assert_eq!(
            key(&format!("{b}topics = [\"t\"]\ngroup_id = \"g\"\nhost_idle_expiry_ms = 5")),
            Some("source[1].host_idle_expiry_ms".into())
        );
    }
}
