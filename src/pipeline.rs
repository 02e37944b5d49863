//! What flows between the stages: [`Batch`]es of records with their
//! acknowledgement ([`Batch::ack`], [`Receipt`]).
//!
//! A tailer reads records from one file into a `Batch` and hands it to the
//! [`Fanout`], which sends the same `Arc<Batch>` to every configured sink
//! over bounded channels (backpressure: a full sink queue makes the tailer
//! wait). Each sink calls [`Batch::ack`] exactly once when the batch is
//! delivered (upstream 2xx, written to the archive file, buffered in the
//! channel's replay ring) or definitively handled (dead-lettered, spooled
//! to disk). When every sink has acknowledged, the batch's completion
//! callback runs; the tailer uses it to advance the file's durable
//! checkpoint. A batch that is dropped without every sink acknowledging
//! never advances the checkpoint: its records are read again after a
//! restart (at-least-once).
//!
//! A batch's records borrow the chunk they were read from, so holding a
//! batch pins that whole chunk, and a hostile file can make a 256 KB chunk
//! hold a single record. A sink that acknowledges only after a later event
//! bounds what it holds by that memory, not only by its output: upstream
//! (until the collector's 2xx) turns the records into its own bytes at once
//! and keeps only a [`Receipt`]; the archive, which keeps its batches until
//! their fsync to write them again after a failed write, syncs early once
//! they pin `SYNC_EARLY_PINNED_BYTES` ([`Records::pinned_bytes`]).
//!
//! Every batch the fan-out takes is charged to the memory budget
//! ([`crate::budget`], `memory_max_bytes`) until the last sink drops it:
//! [`Fanout::send`] waits for room first, as for a full queue.
//!
//! Readers send through [`Fanout::send_under_ticket`]: the batch's place in
//! its stream's acknowledgement order ([`crate::ack_order`]) is acknowledged
//! when every sink has the batch, and withdrawn when the send is given up
//! (so the batch is read again). The file reader and the Kafka partition
//! reader both send this way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use yoke::{Yoke, Yokeable};

use crate::ack_order::{Positions, Ticket};
use crate::budget::{Charge, MemoryBudget};
use crate::enrich::Lookups;
use crate::record::Record;

/// Called once when every sink has acknowledged a batch.
pub type OnAcked = Box<dyn FnOnce() + Send + 'static>;

/// A group of records read from one file, in file order.
pub struct Batch {
    /// The file the records came from (for per-file stats and logs).
    pub source: Arc<str>,
    /// The records, in the order they appear in the file.
    pub records: Records,
    /// Epoch ms when the first record of the batch was read (delivery delay).
    pub observed_ms: i64,
    /// Sinks that still have to acknowledge, and what to do when none remain
    /// (shared with the batch's [`Receipt`]s).
    ack: Arc<AckState>,
    /// The batch's memory, charged to the budget by [`Fanout::send`] and
    /// given back when the last sink drops the batch.
    charge: Option<Charge>,
}

struct AckState {
    /// Sinks that have not acknowledged yet.
    pending: AtomicUsize,
    /// Runs when `pending` reaches zero.
    on_acked: Mutex<Option<OnAcked>>,
}

impl Batch {
    /// A batch whose completion runs `on_acked` (e.g. "advance the
    /// checkpoint of file F to offset O").
    pub fn new(source: Arc<str>, records: impl Into<Records>, observed_ms: i64, on_acked: Option<OnAcked>) -> Self {
        Batch {
            source,
            records: records.into(),
            observed_ms,
            ack: Arc::new(AckState { pending: AtomicUsize::new(0), on_acked: Mutex::new(on_acked) }),
            charge: None,
        }
    }

    /// Records that one sink has delivered (or definitively handled) this
    /// batch. Each sink calls this, or [`Receipt::ack`] on the batch's
    /// receipt, exactly once per batch it receives.
    pub fn ack(&self) {
        self.ack.ack();
    }

    /// What a sink keeps instead of the batch when it acknowledges later:
    /// the acknowledgement, the record count and the observed time, without
    /// the records and the chunk they borrow from.
    pub fn receipt(&self) -> Receipt {
        Receipt { ack: self.ack.clone(), records: self.records.len(), observed_ms: self.observed_ms }
    }
}

