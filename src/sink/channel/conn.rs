//! One client connection: the handshake (read and answered here, with
//! bounds: [`HANDSHAKE_TIMEOUT`], the request head limits of
//! [`request::parse_handshake`], and the listener's [`Slot`], which the
//! gate may reclaim while the handshake is pending), then a writer that
//! reads the replay log from the connection's cursor (the hot tail in
//! memory, or the segment files off the runtime) and a reader that answers
//! the client's text frames and notes that it is alive.
//!
//! Invariant: nothing here ever makes the sink wait. The sink only appends
//! to the log and applies its retention (see [`super::ChannelShared::retain`]); a
//! connection whose cursor fell out of it is cancelled and closes itself.
//!
//! Invariant: a connection holds at most [`CONNECTION_MEMORY_BYTES`] (plus
//! three of the largest records), whatever the client does: one read chunk
//! from the log and the messages made of it, at most
//! [`CONTROL_QUEUE_FRAMES`] answers, and the WebSocket layer's buffers. The
//! client's frames are read on after a ping only once its pong is written
//! ([`super::stall`]), and `Response To` answers wait in a queue of
//! [`CONTROL_QUEUE_FRAMES`]: a client that floods pings or text and never
//! reads gets at most two pongs and that queue held for it (RFC 6455
//! allows answering only the latest ping), and what it sends waits in its
//! own socket. The chunk, its messages and the queued
//! answers are charged to the memory budget ([`crate::budget`]) while
//! held; the closing handshake is bounded by [`CLOSE_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::close::CloseReason;
use super::replay::{Entry, Plan};
use super::request::{self, Refusal, Subscription};
use super::stall::{Stall, Watched};
use super::streams::{Admission, Chan, TokenState};
use super::ChannelShared;
use crate::budget::Charge;
use crate::listener::Slot;
use crate::time::now_ms;

/// A handshake (TLS included) that takes longer than this is dropped, so a
/// client that opens a socket and says nothing holds nothing for long
/// (and while it is pending, a newer client may take its slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Client messages are timestamps and such: anything larger is refused by
/// the WebSocket layer and the connection closed with 1009, rather than
/// buffered.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 << 10;

/// Frames the server itself queues (`Response To` answers, pings):
/// capacity of the control queue between the reader and the writer. When a
/// client floods text frames faster than it reads the answers, the reader
/// waits here, which is TCP backpressure on that client only.
pub const CONTROL_QUEUE_FRAMES: usize = 4;

/// The writer takes at most this many records from the log per round
/// before flushing, so control frames and slow-consumer checks interleave.
const READ_CHUNK_RECORDS: usize = 1024;

/// ... and at most about this many bytes (plus one record).
const READ_CHUNK_BYTES: usize = 256 << 10;

/// The WebSocket layer's read buffer (client frames are small; a larger
/// one grows to the frame being read).
const READ_BUFFER_BYTES: usize = 8 << 10;

/// The WebSocket layer writes once this much is buffered (and at every
/// flush).
const WRITE_BUFFER_BYTES: usize = 128 << 10;

/// What one connection may hold, besides up to three of the largest
/// records: the WebSocket layer's read buffer, a client frame and a
/// fragmented message being put together; the queued answers and the one
/// in hand; the write buffer; a read chunk, the message being made of it
/// and its copy in the write buffer. About 1.3 MiB; the channel holds at
/// most `max_connections` times this.
pub const CONNECTION_MEMORY_BYTES: usize = READ_BUFFER_BYTES
    + 2 * MAX_CLIENT_MESSAGE_BYTES
    + (CONTROL_QUEUE_FRAMES + 1) * (MAX_CLIENT_MESSAGE_BYTES + 16)
    + WRITE_BUFFER_BYTES
    + 3 * READ_CHUNK_BYTES;

/// With `records_per_message` > 1, a partly filled message waits at most
/// this long for more records ("batches within a few milliseconds").
pub const MESSAGE_LINGER: Duration = Duration::from_millis(5);

