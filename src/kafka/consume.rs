//! Consuming: one reader per topic partition turns fetched messages back
//! into records and hands them to the pipeline as [`Batch`]es whose
//! acknowledgement advances the partition's durable position
//! ([`Offsets`]): at-least-once end to end.
//!
//! A message's value is a record as an edge bridge's `[kafka]` sink wrote
//! it (the `ndjson` shape, or an `ecls` stream message); both are read
//! whatever the hub's own settings, and the bridge's fields are kept:
//! `ingestion_time` and `sync_delay_ms` as the edge measured them, and the
//! edge's `host`. A value that is not a record is counted and logged with
//! its topic, partition and offset, and its offset is passed (bad input is
//! data, never a stop).
//!
//! Records borrow from the fetched values, copied once into one buffer per
//! batch (the [`RecordSource`] the records of a batch borrow from). A
//! fetch is decoded and sent in batches of at most 256 KiB of values, each
//! sent (waiting for room in the memory budget) before the next is
//! decoded, and the reader waits for room before it fetches: decoded
//! records take about five times the bytes of short messages, so what a
//! reader holds beside the budget stays about one file chunk's worth.
//! Positions stay at fetch boundaries (the last batch of a fetch moves
//! it), which every broker reads correctly.
//!
//! A `host` longer than an edge may have ([`MAX_HOST_BYTES`]) is cut to
//! that length (counted and logged by the observer): one hostile producer
//! cannot make the hub keep (and show) megabytes per record.
//!
//! Decoded records go through the hub's `[enrich]` (lookups, then the one
//! masking rule of [`crate::mask`]) as records read from files do, before
//! any sink or the telemetry sees them: an edge that does not mask cannot
//! make a masking hub show a secret.
//!
//! **Resets.** The brokers number a partition's messages; a topic deleted
//! and created again, or brokers that lost their log, number new messages
//! from 0 again, below the hub's saved position. Reading on from the saved
//! position would skip every new message until the offsets passed it. So
//! the reader checks that the log still holds what it read
//! ([`check_log`]): when it starts, after every failed request (an outage
//! is when logs are lost), whenever the log's end is below its position
//! (or above it while a fetch returns nothing), and when data comes after
//! an empty fetch (a topic re-created and
//! refilled between two fetches; one extra request per quiet spell, none
//! while data flows). The check compares the log end with the position and the
//! message before the position with the checksum kept with it
//! ([`message_crc`]). A reset is logged as `TOPIC RESET`, reported to the
//! observer (`/status`, `lag`), and the partition is read again from
//! `read_from` of the new log (the earliest message by default, so nothing
//! produced after the reset is skipped). Not detectable: a partition
//! re-created and refilled past the position while its last message read
//! has been deleted by retention (nothing is left to compare).

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;
use tokio_util::sync::CancellationToken;

use super::offsets::{message_crc, Offsets, Partition, Resume, Witness};
use crate::enrich::Enricher;
use crate::logsafe::Escaped;
use crate::parse::json::{self, MessageSeed, RecordSeed};
use crate::parse::normalize::{self, Finish};
use crate::parse::{Reject, RejectReason};
use crate::pipeline::{Batch, Fanout, RecordSource, Records, Unsent};
use crate::record::Record;
use crate::settings::ReadFrom;
pub use crate::settings::MAX_HOST_BYTES;
use crate::time::now_ms;

/// The least a reader waits after an empty fetch before the next.
const MIN_IDLE: Duration = Duration::from_millis(10);

/// Records read through Kafka are taken as the edge wrote them: nothing
/// re-derived, `log_type` kept.
const FINISH_KAFKA: Finish = Finish { ids_from_request_id: false, force_ml: false };

/// What [`decode`] found in one message value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Records pushed.
    pub records: usize,
    /// Of these, records whose `host` was cut to [`MAX_HOST_BYTES`].
    pub hosts_cut: usize,
}

