//! The OpenTelemetry sink (`[otlp]`): records as OTLP log records, sent
//! over OTLP/HTTP to a collector's `/v1/logs` (protobuf by default,
//! OTLP/JSON with `format = "json"`, gzip, credentials and headers as
//! upstream has them), delivered at least once by the delivery engine
//! ([`crate::delivery`]): this module is the sink's declaration, its
//! settings and its transport; [`encode`] is its encoder. Nothing of the
//! delivery is written here: retries, the spool
//! (`<state_dir>/otlp-spool/<format>/`), the dead-letter file
//! (`<state_dir>/otlp-dead-letter.ndjson`), durability demands and the
//! drain at shutdown are the engine's.
//!
//! Answers, as the OTLP/HTTP specification says: 429, 502, 503 and 504
//! are retried (honouring `Retry-After` up to `retry_max_ms`), as are
//! connection errors and timeouts; 413 splits the request; 401 and 403
//! follow `auth_failures` (retried by default, as upstream: refused
//! credentials are a configuration problem, not the records'); any other
//! status is refused for good (dead-lettered). A 2xx whose
//! `partial_success` says the collector rejected log records dead-letters
//! the request's records (the answer counts them but does not say which):
//! they are counted as dead-lettered, not as delivered, and the dead-letter
//! line carries the collector's message.

pub mod encode;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use self::encode::{proto, Encoder, Wire};
use super::{Keys, Needs, SinkContext, SinkHandle};
use crate::delivery::http::{self as wire, AuthFailures, Body, Client, Endpoint};
use crate::delivery::{self, Control, Declared, FigureNames, Outcome, Parts, Places, Settings, Transport, Units};
use crate::listener::Bound;
use crate::pipeline::Fanout;
use crate::settings::{parent_dir, ConfigError};

/// The config section.
pub const SECTION: &str = "otlp";

/// The sink's name in logs, the fan-out, `/status` and `/metrics`.
pub const NAME: &str = "otlp";

/// A 2xx answer is read up to this much (an `ExportLogsServiceResponse`
/// is a few bytes, its `error_message` a line).
const ANSWER_BYTES: usize = 64 * 1024;

/// What the sink declares to the engine: like upstream, a failing
/// collector is not a fault; its figures are under `otlp`.
static DECLARED: Declared = Declared {
    name: NAME,
    spool_fault: "otlp_spool",
    dead_letter_fault: "otlp_dead_letter",
    peer_fault: None,
    figures: Some(FigureNames {
        delivered: ("records_delivered", "Log records the collector took"),
        dead_lettered: ("records_dead_lettered", "Log records the collector refused for good, written to the dead-letter file"),
        retries: ("retries", "Export attempts that failed and are retried"),
        in_flight: ("requests_in_flight", "Export requests being sent"),
        failing: ("collector_failing", "1 while export requests fail"),
        spool_records: ("spool_records", "Records in the disk spool (acknowledged, to be sent)"),
        spool_bytes: ("spool_bytes", "Size of the disk spool"),
        spool_files: ("spool_files", "Files in the disk spool"),
        spooled: ("records_spooled", "Records written to the disk spool"),
        spool_dropped: ("records_spool_dropped", "Spooled records deleted to make room in a full spool"),
    }),
};

wire::http_section! {
    /// The `[otlp]` section as written (and the endpoint and delivery keys
    /// every HTTP sink has).
    pub struct OtlpSection {
        /// `protobuf` (default) or `json`.
        #[serde(default)]
        pub format: Wire,
        /// Attributes of every resource, after `host.name`
        /// (`service.name`, `deployment.environment.name`, ...).
        #[serde(default)]
        pub resource_attributes: BTreeMap<String, String>,
    }
}

/// The `[otlp]` sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Where and how requests are sent.
    pub endpoint: Endpoint,
    /// Protobuf or JSON.
    pub format: Wire,
    /// Extra resource attributes.
    pub resource_attributes: BTreeMap<String, String>,
    /// Batching, retries, spool, dead letters, shutdown.
    pub delivery: Settings,
}

impl OtlpConfig {
    /// The settings of an `[otlp]` section; errors name the key.
    pub fn from_section(s: OtlpSection, base: &Path) -> Result<OtlpConfig, ConfigError> {
        let endpoint = Endpoint::from_keys(s.endpoint_keys(), SECTION, base)?;
        let delivery = Settings::from_knobs(s.knobs(), SECTION, base)?;
        Ok(OtlpConfig { endpoint, format: s.format, resource_attributes: s.resource_attributes, delivery })
    }
}

/// The OpenTelemetry sink as a [`super::Sink`].
pub struct OtlpSink;

impl super::Sink for OtlpSink {
    const SECTION: &'static str = SECTION;
    const NAME: &'static str = NAME;
    type Section = OtlpSection;
    type Config = OtlpConfig;
    type Handle = Control<Encoder, Otlp>;
    type Update = Parts<Encoder, Otlp>;

