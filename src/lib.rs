//! calllog-bridge: the on-premises agent that follows API Management Local
//! Edition access logs and delivers them as call-log records.
//!
//! Data flows through the modules in this order (see ARCHITECTURE.md):
//!
//! - [`config`]: the config file -> the typed settings of the whole bridge;
//!   the only code that sees TOML text. [`settings`]: the vocabulary of
//!   typed settings (errors naming the key, secrets, durations, addresses)
//!   and the sections every bridge has.
//! - [`source`]: where records come from (`[[source]]` kinds: files via
//!   [`watch`] and [`tail`], with [`checkpoint`]s of what every sink has,
//!   keyed by the files' fingerprints).
//! - [`ingest`]: the bytes of one file -> records or rejects (framing, line
//!   numbers, offsets, stamping, enrichment), shared by `run` and `parse`.
//! - [`parse`]: one module per Local Edition format; pure, no I/O.
//! - [`enrich`]: lookup tables, masking; pure apart from (re)loading tables.
//!   [`mask`]: the one masking rule (enrich and the channel both use it).
//! - [`record`]: the call-log record and its two JSON shapes.
//! - [`rejects`]: the rejects file (lines that did not parse, as JSON lines).
//! - [`rotating`]: size-rotated append-only files (rejects, dead letters).
//! - [`pipeline`]: batches, acknowledgements and the fan-out to sinks;
//!   [`budget`]: the memory budget that bounds what they hold;
//!   [`ack_order`]: the one rule for how far a read position (a file's
//!   checkpoint, a Kafka partition's position) advances as its batches are
//!   acknowledged out of order, and which batch a cancelled send takes back.
//! - [`cmd`]: one module per subcommand; [`cli`] holds the clap definitions.
//! - [`preflight`]: what `run` needs from the host (files, directories,
//!   listeners), checked the same way by `check-config` and `run`;
//!   [`probe`]: the peers a config names (upstream, Kafka), tried by
//!   `check-config`;
//!   [`state_dir`]: every file in `state_dir` and the one atomic write;
//!   [`state_lock`]: one bridge per `state_dir`.
//! - [`sim`]: simulated Local Edition traffic (generator and file writer).
//! - [`sink`]: where batches go (file archive, channel, upstream), each a
//!   [`sink::Sink`] in [`sink::REGISTRY`]; [`bridge`] starts and stops
//!   sources and sinks. [`delivery`]: the reliable-delivery engine the
//!   sinks that send records away run on (retries, spool, dead letter).
//! - [`kafka`]: the Kafka protocol side of a fleet (edge sink, hub source).
//! - [`reload`]: SIGHUP: re-read the config, apply it or refuse it whole.
//! - [`service`]: systemd readiness, watchdog and journal-friendly logs.
//! - [`logsafe`]: peer-supplied text (file names, collector answers)
//!   escaped for log lines.
//! - [`telemetry`]: per-file and per-sink statistics, metrics, status.
//! - [`history`]: sync-delay history over time (percentile histograms,
//!   windows and episodes, the chart), for `lag report` and `/history`.
//! - [`listener`]: what bounds every listener (socket cap, idle eviction,
//!   file-descriptor limit).
//! - [`time`]: time parsing and formatting; [`url`]: URL text helpers.
//! - [`demo`]: the self-contained demo `run` starts with no config.

#![forbid(unsafe_code)]

pub mod ack_order;
pub mod bridge;
pub mod budget;
pub mod checkpoint;
pub mod cli;
pub mod cmd;
pub mod component;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod enrich;
pub mod history;
pub mod ingest;
pub mod kafka;
pub mod listener;
pub mod logsafe;
pub mod mask;
pub mod parse;
pub mod pipeline;
pub mod preflight;
pub mod probe;
pub mod record;
pub mod rejects;
pub mod reload;
pub mod rotating;
pub mod service;
pub mod settings;
pub mod sim;
pub mod sink;
pub mod source;
pub mod state_dir;
pub mod state_lock;
pub mod tail;
pub mod telemetry;
pub mod time;
pub mod url;
pub mod watch;
