//! Lock-free delay bookkeeping for the hot path: a Prometheus-style
//! histogram with a fixed array of atomic buckets, a ring of recent
//! samples for windowed percentiles, and [`DelayBatch`], which feeds both
//! with a batch's delays at once.
//!
//! Invariant: recording a delay never takes a lock and never allocates
//! (a few relaxed atomic operations per record); all sorting, windowing
//! and percentile work happens when status or metrics are read.
//! Negative delays (clock skew) are kept as they are, never clamped to 0.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (inclusive, milliseconds) of the delay histogram buckets:
/// 5 ms to 4 h. A last, implicit bucket holds everything above (`+Inf`).
/// Negative delays fall into the first bucket (they are `<= 5 ms`), and
/// are also counted on their own (`negative_delays`).
pub const BUCKET_BOUNDS_MS: [i64; 22] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_200_000, 1_800_000, 3_600_000,
    7_200_000, 10_800_000, 14_400_000,
];

/// Number of buckets including `+Inf`.
pub const BUCKETS: usize = BUCKET_BOUNDS_MS.len() + 1;

/// Index of the bucket that holds `delay_ms`.
#[inline]
pub fn bucket_index(delay_ms: i64) -> usize {
    BUCKET_BOUNDS_MS.partition_point(|&b| b < delay_ms)
}

/// A cumulative (since start) delay histogram, updated with atomics.
pub struct DelayHistogram {
    /// Observations per bucket (not cumulative; see [`BUCKET_BOUNDS_MS`]).
    buckets: [AtomicU64; BUCKETS],
    /// Sum of all observed delays, in milliseconds (may decrease with
    /// negative delays).
    sum_ms: AtomicI64,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        DelayHistogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ms: AtomicI64::new(0) }
    }
}

/// A point-in-time copy of a [`DelayHistogram`] (or the sum of several).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket, not cumulative.
    pub buckets: [u64; BUCKETS],
    /// Sum of the observed delays in milliseconds.
    pub sum_ms: i64,
}

impl DelayHistogram {
    /// Adds `n` observations of `delay_ms` to the buckets. The sum is
    /// updated separately with [`DelayHistogram::add_sum`] so a batch pays
    /// one atomic for it.
    #[inline]
    pub fn observe_n(&self, delay_ms: i64, n: u64) {
        self.buckets[bucket_index(delay_ms)].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds per-bucket counts gathered by the caller (one atomic per
    /// non-empty bucket).
    #[inline]
    pub fn add_counts(&self, counts: &[u64; BUCKETS]) {
        for (b, &c) in self.buckets.iter().zip(counts.iter()) {
            if c != 0 {
                b.fetch_add(c, Ordering::Relaxed);
            }
        }
    }

    /// Adds to the sum of observed delays.
    #[inline]
    pub fn add_sum(&self, sum_ms: i64) {
        self.sum_ms.fetch_add(sum_ms, Ordering::Relaxed);
    }

    /// A copy of the current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ms: self.sum_ms.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// Adds another snapshot into this one.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
    }

    /// Total number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound in seconds, count in that bucket)` pairs, `+Inf`
    /// last, as prometheus-client's encoder takes them (it accumulates).
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| (BUCKET_BOUNDS_MS.get(i).map_or(f64::INFINITY, |&ms| ms as f64 / 1000.0), n))
            .collect()
    }
}

/// Samples kept per file for windowed percentiles. When records arrive
/// faster than this many per window, the percentiles cover the newest
/// samples only. 32 KiB per file.
pub const RING_SAMPLES: usize = 4096;

/// Seconds between the Unix epoch and 2020-01-01T00:00:00Z; sample times
/// are stored as seconds since then in 32 bits (good until 2156).
const RING_EPOCH_S: i64 = 1_577_836_800;

/// A ring of recent `(observed time, delay)` samples, written lock-free.
///
/// Each sample is one `u64`: the observed time in whole seconds since
/// 2020 (high 32 bits, 0 = empty slot) and the delay (low 32 bits) in
/// milliseconds when it fits in ±2^30 ms (12.4 days), otherwise in whole
/// seconds (flag bit 0 set), so one atomic store writes a consistent sample.
pub struct SampleRing {
    /// Number of samples ever written; the next slot is `head % len`.
    head: AtomicU64,
    /// The samples; the length is a power of two.
    slots: Box<[AtomicU64]>,
    /// `slots.len() - 1`: the slot of sequence `s` is `s & mask`.
    mask: u64,
}

impl Default for SampleRing {
    fn default() -> Self {
        SampleRing::with_capacity(RING_SAMPLES)
    }
}

