//! The acknowledgement order of read positions: how far a durable position
//! may advance when the batches read from a stream (a file, a Kafka
//! partition) are acknowledged out of order, and where a reader resumes.
//! The one copy of this rule: [`crate::checkpoint::Checkpointer`] (files,
//! by fingerprint) and the Kafka source's positions (`kafka::offsets`,
//! by partition) keep their streams in an [`AckOrder`]; readers send under
//! a ticket with [`crate::pipeline::Fanout::send_under_ticket`].
//!
//! The rules, for each stream:
//!
//! - **Register in read order.** A reader registers each batch it read,
//!   with the position after it (its end), before handing it to the sinks,
//!   and gets a [`Ticket`]. Batches of a stream are registered in the
//!   order they were read.
//! - **Advance over the acknowledged prefix only.** Acknowledging a batch
//!   ([`AckOrder::ack`]) moves the position to the end of the newest batch
//!   of the longest run of acknowledged batches at the front of the order:
//!   never past a batch that is registered and not acknowledged.
//! - **Withdraw only the newest batch.** A reader whose send was cancelled
//!   before any sink took the batch (a shutdown or reload while a sink is
//!   backed up) takes it back ([`AckOrder::withdraw`]): the batch is
//!   forgotten, it no longer holds later acknowledgements back, and the
//!   resume point ([`AckOrder::newest`]) is its start again, so the next
//!   reader reads it again. Only the newest batch of its stream, not yet
//!   acknowledged, can be taken back. Taking back an older one would let
//!   the acknowledged prefix jump over it once the batches after it are
//!   acknowledged: the position would pass records no sink ever had, and
//!   they could not be read again without reading those later batches
//!   too. So any other withdrawal is refused (`false`): the batch stays
//!   registered and keeps holding the position back, which at worst reads
//!   records again after a restart and never loses one. A reader that
//!   registers and sends one batch at a time (what `send_under_ticket`
//!   does) only ever withdraws its newest batch.
//! - **Restart below.** When reading of a stream starts over at a lower
//!   position (a file truncated and rewritten), [`AckOrder::restart`]
//!   marks the batches in flight as stale: they still have to be
//!   acknowledged (their records are with the sinks, and they hold later
//!   batches back), but their ends no longer move the position.
//!
//! Sequence numbers are never reused, so a ticket acknowledged or
//! withdrawn a second time, or acknowledged after it was withdrawn, finds
//! nothing and changes nothing. A stream with nothing in flight is
//! forgotten: the order holds only batches in flight.
//!
//! Pure bookkeeping: no I/O, no locking (the owners hold it behind their
//! own lock), no knowledge of what a position is beyond its value.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A batch's place in the acknowledgement order of its stream: returned
/// by [`AckOrder::register`], handed back to [`AckOrder::ack`] or
/// [`AckOrder::withdraw`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket<K> {
    /// The stream (a file's fingerprint, a Kafka partition).
    key: K,
    /// The batch's number, unique in its [`AckOrder`].
    seq: u64,
}

impl<K> Ticket<K> {
    /// The stream the batch was read from.
    pub fn key(&self) -> &K {
        &self.key
    }
}

/// The batches in flight of every stream, in read order per stream. `K`
/// names a stream; `P` is what a batch's end is (an offset, with whatever
/// goes with it).
#[derive(Debug)]
pub struct AckOrder<K, P> {
    /// Streams with at least one batch in flight.
    streams: HashMap<K, Stream<P>>,
    /// The number the next registered batch gets (over every stream).
    next_seq: u64,
}

impl<K, P> Default for AckOrder<K, P> {
    fn default() -> Self {
        AckOrder { streams: HashMap::new(), next_seq: 0 }
    }
}

/// One stream's batches in flight.
#[derive(Debug)]
struct Stream<P> {
    /// Oldest first; numbers increase (with gaps where batches were
    /// withdrawn).
    batches: VecDeque<Slot<P>>,
    /// Batches numbered below this belong to a reading given up by
    /// [`AckOrder::restart`]: their ends no longer move the position.
    stale_below: u64,
}

/// A batch in flight.
#[derive(Debug)]
struct Slot<P> {
    /// Its number.
    seq: u64,
    /// The position after it.
    end: P,
    /// Acknowledged (it waits for the batches before it).
    acked: bool,
}

impl<K: Hash + Eq + Clone, P> AckOrder<K, P> {
    /// An order with nothing in flight.
    pub fn new() -> Self {
        AckOrder::default()
    }