impl AckState {
    fn ack(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.complete();
        }
    }

    fn complete(&self) {
        let cb = self.on_acked.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(cb) = cb {
            cb();
        }
    }
}

/// A sink's hold on a batch it will acknowledge later (see
/// [`Batch::receipt`]): small, and it keeps no record memory alive.
pub struct Receipt {
    /// The batch's acknowledgement state.
    ack: Arc<AckState>,
    /// How many records the batch held.
    pub records: usize,
    /// The batch's observed time (epoch ms).
    pub observed_ms: i64,
}

impl Receipt {
    /// Acknowledges the batch for this sink; stands for [`Batch::ack`], so
    /// a sink calls one or the other, once.
    pub fn ack(&self) {
        self.ack.ack();
    }
}

/// What the records of a batch borrow from: the bytes read from the file
/// and the lookup tables that enriched them.
pub struct RecordSource {
    /// Whole lines as read (the carried-over partial line, then the chunk).
    pub data: Vec<u8>,
    /// The lookup tables in force when the lines were enriched.
    pub tables: Arc<Lookups>,
    /// The `host` the records were stamped with (they borrow it).
    pub host: Arc<str>,
}

/// The records list a [`Records`] holds.
#[derive(Yokeable)]
pub struct RecordList<'a>(pub Vec<Record<'a>>);

/// A batch's records, either owned or borrowing from their
/// [`RecordSource`] which they carry along.
///
/// Borrowing is what makes the read path cheap: a record's values stay
/// slices of the chunk that was read (and of the lookup tables), instead of
/// some forty small strings copied and freed per record on different
/// threads. The chunk is freed when the last sink has let go of the batch.
pub struct Records(Yoke<RecordList<'static>, Option<Box<RecordSource>>>);

impl Records {
    /// Parses records out of `source`; they may borrow from it.
    pub fn borrowing(source: RecordSource, parse: impl for<'a> FnOnce(&'a RecordSource) -> Vec<Record<'a>>) -> Self {
        Records(Yoke::attach_to_cart(Box::new(source), |s| RecordList(parse(s))).wrap_cart_in_option())
    }

    /// The records, in file order.
    pub fn as_slice(&self) -> &[Record<'_>] {
        &self.0.get().0
    }

    /// Iterates over the records in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Record<'_>> {
        self.as_slice().iter()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The bytes the records borrow from (`None` for owned records).
    pub fn source_data(&self) -> Option<&[u8]> {
        self.0.backing_cart().as_deref().map(|s| &s.data[..])
    }

    /// Memory the records keep alive besides themselves: the capacity of
    /// the bytes they borrow from (0 for owned records).
    pub fn pinned_bytes(&self) -> usize {
        self.0.backing_cart().as_deref().map_or(0, |s| s.data.capacity())
    }

    /// Memory the records hold: the bytes they borrow from and the
    /// records themselves (what the batch is charged to the budget).
    pub fn footprint(&self) -> usize {
        self.pinned_bytes() + self.0.get().0.capacity() * std::mem::size_of::<Record<'static>>()
    }

    /// Drops the records and gives back the bytes they borrowed from, so a
    /// reader can reuse the buffer (`None` for owned records).
    pub fn into_source_data(self) -> Option<Vec<u8>> {
        self.0.into_backing_cart().map(|s| s.data)
    }
}

impl From<Vec<Record<'static>>> for Records {
    fn from(v: Vec<Record<'static>>) -> Self {
        Records(Yoke::new_owned(RecordList(v)))
    }
}

impl Default for Records {
    fn default() -> Self {
        Vec::new().into()
    }
}

