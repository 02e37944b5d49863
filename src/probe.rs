//! The peers a config names, tried once by `check-config` the way it tries
//! the listen addresses: an upstream URL (DNS, TCP, TLS) and Kafka brokers
//! (reachable? answering as Kafka? the topics there, with how many
//! partitions?).
//!
//! What a probe finds is a warning, never a refusal: a collector or a
//! broker that is down at start is retried by the bridge for as long as
//! it takes. Sinks and sources declare their peers
//! ([`crate::sink::Needs::peers`], [`crate::source::Check::peers`]);
//! [`crate::preflight`] collects them. Every probe is bounded by
//! [`PROBE_TIMEOUT`] and all run at once, so `check-config` waits a few
//! seconds at most whatever answers (or does not).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::kafka::client::{ClientSettings, TlsSettings};
use crate::logsafe::Escaped;
use crate::settings::Pem;

/// The longest any one probe takes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A peer the bridge will send to or read from.
#[derive(Debug, Clone)]
pub enum Peer {
    /// An HTTP(S) endpoint records are sent to.
    Http {
        /// Its config key (`upstream.url`).
        key: String,
        /// The URL.
        url: String,
        /// Extra CA certificates to trust.
        ca: Option<Pem>,
        /// Client certificate and key for mutual TLS.
        identity: Option<(Pem, Pem)>,
    },
    /// A Kafka cluster and the topics the bridge writes or reads there.
    Kafka {
        /// Its config key (`kafka.brokers`, `source[1].brokers`).
        key: String,
        /// How to reach it.
        client: ClientSettings,
        /// The topics that must exist.
        topics: Vec<String>,
    },
}

/// What a probe of one peer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The peer's config key.
    pub key: String,
    /// The peer as shown (`https://host:443`, `kafka://b1:9092`).
    pub target: String,
    /// `None` when everything answered; else what did not, said once.
    pub problem: Option<String>,
    /// What answered (the addresses, the topics and their partitions).
    pub found: String,
}

/// Probes every peer at once; each is bounded by [`PROBE_TIMEOUT`].
pub async fn all(peers: &[Peer]) -> Vec<Probed> {
    futures_util::future::join_all(peers.iter().map(|p| async move {
        let (key, target) = match p {
            Peer::Http { key, url, .. } => (key.clone(), crate::url::redact_url(url)),
            Peer::Kafka { key, client, .. } => (key.clone(), client.for_logs()),
        };
        let outcome = tokio::time::timeout(PROBE_TIMEOUT + Duration::from_millis(500), probe(p)).await;
        let (problem, found) = match outcome {
            Ok(Ok(found)) => (None, found),
            Ok(Err((problem, found))) => (Some(problem), found),
            Err(_) => (Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())), String::new()),
        };
        Probed { key, target, problem, found }
    }))
    .await
}

/// What answered, or (what did not, what answered before it).
type Outcome = Result<String, (String, String)>;

async fn probe(peer: &Peer) -> Outcome {
    match peer {
        Peer::Http { url, ca, identity, .. } => http(url, ca, identity).await,
        Peer::Kafka { client, topics, .. } => kafka(client, topics).await,
    }
}

/// DNS, TCP, then (for `https`) a TLS handshake with the trust the sink
/// uses (the system's web roots plus `ca_file`, the client certificate).
/// Nothing is sent over it.
async fn http(url: &str, ca: &Option<Pem>, identity: &Option<(Pem, Pem)>) -> Outcome {
    let parsed = reqwest::Url::parse(url).map_err(|e| (format!("not a URL: {e}"), String::new()))?;
    let host = parsed.host_str().ok_or_else(|| ("the URL names no host".to_string(), String::new()))?.to_string();
    let port = parsed.port_or_known_default().ok_or_else(|| ("the URL names no port".to_string(), String::new()))?;
    let host_for_dns = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let (tcp, addr) = reach(&host_for_dns, port).await.map_err(|p| (p, String::new()))?;
    let mut found = format!("{addr} answers");
    if parsed.scheme() == "https" {
        let tls = TlsSettings { ca: ca.clone(), identity: identity.clone() };
        let config = crate::kafka::client::tls_config(&tls).map_err(|e| (format!("TLS setup: {e}"), found.clone()))?;
        let name = rustls::pki_types::ServerName::try_from(host_for_dns.clone())
            .map_err(|e| (format!("`{host}` is not a TLS server name: {e}"), found.clone()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        match tokio::time::timeout(PROBE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(_)) => found.push_str(", TLS handshake done (certificate trusted)"),
            Ok(Err(e)) => {
                return Err((
                    format!(
                        "TCP connects but the TLS handshake fails: {} (an untrusted certificate needs `ca_file`)",
                        Escaped(&e.to_string())
                    ),
                    found,
                ))
            }
            Err(_) => return Err((format!("TCP connects but no TLS handshake within {} s", PROBE_TIMEOUT.as_secs()), found)),
        }
    }
    Ok(found)
}

/// Resolves `host` and connects to the first address that accepts.
async fn reach(host: &str, port: u16) -> Result<(TcpStream, SocketAddr), String> {
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => return Err(format!("`{host}` does not resolve: {e}")),
        Err(_) => return Err(format!("`{host}` does not resolve within {} s", PROBE_TIMEOUT.as_secs())),
    };
    let mut last = format!("`{host}` resolves to no address");
    for addr in addrs {
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok((s, addr)),
            Ok(Err(e)) => last = format!("no TCP connection to {addr}: {e}"),
            Err(_) => last = format!("no TCP connection to {addr} within {} s", PROBE_TIMEOUT.as_secs()),
        }
    }
    Err(last)
}

