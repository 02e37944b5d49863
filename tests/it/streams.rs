//! Channels per organization (`[[channel.stream]]`) and tokens that
//! rotate without a gap, with real WebSocket clients over loopback: in
//! process (the sink fed from its queue) for what a client of one channel
//! may try against another, and end to end through the real binary for
//! organizations' dashboards across a restart and a token rotation by
//! reload. Records are told apart by `request_uuid`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use calllog_bridge::record::{Field, Record};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::channel::{connect, next_event, poll, read_records, record, refused, Chan, Event, Ws, DEADLINE, LE_LINE, TOKEN};
use crate::support;

/// Tokens of the streams under test.
const A_TOKEN: &str = "partner-a-token-7c41e9";
const B_TOKEN: &str = "partner-b-token-2d8f06";

/// `[[stream]]` tables for the in-process channel: `partner-a` gets the
/// records of organization "Partner A", `partner-b` those of `org-b`.
fn two_streams(extra_a: &str) -> String {
    format!(
        "[[stream]]\nid = \"partner-a\"\ntokens = [\"{A_TOKEN}\"]\norg_name = [\"Partner A\"]\n{extra_a}\n\
         [[stream]]\nid = \"partner-b\"\ntokens = [\"{B_TOKEN}\"]\norg_uuid = [\"org-b\"]\n"
    )
}

/// A record of organization `org` (`a`, `b`, `c`; `-`: none), its
/// `request_uuid` naming both.
fn org_record(i: u64, org: &str) -> Record<'static> {
    let mut r = record(i, "200", &format!("svc-{org}"));
    r.set(Field::RequestUuid, format!("{org}-{i:05}"));
    r.set(Field::ApiKey, format!("key-{org}-0123456789"));
    if org != "-" {
        r.set(Field::OrgName, format!("Partner {}", org.to_uppercase()));
        r.set(Field::OrgUuid, format!("org-{org}"));
    }
    r
}

/// Records `from..to` cycling through the organizations a, b, c and none.
fn mixed(from: u64, to: u64) -> Vec<Record<'static>> {
    (from..to).map(|i| org_record(i, ["a", "b", "c", "-"][(i % 4) as usize])).collect()
}

