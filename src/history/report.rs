//! The lag report's rules, without I/O: records go in as
//! `(host, file, request_time, sync delay)`, windows, worst windows and
//! episodes come out.
//!
//! - A record belongs to the window of its `request_time` (the call's
//!   time, the one a customer names: "the calls between 14:00 and 15:00
//!   arrived late"). Windows are `every` long, aligned to multiples of
//!   `every` since the Unix epoch (UTC), cut to `[from, to)`.
//! - Per series (a `host` and `file`), each window with records has a
//!   [`DelayHist`]; memory is windows × series histograms, whatever the
//!   number of records.
//! - A window is *above* when its chosen statistic (p95 by default) is
//!   above the threshold. An **episode** is a run of consecutive windows
//!   above, of one series: from the first one's start to the last one's
//!   end (when the delay was back below), with its own percentiles (the
//!   windows' histograms merged). A window without records ends a run.
//!
//! Invariant: the outcome does not depend on the order records arrive in
//! (histograms are merged, never sampled).

use std::collections::BTreeMap;

use super::hist::{DelayHist, Percentiles};

/// Which statistic of a window is compared with the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Statistic {
    /// The median.
    P50,
    /// The 95th percentile.
    #[default]
    P95,
    /// The 99th percentile.
    P99,
    /// The largest delay.
    Max,
}

impl Statistic {
    /// Its name in output (`p95`).
    pub fn name(self) -> &'static str {
        match self {
            Statistic::P50 => "p50",
            Statistic::P95 => "p95",
            Statistic::P99 => "p99",
            Statistic::Max => "max",
        }
    }

    /// Its value in `p`.
    pub fn of(self, p: &Percentiles) -> i64 {
        match self {
            Statistic::P50 => p.p50,
            Statistic::P95 => p.p95,
            Statistic::P99 => p.p99,
            Statistic::Max => p.max,
        }
    }
}

/// What a report covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// First millisecond (epoch ms, inclusive) of `request_time`.
    pub from_ms: i64,
    /// End (exclusive).
    pub to_ms: i64,
    /// Window length, ms (> 0).
    pub every_ms: i64,
    /// A window above this (ms) is part of an episode.
    pub threshold_ms: i64,
    /// What is compared with the threshold.
    pub statistic: Statistic,
    /// How many worst windows to list.
    pub worst: usize,
}

impl Settings {
    /// The window index of `ms` (`None` outside `[from, to)`).
    fn window_of(&self, ms: i64) -> Option<i64> {
        (self.from_ms..self.to_ms).contains(&ms).then(|| ms.div_euclid(self.every_ms))
    }

    /// `[start, end)` of window `i`, cut to the range.
    pub fn bounds(&self, i: i64) -> (i64, i64) {
        let start = (i * self.every_ms).max(self.from_ms);
        let end = ((i + 1) * self.every_ms).min(self.to_ms);
        (start, end)
    }

    /// Number of windows in the range.
    pub fn window_count(&self) -> i64 {
        if self.to_ms <= self.from_ms {
            return 0;
        }
        (self.to_ms - 1).div_euclid(self.every_ms) - self.from_ms.div_euclid(self.every_ms) + 1
    }
}

/// A series: one host and one file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    /// The bridge that read the records (`-` when the source does not say).
    pub host: String,
    /// The file the records were read from (see the command's docs).
    pub file: String,
}

/// What one series holds.
#[derive(Debug, Default)]
struct Windows {
    /// Window index → its delays.
    by_window: BTreeMap<i64, DelayHist>,
    /// Records in range without a delay (no observed time).
    without_delay: BTreeMap<i64, u64>,
}

/// Records skipped, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// `request_time` outside `[from, to)`.
    pub outside_range: u64,
    /// No `request_time`.
    pub no_request_time: u64,
}

/// Collects records into windows (see the module docs).
#[derive(Debug)]
pub struct Collector {
    /// The range, windows and threshold.
    settings: Settings,
    /// Series, each with its windows.
    series: Vec<(Series, Windows)>,
    /// Series → index in `series`.
    index: BTreeMap<Series, usize>,
    /// The series of the previous record (records come in runs of one).
    last: Option<usize>,
    /// Records skipped.
    skipped: Skipped,
}