/// Sends each batch to every sink's bounded queue.
#[derive(Clone, Default)]
pub struct Fanout {
    /// One queue per sink.
    sinks: Vec<(&'static str, mpsc::Sender<Arc<Batch>>)>,
    /// Demands that sinks make what they hold durable now (see
    /// [`Durability`]); shared by every clone.
    durability: Arc<Durability>,
    /// What every batch is charged to until the sinks let go of it.
    budget: Arc<MemoryBudget>,
}

/// The rule that keeps a file's records when the file goes away: before
/// the last handle on a source file is released while some of its records
/// are not acknowledged (the file was deleted or rotated out of the globs,
/// or the bridge stops with records undelivered), those records are made
/// durable. A reader in that situation holds a [`Demand`] until its
/// batches are acknowledged; while any demand is held, sinks that keep
/// batches in memory for long (upstream during an outage) write them to
/// durable storage (the spool) at once and acknowledge them, instead of
/// waiting for their peer. Sinks that acknowledge on their own soon (the
/// archive after its fsync, the channel on append) need not look.
/// Not covered: a crash in the moments between Local Edition deleting a
/// file and the bridge seeing it (the records exist only in the open file
/// then), and a sink with no durable place (`spool_max_bytes = 0`), which
/// only keeps the file open.
#[derive(Debug)]
pub struct Durability {
    /// Demands held now.
    demands: tokio::sync::watch::Sender<usize>,
}

impl Default for Durability {
    fn default() -> Self {
        Durability { demands: tokio::sync::watch::Sender::new(0) }
    }
}

impl Durability {
    /// Demands durability until the returned [`Demand`] is dropped.
    pub fn demand(self: &Arc<Self>) -> Demand {
        self.demands.send_modify(|n| *n += 1);
        Demand(self.clone())
    }

    /// True while some demand is held.
    pub fn is_demanded(&self) -> bool {
        *self.demands.borrow() > 0
    }