const MS_LIMIT: i64 = 1 << 30;

#[inline]
fn encode_delay(d: i64) -> u32 {
    if (-MS_LIMIT..MS_LIMIT).contains(&d) {
        ((d as i32) << 1) as u32
    } else {
        let s = (d / 1000).clamp(-MS_LIMIT, MS_LIMIT - 1) as i32;
        ((s << 1) | 1) as u32
    }
}

#[inline]
fn decode_delay(v: u32) -> i64 {
    let v = v as i32;
    if v & 1 == 0 {
        (v >> 1) as i64
    } else {
        (v >> 1) as i64 * 1000
    }
}

#[inline]
fn encode_time(observed_ms: i64) -> u64 {
    (observed_ms.div_euclid(1000) - RING_EPOCH_S).clamp(1, u32::MAX as i64) as u64
}

impl SampleRing {
    /// A ring of `n` samples (rounded up to a power of two).
    pub fn with_capacity(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        SampleRing { head: AtomicU64::new(0), slots: (0..n).map(|_| AtomicU64::new(0)).collect(), mask: n as u64 - 1 }
    }

    /// Reserves `n` consecutive slots; returns the first sequence number.
    #[inline]
    pub fn reserve(&self, n: u64) -> u64 {
        self.head.fetch_add(n, Ordering::Relaxed)
    }

    /// Writes a sample into the slot for sequence number `seq` (from
    /// [`SampleRing::reserve`]).
    #[inline]
    pub fn write(&self, seq: u64, observed_ms: i64, delay_ms: i64) {
        let slot = &self.slots[(seq & self.mask) as usize];
        slot.store((encode_time(observed_ms) << 32) | encode_delay(delay_ms) as u64, Ordering::Relaxed);
    }

    /// The next sequence number (for [`SampleRing::write_coded`] followed
    /// by [`SampleRing::advance`]: one writer ([`DelayBatch`]) claims slots
    /// without an atomic read-modify-write per sample).
    #[inline]
    fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Moves the head past `n` samples written with `write_coded`.
    #[inline]
    fn advance(&self, n: u64) {
        self.head.fetch_add(n, Ordering::Relaxed);
    }

    /// Writes a sample whose time is already coded ([`encode_time`]).
    #[inline]
    fn write_coded(&self, seq: u64, time_code: u64, delay_ms: i64) {
        let slot = &self.slots[(seq & self.mask) as usize];
        slot.store((time_code << 32) | encode_delay(delay_ms) as u64, Ordering::Relaxed);
    }

    /// The delays of the samples observed at or after `since_ms`, unsorted.
    pub fn delays_since(&self, since_ms: i64, out: &mut Vec<i64>) {
        let since = encode_time(since_ms);
        for slot in self.slots.iter() {
            let v = slot.load(Ordering::Relaxed);
            let t = v >> 32;
            if t != 0 && t >= since {
                out.push(decode_delay(v as u32));
            }
        }
    }
}

/// The delays of one batch (records read together, one observed time),
/// gathered locally and published once: a [`SampleRing`] and a
/// [`DelayHistogram`] fed together. Bucket counts and the sum are added to
/// the histogram at the end; ring slots are written with plain stores and
/// claimed with one add.
///
/// One writer per ring: if two threads ever fed the same ring at once,
/// some samples could overwrite each other (the histogram stays exact).
pub struct DelayBatch<'r> {
    /// The ring the samples go to.
    ring: &'r SampleRing,
    /// The observed time, as the ring stores it.
    time_code: u64,
    /// Samples per histogram bucket.
    counts: [u64; BUCKETS],
    /// The ring's head when the batch started.
    head: u64,
    /// Samples added.
    samples: u64,
    /// Sum of the delays added, ms.
    sum: i64,
}

impl<'r> DelayBatch<'r> {
    /// A batch of samples observed at `observed_ms`, for `ring`.
    #[inline]
    pub fn new(ring: &'r SampleRing, observed_ms: i64) -> Self {
        DelayBatch { ring, time_code: encode_time(observed_ms), counts: [0; BUCKETS], head: ring.head(), samples: 0, sum: 0 }
    }

    /// Adds one delay.
    #[inline]
    pub fn add(&mut self, delay_ms: i64) {
        self.counts[bucket_index(delay_ms)] += 1;
        self.ring.write_coded(self.head.wrapping_add(self.samples), self.time_code, delay_ms);
        self.samples += 1;
        self.sum = self.sum.wrapping_add(delay_ms);
    }

