//! Figures of the local Call Log Stream channel (WebSocket) beyond the
//! generic [`SinkStats`]: connections, refusals and closes by reason,
//! frames written, what the replay log holds.
//!
//! They are declared in the channel's section of the telemetry figures
//! ([`crate::telemetry::figures`]), so `/status` (`channel`, after the
//! endpoint the dashboard subscribes to) and `/metrics`
//! (`calllog_bridge_channel_*`) show them with no channel code in
//! telemetry. The channel acknowledges a batch when it appends it to the
//! replay log ([`SinkStats::handed_over`]); its delivery delay is measured when
//! a frame is written to a client ([`ChannelStats::frames_written`],
//! [`SinkStats::reached_consumer`]). Updated by `sink::channel` only.
//!
//! Per channel (the default one under its `channel_id`, each stream under
//! its id: the `channel` label, bounded by the config): connections,
//! records sent, records its filter left out, `lost` notices and
//! slow-consumer closes ([`StreamStats`]), and the connections of each
//! token (`token` label: its label or digest prefix, never the token).
//! A channel removed by a reload leaves these families.

use std::sync::Arc;

use super::replay;
use crate::telemetry::{ChannelInfo, Counter, Figures, Gauge, SinkStats, Telemetry};

/// Statistics of the channel. Cheap to clone.
#[derive(Clone)]
pub struct ChannelStats(Arc<ChannelInner>);

/// The figure handles behind [`ChannelStats`] (each one relaxed atomic).
pub struct ChannelInner {
    /// The channel's section of figures (its endpoint goes there too).
    figures: Figures,
    /// The channel sink's generic statistics (its delivery delay).
    sink: SinkStats,
    /// Connections open now.
    pub connections_active: Gauge,
    /// Connections upgraded since start.
    pub connections_accepted: Counter,
    /// Handshakes refused for a missing or wrong token (HTTP 401).
    pub refused_unauthorized: Counter,
    /// Handshakes refused for an unknown path (HTTP 404).
    pub refused_not_found: Counter,
    /// Handshakes refused for bad query parameters (HTTP 400).
    pub refused_bad_request: Counter,
    /// Handshakes refused because `max_connections` were open (HTTP 503).
    pub refused_full: Counter,
    /// Requests that were not a WebSocket handshake (HTTP 426 or 405).
    pub refused_not_websocket: Counter,
    /// Handshakes not done within the handshake timeout (TLS included).
    pub handshake_timeout: Counter,
    /// Pending handshakes closed to make room for a newer connection (the
    /// listener was full of sockets that said nothing).
    pub handshake_evicted: Counter,
    /// Connections closed because what they still had to read fell out of
    /// the replay log's retention.
    pub closed_slow_consumer: Counter,
    /// Connections closed because they stopped answering pings.
    pub closed_ping_timeout: Counter,
    /// Connections closed because their token was removed by a reload.
    pub closed_token_revoked: Counter,
    /// Connections closed with 1001 because the bridge shut down.
    pub closed_shutdown: Counter,
    /// Connections closed for a protocol violation (1002, 1007, 1009).
    pub closed_protocol_error: Counter,
    /// Connections the client closed (or dropped).
    pub closed_by_client: Counter,
    /// Connections closed because their replay log segment could not be
    /// read (1011).
    pub closed_replay_error: Counter,
    /// `{"data":...}` messages written.
    pub messages_sent: Counter,
    /// Records written to clients (a record sent to 3 clients counts 3).
    pub records_sent: Counter,
    /// Records written as `?since=` replay.
    pub records_replayed: Counter,
    /// `{"lost":...}` notices sent to clients (records evicted, or
    /// destroyed by damage in the replay log).
    pub lost_notices: Counter,
    /// Notices sent to clients asking from a sequence number beyond the
    /// newest (another history).
    pub since_ahead_notices: Counter,
    /// Bytes of the replay log's segment files.
    pub replay_bytes: Gauge,
    /// Segment files of the replay log.
    pub replay_segments: Gauge,
    /// Records in the replay log.
    pub replay_records: Gauge,
    /// The oldest sequence number the replay log holds.
    pub replay_first_seq: Gauge,
    /// Age of the oldest record in the replay log, seconds (0 = empty).
    pub replay_oldest_age_secs: Gauge,
    /// Bytes of the replay log's hot tail in memory.
    pub replay_hot_bytes: Gauge,
    /// Segments truncated to their last whole record at start (torn or
    /// corrupt tail).
    pub replay_repaired_segments: Counter,
    /// Bytes dropped doing so.
    pub replay_repaired_bytes: Counter,
    /// Records found destroyed by damage in the replay log (skipped;
    /// clients get a lost notice), each counted once.
    pub replay_damaged_records: Counter,
    /// The newest sequence number assigned (0 = none yet).
    pub last_seq: Gauge,
    /// Connections closed because their token passed its `not_after`.
    pub closed_token_expired: Counter,
    /// Connections closed because their channel was removed or changed
    /// by a reload.
    pub closed_channel_changed: Counter,
}