impl Collector {
    /// An empty report.
    pub fn new(settings: Settings) -> Collector {
        Collector { settings, series: Vec::new(), index: BTreeMap::new(), last: None, skipped: Skipped::default() }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The index of the series `(host, file)`, created on first use.
    fn series_index(&mut self, host: &str, file: &str) -> usize {
        if let Some(i) = self.last {
            let s = &self.series[i].0;
            if s.host == host && s.file == file {
                return i;
            }
        }
        let key = Series { host: host.to_string(), file: file.to_string() };
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.series.push((key.clone(), Windows::default()));
                self.index.insert(key, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        self.last = Some(i);
        i
    }

    /// Adds one record: its `request_time` and sync delay (`None` when the
    /// source has no observed time for it: counted, without a delay).
    /// Returns false when the record is outside the range or has no time.
    pub fn add(&mut self, host: &str, file: &str, request_time_ms: Option<i64>, delay_ms: Option<i64>) -> bool {
        let Some(rt) = request_time_ms else {
            self.skipped.no_request_time += 1;
            return false;
        };
        let Some(w) = self.settings.window_of(rt) else {
            self.skipped.outside_range += 1;
            return false;
        };
        let i = self.series_index(host, file);
        let windows = &mut self.series[i].1;
        match delay_ms {
            Some(d) => windows.by_window.entry(w).or_default().record(d),
            None => *windows.without_delay.entry(w).or_default() += 1,
        }
        true
    }

    /// Adds the delays of `h`, records at `at_ms` (a minute of the bridge's
    /// history): as many records as it holds. False outside the range.
    pub fn add_hist(&mut self, host: &str, file: &str, at_ms: i64, h: &DelayHist) -> bool {
        let Some(w) = self.settings.window_of(at_ms) else {
            self.skipped.outside_range += h.count();
            return false;
        };
        if h.is_empty() {
            return true;
        }
        let i = self.series_index(host, file);
        self.series[i].1.by_window.entry(w).or_default().merge(h);
        true
    }

    /// The report.
    pub fn finish(self) -> Report {
        let st = self.settings;
        let mut series: Vec<(Series, Windows)> = self.series;
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut windows = Vec::new();
        let mut episodes = Vec::new();
        let mut totals = Vec::new();
        // Per host over its files, per window (the chart's series).
        let mut by_host: BTreeMap<(String, i64), DelayHist> = BTreeMap::new();
        for (key, w) in &series {
            for (i, h) in &w.by_window {
                by_host.entry((key.host.clone(), *i)).or_default().merge(h);
            }
        }
        let mut hosts: Vec<HostWindows> = Vec::new();
        for ((host, i), h) in by_host {
            let Some(p) = h.percentiles() else { continue };
            if hosts.last().is_none_or(|l| l.host != host) {
                hosts.push(HostWindows { host: host.clone(), windows: Vec::new() });
            }
            let (start, end) = st.bounds(i);
            if let Some(l) = hosts.last_mut() {
                l.windows.push((start, end, p));
            }
        }
        for (key, w) in &series {
            let mut total = DelayHist::new();
            let mut records_total = 0u64;
            let mut run: Option<(i64, i64, DelayHist, usize)> = None;
            let indexes: std::collections::BTreeSet<i64> = w.by_window.keys().chain(w.without_delay.keys()).copied().collect();
            let mut prev: Option<i64> = None;
            for i in indexes {
                let hist = w.by_window.get(&i);
                let without = w.without_delay.get(&i).copied().unwrap_or(0);
                let p = hist.and_then(|h| h.percentiles());
                let records = p.map_or(0, |p| p.count) + without;
                records_total += records;
                if let Some(h) = hist {
                    total.merge(h);
                }
                let above = p.is_some_and(|p| st.statistic.of(&p) > st.threshold_ms);
                let (start, end) = st.bounds(i);
                // A gap (a window with no record) or a window below ends
                // the run.
                let contiguous = prev == Some(i - 1);
                if run.is_some() && (!above || !contiguous) {
                    if let Some(done) = run.take() {
                        episodes.push(Episode::of(key, done));
                    }
                }
                if above {
                    if let (Some(h), Some(r)) = (hist, run.as_mut()) {
                        r.1 = end;
                        r.2.merge(h);
                        r.3 += 1;
                    } else if let Some(h) = hist {
                        run = Some((start, end, h.clone(), 1));
                    }
                }
                windows.push(Window {
                    start_ms: start,
                    end_ms: end,
                    series: key.clone(),
                    records,
                    without_delay: without,
                    delay: p,
                    above,
                });
                prev = Some(i);
            }
            if let Some(done) = run.take() {
                let open = done.1 >= st.to_ms;
                let mut e = Episode::of(key, done);
                e.recovered = !open;
                episodes.push(e);
            }
            totals.push(Total { series: key.clone(), records: records_total, delay: total.percentiles() });
        }
        windows.sort_by(|a, b| (a.start_ms, &a.series).cmp(&(b.start_ms, &b.series)));
        episodes.sort_by(|a, b| (a.start_ms, &a.series).cmp(&(b.start_ms, &b.series)));
        let mut worst: Vec<Window> = windows.iter().filter(|w| w.delay.is_some()).cloned().collect();
        worst.sort_by_key(|w| std::cmp::Reverse(w.delay.map_or(i64::MIN, |p| st.statistic.of(&p))));
        worst.truncate(st.worst);
        Report { settings: st, windows, worst, episodes, totals, hosts, skipped: self.skipped }
    }
}

/// One window of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// First millisecond.
    pub start_ms: i64,
    /// End (exclusive).
    pub end_ms: i64,
    /// Host and file.
    pub series: Series,
    /// Records in it.
    pub records: u64,
    /// Records without an observed time (no delay).
    pub without_delay: u64,
    /// Delay percentiles (`None` when no record had a delay).
    pub delay: Option<Percentiles>,
    /// Its statistic is above the threshold.
    pub above: bool,
}

/// A run of windows above the threshold, of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// Host and file.
    pub series: Series,
    /// Start of its first window.
    pub start_ms: i64,
    /// End of its last window: when the delay was back below.
    pub end_ms: i64,
    /// Its windows.
    pub windows: usize,
    /// Percentiles over all its records.
    pub delay: Percentiles,
    /// False when it lasts to the end of the range (not over yet, as far
    /// as the history tells).
    pub recovered: bool,
}

