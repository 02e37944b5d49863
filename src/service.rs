//! Running under systemd: readiness and watchdog notifications, and logs
//! that read well in the journal.
//!
//! Invariant: nothing here changes what the bridge does; it only tells the
//! service manager what state the bridge is in and formats logs. Every
//! notification is a no-op when `NOTIFY_SOCKET` is unset (a terminal, a
//! test, a container without systemd), and a failure to notify is logged,
//! never fatal.
//!
//! The unit (`systemd/calllog-bridge.service`) is `Type=notify`:
//!
//! - [`notify_ready`] once sources and sinks are up (`READY=1`), and again
//!   after a reload;
//! - [`notify_reloading`] when SIGHUP starts a reload (`RELOADING=1`);
//! - [`notify_stopping`] when SIGTERM starts the drain (`STOPPING=1`);
//! - [`spawn_watchdog`] pings `WATCHDOG=1` at half of `WATCHDOG_USEC` from a
//!   task on the runtime, so a wedged runtime stops pinging and systemd
//!   restarts the bridge.
//!
//! [`init_logging`] installs the tracing subscriber: the level comes from
//! `RUST_LOG` when set (used as written), else the config's `log_level`; a
//! bare level there (`info`, `debug`) applies to the bridge's own lines,
//! and other crates (the Kafka client, the HTTP and TLS stacks) log at
//! `warn` at most unless a directive names them (`log_level =
//! "info,rskafka=info"`). Their lines are rate limited per call site like
//! ours ([`DependencyLimit`]: a burst per window, then one "suppressed N"
//! line), so a client reconnecting in a loop cannot flood the journal.
//! When stderr is the journal (`JOURNAL_STREAM` names stderr's device and
//! inode) lines carry no timestamp and no colour (the journal stamps them)
//! but a `<N>` syslog priority prefix, so `journalctl -p warning` filters
//! by level.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, Format, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::settings::ConfigError;
use crate::telemetry::log_limit::{LogLimit, DEFAULT_BURST, DEFAULT_WINDOW};

/// The target prefix of the bridge's own log lines.
const OURS: &str = "calllog_bridge";

/// Sends `states` to the service manager; logs (and otherwise ignores) a
/// failure, since a missing notification must not stop the bridge.
fn notify(what: &str, states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(notification = what, error = %e, "cannot notify the service manager");
    }
}