    /// Publishes the batch into the ring and `hist`; false when it holds
    /// no sample.
    #[inline]
    pub fn finish(self, hist: &DelayHistogram) -> bool {
        if self.samples == 0 {
            return false;
        }
        self.ring.advance(self.samples);
        hist.add_counts(&self.counts);
        hist.add_sum(self.sum);
        true
    }
}

/// Percentiles of a set of delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DelaySummary {
    /// Median, milliseconds (nearest rank).
    pub p50: i64,
    /// 95th percentile, milliseconds (nearest rank).
    pub p95: i64,
    /// Largest, milliseconds.
    pub max: i64,
    /// Smallest, milliseconds (negative with clock skew).
    pub min: i64,
    /// Number of samples the figures are computed from.
    pub samples: u64,
}

impl DelaySummary {
    /// Summarises `delays` (sorted in place); `None` when empty.
    pub fn of(delays: &mut [i64]) -> Option<DelaySummary> {
        if delays.is_empty() {
            return None;
        }
        delays.sort_unstable();
        let n = delays.len();
        let rank = |p: f64| delays[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(DelaySummary { p50: rank(0.50), p95: rank(0.95), max: delays[n - 1], min: delays[0], samples: n as u64 })
    }

    /// Summarises weighted samples `(delay_ms, weight)` (sorted in place).
    pub fn of_weighted(samples: &mut [(i64, u64)]) -> Option<DelaySummary> {
        let total: u64 = samples.iter().map(|s| s.1).sum();
        if total == 0 {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let want = ((p * total as f64).ceil() as u64).clamp(1, total);
            let mut acc = 0;
            for &(d, w) in samples.iter() {
                acc += w;
                if acc >= want {
                    return d;
                }
            }
            samples[samples.len() - 1].0
        };
        let nonzero = samples.iter().filter(|s| s.1 > 0);
        let min = nonzero.clone().map(|s| s.0).min().unwrap_or(0);
        let max = nonzero.map(|s| s.0).max().unwrap_or(0);
        Some(DelaySummary { p50: rank(0.50), p95: rank(0.95), max, min, samples: total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_edges_are_inclusive() {
        assert_eq!(bucket_index(-3_600_000), 0);
        assert_eq!(bucket_index(5), 0);
        assert_eq!(bucket_index(6), 1);
        assert_eq!(bucket_index(14_400_000), BUCKETS - 2);
        assert_eq!(bucket_index(14_400_001), BUCKETS - 1);
    }

    #[test]
    fn delay_encoding_round_trips() {
        for d in [0, 1, -1, 1234, -98_765, MS_LIMIT - 1, -MS_LIMIT] {
            assert_eq!(decode_delay(encode_delay(d)), d, "{d}");
        }
        // Beyond 12.4 days: whole seconds.
        let forty_days = 40 * 86_400_000 + 123;
        assert_eq!(decode_delay(encode_delay(forty_days)), 40 * 86_400_000);
        assert_eq!(decode_delay(encode_delay(-forty_days)), -40 * 86_400_000);
    }

    #[test]
    fn ring_keeps_newest_and_windows_by_time() {
        let ring = SampleRing::with_capacity(4);
        let t0 = 1_700_000_000_000;
        for i in 0..6 {
            let seq = ring.reserve(1);
            ring.write(seq, t0 + i * 1000, i);
        }
        let mut v = Vec::new();
        ring.delays_since(t0, &mut v);
        v.sort();
        assert_eq!(v, vec![2, 3, 4, 5]);
        v.clear();
        ring.delays_since(t0 + 4000, &mut v);
        v.sort();
        assert_eq!(v, vec![4, 5]);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<i64> = (1..=100).collect();
        let s = DelaySummary::of(&mut v).unwrap();
        assert_eq!((s.p50, s.p95, s.max, s.min, s.samples), (50, 95, 100, 1, 100));
        assert_eq!(DelaySummary::of(&mut []), None);
        let mut w = vec![(10, 90), (1000, 10), (-5, 0)];
        let s = DelaySummary::of_weighted(&mut w).unwrap();
        assert_eq!((s.p50, s.p95, s.max, s.min, s.samples), (10, 1000, 1000, 10, 100));
    }

    #[test]
    fn histogram_snapshot_buckets() {
        let h = DelayHistogram::default();
        h.observe_n(3, 2);
        h.observe_n(-40, 1);
        h.observe_n(20_000_000, 1);
        h.add_sum(3 + 3 - 40 + 20_000_000);
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        let c = s.buckets_seconds();
        assert_eq!(c.len(), BUCKETS);
        assert_eq!(c[0], (0.005, 3));
        assert_eq!(c.last().copied(), Some((f64::INFINITY, 1)));
        assert_eq!(c[c.len() - 2], (14_400.0, 0));
    }
}
