//! Faults: a component that cannot write what it must (the archive, the
//! channel's sequence numbers, the checkpoints; typically a full disk)
//! keeps its data, retries on a timer, and says so.
//!
//! A component holds a [`Fault`] handle. [`Fault::failed`] records a
//! failed attempt and returns how long to wait before the next one
//! (exponential from [`RETRY_INITIAL`] to [`RETRY_MAX`], so freed space is
//! noticed within seconds); it logs the first failure of an episode at
//! once and then every [`LOG_INTERVAL`] while it lasts, never once per
//! attempt. [`Fault::recovered`] ends the episode with one log line.
//! While any fault is open the bridge is not ready (`/readyz` 503, `ready`
//! false in `/status` and `/metrics`), and `/status` lists the faults with
//! their error and since when.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// First retry delay of a fault episode.
pub const RETRY_INITIAL: Duration = Duration::from_millis(100);

/// Longest retry delay: a freed disk is used again within this long.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// While a fault lasts, it is logged again this often (with how long and
/// how many attempts so far).
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One open fault in `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStatus {
    /// What cannot write (`file`, `channel`, `checkpoints`).
    pub component: String,
    /// The last error.
    pub error: String,
    /// Epoch ms of the episode's first failure.
    pub since_ms: i64,
    /// The same, ISO 8601.
    pub since: String,
    /// Failed attempts so far in this episode.
    pub attempts: u64,
}

/// An open episode.
#[derive(Debug)]
struct Open {
    /// The last error.
    error: String,
    /// First failure, epoch ms.
    since_ms: i64,
    /// Failed attempts.
    attempts: u64,
    /// When it was last logged, epoch ms.
    logged_ms: i64,
}

/// Every component's faults.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Open episodes by component.
    open: BTreeMap<&'static str, Open>,
    /// Episodes since start by component (every component that ever
    /// failed has an entry, so its gauge shows 0 after recovery).
    episodes: BTreeMap<&'static str, u64>,
}

/// The shared registry behind [`Fault`] handles.
pub(crate) type Registry = Arc<Mutex<Faults>>;

fn lock(r: &Registry) -> std::sync::MutexGuard<'_, Faults> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// One component's fault reporting (cheap to clone).
#[derive(Clone, Debug)]
pub struct Fault {
    /// The registry.
    registry: Registry,
    /// The component's name in logs, `/status` and metrics.
    component: &'static str,
}

impl Fault {
    pub(crate) fn new(registry: Registry, component: &'static str) -> Fault {
        Fault { registry, component }
    }

    /// Records a failed attempt with its error; returns the delay before
    /// the next attempt.
    pub fn failed(&self, error: &str) -> Duration {
        self.failed_at(error, crate::time::now_ms())
    }

    fn failed_at(&self, error: &str, now_ms: i64) -> Duration {
        let mut f = lock(&self.registry);
        let Faults { open, episodes } = &mut *f;
        let first = !open.contains_key(self.component);
        let o =
            open.entry(self.component).or_insert_with(|| Open { error: String::new(), since_ms: now_ms, attempts: 0, logged_ms: now_ms });
        o.attempts += 1;
        o.error.clear();
        o.error.push_str(error);
        if first {
            *episodes.entry(self.component).or_default() += 1;
            tracing::error!(
                component = self.component,
                error,
                "cannot write; keeping the data and retrying (the bridge is not ready until this works again)"
            );
        } else if now_ms - o.logged_ms >= LOG_INTERVAL.as_millis() as i64 {
            o.logged_ms = now_ms;
            tracing::error!(
                component = self.component,
                error,
                failing_secs = (now_ms - o.since_ms) / 1000,
                attempts = o.attempts,
                "still cannot write; keeping the data and retrying"
            );
        }
        let exp = RETRY_INITIAL.saturating_mul(1u32 << (o.attempts - 1).min(16) as u32);
        exp.min(RETRY_MAX)
    }

    /// The component works again.
    pub fn recovered(&self) {
        if let Some(o) = lock(&self.registry).open.remove(self.component) {
            tracing::info!(
                component = self.component,
                failing_secs = (crate::time::now_ms() - o.since_ms) / 1000,
                attempts = o.attempts,
                "writing again; nothing was lost"
            );
        }
    }

    /// True while an episode is open.
    pub fn is_failing(&self) -> bool {
        lock(&self.registry).open.contains_key(self.component)
    }
}

/// The open faults, by component.
pub(crate) fn open(registry: &Registry) -> Vec<FaultStatus> {
    lock(registry)
        .open
        .iter()
        .map(|(c, o)| FaultStatus {
            component: c.to_string(),
            error: o.error.clone(),
            since_ms: o.since_ms,
            since: crate::time::format_iso_millis(o.since_ms),
            attempts: o.attempts,
        })
        .collect()
}

/// Per component that ever failed: (failing now, episodes since start).
pub(crate) fn summary(registry: &Registry) -> Vec<(&'static str, bool, u64)> {
    let f = lock(registry);
    f.episodes.iter().map(|(c, n)| (*c, f.open.contains_key(c), *n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_reports_and_recovers() {
        let reg = Registry::default();
        let f = Fault::new(reg.clone(), "file");
        assert!(!f.is_failing());
        let delays: Vec<Duration> = (0..10).map(|i| f.failed_at("ENOSPC", 1000 + i)).collect();
        assert_eq!(delays[0], RETRY_INITIAL);
        assert_eq!(delays[1], RETRY_INITIAL * 2);
        assert_eq!(*delays.last().unwrap(), RETRY_MAX);
        let st = open(&reg);
        assert_eq!(st.len(), 1);
        assert_eq!((st[0].component.as_str(), st[0].error.as_str(), st[0].since_ms, st[0].attempts), ("file", "ENOSPC", 1000, 10));
        assert_eq!(summary(&reg), vec![("file", true, 1)]);
        f.recovered();
        assert!(!f.is_failing());
        assert!(open(&reg).is_empty());
        assert_eq!(summary(&reg), vec![("file", false, 1)]);
        f.failed_at("again", 5000);
        assert_eq!(summary(&reg), vec![("file", true, 2)]);
        assert_eq!(open(&reg)[0].attempts, 1, "a new episode starts over");
    }
}
