//! [`DelayHist`]: the sync delays of a set of records (a window, an
//! episode, a minute of the bridge's history) in bounded memory, with
//! percentiles to within 1% of the exact nearest-rank value.
//!
//! An HDR histogram (`hdrhistogram`, two significant digits) holds the
//! delays at or above zero; negative delays (the traffic manager's clock
//! ahead of the bridge's) go, by magnitude, into a second one created on
//! the first such delay, so they are kept as they are, never clamped.
//! The exact smallest and largest delays are kept beside them, so `max_ms`
//! is the true maximum and no percentile is reported beyond it.
//!
//! Why HDR and not a t-digest: its error is relative and bounded for every
//! percentile (a t-digest is exact-ish at the tails and loose in the
//! middle), two histograms merge exactly (an episode is the sum of its
//! windows), and its memory depends only on the range of the values it
//! holds, never on how many were recorded.

use hdrhistogram::Histogram;

/// Significant digits the histograms keep: a percentile is within 1% of
/// the exact value.
const SIGFIG: u8 = 2;

/// A new, empty histogram (auto-resizing: its memory grows with the
/// largest value it holds, a few KiB for delays up to hours).
fn new_hist() -> Histogram<u64> {
    // Two significant digits is a valid precision: this cannot fail.
    Histogram::new(SIGFIG).unwrap_or_else(|_| unreachable!("2 significant digits is a valid HDR precision"))
}

/// The sync delays of a set of records.
#[derive(Clone, Debug)]
pub struct DelayHist {
    /// Delays ≥ 0 ms.
    pos: Histogram<u64>,
    /// Magnitudes of the negative delays (created on the first one).
    neg: Option<Box<Histogram<u64>>>,
    /// Smallest delay recorded (`i64::MAX` when empty).
    min: i64,
    /// Largest delay recorded (`i64::MIN` when empty).
    max: i64,
}

impl Default for DelayHist {
    fn default() -> Self {
        DelayHist::new()
    }
}

/// Percentiles of a [`DelayHist`], in milliseconds (nearest rank, within
/// 1%; `min` and `max` exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    /// Delays recorded.
    pub count: u64,
    /// Median.
    pub p50: i64,
    /// 95th percentile.
    pub p95: i64,
    /// 99th percentile.
    pub p99: i64,
    /// Largest.
    pub max: i64,
    /// Smallest (negative with clock skew).
    pub min: i64,
}

impl DelayHist {
    /// An empty histogram.
    pub fn new() -> DelayHist {
        DelayHist { pos: new_hist(), neg: None, min: i64::MAX, max: i64::MIN }
    }

    /// Delays recorded.
    pub fn count(&self) -> u64 {
        self.pos.len() + self.neg.as_ref().map_or(0, |n| n.len())
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Records one delay.
    #[inline]
    pub fn record(&mut self, delay_ms: i64) {
        self.record_n(delay_ms, 1);
    }

    /// Records `n` delays of the same value.
    pub fn record_n(&mut self, delay_ms: i64, n: u64) {
        if n == 0 {
            return;
        }
        self.min = self.min.min(delay_ms);
        self.max = self.max.max(delay_ms);
        let (h, v) = if delay_ms >= 0 {
            (&mut self.pos, delay_ms as u64)
        } else {
            (&mut **self.neg.get_or_insert_with(|| Box::new(new_hist())), delay_ms.unsigned_abs())
        };
        // An auto-resizing histogram grows to take any value; only the
        // u64 range is a limit (`saturating_*` would not grow it).
        if h.record_n(v, n).is_err() {
            h.saturating_record_n(v, n);
        }
    }

    /// Adds every delay of `other`.
    pub fn merge(&mut self, other: &DelayHist) {
        if other.is_empty() {
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        // Auto-resizing histograms of the same precision always add.
        let _ = self.pos.add(&other.pos);
        if let Some(o) = &other.neg {
            let _ = self.neg.get_or_insert_with(|| Box::new(new_hist())).add(&**o);
        }
    }

    /// The exact largest delay (`None` when empty).
    pub fn max(&self) -> Option<i64> {
        (!self.is_empty()).then_some(self.max)
    }

    /// The delays in ascending order as `(value, count)` runs, each value
    /// the upper end of its bucket (negative delays first).
    pub fn buckets(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        let neg: Vec<(i64, u64)> = match &self.neg {
            Some(n) => {
                let mut v: Vec<(i64, u64)> = n.iter_recorded().map(|x| (-(x.value_iterated_to() as i64), x.count_at_value())).collect();
                v.reverse();
                v
            }
            None => Vec::new(),
        };
        neg.into_iter().chain(self.pos.iter_recorded().map(|x| (x.value_iterated_to() as i64, x.count_at_value())))
    }

    /// The nearest-rank values at quantiles `qs` (ascending, in 0..=1),
    /// each clamped to the exact smallest and largest delay.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> Option<[i64; N]> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let ranks: [u64; N] = qs.map(|q| ((q * total as f64).ceil() as u64).clamp(1, total));
        let mut out = [self.max; N];
        let mut next = 0;
        let mut seen = 0u64;
        for (value, count) in self.buckets() {
            seen += count;
            while next < N && ranks[next] <= seen {
                out[next] = value.clamp(self.min, self.max);
                next += 1;
            }
            if next == N {
                break;
            }
        }
        Some(out)
    }

    /// p50, p95, p99, max and min (`None` when empty).
    pub fn percentiles(&self) -> Option<Percentiles> {
        let [p50, p95, p99] = self.quantiles([0.50, 0.95, 0.99])?;
        Some(Percentiles { count: self.count(), p50, p95, p99, max: self.max, min: self.min })
    }

    /// The histogram in a compact form: its non-empty buckets only (for
    /// the bridge's per-minute history), with the exact smallest and
    /// largest delay.
    pub fn compact(&self) -> Compact {
        Compact { runs: self.buckets().collect(), min: self.min, max: self.max }
    }

    /// Heap bytes this histogram holds (for the bridge's memory figures).
    pub fn heap_bytes(&self) -> usize {
        let h = |h: &Histogram<u64>| h.distinct_values() * std::mem::size_of::<u64>();
        h(&self.pos) + self.neg.as_ref().map_or(0, |n| h(n) + std::mem::size_of::<Histogram<u64>>())
    }
}

/// A [`DelayHist`] at rest: `(value, count)` runs of its non-empty
/// buckets, ascending, and the exact extremes. [`Compact::expand`] gives
/// back the same percentiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compact {
    /// The buckets' values (upper ends) and counts.
    runs: Box<[(i64, u64)]>,
    /// Smallest delay.
    min: i64,
    /// Largest delay.
    max: i64,
}

