//! Connecting to a Kafka cluster: the keys every Kafka section shares
//! (`brokers`, `client_id`, TLS, SASL, `request_timeout_ms`), checked once
//! into [`ClientSettings`], and [`connect`], which builds the client.
//!
//! Secrets come from files (`sasl_password_file`) and never reach a log
//! line or `Debug`; TLS uses rustls with the built-in web roots plus
//! `ca_file`, and a client certificate for mutual TLS. Every TLS and SASL
//! file is read when the config is read, so `check-config` and `run`
//! refuse a missing or malformed one with exit 64 naming the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{pem_certificates, pem_private_key, Pem};
use crate::settings::{ConfigError, Secret};

/// The default `client_id`: what the broker's logs and quotas see.
pub const DEFAULT_CLIENT_ID: &str = "calllog-bridge";

/// Declares a Kafka section as written: the keys given, then the client
/// keys every Kafka section has (`brokers`, `client_id`, TLS, SASL,
/// `request_timeout_ms`), listed here once for the sink's `[kafka]`, the
/// source's `[[source]] kind = "kafka"` and [`ClientSection`]. Serde reads
/// the section whole with unknown keys refused, so a mistyped key keeps
/// its line and its nearest known key (a flattened sub-struct would lose
/// both), and `client()` hands the client keys over as a
/// [`ClientSection`]. Their defaults are in [`ClientDefaults`].
macro_rules! kafka_section {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($body)*
            /// Bootstrap brokers, `host:port` each.
            pub brokers: Vec<String>,
            /// The client id the brokers see (default
            /// [`DEFAULT_CLIENT_ID`](crate::kafka::client::DEFAULT_CLIENT_ID)).
            #[serde(default)]
            pub client_id: Option<String>,
            /// Connect with TLS.
            #[serde(default)]
            pub tls: bool,
            /// Extra CA certificates (PEM) to trust besides the built-in roots.
            #[serde(default)]
            pub ca_file: Option<std::path::PathBuf>,
            /// Client certificate (PEM) for mutual TLS.
            #[serde(default)]
            pub client_cert: Option<std::path::PathBuf>,
            /// Client key (PEM) for mutual TLS.
            #[serde(default)]
            pub client_key: Option<std::path::PathBuf>,
            /// `plain`, `scram-sha-256` or `scram-sha-512`; none by default.
            #[serde(default)]
            pub sasl_mechanism: Option<crate::kafka::client::SaslMechanism>,
            /// The SASL user.
            #[serde(default)]
            pub sasl_username: Option<String>,
            /// File holding the SASL password (trailing newline trimmed).
            #[serde(default)]
            pub sasl_password_file: Option<std::path::PathBuf>,
            /// How long one request (a produce, a fetch, a metadata lookup)
            /// may take before it is given up and retried (default by
            /// role, [`ClientDefaults`](crate::kafka::client::ClientDefaults)).
            #[serde(default)]
            pub request_timeout_ms: Option<u64>,
        }

        impl $name {
            /// The client keys of this section.
            pub fn client(&self) -> crate::kafka::client::ClientSection {
                crate::kafka::client::ClientSection {
                    brokers: self.brokers.clone(),
                    client_id: self.client_id.clone(),
                    tls: self.tls,
                    ca_file: self.ca_file.clone(),
                    client_cert: self.client_cert.clone(),
                    client_key: self.client_key.clone(),
                    sasl_mechanism: self.sasl_mechanism,
                    sasl_username: self.sasl_username.clone(),
                    sasl_password_file: self.sasl_password_file.clone(),
                    request_timeout_ms: self.request_timeout_ms,
                }
            }
        }
    };
}
pub(crate) use kafka_section;

kafka_section! {
    /// The client keys alone, as a Kafka section writes them.
    pub struct ClientSection {}
}

/// The defaults of the client keys that differ by role: the one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDefaults {
    /// `request_timeout_ms`.
    pub request_timeout_ms: u64,
}