/// One channel's figures (the `channel` label).
#[derive(Clone, Debug)]
pub struct StreamStats {
    /// Connections open now.
    pub connections: Gauge,
    /// Records written to its clients (once per client).
    pub records_sent: Counter,
    /// Records its filter left out (counted once per record).
    pub records_filtered: Counter,
    /// `lost` notices sent to its clients.
    pub lost_notices: Counter,
    /// Its connections closed as slow consumers.
    pub closed_slow_consumer: Counter,
}

/// Help texts of the per-channel families.
const BY_CHANNEL: [(&str, &str); 5] = [
    ("connections_by_channel", "WebSocket connections open now, by channel"),
    ("records_sent_by_channel", "Records written to clients, by channel (once per client)"),
    ("records_filtered_by_channel", "Records the channel's filter left out, by channel"),
    ("lost_notices_by_channel", "Lost notices sent to clients, by channel"),
    ("slow_consumer_closes_by_channel", "Connections closed as slow consumers, by channel"),
];

impl std::ops::Deref for ChannelStats {
    type Target = ChannelInner;
    fn deref(&self) -> &ChannelInner {
        &self.0
    }
}

impl ChannelStats {
    /// Declares the channel's figures in `telemetry` (section
    /// [`super::NAME`]), in the order `/status` and `/metrics` show them.
    pub fn new(telemetry: &Telemetry) -> ChannelStats {
        let f = telemetry.figures(super::NAME);
        let connections_active = f.gauge("connections", "WebSocket connections open now");
        let connections_accepted = f.counter("connections_accepted", "WebSocket connections upgraded");
        let [refused_unauthorized, refused_not_found, refused_bad_request, refused_full, refused_not_websocket, handshake_timeout, handshake_evicted] =
            f.counters_by(
                "refused",
                "Handshakes refused, by reason (unauthorized 401, not_found 404, bad_request 400/431, too_many_connections 503, not_websocket 426/405, handshake_timeout, handshake_evicted)",
                "reason",
                ["unauthorized", "not_found", "bad_request", "too_many_connections", "not_websocket", "handshake_timeout", "handshake_evicted"],
            );
        let [closed_slow_consumer, closed_ping_timeout, closed_token_revoked, closed_shutdown, closed_protocol_error, closed_by_client, closed_replay_error, closed_token_expired, closed_channel_changed] = f
            .counters_by(
                "closed",
                "Connections closed, by reason (slow_consumer: fell out of the replay log's retention, ping_timeout, token_revoked: its token was removed by a reload, token_expired: its token passed not_after, channel_changed: its channel was removed or its filter changed by a reload, shutdown, protocol_error, replay_error: replay log unreadable; client: by the client)",
                "reason",
                ["slow_consumer", "ping_timeout", "token_revoked", "shutdown", "protocol_error", "client", "replay_error", "token_expired", "channel_changed"],
            );
        let messages_sent = f.counter("messages_sent", "Messages written to clients");
        let records_sent = f.counter("records_sent", "Records written to clients (once per client)");
        let records_replayed = f.counter("records_replayed", "Records written as since= replay");
        let lost_notices = f.counter("lost_notices", "Notices sent to clients asking for records no longer held (evicted or damaged)");
        let since_ahead_notices =
            f.counter("since_ahead_notices", "Notices sent to clients asking from a sequence number beyond the newest (another history)");
        let replay_bytes = f.gauge("replay_bytes", "Bytes of the replay log's segment files (state_dir/replay)");
        let replay_segments = f.gauge("replay_segments", "Segment files of the replay log");
        let replay_records = f.gauge("replay_records", "Records in the replay log");
        let replay_first_seq = f.status_gauge("replay_first_seq");
        let replay_oldest_age_secs = f.gauge("replay_oldest_age_secs", "Age of the oldest record in the replay log, seconds (0 = empty)");
        let replay_hot_bytes = f.gauge("replay_hot_bytes", "Bytes of the replay log's newest records kept in memory");
        let replay_repaired_segments = f.counter(
            "replay_repaired_segments",
            "Replay log segments truncated to their last whole record at start (torn or corrupt tail)",
        );
        let replay_repaired_bytes = f.counter("replay_repaired_bytes", "Bytes dropped truncating replay log segments at start");
        let replay_damaged_records =
            f.counter("replay_damaged_records", "Records of the replay log destroyed by damage (skipped; clients get a lost notice)");
        let last_seq = f.status_gauge("last_seq");
        ChannelStats(Arc::new(ChannelInner {
            sink: telemetry.sink(super::NAME),
            figures: f,
            connections_active,
            connections_accepted,
            refused_unauthorized,
            refused_not_found,
            refused_bad_request,
            refused_full,
            refused_not_websocket,
            handshake_timeout,
            handshake_evicted,
            closed_slow_consumer,
            closed_ping_timeout,
            closed_token_revoked,
            closed_shutdown,
            closed_protocol_error,
            closed_by_client,
            closed_replay_error,
            messages_sent,
            records_sent,
            records_replayed,
            lost_notices,
            since_ahead_notices,
            replay_bytes,
            replay_segments,
            replay_records,
            replay_first_seq,
            replay_oldest_age_secs,
            replay_hot_bytes,
            replay_repaired_segments,
            replay_repaired_bytes,
            replay_damaged_records,
            last_seq,
            closed_token_expired,
            closed_channel_changed,
        }))
    }

