//! The upstream sink: records re-batched into HTTP requests to a central
//! collector (NDJSON, ECLS, Elasticsearch `_bulk`, Splunk HEC), delivered
//! at least once by the delivery engine ([`crate::delivery`]: batching,
//! retries, the spool, the dead letter, durability demands, shutdown).
//! This module declares the sink; [`encode`] is its encoder (the body
//! formats) and [`http`] its transport (what the collector's answers
//! mean). Its spool is `<state_dir>/upstream-spool/<format>/`, its
//! dead-letter file `<state_dir>/dead-letter.ndjson` unless
//! `dead_letter_file` says otherwise.
//!
//! A reload puts a new client, encoder and delivery settings in force
//! ([`UpstreamHandle::reconfigure`]): requests use the settings in force
//! when they are built (batch limits, encoding) or sent (URL, client,
//! timeouts, backoff): a request being retried switches to the new URL and
//! credentials at its next attempt, keeping the body it was encoded to.

mod config;
pub mod encode;
pub mod http;

use self::encode::Encoder;
use super::{Keys, Needs, SinkContext, SinkHandle};
use crate::delivery::{self, Control, Declared, Parts, Places};
use crate::listener::Bound;
use crate::pipeline::Fanout;
use crate::settings::{parent_dir, ConfigError};

pub use crate::delivery::http::{Auth as UpstreamAuth, AuthFailures, Compression, CompressionName};
pub use config::{Format, UpstreamConfig, UpstreamFormat, UpstreamSection};

/// The config section.
pub const SECTION: &str = "upstream";

/// The sink's name in metrics, logs and the fan-out.
pub const NAME: &str = "upstream";

/// What the upstream sink declares to the engine. A failing collector is
/// not a fault (the bridge stays ready; the log, `retries` and the oldest
/// pending record show it), and the sink has no figures of its own beyond
/// its statistics.
static DECLARED: Declared =
    Declared { name: NAME, spool_fault: "upstream_spool", dead_letter_fault: "dead_letter", peer_fault: None, figures: None };

/// Starts the upstream sink and registers its queue on `fanout`.
pub async fn start(cfg: &UpstreamConfig, ctx: &SinkContext, fanout: &mut Fanout) -> anyhow::Result<(SinkHandle, UpstreamHandle)> {
    let live = {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || Live::build(&c)).await??
    };
    let dir = crate::state_dir::StateDir::new(&ctx.state_dir);
    let places = Places { spool: dir.upstream_spool(cfg.format.kind().name()), dead_letter: dir.dead_letter() };
    let (task, control) =
        delivery::start(&DECLARED, live.parts, places, &ctx.telemetry, ctx.shutdown.clone(), fanout, super::queue()).await?;
    Ok((SinkHandle { name: NAME, task }, UpstreamHandle { control }))
}

/// The upstream sink as a [`super::Sink`].
pub struct UpstreamSink;

impl super::Sink for UpstreamSink {
    const SECTION: &'static str = SECTION;
    const NAME: &'static str = NAME;
    type Section = UpstreamSection;
    type Config = UpstreamConfig;
    type Handle = UpstreamHandle;
    type Update = Live;

    fn config(section: UpstreamSection, base: &std::path::Path) -> Result<UpstreamConfig, ConfigError> {
        UpstreamConfig::from_section(section, base)
    }