/// Parses one message value into its records (one for the `ndjson` shape,
/// those of `data` for an `ecls` message), keeping the bridge's fields; a
/// `host` over [`MAX_HOST_BYTES`] is cut to that length.
pub fn decode<'a>(value: &'a [u8], out: &mut Vec<Record<'a>>) -> Result<Decoded, Reject> {
    let text = std::str::from_utf8(value).map_err(|e| Reject::new(RejectReason::InvalidUtf8, e.to_string()))?;
    let before = out.len();
    let res = if json::looks_like_message(text) {
        json::deserialize_line(text, MessageSeed { out: &mut *out, bridge: true })
    } else {
        json::deserialize_line(text, RecordSeed { out: &mut *out, bridge: true })
    };
    let res = res.and_then(|()| out[before..].iter_mut().try_for_each(|r| normalize::finish(r, FINISH_KAFKA)));
    if let Err(e) = res {
        out.truncate(before);
        return Err(e);
    }
    let hosts_cut = out[before..].iter_mut().map(|r| cap_host(&mut r.host)).filter(|&cut| cut).count();
    Ok(Decoded { records: out.len() - before, hosts_cut })
}

/// Cuts `host` to at most [`MAX_HOST_BYTES`] (at a character boundary);
/// true when it was longer.
fn cap_host(host: &mut std::borrow::Cow<'_, str>) -> bool {
    if host.len() <= MAX_HOST_BYTES {
        return false;
    }
    let mut end = MAX_HOST_BYTES;
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    match host {
        std::borrow::Cow::Borrowed(s) => *host = std::borrow::Cow::Borrowed(&s[..end]),
        std::borrow::Cow::Owned(s) => s.truncate(end),
    }
    true
}

/// What one partition reader needs.
#[derive(Clone)]
pub struct ReaderSettings {
    /// Bytes asked for per fetch (`fetch_max_bytes`).
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch open waiting for data
    /// (`fetch_max_wait_ms`).
    pub fetch_max_wait: Duration,
    /// One request's time limit.
    pub request_timeout: Duration,
    /// Where a partition with no position starts, and where a reset
    /// partition starts again.
    pub read_from: ReadFrom,
    /// First retry delay after a failed fetch; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// The bridge's `[enrich]` (lookups, and masking of `api_key` and
    /// `oauth_access_token`), applied to every decoded record as file
    /// readers apply it: `None` when it changes nothing.
    pub enricher: Option<Arc<Enricher>>,
}

/// A partition's log that no longer holds what the hub read there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The hub's position in the old log.
    pub position: i64,
    /// The new log's end (the offset of its next message).
    pub log_end: i64,
    /// Where reading starts again (`read_from` of the new log).
    pub restart_at: i64,
    /// What showed it, for the log.
    pub why: String,
}

/// What a reader reports besides its batches (telemetry is wired by the
/// caller).
pub trait Observer: Send + Sync + 'static {
    /// A batch of `records` read at `observed_ms`.
    fn read(&self, records: &[Record<'_>], observed_ms: i64);
    /// A message that is not a record.
    fn rejected(&self, partition: &Partition, offset: i64, reject: &Reject);
    /// `n` records of the message at `offset` had a `host` longer than
    /// [`MAX_HOST_BYTES`], cut to that length.
    fn hosts_cut(&self, partition: &Partition, offset: i64, n: usize);
    /// A fetch failed (`None`: fetching works again).
    fn failing(&self, partition: &Partition, error: Option<&str>);
    /// Messages were gone before they were read (retention deleted them).
    fn lost(&self, partition: &Partition, from: i64, to: i64);
    /// The partition's log was reset (logged by the reader): it is read
    /// again from `reset.restart_at`.
    fn reset(&self, partition: &Partition, reset: &Reset);
}

/// Whether a partition's log still holds what was read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCheck {
    /// It does (or nothing is left to compare).
    Holds,
    /// It was reset: the log ends at `log_end`, and `why`.
    Reset {
        /// The log's end now.
        log_end: i64,
        /// What showed it.
        why: String,
    },
}

