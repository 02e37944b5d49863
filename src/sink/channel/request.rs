//! What a subscription request asks for, and whether it is admitted.
//!
//! A client dials `/ecls/subscribe/<channel_id>/<area>?key=<token>` (the
//! hosted stream's URL form: the default channel's `channel_id`, or a
//! stream's `id`) or `/stream?key=<token>` (the channel the token opens).
//! The query may also carry `since=<seq>` (replay from that sequence
//! number, inclusive) and the filters `service_id=`, `api_key=` and
//! `status=` (each a comma-separated list; `status` takes codes such as
//! `200` and classes such as `5xx`), which narrow what the channel sends
//! and never widen it. Order of checks: path (404), token (401), then the
//! other parameters (400); the connection limit is checked by the caller
//! after these, so an unauthenticated client never holds a slot.
//!
//! A token opens exactly one channel: a path naming another channel is
//! refused with 401 as a wrong token is (the tokens of different channels
//! are different: the config refuses a token given twice).
//!
//! Pure: no I/O. The token is compared in constant time over SHA-256
//! digests ([`TokenDigest`]: equal lengths whatever the client sends, so
//! neither the token's bytes nor its length leak through timing), with
//! every token of the channels the path names (which one matched, if any,
//! is chosen without a branch), and never appears in an error or a log
//! line.

use subtle::ConstantTimeEq;

use super::replay::Item;
use crate::url::percent_decode;

/// Why a handshake is refused: the HTTP status and a one-line reason that
/// is sent as the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code (401, 404, 400, 503).
    pub status: u16,
    /// Plain-text reason for the response body (never holds the token).
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal { status, reason: reason.into() }
    }
}

/// An admitted subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Replay from this sequence number (inclusive); `None` = live only.
    pub since: Option<u64>,
    /// Which records the client wants.
    pub filter: Filter,
    /// `records_per_message=N`: this connection's batching instead of the
    /// channel's (a dashboard asks for more records per message than a
    /// client that reads only `data[0]` can take).
    pub records_per_message: Option<usize>,
}

/// The largest `records_per_message` a client may ask for.
pub const MAX_RECORDS_PER_MESSAGE: usize = 1000;

/// Record filters from the query string. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `service_id=a,b`: any of these service ids.
    pub service_ids: Vec<String>,
    /// `api_key=k1,k2`: any of these (unmasked) api keys.
    pub api_keys: Vec<String>,
    /// Their digests, which the replay log stores (computed on first use).
    pub api_key_digests: std::sync::OnceLock<Vec<super::replay::KeyDigest>>,
    /// `status=200,5xx`: any of these codes or classes.
    pub statuses: Vec<StatusMatch>,
}

/// One `status=` term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// `5xx`: the hundreds digit.
    Class(u16),
    /// `404`: exactly this code.
    Exact(u16),
}

impl StatusMatch {
    /// True when `status` (0: not a number) matches the term.
    #[inline]
    pub fn matches(&self, status: u16) -> bool {
        match *self {
            StatusMatch::Class(c) => status / 100 == c,
            StatusMatch::Exact(c) => status == c,
        }
    }
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatch::Class(c) => write!(f, "{c}xx"),
            StatusMatch::Exact(c) => write!(f, "{c}"),
        }
    }
}

impl Filter {
    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        self.service_ids.is_empty() && self.api_keys.is_empty() && self.statuses.is_empty()
    }

    /// True when the record passes every filter that is set.
    pub fn matches(&self, item: &Item) -> bool {
        (self.service_ids.is_empty() || self.service_ids.iter().any(|s| **s == *item.service_id))
            && (self.api_keys.is_empty() || {
                let digests = self.api_key_digests.get_or_init(|| self.api_keys.iter().map(|k| super::replay::key_digest(k)).collect());
                digests.contains(&item.key_digest)
            })
            && (self.statuses.is_empty() || self.statuses.iter().any(|m| m.matches(item.status)))
    }
}

/// A channel as admission sees it: the id its path names and its tokens.
#[derive(Debug, Clone)]
pub struct Door<'a> {
    /// `<channel_id>` in `/ecls/subscribe/<channel_id>/<area>`.
    pub id: &'a str,
    /// Its tokens' digests, each with its `not_after` (epoch ms), if any.
    pub tokens: Vec<(&'a TokenDigest, Option<i64>)>,
}