    fn config(section: OtlpSection, base: &Path) -> Result<OtlpConfig, ConfigError> {
        OtlpConfig::from_section(section, base)
    }

    fn keys(k: &mut Keys<OtlpConfig>) {
        // Fixed while the sink runs: the encoding of what is spooled (and
        // the spool's directory), the spool's bound, the dead-letter file
        // and the sender permits.
        k.restart("otlp.format", |c| &mut c.format)
            .restart("otlp.max_in_flight", |c| &mut c.delivery.max_in_flight)
            .restart("otlp.spool_max_bytes", |c| &mut c.delivery.spool_max_bytes)
            .restart("otlp.dead_letter_file", |c| &mut c.delivery.dead_letter_file);
        k.live("otlp.url", |c| &mut c.endpoint.url)
            .live("otlp.compression", |c| &mut c.endpoint.compression)
            .live("otlp.headers", |c| &mut c.endpoint.headers)
            .live("otlp.credentials", |c| &mut c.endpoint.auth)
            .live("otlp.ca_file", |c| &mut c.endpoint.ca)
            .live("otlp.client_cert", |c| &mut c.endpoint.client_identity)
            .live("otlp.request_timeout_ms", |c| &mut c.endpoint.request_timeout)
            .live("otlp.auth_failures", |c| &mut c.endpoint.auth_failures)
            .live("otlp.resource_attributes", |c| &mut c.resource_attributes)
            .live("otlp.batch_max_records", |c| &mut c.delivery.batch_max_records)
            .live("otlp.batch_max_bytes", |c| &mut c.delivery.batch_max_bytes)
            .live("otlp.flush_interval_ms", |c| &mut c.delivery.flush_interval)
            .live("otlp.retry_initial_ms", |c| &mut c.delivery.retry_initial)
            .live("otlp.retry_max_ms", |c| &mut c.delivery.retry_max)
            .live("otlp.spool_after_ms", |c| &mut c.delivery.spool_after)
            .live("otlp.dead_letter_rotate_bytes", |c| &mut c.delivery.dead_letter_rotation)
            .live("otlp.shutdown_grace_ms", |c| &mut c.delivery.shutdown_grace);
    }

    fn needs(cfg: &OtlpConfig, needs: &mut Needs) {
        if let Some(d) = &cfg.delivery.dead_letter_file {
            needs.dirs.push(("otlp.dead_letter_file", parent_dir(d), false));
            needs.files.push(("otlp.dead_letter_file", d.clone()));
        }
        let (ca, identity) = (cfg.endpoint.ca.clone(), cfg.endpoint.client_identity.clone());
        needs.peers.push(crate::probe::Peer::Http { key: "otlp.url".into(), url: cfg.endpoint.url.clone(), ca, identity });
    }

    fn summary(c: &OtlpConfig) -> String {
        c.endpoint.summary(c.format.name())
    }

    async fn start(
        cfg: &OtlpConfig,
        ctx: &SinkContext,
        fanout: &mut Fanout,
        _listeners: &mut Bound,
    ) -> anyhow::Result<(SinkHandle, Control<Encoder, Otlp>)> {
        let parts = {
            let c = cfg.clone();
            tokio::task::spawn_blocking(move || parts(&c)).await??
        };
        let dir = crate::state_dir::StateDir::new(&ctx.state_dir);
        let places = Places { spool: dir.otlp_spool(cfg.format.name()), dead_letter: dir.otlp_dead_letter() };
        let (task, control) =
            delivery::start(&DECLARED, parts, places, &ctx.telemetry, ctx.shutdown.clone(), fanout, super::queue()).await?;
        Ok((SinkHandle { name: NAME, task }, control))
    }

    fn prepare(cfg: &OtlpConfig) -> anyhow::Result<Parts<Encoder, Otlp>> {
        parts(cfg)
    }

    fn reconfigure(handle: &Control<Encoder, Otlp>, parts: Parts<Encoder, Otlp>) {
        let _span = tracing::info_span!("sink", name = NAME).entered();
        tracing::info!(url = %parts.transport.client.log_url(), "settings reloaded; requests use them from their next attempt");
        handle.reconfigure(parts)
    }
}

/// The engine's parts for `cfg`: the client (credential and TLS files
/// read: blocking), the encoder, the settings.
fn parts(cfg: &OtlpConfig) -> anyhow::Result<Parts<Encoder, Otlp>> {
    let client = Client::build(&cfg.endpoint, cfg.delivery.max_in_flight, SECTION)?;
    let resource = cfg.resource_attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let encoder = Encoder { wire: cfg.format, compression: cfg.endpoint.compression, resource };
    let transport = Otlp { client, encoder: encoder.clone(), auth_failures: cfg.endpoint.auth_failures };
    Ok(Parts { settings: cfg.delivery.clone(), encoder, transport })
}