/// How long a closing connection may take to write its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The part of a connection the sink and the handle can see.
pub struct ConnState {
    /// The client's address (logged; never the query string).
    pub peer: SocketAddr,
    /// The next sequence number to send (the retention check closes the
    /// connection when the log no longer holds it).
    pub cursor: AtomicU64,
    /// The log's next sequence number when the connection was admitted:
    /// records before it are `since` replay.
    pub live_from_seq: u64,
    /// Cancelled to close the connection; [`ConnState::reason`] says why.
    pub close: CancellationToken,
    /// Why the connection is being closed from outside.
    pub reason: OnceLock<CloseReason>,
    /// Epoch ms of the last frame received from the client.
    pub last_seen_ms: AtomicI64,
}

impl ConnState {
    /// Closes the connection for `reason` (the first reason wins).
    pub fn close_for(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.close.cancel();
    }
}

/// An admitted subscription: what the client asked for, and where.
struct Admitted {
    /// What the client asked for.
    sub: Subscription,
    /// The channel its token opened.
    chan: Arc<Chan>,
    /// The token it used.
    token: Arc<TokenState>,
    /// The connection slot of its channel (`max_connections`), held until
    /// it closes.
    admission: Admission,
    /// Bytes the client sent after its request head (early frames).
    early: Vec<u8>,
    /// The request path, for logs.
    path: String,
}

/// How a handshake ended.
enum Handshake {
    /// Admitted: the 101 answer is sent; the client holds a connection slot.
    Admitted(Box<Admitted>),
    /// Refused with this HTTP status (the answer is sent).
    Refused {
        /// HTTP status.
        status: u16,
        /// The request path, for logs (empty when the head did not parse).
        path: String,
    },
    /// The client went away or the socket failed.
    Gone,
}

/// Serves one accepted socket until it closes: the TLS handshake (with
/// `tls`) and the WebSocket handshake within [`HANDSHAKE_TIMEOUT`] and as
/// long as the listener's gate leaves `slot` alone, then the subscription
/// (marked busy in the gate, so it is never closed to make room).
pub async fn serve(shared: Arc<ChannelShared>, tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>, slot: Slot) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    match tls {
        None => serve_stream(shared, tcp, peer, slot, deadline).await,
        Some(acceptor) => {
            let accepted = tokio::select! {
                r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => r,
                _ = slot.evicted() => {
                    shared.stats.handshake_evicted.inc();
                    debug!(%peer, "channel: pending TLS handshake closed to make room");
                    return;
                }
            };
            match accepted {
                Ok(Ok(stream)) => serve_stream(shared, stream, peer, slot, deadline).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "channel: TLS handshake failed"),
                Err(_) => {
                    shared.stats.handshake_timeout.inc();
                    debug!(%peer, "channel: TLS handshake timed out");
                }
            }
        }
    }
}

async fn serve_stream<S>(shared: Arc<ChannelShared>, mut stream: S, peer: SocketAddr, slot: Slot, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = &shared.stats;
    let outcome = tokio::select! {
        r = tokio::time::timeout_at(deadline, handshake(&shared, &mut stream)) => r,
        _ = slot.evicted() => {
            stats.handshake_evicted.inc();
            debug!(%peer, "channel: pending handshake closed to make room");
            return;
        }
    };
    let admitted = match outcome {
        Err(_) => {
            stats.handshake_timeout.inc();
            debug!(%peer, "channel: handshake timed out");
            return;
        }
        Ok(Handshake::Gone) => return,
        Ok(Handshake::Refused { status, path }) => {
            let counter = match status {
                401 => &stats.refused_unauthorized,
                404 => &stats.refused_not_found,
                503 => &stats.refused_full,
                405 | 426 => &stats.refused_not_websocket,
                _ => &stats.refused_bad_request,
            };
            counter.inc();
            // The client address and the path (escaped), never the query
            // (the token).
            info!(%peer, path = %crate::logsafe::Escaped(&path), status, "channel: subscription refused");
            return;
        }
        Ok(Handshake::Admitted(a)) => *a,
    };
    // A subscriber is at work: the gate never closes it to make room (the
    // ping timeout and the slow-consumer check bound it instead).
    let _busy = slot.busy();
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES);
    let stall = Arc::new(Stall::default());
    let Admitted { sub, chan, token, admission, early, path } = admitted;
    let ws = WebSocketStream::from_partially_read(Watched::new(stream, stall.clone()), early, Role::Server, Some(ws_config)).await;
    // The admission lives as long as the connection: it is the slot.
    let _admission = admission;
    run_connection(shared.clone(), ws, &stall, peer, sub, &chan, &token, path).await;
}