/// The sink's (an edge producing): a produce with `acks = all` waits for
/// every in-sync replica, so the delivery engine's request time limit
/// ([`crate::delivery::DEFAULTS`], 30 s).
pub const PRODUCER: ClientDefaults = ClientDefaults { request_timeout_ms: crate::delivery::DEFAULTS.request_timeout_ms };

/// The source's (a hub consuming): a fetch is held by the broker for at
/// most `fetch_max_wait_ms` (500 ms), so a broker silent for 10 s is
/// given up sooner.
pub const CONSUMER: ClientDefaults = ClientDefaults { request_timeout_ms: 10_000 };

/// A SASL mechanism the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// RFC 4616: the password travels as is (use it with TLS).
    #[serde(rename = "plain")]
    Plain,
    /// RFC 7677.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "plain",
            SaslMechanism::ScramSha256 => "scram-sha-256",
            SaslMechanism::ScramSha512 => "scram-sha-512",
        }
    }
}

/// TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Extra CA certificates.
    pub ca: Option<Pem>,
    /// Client certificate chain and key.
    pub identity: Option<(Pem, Pem)>,
}

/// SASL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslSettings {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user.
    pub username: String,
    /// The password (from `sasl_password_file`).
    pub password: Secret,
}

/// How to reach a Kafka cluster, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Bootstrap brokers (`host:port`).
    pub brokers: Vec<String>,
    /// The client id.
    pub client_id: String,
    /// TLS, when `tls = true`.
    pub tls: Option<TlsSettings>,
    /// SASL, when `sasl_mechanism` is set.
    pub sasl: Option<SaslSettings>,
    /// One request's time limit (`request_timeout_ms`).
    pub request_timeout: Duration,
}

impl ClientSettings {
    /// The settings of the client keys of section `key` (`kafka`,
    /// `source[1]`): relative paths resolved against `base`, TLS and SASL
    /// files read and checked; errors name the key.
    /// `d` holds the defaults of the section's role ([`PRODUCER`],
    /// [`CONSUMER`]).
    pub fn from_section(s: ClientSection, key: &str, base: &Path, d: &ClientDefaults) -> Result<ClientSettings, ConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        let resolve = |p: Option<PathBuf>| p.map(|p| if p.is_relative() && !base.as_os_str().is_empty() { base.join(p) } else { p });
        if s.brokers.is_empty() {
            return Err(ConfigError::invalid(k("brokers"), "name at least one broker as `host:port`"));
        }
        for b in &s.brokers {
            check_broker(b).map_err(|m| ConfigError::invalid(k("brokers"), format!("`{b}`: {m}")))?;
        }
        let client_id = s.client_id.unwrap_or_else(|| DEFAULT_CLIENT_ID.to_string());
        let request_timeout_ms = s.request_timeout_ms.unwrap_or(d.request_timeout_ms);
        if client_id.is_empty() || client_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(k("client_id"), "must be non-empty printable text"));
        }
        if request_timeout_ms < 100 {
            return Err(ConfigError::invalid(k("request_timeout_ms"), "must be at least 100"));
        }
        let (ca_file, client_cert, client_key) = (resolve(s.ca_file), resolve(s.client_cert), resolve(s.client_key));
        let tls = if s.tls {
            if client_cert.is_some() != client_key.is_some() {
                return Err(ConfigError::invalid(k("client_cert"), "`client_cert` and `client_key` go together"));
            }
            let ca = ca_file.map(|p| pem_certificates(p, &k("ca_file"))).transpose()?;
            let identity = match (client_cert, client_key) {
                (Some(c), Some(kf)) => Some((pem_certificates(c, &k("client_cert"))?, pem_private_key(kf, &k("client_key"))?)),
                _ => None,
            };
            Some(TlsSettings { ca, identity })
        } else {
            for (name, set) in
                [("ca_file", ca_file.is_some()), ("client_cert", client_cert.is_some()), ("client_key", client_key.is_some())]
            {
                if set {
                    return Err(ConfigError::invalid(k(name), "is a TLS setting: set `tls = true` to connect with TLS"));
                }
            }
            None
        };
        let sasl = match s.sasl_mechanism {
            Some(mechanism) => {
                let username = s.sasl_username.filter(|u| !u.is_empty()).ok_or_else(|| {
                    ConfigError::invalid(k("sasl_username"), format!("`sasl_mechanism = \"{}\"` needs a user", mechanism.name()))
                })?;
                let file = resolve(s.sasl_password_file)
                    .ok_or_else(|| ConfigError::invalid(k("sasl_password_file"), "SASL needs the password in a file"))?;
                let password = Secret::resolve(None, Some(&file), &k("sasl_password_file"), &k("sasl_password_file"))?
                    .ok_or_else(|| ConfigError::invalid(k("sasl_password_file"), "is empty"))?;
                if mechanism == SaslMechanism::Plain && !s.tls {
                    tracing::warn!(key = %k("sasl_mechanism"), "SASL PLAIN without TLS sends the password in clear text");
                }
                Some(SaslSettings { mechanism, username, password })
            }
            None => {
                for (name, set) in [("sasl_username", s.sasl_username.is_some()), ("sasl_password_file", s.sasl_password_file.is_some())] {
                    if set {
                        return Err(ConfigError::invalid(k(name), "is a SASL setting: set `sasl_mechanism` too"));
                    }
                }
                None
            }
        };
        Ok(ClientSettings { brokers: s.brokers, client_id, tls, sasl, request_timeout: Duration::from_millis(request_timeout_ms) })
    }

    /// The brokers as logs show them (`kafka://b1:9092,b2:9092`).
    pub fn for_logs(&self) -> String {
        format!("kafka://{}", self.brokers.join(","))
    }
}