impl Compact {
    /// The histogram again.
    pub fn expand(&self) -> DelayHist {
        let mut h = DelayHist::new();
        for &(v, n) in self.runs.iter() {
            h.record_n(v, n);
        }
        if !h.is_empty() {
            (h.min, h.max) = (self.min, self.max);
        }
        h
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.runs.len() * std::mem::size_of::<(i64, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact nearest-rank percentile of sorted values.
    fn exact(sorted: &[i64], q: f64) -> i64 {
        let n = sorted.len();
        sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
    }

    fn check(values: &[i64]) {
        let mut h = DelayHist::new();
        values.iter().for_each(|&v| h.record(v));
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let p = h.percentiles().expect("not empty");
        assert_eq!(p.count, values.len() as u64);
        assert_eq!((p.min, p.max), (sorted[0], sorted[sorted.len() - 1]), "{values:?}");
        for (got, q) in [(p.p50, 0.50), (p.p95, 0.95), (p.p99, 0.99)] {
            let want = exact(&sorted, q);
            let tolerance = (want.abs() as f64 * 0.01).max(1.0);
            assert!((got - want).abs() as f64 <= tolerance, "q{q}: got {got}, exact {want} in {values:?}");
        }
    }

    #[test]
    fn percentiles_within_one_percent_of_nearest_rank() {
        check(&[5]);
        check(&[0, 0, 0, 1]);
        check(&(1..=100).collect::<Vec<_>>());
        check(&(0..10_000).map(|i| i * 37 % 600_001).collect::<Vec<_>>());
        // Two populations: most records on time, a tail ten minutes late.
        let mixed: Vec<i64> = (0..1000).map(|i| if i % 10 == 0 { 600_000 + i } else { 1_500 + i % 7 }).collect();
        check(&mixed);
        // Clock skew: negative delays kept as they are.
        check(&[-2_000, -1_000, -1_000, 5, 10, 3_000]);
        check(&[-40, -30, -20, -10]);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut both) = (DelayHist::new(), DelayHist::new(), DelayHist::new());
        for i in 0..500 {
            a.record(i * 3);
            both.record(i * 3);
        }
        for i in 0..300 {
            b.record(600_000 - i * 11);
            both.record(600_000 - i * 11);
        }
        b.record(-7);
        both.record(-7);
        a.merge(&b);
        assert_eq!(a.percentiles(), both.percentiles());
        assert_eq!(a.buckets().collect::<Vec<_>>(), both.buckets().collect::<Vec<_>>());
        assert_eq!(a.compact().expand().percentiles(), a.percentiles(), "compacting keeps the percentiles and extremes");
        let mut empty = DelayHist::new();
        empty.merge(&DelayHist::new());
        assert_eq!(empty.percentiles(), None);
        assert_eq!(empty.max(), None);
    }

    #[test]
    fn memory_depends_on_the_range_not_the_count() {
        let mut h = DelayHist::new();
        for i in 0..1_000_000 {
            h.record(1_000 + i % 600_000);
        }
        let bytes = h.heap_bytes();
        for i in 0..1_000_000 {
            h.record(1_000 + i % 600_000);
        }
        assert_eq!(h.heap_bytes(), bytes);
        assert!(bytes < 64 << 10, "{bytes} bytes");
    }
}
