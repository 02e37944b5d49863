//! Figures a component publishes beside the ones telemetry keeps for every
//! file, sink and source: the one way for a component (the channel today;
//! a Kafka sink, the CSV export or per-slice figures later) to show its own
//! counters in `/status` and `/metrics` without code in `status.rs` or
//! `metrics.rs`.
//!
//! # Publishing figures
//!
//! A component takes its section once, when it starts, and declares each
//! figure once, with its name and help text; a family also names its
//! label and the label's values, declared up front so that label sets
//! stay bounded:
//!
//! ```
//! # let telemetry = calllog_bridge::telemetry::Telemetry::new();
//! let figures = telemetry.figures("kafka");
//! let produced = figures.counter("messages_produced", "Messages the brokers acknowledged");
//! let [timeouts, refusals] = figures.counters_by("errors", "Produce errors, by reason", "reason", ["timeout", "refused"]);
//! let in_flight = figures.gauge("requests_in_flight", "Produce requests waiting for an answer");
//! produced.add(3);
//! timeouts.inc();
//! in_flight.set(2);
//! # let _ = refusals;
//! ```
//!
//! `/status` then holds, at the top level under the component's name, the
//! figures in declaration order, a family as an object by label value:
//! `"kafka": {"messages_produced": 3, "errors": {"refused": 0, "timeout": 1},
//! "requests_in_flight": 2}`. `/metrics` holds
//! `calllog_bridge_kafka_messages_produced_total`,
//! `calllog_bridge_kafka_errors_total{reason="timeout"}` and
//! `calllog_bridge_kafka_requests_in_flight` with the help texts given.
//! [`Figures::status_gauge`] declares a figure shown in `/status` only;
//! [`Figures::set_endpoint`] shows where clients subscribe (`listen`,
//! `tls`, `path`, first in the section), which the dashboard uses.
//!
//! Invariants: updating a figure is one relaxed atomic operation (no lock,
//! no allocation), so it may sit on any path; declaring the same name again
//! returns the same handle (counters never go back when a component is
//! restarted); section and figure names are lowercase `[a-z0-9_]` and a
//! section never takes a key `/status` already has ([`RESERVED`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Where clients subscribe to a component (the local channel's endpoint,
/// set with [`super::Figures::set_endpoint`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The bound address (`127.0.0.1:8790`).
    pub listen: String,
    /// True when the channel serves `wss://`.
    pub tls: bool,
    /// The subscribe path (`/ecls/subscribe/<channel_id>/<area>`).
    pub path: String,
}

/// Top-level `/status` keys that a section cannot take.
pub const RESERVED: &[&str] =
    &["version", "now_ms", "now", "uptime_secs", "ready", "faults", "settings", "sources", "files", "sinks", "totals", "enrich"];

/// Keys of the endpoint (first in a section that has one), which a figure
/// cannot take.
const ENDPOINT_KEYS: [&str; 3] = ["listen", "tls", "path"];

