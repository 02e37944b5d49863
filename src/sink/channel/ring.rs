//! The replay ring: the channel's only buffer of records.
//!
//! Every record the channel receives is serialised once (the `ecls` shape,
//! masked) and appended here with the next sequence number. Connections do
//! not get copies pushed to them: each one reads the ring from its own
//! cursor (its next sequence number). That makes a broadcast O(1) for the
//! sink, whatever the number of clients, and makes `?since=` replay and the
//! live stream one code path, so there is no gap and no duplicate between
//! them.
//!
//! Retention: the ring keeps the newest `replay_records` records, and also
//! every older record that lies within `send_queue_bytes` of the head (a
//! connection that has not yet sent those is still within its send-queue
//! bound and must be able to read them). A connection whose unsent bytes
//! exceed the bound is a slow consumer and is closed, so the ring never has
//! to keep anything for it: memory is bounded by the ring alone, not by the
//! number or speed of clients.
//!
//! Invariant: sequence numbers in the ring are contiguous and increasing;
//! `cum_start` (bytes of every record before this one since the channel
//! started) is increasing too. Pure data structure, no I/O, no locks.

use std::collections::VecDeque;
use std::sync::Arc;

/// One record as the channel serves it.
#[derive(Debug)]
pub struct Item {
    /// The record in the `ecls` shape (masked when the channel masks).
    pub json: Box<str>,
    /// `service_id`, for the `service_id=` filter.
    pub service_id: Box<str>,
    /// The unmasked `api_key`, for the `api_key=` filter.
    pub api_key: Box<str>,
    /// `http_status_code` as a number (0 when it is not one), for `status=`.
    pub status: u16,
    /// Epoch ms when the bridge read the record (delivery-delay samples).
    pub observed_ms: i64,
}

/// A record in the ring with its position.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record's sequence number.
    pub seq: u64,
    /// Bytes of all records before this one (the connection's
    /// send-queue accounting works in these units).
    pub cum_start: u64,
    /// The record.
    pub item: Arc<Item>,
}

impl Entry {
    /// `cum_start` of the record after this one.
    pub fn cum_end(&self) -> u64 {
        self.cum_start + self.item.json.len() as u64
    }
}

/// The reader asked for records that were already evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The oldest sequence number still in the ring (or the next one to be
    /// assigned when the ring is empty).
    pub first_available: u64,
}

/// The ring. See the module docs for the retention rule.
#[derive(Debug)]
pub struct Ring {
    /// The records, oldest first.
    entries: VecDeque<Entry>,
    /// Sequence number the next record gets.
    next_seq: u64,
    /// Bytes of all records appended so far (`cum_start` of the next one).
    head_cum: u64,
    /// Bytes of the records currently held.
    held_bytes: u64,
    /// Keep at least this many records for `?since=` replay.
    replay_records: usize,
    /// Also keep records within this many bytes of the head.
    queue_bytes: u64,
}

impl Ring {
    /// An empty ring whose first record gets `first_seq`.
    pub fn new(first_seq: u64, replay_records: usize, queue_bytes: usize) -> Self {
        Ring { entries: VecDeque::new(), next_seq: first_seq, head_cum: 0, held_bytes: 0, replay_records, queue_bytes: queue_bytes as u64 }
    }

    /// Appends a record and returns its sequence number; evicts what the
    /// retention rule no longer needs.
    pub fn push(&mut self, item: Arc<Item>) -> u64 {
        let seq = self.next_seq;
        let len = item.json.len() as u64;
        self.entries.push_back(Entry { seq, cum_start: self.head_cum, item });
        self.next_seq += 1;
        self.head_cum += len;
        self.held_bytes += len;
        while self.entries.len() > self.replay_records {
            match self.entries.front() {
                Some(front) if self.head_cum - front.cum_start > self.queue_bytes => {
                    self.held_bytes -= front.item.json.len() as u64;
                    self.entries.pop_front();
                }
                _ => break,
            }
        }
        seq
    }

    /// The sequence number the next record gets (one past the newest).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest sequence number still held (`next_seq` when empty).
    pub fn first_seq(&self) -> u64 {
        self.entries.front().map_or(self.next_seq, |e| e.seq)
    }

    /// Bytes of every record appended so far.
    pub fn head_cum(&self) -> u64 {
        self.head_cum
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of the records held (the ring's memory, JSON only).
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// `cum_start` of record `seq`: where a reader that starts at `seq`
    /// stands in byte terms. `seq` past the head gives the head.
    pub fn cum_at(&self, seq: u64) -> Result<u64, Evicted> {
        if seq >= self.next_seq {
            return Ok(self.head_cum);
        }
        let first = self.first_seq();
        if seq < first {
            return Err(Evicted { first_available: first });
        }
        Ok(self.entries[(seq - first) as usize].cum_start)
    }

    /// Copies (cheap `Arc` clones) records `from..` into `out`, at most
    /// `max_records` of them and stopping once `max_bytes` is reached
    /// (at least one record is copied when any is available).
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize, out: &mut Vec<Entry>) -> Result<(), Evicted> {
        let first = self.first_seq();
        if from < first {
            return Err(Evicted { first_available: first });
        }
        let start = (from - first) as usize;
        let mut bytes = 0usize;
        for e in self.entries.iter().skip(start).take(max_records) {
            if bytes >= max_bytes {
                break;
            }
            bytes += e.item.json.len();
            out.push(e.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: usize) -> Arc<Item> {
        Arc::new(Item { json: "x".repeat(len).into(), service_id: "".into(), api_key: "".into(), status: 200, observed_ms: 0 })
    }

    #[test]
    fn sequence_numbers_are_contiguous_from_the_first() {
        let mut r = Ring::new(100, 10, 0);
        assert_eq!(r.first_seq(), 100);
        assert_eq!(r.push(item(3)), 100);
        assert_eq!(r.push(item(3)), 101);
        assert_eq!(r.next_seq(), 102);
        assert_eq!(r.head_cum(), 6);
        assert_eq!(r.cum_at(101), Ok(3));
        assert_eq!(r.cum_at(500), Ok(6));
    }

    #[test]
    fn keeps_replay_records_then_evicts_oldest() {
        let mut r = Ring::new(1, 3, 0);
        for _ in 0..5 {
            r.push(item(10));
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.first_seq(), 3);
        assert_eq!(r.held_bytes(), 30);
        let mut out = Vec::new();
        assert_eq!(r.read(2, 10, usize::MAX, &mut out), Err(Evicted { first_available: 3 }));
        r.read(3, 10, usize::MAX, &mut out).unwrap();
        assert_eq!(out.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    }

    #[test]
    fn keeps_records_within_the_send_queue_bound() {
        // replay_records = 1, but a reader may lag up to 25 bytes: the ring
        // keeps what such a reader still needs.
        let mut r = Ring::new(1, 1, 25);
        for _ in 0..5 {
            r.push(item(10));
        }
        // head_cum = 50; keep entries with 50 - cum_start <= 25: cum 30, 40.
        assert_eq!(r.first_seq(), 4);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn read_respects_record_and_byte_limits() {
        let mut r = Ring::new(1, 100, 0);
        for _ in 0..10 {
            r.push(item(10));
        }
        let mut out = Vec::new();
        r.read(1, 4, usize::MAX, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        out.clear();
        r.read(1, 100, 25, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        out.clear();
        r.read(1, 100, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1, "at least one record");
        out.clear();
        r.read(11, 100, 100, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