    /// The figures of channel `id` (declared in the per-channel families
    /// on first use; the same handles again after).
    pub fn stream(&self, id: &str) -> StreamStats {
        let f = &self.0.figures;
        let c = |i: usize| f.counter_family(BY_CHANNEL[i].0, BY_CHANNEL[i].1, "channel", &[id]).pop().unwrap_or_default();
        StreamStats {
            connections: f.gauge_family(BY_CHANNEL[0].0, BY_CHANNEL[0].1, "channel", &[id]).pop().unwrap_or_default(),
            records_sent: c(1),
            records_filtered: c(2),
            lost_notices: c(3),
            closed_slow_consumer: c(4),
        }
    }

    /// The connections gauge of token `name` of channel `id`.
    pub fn token(&self, id: &str, name: &str) -> crate::telemetry::Gauge {
        self.0
            .figures
            .gauge_family2(
                "token_connections",
                "WebSocket connections open now, by channel and token (its label or digest prefix)",
                ["channel", "token"],
                &[(id, name)],
            )
            .pop()
            .unwrap_or_default()
    }

    /// Keeps the per-channel series of these channels and tokens only
    /// (after a reload removed some).
    pub fn keep(&self, channels: &[&str], tokens: &[(&str, &str)]) {
        for (name, _) in BY_CHANNEL {
            self.0.figures.retain_values(name, |v| channels.contains(&v));
        }
        self.0.figures.retain_pairs("token_connections", |c, t| tokens.contains(&(c, t)));
    }

    /// Where the channel listens: shown first in its `/status` section,
    /// where the dashboard finds it. Never the token.
    pub fn set_endpoint(&self, endpoint: ChannelInfo) {
        self.0.figures.set_endpoint(Some(endpoint));
    }