    /// Registers a batch of `key` that ends at `end`, after every batch of
    /// `key` registered before it.
    pub fn register(&mut self, key: K, end: P) -> Ticket<K> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let stream = self.streams.entry(key.clone()).or_insert_with(|| Stream { batches: VecDeque::new(), stale_below: 0 });
        stream.batches.push_back(Slot { seq, end, acked: false });
        Ticket { key, seq }
    }

    /// Acknowledges a batch. Returns the end of the newest batch of the
    /// current reading that the acknowledged prefix now covers, when the
    /// position advanced (an acknowledgement behind an unacknowledged
    /// batch, or of a stale batch only, returns `None`).
    pub fn ack(&mut self, ticket: &Ticket<K>) -> Option<P> {
        let stream = self.streams.get_mut(&ticket.key)?;
        let idx = stream.batches.binary_search_by_key(&ticket.seq, |b| b.seq).ok()?;
        stream.batches[idx].acked = true;
        let mut advanced = None;
        while stream.batches.front().is_some_and(|b| b.acked) {
            let Some(b) = stream.batches.pop_front() else { break };
            if b.seq >= stream.stale_below {
                advanced = Some(b.end);
            }
        }
        if stream.batches.is_empty() {
            self.streams.remove(&ticket.key);
        }
        advanced
    }

    /// Takes back the newest batch of its stream, not yet acknowledged,
    /// whose send was cancelled before any sink took it (see the module
    /// docs). Returns false, and changes nothing, for any other ticket.
    pub fn withdraw(&mut self, ticket: &Ticket<K>) -> bool {
        let Some(stream) = self.streams.get_mut(&ticket.key) else { return false };
        match stream.batches.back() {
            Some(b) if b.seq == ticket.seq && !b.acked => {
                stream.batches.pop_back();
                if stream.batches.is_empty() {
                    self.streams.remove(&ticket.key);
                }
                true
            }
            _ => false,
        }
    }

    /// Reading of `key` starts over below its position: the batches in
    /// flight stay, but no longer move the position when acknowledged.
    pub fn restart(&mut self, key: &K) {
        if let Some(stream) = self.streams.get_mut(key) {
            stream.stale_below = self.next_seq;
        }
    }

    /// The end of the newest batch of `key`'s current reading still in
    /// flight: where a new reader of `key` resumes (past batches still
    /// with the sinks). `None` when nothing of the current reading is in
    /// flight: the reader resumes at the durable position.
    pub fn newest(&self, key: &K) -> Option<&P> {
        let stream = self.streams.get(key)?;
        stream.batches.back().filter(|b| b.seq >= stream.stale_below).map(|b| &b.end)
    }

    /// Batches of `key` registered and neither acknowledged (with every
    /// batch before them) nor withdrawn.
    pub fn in_flight(&self, key: &K) -> usize {
        self.streams.get(key).map_or(0, |s| s.batches.len())
    }

    /// Batches in flight over every stream.
    pub fn total_in_flight(&self) -> usize {
        self.streams.values().map(|s| s.batches.len()).sum()
    }
}

/// A keeper of positions by acknowledgement order (file checkpoints,
/// Kafka positions): what [`crate::pipeline::Fanout::send_under_ticket`]
/// acknowledges or withdraws a batch's ticket with. Cheap to clone (the
/// acknowledgement callback holds a clone).
pub trait Positions: Clone + Send + Sync + 'static {
    /// What names a stream.
    type Key: Clone + Send + Sync + 'static;
    /// The position a stream advances to.
    type Position;

    /// [`AckOrder::ack`], then making the new position durable in time.
    fn ack(&self, ticket: &Ticket<Self::Key>) -> Option<Self::Position>;

    /// [`AckOrder::withdraw`].
    fn withdraw(&self, ticket: &Ticket<Self::Key>) -> bool;
}

/// Seeded random sequences of register / acknowledge / withdraw / restart
/// against a model, for [`AckOrder`] and for each keeper built on it.
#[cfg(test)]
pub(crate) mod model {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// What the sequences drive: positions of a few streams, numbered.
    pub(crate) trait Subject {
        /// A registered batch.
        type Ticket: Clone;
        /// Registers a batch of `stream` ending at `end`.
        fn register(&mut self, stream: usize, end: u64) -> Self::Ticket;
        /// Acknowledges it (the sinks delivered it).
        fn ack(&mut self, ticket: &Self::Ticket);
        /// Takes it back; true when taken.
        fn withdraw(&mut self, ticket: &Self::Ticket) -> bool;
        /// Reading of `stream` starts over at `at`, below its position.
        /// `None` when the subject has no restart (then it is not drawn).
        fn restart(&mut self, stream: usize, at: u64) -> Option<()>;
        /// The durable position of `stream`.
        fn position(&self, stream: usize) -> u64;
        /// Where a new reader of `stream` resumes.
        fn resume(&self, stream: usize) -> u64;
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum State {
        Pending,
        Acked,
        Withdrawn,
    }

