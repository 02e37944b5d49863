//! What every listener does to stay bounded (the channel and the status
//! listener): a cap on open sockets, room made by closing the longest-idle
//! one, an idle deadline, and enough file descriptors for all of it.
//!
//! A [`Gate`] holds one permit per socket a listener may have open. The
//! accept loop takes a [`Vacancy`] *before* `accept` (mini-redis), so a
//! listener never holds more sockets than its cap, whatever its peers do,
//! and fills it with the accepted socket ([`Vacancy::fill`]), which makes it
//! the connection's [`Slot`], moved into the connection's task. A vacancy
//! is not a connection: it has no idle clock and is never chosen to make
//! room; a slot's idle clock starts when its socket is accepted, however
//! long the accept waited (a slot stamped when it was taken would reach
//! a quiet listener's next connection already "idle" for the whole wait and
//! be closed before its request was read). When every slot is taken, the gate
//! closes an idle connection to make room: the longest-idle of those that
//! never did any work (a handshake or first request not yet complete), and
//! only when there is none, the longest-idle keep-alive connection between
//! requests (whose client may be sending its next request just then, and
//! would see its connection reset). So sockets that connect and say nothing
//! cannot lock out a client that connects after them, which is admitted at
//! once, nor take a working client's connection while one of their own is
//! there to close. The limit of any such rule: while more silent sockets
//! than the cap keep arriving, a connection that has not sent its request
//! yet cannot be told from them, and is closed once the cap's worth of
//! newer ones arrived; a client that sends its request as it connects is
//! answered, one that connects and waits (a browser's preconnect) may have
//! to connect again. A connection that is doing work
//! (a request in flight, an admitted subscriber) is never chosen; it holds
//! a [`Busy`] guard.
//!
//! The caps: the status listener 128 sockets
//! ([`crate::telemetry::server::MAX_CONNECTIONS`]), the channel its
//! `max_connections` subscribers plus 64 pending handshakes.
//!
//! [`raise_fd_limit`] raises the soft `RLIMIT_NOFILE` to the hard limit at
//! start, so the caps, not the default 1,024 descriptors, are what bound
//! the listeners (followed files need descriptors too).
//!
//! [`bind`] binds a configured address, naming its key when it cannot;
//! [`Bound`] holds the listeners [`crate::preflight`] bound before anything
//! started, by key, until their component takes its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A full listener says so in the log at most this often.
const FULL_WARNING_EVERY_MS: i64 = 60_000;

/// While every slot is held by busy connections, the gate looks for an
/// idle one to close again this often.
const RETRY_EVICTION_EVERY: Duration = Duration::from_millis(100);

/// A keep-alive connection that finished a request less than this long ago
/// is not closed to make room: its client is likely sending its next
/// request just then, and closing a socket with a request unread resets it
/// under the client. A full listener waits this long at most for one.
const KEEP_ALIVE_GRACE_MS: u64 = 2_000;

/// The socket cap of one listener. Cheap to clone.
#[derive(Clone)]
pub struct Gate(Arc<GateInner>);

/// The state behind a [`Gate`].
struct GateInner {
    /// The listener's name in logs (`channel`, `status`).
    name: &'static str,
    /// Sockets allowed open at once (grows with [`Gate::grow`]).
    capacity: AtomicUsize,
    /// One permit per socket; a [`Slot`] holds one.
    slots: Arc<Semaphore>,
    /// Open connections by id; ids grow, so they also order by age.
    conns: Mutex<HashMap<u64, Arc<SlotState>>>,
    /// Id of the next slot.
    next_id: AtomicU64,
    /// Connections closed to make room, since start.
    evicted: AtomicU64,
    /// Epoch ms of the last "listener full" warning (0 = never).
    last_full_warning_ms: AtomicI64,
    /// When the gate was made: idle times are kept as ms since then.
    origin: Instant,
}