/// Each broker over TCP, then the cluster as Kafka (metadata through the
/// client the bridge uses, with TLS and SASL) and the topics.
async fn kafka(client: &ClientSettings, topics: &[String]) -> Outcome {
    let mut reachable = Vec::new();
    let mut down = Vec::new();
    for b in &client.brokers {
        let Some((host, port)) =
            b.rsplit_once(':').and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse().ok()?)))
        else {
            continue;
        };
        match reach(host, port).await {
            Ok(_) => reachable.push(b.as_str()),
            Err(e) => down.push(format!("{b}: {e}")),
        }
    }
    if reachable.is_empty() {
        return Err((format!("no broker reachable ({})", down.join("; ")), String::new()));
    }
    let mut found = format!("{} reachable over TCP", reachable.join(", "));
    let settings = ClientSettings { request_timeout: client.request_timeout.min(PROBE_TIMEOUT), ..client.clone() };
    let kafka = match crate::kafka::client::connect(&settings).await {
        Ok(c) => c,
        Err(e) => {
            return Err((
                format!("reachable, but no answer as Kafka: {} (a Kafka port? TLS and SASL settings?)", Escaped(&e.to_string())),
                found,
            ))
        }
    };
    let listed = match tokio::time::timeout(PROBE_TIMEOUT, kafka.list_topics()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err((format!("the brokers do not list their topics: {}", Escaped(&e.to_string())), found)),
        Err(_) => return Err((format!("the brokers do not list their topics within {} s", PROBE_TIMEOUT.as_secs()), found)),
    };
    found.push_str(", answers as Kafka");
    let mut missing = Vec::new();
    for t in topics {
        match listed.iter().find(|l| &l.name == t) {
            Some(l) => found.push_str(&format!(", topic `{}` has {} partition(s)", Escaped(t), l.partitions.len())),
            None => missing.push(format!("`{}`", Escaped(t))),
        }
    }
    if !down.is_empty() {
        return Err((format!("some brokers are not reachable ({})", down.join("; ")), found));
    }
    if !missing.is_empty() {
        return Err((format!("topic {} does not exist on these brokers (create it first)", missing.join(", ")), found));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_peer(url: String) -> Peer {
        Peer::Http { key: "upstream.url".into(), url, ca: None, identity: None }
    }

    #[tokio::test]
    async fn an_http_peer_that_accepts_is_reachable_and_a_closed_port_is_said() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap();
        let closed = {
            let c = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            c.local_addr().unwrap()
        };
        let p = all(&[http_peer(format!("http://{open}/ingest")), http_peer(format!("http://{closed}/ingest"))]).await;
        assert_eq!(p[0].problem, None, "{p:?}");
        assert!(p[0].found.contains(&open.to_string()), "{p:?}");
        let problem = p[1].problem.as_deref().unwrap();
        assert!(problem.contains("no TCP connection") && problem.contains(&closed.to_string()), "{problem}");
        assert_eq!(p[1].key, "upstream.url");
    }

    #[tokio::test]
    async fn tls_to_a_plain_port_fails_within_the_bound() {
        // Accepts, reads, answers nothing: the handshake cannot complete.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let started = std::time::Instant::now();
        let p = all(&[http_peer(format!("https://localhost:{}/", addr.port()))]).await;
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(2));
        let problem = p[0].problem.as_deref().unwrap();
        assert!(problem.contains("TLS handshake"), "{problem}");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_said() {
        let p = all(&[http_peer("https://no-such-host.invalid/".into())]).await;
        assert!(p[0].problem.as_deref().unwrap().contains("does not resolve"), "{p:?}");
    }
}
