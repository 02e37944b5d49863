//! The upstream sink over HTTPS: a custom CA (`upstream.ca_file`) and mutual
//! TLS (`upstream.client_cert` / `client_key`) against a real TLS server on
//! 127.0.0.1:0.
//!
//! Certificates (a test CA, a server certificate for `127.0.0.1`, a client
//! certificate) are generated at test time with `rcgen`. The TLS server
//! ([`TlsFront`], tokio-rustls with the ring provider) terminates TLS and
//! passes the plain HTTP on to the test collector (`support_upstream`), so
//! the collector's record checks apply unchanged; it counts handshakes and
//! keeps the client certificates it was shown. The Kafka tests put the
//! same server in front of the broker ([`crate::kafka`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

use crate::support;
use crate::support_upstream::{Collector, Format};
use crate::upstream::e2e::{ids, wait_all, Env};
use crate::upstream::{config, expect_all, wait_for, Harness};

/// A certificate with its key, as DER (for the server) and PEM (for the
/// bridge's config).
pub(crate) struct Issued {
    /// The certificate, DER.
    der: CertificateDer<'static>,
    /// The certificate, PEM.
    cert_pem: String,
    /// The private key, PKCS#8 DER.
    key_der: Vec<u8>,
    /// The private key, PEM.
    key_pem: String,
}

/// A test PKI: one CA, a server certificate and a client certificate it
/// signed.
pub(crate) struct Pki {
    /// The CA (what `ca_file` trusts).
    pub(crate) ca: Issued,
    /// The server's certificate, for `127.0.0.1` and `localhost`.
    server: Issued,
    /// The bridge's client certificate (mutual TLS).
    client: Issued,
}

impl Pki {
    pub(crate) fn generate() -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "calllog-bridge test CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = p.self_signed(&ca_key).expect("self-sign CA");
        let leaf = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut p = CertificateParams::new(names).expect("leaf params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("sign leaf");
            Issued { der: cert.der().clone(), cert_pem: cert.pem(), key_der: key.serialize_der(), key_pem: key.serialize_pem() }
        };
        let server = leaf(vec!["127.0.0.1".into(), "localhost".into()], "collector.test", ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf(vec!["bridge.test".into()], "bridge.test", ExtendedKeyUsagePurpose::ClientAuth);
        let ca = Issued {
            der: ca_cert.der().clone(),
            cert_pem: ca_cert.pem(),
            key_der: ca_key.serialize_der(),
            key_pem: ca_key.serialize_pem(),
        };
        Pki { ca, server, client }
    }

    /// Writes the CA certificate and the client certificate and key as PEM
    /// files under `dir`; returns (ca, client cert, client key).
    pub(crate) fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let files = [("ca.pem", &self.ca.cert_pem), ("client.pem", &self.client.cert_pem), ("client.key", &self.client.key_pem)];
        let paths: Vec<PathBuf> = files
            .iter()
            .map(|(name, text)| {
                let p = dir.join(name);
                std::fs::write(&p, text).expect("write PEM");
                p
            })
            .collect();
        (paths[0].clone(), paths[1].clone(), paths[2].clone())
    }

    /// A rustls server config presenting the server certificate; with
    /// `require_client_cert`, a client certificate signed by the CA is
    /// required.
    pub(crate) fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().expect("versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der.clone()).expect("CA root");
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key_der.clone()));
        // No ALPN: the collector behind speaks HTTP/1.1 only.
        Arc::new(builder.with_single_cert(vec![self.server.der.clone()], key).expect("server cert"))
    }
}

/// A TLS server on 127.0.0.1:0 that forwards the decrypted bytes of each
/// connection to a plain-HTTP backend (the test collector).
pub(crate) struct TlsFront {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Completed handshakes.
    pub(crate) handshakes: Arc<AtomicUsize>,
    /// Failed handshakes (untrusted certificate, missing client certificate).
    pub(crate) failed: Arc<AtomicUsize>,
    /// The first certificate of each client that presented one.
    client_certs: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    /// Stops the server when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsFront {
    /// Starts the server on its own thread and runtime.
    pub(crate) fn start(config: Arc<rustls::ServerConfig>, backend: SocketAddr) -> TlsFront {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let client_certs = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ok, bad, certs) = (handshakes.clone(), failed.clone(), client_certs.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("TLS front runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        acc = listener.accept() => {
                            let Ok((sock, _)) = acc else { continue };
                            let (acceptor, ok, bad, certs) = (acceptor.clone(), ok.clone(), bad.clone(), certs.clone());
                            tokio::spawn(async move {
                                let mut tls = match acceptor.accept(sock).await {
                                    Ok(s) => s,
                                    Err(_) => {
                                        bad.fetch_add(1, Ordering::SeqCst);
                                        return;
                                    }
                                };
                                ok.fetch_add(1, Ordering::SeqCst);
                                if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                                    certs.lock().unwrap().push(c.clone().into_owned());
                                }
                                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                            });
                        }
                    }
                }
            });
        });
        TlsFront { addr, handshakes, failed, client_certs, _stop: stop_tx }
    }

    /// The https URL to POST to.
    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}