/// What the gate knows of one connection.
struct SlotState {
    /// [`Busy`] guards alive (0 = idle, may be closed to make room).
    busy: AtomicUsize,
    /// Set once the connection was busy (it served a request, or was
    /// admitted): closed to make room only after every idle connection
    /// that never was.
    worked: AtomicBool,
    /// Ms since the gate's origin at which the connection last became idle
    /// (or was accepted).
    idle_since_ms: AtomicU64,
    /// Cancelled when the gate closes this connection to make room.
    evict: CancellationToken,
    /// Set once the gate chose this connection (its permit is on its way
    /// back).
    evicting: AtomicBool,
    /// The gate's origin (a copy, so a [`Busy`] guard needs no gate).
    origin: Instant,
}

impl SlotState {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

impl Gate {
    /// A gate for `capacity` sockets of the listener `name`.
    pub fn new(name: &'static str, capacity: usize) -> Gate {
        Gate(Arc::new(GateInner {
            name,
            capacity: AtomicUsize::new(capacity),
            slots: Arc::new(Semaphore::new(capacity)),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            evicted: AtomicU64::new(0),
            last_full_warning_ms: AtomicI64::new(0),
            origin: Instant::now(),
        }))
    }

    /// Sockets allowed open at once.
    pub fn capacity(&self) -> usize {
        self.0.capacity.load(Ordering::SeqCst)
    }

    /// Raises the cap to `capacity` (a reload that allows a channel more
    /// connections); a lower one is kept until a restart (sockets open
    /// now are not closed for it).
    pub fn grow(&self, capacity: usize) {
        let before = self.0.capacity.fetch_max(capacity, Ordering::SeqCst);
        if capacity > before {
            self.0.slots.add_permits(capacity - before);
            info!(listener = self.0.name, capacity, "listener: socket cap raised");
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.capacity() - self.0.slots.available_permits()
    }

    /// Connections closed to make room since start.
    pub fn evicted(&self) -> u64 {
        self.0.evicted.load(Ordering::Relaxed)
    }

    /// Waits for a free place for the next socket. When none is free,
    /// closes the connection that has been idle longest and takes its place;
    /// when every connection is busy, waits for one to end or turn idle.
    pub async fn acquire(&self) -> Vacancy {
        let permit = match self.0.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => loop {
                self.evict_longest_idle();
                match tokio::time::timeout(RETRY_EVICTION_EVERY, self.0.slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => break p,
                    // The semaphore is never closed; a closed one has no slot to give.
                    Ok(Err(_)) => std::future::pending::<()>().await,
                    Err(_) => continue,
                }
            },
        };
        Vacancy { gate: self.0.clone(), permit }
    }

    /// Chooses an idle connection and tells it to close, unless one chosen
    /// earlier is still closing (its slot is about to be free): the one idle
    /// longest among those that never worked, else among the keep-alive
    /// connections idle for [`KEEP_ALIVE_GRACE_MS`] or more.
    fn evict_longest_idle(&self) {
        let conns = self.0.lock();
        if conns.values().any(|s| s.evicting.load(Ordering::SeqCst)) {
            return;
        }
        let now = self.0.origin.elapsed().as_millis() as u64;
        let victim = conns
            .iter()
            .filter(|(_, s)| s.busy.load(Ordering::SeqCst) == 0 && !s.evict.is_cancelled())
            .filter(|(_, s)| {
                !s.worked.load(Ordering::Relaxed) || now.saturating_sub(s.idle_since_ms.load(Ordering::Relaxed)) >= KEEP_ALIVE_GRACE_MS
            })
            .min_by_key(|(id, s)| (s.worked.load(Ordering::Relaxed), s.idle_since_ms.load(Ordering::Relaxed), **id))
            .map(|(_, s)| s.clone());
        drop(conns);
        let Some(victim) = victim else { return };
        victim.evicting.store(true, Ordering::SeqCst);
        victim.evict.cancel();
        self.0.evicted.fetch_add(1, Ordering::Relaxed);
        let now = crate::time::now_ms();
        let last = self.0.last_full_warning_ms.load(Ordering::Relaxed);
        if now - last >= FULL_WARNING_EVERY_MS
            && self.0.last_full_warning_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            warn!(
                listener = self.0.name,
                capacity = self.capacity(),
                evicted_total = self.evicted(),
                "listener full: closing the longest-idle connection to admit a new one (many idle or stalled clients)"
            );
        }
    }
}

