//! The memory budget (`memory_max_bytes`): one bound on the record memory
//! the bridge holds between reading and delivery, in every sink together.
//!
//! What counts: every [`crate::pipeline::Batch`] from the moment the
//! fan-out takes it until the last sink lets go of it (the chunk its
//! records borrow from and the records themselves, queued, or held by the
//! archive until its fsync), and what a sink keeps of its own instead of
//! the batch while it waits to deliver it (upstream's encoded requests, the Kafka sink's encoded messages).
//! Readers wait for room before they read a chunk and before they hand a
//! batch on ([`MemoryBudget::room`]), exactly as they wait for a full sink
//! queue; sinks never wait to charge what they already hold
//! ([`MemoryBudget::charge`]), so holding on to memory cannot deadlock,
//! and each sink that holds batches for a later event lets go early when
//! the budget is exhausted (the archive syncs, upstream spills to its
//! spool).
//!
//! Invariant: the budget can be overshot only by what readers already had
//! in hand when it was reached (one chunk each), never by a sink's queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::telemetry::{Counter, Gauge, Telemetry};

/// The `/status` section and `/metrics` prefix of the budget's figures.
pub const SECTION: &str = "memory";

/// The budget shared by the fan-out, its readers and the sinks.
#[derive(Debug)]
pub struct MemoryBudget {
    /// `memory_max_bytes` (`usize::MAX`: unbounded, tests and tools).
    max: usize,
    /// Bytes charged now.
    used: AtomicUsize,
    /// Woken when `used` falls below `max` again.
    freed: Notify,
    /// Figures shown in `/status` and `/metrics` (`None`: not published).
    figures: Option<BudgetFigures>,
}

/// The budget's published figures.
#[derive(Debug)]
struct BudgetFigures {
    /// Bytes charged now.
    used: Gauge,
    /// 1 while readers wait for room.
    paused: Gauge,
    /// Times a reader had to wait for room.
    pauses: Counter,
}

/// Memory charged to the budget, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    /// The budget charged.
    budget: Arc<MemoryBudget>,
    /// Bytes charged.
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl Charge {
    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::unbounded()
    }
}

impl MemoryBudget {
    /// A budget of `max` bytes whose figures are published in `telemetry`
    /// (section [`SECTION`]).
    pub fn new(max: usize, telemetry: &Telemetry) -> Arc<MemoryBudget> {
        let f = telemetry.figures(SECTION);
        f.gauge("budget_bytes", "The memory budget for records read and not yet delivered (memory_max_bytes)")
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        let figures = BudgetFigures {
            used: f.gauge("used_bytes", "Memory held now by records read and not yet delivered, in every sink"),
            paused: f.gauge("reading_paused", "1 while reading waits because the memory budget is reached"),
            pauses: f.counter("pauses", "Times reading waited because the memory budget was reached"),
        };
        Arc::new(MemoryBudget { max, used: AtomicUsize::new(0), freed: Notify::new(), figures: Some(figures) })
    }

    /// No bound, nothing published (tools, tests).
    pub fn unbounded() -> MemoryBudget {
        MemoryBudget { max: usize::MAX, used: AtomicUsize::new(0), freed: Notify::new(), figures: None }
    }

    /// The bound, bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// True when the budget is reached: readers wait, and sinks holding
    /// batches for a later event should let go of them now.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.max
    }

    /// Charges `bytes` without waiting (what a sink or a reader already
    /// holds).
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let now = self.used.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        self.publish(now);
        Charge { budget: self.clone(), bytes }
    }

    /// Resolves once the budget has room (at once if it has). Cancel-safe.
    pub async fn room(&self) {
        if !self.exhausted() {
            return;
        }
        if let Some(f) = &self.figures {
            f.pauses.inc();
            f.paused.set(1);
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a release after it wakes us.
            freed.as_mut().enable();
            if !self.exhausted() {
                break;
            }
            freed.await;
        }
        if let Some(f) = &self.figures {
            f.paused.set(0);
        }
    }

    fn release(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        let now = before - bytes;
        self.publish(now);
        if before >= self.max && now < self.max {
            self.freed.notify_waiters();
        }
    }

    fn publish(&self, used: usize) {
        if let Some(f) = &self.figures {
            f.used.set(i64::try_from(used).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn readers_wait_for_room_and_charges_give_it_back() {
        let tel = Telemetry::new();
        let b = MemoryBudget::new(100, &tel);
        let a = b.charge(60);
        b.room().await;
        let c = b.charge(60);
        assert!(b.exhausted());
        assert_eq!(b.used(), 120);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        assert!(tokio::time::timeout(Duration::from_millis(50), async {
            while !waiting.is_finished() {
                tokio::task::yield_now().await
            }
        })
        .await
        .is_err());
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!((b.used(), c.bytes()), (60, 60));
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
