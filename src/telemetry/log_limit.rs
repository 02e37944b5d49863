//! Rate limits for log lines that input can repeat without end (one per
//! rejected line, one per failed write): the first few of a window are
//! logged, the rest only counted, and a "suppressed N similar" summary
//! follows once the window is over. Metrics still count every occurrence;
//! only the log is limited, so a 4 KB file of junk cannot write hundreds of
//! megabytes of log.
//!
//! Pure: the caller passes the time, so the behaviour is tested without
//! waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Log lines allowed per window before the rest are suppressed.
pub const DEFAULT_BURST: u32 = 10;

/// The window over which [`DEFAULT_BURST`] applies.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// One kind of repeated log line (e.g. "rejected line"), limited to
/// `burst` lines per `window`. Suppressed occurrences are counted by a
/// short label (a reject reason, an error kind) for the summary.
#[derive(Debug)]
pub struct LogLimit {
    /// Lines allowed per window.
    burst: u32,
    /// Window length.
    window: Duration,
    /// Start of the current window.
    started: Option<Instant>,
    /// Lines logged in the current window.
    logged: u32,
    /// Suppressed occurrences since the last summary, by label.
    suppressed: BTreeMap<&'static str, u64>,
}

/// A summary of suppressed lines, to be logged by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// How many lines were not logged.
    pub total: u64,
    /// The same, by label, e.g. `bad_json=12000 too_long=3`.
    pub by_label: String,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(DEFAULT_BURST, DEFAULT_WINDOW)
    }
}

impl LogLimit {
    /// At most `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        LogLimit { burst, window, started: None, logged: 0, suppressed: BTreeMap::new() }
    }

    /// True when this occurrence may be logged; otherwise it is counted
    /// under `label` for the next [`LogLimit::summary`].
    pub fn allow(&mut self, now: Instant, label: &'static str) -> bool {
        match self.started {
            Some(s) if now.duration_since(s) < self.window => {}
            _ if self.suppressed.is_empty() => {
                self.started = Some(now);
                self.logged = 0;
            }
            // A new window starts only once the summary of the last one is
            // out, so the summary always comes before lines of the next.
            _ => {}
        }
        if self.logged < self.burst && self.suppressed.is_empty() {
            self.logged += 1;
            return true;
        }
        *self.suppressed.entry(label).or_default() += 1;
        false
    }

    /// Counts `n` occurrences under `label` that the caller does not log
    /// one by one (they are in the next summary).
    pub fn suppressed(&mut self, now: Instant, label: &'static str, n: u64) {
        if n > 0 {
            if self.started.is_none() {
                self.started = Some(now);
            }
            *self.suppressed.entry(label).or_default() += n;
        }
    }

    /// The summary of suppressed lines once their window is over (or at
    /// once with `force`, e.g. when the caller stops); `None` when there is
    /// nothing to report yet. Starts a new window.
    pub fn summary(&mut self, now: Instant, force: bool) -> Option<Suppressed> {
        if self.suppressed.is_empty() {
            return None;
        }
        let over = self.started.is_none_or(|s| now.duration_since(s) >= self.window);
        if !over && !force {
            return None;
        }
        let total = self.suppressed.values().sum();
        let by_label = self.suppressed.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        self.suppressed.clear();
        self.started = Some(now);
        self.logged = 0;
        Some(Suppressed { total, by_label })
    }

    /// When the current window ends, if lines are waiting for a summary.
    pub fn summary_due(&self) -> Option<Instant> {
        if self.suppressed.is_empty() {
            return None;
        }
        self.started.map(|s| s + self.window)
    }

    /// The window length (for the summary's wording).
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_counted_then_one_summary_per_window() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(3, Duration::from_secs(10));
        let allowed = (0..1000).filter(|i| l.allow(t0 + Duration::from_millis(*i), if i % 2 == 0 { "a" } else { "b" })).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.summary(t0 + Duration::from_secs(5), false), None, "not before the window is over");
        assert_eq!(l.summary_due(), Some(t0 + Duration::from_secs(10)));
        // Still suppressed after the window until the summary is out.
        assert!(!l.allow(t0 + Duration::from_secs(11), "a"));
        let s = l.summary(t0 + Duration::from_secs(11), false).unwrap();
        assert_eq!(s, Suppressed { total: 998, by_label: "a=499 b=499".into() });
        assert_eq!(l.summary(t0 + Duration::from_secs(30), true), None);
        // A new window: a new burst.
        assert!(l.allow(t0 + Duration::from_secs(12), "a"));
        assert_eq!(l.summary_due(), None);
        // Counted in bulk (what a caller does not log one by one).
        l.suppressed(t0 + Duration::from_secs(13), "c", 5000);
        assert_eq!(l.summary(t0 + Duration::from_secs(23), false).map(|s| s.by_label), Some("c=5000".to_string()));
    }

    #[test]
    fn forced_summary_and_quiet_windows() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(1, Duration::from_secs(10));
        assert!(l.allow(t0, "x"));
        assert!(!l.allow(t0, "x"));
        assert_eq!(l.summary(t0, true).map(|s| s.total), Some(1));
        // Below the burst nothing is ever suppressed.
        let mut q = LogLimit::new(5, Duration::from_secs(1));
        for i in 0..20 {
            assert!(q.allow(t0 + Duration::from_secs(2 * i), "x"));
        }
        assert_eq!(q.summary(t0 + Duration::from_secs(100), true), None);
    }
}