/// Reads the request head (bounded), decides, and answers: 101, or the
/// refusal with its one-line reason.
async fn handshake<S>(shared: &ChannelShared, stream: &mut S) -> Handshake
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (len, head) = loop {
        match request::parse_handshake(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(r) => return refuse(stream, &r, String::new()).await,
        }
        // parse_handshake refuses a head that reaches the limit, so there
        // is always room here.
        let room = request::MAX_REQUEST_HEAD_BYTES.saturating_sub(buf.len()).clamp(1, chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Handshake::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let early = buf.split_off(len);
    let set = shared.channel_set();
    let ids: Vec<String> = set.chans.iter().map(|c| c.id.clone()).collect();
    let tokens: Vec<_> = set.chans.iter().map(|c| c.tokens()).collect();
    let dir = set.directory(&shared.settings.area, &ids, &tokens);
    let admitted = match request::admit(&dir, &head.path, head.query.as_deref(), now_ms()) {
        Ok(a) => a,
        Err(r) => return refuse(stream, &r, head.path).await,
    };
    let (Some(chan), Some(token)) = (set.chans.get(admitted.door), tokens.get(admitted.door).and_then(|t| t.get(admitted.token))) else {
        return Handshake::Gone;
    };
    let Some(admission) = chan.try_admit() else {
        let max = chan.max_connections();
        let r = Refusal { status: 503, reason: format!("too many connections: this channel allows at most {max}; retry later") };
        return refuse(stream, &r, head.path).await;
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(head.key.as_bytes())
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return Handshake::Gone;
    }
    Handshake::Admitted(Box::new(Admitted {
        sub: admitted.sub,
        chan: chan.clone(),
        token: token.clone(),
        admission,
        early,
        path: head.path,
    }))
}

/// Sends the refusal (status, the headers its status calls for, the
/// one-line reason) and closes the connection.
async fn refuse<S>(stream: &mut S, r: &Refusal, path: String) -> Handshake
where
    S: AsyncWrite + Unpin,
{
    let _ = stream.write_all(refusal_response(r).as_bytes()).await;
    let _ = stream.shutdown().await;
    Handshake::Refused { status: r.status, path }
}

/// The HTTP answer for a refusal.
fn refusal_response(r: &Refusal) -> String {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = format!("{}\n", r.reason);
    let extra = match status.as_u16() {
        401 => "WWW-Authenticate: key\r\n",
        405 => "Allow: GET\r\n",
        426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        503 => "Retry-After: 5\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
}

/// Registers the connection, works out where its cursor starts, runs the
/// writer, reader and liveness check until one ends, then closes.
#[allow(clippy::too_many_arguments)]
async fn run_connection<S>(
    shared: Arc<ChannelShared>,
    ws: WebSocketStream<S>,
    stall: &Stall,
    peer: SocketAddr,
    sub: Subscription,
    chan: &Chan,
    token: &TokenState,
    path: String,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = shared.stats.clone();
    let (mut sink, mut stream) = ws.split();

    // Register and pick the start under the log lock, so that no record
    // appended meanwhile is missed or sent twice.
    let (conn_id, conn, start) = shared.register(peer, sub.since, chan);
    stats.connections_accepted.inc();
    stats.connections_active.inc();
    chan.stats.connections.inc();
    token.connections.inc();
    info!(%peer, path = %crate::logsafe::Escaped(&path), channel = %chan.id, token = %token.name, since = ?sub.since, filtered = !sub.filter.is_empty(), "channel: client connected");

    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Control>(CONTROL_QUEUE_FRAMES);
    let mut reason = CloseReason::ClientGone;
    let mut ok = true;
    if let Some(notice) = start.notice {
        if let Notice::Ahead { since, next } = notice {
            stats.since_ahead_notices.inc();
            info!(%peer, since, next, "channel: a client asked from a sequence number this channel has not reached (another history); it starts at the live head");
        } else {
            stats.lost_notices.inc();
            chan.stats.lost_notices.inc();
        }
        ok = sink.send(Message::text(notice.json())).await.is_ok();
    }
    if ok {
        reason = tokio::select! {
            r = write_loop(&shared, &conn, &mut sink, stall, &mut ctrl_rx, start.cursor, &sub, chan) => r,
            r = read_loop(&shared, &conn, &mut stream, stall, &ctrl_tx) => r,
            r = liveness(&shared, &conn, &ctrl_tx) => r,
            r = expiry(token) => r,
            _ = conn.close.cancelled() => conn.reason.get().copied().unwrap_or(CloseReason::GoingAway),
            _ = token.revoked.cancelled() => CloseReason::TokenRevoked,
            _ = chan.close.cancelled() => chan.closing.get().copied().unwrap_or(CloseReason::ChannelChanged),
            _ = shared.stop.cancelled() => CloseReason::GoingAway,
        };
    }
    match reason {
        CloseReason::SlowConsumer => {
            stats.closed_slow_consumer.inc();
            chan.stats.closed_slow_consumer.inc();
        }
        CloseReason::PingTimeout => stats.closed_ping_timeout.inc(),
        CloseReason::TokenRevoked => stats.closed_token_revoked.inc(),
        CloseReason::TokenExpired => stats.closed_token_expired.inc(),
        CloseReason::ChannelChanged => stats.closed_channel_changed.inc(),
        CloseReason::GoingAway => stats.closed_shutdown.inc(),
        CloseReason::ReplayError => stats.closed_replay_error.inc(),
        CloseReason::ProtocolError | CloseReason::InvalidUtf8 | CloseReason::TooBig => stats.closed_protocol_error.inc(),
        CloseReason::ClientGone => stats.closed_by_client.inc(),
    }
    match reason {
        CloseReason::SlowConsumer
        | CloseReason::ReplayError
        | CloseReason::PingTimeout
        | CloseReason::TokenRevoked
        | CloseReason::TokenExpired
        | CloseReason::ChannelChanged
        | CloseReason::ProtocolError
        | CloseReason::InvalidUtf8
        | CloseReason::TooBig => {
            warn!(%peer, channel = %chan.id, reason = ?reason, "channel: closing connection");
        }
        _ => debug!(%peer, channel = %chan.id, reason = ?reason, "channel: closing connection"),
    }
    shared.unregister(conn_id);
    if let Some(frame) = reason.frame() {
        // A stalled client may never take the close frame: bounded wait.
        // Then the closing handshake: read (and drop) what the client still
        // sends until its close reply. Closing the socket at once would
        // answer a late pong with a reset, which can destroy the close
        // frame, and its reason, before the client reads it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if sink.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(m)) = stream.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            }
        })
        .await;
    } else {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    }
    stats.connections_active.dec();
    chan.stats.connections.dec();
    token.connections.dec();
    info!(%peer, channel = %chan.id, reason = ?reason, "channel: client disconnected");
}

