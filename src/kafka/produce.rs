//! Producing: one request's messages (a run of [`Units`]) sent to the
//! topic's partitions with `acks = all`, and the answers classified into
//! the delivery engine's [`Outcome`] vocabulary, so the engine retries,
//! spools and dead-letters Kafka messages as it does every sink's records
//! (the Kafka sink's transport).
//!
//! Invariant: only this module decides which broker answers are retried
//! (connection errors, timeouts, leader changes, an unknown topic, refused
//! credentials), split (a message set too large) or dead-lettered (a
//! single message too large, or refused by the broker's policy).
//!
//! A request's messages are grouped by partition (keyed ones as Kafka's
//! clients place them, unkeyed ones all on one partition chosen in turn
//! per request) and the partitions are produced to at once. A record is
//! delivered when the leader has it and every in-sync replica
//! acknowledged it (`acks = all`). The client has no idempotent producer:
//! a produce whose answer is lost (a timeout, a broker restart) is sent
//! again, so the topic may hold that request's messages twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression as KafkaCompression, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;

use super::client::{connect, ClientSettings};
use super::message::{message, partition_for};
use crate::delivery::{Item, Outcome, Units};

/// How often the partition count is looked up again (partitions added to
/// the topic are used from then on).
const METADATA_REFRESH: Duration = Duration::from_secs(60);

/// Message compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip (level 6; the most widely supported, and the slowest).
    Gzip,
    /// LZ4: fast, a good ratio on JSON.
    #[default]
    Lz4,
    /// Snappy.
    Snappy,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The name as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
            Compression::Zstd => "zstd",
        }
    }

    fn client(self) -> KafkaCompression {
        match self {
            Compression::None => KafkaCompression::NoCompression,
            Compression::Gzip => KafkaCompression::Gzip,
            Compression::Lz4 => KafkaCompression::Lz4,
            Compression::Snappy => KafkaCompression::Snappy,
            Compression::Zstd => KafkaCompression::Zstd,
        }
    }
}

/// A connection and the topic's partitions.
struct Connected {
    /// One client per partition (each follows its partition's leader).
    partitions: Vec<Arc<PartitionClient>>,
    /// When the partition count was looked up.
    checked: Instant,
    /// Kept for the metadata lookups.
    client: Arc<Client>,
}

/// Sends messages to one topic.
pub struct Producer {
    /// How to reach the cluster.
    settings: ClientSettings,
    /// The topic.
    topic: String,
    /// Message compression.
    compression: Compression,
    /// The connection, made on first use and again after it failed.
    state: tokio::sync::Mutex<Option<Connected>>,
    /// The partition for the next request's unkeyed messages.
    next_unkeyed: AtomicUsize,
    /// The brokers and topic, for logs.
    destination: String,
}

impl Producer {
    /// A producer for `topic`; it connects when first used.
    pub fn new(settings: ClientSettings, topic: String, compression: Compression) -> Producer {
        let destination = format!("{}/{}", settings.for_logs(), topic);
        Producer { settings, topic, compression, state: tokio::sync::Mutex::new(None), next_unkeyed: AtomicUsize::new(0), destination }
    }