    /// A batch as the model sees it.
    struct Batch<T> {
        ticket: T,
        start: u64,
        end: u64,
        state: State,
        /// Registered before the stream's last restart.
        stale: bool,
    }

    /// One stream as the model sees it.
    struct Stream<T> {
        batches: Vec<Batch<T>>,
        /// Where the reader reads next.
        cursor: u64,
        /// Where the current reading began (0, or the last restart).
        base: u64,
        /// The position the rule gives.
        position: u64,
    }

    impl<T> Stream<T> {
        /// Batches still in the order: after the acknowledged prefix,
        /// withdrawn ones left out.
        fn live(&self) -> impl Iterator<Item = &Batch<T>> {
            let popped = self.batches.iter().take_while(|b| b.state != State::Pending).count();
            self.batches[popped..].iter().filter(|b| b.state != State::Withdrawn)
        }

        /// The end of the content delivered without a gap from `base`:
        /// what at-least-once allows the position to reach.
        fn delivered(&self) -> u64 {
            let mut ranges: Vec<(u64, u64)> =
                self.batches.iter().filter(|b| b.state == State::Acked && !b.stale).map(|b| (b.start, b.end)).collect();
            ranges.sort_unstable();
            let mut reach = self.base;
            for (s, e) in ranges {
                if s <= reach {
                    reach = reach.max(e);
                }
            }
            reach
        }
    }

