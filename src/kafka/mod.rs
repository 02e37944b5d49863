//! The Kafka side of a fleet (issue 17): edge bridges produce their
//! records to a topic (`[kafka]` sink), a hub bridge consumes them
//! (`[[source]] kind = "kafka"`) into its own pipeline, so one channel, one
//! status page and one sync-delay view serve the whole fleet.
//!
//! This module is the protocol layer both use, over `rskafka` (a pure-Rust
//! client: no librdkafka to build, TLS through rustls, SASL PLAIN and
//! SCRAM):
//!
//! - [`client`]: the keys every Kafka section shares (brokers, TLS, SASL)
//!   and connecting;
//! - [`message`]: a record as a message (key, headers, value) and the
//!   partitioner;
//! - [`produce`]: sending a request's messages with `acks = all`, answers
//!   classified for the sink's retry / split / dead-letter machinery;
//! - [`consume`]: one reader per partition, messages back into records,
//!   batches into the pipeline;
//! - [`hub`]: a Kafka source at work (connect, find partitions, one reader
//!   each, positions written as they advance);
//! - [`offsets`]: the hub's durable positions per partition, advanced only
//!   when every sink acknowledged (the client has no consumer groups);
//! - [`settings`]: the `[kafka]` sink and `[[source]] kind = "kafka"` sections.

pub mod client;
pub mod consume;
pub mod hub;
pub mod message;
pub mod offsets;
pub mod produce;
pub mod settings;