/// One test's scratch directory with the PEM files, the collector and the
/// TLS server in front of it.
struct Site {
    /// Scratch directory (the sink's state_dir too).
    dir: tempfile::TempDir,
    /// The certificates.
    pki: Pki,
    /// The CA certificate file.
    ca: PathBuf,
    /// The client certificate file.
    cert: PathBuf,
    /// The client key file.
    key: PathBuf,
    /// The plain-HTTP collector behind the TLS server.
    collector: Collector,
    /// The TLS server.
    front: TlsFront,
}

impl Site {
    /// A fresh PKI and servers; with `require_client_cert` the server
    /// demands a client certificate signed by the CA.
    fn start(require_client_cert: bool) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate();
        let (ca, cert, key) = pki.write(dir.path());
        let collector = Collector::start(Format::Ndjson);
        let front = TlsFront::start(pki.server_config(require_client_cert), collector.addr);
        Site { dir, pki, ca, cert, key, collector, front }
    }

    /// `ca_file = ...` (and, with `client`, the client certificate and key)
    /// as upstream config lines.
    fn tls_keys(&self, client: bool) -> String {
        let mut text = format!("ca_file = {:?}\n", self.ca.to_string_lossy());
        if client {
            text.push_str(&format!("client_cert = {:?}\nclient_key = {:?}\n", self.cert.to_string_lossy(), self.key.to_string_lossy()));
        }
        text
    }

    /// Waits until the server has refused `n` handshakes and the sink has
    /// retried `n` times; then checks that nothing arrived and nothing was
    /// dead-lettered (a TLS failure is a transport error, not a poison
    /// batch).
    async fn expect_refused_and_retried(&self, h: &Harness, n: usize) {
        wait_for("refused handshakes and retries", Duration::from_secs(10), || {
            self.front.failed.load(Ordering::SeqCst) >= n && h.stats.retries.load(Ordering::Relaxed) >= n as u64
        })
        .await;
        assert_eq!(self.front.handshakes.load(Ordering::SeqCst), 0, "a handshake the server should refuse succeeded");
        assert_eq!(self.collector.received().len(), 0);
        assert_eq!(h.acked(), 0, "nothing is acknowledged before it is delivered");
        assert_eq!(h.stats.dead_lettered_records.load(Ordering::Relaxed), 0);
        assert!(!self.dir.path().join("dead-letter.ndjson").exists(), "a TLS failure is not a poison batch");
    }
}

/// `ca_file` set to the test CA: records arrive over https.
#[tokio::test]
async fn records_arrive_over_https_with_a_custom_ca() {
    let s = Site::start(false);
    let cfg = config(&s.front.url("/ingest"), &format!("{}batch_max_records = 50\n", s.tls_keys(false)));
    let mut h = Harness::start(&cfg, s.dir.path()).await;
    h.send(0..300, 40).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    expect_all(&s.collector, 300);
    assert!(s.front.handshakes.load(Ordering::SeqCst) >= 1);
    assert_eq!(s.front.failed.load(Ordering::SeqCst), 0);
    assert!(s.collector.received().iter().all(|r| r.path == "/ingest" && r.status == 200));
    assert_eq!(h.stats.delivered_records.load(Ordering::Relaxed), 300);
    h.close().await;
}

/// Without `ca_file` the server's certificate is not trusted: a transport
/// error, so the sink retries; nothing is acknowledged or dead-lettered.
/// After a restart with the CA configured everything arrives.
#[tokio::test]
async fn an_untrusted_server_certificate_is_retried_not_dead_lettered() {
    let s = Site::start(false);
    // No spooling while it fails: batches wait in memory, unacknowledged.
    let cfg = config(&s.front.url("/"), "spool_after_ms = 600000\nbatch_max_records = 50\n");
    let mut h = Harness::start(&cfg, s.dir.path()).await;
    h.send(0..100, 50).await;
    s.expect_refused_and_retried(&h, 3).await;
    // Stopping at once spools the pending requests (acknowledging them);
    // a sink that trusts the CA drains the spool: nothing was lost.
    h.shutdown.cancel();
    h.close().await;
    assert_eq!(h.acked(), 2);
    let mut h2 = Harness::start(&config(&s.front.url("/"), &s.tls_keys(false)), s.dir.path()).await;
    wait_for("the spool to drain over https", Duration::from_secs(20), || s.collector.delivered_set().len() == 100).await;
    expect_all(&s.collector, 100);
    h2.close().await;
}