    /// Runs `sequences` seeded sequences of `steps` operations on a few
    /// streams, each on a fresh subject from `make`, checking after every
    /// step: the position is the one the rule gives, never past content
    /// that was not delivered (a registered batch not acknowledged, a
    /// withdrawn batch not read again and acknowledged), and readers resume
    /// where the rule says; a withdrawal is taken exactly for the newest
    /// batch not acknowledged. At the end every pending batch is
    /// acknowledged: then every stream's position is where its reader is.
    pub(crate) fn run<S: Subject>(sequences: u64, steps: usize, mut make: impl FnMut() -> S) {
        for seed in 0..sequences {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut subject = make();
            let streams_n = rng.random_range(1..=3);
            let mut streams: Vec<Stream<S::Ticket>> =
                (0..streams_n).map(|_| Stream { batches: Vec::new(), cursor: 0, base: 0, position: 0 }).collect();
            let can_restart = rng.random_bool(0.5);
            for step in 0..steps {
                let si = rng.random_range(0..streams_n);
                let what = rng.random_range(0..100);
                let ctx = format!("seed {seed}, step {step}, stream {si}");
                let s = &mut streams[si];
                if what < 40 || s.batches.is_empty() {
                    let start = s.cursor;
                    let end = start + rng.random_range(0..50);
                    let ticket = subject.register(si, end);
                    s.batches.push(Batch { ticket, start, end, state: State::Pending, stale: false });
                    s.cursor = end;
                } else if what < 80 {
                    // Acknowledge a batch (mostly pending ones; sometimes one
                    // acknowledged or withdrawn already, which must change nothing).
                    let i = rng.random_range(0..s.batches.len());
                    subject.ack(&s.batches[i].ticket);
                    if s.batches[i].state == State::Pending {
                        s.batches[i].state = State::Acked;
                    }
                } else if what < 95 {
                    // Withdraw: mostly the newest, sometimes any.
                    let newest = s.batches.len() - 1;
                    let i = if rng.random_bool(0.7) { newest } else { rng.random_range(0..s.batches.len()) };
                    let expected = s.batches[i].state == State::Pending && s.batches[i + 1..].iter().all(|b| b.state == State::Withdrawn);
                    let taken = subject.withdraw(&s.batches[i].ticket);
                    assert_eq!(taken, expected, "{ctx}: withdrawal of batch {i} of {}", s.batches.len());
                    if taken {
                        // The reader stops; the next one reads the batch again
                        // (a batch of a reading given up is not read again).
                        s.batches[i].state = State::Withdrawn;
                        if !s.batches[i].stale {
                            s.cursor = s.batches[i].start;
                        }
                    }
                } else if can_restart && s.cursor > 0 {
                    let at = rng.random_range(0..s.cursor.min(s.position + 1));
                    if subject.restart(si, at).is_some() {
                        for b in &mut s.batches {
                            b.stale = true;
                        }
                        s.base = at;
                        s.cursor = at;
                        s.position = at;
                    }
                }
                let s = &mut streams[si];
                // The position the rule gives: the end of the newest batch
                // of the current reading in the acknowledged prefix.
                let prefix = s.batches.iter().take_while(|b| b.state != State::Pending);
                if let Some(b) = prefix.filter(|b| b.state == State::Acked && !b.stale).last() {
                    s.position = s.position.max(b.end);
                }
                let position = subject.position(si);
                assert_eq!(position, s.position, "{ctx}: position");
                assert!(
                    position <= s.delivered(),
                    "{ctx}: position {position} is past undelivered content (delivered to {})",
                    s.delivered()
                );
                for b in s.batches.iter().filter(|b| b.state == State::Pending && !b.stale) {
                    assert!(position <= b.start, "{ctx}: position {position} is past the unacknowledged batch {}..{}", b.start, b.end);
                }
                let resume = s.live().last().filter(|b| !b.stale).map_or(s.position, |b| b.end.max(s.position));
                assert_eq!(subject.resume(si), resume, "{ctx}: resume point");
                assert!(subject.resume(si) <= s.cursor.max(s.position), "{ctx}: resumes past what was read");
            }
            // Every batch still pending is delivered: nothing is stuck.
            for (si, s) in streams.iter_mut().enumerate() {
                for b in s.batches.iter_mut().filter(|b| b.state == State::Pending) {
                    subject.ack(&b.ticket);
                    b.state = State::Acked;
                }
                let end = s.cursor;
                assert_eq!(subject.position(si), end, "seed {seed}: stream {si} once everything is delivered");
                assert_eq!(subject.resume(si), end, "seed {seed}: stream {si} resumes at its position");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model::{self, Subject};
    use super::*;

    /// The order alone, with the position kept as an owner keeps it.
    #[derive(Default)]
    struct Plain {
        order: AckOrder<usize, u64>,
        positions: HashMap<usize, u64>,
    }

    impl Subject for Plain {
        type Ticket = Ticket<usize>;
        fn register(&mut self, stream: usize, end: u64) -> Ticket<usize> {
            self.order.register(stream, end)
        }
        fn ack(&mut self, ticket: &Ticket<usize>) {
            if let Some(end) = self.order.ack(ticket) {
                let p = self.positions.entry(*ticket.key()).or_default();
                *p = (*p).max(end);
            }
        }
        fn withdraw(&mut self, ticket: &Ticket<usize>) -> bool {
            self.order.withdraw(ticket)
        }
        fn restart(&mut self, stream: usize, at: u64) -> Option<()> {
            self.order.restart(&stream);
            self.positions.insert(stream, at);
            Some(())
        }
        fn position(&self, stream: usize) -> u64 {
            self.positions.get(&stream).copied().unwrap_or(0)
        }
        fn resume(&self, stream: usize) -> u64 {
            self.order.newest(&stream).copied().unwrap_or(0).max(self.position(stream))
        }
    }

    #[test]
    fn random_sequences_never_advance_past_an_unacknowledged_batch() {
        model::run(2000, 60, Plain::default);
    }

    #[test]
    fn only_the_newest_unacknowledged_batch_is_taken_back() {
        let mut o: AckOrder<&str, u64> = AckOrder::new();
        let a = o.register("f", 10);
        let b = o.register("f", 20);
        assert!(!o.withdraw(&a), "an older batch is refused");
        assert_eq!(o.ack(&b), None, "and still holds the position back");
        assert_eq!(o.ack(&a), Some(20));
        let c = o.register("f", 30);
        assert_eq!(o.ack(&c), Some(30));
        assert!(!o.withdraw(&c), "an acknowledged batch cannot be taken back");
        let d = o.register("f", 40);
        assert!(o.withdraw(&d));
        assert!(!o.withdraw(&d), "twice changes nothing");
        assert_eq!(o.ack(&d), None, "nor does acknowledging a withdrawn ticket");
        assert_eq!((o.newest(&"f"), o.total_in_flight()), (None, 0), "a stream with nothing in flight is forgotten");
    }

    #[test]
    fn a_restart_keeps_old_batches_in_the_order_without_their_ends() {
        let mut o: AckOrder<u8, u64> = AckOrder::new();
        let old = o.register(1, 100);
        o.restart(&1);
        assert_eq!(o.newest(&1), None, "the old reading's batch is not where a reader resumes");
        let new = o.register(1, 30);
        assert_eq!(o.newest(&1), Some(&30));
        assert_eq!(o.ack(&new), None, "waits behind the old batch");
        assert_eq!(o.ack(&old), Some(30), "the old batch's end is not taken");
        assert_eq!(o.in_flight(&1), 0);
    }
}
