//! The bridge's recent sync-delay history, for `/history`, `/history.svg`
//! and the dashboard's history panel: per series (a followed file by its
//! name without rotation suffix, so a log and its rotations are one
//! series; a remote host's entry on a hub), a histogram per minute of
//! `request_time`, kept `[status] history_minutes` (see
//! [`crate::history::minutes`] for the memory bound). What it serves is a
//! [`Report`] built by the same rules as `lag report`, over the minutes
//! kept.
//!
//! Rows of [`super::FileStats`] hold their series; recording takes the
//! series' lock once per batch (never per record), so the hot path stays
//! lock-free per record as the rest of telemetry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::history::minutes::{SeriesMinutes, MINUTE_MS};
use crate::history::report::{Collector, Report, Settings, Statistic};

/// Minutes kept when the config does not say (`[status] history_minutes`).
pub const DEFAULT_MINUTES: u32 = 360;

/// At most this many series; the files beyond it have no history (a
/// bridge follows a handful of files; this bounds a glob gone wild).
pub const MAX_SERIES: usize = 256;

/// One series, shared by the rows that record into it.
pub type Series = Arc<Mutex<SeriesMinutes>>;

/// Every series of the bridge.
#[derive(Debug)]
pub struct HistoryRegistry {
    /// Minutes kept per series (0: no history).
    minutes: AtomicU32,
    /// The bridge's `host`, the series' host.
    host: Mutex<Arc<str>>,
    /// Series by name.
    series: Mutex<BTreeMap<String, Series>>,
}

impl Default for HistoryRegistry {
    fn default() -> Self {
        HistoryRegistry { minutes: AtomicU32::new(DEFAULT_MINUTES), host: Mutex::new(Arc::from("-")), series: Mutex::new(BTreeMap::new()) }
    }
}

/// The name of a path's series: without a rotation suffix
/// (`access.log.1.gz` → `access.log`).
pub fn series_name(path: &str) -> &str {
    crate::history::strip_rotation(path)
}

impl HistoryRegistry {
    /// Keeps `minutes` minutes per series (0: none), under `host`. Applies
    /// to series created afterwards (the bridge sets it at start).
    pub fn configure(&self, minutes: u32, host: &str) {
        self.minutes.store(minutes, Ordering::Relaxed);
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = Arc::from(host);
    }

    /// Minutes kept per series.
    pub fn minutes(&self) -> u32 {
        self.minutes.load(Ordering::Relaxed)
    }

    /// The series for `path` (created on first use); `None` when history
    /// is off or the series are at their cap.
    pub fn series(&self, path: &str) -> Option<Series> {
        let minutes = self.minutes();
        if minutes == 0 {
            return None;
        }
        let name = series_name(path);
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = all.get(name) {
            return Some(s.clone());
        }
        if all.len() >= MAX_SERIES {
            return None;
        }
        let s: Series = Arc::new(Mutex::new(SeriesMinutes::new(minutes)));
        all.insert(name.to_string(), s.clone());
        Some(s)
    }

    /// The report over the minutes kept up to `now_ms`, in windows of
    /// `every_ms` (a multiple of a minute), with a threshold.
    pub fn report(&self, now_ms: i64, every_ms: i64, threshold_ms: i64, statistic: Statistic) -> Report {
        let every_ms = (every_ms.max(MINUTE_MS) / MINUTE_MS) * MINUTE_MS;
        let to_ms = (now_ms.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let from_ms = to_ms - i64::from(self.minutes().max(1)) * MINUTE_MS;
        let mut c = Collector::new(Settings { from_ms, to_ms, every_ms, threshold_ms, statistic, worst: 10 });
        let host = self.host.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let series: Vec<(String, Series)> =
            self.series.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, s) in series {
            s.lock().unwrap_or_else(|e| e.into_inner()).collect(&host, &name, &mut c);
        }
        c.finish()
    }

    /// Heap bytes the series hold (for tests).
    pub fn heap_bytes(&self) -> usize {
        let all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        all.values().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).heap_bytes()).sum()
    }
}

/// The query of `/history` and `/history.svg`: window length, threshold
/// and statistic (`?every_minutes=5&threshold_secs=60&on=p95`, the
/// defaults).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Query {
    /// Window length in minutes (default 5).
    pub every_minutes: Option<u32>,
    /// Threshold in seconds (default 60).
    pub threshold_secs: Option<u32>,
    /// `p50`, `p95` (default), `p99` or `max`.
    pub on: Option<String>,
}

/// The report a query asks for, over the minutes kept; an error (for a
/// 400) names the bad parameter.
pub fn report_for(tel: &super::Telemetry, q: &Query, now_ms: i64) -> Result<Report, String> {
    let every = q.every_minutes.unwrap_or(5);
    if every == 0 || every > 24 * 60 {
        return Err(format!("every_minutes: {every} is not 1 to 1440\n"));
    }
    let statistic = match q.on.as_deref().unwrap_or("p95") {
        "p50" => Statistic::P50,
        "p95" => Statistic::P95,
        "p99" => Statistic::P99,
        "max" => Statistic::Max,
        other => return Err(format!("on: {:?} is not p50, p95, p99 or max\n", crate::logsafe::Escaped(other).to_string())),
    };
    let threshold_ms = i64::from(q.threshold_secs.unwrap_or(60)) * 1000;
    Ok(tel.history().report(now_ms, i64::from(every) * MINUTE_MS, threshold_ms, statistic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_and_its_rotations_are_one_series_and_history_can_be_off() {
        let r = HistoryRegistry::default();
        let a = r.series("/le/access.log").unwrap();
        let b = r.series("/le/access.log.1.gz").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &r.series("/le/access_worker1.log").unwrap()));
        r.configure(0, "tm-1");
        assert!(r.series("/le/other.log").is_none());
    }

    #[test]
    fn the_report_covers_the_minutes_kept() {
        let r = HistoryRegistry::default();
        r.configure(60, "tm-1");
        let now = 1_796_515_200_000 + 30 * MINUTE_MS + 5_000;
        let s = r.series("/le/access.log").unwrap();
        {
            let mut s = s.lock().unwrap();
            for sec in 0..(30 * 60) {
                let rt = now - 30 * MINUTE_MS + sec * 1000;
                s.record(rt, if (600..900).contains(&sec) { 120_000 } else { 800 });
            }
            s.flush();
        }
        let rep = r.report(now, 5 * MINUTE_MS, 60_000, Statistic::P95);
        assert_eq!((rep.settings.to_ms - rep.settings.from_ms) / MINUTE_MS, 60);
        assert_eq!(rep.episodes.len(), 1, "{:?}", rep.episodes);
        assert_eq!(rep.episodes[0].series.host, "tm-1");
        assert_eq!(rep.episodes[0].series.file, "/le/access.log");
        assert_eq!(rep.totals[0].records, 1800);
    }
}