/// The channels of the listener, as admission sees them.
#[derive(Debug, Clone)]
pub struct Directory<'a> {
    /// `area` in `/ecls/subscribe/<channel_id>/<area>` (one per listener).
    pub area: &'a str,
    /// The channels.
    pub doors: Vec<Door<'a>>,
}

/// Which channels a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/stream`: the channel the token opens.
    Any,
    /// `/ecls/subscribe/<id>/<area>`: this channel (an index of
    /// [`Directory::doors`]).
    One(usize),
}

impl Directory<'_> {
    /// What `path` names: `/stream`, or `/ecls/subscribe/<id>/<area>` with
    /// this listener's area and a channel's id (a trailing `/` is
    /// accepted); `None`: no channel (404).
    pub fn target(&self, path: &str) -> Option<Target> {
        let path = path.strip_suffix('/').unwrap_or(path);
        if path == "/stream" {
            return Some(Target::Any);
        }
        let rest = path.strip_prefix("/ecls/subscribe/")?;
        let mut parts = rest.split('/');
        let (Some(c), Some(a), None) = (parts.next(), parts.next(), parts.next()) else { return None };
        if percent_decode(a).as_deref() != Some(self.area) {
            return None;
        }
        let c = percent_decode(c)?;
        self.doors.iter().position(|d| d.id == c).map(Target::One)
    }

    /// True when `path` names a channel.
    pub fn accepts(&self, path: &str) -> bool {
        self.target(path).is_some()
    }
}

/// An admitted request: the channel and the token it opened, and what the
/// client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The channel (an index of [`Directory::doors`]).
    pub door: usize,
    /// The token (an index of that door's tokens).
    pub token: usize,
    /// What the client asked for.
    pub sub: Subscription,
}

/// The token among `doors`' tokens (all of them, or one door's) that
/// `given` is, compared with every one in constant time: `(door, token,
/// not_after)`.
fn find_token(doors: &[Door<'_>], only: Option<usize>, given: &str) -> Option<(usize, usize, Option<i64>)> {
    use subtle::ConditionallySelectable;
    let given = TokenDigest::of(given);
    let mut found = subtle::Choice::from(0);
    let (mut door, mut token) = (0u64, 0u64);
    for (d, entry) in doors.iter().enumerate() {
        if only.is_some_and(|o| o != d) {
            continue;
        }
        for (t, (digest, _)) in entry.tokens.iter().enumerate() {
            let eq = given.0.ct_eq(&digest.0);
            door = u64::conditional_select(&door, &(d as u64), eq);
            token = u64::conditional_select(&token, &(t as u64), eq);
            found |= eq;
        }
    }
    if !bool::from(found) {
        return None;
    }
    let (door, token) = (door as usize, token as usize);
    let not_after = doors.get(door)?.tokens.get(token)?.1;
    Some((door, token, not_after))
}

/// The most bytes of a handshake's request head (request line and
/// headers); a longer head is refused with 431 rather than buffered. A
/// subscription URL with filter lists fits many times over.
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 << 10;

/// The most headers a handshake request may carry (431 beyond).
pub const MAX_HEADERS: usize = 32;

/// How to subscribe, for a client that did not ask for a WebSocket.
pub const HOW_TO_SUBSCRIBE: &str = "this is a WebSocket channel: subscribe with a WebSocket client to \
     /stream?key=<token> or /ecls/subscribe/<channel_id>/<area>?key=<token>, \
     for example: calllog-bridge subscribe 'ws://HOST:PORT/stream?key=<token>'";

/// What the channel needs of a WebSocket handshake request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The path of the request target (percent-encoded, as sent).
    pub path: String,
    /// The query of the request target, without `?`.
    pub query: Option<String>,
    /// `Sec-WebSocket-Key`, for the `Sec-WebSocket-Accept` answer.
    pub key: String,
}