/// Asks the brokers whether `pc`'s log still holds what was read before
/// `at`: its end (the high watermark of a fetch: brokers answer offset
/// lookups of the latest offset less reliably) must not be below
/// `at.next`, and the witness message must be the one read at its offset
/// (same [`message_crc`]), and the log must give it back when asked for
/// its offset. An end below the position (or the witness's offset) and a
/// witness not given back are looked at twice, `CONFIRM_AFTER` apart,
/// before they count (a new partition leader may answer with a stale
/// state for a moment). A witness deleted by retention (its offset below
/// the log's start) leaves nothing to compare: that is not a reset.
pub async fn check_log(pc: &PartitionClient, at: Resume, settings: &ReaderSettings) -> Result<LogCheck, String> {
    let probe = at.witness.map_or(at.next, |w| w.offset);
    let fetch = |offset: i64| async move {
        match tokio::time::timeout(settings.request_timeout, pc.fetch_records(offset, 1..settings.fetch_max_bytes.max(2), 0)).await {
            Ok(r) => r,
            Err(_) => Err(KafkaError::Timeout),
        }
    };
    let mut confirmed = false;
    loop {
        return match fetch(probe).await {
            Ok((_, log_end)) if log_end < at.next => {
                if !confirmed {
                    confirmed = true;
                    tokio::time::sleep(CONFIRM_AFTER).await;
                    continue;
                }
                Ok(LogCheck::Reset { log_end, why: format!("the log ends at offset {log_end}, below the saved position {}", at.next) })
            }
            Ok((records, log_end)) => match (at.witness, records.first()) {
                (None, _) => Ok(LogCheck::Holds),
                (Some(w), Some(r)) if r.offset == probe => {
                    if w.crc == message_crc(r.record.key.as_deref(), r.record.value.as_deref(), r.record.timestamp.timestamp_millis()) {
                        Ok(LogCheck::Holds)
                    } else {
                        Ok(LogCheck::Reset { log_end, why: format!("the message at offset {probe} is not the one read there") })
                    }
                }
                // The log goes on past the witness's offset (its end is at
                // least the position) but does not give the witness back.
                // An intact log returns it: the client drops what a broker
                // sends before the offset asked for, and the witness was
                // read at the start of what a fetch returned. So this is
                // another log (tansu returns the next record batch for an
                // offset inside one, or nothing when it is in the last).
                // Looked at twice, as an end below the position is. A
                // topic compacted or written with transactions could look
                // the same: reading it again then repeats records, it never
                // skips any.
                (Some(_), _) => {
                    if !confirmed {
                        confirmed = true;
                        tokio::time::sleep(CONFIRM_AFTER).await;
                        continue;
                    }
                    Ok(LogCheck::Reset { log_end, why: format!("the log no longer holds the message read at offset {probe}") })
                }
            },
            Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
                let earliest = match tokio::time::timeout(settings.request_timeout, pc.get_offset(OffsetAt::Earliest)).await {
                    Ok(Ok(o)) => o,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("no answer to the offset lookup".into()),
                };
                if earliest > probe {
                    // Deleted by retention: the reader reports the loss.
                    return Ok(LogCheck::Holds);
                }
                if !confirmed {
                    confirmed = true;
                    tokio::time::sleep(CONFIRM_AFTER).await;
                    continue;
                }
                let log_end = fetch(earliest).await.map_or(earliest, |(_, end)| end);
                Ok(LogCheck::Reset { log_end, why: format!("offset {probe} is beyond the log's end ({log_end})") })
            }
            Err(e) => Err(e.to_string()),
        };
    }
}

/// How long a log end below the position is given to come back before it
/// counts as a reset.
const CONFIRM_AFTER: Duration = Duration::from_millis(500);

/// `read_from` as the config spells it.
fn read_from_name(r: ReadFrom) -> &'static str {
    match r {
        ReadFrom::Beginning => "beginning",
        ReadFrom::End => "end",
    }
}

