//! Statistics of the local Call Log Stream channel (WebSocket), beyond the
//! generic [`crate::telemetry::SinkStats`]: connections, refusals, closes by reason,
//! frames written and the append-to-frame-written delay per connection.
//!
//! Updated by `sink::channel` only; read by status and metrics through
//! `ChannelHandle::stats`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::telemetry::delay::{DelayHistogram, HistogramSnapshot};

/// At most this many recent frame-delay samples are kept; older ones fall
/// out first, so memory is bounded whatever the rate.
pub const MAX_DELAY_SAMPLES: usize = 4096;

/// Statistics of the channel. Cheap to clone.
#[derive(Clone, Default)]
pub struct ChannelStats(Arc<ChannelInner>);

/// The shared state behind [`ChannelStats`].
#[derive(Default)]
pub struct ChannelInner {
    /// Connections open now.
    pub connections_active: AtomicI64,
    /// Connections upgraded since start.
    pub connections_accepted: AtomicU64,
    /// Handshakes refused for a missing or wrong token (HTTP 401).
    pub refused_unauthorized: AtomicU64,
    /// Handshakes refused for an unknown path (HTTP 404).
    pub refused_not_found: AtomicU64,
    /// Handshakes refused for bad query parameters (HTTP 400).
    pub refused_bad_request: AtomicU64,
    /// Handshakes refused because `max_connections` were open (HTTP 503).
    pub refused_full: AtomicU64,
    /// Requests that were not a WebSocket handshake (HTTP 426 or 405).
    pub refused_not_websocket: AtomicU64,
    /// Handshakes not done within the handshake timeout (TLS included).
    pub handshake_timeout: AtomicU64,
    /// Pending handshakes closed to make room for a newer connection (the
    /// listener was full of sockets that said nothing).
    pub handshake_evicted: AtomicU64,
    /// Connections closed because they could not keep up.
    pub closed_slow_consumer: AtomicU64,
    /// Connections closed because they stopped answering pings.
    pub closed_ping_timeout: AtomicU64,
    /// Connections closed because the token changed.
    pub closed_token_changed: AtomicU64,
    /// Connections closed with 1001 because the bridge shut down.
    pub closed_shutdown: AtomicU64,
    /// Connections closed for a protocol violation (1002, 1007, 1009).
    pub closed_protocol_error: AtomicU64,
    /// Connections the client closed (or dropped).
    pub closed_by_client: AtomicU64,
    /// `{"data":...}` messages written.
    pub messages_sent: AtomicU64,
    /// Records written to clients (a record sent to 3 clients counts 3).
    pub records_sent: AtomicU64,
    /// Records written as `?since=` replay.
    pub records_replayed: AtomicU64,
    /// `{"lost":...}` notices sent to clients asking for evicted records.
    pub lost_notices: AtomicU64,
    /// Records held in the replay ring.
    pub ring_records: AtomicU64,
    /// Bytes of JSON held in the replay ring.
    pub ring_bytes: AtomicU64,
    /// The newest sequence number assigned (0 = none yet).
    pub last_seq: AtomicU64,
    /// Recent (written_ms, written_ms - observed_ms) samples: how long
    /// after the bridge read a record its frame was written to a client.
    pub recent_frame_delays: Mutex<VecDeque<(i64, i64)>>,
    /// Frame delays (written - observed) since start, one observation per
    /// record written (the channel sink's delivery delay in `/metrics`).
    pub frame_delay_hist: DelayHistogram,
}

impl std::ops::Deref for ChannelStats {
    type Target = ChannelInner;
    fn deref(&self) -> &ChannelInner {
        &self.0
    }
}

impl ChannelStats {
    /// Adds 1 to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `messages` messages holding `records` records, the newest observed
    /// at `observed_ms`, were written (flushed) at `written_ms`.
    /// The delay (written − observed) is that of the newest record of the
    /// flush, so for a replay or a burst it is a lower bound.
    pub fn frames_written(&self, messages: usize, records: usize, observed_ms: i64, written_ms: i64) {
        self.0.messages_sent.fetch_add(messages as u64, Ordering::Relaxed);
        self.0.records_sent.fetch_add(records as u64, Ordering::Relaxed);
        let d = written_ms - observed_ms;
        if records > 0 {
            self.0.frame_delay_hist.observe_n(d, records as u64);
            self.0.frame_delay_hist.add_sum(d.saturating_mul(records as i64));
        }
        let mut s = self.0.recent_frame_delays.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == MAX_DELAY_SAMPLES {
            s.pop_front();
        }
        s.push_back((written_ms, d));
    }

    /// The frame-delay histogram since start (per record written).
    pub fn frame_delay_histogram(&self) -> HistogramSnapshot {
        self.0.frame_delay_hist.snapshot()
    }

    /// The delay of the last frame written, if any.
    pub fn last_frame_delay_ms(&self) -> Option<i64> {
        self.0.recent_frame_delays.lock().unwrap_or_else(|e| e.into_inner()).back().map(|&(_, d)| d)
    }

    /// Recent frame delays (written - observed, ms) of frames written at or
    /// after `since_ms`.
    pub fn frame_delays_since(&self, since_ms: i64) -> Vec<i64> {
        let s = self.0.recent_frame_delays.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().filter(|(t, _)| *t >= since_ms).map(|&(_, d)| d).collect()
    }

    /// The ring now holds `records` records of `bytes` bytes, the newest
    /// numbered `last_seq`.
    pub fn ring(&self, records: usize, bytes: u64, last_seq: u64) {
        self.0.ring_records.store(records as u64, Ordering::Relaxed);
        self.0.ring_bytes.store(bytes, Ordering::Relaxed);
        self.0.last_seq.store(last_seq, Ordering::Relaxed);
    }
}