/// Ends when the token passes its `not_after` (moved by a reload: the
/// new instant applies); never without one.
async fn expiry(token: &TokenState) -> CloseReason {
    let mut rx = token.not_after.subscribe();
    loop {
        let not_after = *rx.borrow_and_update();
        let wait = async {
            match not_after {
                Some(t) => {
                    let ms = t.saturating_sub(now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait => {
                // The wall clock decides (a sleep may end early or late).
                if not_after.is_some_and(|t| now_ms() >= t) {
                    return CloseReason::TokenExpired;
                }
            }
            r = rx.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// A frame the reader or the liveness check queues for the writer, with
/// its charge to the memory budget.
type Control = (Message, Option<Charge>);

/// Sends records from the log, from `cursor` on, as they arrive, and
/// `lost` notices where damage destroyed some; also sends the control
/// frames the reader and the liveness check queue, and flushes whenever
/// an answer of the reader's got stuck. Returns only for a reason to
/// close.
#[allow(clippy::too_many_arguments)]
async fn write_loop<S>(
    shared: &ChannelShared,
    conn: &ConnState,
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    stall: &Stall,
    ctrl_rx: &mut mpsc::Receiver<Control>,
    mut cursor: u64,
    sub: &Subscription,
    chan: &Chan,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let filter = &sub.filter;
    let per_message = sub.records_per_message.unwrap_or_else(|| chan.records_per_message());
    let mut head_rx = shared.head.subscribe();
    let mut chunk: Vec<Entry> = Vec::with_capacity(READ_CHUNK_RECORDS);
    let mut linger_until: Option<Instant> = None;
    let mut draining = false;
    // Answers fed to the WebSocket layer and not yet flushed: their
    // charges go once they are.
    let mut fed: Vec<Charge> = Vec::new();
    loop {
        // Control frames first: they are small and clients wait on them.
        let mut wrote = false;
        while let Ok((m, charge)) = ctrl_rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return CloseReason::ClientGone;
            }
            fed.extend(charge);
            wrote = true;
        }
        let head = *head_rx.borrow_and_update();
        let available = head.saturating_sub(cursor);
        let partial_wait = available > 0 && (available as usize) < per_message && !draining && {
            let until = *linger_until.get_or_insert_with(|| Instant::now() + MESSAGE_LINGER);
            Instant::now() < until
        };
        if available > 0 && !partial_wait {
            chunk.clear();
            let max_records = READ_CHUNK_RECORDS.max(per_message);
            let mut lost = None;
            let (skip_to, from_disk) = match shared.read_log(cursor, max_records, READ_CHUNK_BYTES, &mut chunk) {
                // The records this client still needed were removed.
                Err(_) => return CloseReason::SlowConsumer,
                Ok(Plan::Hot { skip_to }) => (skip_to, false),
                Ok(Plan::Lost { first, last }) => {
                    lost = Some((first, last));
                    (last + 1, false)
                }
                Ok(Plan::Disk(plan)) => {
                    // Behind the hot tail: read the segment off the runtime.
                    let gap_to = plan.gap_to;
                    let mut buf = std::mem::take(&mut chunk);
                    let (r, buf, plan) = match tokio::task::spawn_blocking(move || {
                        let r = plan.run(&mut buf);
                        (r, buf, plan)
                    })
                    .await
                    {
                        Ok(done) => done,
                        Err(_) => return CloseReason::ReplayError,
                    };
                    chunk = buf;
                    match r {
                        Ok(outcome) => {
                            if let Some(d) = &outcome.damage {
                                shared.note_damage(d);
                            }
                            lost = outcome.lost;
                            (lost.filter(|_| chunk.is_empty()).map_or(gap_to, |(_, last)| last + 1), true)
                        }
                        Err(_) if cursor < shared.first_seq() => return CloseReason::SlowConsumer,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            // Removed by someone else: its records are lost (a notice on the next round).
                            shared.segment_gone(plan.path());
                            continue;
                        }
                        Err(e) => {
                            warn!(peer = %conn.peer, error = %e, "channel: cannot read the replay log");
                            return CloseReason::ReplayError;
                        }
                    }
                }
            };
            // The notice counts this channel's records only (none: no notice).
            if let Some(n) = lost.and_then(|(first, last)| shared.lost_count(chan, first, last)) {
                let (first, last) = lost.unwrap_or_default();
                shared.stats.lost_notices.inc();
                chan.stats.lost_notices.inc();
                let notice = Notice::Lost { since: first, first_available: last + 1, lost: n };
                if sink.feed(Message::text(notice.json())).await.is_err() {
                    return CloseReason::ClientGone;
                }
                wrote = true;
            }
            let Some(last) = chunk.last() else {
                // Numbers never used (a jump after a crash), or lost: move on.
                cursor = skip_to.max(cursor + 1).min(head.max(skip_to));
                conn.cursor.store(cursor, Ordering::Relaxed);
                if wrote && sink.flush().await.is_err() {
                    return CloseReason::ClientGone;
                }
                continue;
            };
            // What this round holds until it is written: the messages (and
            // the chunk itself when it was read from disk; the hot tail's
            // records are shared).
            let json: usize = chunk.iter().map(|e| e.item.texts.bytes() + 16).sum();
            let _charge = shared.budget.charge(if from_disk { 2 * json } else { json });
            let (next_cursor, newest_observed) = (last.seq + 1, last.item.observed_ms);
            let mut replayed = 0usize;
            let mut msgs = 0usize;
            let mut records = 0usize;
            let mut batch: Vec<(u64, &str)> = Vec::with_capacity(per_message);
            // The channel's records (its filter, applied when they were
            // appended), then the client's own filter, which only narrows.
            let mine = chunk.iter().filter(|e| chan.sees(e.seq, e.item.texts.bits()) && filter.matches(&e.item));
            for (e, text) in mine.filter_map(|e| e.item.texts.text_for(chan.bit()).map(|t| (e, t))) {
                if e.seq < conn.live_from_seq {
                    replayed += 1;
                }
                batch.push((e.seq, text));
                if batch.len() == per_message {
                    records += batch.len();
                    msgs += 1;
                    if sink.feed(Message::text(message(&batch))).await.is_err() {
                        return CloseReason::ClientGone;
                    }
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                records += batch.len();
                msgs += 1;
                if sink.feed(Message::text(message(&batch))).await.is_err() {
                    return CloseReason::ClientGone;
                }
            }
            if sink.flush().await.is_err() {
                return CloseReason::ClientGone;
            }
            stall.flushed();
            fed.clear();
            cursor = next_cursor;
            conn.cursor.store(cursor, Ordering::Relaxed);
            // A chunk read from disk may be large: do not keep it.
            if chunk.capacity() > READ_CHUNK_RECORDS.max(per_message) {
                chunk = Vec::with_capacity(READ_CHUNK_RECORDS);
            }
            linger_until = None;
            if msgs > 0 {
                let now = now_ms();
                let stats = &shared.stats;
                stats.frames_written(msgs, records, newest_observed, now);
                chan.stats.records_sent.add(records as u64);
                if replayed > 0 {
                    stats.records_replayed.add(replayed as u64);
                }
            }
            continue;
        }
        if wrote {
            if sink.flush().await.is_err() {
                return CloseReason::ClientGone;
            }
            stall.flushed();
            fed.clear();
        }
        if draining && cursor >= head {
            return CloseReason::GoingAway;
        }
        // Nothing to send now: wait for records, a control frame, an
        // answer the reader could not write, the end of a linger, or the
        // sink draining at shutdown.
        let linger = async {
            match (partial_wait, linger_until) {
                (true, Some(t)) => tokio::time::sleep_until(t).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = head_rx.changed() => {
                if r.is_err() {
                    draining = true;
                }
            }
            m = ctrl_rx.recv() => match m {
                Some((m, _charge)) => {
                    if sink.send(m).await.is_err() {
                        return CloseReason::ClientGone;
                    }
                    stall.flushed();
                }
                None => return CloseReason::ClientGone,
            },
            _ = stall.stuck() => {
                // The reader's automatic answer (a pong) is stuck: push it
                // out, waiting for the client to read; the reader waits
                // meanwhile.
                if sink.flush().await.is_err() {
                    return CloseReason::ClientGone;
                }
                stall.flushed();
            }
            _ = linger => {}
            _ = shared.draining.cancelled(), if !draining => draining = true,
        }
    }
}

/// One `{"data":[...],"seq":N}` message of `(seq, text)` records; `seq`
/// is the sequence number of the last record in it.
fn message(batch: &[(u64, &str)]) -> String {
    let bytes: usize = batch.iter().map(|(_, t)| t.len() + 1).sum();
    let mut s = String::with_capacity(bytes + 40);
    s.push_str("{\"data\":[");
    for (i, (_, t)) in batch.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(t);
    }
    s.push_str("],\"seq\":");
    let seq = batch.last().map_or(0, |(seq, _)| *seq);
    s.push_str(&seq.to_string());
    s.push('}');
    s
}

/// Reads client frames: text frames get a `Response To ...` answer
/// (clients that send a timestamp every second expect it); every frame
/// counts as a sign of life. Pings are answered by the WebSocket layer;
/// after one, the next frame is read only once its answer is written
/// ([`Stall::answered`]).
async fn read_loop<S>(
    shared: &ChannelShared,
    conn: &ConnState,
    stream: &mut SplitStream<WebSocketStream<S>>,
    stall: &Stall,
    ctrl_tx: &mpsc::Sender<Control>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(msg)) => {
                conn.last_seen_ms.store(now_ms(), Ordering::Relaxed);
                match msg {
                    Message::Ping(_) => stall.answered(stall.flushes()).await,
                    Message::Text(t) => {
                        let answer = format!("Response To {}", t.as_str());
                        let charge = shared.budget.charge(answer.len());
                        if ctrl_tx.send((Message::text(answer), Some(charge))).await.is_err() {
                            return CloseReason::ClientGone;
                        }
                    }
                    Message::Close(_) => return CloseReason::ClientGone,
                    _ => {}
                }
            }
            Some(Err(e)) => {
                debug!(peer = %conn.peer, error = %e, "channel: read failed");
                return CloseReason::of_read_error(&e);
            }
            None => return CloseReason::ClientGone,
        }
    }
}

/// Sends a ping every `ping_interval`; ends the connection when nothing at
/// all was received from the client for two intervals.
async fn liveness(shared: &ChannelShared, conn: &ConnState, ctrl_tx: &mpsc::Sender<Control>) -> CloseReason {
    let interval = shared.live.ping_interval();
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let silent_ms = now_ms() - conn.last_seen_ms.load(Ordering::Relaxed);
        if silent_ms > 2 * interval.as_millis() as i64 {
            return CloseReason::PingTimeout;
        }
        // A full control queue already holds frames the client must
        // answer; skipping one ping is harmless.
        let _ = ctrl_tx.try_send((Message::Ping(now_ms().to_string().into()), None));
    }
}