/// Looks up the offset `read_from` names in the partition's log.
async fn first_offset(pc: &PartitionClient, settings: &ReaderSettings) -> Result<i64, String> {
    let at = match settings.read_from {
        ReadFrom::Beginning => OffsetAt::Earliest,
        ReadFrom::End => OffsetAt::Latest,
    };
    match tokio::time::timeout(settings.request_timeout, pc.get_offset(at)).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer to the offset lookup".into()),
    }
}

/// Reads one partition until `stop`: fetch, decode, send to the pipeline
/// (waiting while a sink's queue is full), resume after the last batch
/// sent. Failures are retried with backoff for as long as it takes; a
/// reset log is read again from `read_from` (see the module doc).
pub async fn read_partition(
    pc: Arc<PartitionClient>,
    offsets: Offsets,
    fanout: Fanout,
    settings: ReaderSettings,
    source: Arc<str>,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) {
    let p: Partition = (pc.topic().to_string(), pc.partition());
    let mut delay = settings.retry_initial;
    let mut failing = false;
    // Whether the log must be checked before the next fetch: at the start
    // (the topic may have been re-created while the hub was down), after a
    // failure, and when the log's end went below the position.
    let mut check = true;
    // Whether data after an empty fetch must be checked first: a topic
    // re-created and refilled past the position between two fetches
    // shows only there (the message before the position differs).
    let mut verify_data = false;
    let fail = |failing: &mut bool, delay: &mut Duration, e: &str| {
        if !*failing {
            tracing::warn!(topic = %Escaped(&p.0), partition = p.1, error = %Escaped(e), "kafka source: fetching fails; retrying with backoff");
        }
        observer.failing(&p, Some(e));
        *failing = true;
        let d = *delay;
        *delay = (*delay * 2).min(settings.retry_max);
        d
    };
    // A failed step: counted and logged by `fail`, then the loop starts
    // over after the backoff (or the reader ends on `stop`), checking the
    // log first.
    macro_rules! retry_later {
        ($reason:expr) => {{
            let d = fail(&mut failing, &mut delay, $reason);
            check = true;
            if sleep_or_stop(d, &stop).await {
                return;
            }
            continue;
        }};
    }
    loop {
        let at = match offsets.resume_at(&p) {
            Some(at) => at,
            None => match first_offset(&pc, &settings).await {
                Ok(o) => {
                    offsets.start_at(&p, o);
                    Resume { next: o, witness: None }
                }
                Err(e) => retry_later!(&e),
            },
        };
        if check {
            let checked = tokio::select! {
                _ = stop.cancelled() => return,
                c = check_log(&pc, at, &settings) => c,
            };
            tracing::debug!(topic = %Escaped(&p.0), partition = p.1, position = at.next, witness = ?at.witness, result = ?checked, "kafka source: log checked");
            match checked {
                Ok(LogCheck::Holds) => {
                    check = false;
                    verify_data = false;
                }
                Ok(LogCheck::Reset { log_end, why }) => match restart(&pc, &p, at, log_end, why, &settings, &offsets, &*observer).await {
                    Ok(()) => {
                        check = false;
                        continue;
                    }
                    Err(e) => retry_later!(&e),
                },
                Err(e) => retry_later!(&e),
            }
        }
        // As a file reader: wait for room in the memory budget before
        // reading more (records not yet delivered stay bounded).
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = fanout.budget().room() => {}
        }
        let offset = at.next;
        let wait_ms = settings.fetch_max_wait.as_millis().min(i32::MAX as u128) as i32;
        let fetch = pc.fetch_records(offset, 1..settings.fetch_max_bytes.max(2), wait_ms);
        let asked = std::time::Instant::now();
        let fetched = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(settings.request_timeout + settings.fetch_max_wait, fetch) => r,
        };
        let (fetched, high_watermark) = match fetched {
            Ok(Ok(r)) => r,
            Ok(Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. })) => {
                // The broker no longer has `offset` (retention deleted it
                // before it was read), or never had it (a reset log that
                // ends below it: the check finds out).
                match tokio::time::timeout(settings.request_timeout, pc.get_offset(OffsetAt::Earliest)).await {
                    Ok(Ok(earliest)) if earliest > offset => {
                        tracing::error!(
                            topic = %Escaped(&p.0), partition = p.1, from = offset, to = earliest,
                            "kafka source: RECORDS LOST: messages were deleted by the brokers before they were read"
                        );
                        observer.lost(&p, offset, earliest);
                        skip(&offsets, &p, earliest);
                    }
                    Ok(Ok(_)) => check = true,
                    _ => retry_later!("offset out of range, and no answer to the offset lookup"),
                }
                continue;
            }
            Ok(Err(e)) => retry_later!(&e.to_string()),
            Err(_) => retry_later!("no answer to the fetch"),
        };
        if failing {
            tracing::info!(topic = %Escaped(&p.0), partition = p.1, "kafka source: fetching works again");
            observer.failing(&p, None);
            failing = false;
        }
        delay = settings.retry_initial;
        // The broker may return messages before `offset` (a compressed
        // set is returned whole): those were read already.
        let fetched: Vec<_> = fetched.into_iter().filter(|r| r.offset >= offset).collect();
        if fetched.is_empty() {
            if high_watermark < offset {
                // The log ends below the position: check it (at once).
                check = true;
                continue;
            }
            if high_watermark > offset {
                // The log holds messages from the position on but gave
                // none: the position may fall inside a record batch of
                // another log (tansu then answers nothing at all). Check
                // it before the next fetch (after the idle wait).
                check = true;
            }
            // Nothing new. A broker that answers an empty fetch at once
            // (one that does not hold it open for `fetch_max_wait_ms`)
            // must not make this loop spin.
            verify_data = true;
            let idle = settings.fetch_max_wait.saturating_sub(asked.elapsed()).max(MIN_IDLE);
            if sleep_or_stop(idle, &stop).await {
                return;
            }
            continue;
        }
        if verify_data {
            let checked = tokio::select! {
                _ = stop.cancelled() => return,
                c = check_log(&pc, at, &settings) => c,
            };
            tracing::debug!(topic = %Escaped(&p.0), partition = p.1, position = at.next, witness = ?at.witness, result = ?checked, "kafka source: log checked before new data");
            match checked {
                Ok(LogCheck::Holds) => verify_data = false,
                Ok(LogCheck::Reset { log_end, why }) => match restart(&pc, &p, at, log_end, why, &settings, &offsets, &*observer).await {
                    Ok(()) => continue,
                    Err(e) => retry_later!(&e),
                },
                Err(e) => retry_later!(&e),
            }
        }
        let first = &fetched[0];
        let witness = Witness {
            offset: first.offset,
            crc: message_crc(first.record.key.as_deref(), first.record.value.as_deref(), first.record.timestamp.timestamp_millis()),
        };
        // One batch per [`BATCH_BYTES`] of values, each sent (waiting for
        // room in the memory budget) before the next is decoded: decoded
        // records take about five times the bytes of short messages, so a
        // large fetch is never decoded whole at once. Only the last batch
        // moves the position (to the fetch's end): a position inside a
        // record batch is read wrongly by some brokers (tansu answers the
        // next record batch, skipping the rest of that one), so after a
        // stop between the batches of one fetch the whole fetch is read
        // again (repeated, never skipped).
        let fetch_end = Resume { next: fetched[fetched.len() - 1].offset + 1, witness: Some(witness) };
        let mut rest = &fetched[..];
        while !rest.is_empty() {
            let mut bytes = 0;
            let n = rest
                .iter()
                .position(|r| {
                    bytes += r.record.value.as_ref().map_or(0, Vec::len);
                    bytes > BATCH_BYTES
                })
                .map_or(rest.len(), |i| i.max(1));
            let (group, tail) = rest.split_at(n);
            rest = tail;
            let end = if rest.is_empty() { fetch_end } else { at };
            if !send_group(group, end, &p, &settings, &offsets, &fanout, &source, &*observer, &stop).await {
                return;
            }
        }
    }
}