/// Checks `host:port` (a name or an address; `[v6]:port`).
fn check_broker(b: &str) -> Result<(), &'static str> {
    let (host, port) = b.rsplit_once(':').ok_or("expected host:port")?;
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err("expected host:port (no scheme, no path)");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port is not a number from 1 to 65535"),
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS files do not make a client configuration.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// No broker answered (or the handshake, TLS or SASL failed).
    #[error("{0}")]
    Kafka(#[from] rskafka::client::error::Error),
    /// No broker answered within `request_timeout_ms`.
    #[error("no broker answered within {0:?}")]
    Timeout(Duration),
}

/// The rustls client configuration for `tls`.
pub fn tls_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &tls.ca {
        for c in rustls_pemfile::certs(&mut &ca.bytes[..]) {
            let c = c.map_err(|e| ConnectError::Tls(format!("{}: {e}", ca.path.display())))?;
            roots.add(c).map_err(|e| ConnectError::Tls(format!("{}: {e}", ca.path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match &tls.identity {
        Some((cert, key)) => {
            let chain: Vec<_> = rustls_pemfile::certs(&mut &cert.bytes[..])
                .collect::<Result<_, _>>()
                .map_err(|e| ConnectError::Tls(format!("{}: {e}", cert.path.display())))?;
            let k = rustls_pemfile::private_key(&mut &key.bytes[..])
                .map_err(|e| ConnectError::Tls(format!("{}: {e}", key.path.display())))?
                .ok_or_else(|| ConnectError::Tls(format!("{}: no private key", key.path.display())))?;
            builder.with_client_auth_cert(chain, k).map_err(|e| ConnectError::Tls(e.to_string()))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Connects to the cluster (one metadata round trip), within
/// `request_timeout_ms`. The client retries a failing request inside
/// itself only until `request_timeout_ms` has passed, so an outage comes
/// back to the caller as an error it can count, log and retry.
pub async fn connect(s: &ClientSettings) -> Result<rskafka::client::Client, ConnectError> {
    let backoff = rskafka::BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(s.request_timeout),
    };
    let mut b = rskafka::client::ClientBuilder::new(s.brokers.clone()).client_id(s.client_id.as_str()).backoff_config(backoff);
    if let Some(tls) = &s.tls {
        b = b.tls_config(Arc::new(tls_config(tls)?));
    }
    if let Some(sasl) = &s.sasl {
        use rskafka::client::{Credentials, SaslConfig};
        let c = Credentials::new(sasl.username.clone(), sasl.password.expose().to_string());
        b = b.sasl_config(match sasl.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(c),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
        });
    }
    match tokio::time::timeout(s.request_timeout, b.build()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnectError::Timeout(s.request_timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str, base: &Path) -> Result<ClientSettings, ConfigError> {
        let s: ClientSection = toml::from_str(text).map_err(|e| ConfigError::invalid("kafka", e))?;
        ClientSettings::from_section(s, "kafka", base, &CONSUMER)
    }

    fn err_key(text: &str) -> String {
        settings(text, Path::new("")).unwrap_err().key().unwrap_or("").to_string()
    }

    #[test]
    fn brokers_and_defaults() {
        let s = settings("brokers = [\"127.0.0.1:9092\", \"kafka-1.example:9093\", \"[::1]:9092\"]", Path::new("")).unwrap();
        assert_eq!(s.client_id, DEFAULT_CLIENT_ID);
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        assert!(s.tls.is_none() && s.sasl.is_none());
        assert_eq!(s.for_logs(), "kafka://127.0.0.1:9092,kafka-1.example:9093,[::1]:9092");
        for bad in ["brokers = []", "brokers = [\"k1\"]", "brokers = [\"k1:0\"]", "brokers = [\"tcp://k1:9092\"]", "brokers = [\"k1:x\"]"] {
            assert_eq!(err_key(bad), "kafka.brokers", "{bad}");
        }
        assert_eq!(err_key("brokers = [\"k:1\"]\nclient_id = \"\""), "kafka.client_id");
        assert_eq!(err_key("brokers = [\"k:1\"]\nrequest_timeout_ms = 5"), "kafka.request_timeout_ms");
    }

    #[test]
    fn tls_and_sasl_keys_go_together_and_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pw"), "s3cret-pass\n").unwrap();
        std::fs::write(d.path().join("empty"), "\n").unwrap();
        std::fs::write(d.path().join("notpem"), "hello").unwrap();
        let b = "brokers = [\"k:1\"]\n";
        assert_eq!(err_key(&format!("{b}ca_file = \"ca.pem\"")), "kafka.ca_file");
        assert_eq!(err_key(&format!("{b}tls = true\nclient_cert = \"c.pem\"")), "kafka.client_cert");
        assert_eq!(err_key(&format!("{b}sasl_username = \"u\"")), "kafka.sasl_username");
        assert_eq!(err_key(&format!("{b}sasl_mechanism = \"scram-sha-512\"\nsasl_password_file = \"pw\"")), "kafka.sasl_username");
        assert_eq!(err_key(&format!("{b}sasl_mechanism = \"plain\"\nsasl_username = \"u\"")), "kafka.sasl_password_file");
        let e = settings(&format!("{b}tls = true\nca_file = \"notpem\""), d.path()).unwrap_err();
        assert_eq!(e.key(), Some("kafka.ca_file"), "{e}");
        let e = settings(&format!("{b}sasl_mechanism = \"plain\"\nsasl_username = \"u\"\nsasl_password_file = \"empty\""), d.path())
            .unwrap_err();
        assert_eq!(e.key(), Some("kafka.sasl_password_file"), "{e}");
        assert!(toml::from_str::<ClientSection>(&format!("{b}sasl_mechanism = \"gssapi\"")).is_err());
        let s =
            settings(&format!("{b}sasl_mechanism = \"scram-sha-256\"\nsasl_username = \"bridge\"\nsasl_password_file = \"pw\""), d.path())
                .unwrap();
        let sasl = s.sasl.as_ref().unwrap();
        assert_eq!((sasl.mechanism, sasl.username.as_str(), sasl.password.expose()), (SaslMechanism::ScramSha256, "bridge", "s3cret-pass"));
        assert!(!format!("{s:?}").contains("s3cret"), "the password never shows: {s:?}");
    }
}