/// Parses the request head at the start of `buf`: `Ok(None)` when more
/// bytes are needed, `Ok(Some((head_len, head)))` for a WebSocket
/// handshake, or the refusal for anything else: 426 for a request that
/// is not an upgrade (a browser or curl: the body says how to subscribe)
/// or asks for another WebSocket version, 405 for a method other than
/// GET, 431 for a head over [`MAX_REQUEST_HEAD_BYTES`] or
/// [`MAX_HEADERS`], 400 for the rest. Bytes after the head (a client
/// that sends frames before the answer) are the caller's.
pub fn parse_handshake(buf: &[u8]) -> Result<Option<(usize, Head)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD_BYTES => {
            return Err(Refusal::new(431, format!("request head too large: at most {MAX_REQUEST_HEAD_BYTES} bytes")));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::new(431, format!("too many headers: at most {MAX_HEADERS}"))),
        Err(_) => return Err(Refusal::new(400, "malformed HTTP request")),
    };
    let has = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|v| v.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let value = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.trim_ascii());
    if req.method != Some("GET") {
        return Err(Refusal::new(405, format!("method not allowed: {HOW_TO_SUBSCRIBE}")));
    }
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Err(Refusal::new(426, format!("upgrade required: {HOW_TO_SUBSCRIBE}")));
    }
    if req.version != Some(1) {
        return Err(Refusal::new(400, "a WebSocket handshake needs HTTP/1.1"));
    }
    if value("sec-websocket-version") != Some(b"13") {
        return Err(Refusal::new(426, "unsupported WebSocket version: this channel speaks version 13 (RFC 6455)"));
    }
    let key = match value("sec-websocket-key") {
        Some(k) if is_websocket_key(k) => String::from_utf8_lossy(k).into_owned(),
        _ => return Err(Refusal::new(400, "missing or malformed Sec-WebSocket-Key")),
    };
    let target = req.path.unwrap_or("");
    // The origin form (`/path?query`); the absolute form some proxies send
    // (`ws://host/path?query`) is reduced to it.
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    };
    if !target.starts_with('/') {
        return Err(Refusal::new(400, "malformed request target"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Ok(Some((len, Head { path, query, key })))
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64, 24 characters.
fn is_websocket_key(k: &[u8]) -> bool {
    k.len() == 24 && k.ends_with(b"==") && k[..22].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The SHA-256 digest of a token: what a presented token is compared with.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> TokenDigest {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenDigest(out)
    }

    /// True when `given` is the token, in time independent of where or
    /// whether they differ, and of `given`'s length beyond hashing it.
    pub fn matches(&self, given: &str) -> bool {
        self.same(&TokenDigest::of(given))
    }

    /// True when both are the digest of one token (constant time).
    pub fn same(&self, other: &TokenDigest) -> bool {
        bool::from(other.0.ct_eq(&self.0))
    }
}

/// Decides on a handshake: `path` and `query` from the request URI, the
/// channels and their tokens in `dir`, at `now_ms` (a token past its
/// `not_after` opens nothing).
pub fn admit(dir: &Directory<'_>, path: &str, query: Option<&str>, now_ms: i64) -> Result<Admitted, Refusal> {
    let Some(target) = dir.target(path) else {
        return Err(Refusal::new(404, "no such channel: use /ecls/subscribe/<channel_id>/<area>?key=<token> or /stream?key=<token>"));
    };
    let mut key: Option<String> = None;
    let mut sub = Subscription::default();
    let mut bad: Option<Refusal> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(value) = percent_decode(value) else {
            bad.get_or_insert(Refusal::new(400, format!("query parameter `{name}` is not valid percent-encoded UTF-8")));
            continue;
        };
        match name {
            "key" => key = Some(value),
            "since" => match value.parse::<u64>() {
                Ok(s) => sub.since = Some(s),
                Err(_) => {
                    bad.get_or_insert(Refusal::new(400, "`since` must be a sequence number (a non-negative integer)"));
                }
            },
            "records_per_message" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_RECORDS_PER_MESSAGE).contains(&n) => sub.records_per_message = Some(n),
                _ => {
                    bad.get_or_insert(Refusal::new(
                        400,
                        format!("`records_per_message` must be a whole number from 1 to {MAX_RECORDS_PER_MESSAGE}"),
                    ));
                }
            },
            "service_id" => sub.filter.service_ids.extend(list(&value)),
            "api_key" => sub.filter.api_keys.extend(list(&value)),
            "status" => {
                for term in list(&value) {
                    match parse_status(&term) {
                        Some(m) => sub.filter.statuses.push(m),
                        None => {
                            bad.get_or_insert(Refusal::new(
                                400,
                                // The term is decoded peer text: escaped, so the
                                // reason stays one line of plain text.
                                format!("`status` takes codes and classes such as 200,404,5xx; `{}` is neither", term.escape_debug()),
                            ));
                        }
                    }
                }
            }
            // Unknown parameters are ignored: clients of the hosted stream
            // may add their own.
            _ => {}
        }
    }
    // Authentication comes before any other complaint so that an
    // unauthenticated client learns nothing about the parameters.
    let only = match target {
        Target::Any => None,
        Target::One(d) => Some(d),
    };
    let found = key.as_deref().and_then(|k| find_token(&dir.doors, only, k));
    let (door, token) = match (found, &key) {
        (Some((d, t, not_after)), _) if not_after.is_none_or(|na| now_ms < na) => (d, t),
        (Some(_), _) => return Err(Refusal::new(401, "unauthorized: token expired (its not_after has passed)")),
        (None, None) => return Err(Refusal::new(401, "unauthorized: missing token: add ?key=<token>")),
        (None, Some(_)) => return Err(Refusal::new(401, "unauthorized: wrong token")),
    };
    match bad {
        Some(r) => Err(r),
        None => Ok(Admitted { door, token, sub }),
    }
}