impl Episode {
    fn of(series: &Series, (start_ms, end_ms, hist, windows): (i64, i64, DelayHist, usize)) -> Episode {
        let delay = hist.percentiles().unwrap_or(Percentiles { count: 0, p50: 0, p95: 0, p99: 0, max: 0, min: 0 });
        Episode { series: series.clone(), start_ms, end_ms, windows, delay, recovered: true }
    }
}

/// A series over the whole range.
#[derive(Clone, Debug, PartialEq)]
pub struct Total {
    /// Host and file.
    pub series: Series,
    /// Records.
    pub records: u64,
    /// Delay percentiles over the range.
    pub delay: Option<Percentiles>,
}

/// One host's windows, its files together.
#[derive(Clone, Debug, PartialEq)]
pub struct HostWindows {
    /// The host.
    pub host: String,
    /// `(start, end, percentiles)` of each window with a delay, in order.
    pub windows: Vec<(i64, i64, Percentiles)>,
}

/// What the report found.
#[derive(Clone, Debug)]
pub struct Report {
    /// What it covers.
    pub settings: Settings,
    /// Windows with records, by start, then series.
    pub windows: Vec<Window>,
    /// The worst windows by the statistic, worst first.
    pub worst: Vec<Window>,
    /// Episodes above the threshold, by start.
    pub episodes: Vec<Episode>,
    /// Per series over the range.
    pub totals: Vec<Total>,
    /// Per host (its files together), the windows with a delay: what the
    /// chart draws.
    pub hosts: Vec<HostWindows>,
    /// Records not counted.
    pub skipped: Skipped,
}

