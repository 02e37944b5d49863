//! The running bridge's recent history: per series (a file, or a remote
//! host's entry), one [`DelayHist`] per minute of `request_time`, kept for
//! a fixed number of minutes: what `/history` and the dashboard's history
//! panel show, summarised by the same rules as `lag report`.
//!
//! Memory: the minute being recorded is a full histogram; every other
//! minute is kept compact (its non-empty buckets only, a few hundred bytes
//! for a minute of similar delays), so a series costs about
//! `keep_minutes` × 1 KiB at most, whatever the record rate. A record for
//! a minute already compacted (a late one) opens it again until the next
//! [`SeriesMinutes::flush`]. Minutes older than `keep_minutes` before the
//! newest one are dropped, and records for them are counted, not kept.
//!
//! Invariant: no clock and no I/O; the caller says what time it is.

use std::collections::BTreeMap;

use super::hist::{Compact, DelayHist};
use super::report::Collector;

/// A minute, ms.
pub const MINUTE_MS: i64 = 60_000;

/// A minute's delays: full while it is written, compact otherwise.
#[derive(Clone, Debug)]
enum Slot {
    /// Being written.
    Open(DelayHist),
    /// Its buckets at rest.
    Compact(Compact),
}

impl Slot {
    fn open(&mut self) -> &mut DelayHist {
        if let Slot::Compact(c) = self {
            *self = Slot::Open(c.expand());
        }
        match self {
            Slot::Open(h) => h,
            Slot::Compact(_) => unreachable!("opened above"),
        }
    }

    fn compact(&mut self) {
        if let Slot::Open(h) = self {
            *self = Slot::Compact(h.compact());
        }
    }

    fn hist(&self) -> DelayHist {
        match self {
            Slot::Open(h) => h.clone(),
            Slot::Compact(c) => c.expand(),
        }
    }
}

/// One series' minutes.
#[derive(Debug)]
pub struct SeriesMinutes {
    /// Minutes kept before the newest.
    keep_minutes: i64,
    /// Minute index (`request_time / 60 s`) → its delays.
    minutes: BTreeMap<i64, Slot>,
    /// The minute written last, kept open outside the map while records
    /// of the same minute follow (the common case: one lookup per run).
    current: Option<(i64, DelayHist)>,
    /// The open minute's bounds in ms, `[start, end)`: a record inside
    /// them goes straight to its histogram without dividing (a 64-bit
    /// division costs more than the rest of the per-record work).
    current_ms: (i64, i64),
    /// Minutes opened since the last flush (to compact).
    opened: Vec<i64>,
    /// Records for minutes already dropped (older than the history).
    pub too_old: u64,
}

impl SeriesMinutes {
    /// An empty history keeping `keep_minutes` minutes.
    pub fn new(keep_minutes: u32) -> SeriesMinutes {
        SeriesMinutes {
            keep_minutes: i64::from(keep_minutes.max(1)),
            minutes: BTreeMap::new(),
            current: None,
            current_ms: (0, 0),
            opened: Vec::new(),
            too_old: 0,
        }
    }

    /// The newest minute index recorded.
    fn newest(&self) -> Option<i64> {
        let in_map = self.minutes.keys().next_back().copied();
        match (&self.current, in_map) {
            (Some((m, _)), Some(k)) => Some((*m).max(k)),
            (Some((m, _)), None) => Some(*m),
            (None, k) => k,
        }
    }

    /// Records one delay of a call at `request_time_ms`.
    #[inline]
    pub fn record(&mut self, request_time_ms: i64, delay_ms: i64) {
        if let Some((_, h)) = &mut self.current {
            if request_time_ms >= self.current_ms.0 && request_time_ms < self.current_ms.1 {
                h.record(delay_ms);
                return;
            }
        }
        self.record_other_minute(request_time_ms, delay_ms);
    }

    /// [`SeriesMinutes::record`] for a record outside the open minute.
    #[inline(never)]
    fn record_other_minute(&mut self, request_time_ms: i64, delay_ms: i64) {
        let minute = request_time_ms.div_euclid(MINUTE_MS);
        if self.newest().is_some_and(|n| minute <= n - self.keep_minutes) {
            self.too_old += 1;
            return;
        }
        self.put_back();
        let mut h = match self.minutes.remove(&minute) {
            Some(mut slot) => std::mem::take(slot.open()),
            None => DelayHist::new(),
        };
        h.record(delay_ms);
        self.current = Some((minute, h));
        self.current_ms = (minute.saturating_mul(MINUTE_MS), minute.saturating_add(1).saturating_mul(MINUTE_MS));
    }