impl GateInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SlotState>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A place in a [`Gate`] taken before `accept`, waiting for its socket.
/// It is not a connection yet: the gate neither times it nor closes it to
/// make room. Dropped unfilled (the listener stops), the place is free again.
pub struct Vacancy {
    /// The gate, to register the connection in.
    gate: Arc<GateInner>,
    /// The place itself.
    permit: OwnedSemaphorePermit,
}

impl Vacancy {
    /// The socket was accepted: the place becomes its connection's slot,
    /// idle from now (a fresh connection is the newest idle one, so the
    /// last to be closed to make room).
    pub fn fill(self) -> Slot {
        let gate = self.gate;
        let id = gate.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(SlotState {
            busy: AtomicUsize::new(0),
            worked: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            evict: CancellationToken::new(),
            evicting: AtomicBool::new(false),
            origin: gate.origin,
        });
        state.idle_since_ms.store(state.now_ms(), Ordering::Relaxed);
        gate.lock().insert(id, state.clone());
        Slot { gate, id, state, _permit: self.permit }
    }
}

/// One connection's place in a [`Gate`]; the place is free again when this
/// is dropped (with the socket).
pub struct Slot {
    /// The gate, to leave it on drop.
    gate: Arc<GateInner>,
    /// This slot's id in the gate.
    id: u64,
    /// What the gate sees of the connection.
    state: Arc<SlotState>,
    /// The permit: the place itself.
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Marks the connection busy (never closed to make room) until the
    /// guard is dropped; it is idle again from then on.
    pub fn busy(&self) -> Busy {
        self.state.busy.fetch_add(1, Ordering::SeqCst);
        self.state.worked.store(true, Ordering::Relaxed);
        // Chosen to make room just as it turned busy (a handshake that
        // completed meanwhile): it may not be watching for that any more,
        // so it must not hold up the gate, which picks another on its next
        // look.
        self.state.evicting.store(false, Ordering::SeqCst);
        Busy(self.state.clone())
    }

    /// Completes when the gate closes this connection to make room.
    pub async fn evicted(&self) {
        self.state.evict.cancelled().await
    }

    /// Completes once the connection has been idle (no [`Busy`] guard) for
    /// `limit` without a break.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let since = self.state.idle_since_ms.load(Ordering::Relaxed);
            if self.state.busy.load(Ordering::Relaxed) > 0 {
                // Busy now: it cannot time out before `limit` after it
                // turns idle, so look again then.
                tokio::time::sleep(limit).await;
                continue;
            }
            let deadline = self.state.origin + Duration::from_millis(since) + limit;
            tokio::time::sleep_until(deadline).await;
            if self.state.busy.load(Ordering::Relaxed) == 0 && self.state.idle_since_ms.load(Ordering::Relaxed) == since {
                return;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.lock().remove(&self.id);
    }
}