/// The values of one pipeline batch at most (about a file reader's chunk).
const BATCH_BYTES: usize = 256 << 10;

/// Decodes `group` into a batch and sends it to the pipeline; its
/// acknowledgement (with those of the batches before it) moves the
/// position to `end`. False when reading must
/// stop (`stop`, or the pipeline closed); the batch is then withdrawn.
#[allow(clippy::too_many_arguments)]
async fn send_group(
    group: &[RecordAndOffset],
    end: Resume,
    p: &Partition,
    settings: &ReaderSettings,
    offsets: &Offsets,
    fanout: &Fanout,
    source: &Arc<str>,
    observer: &dyn Observer,
    stop: &CancellationToken,
) -> bool {
    let observed_ms = now_ms();
    let mut data = Vec::with_capacity(group.iter().map(|r| r.record.value.as_ref().map_or(0, Vec::len)).sum());
    let mut spans = Vec::with_capacity(group.len());
    for r in group {
        let start = data.len();
        data.extend_from_slice(r.record.value.as_deref().unwrap_or_default());
        spans.push((r.offset, start, data.len()));
    }
    let mut rejects = Vec::new();
    let mut cut = Vec::new();
    let enricher = settings.enricher.as_deref();
    let tables = enricher.map(Enricher::tables).unwrap_or_default();
    let records = Records::borrowing(RecordSource { data, tables, host: Arc::default() }, |s| {
        let mut out = Vec::with_capacity(spans.len());
        for &(offset, a, b) in &spans {
            let first = out.len();
            let decoded = decode(&s.data[a..b], &mut out);
            if let Some(e) = enricher {
                // What the edge sent is masked here as a file record is
                // when read: no output of the hub sees the secret.
                for rec in &mut out[first..] {
                    e.enrich(&s.tables, rec);
                }
            }
            match decoded {
                Ok(d) if d.hosts_cut > 0 => cut.push((offset, d.hosts_cut)),
                Ok(_) => {}
                Err(r) => rejects.push((offset, r)),
            }
        }
        out
    });
    for (o, r) in &rejects {
        observer.rejected(p, *o, r);
    }
    for (o, n) in cut {
        observer.hosts_cut(p, o, n);
    }
    observer.read(records.as_slice(), observed_ms);
    let ticket = offsets.register(p, end);
    let batch = Batch::new(source.clone(), records, observed_ms, None);
    match fanout.send_under_ticket(offsets, ticket, batch, |_| {}, stop.cancelled()).await {
        Ok(()) => true,
        Err(Unsent::Closed(e)) => {
            tracing::error!(error = %e, "kafka source: the pipeline is closed; stopping");
            false
        }
        // No sink has the batch (the send is all or nothing): it is read
        // again.
        Err(Unsent::Cancelled) => false,
    }
}