    /// Returns the open minute to the map.
    fn put_back(&mut self) {
        if let Some((m, h)) = self.current.take() {
            match self.minutes.get_mut(&m) {
                Some(slot) => slot.open().merge(&h),
                None => {
                    self.minutes.insert(m, Slot::Open(h));
                }
            }
            if !self.opened.contains(&m) {
                self.opened.push(m);
            }
        }
    }

    /// Ends a batch: every minute but the newest is compacted, and
    /// minutes older than the history are dropped.
    pub fn flush(&mut self) {
        self.put_back();
        let Some(newest) = self.newest() else { return };
        let oldest_kept = newest - self.keep_minutes + 1;
        while self.minutes.first_key_value().is_some_and(|(m, _)| *m < oldest_kept) {
            self.minutes.pop_first();
        }
        let mut opened = std::mem::take(&mut self.opened);
        for m in opened.drain(..) {
            match self.minutes.get_mut(&m) {
                Some(slot) if m != newest => slot.compact(),
                Some(_) => self.opened.push(m),
                None => {}
            }
        }
        if self.opened.is_empty() {
            self.opened = opened;
        }
    }

    /// Adds the minutes in `[from_ms, to_ms)` to a report's collector
    /// under `host` and `file`.
    pub fn collect(&self, host: &str, file: &str, c: &mut Collector) {
        for (m, slot) in &self.minutes {
            c.add_hist(host, file, m * MINUTE_MS, &slot.hist());
        }
        if let Some((m, h)) = &self.current {
            c.add_hist(host, file, m * MINUTE_MS, h);
        }
    }

    /// Heap bytes held (for tests and figures).
    pub fn heap_bytes(&self) -> usize {
        let slots: usize = self
            .minutes
            .values()
            .map(|s| match s {
                Slot::Open(h) => h.heap_bytes(),
                Slot::Compact(c) => c.heap_bytes(),
            })
            .sum();
        slots + self.current.as_ref().map_or(0, |c| c.1.heap_bytes()) + self.minutes.len() * 48
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::report::{Settings, Statistic};

    const T0: i64 = 1_796_515_200_000;

    fn report(s: &SeriesMinutes, from: i64, to: i64, every: i64) -> crate::history::report::Report {
        let mut c = Collector::new(Settings {
            from_ms: from,
            to_ms: to,
            every_ms: every,
            threshold_ms: 60_000,
            statistic: Statistic::P95,
            worst: 5,
        });
        s.collect("h", "f", &mut c);
        c.finish()
    }

    #[test]
    fn minutes_summarise_like_the_report_and_late_records_reopen_their_minute() {
        let mut s = SeriesMinutes::new(60);
        // Ten minutes, a record a second; minutes 3 and 4 ten minutes late.
        for sec in 0..600 {
            let rt = T0 + sec * 1000;
            let late = (180..300).contains(&sec);
            s.record(rt, if late { 600_000 } else { 1_500 });
            if sec % 17 == 0 {
                s.flush();
            }
        }
        s.flush();
        // A late record for minute 0, after it was compacted.
        s.record(T0 + 1, 2_000);
        s.flush();
        let r = report(&s, T0, T0 + 10 * MINUTE_MS, MINUTE_MS);
        assert_eq!(r.windows.len(), 10);
        assert_eq!(r.windows[0].records, 61);
        assert_eq!(r.episodes.len(), 1);
        let e = &r.episodes[0];
        assert_eq!((e.start_ms, e.end_ms, e.delay.max), (T0 + 3 * MINUTE_MS, T0 + 5 * MINUTE_MS, 600_000));
        // Every five minutes: the windows merge their minutes.
        let r = report(&s, T0, T0 + 10 * MINUTE_MS, 5 * MINUTE_MS);
        assert_eq!(r.windows.iter().map(|w| w.records).collect::<Vec<_>>(), vec![301, 300]);
    }

    #[test]
    fn memory_is_bounded_by_the_minutes_kept_not_the_records() {
        let mut s = SeriesMinutes::new(30);
        for sec in 0..(3 * 3600) {
            for i in 0..50 {
                s.record(T0 + sec * 1000 + i, 1_000 + (sec * 7 + i) % 3_000);
            }
            s.flush();
        }
        assert_eq!(s.minutes.len(), 30);
        let bytes = s.heap_bytes();
        assert!(bytes < 30 * 4096, "{bytes} bytes for 30 minutes");
        // A record older than the history is counted, not kept.
        s.record(T0, 5);
        assert_eq!(s.too_old, 1);
        assert_eq!(s.minutes.len(), 30);
    }
}