/// RFC 3339 UTC.
fn iso(ms: i64) -> String {
    crate::time::format_iso_seconds(ms)
}

/// The delay members of a window, a total or an episode.
fn delay_members(m: &mut serde_json::Map<String, serde_json::Value>, p: Option<Percentiles>) {
    let f = |v: Option<i64>| v.map_or(serde_json::Value::Null, serde_json::Value::from);
    m.insert("p50_ms".into(), f(p.map(|p| p.p50)));
    m.insert("p95_ms".into(), f(p.map(|p| p.p95)));
    m.insert("p99_ms".into(), f(p.map(|p| p.p99)));
    m.insert("max_ms".into(), f(p.map(|p| p.max)));
    m.insert("min_ms".into(), f(p.map(|p| p.min)));
}

impl Window {
    /// `{"start","end","host","file","records","p50_ms","p95_ms","p99_ms","max_ms","min_ms",...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("start".into(), iso(self.start_ms).into());
        m.insert("end".into(), iso(self.end_ms).into());
        m.insert("host".into(), self.series.host.clone().into());
        m.insert("file".into(), self.series.file.clone().into());
        m.insert("records".into(), self.records.into());
        delay_members(&mut m, self.delay);
        m.insert("records_without_delay".into(), self.without_delay.into());
        m.insert("above_threshold".into(), self.above.into());
        m.into()
    }
}

impl Episode {
    /// `{"host","file","start","end","max_ms","p50_ms","p95_ms",...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.series.host,
            "file": self.series.file,
            "start": iso(self.start_ms),
            "end": iso(self.end_ms),
            "max_ms": self.delay.max,
            "p50_ms": self.delay.p50,
            "p95_ms": self.delay.p95,
            "p99_ms": self.delay.p99,
            "records": self.delay.count,
            "windows": self.windows,
            "recovered": self.recovered,
        })
    }
}

impl Report {
    /// The report as JSON: the one shape `lag report --json` prints and
    /// the status listener's `/history` serves (times in RFC 3339 UTC).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let st = &self.settings;
        let totals: Vec<serde_json::Value> = self
            .totals
            .iter()
            .map(|t| {
                let mut m = serde_json::Map::new();
                m.insert("host".into(), t.series.host.clone().into());
                m.insert("file".into(), t.series.file.clone().into());
                m.insert("records".into(), t.records.into());
                delay_members(&mut m, t.delay);
                m.into()
            })
            .collect();
        let mut m = serde_json::Map::new();
        m.insert("from".into(), iso(st.from_ms).into());
        m.insert("to".into(), iso(st.to_ms).into());
        m.insert("every_ms".into(), st.every_ms.into());
        m.insert("threshold_ms".into(), st.threshold_ms.into());
        m.insert("threshold_on".into(), st.statistic.name().into());
        m.insert("windows".into(), self.windows.iter().map(Window::to_json).collect());
        m.insert("worst".into(), self.worst.iter().map(Window::to_json).collect());
        m.insert("episodes".into(), self.episodes.iter().map(Episode::to_json).collect());
        m.insert("totals".into(), totals.into());
        m.insert("skipped".into(), serde_json::to_value(self.skipped).unwrap_or_default());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_780_000_200_000 / (60 * MIN) * (60 * MIN); // an hour boundary

    fn settings(every_ms: i64) -> Settings {
        Settings { from_ms: T0, to_ms: T0 + 60 * MIN, every_ms, threshold_ms: 60_000, statistic: Statistic::P95, worst: 3 }
    }

    #[test]
    fn windows_are_aligned_and_cut_to_the_range() {
        let s = Settings { from_ms: T0 + 90_000, to_ms: T0 + 10 * MIN + 1, ..settings(5 * MIN) };
        assert_eq!(s.window_count(), 3);
        assert_eq!(s.bounds((T0 + 90_000) / (5 * MIN)), (T0 + 90_000, T0 + 5 * MIN));
        assert_eq!(s.bounds((T0 + 10 * MIN) / (5 * MIN)), (T0 + 10 * MIN, T0 + 10 * MIN + 1));
        assert_eq!(s.window_of(T0 + 89_999), None);
        assert_eq!(s.window_of(T0 + 10 * MIN + 1), None);
    }