/// The uuids of `records` of organization `org`.
fn of(records: &[Record<'static>], org: &str) -> Vec<String> {
    records.iter().map(|r| r.get(Field::RequestUuid).to_string()).filter(|u| u.starts_with(&format!("{org}-"))).collect()
}

/// Reads until a message carries `last` (a uuid); returns every record
/// (uuid, org_name) and every notice before it. Panics on a close.
async fn until(ws: &mut Ws, last: &str) -> (Vec<(String, String)>, Vec<Value>) {
    let mut records = Vec::new();
    let mut notices = Vec::new();
    loop {
        match next_event(ws).await {
            Event::Data(v) if v.get("seq").is_none() => notices.push(v),
            Event::Data(v) => {
                for r in v["data"].as_array().expect("data") {
                    let id = r["request_uuid"].as_str().unwrap().to_string();
                    records.push((id.clone(), r["org_name"].as_str().unwrap_or("").to_string()));
                    if id == last {
                        return (records, notices);
                    }
                }
            }
            Event::Text(_) | Event::Ping => {}
            Event::Closed(c) => panic!("closed before {last}: {c:?}"),
        }
    }
}

fn ids(records: &[(String, String)]) -> Vec<String> {
    records.iter().map(|(id, _)| id.clone()).collect()
}

#[tokio::test]
async fn a_token_of_one_channel_never_opens_another() {
    let ch = Chan::start(&two_streams("")).await;
    // Another stream's path, the default channel's path: as a wrong token.
    for path in ["/ecls/subscribe/partner-b/eu", "/ecls/subscribe/chan-1/eu"] {
        let (status, body) = refused(&ch.url(&format!("{path}?key={A_TOKEN}"))).await;
        assert_eq!((status, body.trim()), (401, "unauthorized: wrong token"), "{path}");
    }
    // The default channel's token does not open a stream either.
    assert_eq!(refused(&ch.url(&format!("/ecls/subscribe/partner-a/eu?key={TOKEN}"))).await.0, 401);
    // A channel that does not exist: 404, whatever the token.
    assert_eq!(refused(&ch.url(&format!("/ecls/subscribe/partner-c/eu?key={A_TOKEN}"))).await.0, 404);
    // The token's own channel, by its path or by /stream.
    connect(&ch.url(&format!("/ecls/subscribe/partner-a/eu?key={A_TOKEN}"))).await;
    connect(&ch.url(&format!("/stream?key={A_TOKEN}"))).await;
}

#[tokio::test]
async fn each_channel_gets_its_records_live_and_by_since_and_query_filters_only_narrow() {
    let mut ch = Chan::start(&two_streams("")).await;
    let first = mixed(0, 40);
    ch.send_records(first.clone()).await;
    // Replay from the first record: A's only, though B's came between.
    let mut a = connect(&ch.url(&format!("/stream?key={A_TOKEN}&since=1"))).await;
    let want_a = of(&first, "a");
    let (got, notices) = until(&mut a, want_a.last().unwrap()).await;
    assert_eq!(ids(&got), want_a);
    assert!(got.iter().all(|(_, org)| org == "Partner A"));
    assert!(notices.is_empty(), "{notices:?}");
    // Query filters narrow the channel and never widen it: B's service
    // and B's api key give A nothing of B's.
    let url = |q: &str| ch.url(&format!("/stream?key={A_TOKEN}&since=1&{q}"));
    let mut by_service = connect(&url("service_id=svc-b,svc-a")).await;
    let mut by_key = connect(&url("api_key=key-b-0123456789,key-a-0123456789")).await;
    let mut by_status = connect(&url("status=2xx")).await;
    let mut b = connect(&ch.url(&format!("/ecls/subscribe/partner-b/eu?key={B_TOKEN}"))).await;
    let mut all = connect(&ch.url(&format!("/stream?key={TOKEN}"))).await;
    poll("six connections", || (ch.handle.connections() == 6).then_some(())).await;
    let second = mixed(40, 80);
    ch.send_records(second.clone()).await;
    for ws in [&mut by_service, &mut by_key, &mut by_status] {
        let want: Vec<String> = want_a.iter().cloned().chain(of(&second, "a")).collect();
        let (got, _) = until(ws, want.last().unwrap()).await;
        assert_eq!(ids(&got), want);
    }
    let (got, _) = until(&mut a, of(&second, "a").last().unwrap()).await;
    assert_eq!(ids(&got), of(&second, "a"));
    let (got, _) = until(&mut b, of(&second, "b").last().unwrap()).await;
    assert_eq!(ids(&got), of(&second, "b"), "B gets its records only");
    // The default channel gets every record, with or without organization.
    let (got, _) = until(&mut all, "--00079").await;
    assert_eq!(got.len(), 40);
    // Records without organization reach only the channels that do not
    // require one (here the default channel): the streams left them out.
    let st = ch.handle.stats();
    let filtered = |id: &str| st.stream(id).records_filtered.get();
    assert_eq!((filtered("chan-1"), filtered("partner-a"), filtered("partner-b")), (0, 60, 60));
}

#[tokio::test]
async fn a_lost_notice_counts_only_the_records_of_the_channel_that_asks() {
    // A small replay log: the first records fall out of it.
    let mut ch = Chan::start(&format!("replay_max_bytes = 65536\n{}", two_streams(""))).await;
    let mut sent = Vec::new();
    for k in 0..40 {
        let batch = mixed(k * 10, k * 10 + 10);
        sent.extend(batch.clone());
        ch.send_records(batch).await;
    }
    poll("every record appended", || (ch.handle.next_seq() == 401).then_some(())).await;
    let first = ch.handle.first_seq();
    assert!(first > 40, "the oldest records were evicted: first {first}");
    // Seq n is the n-th record sent.
    let evicted = &sent[..(first - 1) as usize];
    for (token, org) in [(A_TOKEN, "a"), (B_TOKEN, "b")] {
        let mut ws = connect(&ch.url(&format!("/stream?key={token}&since=1"))).await;
        let held = &sent[(first - 1) as usize..];
        let (got, notices) = until(&mut ws, of(held, org).last().unwrap()).await;
        assert_eq!(ids(&got), of(held, org));
        assert_eq!(notices.len(), 1, "{notices:?}");
        let n = &notices[0];
        assert_eq!(n["lost"].as_u64(), Some(of(evicted, org).len() as u64), "{org}: {n}");
        assert_eq!((n["since"].as_u64(), n["next"].as_u64()), (Some(1), Some(first)), "{n}");
    }
    // The default channel: every number, as before streams existed.
    let mut ws = connect(&ch.url(&format!("/stream?key={TOKEN}&since=1"))).await;
    let Event::Data(n) = next_event(&mut ws).await else { panic!("a notice") };
    assert_eq!(n["lost"].as_u64(), Some(first - 1), "{n}");
    // A stream asking from after its last evicted record lost nothing of
    // its own: no notice, though others' records were evicted.
    let last_a = (1..first).rfind(|s| sent[(*s - 1) as usize].get(Field::RequestUuid).starts_with("a-")).unwrap();
    let mut ws = connect(&ch.url(&format!("/stream?key={A_TOKEN}&since={}", last_a + 1))).await;
    let held = &sent[(first - 1) as usize..];
    let (_, notices) = until(&mut ws, of(held, "a").first().unwrap()).await;
    assert!(notices.is_empty(), "{notices:?}");
}

#[tokio::test]
async fn masking_is_per_channel() {
    let mut ch = Chan::start(&two_streams("mask_keep = 2")).await;
    let mut a = connect(&ch.url(&format!("/stream?key={A_TOKEN}"))).await;
    let mut all = connect(&ch.url(&format!("/stream?key={TOKEN}"))).await;
    poll("two connections", || (ch.handle.connections() == 2).then_some(())).await;
    ch.send_records(vec![org_record(1, "a")]).await;
    let Event::Data(v) = next_event(&mut a).await else { panic!("data") };
    assert_eq!(v["data"][0]["api_key"], "ke************89");
    let Event::Data(v) = next_event(&mut all).await else { panic!("data") };
    assert_eq!(v["data"][0]["api_key"], "key-a-0123456789");
}

#[tokio::test]
async fn each_channel_has_its_own_connection_limit() {
    let ch = Chan::start(&two_streams("max_connections = 1")).await;
    let _a = connect(&ch.url(&format!("/stream?key={A_TOKEN}"))).await;
    poll("connection", || (ch.handle.connections() == 1).then_some(())).await;
    let (status, body) = refused(&ch.url(&format!("/stream?key={A_TOKEN}"))).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("at most 1"), "{body}");
    // The other channels still admit.
    let _b = connect(&ch.url(&format!("/stream?key={B_TOKEN}"))).await;
    let _d = connect(&ch.url(&format!("/stream?key={TOKEN}"))).await;
}