/// `READY=1`: sources and sinks are up (first start, or a reload is done).
/// `status` is shown by `systemctl status` (e.g. "following 3 files").
pub fn notify_ready(status: &str) {
    notify("READY", &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1`: a SIGHUP reload has started; [`notify_ready`] ends it.
/// `MONOTONIC_USEC` is included as systemd ≥ 253 requires for reloads.
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify("RELOADING", &[NotifyState::Reloading, now, NotifyState::Status("reloading configuration")]),
        Err(_) => notify("RELOADING", &[NotifyState::Reloading, NotifyState::Status("reloading configuration")]),
    }
}

/// `STOPPING=1`: the drain has started (SIGTERM / SIGINT).
pub fn notify_stopping() {
    notify("STOPPING", &[NotifyState::Stopping, NotifyState::Status("draining: flushing batches and writing checkpoints")]);
}

/// `STATUS=...`: a one-line state shown by `systemctl status`.
pub fn notify_status(status: &str) {
    notify("STATUS", &[NotifyState::Status(status)]);
}

/// The interval at which to ping the watchdog: half of `WATCHDOG_USEC`
/// (as sd_watchdog_enabled(3) advises), when the service manager set a
/// watchdog for this process; `None` otherwise.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Starts the watchdog task when systemd asked for one (`WatchdogSec=`):
/// it sends `WATCHDOG=1` every [`watchdog_interval`] until `shutdown` is
/// cancelled. The pings come from a task on the bridge's runtime, so a
/// runtime that stops making progress stops pinging. Returns `None` when no
/// watchdog is configured.
pub fn spawn_watchdog(shutdown: CancellationToken) -> Option<JoinHandle<()>> {
    let every = watchdog_interval()?;
    tracing::debug!(interval_ms = every.as_millis() as u64, "pinging the systemd watchdog");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => notify("WATCHDOG", &[NotifyState::Watchdog]),
            }
        }
    }))
}

/// True when stderr is connected to the journal: `JOURNAL_STREAM` holds
/// `DEVICE:INODE` of the stream systemd connected, and it must match
/// stderr's own (a wrapper may have redirected stderr elsewhere).
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.trim().parse::<u64>(), ino.trim().parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Builds the level filter: `RUST_LOG` when set and non-empty, else
/// `log_level` from the config. The error names the key that is wrong.
pub fn log_filter(log_level: &str) -> Result<EnvFilter, ConfigError> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| ConfigError::invalid("RUST_LOG", format!("`{v}` is not a log filter ({e})")))
        }
        _ => parse_level(log_level),
    }
}

/// Parses the config's `log_level` (a level or an `EnvFilter` directive).
/// A bare level is the bridge's own: other crates stay at `warn` (or the
/// level, when it is quieter). A directive is used as written.
pub fn parse_level(log_level: &str) -> Result<EnvFilter, ConfigError> {
    // A bare word is an `EnvFilter` *target* ("verbose" would silence
    // everything else); a bare word must therefore be a level.
    let bare = !log_level.contains(['=', ',', '[', ':']);
    let directives = if bare {
        let level = log_level.trim().to_ascii_lowercase();
        match level.as_str() {
            "off" | "error" | "warn" => level,
            "info" | "debug" | "trace" => format!("warn,{OURS}={level}"),
            _ => {
                return Err(ConfigError::invalid(
                    "log_level",
                    format!(
                        "`{log_level}` is not a level: use error, warn, info, debug, trace, off or a directive like `info,calllog_bridge=debug`"
                    ),
                ))
            }
        }
    } else {
        log_level.to_string()
    };
    EnvFilter::try_new(&directives).map_err(|e| ConfigError::invalid("log_level", format!("`{log_level}` is not a log level ({e})")))
}

/// Rate limits of other crates' log lines, per call site (a line of the
/// Kafka client that repeats for every reconnection is one call site):
/// [`DEFAULT_BURST`] lines per [`DEFAULT_WINDOW`], the rest counted for a
/// summary. Pure: the caller passes the time.
pub struct SiteLimits {
    /// Each call site's limit and target (for the summary).
    sites: Mutex<HashMap<Identifier, (LogLimit, &'static str)>>,
    /// When the next summary is due: nanoseconds after `base`, `u64::MAX`
    /// when none is waiting (read on every line without the lock).
    next_due: AtomicU64,
    /// The origin of `next_due`.
    base: OnceLock<Instant>,
}

/// Lines of one dependency's call site that were not logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSummary {
    /// The crate and module that logged them.
    pub target: &'static str,
    /// How many.
    pub suppressed: u64,
}

impl Default for SiteLimits {
    fn default() -> Self {
        SiteLimits { sites: Mutex::default(), next_due: AtomicU64::new(u64::MAX), base: OnceLock::new() }
    }
}

impl SiteLimits {
    fn nanos(&self, t: Instant) -> u64 {
        let base = *self.base.get_or_init(|| t);
        u64::try_from(t.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Whether a line from `site` (of crate `target`) at `now` may be
    /// logged: the bridge's own lines always (they have their own limits),
    /// another crate's within its site's burst.
    pub fn allow(&self, site: Identifier, target: &'static str, now: Instant) -> bool {
        if target.starts_with(OURS) {
            return true;
        }
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        if sites.len() >= MAX_SITES && !sites.contains_key(&site) {
            // Call sites are static, so this bound is never reached in
            // practice; past it, lines are logged unlimited.
            return true;
        }
        let (limit, _) = sites.entry(site).or_insert_with(|| (LogLimit::new(DEFAULT_BURST, DEFAULT_WINDOW), target));
        let allowed = limit.allow(now, "line");
        if let Some(due) = limit.summary_due() {
            self.next_due.fetch_min(self.nanos(due), Ordering::Relaxed);
        }
        allowed
    }

    /// The summaries due at `now` (none most of the time, without a lock).
    pub fn due(&self, now: Instant) -> Vec<SiteSummary> {
        let next = self.next_due.load(Ordering::Relaxed);
        if next == u64::MAX || self.nanos(now) < next {
            return Vec::new();
        }
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut next = u64::MAX;
        for (limit, target) in sites.values_mut() {
            if let Some(s) = limit.summary(now, false) {
                out.push(SiteSummary { target, suppressed: s.total });
            }
            if let Some(due) = limit.summary_due() {
                next = next.min(self.nanos(due));
            }
        }
        self.next_due.store(next, Ordering::Relaxed);
        out
    }
}

/// More distinct call sites than any build has: [`SiteLimits`] stays
/// bounded whatever happens.
const MAX_SITES: usize = 4096;

/// The layer that applies [`SiteLimits`] to the lines of other crates,
/// and logs a summary of what it held back (with the next line logged
/// after the window, from whichever crate).
#[derive(Default)]
pub struct DependencyLimit {
    /// The limits per call site.
    limits: SiteLimits,
}

impl<S: Subscriber> Layer<S> for DependencyLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let now = Instant::now();
        let meta = event.metadata();
        let allowed = self.limits.allow(meta.callsite(), meta.target(), now);
        // Logged from here, before the line itself; the summary is the
        // bridge's own line, so it is never limited (no recursion).
        for s in self.limits.due(now) {
            tracing::warn!(
                target: "calllog_bridge::log_limit",
                dependency = s.target,
                suppressed = s.suppressed,
                window_secs = DEFAULT_WINDOW.as_secs(),
                "suppressed similar log lines of a dependency (more than {DEFAULT_BURST} per window)"
            );
        }
        allowed
    }
}

/// The installed filter's reload handle, set by [`init_logging`]; lets a
/// SIGHUP apply a new `log_level` without threading a handle through the
/// bridge.
static LOG_FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Applies a new `log_level` to the running process (SIGHUP). `RUST_LOG`,
/// when set, keeps priority. Does nothing when [`init_logging`] did not
/// install the subscriber (another one was already set, as in tests).
pub fn set_log_level(log_level: &str) -> Result<(), ConfigError> {
    let filter = log_filter(log_level)?;
    if let Some(h) = LOG_FILTER.get() {
        h.reload(filter).map_err(|e| ConfigError::invalid("log_level", format!("cannot apply: {e}")))?;
    }
    Ok(())
}

/// Installs the process-wide tracing subscriber writing to stderr.
/// Journal-friendly when stderr is the journal (see the module doc);
/// otherwise timestamps, and colour only on a terminal. Safe to call twice:
/// the second call leaves the first subscriber in place.
pub fn init_logging(log_level: &str) -> Result<(), ConfigError> {
    let filter = log_filter(log_level)?;
    let (filter, handle) = reload::Layer::new(filter);
    let journal = stderr_is_journal();
    let registry = tracing_subscriber::registry().with(filter).with(DependencyLimit::default());
    let installed = if journal {
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false).event_format(JournalFormat::default());
        registry.with(layer).try_init().is_ok()
    } else {
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
        registry.with(layer).try_init().is_ok()
    };
    if installed {
        // Only the first successful install sets it; a second call is a no-op.
        let _ = LOG_FILTER.set(handle);
    }
    Ok(())
}

/// The syslog priority for a tracing level, as journald reads it from a
/// `<N>` line prefix (`SyslogLevelPrefix=yes`, the default).
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Event format for the journal: `<N>` priority prefix, no timestamp, no
/// colour; level, target and fields as usual.
pub struct JournalFormat {
    /// The default format without time or ANSI, written after the prefix.
    inner: Format<format::Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        JournalFormat { inner: format::format().without_time().with_ansi(false) }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// An error with its causes on one line, each cause said once: a cause
/// whose text the message before it already holds (an error type that
/// prints its source, wrapped by `anyhow` context) is not repeated, so an
/// operator reads `cannot read x: No such file or directory (os error 2)`
/// once, not twice.
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what the formatter writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn journal_lines(f: impl FnOnce()) -> Vec<String> {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt().with_writer(buf.clone()).with_ansi(false).event_format(JournalFormat::default()).finish();
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn journal_lines_carry_priority_and_no_timestamp_or_colour() {
        let lines = journal_lines(|| {
            tracing::error!(key = "channel.token", "reload refused");
            tracing::warn!("upstream down");
            tracing::info!(files = 3, "ready");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("<3>") && lines[0].contains("ERROR") && lines[0].contains("key=\"channel.token\""), "{}", lines[0]);
        assert!(lines[1].starts_with("<4>") && lines[1].contains("upstream down"), "{}", lines[1]);
        assert!(lines[2].starts_with("<6>") && lines[2].contains("files=3"), "{}", lines[2]);
        for l in &lines {
            assert!(!l.contains('\x1b'), "colour in {l:?}");
            // No RFC 3339 timestamp: the line goes straight from the prefix to the level.
            let after = &l[3..];
            assert!(after.trim_start().starts_with(['E', 'W', 'I']), "{l:?}");
        }
    }

    #[test]
    fn priorities_follow_syslog() {
        let table = [(Level::ERROR, 3), (Level::WARN, 4), (Level::INFO, 6), (Level::DEBUG, 7), (Level::TRACE, 7)];
        for (level, want) in table {
            assert_eq!(syslog_priority(&level), want, "{level}");
        }
    }

    #[test]
    fn a_bare_level_is_ours_and_other_crates_stay_at_warn() {
        let lines = |level: &str| {
            let buf = Buf::default();
            let sub =
                tracing_subscriber::fmt().with_writer(buf.clone()).with_ansi(false).with_env_filter(parse_level(level).unwrap()).finish();
            tracing::subscriber::with_default(sub, || {
                tracing::info!(target: "calllog_bridge::kafka", "ours info");
                tracing::debug!(target: "calllog_bridge::kafka", "ours debug");
                tracing::info!(target: "rskafka::connection", "Establishing new connection");
                tracing::warn!(target: "rskafka::connection", "theirs warn");
                tracing::error!(target: "hyper", "theirs error");
            });
            let text = buf.0.lock().unwrap().clone();
            String::from_utf8(text).unwrap()
        };
        let info = lines("info");
        assert!(info.contains("ours info") && !info.contains("ours debug"), "{info}");
        assert!(!info.contains("Establishing") && info.contains("theirs warn") && info.contains("theirs error"), "{info}");
        let debug = lines("debug");
        assert!(debug.contains("ours debug") && !debug.contains("Establishing"), "{debug}");
        let error = lines("error");
        assert!(!error.contains("theirs warn") && error.contains("theirs error") && !error.contains("ours info"), "{error}");
        let asked = lines("info,rskafka=info");
        assert!(asked.contains("Establishing"), "a directive naming the crate is used as written: {asked}");
    }

    #[test]
    fn dependency_lines_are_limited_per_call_site_and_summarised() {
        // Not zero-sized: two statics get two addresses (call sites are
        // told apart by address).
        struct Site(#[allow(dead_code)] u8);
        impl tracing::callsite::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unreachable!("not registered")
            }
        }
        static A: Site = Site(1);
        static B: Site = Site(2);
        let limits = SiteLimits::default();
        let t0 = Instant::now();
        let (a, b) = (Identifier(&A), Identifier(&B));
        let allowed = (0..35).filter(|i| limits.allow(a.clone(), "rskafka::connection", t0 + Duration::from_millis(*i))).count();
        assert_eq!(allowed, DEFAULT_BURST as usize, "a burst per window");
        assert!(limits.allow(b.clone(), "rskafka::client", t0), "another call site has its own burst");
        assert!((0..100).all(|_| limits.allow(a.clone(), "calllog_bridge::kafka::hub", t0)), "our lines are never limited here");
        assert_eq!(limits.due(t0 + Duration::from_secs(1)), vec![], "not before the window is over");
        let due = limits.due(t0 + DEFAULT_WINDOW + Duration::from_millis(1));
        assert_eq!(due, vec![SiteSummary { target: "rskafka::connection", suppressed: 25 }]);
        assert_eq!(limits.due(t0 + DEFAULT_WINDOW * 3), vec![], "said once");
        assert!(limits.allow(a, "rskafka::connection", t0 + DEFAULT_WINDOW * 3), "a new window, a new burst");
    }

    #[test]
    fn bad_log_level_names_the_key() {
        let e = parse_level("loud=[").unwrap_err().to_string();
        assert!(e.contains("log_level"), "{e}");
        let e = parse_level("verbose").unwrap_err().to_string();
        assert!(e.contains("log_level") && e.contains("verbose"), "{e}");
        assert!(parse_level("debug").is_ok());
        assert!(parse_level("WARN").is_ok());
        assert!(parse_level("info,calllog_bridge::sink=debug").is_ok());
    }
}