/// The collector as the engine's transport.
pub struct Otlp {
    /// The client and URL.
    client: Client,
    /// Builds bodies (format, compression, resource attributes in force).
    encoder: Encoder,
    /// 401/403 answers.
    auth_failures: AuthFailures,
}

impl Transport for Otlp {
    type Body = Body;

    async fn body(&self, units: &Arc<Units>) -> Option<Body> {
        let (units, enc) = (units.clone(), self.encoder.clone());
        let (content_type, content_encoding, records) = (enc.wire.content_type(), enc.compression.content_encoding(), units.len());
        match tokio::task::spawn_blocking(move || enc.body(&units)).await {
            Ok(b) => Some(Body { bytes: b.into(), content_type, content_encoding, records }),
            Err(e) => {
                tracing::error!(error = %e, "encoding a request failed");
                None
            }
        }
    }

    async fn attempt(&self, body: &Body, _units: &Units) -> Outcome {
        let mut resp = match self.client.post(body).await {
            Ok(r) => r,
            Err(retry) => return retry,
        };
        let code = resp.status().as_u16();
        if resp.status().is_success() {
            let json = resp.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let (answer, _) = wire::read_body(&mut resp, ANSWER_BYTES).await;
            return match rejected(&answer, json) {
                Some((n, message)) if n > 0 => Outcome::Poison {
                    status: code,
                    body: format!(
                        "partial_success: the collector rejected {n} of the request's {} log records (it does not say which): {message}",
                        body.records
                    ),
                },
                _ => Outcome::Delivered,
            };
        }
        let after = wire::retry_after(&resp);
        let text = wire::error_text(&mut resp).await;
        wire::status_outcome(code, after, text, self.auth_failures, matches!(code, 429 | 502 | 503 | 504))
    }

    fn destination(&self) -> &str {
        self.client.log_url()
    }
}

/// `partial_success` of an `ExportLogsServiceResponse` (protobuf, or
/// OTLP/JSON): the log records rejected and the collector's message.
/// `None` when the answer says nothing of it (an empty 2xx is a success).
fn rejected(answer: &[u8], json: bool) -> Option<(i64, String)> {
    if json {
        let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
        let p = v.get("partialSuccess")?;
        let n = match p.get("rejectedLogRecords") {
            Some(serde_json::Value::String(s)) => s.parse().ok()?,
            Some(n) => n.as_i64()?,
            None => 0,
        };
        let message = p.get("errorMessage").and_then(|m| m.as_str()).unwrap_or_default();
        return Some((n, crate::logsafe::clip(message, 500).to_string()));
    }
    let partial = proto::fields(answer)?.into_iter().find_map(|(f, v)| match (f, v) {
        (1, proto::Read::Bytes(b)) => Some(b),
        _ => None,
    })?;
    let (mut n, mut message) = (0, String::new());
    for (f, v) in proto::fields(partial)? {
        match (f, v) {
            (1, proto::Read::Varint(v)) => n = v as i64,
            (2, proto::Read::Bytes(b)) => message = crate::logsafe::clip(&String::from_utf8_lossy(b), 500).to_string(),
            _ => {}
        }
    }
    Some((n, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_success_in_both_encodings() {
        let mut partial = Vec::new();
        proto::varint_field(&mut partial, 1, 3);
        proto::string(&mut partial, 2, "3 refused");
        let mut answer = Vec::new();
        proto::len_prefix(&mut answer, 1, partial.len());
        answer.extend_from_slice(&partial);
        assert_eq!(rejected(&answer, false), Some((3, "3 refused".into())));
        assert_eq!(rejected(b"", false), None, "an empty 2xx is a success");
        assert_eq!(rejected(br#"{"partialSuccess":{"rejectedLogRecords":"2","errorMessage":"no"}}"#, true), Some((2, "no".into())));
        assert_eq!(rejected(br#"{"partialSuccess":{"rejectedLogRecords":4}}"#, true), Some((4, String::new())));
        assert_eq!(rejected(b"{}", true), None);
    }

    #[test]
    fn the_section_names_its_keys() {
        let cfg = |t: &str| OtlpConfig::from_section(toml::from_str(t).unwrap(), Path::new(""));
        let c = cfg("url = \"http://collector:4318/v1/logs\"").unwrap();
        assert_eq!((c.format, c.delivery.spool_max_bytes), (Wire::Protobuf, 1 << 30));
        assert_eq!(cfg("url = \"collector:4318\"").unwrap_err().key(), Some("otlp.url"));
        assert_eq!(cfg("url = \"http://c/\"\nretry_max_ms = 1").unwrap_err().key(), Some("otlp.retry_max_ms"));
        assert!(toml::from_str::<OtlpSection>("url = \"http://c/\"\nformat = \"thrift\"").is_err());
    }
}