    /// The brokers and topic, for logs.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The topic's partition clients, connecting (or looking the
    /// partitions up again) when needed. The error is a reason to retry.
    async fn partitions(&self) -> Result<Vec<Arc<PartitionClient>>, String> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.as_ref() {
            if c.checked.elapsed() < METADATA_REFRESH {
                return Ok(c.partitions.clone());
            }
        }
        let client = match state.take() {
            Some(c) => c.client,
            None => Arc::new(connect(&self.settings).await.map_err(|e| format!("cannot connect: {e}"))?),
        };
        let timeout = self.settings.request_timeout;
        let topics = match tokio::time::timeout(timeout, client.list_topics()).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(format!("cannot list the topics: {e}")),
            Err(_) => return Err(format!("no metadata answer within {timeout:?}")),
        };
        let Some(topic) = topics.into_iter().find(|t| t.name == self.topic) else {
            return Err(format!("the topic `{}` does not exist on the brokers (create it, or let the brokers create topics)", self.topic));
        };
        let n = topic.partitions.iter().max().map_or(0, |m| *m as usize + 1);
        let mut partitions = Vec::with_capacity(n);
        for p in 0..n as i32 {
            let pc = tokio::time::timeout(timeout, client.partition_client(self.topic.clone(), p, UnknownTopicHandling::Error)).await;
            match pc {
                Ok(Ok(pc)) => partitions.push(Arc::new(pc)),
                Ok(Err(e)) => return Err(format!("partition {p}: no leader: {e}")),
                Err(_) => return Err(format!("partition {p}: no leader found within {timeout:?}")),
            }
        }
        if partitions.is_empty() {
            return Err(format!("the topic `{}` has no partitions", self.topic));
        }
        *state = Some(Connected { partitions: partitions.clone(), checked: Instant::now(), client });
        Ok(partitions)
    }

    /// Forgets the partition clients (the next attempt looks them up
    /// again): after an answer that says the topic changed.
    async fn forget(&self) {
        if let Some(c) = self.state.lock().await.as_mut() {
            c.checked = Instant::now() - METADATA_REFRESH;
        }
    }

    /// Drops the connection (the next attempt connects again): after a
    /// request got no answer in time. A broker that is alive but stuck
    /// would otherwise find every retry queued behind the first on the
    /// same connection and append them all once it goes on: a new
    /// connection cannot send before the broker answers its handshake,
    /// so each message waits there at most once.
    async fn disconnect(&self) {
        *self.state.lock().await = None;
    }

    /// Sends every message of `units` and says what became of each.
    pub async fn attempt(&self, units: &Units) -> Outcome {
        let partitions = match self.partitions().await {
            Ok(p) => p,
            Err(reason) => return Outcome::Retry { reason, after: None },
        };
        let n = partitions.len();
        let unkeyed = self.next_unkeyed.fetch_add(1, Ordering::Relaxed) % n;
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut items = vec![Item::Retry; units.len()];
        for (i, item) in items.iter_mut().enumerate() {
            match message(units, i) {
                Ok(m) => by_partition[m.key.map_or(unkeyed, |k| partition_for(k, n))].push(i),
                Err(e) => *item = Item::Rejected { status: 0, error: e.to_string() },
            }
        }
        let sends = by_partition
            .iter()
            .enumerate()
            .filter(|(_, ix)| !ix.is_empty())
            .map(|(p, ix)| produce(&partitions[p], units, ix, self.compression, self.settings.request_timeout));
        let mut reasons = Vec::new();
        let (mut stale, mut broken) = (false, false);
        for (answers, reason) in join_all(sends).await {
            for (i, item) in answers {
                items[i] = item;
            }
            if let Some(r) = reason {
                stale |= r.stale;
                broken |= r.broken;
                reasons.push(r.text);
            }
        }
        if broken {
            self.disconnect().await;
        } else if stale {
            self.forget().await;
        }
        let done = items.iter().filter(|i| **i == Item::Done).count();
        let retry = items.iter().filter(|i| **i == Item::Retry).count();
        let reason = reasons.first().cloned().unwrap_or_default();
        if done == items.len() {
            Outcome::Delivered
        } else if retry == items.len() {
            Outcome::Retry { reason, after: None }
        } else {
            let reason = format!("{done} of {} messages acknowledged; {reason}", items.len());
            Outcome::Partial { items, reason }
        }
    }
}

/// Why a partition's produce failed, for the log.
struct Failure {
    /// The reason.
    text: String,
    /// The partition's leader or the topic may have changed: look the
    /// partitions up again.
    stale: bool,
    /// The request got no answer: drop the connection.
    broken: bool,
}

