//! The Kafka sink (`[kafka]`, an edge bridge of a fleet): every record
//! becomes one message on `kafka.topic` ([`crate::kafka::message`]: key
//! from `key_field`, headers `host`, `file`, `sync_delay_ms`), produced
//! with `acks = all` ([`crate::kafka::produce`]), delivered at least once
//! by the delivery engine ([`crate::delivery`]) exactly as upstream's
//! records are: batching (`linger_ms`), retries with backoff for as long
//! as it takes (only the messages not acknowledged are sent again), the
//! dead-letter file for messages the brokers refuse for good
//! (`<state_dir>/kafka-dead-letter.ndjson`), the disk spool
//! (`<state_dir>/kafka-spool/`, its units whole encoded messages), the
//! spill rule, durability demands and the drain at shutdown. This module
//! only declares the sink: the encoder is [`Encoder`], the transport
//! [`Producer`].
//!
//! What Kafka declares differently: brokers that take no message are a
//! fault (`kafka`: the bridge is not ready until they do), and the sink's
//! figures are a `kafka` section (`/status` `kafka`, `/metrics`
//! `calllog_bridge_kafka_*`): messages produced, dead-lettered, spooled,
//! produce retries, requests in flight, whether the brokers fail, and the
//! spool's records, bytes and files. Its defaults differ where Kafka needs
//! it ([`crate::kafka::settings`]).
//!
//! Nothing applies live: the producer, its batches and the messages
//! already encoded follow the settings the sink started with, so a change
//! to `[kafka]` is reported as needing a restart. The client has no
//! idempotent producer: a produce whose answer is lost is sent again, so
//! the topic may hold those messages twice (at-least-once).

use std::path::Path;
use std::sync::Arc;

use super::{Keys, Needs, SinkContext, SinkHandle};
use crate::delivery::{self, Declared, Encode, FigureNames, Outcome, Parts, Places, Transport, Units};
use crate::kafka::message::Encoder;
use crate::kafka::produce::Producer;
use crate::kafka::settings::{SinkConfig, SinkSection, SINK_SECTION};
use crate::listener::Bound;
use crate::pipeline::Fanout;
use crate::record::Record;
use crate::settings::{parent_dir, ConfigError};

/// The sink's name in logs, the fan-out, `/status` and `/metrics`.
pub const NAME: &str = "kafka";

/// What the Kafka sink declares to the engine.
static DECLARED: Declared = Declared {
    name: NAME,
    spool_fault: "kafka_spool",
    dead_letter_fault: "kafka_dead_letter",
    peer_fault: Some("kafka"),
    figures: Some(FigureNames {
        delivered: ("messages_produced", "Messages the brokers acknowledged (acks = all)"),
        dead_lettered: ("messages_dead_lettered", "Messages the brokers refused for good, written to the dead-letter file"),
        retries: ("produce_retries", "Produce attempts that failed and are retried"),
        in_flight: ("requests_in_flight", "Produce requests waiting for the brokers"),
        failing: ("brokers_failing", "1 while produce requests fail (brokers down, unknown topic, refused credentials)"),
        spool_records: ("spool_records", "Messages in the disk spool (acknowledged, to be produced)"),
        spool_bytes: ("spool_bytes", "Size of the disk spool"),
        spool_files: ("spool_files", "Files in the disk spool"),
        spooled: ("messages_spooled", "Messages written to the disk spool"),
        spool_dropped: ("records_spool_dropped", "Spooled messages deleted to make room in a full spool"),
    }),
};

/// The Kafka sink as a [`super::Sink`].
pub struct KafkaSink;

impl super::Sink for KafkaSink {
    const SECTION: &'static str = SINK_SECTION;
    const NAME: &'static str = NAME;
    type Section = SinkSection;
    type Config = SinkConfig;
    type Handle = ();
    type Update = ();

    fn config(section: SinkSection, base: &Path) -> Result<SinkConfig, ConfigError> {
        SinkConfig::from_section(section, base)
    }

    fn keys(_keys: &mut Keys<SinkConfig>) {
        // Nothing applies live (see the module doc).
    }

    fn needs(cfg: &SinkConfig, needs: &mut Needs) {
        if let Some(d) = &cfg.delivery.dead_letter_file {
            needs.dirs.push(("kafka.dead_letter_file", parent_dir(d), false));
            needs.files.push(("kafka.dead_letter_file", d.clone()));
        }
        let (client, topics) = (cfg.client.clone(), vec![cfg.topic.clone()]);
        needs.peers.push(crate::probe::Peer::Kafka { key: "kafka.brokers".into(), client, topics });
    }

    fn summary(c: &SinkConfig) -> String {
        format!("{} topic {} ({}, key {}, {})", c.client.for_logs(), c.topic, c.format.name(), c.key_field.name(), c.compression.name(),)
    }

    async fn start(cfg: &SinkConfig, ctx: &SinkContext, fanout: &mut Fanout, _listeners: &mut Bound) -> anyhow::Result<(SinkHandle, ())> {
        let parts = Parts {
            settings: cfg.delivery.clone(),
            // Every record carries its host: the ingest stage stamps the
            // top-level `host` on what is read from files, and a hub keeps
            // the edge's from the message. No fallback name here.
            encoder: Encoder::new(cfg.format, cfg.key_field, ""),
            transport: Producer::new(cfg.client.clone(), cfg.topic.clone(), cfg.compression),
        };
        let dir = crate::state_dir::StateDir::new(&ctx.state_dir);
        let places = Places { spool: dir.kafka_spool(), dead_letter: dir.kafka_dead_letter() };
        let (task, _) = delivery::start(&DECLARED, parts, places, &ctx.telemetry, ctx.shutdown.clone(), fanout, super::queue()).await?;
        Ok((SinkHandle { name: NAME, task }, ()))
    }

    fn prepare(_cfg: &SinkConfig) -> anyhow::Result<()> {
        Ok(())
    }

    fn reconfigure(_handle: &(), _update: ()) {}
}

impl Encode for Encoder {
    fn encode(&self, r: &Record<'_>, file: &str, units: &mut Units) {
        self.push(r, file, units)
    }

    fn format(&self) -> &'static str {
        self.format.name()
    }
}

impl Transport for Producer {
    /// Messages go as they are: nothing to build.
    type Body = ();

    async fn body(&self, _units: &Arc<Units>) -> Option<()> {
        Some(())
    }

    async fn attempt(&self, _body: &(), units: &Units) -> Outcome {
        Producer::attempt(self, units).await
    }

    fn destination(&self) -> &str {
        Producer::destination(self)
    }
}