    /// `messages` messages holding `records` records, the newest observed
    /// at `observed_ms`, were written (flushed) to one client at
    /// `written_ms`: the channel's delivery. The delay (written −
    /// observed) is that of the newest record of the flush, so for a
    /// replay or a burst it is a lower bound.
    pub fn frames_written(&self, messages: usize, records: usize, observed_ms: i64, written_ms: i64) {
        self.0.messages_sent.add(messages as u64);
        self.0.records_sent.add(records as u64);
        self.0.sink.reached_consumer(records, observed_ms, written_ms);
    }

    /// The replay log now holds `f`, the newest record numbered
    /// `last_seq` (0 = none yet), at `now_ms`.
    pub fn replay(&self, f: &replay::Figures, last_seq: u64, now_ms: i64) {
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        self.0.replay_bytes.set(n(f.bytes));
        self.0.replay_segments.set(n(f.segments));
        self.0.replay_records.set(n(f.records));
        self.0.replay_first_seq.set(n(f.first_seq));
        self.0.replay_oldest_age_secs.set(f.oldest_written_ms.map_or(0, |t| (now_ms - t).max(0) / 1000));
        self.0.replay_hot_bytes.set(n(f.hot_bytes));
        self.0.last_seq.set(n(last_seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{metrics, SectionStatus, Status, StatusSettings};

    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000;

    #[test]
    fn channel_figures_extend_the_endpoint_and_feed_the_sink_delay() {
        let tel = Telemetry::new();
        let settings = StatusSettings::default();
        let info = ChannelInfo { listen: "127.0.0.1:8790".into(), tls: false, path: "/stream".into() };
        let ch = ChannelStats::new(&tel);
        ch.set_endpoint(info.clone());
        // Nothing happened yet: the endpoint with zero figures.
        let st = tel.status(T0, &settings);
        assert_eq!(st.sections.get("channel").map(|c| (c.endpoint(), c.number("connections"))), Some((Some(info.clone()), 0)));
        assert_eq!(tel.channel(), Some(info), "the dashboard's endpoint");

        ch.connections_accepted.add(3);
        ch.connections_active.inc();
        ch.connections_active.inc();
        ch.refused_unauthorized.inc();
        ch.refused_full.inc();
        ch.closed_slow_consumer.inc();
        // The sink handed 10 records to the ring (acknowledged them);
        // clients got their frames 40 and 90 ms after they were read.
        let k = tel.sink("channel");
        k.enqueued(10);
        k.handed_over(10);
        ch.frames_written(1, 4, T0, T0 + 40);
        ch.frames_written(2, 6, T0, T0 + 90);

        let st = tel.status(T0 + 100, &settings);
        let c = st.sections.get("channel").unwrap().clone();
        let n = |name: &str| c.number(name);
        assert_eq!((n("connections"), n("connections_accepted"), n("messages_sent"), n("records_sent")), (2, 3, 3, 10));
        let (refused, closed) = (c.by_label("refused"), c.by_label("closed"));
        assert_eq!(refused.get("unauthorized"), Some(&1));
        assert_eq!(refused.get("too_many_connections"), Some(&1));
        assert_eq!(refused.get("not_found"), Some(&0));
        assert_eq!(closed.get("slow_consumer"), Some(&1));
        assert_eq!(closed.get("ping_timeout"), Some(&0));
        let sink = &st.sinks[0];
        assert_eq!(sink.delivered_records, 10, "records handed over are still counted by the sink");
        let d = sink.delivery_delay_ms.unwrap();
        assert_eq!((d.min, d.max, d.samples), (40, 90, 2), "delivered = frame written");
        assert_eq!(sink.last_delivery_delay_ms, Some(90));

        // The JSON keeps listen/tls/path at the top of `channel`, never a token.
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["channel"]["listen"], "127.0.0.1:8790");
        assert_eq!(json["channel"]["tls"], false);
        assert_eq!(json["channel"]["refused"]["unauthorized"], 1);
        assert!(json["channel"].get("token").is_none());
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, st);
        // A status from a bridge without these figures still reads.
        let old = serde_json::json!({"listen": "127.0.0.1:1", "tls": true, "path": "/stream"});
        let c: SectionStatus = serde_json::from_value(old).unwrap();
        assert_eq!((c.endpoint().map(|e| e.tls), c.number("connections"), c.by_label("refused").len()), (Some(true), 0, 0));
    }

    #[test]
    fn channel_json_keeps_its_keys_and_their_order() {
        let tel = Telemetry::new();
        let ch = ChannelStats::new(&tel);
        ch.set_endpoint(ChannelInfo { listen: "127.0.0.1:8790".into(), tls: false, path: "/stream".into() });
        let f = replay::Figures { bytes: 9000, segments: 2, records: 3, first_seq: 39, oldest_written_ms: Some(T0 - 5000), hot_bytes: 900 };
        ch.replay(&f, 41, T0);
        let json = serde_json::to_string(&tel.status(T0, &StatusSettings::default())).unwrap();
        let want = concat!(
            r#""channel":{"listen":"127.0.0.1:8790","tls":false,"path":"/stream","connections":0,"connections_accepted":0,"#,
            r#""refused":{"bad_request":0,"handshake_evicted":0,"handshake_timeout":0,"not_found":0,"not_websocket":0,"too_many_connections":0,"unauthorized":0},"#,
            r#""closed":{"channel_changed":0,"client":0,"ping_timeout":0,"protocol_error":0,"replay_error":0,"shutdown":0,"slow_consumer":0,"token_expired":0,"token_revoked":0},"#,
            r#""messages_sent":0,"records_sent":0,"records_replayed":0,"lost_notices":0,"since_ahead_notices":0,"replay_bytes":9000,"replay_segments":2,"replay_records":3,"#,
            r#""replay_first_seq":39,"replay_oldest_age_secs":5,"replay_hot_bytes":900,"replay_repaired_segments":0,"replay_repaired_bytes":0,"replay_damaged_records":0,"last_seq":41}"#
        );
        assert!(json.contains(want), "{json}");
    }

    #[test]
    fn channel_series_in_metrics() {
        use prometheus_parse::Value::*;
        let tel = Telemetry::new();
        let ch = ChannelStats::new(&tel);
        ch.connections_active.inc();
        ch.connections_accepted.add(2);
        ch.refused_unauthorized.inc();
        ch.closed_slow_consumer.inc();
        ch.frames_written(1, 3, T0, T0 + 7);
        let k = tel.sink("channel");
        k.enqueued(3);
        k.handed_over(3);
        let text = metrics::render(&tel, &StatusSettings::default(), T0 + 1000);
        let m = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition");
        let value = |name: &str, labels: &[(&str, &str)]| {
            m.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(|s| s.value.clone())
        };
        let v = |name: &str, labels: &[(&str, &str)]| match value(name, labels) {
            Some(Counter(v)) | Some(Gauge(v)) => v,
            other => panic!("{name} {labels:?}: {other:?}"),
        };
        assert_eq!(v("calllog_bridge_channel_connections", &[]), 1.0);
        assert_eq!(v("calllog_bridge_channel_connections_accepted_total", &[]), 2.0);
        assert_eq!(v("calllog_bridge_channel_refused_total", &[("reason", "unauthorized")]), 1.0);
        assert_eq!(v("calllog_bridge_channel_refused_total", &[("reason", "too_many_connections")]), 0.0);
        assert_eq!(v("calllog_bridge_channel_closed_total", &[("reason", "slow_consumer")]), 1.0);
        assert_eq!(v("calllog_bridge_channel_records_sent_total", &[]), 3.0);
        assert!(value("calllog_bridge_channel_last_seq", &[]).is_none(), "last_seq is shown in /status only");
        // The channel's delivery delay is the frame-written delay (7 ms), not
        // the hand-over to the ring.
        match value("calllog_bridge_delivery_delay_seconds", &[("sink", "channel")]) {
            Some(Histogram(h)) => {
                assert_eq!(h.iter().find(|x| x.less_than == 0.005).map(|x| x.count), Some(0.0));
                assert_eq!(h.iter().find(|x| x.less_than == 0.01).map(|x| x.count), Some(3.0));
            }
            other => panic!("no channel delivery histogram: {other:?}"),
        }
    }
}