/// Produces the messages `ix` of `units` to one partition; splits a set
/// the broker finds too large until single messages remain.
async fn produce(
    pc: &PartitionClient,
    units: &Units,
    ix: &[usize],
    compression: Compression,
    timeout: Duration,
) -> (Vec<(usize, Item)>, Option<Failure>) {
    let mut out = Vec::with_capacity(ix.len());
    let mut failure = None;
    let mut stack = vec![ix];
    while let Some(ix) = stack.pop() {
        let records = ix.iter().filter_map(|&i| message(units, i).ok().map(to_record)).collect::<Vec<_>>();
        let answer = tokio::time::timeout(timeout, pc.produce(records, compression.client())).await;
        let err = match answer {
            Ok(Ok(_)) => {
                out.extend(ix.iter().map(|&i| (i, Item::Done)));
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                out.extend(ix.iter().map(|&i| (i, Item::Retry)));
                failure.get_or_insert(Failure {
                    text: format!("partition {}: no acknowledgement within {timeout:?}", pc.partition()),
                    stale: false,
                    broken: true,
                });
                continue;
            }
        };
        match classify(&err) {
            Class::TooLarge if ix.len() > 1 => {
                let (a, b) = ix.split_at(ix.len() / 2);
                stack.push(b);
                stack.push(a);
            }
            Class::TooLarge | Class::Refused => {
                let (status, error) = (error_code(&err), crate::logsafe::clip(&err.to_string(), 300).to_string());
                out.extend(ix.iter().map(|&i| (i, Item::Rejected { status, error: error.clone() })));
            }
            Class::Retry { stale, hint } => {
                out.extend(ix.iter().map(|&i| (i, Item::Retry)));
                failure.get_or_insert(Failure { text: format!("partition {}: {err}{hint}", pc.partition()), stale, broken: false });
            }
        }
    }
    (out, failure)
}

/// What a failed produce means for its messages.
enum Class {
    /// The message set is larger than the broker takes.
    TooLarge,
    /// The broker refuses these messages for good.
    Refused,
    /// Try again later.
    Retry {
        /// Look the partitions up again first.
        stale: bool,
        /// What the operator should do, if anything.
        hint: &'static str,
    },
}

fn classify(e: &KafkaError) -> Class {
    match e {
        KafkaError::ServerError { protocol_error, .. } => match protocol_error {
            ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge => Class::TooLarge,
            ProtocolError::InvalidRecord | ProtocolError::PolicyViolation | ProtocolError::InvalidTimestamp => Class::Refused,
            ProtocolError::TopicAuthorizationFailed
            | ProtocolError::ClusterAuthorizationFailed
            | ProtocolError::SaslAuthenticationFailed => {
                Class::Retry { stale: false, hint: " (the brokers refuse the credentials: fix them, then `systemctl reload`)" }
            }
            ProtocolError::UnknownTopicOrPartition | ProtocolError::NotLeaderOrFollower | ProtocolError::LeaderNotAvailable => {
                Class::Retry { stale: true, hint: "" }
            }
            _ => Class::Retry { stale: false, hint: "" },
        },
        _ => Class::Retry { stale: false, hint: "" },
    }
}

/// The Kafka error code of a broker's refusal (0 when there is none).
fn error_code(e: &KafkaError) -> u16 {
    match e {
        KafkaError::ServerError { protocol_error, .. } => match protocol_error {
            ProtocolError::MessageTooLarge => 10,
            ProtocolError::RecordListTooLarge => 18,
            ProtocolError::InvalidTimestamp => 32,
            ProtocolError::PolicyViolation => 44,
            ProtocolError::InvalidRecord => 87,
            _ => 0,
        },
        _ => 0,
    }
}

/// A message as the client sends it.
fn to_record(m: super::message::Message<'_>) -> rskafka::record::Record {
    rskafka::record::Record {
        key: m.key.map(<[u8]>::to_vec),
        value: Some(m.value.to_vec()),
        headers: m.headers.iter().map(|(k, v)| ((*k).to_string(), v.to_vec())).collect::<BTreeMap<_, _>>(),
        timestamp: now_timestamp(),
    }
}

/// The message timestamp (create time): now, from the system clock. Built
/// from `SystemTime` because the chrono the client re-exports is compiled
/// without its clock.
fn now_timestamp() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