fn list(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// A `status` term: a code (`404`) or a class (`5xx`).
pub(crate) fn parse_status(term: &str) -> Option<StatusMatch> {
    let b = term.as_bytes();
    if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
        return None;
    }
    if b[1..].eq_ignore_ascii_case(b"xx") {
        return Some(StatusMatch::Class(u16::from(b[0] - b'0')));
    }
    term.parse::<u16>().ok().map(StatusMatch::Exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;

    /// The default channel `chan-1` (token `s3cret`) and the stream
    /// `partner-a` (`pa-token-new`, and `pa-token-old` until NOW).
    fn with_directory<T>(f: impl FnOnce(&Directory<'_>) -> T) -> T {
        let (d, n, o) = (TokenDigest::of("s3cret"), TokenDigest::of("pa-token-new"), TokenDigest::of("pa-token-old"));
        let dir = Directory {
            area: "eu",
            doors: vec![
                Door { id: "chan-1", tokens: vec![(&d, None)] },
                Door { id: "partner-a", tokens: vec![(&n, None), (&o, Some(NOW))] },
            ],
        };
        f(&dir)
    }

    fn admitted(path: &str, query: Option<&str>, now: i64) -> Result<Admitted, Refusal> {
        with_directory(|dir| admit(dir, path, query, now))
    }

    fn check(path: &str, query: Option<&str>, expected: Result<Subscription, u16>) {
        let got = admitted(path, query, NOW - 1).map(|a| a.sub).map_err(|r| r.status);
        assert_eq!(got, expected, "{path}?{query:?}");
    }

    #[test]
    fn a_token_opens_its_own_channel_only() {
        let door = |path: &str, key: &str, now: i64| {
            admitted(path, Some(&format!("key={key}")), now).map(|a| (a.door, a.token)).map_err(|r| r.status)
        };
        assert_eq!(door("/stream", "s3cret", NOW), Ok((0, 0)));
        assert_eq!(door("/stream", "pa-token-new", NOW), Ok((1, 0)));
        assert_eq!(door("/stream", "pa-token-old", NOW - 1), Ok((1, 1)));
        assert_eq!(door("/ecls/subscribe/partner-a/eu", "pa-token-new", NOW), Ok((1, 0)));
        assert_eq!(door("/ecls/subscribe/partner%2Da/eu/", "pa-token-new", NOW), Ok((1, 0)));
        assert_eq!(door("/ecls/subscribe/chan-1/eu", "s3cret", NOW), Ok((0, 0)));
        // Another channel's token, or a token past its not_after: 401.
        assert_eq!(door("/ecls/subscribe/chan-1/eu", "pa-token-new", NOW), Err(401));
        assert_eq!(door("/ecls/subscribe/partner-a/eu", "s3cret", NOW), Err(401));
        assert_eq!(door("/stream", "pa-token-old", NOW), Err(401));
        let r = admitted("/stream", Some("key=pa-token-old"), NOW).unwrap_err();
        assert!(r.reason.contains("token expired"), "{r:?}");
        // Unknown channel or area: 404, whatever the token.
        assert_eq!(door("/ecls/subscribe/partner-b/eu", "pa-token-new", NOW), Err(404));
        assert_eq!(door("/ecls/subscribe/partner-a/us", "pa-token-new", NOW), Err(404));
    }

    fn sub(since: Option<u64>, filter: Filter) -> Result<Subscription, u16> {
        Ok(Subscription { since, filter, records_per_message: None })
    }

    #[test]
    fn admission_table() {
        check(
            "/stream",
            Some("key=s3cret&records_per_message=50"),
            Ok(Subscription { since: None, filter: Filter::default(), records_per_message: Some(50) }),
        );
        check("/stream", Some("key=s3cret&records_per_message=0"), Err(400));
        check("/stream", Some("key=s3cret&records_per_message=1001"), Err(400));
        check("/stream", Some("key=s3cret&records_per_message=x"), Err(400));
        check("/stream", Some("records_per_message=0"), Err(401));
        check("/stream", Some("key=s3cret"), sub(None, Filter::default()));
        check("/stream/", Some("key=s3cret"), sub(None, Filter::default()));
        check("/ecls/subscribe/chan-1/eu", Some("key=s3cret"), sub(None, Filter::default()));
        check("/ecls/subscribe/chan%2D1/eu", Some("key=s3cret"), sub(None, Filter::default()));
        check("/ecls/subscribe/chan-2/eu", Some("key=s3cret"), Err(404));
        check("/ecls/subscribe/chan-1/us", Some("key=s3cret"), Err(404));
        check("/ecls/subscribe/chan-1/eu/x", Some("key=s3cret"), Err(404));
        check("/", Some("key=s3cret"), Err(404));
        // A wrong path is 404 even without a token.
        check("/nope", None, Err(404));
        check("/stream", None, Err(401));
        check("/stream", Some("key="), Err(401));
        check("/stream", Some("key=s3cre"), Err(401));
        check("/stream", Some("key=s3cret2"), Err(401));
        check("/stream", Some("key=S3CRET"), Err(401));
        // A bad parameter from an unauthenticated client is still 401.
        check("/stream", Some("since=x"), Err(401));
        check("/stream", Some("key=s3cret&since=x"), Err(400));
        check("/stream", Some("key=s3cret&since=-1"), Err(400));
        check("/stream", Some("key=s3cret&since=42"), sub(Some(42), Filter::default()));
        check("/stream", Some("key=s3cret&status=6xx"), Err(400));
        check("/stream", Some("key=s3cret&status=20"), Err(400));
        check(
            "/stream",
            Some("since=0&key=s3cret&status=5xx,404&service_id=a%2Cb&api_key=k1&api_key=k2&unknown=1"),
            sub(
                Some(0),
                Filter {
                    service_ids: vec!["a".into(), "b".into()],
                    api_keys: vec!["k1".into(), "k2".into()],
                    statuses: vec![StatusMatch::Class(5), StatusMatch::Exact(404)],
                    ..Filter::default()
                },
            ),
        );
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn head(request_line: &str, headers: &[&str]) -> Vec<u8> {
        let mut s = format!("{request_line}\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    const UPGRADE: [&str; 4] = [
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];

    #[test]
    fn handshake_heads() {
        let status = |buf: &[u8]| parse_handshake(buf).map(|h| h.map(|(_, h)| h)).map_err(|r| r.status);
        let ok = head("GET /stream?key=k&since=3 HTTP/1.1", &UPGRADE);
        let (len, h) = parse_handshake(&ok).unwrap().unwrap();
        assert_eq!(len, ok.len());
        assert_eq!(h, Head { path: "/stream".into(), query: Some("key=k&since=3".into()), key: KEY.into() });
        // Frames sent before the answer stay the caller's.
        let mut early = ok.clone();
        early.extend_from_slice(b"\x81\x80");
        assert_eq!(parse_handshake(&early).unwrap().unwrap().0, ok.len());
        // Incomplete: more bytes needed.
        assert_eq!(status(&ok[..ok.len() - 2]), Ok(None));
        assert_eq!(status(b""), Ok(None));
        // Absolute form.
        let abs = head("GET ws://h:1/ecls/subscribe/c/a?key=k HTTP/1.1", &UPGRADE);
        assert_eq!(status(&abs).unwrap().unwrap().path, "/ecls/subscribe/c/a");
        // Not a WebSocket handshake: 426 with how to subscribe.
        let plain = head("GET /stream HTTP/1.1", &["Host: h"]);
        let r = parse_handshake(&plain).unwrap_err();
        assert_eq!(r.status, 426);
        assert!(r.reason.contains("/stream?key=<token>"), "{}", r.reason);
        assert_eq!(status(&head("GET / HTTP/1.0", &[])), Err(426));
        assert_eq!(status(&head("GET /stream HTTP/1.1", &["Upgrade: websocket", "Connection: close"])), Err(426));
        assert_eq!(
            status(&head(
                "GET /stream HTTP/1.1",
                &UPGRADE[..2].iter().chain(&["Sec-WebSocket-Version: 8", UPGRADE[3]]).copied().collect::<Vec<_>>()
            )),
            Err(426)
        );
        assert_eq!(status(&head("POST /stream HTTP/1.1", &UPGRADE)), Err(405));
        assert_eq!(status(&head("GET /stream HTTP/1.0", &UPGRADE)), Err(400));
        assert_eq!(status(&head("GET /stream HTTP/1.1", &UPGRADE[..3])), Err(400));
        assert_eq!(
            status(&head("GET /stream HTTP/1.1", &UPGRADE[..3].iter().chain(&["Sec-WebSocket-Key: short"]).copied().collect::<Vec<_>>())),
            Err(400)
        );
        assert_eq!(status(&head("GET stream HTTP/1.1", &UPGRADE)), Err(400));
        assert_eq!(status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), Err(400), "TLS on the plain port");
        // Limits.
        let many: Vec<String> = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(status(&head("GET /stream HTTP/1.1", &many)), Err(431));
        let mut endless = b"GET /stream HTTP/1.1\r\nX-Long: ".to_vec();
        endless.resize(MAX_REQUEST_HEAD_BYTES, b'a');
        assert_eq!(status(&endless), Err(431));
    }

    #[test]
    fn token_digests_compare_whole_tokens() {
        let d = TokenDigest::of("0123456789abcdef");
        assert!(d.matches("0123456789abcdef"));
        for other in ["", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "x"] {
            assert!(!d.matches(other), "{other}");
        }
    }

    #[test]
    fn a_refusal_is_one_line_whatever_the_query_decodes_to() {
        // Found by the fuzzer: a decoded `%0A` in a status term made the
        // refusal (the response body) several lines.
        let r = admitted("/stream", Some("key=s3cret&status=%0D%0Ax%1b[31m"), NOW).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(!r.reason.chars().any(char::is_control), "{:?}", r.reason);
    }

    #[test]
    fn refusals_never_echo_the_token() {
        for q in ["key=guess", "key=s3cret&since=x", "key=s3cret&status=xyz"] {
            let r = admitted("/stream", Some(q), NOW).unwrap_err();
            assert!(!r.reason.contains("s3cret") && !r.reason.contains("guess"), "{r:?}");
        }
    }

    #[test]
    fn filters_match() {
        let item = |service: &str, key: &str, status: u16| Item {
            texts: super::super::replay::Texts::One(1, "{}".into()),
            service_id: service.into(),
            key_digest: super::super::replay::key_digest(key),
            status,
            observed_ms: 0,
        };
        let f = Filter {
            service_ids: vec!["s1".into()],
            api_keys: vec![],
            statuses: vec![StatusMatch::Class(5), StatusMatch::Exact(429)],
            ..Filter::default()
        };
        assert!(f.matches(&item("s1", "k", 503)));
        assert!(f.matches(&item("s1", "k", 429)));
        assert!(!f.matches(&item("s1", "k", 404)));
        assert!(!f.matches(&item("s2", "k", 500)));
        assert!(Filter::default().matches(&item("x", "y", 0)));
        let k = Filter { api_keys: vec!["k".into()], ..Filter::default() };
        assert!(k.matches(&item("x", "k", 200)));
        assert!(!k.matches(&item("x", "kk", 200)));
    }
}