/// Where a new connection starts, and the notice it gets first.
pub struct Start {
    /// The connection's first sequence number.
    pub cursor: u64,
    /// Set when `since` asked for records the log does not hold.
    pub notice: Option<Notice>,
}

/// A message without records that tells a client where its stream goes on
/// and why not where it asked: `{"data":[],"since":S,"next":N,...}`.
/// Every notice has an empty `data` (clients that loop over `data` see
/// nothing) and no `seq`; `since` is where the client asked to start (or
/// had got to), `next` the sequence number the stream goes on from (a
/// client reconnecting after a notice asks from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Records `since..first_available` are gone: evicted by the
    /// retention, or destroyed by damage. `{"data":[],"lost":N,"since":S,
    /// "first_available":F,"next":F}`: on the default channel `N = F - S`;
    /// on a stream, the records among them that were its own (as far as
    /// the log can still tell: see [`super::replay::ReplayLog::count_for`]).
    Lost {
        /// The first record missing.
        since: u64,
        /// The oldest record still held after them; the stream goes on there.
        first_available: u64,
        /// How many of them the client lost.
        lost: u64,
    },
    /// `since` is beyond the newest record: a number from another history
    /// (before a `reset-state`, or another bridge). `{"data":[],
    /// "since":S,"next":N}`; the stream goes on live at N.
    Ahead {
        /// What the client asked for.
        since: u64,
        /// The sequence number the next record gets.
        next: u64,
    },
}

