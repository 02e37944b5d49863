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
//! batch (the [`RecordSource`] the records of a batch borrow from).

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use tokio_util::sync::CancellationToken;

use super::offsets::{Offsets, Partition};
use crate::logsafe::Escaped;
use crate::parse::json::{self, MessageSeed, RecordSeed};
use crate::parse::normalize::{self, Finish};
use crate::parse::{Reject, RejectReason};
use crate::pipeline::{Batch, Fanout, RecordSource, Records};
use crate::record::Record;
use crate::settings::ReadFrom;
use crate::time::now_ms;

/// The least a reader waits after an empty fetch before the next.
const MIN_IDLE: Duration = Duration::from_millis(10);

/// Records read through Kafka are taken as the edge wrote them: nothing
/// re-derived, `log_type` kept.
const FINISH_KAFKA: Finish = Finish { ids_from_request_id: false, force_ml: false };

/// Parses one message value into its records (one for the `ndjson` shape,
/// those of `data` for an `ecls` message), keeping the bridge's fields.
pub fn decode<'a>(value: &'a [u8], out: &mut Vec<Record<'a>>) -> Result<(), Reject> {
    let text = std::str::from_utf8(value).map_err(|e| Reject::new(RejectReason::InvalidUtf8, e.to_string()))?;
    let before = out.len();
    let res = if json::looks_like_message(text) {
        json::deserialize_line(text, MessageSeed { out: &mut *out, bridge: true })
    } else {
        json::deserialize_line(text, RecordSeed { out: &mut *out, bridge: true })
    };
    let res = res.and_then(|()| out[before..].iter_mut().try_for_each(|r| normalize::finish(r, FINISH_KAFKA)));
    if res.is_err() {
        out.truncate(before);
    }
    res
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
    /// Where a partition with no position starts.
    pub read_from: ReadFrom,
    /// First retry delay after a failed fetch; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// What a reader reports besides its batches (telemetry is wired by the
/// caller).
pub trait Observer: Send + Sync + 'static {
    /// A batch of `records` read at `observed_ms`.
    fn read(&self, records: &[Record<'_>], observed_ms: i64);
    /// A message that is not a record.
    fn rejected(&self, partition: &Partition, offset: i64, reject: &Reject);
    /// A fetch failed (`None`: fetching works again).
    fn failing(&self, partition: &Partition, error: Option<&str>);
    /// Messages were gone before they were read (retention deleted them).
    fn lost(&self, partition: &Partition, from: i64, to: i64);
}

/// Reads one partition until `stop`: fetch, decode, send to the pipeline
/// (waiting while a sink's queue is full), resume after the last batch
/// sent. Failures are retried with backoff for as long as it takes.
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
    // over after the backoff (or the reader ends on `stop`).
    macro_rules! retry_later {
        ($reason:expr) => {{
            let d = fail(&mut failing, &mut delay, $reason);
            if sleep_or_stop(d, &stop).await {
                return;
            }
            continue;
        }};
    }
    loop {
        let offset = match offsets.resume(&p) {
            Some(o) => o,
            None => {
                let at = match settings.read_from {
                    ReadFrom::Beginning => OffsetAt::Earliest,
                    ReadFrom::End => OffsetAt::Latest,
                };
                match tokio::time::timeout(settings.request_timeout, pc.get_offset(at)).await {
                    Ok(Ok(o)) => {
                        offsets.start_at(&p, o);
                        o
                    }
                    Ok(Err(e)) => retry_later!(&e.to_string()),
                    Err(_) => retry_later!("no answer to the offset lookup"),
                }
            }
        };
        let wait_ms = settings.fetch_max_wait.as_millis().min(i32::MAX as u128) as i32;
        let fetch = pc.fetch_records(offset, 1..settings.fetch_max_bytes.max(2), wait_ms);
        let asked = std::time::Instant::now();
        let fetched = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(settings.request_timeout + settings.fetch_max_wait, fetch) => r,
        };
        let fetched = match fetched {
            Ok(Ok((records, _high_watermark))) => records,
            Ok(Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. })) => {
                // The broker no longer has `offset` (retention deleted it
                // before it was read) or never had it: go on from the
                // earliest message kept, loudly.
                match tokio::time::timeout(settings.request_timeout, pc.get_offset(OffsetAt::Earliest)).await {
                    Ok(Ok(earliest)) if earliest > offset => {
                        tracing::error!(
                            topic = %Escaped(&p.0), partition = p.1, from = offset, to = earliest,
                            "kafka source: RECORDS LOST: messages were deleted by the brokers before they were read"
                        );
                        observer.lost(&p, offset, earliest);
                        skip(&offsets, &p, earliest);
                    }
                    Ok(Ok(earliest)) => {
                        tracing::error!(
                            topic = %Escaped(&p.0), partition = p.1, position = offset, earliest,
                            "kafka source: the saved position is beyond what the brokers hold (was the topic re-created?); reading from the earliest message"
                        );
                        skip(&offsets, &p, earliest);
                    }
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
        let Some(end) = fetched.last().map(|r| r.offset + 1) else {
            // Nothing new. A broker that answers an empty fetch at once
            // (one that does not hold it open for `fetch_max_wait_ms`)
            // must not make this loop spin.
            let idle = settings.fetch_max_wait.saturating_sub(asked.elapsed()).max(MIN_IDLE);
            if sleep_or_stop(idle, &stop).await {
                return;
            }
            continue;
        };
        let observed_ms = now_ms();
        let mut data = Vec::with_capacity(fetched.iter().map(|r| r.record.value.as_ref().map_or(0, Vec::len)).sum());
        let mut spans = Vec::with_capacity(fetched.len());
        for r in &fetched {
            let start = data.len();
            data.extend_from_slice(r.record.value.as_deref().unwrap_or_default());
            spans.push((r.offset, start, data.len()));
        }
        let mut rejects = Vec::new();
        let records = Records::borrowing(RecordSource { data, tables: Arc::default(), host: Arc::default() }, |s| {
            let mut out = Vec::with_capacity(spans.len());
            for &(offset, a, b) in &spans {
                if let Err(r) = decode(&s.data[a..b], &mut out) {
                    rejects.push((offset, r));
                }
            }
            out
        });
        for (o, r) in &rejects {
            observer.rejected(&p, *o, r);
        }
        observer.read(records.as_slice(), observed_ms);
        let ticket = offsets.register(&p, end);
        if records.is_empty() {
            offsets.ack(&ticket);
            continue;
        }
        let acked = {
            let (o, t) = (offsets.clone(), ticket.clone());
            Box::new(move || {
                o.ack(&t);
            })
        };
        let batch = Batch::new(source.clone(), records, observed_ms, Some(acked));
        tokio::select! {
            r = fanout.send(batch) => if let Err(e) = r {
                tracing::error!(error = %e, "kafka source: the pipeline is closed; stopping");
                offsets.withdraw(&ticket);
                return;
            },
            _ = stop.cancelled() => {
                // No sink has the batch (the send is all or nothing): it
                // is read again.
                offsets.withdraw(&ticket);
                return;
            }
        }
    }
}

/// Moves a partition's position forward to `to` (messages before it are
/// gone), through an acknowledged empty batch so it is written.
fn skip(offsets: &Offsets, p: &Partition, to: i64) {
    let t = offsets.register(p, to);
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
            decode(value, &mut out).unwrap();
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
}