/// A connection at work: while this lives, its slot is not closed to make
/// room.
pub struct Busy(Arc<SlotState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Binds `addr` for the config key `key`, naming both when it fails.
pub fn bind(key: &str, addr: std::net::SocketAddr) -> Result<std::net::TcpListener, crate::settings::ConfigError> {
    std::net::TcpListener::bind(addr).map_err(|e| crate::settings::ConfigError::unusable(key, format!("cannot listen on {addr}: {e}")))
}

/// Listeners bound before anything starts, by the config key of their
/// address (`status.listen`, `channel.listen`): a port in use is refused
/// before anything reads. Each component takes its own when it starts.
#[derive(Debug, Default)]
pub struct Bound(Vec<(String, std::net::TcpListener)>);

impl Bound {
    /// Keeps `listener`, bound for `key`.
    pub fn insert(&mut self, key: impl Into<String>, listener: std::net::TcpListener) {
        self.0.push((key.into(), listener));
    }

    /// The listener bound for `key`, if any (taken: asked twice, `None`).
    pub fn take(&mut self, key: &str) -> Option<std::net::TcpListener> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }
}

/// Raises the soft limit on open files to the hard limit (what systemd's
/// `LimitNOFILE=` or the shell's `ulimit -Hn` allows), so the listeners'
/// caps and the followed files, not the historical soft default of 1,024,
/// bound the descriptors. Failure is logged and harmless: the caps still
/// hold.
pub fn raise_fd_limit() {
    // `rlimit` wraps getrlimit/setrlimit safely (the crate forbids unsafe
    // code); on macOS it also respects the kernel's per-process maximum.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(open_files = n, "file descriptor limit"),
        Err(e) => warn!(error = %e, "cannot raise the soft limit on open files; keeping the current one"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_gate_closes_the_longest_idle_connection_never_a_busy_one() {
        let gate = Gate::new("test", 3);
        let a = gate.acquire().await.fill();
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = gate.acquire().await.fill();
        tokio::time::advance(Duration::from_millis(10)).await;
        let c = gate.acquire().await.fill();
        // `a` is the oldest but busy: `b` goes.
        let busy_a = a.busy();
        let gate2 = gate.clone();
        let d = tokio::spawn(async move { gate2.acquire().await.fill() });
        tokio::time::timeout(Duration::from_secs(1), b.evicted()).await.expect("b is chosen");
        assert!(!a.state.evict.is_cancelled() && !c.state.evict.is_cancelled());
        drop(b);
        let d = d.await.unwrap();
        assert_eq!((gate.open(), gate.evicted()), (3, 1));
        // `a` turns idle after `c` and `d` opened: `c` is now idle longest.
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(busy_a);
        let gate2 = gate.clone();
        let e = tokio::spawn(async move { gate2.acquire().await.fill() });
        tokio::time::timeout(Duration::from_secs(1), c.evicted()).await.expect("c is chosen");
        drop(c);
        let _e = e.await.unwrap();
        assert!(!a.state.evict.is_cancelled() && !d.state.evict.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_connection_is_busy_a_new_one_waits() {
        let gate = Gate::new("test", 1);
        let a = gate.acquire().await.fill();
        let busy = a.busy();
        let gate2 = gate.clone();
        let waiting = tokio::spawn(async move { gate2.acquire().await.fill() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished() && !a.state.evict.is_cancelled());
        // Idle again: a look after the keep-alive grace closes it.
        drop(busy);
        let idle = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), a.evicted()).await.expect("a is chosen once idle");
        assert!(idle.elapsed() >= Duration::from_millis(KEEP_ALIVE_GRACE_MS), "not within the grace");
        drop(a);
        waiting.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_chosen_as_it_turns_busy_does_not_hold_up_the_gate() {
        let gate = Gate::new("test", 2);
        let a = gate.acquire().await.fill();
        let b = gate.acquire().await.fill();
        let gate2 = gate.clone();
        let waiting = tokio::spawn(async move { gate2.acquire().await.fill() });
        tokio::time::timeout(Duration::from_secs(1), a.evicted()).await.expect("a is chosen");
        // `a` finished its handshake meanwhile and stays: the gate takes `b`.
        let _busy = a.busy();
        tokio::time::timeout(Duration::from_secs(1), b.evicted()).await.expect("b is chosen next");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("a slot is had").unwrap();
        assert_eq!(gate.evicted(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_deadline_restarts_after_each_busy_period() {
        let gate = Gate::new("test", 1);
        let slot = gate.acquire().await.fill();
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(20)).await;
        drop(slot.busy());
        slot.idle_for(Duration::from_secs(30)).await;
        assert_eq!(start.elapsed().as_secs(), 50, "30 s after the last request, not after the connection opened");
    }

    /// A quiet listener's next connection: the accept loop took its place
    /// long before anyone connected. Its idle deadline counts from the
    /// accept. (Stamped when the place was taken, a connection after 40 s
    /// of quiet was "idle" for 40 s already and closed at once, before its
    /// request was read: the status listener's empty replies.)
    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_starts_when_the_socket_is_accepted_not_when_its_place_was_taken() {
        let gate = Gate::new("test", 4);
        let vacancy = gate.acquire().await;
        tokio::time::advance(Duration::from_secs(40)).await;
        let accepted = Instant::now();
        let slot = vacancy.fill();
        slot.idle_for(Duration::from_secs(30)).await;
        assert_eq!(accepted.elapsed(), Duration::from_secs(30), "30 s after the accept, not after the place was taken");
    }

    /// A place waiting in `accept` is no connection: it is never chosen to
    /// make room (its connection would be closed the moment it arrived).
    #[tokio::test(start_paused = true)]
    async fn a_place_waiting_for_its_socket_is_never_chosen_to_make_room() {
        let gate = Gate::new("test", 2);
        let vacancy = gate.acquire().await;
        tokio::time::advance(Duration::from_secs(10)).await;
        let a = gate.acquire().await.fill();
        let gate2 = gate.clone();
        let waiting = tokio::spawn(async move { gate2.acquire().await });
        tokio::time::timeout(Duration::from_secs(1), a.evicted()).await.expect("the only connection, a, is chosen");
        drop(a);
        let _next = tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("a place is had").unwrap();
        let slot = vacancy.fill();
        assert!(!slot.state.evict.is_cancelled(), "the connection filling the older place is not closed");
        assert_eq!(gate.evicted(), 1);
    }

    /// A keep-alive connection between two requests is closed to make room
    /// only when no idle connection that never did any work is left: its
    /// client may be sending its next request just then.
    #[tokio::test(start_paused = true)]
    async fn connections_that_never_worked_make_room_before_keep_alive_ones() {
        let gate = Gate::new("test", 3);
        let keep_alive = gate.acquire().await.fill();
        drop(keep_alive.busy());
        tokio::time::advance(Duration::from_secs(5)).await;
        let silent = gate.acquire().await.fill();
        let _third = gate.acquire().await.fill();
        let gate2 = gate.clone();
        let waiting = tokio::spawn(async move { gate2.acquire().await.fill() });
        tokio::time::timeout(Duration::from_secs(1), silent.evicted()).await.expect("the silent connection is chosen");
        assert!(!keep_alive.state.evict.is_cancelled(), "idle longer, but it served a request");
        drop(silent);
        let _fourth = waiting.await.unwrap();
    }

    /// A keep-alive connection that has just answered a request is left
    /// alone for a grace period even when it is the only candidate: its
    /// client's next request may be on the wire.
    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_that_just_answered_is_not_closed_to_make_room() {
        let gate = Gate::new("test", 1);
        let keep_alive = gate.acquire().await.fill();
        drop(keep_alive.busy());
        let gate2 = gate.clone();
        let waiting = tokio::spawn(async move { gate2.acquire().await.fill() });
        tokio::time::advance(Duration::from_millis(KEEP_ALIVE_GRACE_MS - 500)).await;
        tokio::task::yield_now().await;
        assert!(!keep_alive.state.evict.is_cancelled(), "closed while its client may be sending");
        tokio::time::timeout(Duration::from_secs(2), keep_alive.evicted()).await.expect("chosen once idle past the grace");
        drop(keep_alive);
        let _next = waiting.await.unwrap();
    }
}