/// A count that only goes up. Cheap to clone (all clones count together).
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A level that goes up and down. Cheap to clone (all clones share it).
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the level.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes 1 away.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The level now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a figure is, for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total` in `/metrics`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// The value holder of one series.
#[derive(Clone, Debug)]
enum Cell {
    /// A counter.
    Counter(Counter),
    /// A gauge.
    Gauge(Gauge),
}

impl Cell {
    fn new(kind: Kind) -> Cell {
        match kind {
            Kind::Counter => Cell::Counter(Counter::default()),
            Kind::Gauge => Cell::Gauge(Gauge::default()),
        }
    }

    fn read(&self) -> i64 {
        match self {
            Cell::Counter(c) => c.get().min(i64::MAX as u64) as i64,
            Cell::Gauge(g) => g.get(),
        }
    }
}

/// One declared figure.
#[derive(Debug)]
struct Figure {
    /// The name (the `/status` key, the metric's suffix).
    name: &'static str,
    /// The metric's help text; `None`: shown in `/status` only.
    help: Option<&'static str>,
    /// Counter or gauge.
    kind: Kind,
    /// The label's name, for a family.
    label: Option<&'static str>,
    /// The second label's name, for a family over two labels.
    label2: Option<&'static str>,
    /// One cell, or one per label value (a pair of them for two labels,
    /// the second empty otherwise) in declaration order.
    cells: Vec<((String, String), Cell)>,
}

/// A component's section of figures (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Figures(Arc<Section>);

/// The shared state behind [`Figures`].
#[derive(Debug)]
struct Section {
    /// The component's name: the `/status` key and the metrics' infix.
    name: &'static str,
    /// Where clients subscribe, if the component serves them.
    endpoint: Mutex<Option<ChannelInfo>>,
    /// The figures, in declaration order.
    figures: Mutex<Vec<Figure>>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Figures {
    /// A new, empty section (use [`super::Telemetry::figures`]).
    pub(crate) fn new(name: &'static str) -> Figures {
        debug_assert!(valid_name(name) && !RESERVED.contains(&name), "bad figures section name {name:?}");
        Figures(Arc::new(Section { name, endpoint: Mutex::new(None), figures: Mutex::new(Vec::new()) }))
    }

    /// The component's name.
    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// Declares a counter, shown in `/status` and as
    /// `calllog_bridge_<section>_<name>_total`.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        match self.declare(name, Some(help), Kind::Counter, None, &[single()]).pop() {
            Some(Cell::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    /// Declares a gauge, shown in `/status` and as
    /// `calllog_bridge_<section>_<name>`.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.gauge_shown(name, Some(help))
    }

    /// Declares a gauge shown in `/status` only (a figure for people, such
    /// as a sequence number, that would make a poor time series).
    pub fn status_gauge(&self, name: &'static str) -> Gauge {
        self.gauge_shown(name, None)
    }

    fn gauge_shown(&self, name: &'static str, help: Option<&'static str>) -> Gauge {
        match self.declare(name, help, Kind::Gauge, None, &[single()]).pop() {
            Some(Cell::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    /// Declares a family of counters, one per value of `label`, returned
    /// in the order of `values`; shown in `/status` as an object by label
    /// value and as `calllog_bridge_<section>_<name>_total{<label>=...}`.
    pub fn counters_by<const N: usize>(
        &self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: [&str; N],
    ) -> [Counter; N] {
        let cells = self.declare(name, Some(help), Kind::Counter, Some((label, None)), &pairs(&values));
        std::array::from_fn(|i| match cells.get(i) {
            Some(Cell::Counter(c)) => c.clone(),
            _ => Counter::default(),
        })
    }

    /// [`Figures::counters_by`] for a list of label values known only at
    /// run time (e.g. slices named in the config); declaring again with
    /// more values adds them, and the others keep counting.
    pub fn counter_family(&self, name: &'static str, help: &'static str, label: &'static str, values: &[&str]) -> Vec<Counter> {
        let cells = self.declare(name, Some(help), Kind::Counter, Some((label, None)), &pairs(values));
        cells
            .into_iter()
            .map(|c| match c {
                Cell::Counter(c) => c,
                Cell::Gauge(_) => Counter::default(),
            })
            .collect()
    }

    /// A family of gauges, one per value of `label` (see
    /// [`Figures::counter_family`]).
    pub fn gauge_family(&self, name: &'static str, help: &'static str, label: &'static str, values: &[&str]) -> Vec<Gauge> {
        let cells = self.declare(name, Some(help), Kind::Gauge, Some((label, None)), &pairs(values));
        gauges(cells)
    }

    /// A family of gauges over two labels (`channel` and `token`), one per
    /// pair of values given; shown in `/status` as an object by the first
    /// label's value holding an object by the second's, and as
    /// `calllog_bridge_<section>_<name>{<label>=...,<label2>=...}`.
    /// Declaring again with more pairs adds them (see
    /// [`Figures::counter_family`]).
    pub fn gauge_family2(&self, name: &'static str, help: &'static str, labels: [&'static str; 2], values: &[(&str, &str)]) -> Vec<Gauge> {
        let values: Vec<(String, String)> = values.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let cells = self.declare(name, Some(help), Kind::Gauge, Some((labels[0], Some(labels[1]))), &values);
        gauges(cells)
    }

    /// Drops the series of family `name` whose label value `keep` refuses:
    /// a family over a moving window (the export's most recent slices)
    /// stays bounded. The series kept go on as they were.
    pub fn retain_values(&self, name: &str, keep: impl Fn(&str) -> bool) {
        self.retain_pairs(name, |v, _| keep(v));
    }

    /// [`Figures::retain_values`] for a family over two labels: `keep`
    /// sees both values (for a family of one label, the second is empty).
    pub fn retain_pairs(&self, name: &str, keep: impl Fn(&str, &str) -> bool) {
        let mut figures = self.0.figures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = figures.iter_mut().find(|f| f.name == name && f.label.is_some()) {
            f.cells.retain(|((a, b), _)| keep(a, b));
        }
    }

    /// Shows where clients subscribe to the component (`None`: nowhere),
    /// first in its `/status` section; the dashboard subscribes there.
    pub fn set_endpoint(&self, endpoint: Option<ChannelInfo>) {
        *self.0.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = endpoint;
    }

    /// Where clients subscribe, if set.
    pub fn endpoint(&self) -> Option<ChannelInfo> {
        self.0.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cells of figure `name` for `values`, created where missing. A
    /// figure declared again with another kind or label starts anew (a
    /// programming error, caught by a debug assertion).
    fn declare(
        &self,
        name: &'static str,
        help: Option<&'static str>,
        kind: Kind,
        labels: Option<(&'static str, Option<&'static str>)>,
        values: &[(String, String)],
    ) -> Vec<Cell> {
        let (label, label2) = match labels {
            Some((a, b)) => (Some(a), b),
            None => (None, None),
        };
        debug_assert!(valid_name(name) && !ENDPOINT_KEYS.contains(&name), "bad figure name {name:?}");
        debug_assert!(label.is_none_or(valid_name) && label2.is_none_or(valid_name), "bad label name {label:?} {label2:?}");
        let mut figures = self.0.figures.lock().unwrap_or_else(|e| e.into_inner());
        let at = match figures.iter().position(|f| f.name == name) {
            Some(i) if figures[i].kind == kind && figures[i].label == label && figures[i].label2 == label2 => i,
            Some(i) => {
                debug_assert!(false, "figure {name:?} declared again as another kind or label");
                figures[i] = Figure { name, help, kind, label, label2, cells: Vec::new() };
                i
            }
            None => {
                figures.push(Figure { name, help, kind, label, label2, cells: Vec::new() });
                figures.len() - 1
            }
        };
        let f = &mut figures[at];
        f.help = help;
        values
            .iter()
            .map(|v| match f.cells.iter().find(|(k, _)| k == v) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = Cell::new(kind);
                    f.cells.push((v.clone(), c.clone()));
                    c
                }
            })
            .collect()
    }

    /// Reads every figure once.
    pub fn snapshot(&self) -> SectionSnapshot {
        let figures = self.0.figures.lock().unwrap_or_else(|e| e.into_inner());
        SectionSnapshot {
            name: self.0.name,
            endpoint: self.endpoint(),
            figures: figures
                .iter()
                .map(|f| FigureSnapshot {
                    name: f.name,
                    help: f.help,
                    kind: f.kind,
                    value: match (f.label, f.label2) {
                        (None, _) => FigureValue::One(f.cells.first().map_or(0, |(_, c)| c.read())),
                        (Some(label), None) => {
                            FigureValue::ByLabel { label, values: f.cells.iter().map(|((k, _), c)| (k.clone(), c.read())).collect() }
                        }
                        (Some(a), Some(b)) => FigureValue::ByLabels {
                            labels: [a, b],
                            values: f.cells.iter().map(|((x, y), c)| ((x.clone(), y.clone()), c.read())).collect(),
                        },
                    },
                })
                .collect(),
        }
    }
}

/// A section's figures at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionSnapshot {
    /// The component's name.
    pub name: &'static str,
    /// Where clients subscribe, if set.
    pub endpoint: Option<ChannelInfo>,
    /// The figures, in declaration order.
    pub figures: Vec<FigureSnapshot>,
}

/// One figure at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FigureSnapshot {
    /// Its name.
    pub name: &'static str,
    /// The metric's help text; `None`: `/status` only.
    pub help: Option<&'static str>,
    /// Counter or gauge.
    pub kind: Kind,
    /// The value(s).
    pub value: FigureValue,
}

/// The value of a figure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FigureValue {
    /// A single series.
    One(i64),
    /// One series per label value, in declaration order.
    ByLabel {
        /// The label's name.
        label: &'static str,
        /// `(label value, value)`.
        values: Vec<(String, i64)>,
    },
    /// One series per pair of label values, in declaration order.
    ByLabels {
        /// The labels' names.
        labels: [&'static str; 2],
        /// `((first label's value, second label's value), value)`.
        values: Vec<((String, String), i64)>,
    },
}

/// The cell key of a figure without a label.
fn single() -> (String, String) {
    (String::new(), String::new())
}

/// Cell keys of a family over one label.
fn pairs(values: &[&str]) -> Vec<(String, String)> {
    values.iter().map(|v| (v.to_string(), String::new())).collect()
}

/// The gauges of `cells`.
fn gauges(cells: Vec<Cell>) -> Vec<Gauge> {
    cells
        .into_iter()
        .map(|c| match c {
            Cell::Gauge(g) => g,
            Cell::Counter(_) => Gauge::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declaring_again_returns_the_same_handles() {
        let f = Figures::new("kafka");
        f.counter("sent", "Sent").add(2);
        f.counter("sent", "Sent").inc();
        let [a, b] = f.counters_by("errors", "Errors", "reason", ["timeout", "refused"]);
        a.inc();
        b.add(4);
        // A later declaration with one more value keeps the others.
        let v = f.counter_family("errors", "Errors", "reason", &["refused", "auth"]);
        v[1].inc();
        assert_eq!(v[0].get(), 4);
        f.status_gauge("last_seq").set(9);
        let s = f.snapshot();
        assert_eq!(s.figures[0].value, FigureValue::One(3));
        assert_eq!(
            s.figures[1].value,
            FigureValue::ByLabel { label: "reason", values: vec![("timeout".into(), 1), ("refused".into(), 4), ("auth".into(), 1)] }
        );
        assert_eq!((s.figures[2].help, s.figures[2].kind, &s.figures[2].value), (None, Kind::Gauge, &FigureValue::One(9)));
    }

    #[test]
    fn gauges_go_both_ways() {
        let f = Figures::new("x");
        let g = f.gauge("open", "Open");
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
        g.set(-3);
        assert_eq!(f.snapshot().figures[0].value, FigureValue::One(-3));
        let fam = f.gauge_family("lag", "Lag", "partition", &["0", "1"]);
        fam[1].set(7);
        assert_eq!(
            f.snapshot().figures[1].value,
            FigureValue::ByLabel { label: "partition", values: vec![("0".into(), 0), ("1".into(), 7)] }
        );
        // A moving window: the old value goes, the kept one keeps its level.
        f.retain_values("lag", |v| v != "0");
        let tok = f.gauge_family2("tokens", "Tokens", ["channel", "token"], &[("a", "t1"), ("b", "t1")]);
        tok[1].set(3);
        assert_eq!(
            f.snapshot().figures[2].value,
            FigureValue::ByLabels {
                labels: ["channel", "token"],
                values: vec![(("a".into(), "t1".into()), 0), (("b".into(), "t1".into()), 3)]
            }
        );
        f.retain_pairs("tokens", |c, _| c == "b");
        assert_eq!(
            f.snapshot().figures[2].value,
            FigureValue::ByLabels { labels: ["channel", "token"], values: vec![(("b".into(), "t1".into()), 3)] }
        );
        f.gauge_family("lag", "Lag", "partition", &["1", "2"])[1].set(2);
        assert_eq!(
            f.snapshot().figures[1].value,
            FigureValue::ByLabel { label: "partition", values: vec![("1".into(), 7), ("2".into(), 2)] }
        );
    }
}