    #[test]
    fn an_episode_runs_from_its_first_window_above_to_the_end_of_its_last() {
        let mut c = Collector::new(settings(MIN));
        // Two hosts, a record a second; host b is ten minutes late for
        // the calls of minutes 20..40.
        for s in 0..3600 {
            let t = T0 + s * 1000;
            c.add("a", "f", Some(t), Some(1_500));
            let late = (20 * MIN..40 * MIN).contains(&(s * 1000));
            c.add("b", "f", Some(t), Some(if late { 600_000 } else { 2_000 }));
        }
        c.add("a", "f", Some(T0 - 1), Some(1));
        c.add("a", "f", None, None);
        let r = c.finish();
        assert_eq!(r.skipped, Skipped { outside_range: 1, no_request_time: 1 });
        assert_eq!(r.windows.len(), 120);
        assert_eq!(r.episodes.len(), 1, "{:?}", r.episodes);
        let e = &r.episodes[0];
        assert_eq!((e.series.host.as_str(), e.start_ms, e.end_ms, e.windows), ("b", T0 + 20 * MIN, T0 + 40 * MIN, 20));
        assert!((e.delay.p95 - 600_000).abs() <= 6_000, "{:?}", e.delay);
        assert_eq!(e.delay.max, 600_000);
        assert!(e.recovered);
        assert_eq!(r.worst.len(), 3);
        assert!(r.worst.iter().all(|w| w.series.host == "b" && w.above));
        let totals: Vec<u64> = r.totals.iter().map(|t| t.records).collect();
        assert_eq!(totals, vec![3600, 3600]);
        let hosts: Vec<(&str, usize)> = r.hosts.iter().map(|h| (h.host.as_str(), h.windows.len())).collect();
        assert_eq!(hosts, vec![("a", 60), ("b", 60)]);
    }

    #[test]
    fn a_gap_or_a_window_below_ends_an_episode_and_one_open_at_the_end_is_not_recovered() {
        let mut c = Collector::new(settings(MIN));
        for (minute, delay) in [(0, 90_000), (1, 90_000), (3, 90_000), (4, 1_000), (5, 70_000), (59, 61_000)] {
            c.add("h", "f", Some(T0 + minute * MIN + 5), Some(delay));
        }
        let r = c.finish();
        let got: Vec<(i64, i64, bool)> = r.episodes.iter().map(|e| ((e.start_ms - T0) / MIN, (e.end_ms - T0) / MIN, e.recovered)).collect();
        assert_eq!(got, vec![(0, 2, true), (3, 4, true), (5, 6, true), (59, 60, false)]);
    }

    #[test]
    fn records_without_a_delay_are_counted_and_never_above() {
        let mut c = Collector::new(settings(10 * MIN));
        c.add("-", "access.log", Some(T0 + 1), None);
        c.add("-", "access.log", Some(T0 + 2), None);
        let r = c.finish();
        assert_eq!(r.windows.len(), 1);
        assert_eq!((r.windows[0].records, r.windows[0].without_delay, r.windows[0].delay, r.windows[0].above), (2, 2, None, false));
        assert!(r.episodes.is_empty() && r.worst.is_empty());
    }

    #[test]
    fn the_statistic_decides_what_is_above() {
        let mut c = Collector::new(Settings { statistic: Statistic::Max, ..settings(60 * MIN) });
        for i in 0..100 {
            c.add("h", "f", Some(T0 + i), Some(if i == 0 { 120_000 } else { 10 }));
        }
        assert_eq!(c.finish().episodes.len(), 1, "one late record is enough for max");
        let mut c = Collector::new(settings(60 * MIN));
        for i in 0..100 {
            c.add("h", "f", Some(T0 + i), Some(if i == 0 { 120_000 } else { 10 }));
        }
        assert!(c.finish().episodes.is_empty(), "not for p95");
    }
}