/// A reset found by [`check_log`] at `at`: logged loudly, reported, and
/// the partition's position moved to `read_from` of the new log (`End`:
/// its end). Fails when the earliest offset cannot be looked up.
#[allow(clippy::too_many_arguments)]
async fn restart(
    pc: &PartitionClient,
    p: &Partition,
    at: Resume,
    log_end: i64,
    why: String,
    settings: &ReaderSettings,
    offsets: &Offsets,
    observer: &dyn Observer,
) -> Result<(), String> {
    let restart_at = match settings.read_from {
        ReadFrom::End => log_end,
        ReadFrom::Beginning => first_offset(pc, settings).await?,
    };
    let reset = Reset { position: at.next, log_end, restart_at, why };
    tracing::error!(
        topic = %Escaped(&p.0), partition = p.1, position = reset.position, log_end, restart_at, read_from = read_from_name(settings.read_from),
        why = %reset.why,
        "kafka source: TOPIC RESET: the partition's log no longer holds what the hub read (the topic was re-created, or the brokers lost their log); reading it again from read_from; messages of the old log the hub had not read yet are lost"
    );
    observer.reset(p, &reset);
    offsets.reset(p, restart_at);
    Ok(())
}

/// Moves a partition's position forward to `to` (messages before it are
/// gone), through an acknowledged empty batch so it is written.
fn skip(offsets: &Offsets, p: &Partition, to: i64) {
    let t = offsets.register(p, Resume { next: to, witness: None });
    offsets.ack(&t);
}