#[tokio::test]
async fn a_token_past_its_not_after_closes_its_clients_and_opens_nothing() {
    let not_after = calllog_bridge::time::format_iso_millis(calllog_bridge::time::now_ms() + 1500);
    let streams = format!(
        "[[stream]]\nid = \"partner-a\"\ntokens = [{{ token = \"partner-a-old-token-01\", not_after = \"{not_after}\", label = \"old\" }}, \"{A_TOKEN}\"]\norg_name = [\"Partner A\"]\n"
    );
    let mut ch = Chan::start(&streams).await;
    let mut old = connect(&ch.url("/stream?key=partner-a-old-token-01")).await;
    let mut new = connect(&ch.url(&format!("/stream?key={A_TOKEN}"))).await;
    poll("two connections", || (ch.handle.connections() == 2).then_some(())).await;
    let closed = loop {
        match next_event(&mut old).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed, Some((CloseCode::Policy, "token expired".to_string())));
    let (status, body) = refused(&ch.url("/stream?key=partner-a-old-token-01")).await;
    assert_eq!(status, 401);
    assert!(body.contains("token expired"), "{body}");
    // The client of the other token never noticed.
    let ids_sent = ch.send_records(vec![org_record(1, "a")]).await;
    let (_, got) = read_records(&mut new, 1).await;
    assert_eq!(got, ids_sent);
}

// ---------------------------------------------------------------------------
// End to end: the real binary.
// ---------------------------------------------------------------------------