    /// Resolves once some demand is held (at once if one is).
    pub async fn demanded(&self) {
        let mut rx = self.demands.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }
}

/// A held durability demand (see [`Durability`]); released when dropped.
#[derive(Debug)]
pub struct Demand(Arc<Durability>);

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.demands.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The error when a sink's queue is closed (the sink task ended).
#[derive(Debug, thiserror::Error)]
#[error("sink `{0}` is no longer running")]
pub struct SinkClosed(pub &'static str);

/// Why a batch sent under a ticket reached no sink; its ticket was
/// withdrawn, so the batch is read again by the stream's next reader.
#[derive(Debug, thiserror::Error)]
pub enum Unsent {
    /// The send was given up (shutdown, reload) while a sink was backed up.
    #[error("the send was cancelled")]
    Cancelled,
    /// A sink's queue is closed.
    #[error(transparent)]
    Closed(#[from] SinkClosed),
}

impl Fanout {
    /// An empty fan-out without a memory bound; add sinks with
    /// [`Fanout::add`].
    pub fn new() -> Self {
        Fanout::default()
    }

    /// An empty fan-out whose batches are charged to `budget`.
    pub fn with_budget(budget: Arc<MemoryBudget>) -> Self {
        Fanout { budget, ..Fanout::default() }
    }

    /// The memory budget its batches are charged to (readers wait for
    /// room before reading; sinks look whether it is exhausted).
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Adds a sink queue. `name` is used in errors and metrics.
    pub fn add(&mut self, name: &'static str, tx: mpsc::Sender<Arc<Batch>>) {
        self.sinks.push((name, tx));
    }

    /// The durability demands shared by this fan-out's readers and sinks.
    pub fn durability(&self) -> Arc<Durability> {
        self.durability.clone()
    }

    /// Number of sinks.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Sends the batch to every sink, waiting while the memory budget is
    /// exhausted or a sink's queue is full. With no sinks the batch is
    /// acknowledged at once.
    ///
    /// All or nothing: a place is reserved in every sink's queue first, and
    /// only then is the batch handed to all of them. So a send that is
    /// cancelled while it waits (a reload or shutdown while a sink is
    /// backed up) has given the batch to no sink, and its records can be
    /// read again without reaching any sink twice.
    pub async fn send(&self, mut batch: Batch) -> Result<(), SinkClosed> {
        batch.ack.pending.store(self.sinks.len(), Ordering::Release);
        if self.sinks.is_empty() {
            batch.ack.complete();
            return Ok(());
        }
        self.budget.room().await;
        batch.charge = Some(self.budget.charge(batch.records.footprint()));
        let mut permits = Vec::with_capacity(self.sinks.len());
        for (name, tx) in &self.sinks {
            permits.push(tx.reserve().await.map_err(|_| SinkClosed(name))?);
        }
        let batch = Arc::new(batch);
        for p in permits {
            p.send(batch.clone());
        }
        Ok(())
    }

    /// Sends a reader's batch, registered as `ticket` in `positions` (made
    /// with no completion of its own: `on_acked` `None`). Once every sink
    /// has acknowledged it, the ticket is acknowledged and `on_advanced`
    /// gets the stream's new position if it moved. A batch with no records
    /// (a chunk of rejected lines only) is acknowledged at once: its
    /// position still advances in order with the batches before it.
    ///
    /// When `cancel` resolves before every sink took the batch, or a sink
    /// is closed, no sink has it ([`Fanout::send`] is all or nothing): the
    /// ticket is withdrawn and the stream's next reader reads the batch
    /// again from its start. A reader sends one batch at a time, so the
    /// ticket is its stream's newest, the only one that can be withdrawn.
    pub async fn send_under_ticket<P: Positions>(
        &self,
        positions: &P,
        ticket: Ticket<P::Key>,
        batch: Batch,
        on_advanced: impl FnOnce(P::Position) + Send + 'static,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(), Unsent> {
        let acked: OnAcked = {
            let (positions, ticket) = (positions.clone(), ticket.clone());
            Box::new(move || {
                if let Some(p) = positions.ack(&ticket) {
                    on_advanced(p);
                }
            })
        };
        if batch.records.is_empty() {
            acked();
            return Ok(());
        }
        *batch.ack.on_acked.lock().unwrap_or_else(|e| e.into_inner()) = Some(acked);
        let sent = tokio::select! {
            r = self.send(batch) => r.map_err(Unsent::Closed),
            () = cancel => Err(Unsent::Cancelled),
        };
        if sent.is_err() {
            positions.withdraw(&ticket);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn completes_only_after_every_sink_acks() {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let mut f = Fanout::new();
        f.add("a", tx1);
        f.add("b", tx2);
        f.send(Batch::new("f".into(), vec![], 0, Some(Box::new(move || d.store(true, Ordering::SeqCst))))).await.unwrap();
        let b1 = rx1.recv().await.unwrap();
        let b2 = rx2.recv().await.unwrap();
        b1.ack();
        assert!(!done.load(Ordering::SeqCst));
        b2.ack();
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_receipt_acknowledges_without_holding_the_records() {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let mut f = Fanout::new();
        f.add("a", tx1);
        f.add("b", tx2);
        let records = Records::borrowing(RecordSource { data: vec![0; 1 << 20], tables: Arc::default(), host: Arc::default() }, |_| {
            vec![Record::default()]
        });
        f.send(Batch::new("f".into(), records, 7, Some(Box::new(move || d.store(true, Ordering::SeqCst))))).await.unwrap();
        let (b1, b2) = (rx1.recv().await.unwrap(), rx2.recv().await.unwrap());
        let receipt = b1.receipt();
        assert_eq!((receipt.records, receipt.observed_ms), (1, 7));
        b2.ack();
        let weak = Arc::downgrade(&b1);
        drop((b1, b2));
        assert!(weak.upgrade().is_none(), "the batch and its chunk are freed while the receipt is held");
        assert!(!done.load(Ordering::SeqCst));
        receipt.ack();
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_cancelled_send_reaches_no_sink() {
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(1);
        let mut f = Fanout::new();
        f.add("a", tx1);
        f.add("b", tx2);
        f.send(Batch::new("f".into(), vec![], 0, None)).await.unwrap();
        // `b` is full now: the next send waits, and is given up.
        let waiting = f.send(Batch::new("f".into(), vec![], 0, None));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), waiting).await.is_err());
        assert!(rx1.recv().await.is_some());
        assert!(rx1.try_recv().is_err(), "the cancelled batch must not reach `a`");
        assert!(rx2.recv().await.is_some());
        assert!(rx2.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_send_waits_while_the_memory_budget_is_reached_and_charges_until_the_sinks_let_go() {
        let telemetry = crate::telemetry::Telemetry::new();
        let budget = MemoryBudget::new(4 << 20, &telemetry);
        let (tx, mut rx) = mpsc::channel(16);
        let mut f = Fanout::with_budget(budget.clone());
        f.add("a", tx);
        let chunk = || {
            Records::borrowing(RecordSource { data: vec![0; 3 << 20], tables: Arc::default(), host: Arc::default() }, |_| {
                vec![Record::default()]
            })
        };
        f.send(Batch::new("f".into(), chunk(), 0, None)).await.unwrap();
        assert!(budget.used() >= 3 << 20);
        f.send(Batch::new("f".into(), chunk(), 0, None)).await.unwrap();
        assert!(budget.exhausted());
        // The queue has room, the budget has not: the third send waits.
        let waiting = f.send(Batch::new("f".into(), chunk(), 0, None));
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting).await.is_err());
        let first = rx.recv().await.unwrap();
        first.ack();
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("room once a batch is dropped").unwrap();
        drop(rx);
        assert_eq!(budget.used(), 0, "dropped batches give their memory back");
    }

    #[tokio::test]
    async fn a_send_under_a_ticket_acknowledges_it_or_withdraws_it() {
        let dir = tempfile::tempdir().unwrap();
        let ck = crate::checkpoint::Checkpointer::empty(dir.path());
        let fp = crate::checkpoint::fingerprint::Fingerprint(1);
        let (tx, mut rx) = mpsc::channel(1);
        let mut f = Fanout::new();
        f.add("a", tx);
        let one = || Batch::new("f".into(), vec![Record::default()], 0, None);
        let advanced = Arc::new(Mutex::new(Vec::new()));
        let seen = advanced.clone();
        let t = ck.register(fp, 10, None);
        f.send_under_ticket(&ck, t, one(), move |p| seen.lock().unwrap().push(p), std::future::pending()).await.unwrap();
        // The queue is full: the next send waits and is given up.
        let t = ck.register(fp, 20, None);
        let cancelled = f.send_under_ticket(&ck, t, one(), |_| {}, async {}).await;
        assert!(matches!(cancelled, Err(Unsent::Cancelled)), "{cancelled:?}");
        assert_eq!(ck.resume_offset(fp), Some(10), "the batch given up is read again");
        // A chunk of rejects only: acknowledged at once, behind the first.
        let t = ck.register(fp, 15, None);
        f.send_under_ticket(&ck, t, Batch::new("f".into(), vec![], 0, None), |_| {}, std::future::pending()).await.unwrap();
        assert_eq!(ck.offset(fp), None, "waits for the batch before it");
        rx.recv().await.unwrap().ack();
        assert!(rx.try_recv().is_err(), "the cancelled batch reached no sink");
        assert_eq!((ck.offset(fp), ck.in_flight(fp)), (Some(15), false));
        assert_eq!(*advanced.lock().unwrap(), [15], "the first batch's acknowledgement carries the position past both");
        drop(rx);
        let t = ck.register(fp, 30, None);
        let closed = f.send_under_ticket(&ck, t, one(), |_| {}, std::future::pending()).await;
        assert!(matches!(closed, Err(Unsent::Closed(_))), "{closed:?}");
        assert_eq!(ck.resume_offset(fp), Some(15), "a batch no sink took is withdrawn");
    }

    #[tokio::test]
    async fn durability_demands_are_counted_and_awaited() {
        let f = Fanout::new();
        let d = f.durability();
        assert!(!d.is_demanded());
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.demanded().await }
        });
        let a = f.clone().durability().demand();
        let b = d.demand();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        drop(a);
        assert!(d.is_demanded(), "one demand is still held");
        drop(b);
        assert!(!d.is_demanded());
    }

    #[tokio::test]
    async fn dropped_batch_never_completes() {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let (tx, rx) = mpsc::channel(4);
        let mut f = Fanout::new();
        f.add("a", tx);
        f.send(Batch::new("f".into(), vec![], 0, Some(Box::new(move || d.store(true, Ordering::SeqCst))))).await.unwrap();
        drop(rx);
        assert!(!done.load(Ordering::SeqCst));
    }
}