/// Sleeps `d`; true when `stop` came first.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Field, Shape};
    use std::borrow::Cow;

    #[test]
    fn both_shapes_decode_with_the_bridge_fields_kept() {
        let mut r = Record::new_ml();
        r.set(Field::RequestUuid, "u-1");
        r.set(Field::Bytes, "113");
        r.set(Field::LogType, "ML");
        r.set_request_time_ms(1_555_710_203_000);
        r.stamp_observed(1_555_710_204_234);
        r.sync_delay_ms = Some(-25);
        r.host = Cow::Borrowed("edge \"a\"");
        let mut nd = Vec::new();
        r.write_json(Shape::Ndjson, &mut nd);
        let mut ecls = Vec::new();
        crate::record::write_ecls_message([&r], &mut ecls);
        for value in [&nd, &ecls] {
            let mut out = Vec::new();
            assert_eq!(decode(value, &mut out).unwrap(), Decoded { records: 1, hosts_cut: 0 });
            assert_eq!(out.len(), 1);
            let d = &out[0];
            assert_eq!(d.get(Field::RequestUuid), "u-1");
            assert_eq!(d.get(Field::Bytes), "113");
            assert_eq!(d.ingestion_time, Some(1_555_710_204_234), "{}", String::from_utf8_lossy(value));
            assert_eq!(d.sync_delay_ms, Some(-25));
            assert_eq!(d.host, "edge \"a\"");
            assert_eq!(d.request_time_ms, Some(1_555_710_203_000));
        }
        let mut out = Vec::new();
        assert_eq!(decode(b"{\"data\":[", &mut out).unwrap_err().reason, RejectReason::BadJson);
        assert_eq!(decode(b"\xff", &mut out).unwrap_err().reason, RejectReason::InvalidUtf8);
        assert_eq!(decode(b"{\"request_time\":\"2019-04-19T21:56:43Z\"}", &mut out).unwrap_err().reason, RejectReason::BadField);
        assert!(out.is_empty(), "a rejected value leaves nothing behind");
    }

    #[test]
    fn a_host_longer_than_an_edge_may_have_is_cut() {
        let long = "é".repeat(200);
        let t = "\"request_time\":\"2019-04-19T21:56:43Z\"";
        let value =
            format!("{{\"data\":[{{{t},\"request_uuid\":\"u\",\"host\":\"{long}\"}},{{{t},\"request_uuid\":\"v\",\"host\":\"edge\"}}]}}");
        let mut out = Vec::new();
        assert_eq!(decode(value.as_bytes(), &mut out).unwrap(), Decoded { records: 2, hosts_cut: 1 });
        assert_eq!(out[0].host.len(), 254, "cut at a character boundary at most {MAX_HOST_BYTES} bytes");
        assert!(long.starts_with(&*out[0].host));
        assert_eq!(out[1].host, "edge");
        // An escaped host (owned) is cut too.
        let value = format!("{{{t},\"request_uuid\":\"u\",\"host\":\"\\u0041{}\"}}", "x".repeat(70_000));
        let mut out = Vec::new();
        assert_eq!(decode(value.as_bytes(), &mut out).unwrap().hosts_cut, 1);
        assert_eq!((out[0].host.len(), &out[0].host[..2]), (MAX_HOST_BYTES, "Ax"));
    }
}