/// A bridge with lookups that give keys their organization, a default
/// channel and two streams; its state directory outlives its processes.
struct Bridge {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Bridge {
    fn new() -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(
            dir.path().join("keys.csv"),
            "api_key,org_name,org_uuid\nkey-a-0123456789,Partner A,org-a\nkey-b-0123456789,Partner B,org-b\nkey-c-0123456789,Partner C,org-c\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("default.token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("a-old.token"), format!("{A_TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("a-new.token"), "partner-a-rotated-5e0b3a\n").unwrap();
        Bridge { dir, child: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the config with these token files for `partner-a`.
    fn write_config(&self, a_token_files: &[&str]) {
        let files: Vec<String> = a_token_files.iter().map(|f| format!("{:?}", self.path(f).display().to_string())).collect();
        let cfg = format!(
            r#"state_dir = "{state}"
[[source]]
paths = ["{logs}/access*.log"]
format = "le-json"
poll_interval_ms = 50
[enrich]
lookups = ["{keys}"]
[channel]
listen = "127.0.0.1:0"
token_file = "{default}"
[[channel.stream]]
id = "partner-a"
token_files = [{files}]
org_name = ["Partner A"]
[[channel.stream]]
id = "partner-b"
tokens = ["{B_TOKEN}"]
org_uuid = ["org-b"]
[status]
listen = "127.0.0.1:0"
"#,
            state = self.path("state").display(),
            logs = self.path("logs").display(),
            keys = self.path("keys.csv").display(),
            default = self.path("default.token").display(),
            files = files.join(", "),
        );
        std::fs::write(self.path("config.toml"), cfg).unwrap();
    }

    fn start(&mut self) {
        for f in ["channel.addr", "status.addr"] {
            let _ = std::fs::remove_file(self.path("state").join(f));
        }
        self.child = Some(support::spawn_bridge(&self.path("config.toml"), &self.path("bridge.log")));
        self.addr("channel.addr");
        self.addr("status.addr");
    }

    fn addr(&self, file: &str) -> String {
        let path = self.path("state").join(file);
        support::poll_until(DEADLINE, file, || std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
    }

    fn url(&self, path: &str, key: &str, since: Option<u64>) -> String {
        let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
        format!("ws://{}{path}?key={key}{since}", self.addr("channel.addr"))
    }

    fn reload(&self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    fn sigterm(&mut self) {
        if let Some(mut c) = self.child.take() {
            let st = support::terminate(&mut c, DEADLINE);
            assert!(st.success(), "run exit: {st:?}\n{}", std::fs::read_to_string(self.path("bridge.log")).unwrap_or_default());
        }
    }

    /// Appends lines for these uuids; a uuid `a-...` gets organization A's
    /// key, and so on (`--...`: a key no lookup knows).
    fn append(&self, uuids: &[String]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.path("logs").join("access_1.log")).unwrap();
        for u in uuids {
            let org = u.split('-').next().unwrap_or("");
            let key = if org.is_empty() { "key-none-0123456789".to_string() } else { format!("key-{org}-0123456789") };
            writeln!(f, "{}", LE_LINE.replace("UUID", u).replace("k7q2mzp4rb9d3hxw8cyn5ta6", &key)).unwrap();
        }
    }

    async fn status(&self) -> Value {
        let url = format!("http://{}/status", self.addr("status.addr"));
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` uuids per organization a, b, c and none, interleaved, named with
/// `round`.
fn uuids(round: &str, n: usize) -> Vec<String> {
    (0..n).flat_map(|i| ["a", "b", "c", ""].map(|o| format!("{o}-{round}-{i:03}"))).collect()
}

fn org_uuids(all: &[String], org: &str) -> Vec<String> {
    all.iter().filter(|u| u.starts_with(&format!("{org}-"))).cloned().collect()
}

/// Reads records until `last`; returns their uuids and the last `seq`.
async fn collect(ws: &mut Ws, last: &str) -> (Vec<String>, u64) {
    let mut got = Vec::new();
    loop {
        match next_event(ws).await {
            Event::Data(v) if v.get("seq").is_none() => panic!("no notice expected: {v}"),
            Event::Data(v) => {
                let seq = v["seq"].as_u64().unwrap();
                for r in v["data"].as_array().unwrap() {
                    let id = r["request_uuid"].as_str().unwrap().to_string();
                    got.push(id.clone());
                    if id == last {
                        return (got, seq);
                    }
                }
            }
            Event::Text(_) | Event::Ping => {}
            Event::Closed(c) => panic!("closed before {last} after {got:?}: {c:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_organizations_dashboards_each_get_exactly_their_records_through_a_restart_with_since() {
    let mut b = Bridge::new();
    b.write_config(&["a-old.token"]);
    b.start();
    // The dashboards: /stream with each organization's token, and the
    // default channel with today's client and path.
    let mut a = connect(&b.url("/stream", A_TOKEN, None)).await;
    let mut bb = connect(&b.url("/ecls/subscribe/partner-b/local", B_TOKEN, None)).await;
    let mut all = connect(&b.url("/ecls/subscribe/local/local", TOKEN, None)).await;
    let first = uuids("one", 10);
    b.append(&first);
    let (got_a, seq_a) = collect(&mut a, org_uuids(&first, "a").last().unwrap()).await;
    let (got_b, seq_b) = collect(&mut bb, org_uuids(&first, "b").last().unwrap()).await;
    let (got_all, seq_all) = collect(&mut all, first.last().unwrap()).await;
    assert_eq!(got_a, org_uuids(&first, "a"));
    assert_eq!(got_b, org_uuids(&first, "b"));
    assert_eq!(got_all, first, "the default channel: every record, also those without organization");

    // /status: per channel, never a record or a token.
    let st = b.status().await;
    let c = &st["channel"];
    assert_eq!(c["records_filtered_by_channel"]["partner-a"], 30, "{c}");
    assert_eq!(c["records_filtered_by_channel"]["partner-b"], 30, "{c}");
    assert_eq!(c["records_filtered_by_channel"]["local"], 0, "{c}");
    assert_eq!(c["connections_by_channel"]["partner-a"], 1, "{c}");
    assert_eq!(c["records_sent_by_channel"]["partner-a"], 10, "{c}");
    let a_name = calllog_bridge::sink::channel::digest_name(A_TOKEN);
    assert_eq!(c["token_connections"]["partner-a"][&a_name], 1, "{c}");
    let text = st.to_string();
    for secret in [A_TOKEN, B_TOKEN, TOKEN, "a-one-000"] {
        assert!(!text.contains(secret), "/status shows {secret}");
    }

    // A restart; records written meanwhile; the dashboards come back with since.
    b.sigterm();
    let second = uuids("two", 10);
    b.append(&second);
    b.start();
    let mut a = connect(&b.url("/stream", A_TOKEN, Some(seq_a + 1))).await;
    let mut bb = connect(&b.url("/stream", B_TOKEN, Some(seq_b + 1))).await;
    let mut all = connect(&b.url("/ecls/subscribe/local/local", TOKEN, Some(seq_all + 1))).await;
    let third = uuids("three", 5);
    b.append(&third);
    let want = |org: &str| org_uuids(&second, org).into_iter().chain(org_uuids(&third, org)).collect::<Vec<_>>();
    let (got_a, _) = collect(&mut a, want("a").last().unwrap()).await;
    let (got_b, _) = collect(&mut bb, want("b").last().unwrap()).await;
    let (got_all, _) = collect(&mut all, third.last().unwrap()).await;
    assert_eq!(got_a, want("a"), "exactly organization A's, none twice, none missing");
    assert_eq!(got_b, want("b"));
    assert_eq!(got_all, second.iter().chain(&third).cloned().collect::<Vec<_>>());
    let every: BTreeSet<&String> = got_a.iter().chain(&got_b).collect();
    assert_eq!(every.len(), got_a.len() + got_b.len(), "no record reached both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotation_with_two_tokens_loses_no_client_and_no_record() {
    let mut b = Bridge::new();
    b.write_config(&["a-old.token"]);
    b.start();
    let mut old = connect(&b.url("/stream", A_TOKEN, None)).await;
    // 1. Add the new token next to the old one.
    b.write_config(&["a-old.token", "a-new.token"]);
    b.reload();
    let new_url = b.url("/stream", "partner-a-rotated-5e0b3a", None);
    let started = Instant::now();
    let mut new = loop {
        match tokio_tungstenite::connect_async(&new_url).await {
            Ok((ws, _)) => break ws,
            Err(_) => {
                assert!(started.elapsed() < DEADLINE, "the reload did not add the new token");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // 2. Clients roll over; both tokens stream meanwhile.
    let one = uuids("rot1", 5);
    b.append(&one);
    let (got_old, seq_old) = collect(&mut old, org_uuids(&one, "a").last().unwrap()).await;
    let (got_new, _) = collect(&mut new, org_uuids(&one, "a").last().unwrap()).await;
    assert_eq!((got_old, got_new.clone()), (org_uuids(&one, "a"), org_uuids(&one, "a")));
    // 3. Remove the old token: its clients close with 1008, the new one's stay.
    b.write_config(&["a-new.token"]);
    b.reload();
    let closed = loop {
        match next_event(&mut old).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed, Some((CloseCode::Policy, "token revoked".to_string())));
    assert_eq!(refused(&b.url("/stream", A_TOKEN, None)).await.0, 401);
    let two = uuids("rot2", 5);
    b.append(&two);
    let (got_new, _) = collect(&mut new, org_uuids(&two, "a").last().unwrap()).await;
    assert_eq!(got_new, org_uuids(&two, "a"), "the new token's client was never disconnected");
    // The old client comes back with the new token and since: nothing lost.
    let mut back = connect(&b.url("/stream", "partner-a-rotated-5e0b3a", Some(seq_old + 1))).await;
    let (got_back, _) = collect(&mut back, org_uuids(&two, "a").last().unwrap()).await;
    assert_eq!(got_back, org_uuids(&two, "a"));
    let log = std::fs::read_to_string(b.path("bridge.log")).unwrap_or_default();
    assert!(!log.contains(A_TOKEN) && !log.contains("partner-a-rotated"), "tokens are never logged");
}

/// `check-config` with streams: one line per channel, and each mistake
/// named by its key.
#[test]
fn check_config_prints_each_channel_and_names_stream_mistakes() {
    let b = Bridge::new();
    b.write_config(&["a-old.token", "a-new.token"]);
    let out = support::cmd().args(["check-config", "--config"]).arg(b.path("config.toml")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("/ecls/subscribe/local/local (and /stream), 1 token(s)"), "{text}");
    assert!(
        text.contains("stream partner-a: /ecls/subscribe/partner-a/local, 2 token(s)") && text.contains("org_name=Partner A"),
        "{text}"
    );
    assert!(text.contains("stream partner-b: /ecls/subscribe/partner-b/local, 1 token(s)") && text.contains("org_uuid=org-b"), "{text}");
    assert!(!text.contains(A_TOKEN) && !text.contains(B_TOKEN), "no token shown: {text}");
    assert!(!text.contains("no lookup table provides"), "the keys table provides org fields: {text}");
    // Without lookups: a warning per filter on an organization field.
    let cfg = std::fs::read_to_string(b.path("config.toml")).unwrap();
    let no_lookups = cfg.replace(&format!("[enrich]\nlookups = [\"{}\"]\n", b.path("keys.csv").display()), "");
    std::fs::write(b.path("config.toml"), &no_lookups).unwrap();
    let out = support::cmd().args(["check-config", "--config"]).arg(b.path("config.toml")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "a warning, not a refusal: {text}");
    assert!(text.contains("config key `channel.stream[0].org_name`: no lookup table provides org_name"), "{text}");
    assert!(text.contains("config key `channel.stream[1].org_uuid`"), "{text}");
    // Mistakes: a token of two channels, an id twice.
    for (bad, key) in [
        (no_lookups.replace(&format!("tokens = [\"{B_TOKEN}\"]"), &format!("tokens = [\"{TOKEN}\"]")), "channel.stream[1].tokens[0]"),
        (no_lookups.replace("id = \"partner-b\"", "id = \"partner-a\""), "channel.stream[1].id"),
    ] {
        std::fs::write(b.path("config.toml"), bad).unwrap();
        let out = support::cmd().args(["check-config", "--config"]).arg(b.path("config.toml")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(!err.contains(TOKEN), "the token is not shown: {err}");
    }
}

#[test]
fn token_new_writes_a_strong_token_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partner-a-2.token");
    let out = support::cmd().args(["token", "new", "--channel", "partner-a", "--file"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let token = std::fs::read_to_string(&path).unwrap();
    let token = token.trim_end();
    assert!(calllog_bridge::settings::check_token("t", &calllog_bridge::settings::Secret::new(token)).is_ok());
    assert!(token.len() >= 32, "{token}");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!text.contains(token), "the token is not printed: {text}");
    assert!(
        text.contains("[[channel.stream]]") && text.contains("id = \"partner-a\"") && text.contains(&path.display().to_string()),
        "{text}"
    );
    assert!(text.contains(&calllog_bridge::sink::channel::digest_name(token)), "{text}");
    // Never over an existing file.
    let again = support::cmd().args(["token", "new", "--file"]).arg(&path).output().unwrap();
    assert_eq!(again.status.code(), Some(64), "{again:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim_end(), token);
}

/// A reload adds a stream (it serves at once, from the records appended
/// after), removes one (its clients close with 1012 and its path is 404)
/// and leaves the others' clients alone.
#[tokio::test]
async fn a_reload_adds_and_removes_streams_and_keeps_the_others_clients() {
    let mut ch = Chan::start(&two_streams("")).await;
    let mut a = connect(&ch.url(&format!("/stream?key={A_TOKEN}"))).await;
    let mut b = connect(&ch.url(&format!("/stream?key={B_TOKEN}"))).await;
    poll("two connections", || (ch.handle.connections() == 2).then_some(())).await;
    let base = format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nchannel_id = \"chan-1\"\narea = \"eu\"\n");
    let c_stream = "[[stream]]\nid = \"partner-c\"\ntokens = [\"partner-c-token-9a1b2c\"]\norg_name = [\"Partner C\"]\n";
    let cfg: calllog_bridge::sink::channel::ChannelConfig =
        toml::from_str(&format!("{base}[[stream]]\nid = \"partner-a\"\ntokens = [\"{A_TOKEN}\"]\norg_name = [\"Partner A\"]\n{c_stream}"))
            .unwrap();
    ch.handle.reconfigure(&cfg);
    poll("partner-c in force", || ch.handle.channel_ids().contains(&"partner-c".to_string()).then_some(())).await;
    let closed = loop {
        match next_event(&mut b).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed, Some((CloseCode::Restart, "channel changed".to_string())));
    assert_eq!(refused(&ch.url(&format!("/ecls/subscribe/partner-b/eu?key={B_TOKEN}"))).await.0, 404);
    let mut c = connect(&ch.url("/ecls/subscribe/partner-c/eu?key=partner-c-token-9a1b2c")).await;
    poll("two connections", || (ch.handle.connections() == 2).then_some(())).await;
    let records = mixed(0, 12);
    ch.send_records(records.clone()).await;
    let (got, _) = until(&mut a, of(&records, "a").last().unwrap()).await;
    assert_eq!(ids(&got), of(&records, "a"), "partner-a's client stayed");
    let (got, _) = until(&mut c, of(&records, "c").last().unwrap()).await;
    assert_eq!(ids(&got), of(&records, "c"));
    // Its slot is kept for the next start.
    let slots = std::fs::read_to_string(ch.dir().join("channel-slots.json")).unwrap();
    assert!(slots.contains("\"partner-c\"") && !slots.contains("\"partner-b\""), "{slots}");
}

/// The default channel with two tokens (`token` and `tokens`): a reload
/// that drops one closes only its clients (1008 "token revoked"); the
/// other token's client streams on without a gap.
#[tokio::test]
async fn a_reload_removing_one_of_two_tokens_closes_only_its_clients() {
    const SECOND: &str = "second-token-0a1b2c3d";
    let mut ch = Chan::start(&format!("tokens = [{{ token = \"{SECOND}\", label = \"second\" }}]\n")).await;
    let mut stays = connect(&ch.url(&format!("/stream?key={TOKEN}"))).await;
    let mut goes = connect(&ch.url(&format!("/ecls/subscribe/chan-1/eu?key={SECOND}"))).await;
    poll("two connections", || (ch.handle.connections() == 2).then_some(())).await;
    let before = ch.send_records(vec![org_record(1, "a"), org_record(2, "-")]).await;
    assert_eq!(read_records(&mut stays, 2).await.1, before);
    assert_eq!(read_records(&mut goes, 2).await.1, before);
    let cfg: calllog_bridge::sink::channel::ChannelConfig =
        toml::from_str(&format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nchannel_id = \"chan-1\"\narea = \"eu\"\n")).unwrap();
    ch.handle.reconfigure(&cfg);
    let closed = loop {
        match next_event(&mut goes).await {
            Event::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(closed, Some((CloseCode::Policy, "token revoked".to_string())));
    assert_eq!(refused(&ch.url(&format!("/stream?key={SECOND}"))).await.0, 401);
    assert_eq!(ch.handle.connections(), 1, "the other token's client stays");
    let after = ch.send_records(vec![org_record(3, "b")]).await;
    assert_eq!(read_records(&mut stays, 1).await.1, after, "no gap for the client of the token that stays");
}