impl Notice {
    /// The notice as sent.
    pub fn json(&self) -> String {
        match *self {
            Notice::Lost { since, first_available, lost } => {
                format!(r#"{{"data":[],"lost":{lost},"since":{since},"first_available":{first_available},"next":{first_available}}}"#)
            }
            Notice::Ahead { since, next } => format!(r#"{{"data":[],"since":{since},"next":{next}}}"#),
        }
    }
}

/// Decides where a connection starts given the log's bounds
/// (`first_seq..next_seq`) and the client's `since`.
///
/// - no `since`: live from `next_seq`;
/// - `since` within the log: from `since`;
/// - `since` before the log: from `first_seq`, with a lost notice
///   (`since = 0` counts from 1: sequence numbers start at 1);
/// - `since` after `next_seq` (numbers from another bridge or a wiped state
///   directory): live from `next_seq`, with a notice saying so.
pub fn start_for(since: Option<u64>, first_seq: u64, next_seq: u64) -> Start {
    match since {
        None => Start { cursor: next_seq, notice: None },
        Some(s) if s > next_seq => Start { cursor: next_seq, notice: Some(Notice::Ahead { since: s, next: next_seq }) },
        Some(s) if s >= first_seq => Start { cursor: s, notice: None },
        Some(s) => {
            let notice =
                (s.max(1) < first_seq).then_some(Notice::Lost { since: s, first_available: first_seq, lost: first_seq - s.max(1) });
            Start { cursor: first_seq, notice }
        }
    }
}

/// A fresh [`ConnState`].
pub fn new_state(peer: SocketAddr, live_from_seq: u64, cursor: u64) -> Arc<ConnState> {
    Arc::new(ConnState {
        peer,
        cursor: AtomicU64::new(cursor),
        live_from_seq,
        close: CancellationToken::new(),
        reason: OnceLock::new(),
        last_seen_ms: AtomicI64::new(now_ms()),
    })
}

/// Connections by id.
pub type Registry = Mutex<std::collections::HashMap<u64, Arc<ConnState>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        // Ring holds 101..=200, next is 201.
        let s = |since| {
            let st = start_for(since, 101, 201);
            (st.cursor, st.notice.map(|n| n.json()))
        };
        assert_eq!(s(None), (201, None));
        assert_eq!(s(Some(150)), (150, None));
        assert_eq!(s(Some(101)), (101, None));
        assert_eq!(s(Some(201)), (201, None));
        assert_eq!(s(Some(5000)), (201, Some(r#"{"data":[],"since":5000,"next":201}"#.into())));
        assert_eq!(s(Some(100)), (101, Some(r#"{"data":[],"lost":1,"since":100,"first_available":101,"next":101}"#.into())));
        assert_eq!(s(Some(1)), (101, Some(r#"{"data":[],"lost":100,"since":1,"first_available":101,"next":101}"#.into())));
        assert_eq!(s(Some(0)), (101, Some(r#"{"data":[],"lost":100,"since":0,"first_available":101,"next":101}"#.into())));
        // Nothing evicted yet: since=0 loses nothing.
        let st = start_for(Some(0), 1, 10);
        assert_eq!((st.cursor, st.notice), (1, None));
    }

    #[test]
    fn message_framing_carries_the_last_seq() {
        let m = message(&[(7, r#"{"a":"1"}"#), (9, r#"{"b":"2"}"#)]);
        assert_eq!(m, r#"{"data":[{"a":"1"},{"b":"2"}],"seq":9}"#);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["seq"], 9);
    }
}