/// The server requires a client certificate: with `client_cert` /
/// `client_key` the bridge presents its certificate and records arrive.
#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let s = Site::start(true);
    let cfg = config(&s.front.url("/"), &format!("{}batch_max_records = 50\n", s.tls_keys(true)));
    let mut h = Harness::start(&cfg, s.dir.path()).await;
    h.send(0..200, 50).await;
    h.wait_acked(h.sent, Duration::from_secs(20)).await;
    expect_all(&s.collector, 200);
    assert_eq!(s.front.failed.load(Ordering::SeqCst), 0);
    let presented = s.front.client_certs.lock().unwrap().clone();
    assert!(!presented.is_empty());
    assert!(presented.iter().all(|c| *c == s.pki.client.der), "the bridge presented another certificate");
    h.close().await;
}

/// The server requires a client certificate and none is configured: the
/// server refuses the connection, the sink retries and dead-letters
/// nothing.
#[tokio::test]
async fn mutual_tls_without_a_client_certificate_is_retried() {
    let s = Site::start(true);
    let cfg = config(&s.front.url("/"), &format!("{}spool_max_bytes = 0\nshutdown_grace_ms = 300\n", s.tls_keys(false)));
    let mut h = Harness::start(&cfg, s.dir.path()).await;
    h.send(0..20, 10).await;
    s.expect_refused_and_retried(&h, 2).await;
    h.close().await;
    assert_eq!(h.acked(), 0, "undelivered batches must not be acknowledged");
}

/// The real binary against a server it does not trust: its log says why
/// (the certificate), nothing arrives and nothing is dead-lettered; run
/// again with `ca_file`, it delivers every record (nothing was lost).
#[test]
fn the_bridge_logs_an_untrusted_certificate_and_delivers_once_the_ca_is_configured() {
    let s = Site::start(false);
    let all = ids("t", 0..300);
    let mut env = Env::new(&s.front.url("/"), "spool_after_ms = 600000\nshutdown_grace_ms = 300\n");
    env.append("access.log", &all);
    env.start();
    support::poll_until(Duration::from_secs(30), "a refused handshake and a retry in the log", || {
        (s.front.failed.load(Ordering::SeqCst) >= 2 && env.log_text().contains("will retry")).then_some(())
    });
    let log = env.log_text();
    assert!(log.to_lowercase().contains("certificate"), "the log does not say the certificate is the problem:\n{log}");
    env.stop();
    assert_eq!(s.collector.received().len(), 0);
    assert!(!env.state.join("dead-letter.ndjson").exists(), "a TLS failure is not a poison batch");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, text.replace("[upstream]\n", &format!("[upstream]\n{}", s.tls_keys(false)))).unwrap();
    env.start();
    wait_all(&s.collector, &env, &all);
    env.stop();
}

/// A config with an `[upstream]` section whose extra keys are `upstream`.
fn bridge_config(dir: &Path, upstream: &str) -> PathBuf {
    let path = dir.join("bridge.toml");
    let text = format!(
        "state_dir = {state:?}\n\n[[source]]\npaths = [{logs:?}]\n\n[status]\nenabled = false\n\n[upstream]\nurl = \"https://127.0.0.1:9/ingest\"\n{upstream}\n",
        state = dir.join("state").to_string_lossy(),
        logs = dir.join("logs/access*.log").to_string_lossy(),
    );
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// `check-config` on `upstream`: exit code and stderr.
fn check_config(dir: &Path, upstream: &str) -> (i32, String) {
    let path = bridge_config(dir, upstream);
    let out = support::cmd().arg("check-config").arg("--config").arg(&path).output().expect("run check-config");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A missing or unreadable CA file, or a client certificate or key that is
/// not PEM, exits 64 naming the key; good PEM files pass.
#[test]
fn bad_tls_files_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate();
    let (ca, cert, key) = pki.write(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.to_string_lossy().into_owned();

    let (code, err) =
        check_config(dir.path(), &format!("ca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n", s(&ca), s(&cert), s(&key)));
    assert_eq!(code, 0, "good PEM files are refused: {err}");

    for (upstream, want) in [
        (format!("ca_file = {:?}", s(&missing)), "upstream.ca_file"),
        (format!("ca_file = {:?}", s(&garbage)), "upstream.ca_file"),
        // The key given where the CA certificate belongs.
        (format!("ca_file = {:?}", s(&key)), "upstream.ca_file"),
        (format!("ca_file = {:?}", s(dir.path())), "upstream.ca_file"),
        (format!("client_cert = {:?}\nclient_key = {:?}", s(&garbage), s(&key)), "upstream.client_cert"),
        (format!("client_cert = {:?}\nclient_key = {:?}", s(&missing), s(&key)), "upstream.client_cert"),
        (format!("client_cert = {:?}\nclient_key = {:?}", s(&cert), s(&garbage)), "upstream.client_key"),
        (format!("client_cert = {:?}\nclient_key = {:?}", s(&cert), s(&missing)), "upstream.client_key"),
        (format!("client_cert = {:?}", s(&cert)), "upstream.client_cert"),
    ] {
        let (code, err) = check_config(dir.path(), &upstream);
        assert_eq!(code, 64, "{upstream}: exit {code}, stderr: {err}");
        assert!(err.contains(&format!("`{want}`")), "{upstream}: the message does not name `{want}`: {err}");
    }
}