    fn keys(k: &mut Keys<UpstreamConfig>) {
        // Fixed while the sink runs: the encoding of records already
        // batched or spooled (and the spool's directory), the spool's
        // bound, the dead-letter file and the sender permits. A format's
        // own keys (index, sourcetype) apply live.
        k.restart_unless("upstream.format", |c| &mut c.format, Format::same_kind)
            .restart("upstream.max_in_flight", |c| &mut c.delivery.max_in_flight)
            .restart("upstream.spool_max_bytes", |c| &mut c.delivery.spool_max_bytes)
            .restart("upstream.dead_letter_file", |c| &mut c.delivery.dead_letter_file);
        // Applied by UpstreamHandle::reconfigure: a new client and encoder;
        // requests already built switch to them at their next attempt.
        k.live("upstream.url", |c| &mut c.endpoint.url)
            .live("upstream.compression", |c| &mut c.endpoint.compression)
            .live("upstream.headers", |c| &mut c.endpoint.headers)
            .live("upstream.credentials", |c| &mut c.endpoint.auth)
            .live("upstream.ca_file", |c| &mut c.endpoint.ca)
            .live("upstream.client_cert", |c| &mut c.endpoint.client_identity)
            .live("upstream.batch_max_records", |c| &mut c.delivery.batch_max_records)
            .live("upstream.batch_max_bytes", |c| &mut c.delivery.batch_max_bytes)
            .live("upstream.flush_interval_ms", |c| &mut c.delivery.flush_interval)
            .live("upstream.request_timeout_ms", |c| &mut c.endpoint.request_timeout)
            .live("upstream.retry_initial_ms", |c| &mut c.delivery.retry_initial)
            .live("upstream.retry_max_ms", |c| &mut c.delivery.retry_max)
            .live("upstream.spool_after_ms", |c| &mut c.delivery.spool_after)
            .live("upstream.auth_failures", |c| &mut c.endpoint.auth_failures)
            .live("upstream.dead_letter_rotate_bytes", |c| &mut c.delivery.dead_letter_rotation)
            .live("upstream.shutdown_grace_ms", |c| &mut c.delivery.shutdown_grace);
    }

    fn needs(cfg: &UpstreamConfig, needs: &mut Needs) {
        if let Some(d) = &cfg.delivery.dead_letter_file {
            needs.dirs.push(("upstream.dead_letter_file", parent_dir(d), false));
            needs.files.push(("upstream.dead_letter_file", d.clone()));
        }
        let (ca, identity) = (cfg.endpoint.ca.clone(), cfg.endpoint.client_identity.clone());
        needs.peers.push(crate::probe::Peer::Http { key: "upstream.url".into(), url: cfg.endpoint.url.clone(), ca, identity });
    }

    fn summary(u: &UpstreamConfig) -> String {
        u.endpoint.summary(u.format.kind().name())
    }

    async fn start(
        cfg: &UpstreamConfig,
        ctx: &SinkContext,
        fanout: &mut Fanout,
        _listeners: &mut Bound,
    ) -> anyhow::Result<(SinkHandle, UpstreamHandle)> {
        start(cfg, ctx, fanout).await
    }

    fn prepare(cfg: &UpstreamConfig) -> anyhow::Result<Live> {
        Live::build(cfg)
    }

    fn reconfigure(handle: &UpstreamHandle, live: Live) {
        handle.reconfigure(live)
    }
}

/// The parts of a running upstream sink that a reload replaces: the
/// delivery settings, the encoder and the transport (the HTTP client built
/// from the endpoint: URL, headers, credentials read from their files,
/// TLS).
pub struct Live {
    /// What the engine runs with.
    parts: Parts<Encoder, http::Upstream>,
}

impl Live {
    /// Builds the client and encoder for `cfg`: reads the CA, client
    /// certificate and credential files (blocking file I/O). The error
    /// names the key.
    pub fn build(cfg: &UpstreamConfig) -> anyhow::Result<Live> {
        let client = crate::delivery::http::Client::build(&cfg.endpoint, cfg.delivery.max_in_flight, SECTION)?;
        let encoder = Encoder::for_config(cfg);
        let transport = http::Upstream { client, encoder: encoder.clone(), auth_failures: cfg.endpoint.auth_failures };
        Ok(Live { parts: Parts { settings: cfg.delivery.clone(), encoder, transport } })
    }

    /// The URL as logs show it (no credentials).
    pub fn url_for_logs(&self) -> &str {
        self.parts.transport.client.log_url()
    }
}

/// Controls a running upstream sink (reload).
#[derive(Clone)]
pub struct UpstreamHandle {
    control: Control<Encoder, http::Upstream>,
}

impl UpstreamHandle {
    /// Puts new settings in force (see [`Live`]). The settings a running
    /// sink cannot change ([`UpstreamSink`]'s restart keys: format,
    /// `max_in_flight`, spool, dead-letter file) must be those it runs
    /// with: a reload keeps their running values.
    pub fn reconfigure(&self, new: Live) {
        // In the sink's span; the line's target (`...::sink::upstream`)
        // names the sink before the message.
        let _span = tracing::info_span!("sink", name = NAME).entered();
        tracing::info!(url = %new.url_for_logs(), "settings reloaded; requests use them from their next attempt");
        self.control.reconfigure(new.parts);
    }
}
