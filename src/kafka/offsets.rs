//! Durable consumer positions: for each topic partition a hub reads, the
//! offset of the next message to read, advanced only when every sink has
//! acknowledged the messages before it (at-least-once end to end).
//!
//! The client has no consumer-group coordination, so the group's positions
//! live here, in `<state_dir>/kafka-offsets-<group_id>.json` (versioned
//! JSON; temporary file, fsync, rename, directory fsync), not on the
//! brokers: `group_id` names this namespace. Nothing is coordinated between
//! two hubs; two hubs with the same `group_id` would each read every
//! partition (each keeps its own file).
//!
//! Batches of a partition may be acknowledged out of order (sinks run
//! independently): their order, how far the position advances and which
//! batch a cancelled send takes back are [`crate::ack_order`]'s, the same
//! rule as file checkpoints.
//!
//! Each position also keeps a [`Witness`]: the offset and checksum
//! ([`message_crc`]) of a message already read (the first of the last
//! fetch, which every broker returns when asked for its offset), so the
//! reader can ask the brokers whether the log still holds that message at
//! that offset. A topic that
//! was deleted and created again, or brokers that lost their log, number
//! new messages from 0 again: without the check the hub would skip every
//! new message until the offsets passed its old position. [`Offsets::reset`]
//! moves a partition back once the reader found such a reset.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::ack_order::{AckOrder, Positions};
use crate::checkpoint::DamagedState;

/// Layout version of the file.
const VERSION: u32 = 1;

/// One partition's position in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Position {
    /// The topic.
    topic: String,
    /// The partition.
    partition: i32,
    /// Offset of the next message to read.
    next: i64,
    /// A message read before `next`, when known: checked against the
    /// brokers' log to find a reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    witness: Option<Witness>,
}

/// A message already read: its offset and [`message_crc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Witness {
    /// Its offset.
    pub offset: i64,
    /// Its checksum.
    pub crc: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Document {
    version: u32,
    group_id: String,
    positions: Vec<Position>,
}

/// A partition: topic and number.
pub type Partition = (String, i32);

/// Where reading a partition goes on: the offset of the next message, and
/// a message read before it when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Offset of the next message to read.
    pub next: i64,
    /// A message read before `next` (offset below `next`).
    pub witness: Option<Witness>,
}

#[derive(Default)]
struct State {
    /// Durable positions.
    positions: BTreeMap<Partition, Resume>,
    /// Batches in flight, in acknowledgement order per partition.
    order: AckOrder<Partition, Resume>,
    /// Changed since the last write.
    dirty: bool,
}

/// A batch's place in its partition's acknowledgement order.
pub type Ticket = crate::ack_order::Ticket<Partition>;

/// The positions of one consumer group. Cheap to clone.
#[derive(Clone)]
pub struct Offsets {
    /// The file.
    path: Arc<PathBuf>,
    /// The group.
    group_id: Arc<str>,
    /// Positions and the acknowledgement order.
    state: Arc<Mutex<State>>,
    /// Signalled when a position advanced.
    changed: Arc<tokio::sync::Notify>,
}

/// The file holding `group_id`'s positions under `state_dir`.
pub fn file_path(state_dir: &Path, group_id: &str) -> PathBuf {
    crate::state_dir::StateDir::new(state_dir).kafka_offsets(group_id)
}

impl Offsets {
    /// Loads the group's positions (an absent file: none yet). A file that
    /// exists but cannot be understood stops the bridge: where to resume
    /// is the operator's decision.
    pub fn load(state_dir: &Path, group_id: &str) -> Result<Offsets, DamagedState> {
        let path = file_path(state_dir, group_id);
        let mut state = State::default();
        match fs::read(&path) {
            Ok(bytes) => {
                let doc: Document = serde_json::from_slice(&bytes)
                    .map_err(|e| DamagedState { path: path.clone(), problem: format!("not a positions document: {e}") })?;
                if doc.version != VERSION {
                    return Err(DamagedState { path, problem: format!("unknown version {}", doc.version) });
                }
                for p in doc.positions {
                    state
                        .positions
                        .insert((p.topic, p.partition), Resume { next: p.next, witness: p.witness.filter(|w| w.offset < p.next) });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DamagedState { path, problem: format!("cannot be read: {e}") }),
        }
        Ok(Offsets {
            path: Arc::new(path),
            group_id: group_id.into(),
            state: Arc::new(Mutex::new(state)),
            changed: Arc::new(tokio::sync::Notify::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The durable position of `p`, if any.
    pub fn position(&self, p: &Partition) -> Option<i64> {
        self.lock().positions.get(p).map(|r| r.next)
    }

    /// Where reading `p` resumes: after the batches in flight, else the
    /// durable position.
    pub fn resume(&self, p: &Partition) -> Option<i64> {
        self.resume_at(p).map(|r| r.next)
    }

    /// [`Offsets::resume`] with a message read before it.
    pub fn resume_at(&self, p: &Partition) -> Option<Resume> {
        let st = self.lock();
        st.order.newest(p).copied().or_else(|| st.positions.get(p).copied())
    }

    /// Sets the first position of a partition read for the first time
    /// (`read_from`); made durable with the next write.
    pub fn start_at(&self, p: &Partition, next: i64) {
        let mut st = self.lock();
        if !st.positions.contains_key(p) {
            st.positions.insert(p.clone(), Resume { next, witness: None });
            st.dirty = true;
        }
    }

    /// Registers a batch of `p` after which reading goes on at `end` (the
    /// next message's offset, and a message of the batch), in read order.
    pub fn register(&self, p: &Partition, end: Resume) -> Ticket {
        self.lock().order.register(p.clone(), end)
    }

    /// Every sink acknowledged the batch: the position advances over the
    /// acknowledged prefix. Returns the new position when it moved.
    pub fn ack(&self, ticket: &Ticket) -> Option<i64> {
        let mut st = self.lock();
        let next = st.order.ack(ticket)?;
        st.positions.insert(ticket.key().clone(), next);
        st.dirty = true;
        drop(st);
        self.changed.notify_one();
        Some(next.next)
    }

    /// Takes back the newest batch of its partition, never handed to the
    /// sinks (reading stopped before it was sent): its messages are read
    /// again. Only the newest batch, not yet acknowledged, can be taken
    /// back ([`crate::ack_order`]); for any other ticket this does nothing
    /// and returns false.
    pub fn withdraw(&self, ticket: &Ticket) -> bool {
        self.lock().order.withdraw(ticket)
    }

    /// The partition's log was reset (a re-created topic, brokers that
    /// lost their log): reading starts again at `next` of the new log.
    /// Batches of the old log still in flight stay in the order until the
    /// sinks acknowledge them, but no longer move the position (their
    /// offsets mean nothing in the new log), as for a file read again
    /// from below its checkpoint ([`AckOrder::restart`]); the new position
    /// is written with the next write.
    pub fn reset(&self, p: &Partition, next: i64) {
        let mut st = self.lock();
        st.order.restart(p);
        st.positions.insert(p.clone(), Resume { next, witness: None });
        st.dirty = true;
        drop(st);
        self.changed.notify_one();
    }

    /// Batches registered and not yet acknowledged, over every partition.
    pub fn in_flight(&self) -> usize {
        self.lock().order.total_in_flight()
    }

    /// Resolves when a position may have advanced since the last write.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Writes the positions if they changed (always with `force`).
    /// Blocking.
    pub fn write(&self, force: bool) -> std::io::Result<bool> {
        let bytes = {
            let mut st = self.lock();
            if !st.dirty && !force {
                return Ok(false);
            }
            st.dirty = false;
            let positions = st
                .positions
                .iter()
                .map(|((t, p), r)| Position { topic: t.clone(), partition: *p, next: r.next, witness: r.witness })
                .collect();
            let doc = Document { version: VERSION, group_id: self.group_id.to_string(), positions };
            serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?
        };
        let res = crate::state_dir::write_atomic(&self.path, &bytes);
        if res.is_err() {
            // Written again next time.
            self.lock().dirty = true;
        }
        res.map(|()| true)
    }

    /// [`Offsets::write`] from a blocking thread.
    pub async fn write_async(&self, force: bool) -> std::io::Result<bool> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write(force)).await.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The checksum of a message as the brokers keep it (key, value and
/// timestamp): the same message fetched again gives the same checksum; the
/// message a re-created topic holds at that offset almost surely not.
pub fn message_crc(key: Option<&[u8]>, value: Option<&[u8]>, timestamp_ms: i64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in [key, value] {
        match part {
            Some(b) => {
                h.update(&(b.len() as u64).to_le_bytes());
                h.update(b);
            }
            None => h.update(&u64::MAX.to_le_bytes()),
        }
    }
    h.update(&timestamp_ms.to_le_bytes());
    h.finalize()
}

impl Positions for Offsets {
    type Key = Partition;
    type Position = i64;

    fn ack(&self, ticket: &Ticket) -> Option<i64> {
        Offsets::ack(self, ticket)
    }

    fn withdraw(&self, ticket: &Ticket) -> bool {
        Offsets::withdraw(self, ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(next: i64) -> Resume {
        Resume { next, witness: Some(Witness { offset: next - 1, crc: next as u32 }) }
    }

    #[test]
    fn positions_advance_over_the_acknowledged_prefix_and_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let o = Offsets::load(d.path(), "hub/1").unwrap();
        assert!(o.path().ends_with("kafka-offsets-hub_1.json"));
        let p: Partition = ("calls".into(), 2);
        assert_eq!(o.resume(&p), None);
        o.start_at(&p, 5);
        assert_eq!(o.resume(&p), Some(5));
        let a = o.register(&p, at(10));
        let b = o.register(&p, at(20));
        let c = o.register(&p, at(30));
        assert_eq!(o.resume(&p), Some(30), "reading resumes past the batches in flight");
        assert_eq!(o.ack(&b), None, "out of order: the first batch is still pending");
        assert_eq!(o.position(&p), Some(5));
        assert_eq!(o.ack(&a), Some(20));
        assert!(o.withdraw(&c));
        assert_eq!(o.resume(&p), Some(20), "a withdrawn batch is read again");
        assert!(o.write(false).unwrap());
        assert!(!o.write(false).unwrap(), "nothing changed since");
        let again = Offsets::load(d.path(), "hub/1").unwrap();
        assert_eq!(again.position(&p), Some(20));
        assert_eq!(again.resume_at(&p), Some(at(20)), "the witness is kept");
        assert_eq!(Offsets::load(d.path(), "other").unwrap().position(&p), None, "group ids are separate namespaces");
        std::fs::write(o.path(), "{not json").unwrap();
        let e = Offsets::load(d.path(), "hub/1").err().unwrap();
        assert!(e.to_string().contains("kafka-offsets-hub_1.json"), "{e}");
        // A file without witnesses (written before they were kept) loads.
        std::fs::write(o.path(), r#"{"version":1,"group_id":"hub/1","positions":[{"topic":"calls","partition":2,"next":7}]}"#).unwrap();
        let old = Offsets::load(d.path(), "hub/1").unwrap();
        assert_eq!(old.resume_at(&p), Some(Resume { next: 7, witness: None }));
    }

    #[test]
    fn a_reset_moves_the_position_back_and_old_batches_no_longer_move_it() {
        let d = tempfile::tempdir().unwrap();
        let o = Offsets::load(d.path(), "hub").unwrap();
        let p: Partition = ("calls".into(), 0);
        o.start_at(&p, 0);
        let a = o.register(&p, at(100));
        let b = o.register(&p, at(150));
        o.ack(&a);
        assert_eq!(o.position(&p), Some(100));
        o.reset(&p, 0);
        assert_eq!(o.resume_at(&p), Some(Resume { next: 0, witness: None }));
        assert_eq!(o.ack(&b), None, "a batch of the old log acknowledged after the reset");
        assert_eq!(o.position(&p), Some(0));
        assert_eq!(o.in_flight(), 0);
        let c = o.register(&p, at(5));
        assert_eq!(o.ack(&c), Some(5), "the new log's batches advance it");
    }

    #[test]
    fn message_checksums_tell_messages_apart() {
        let a = message_crc(Some(b"k"), Some(b"v"), 1);
        assert_eq!(a, message_crc(Some(b"k"), Some(b"v"), 1));
        assert_ne!(a, message_crc(Some(b"k"), Some(b"v"), 2));
        assert_ne!(a, message_crc(None, Some(b"kv"), 1));
        assert_ne!(message_crc(Some(b""), None, 1), message_crc(None, Some(b""), 1));
    }

    #[test]
    fn an_older_batch_cannot_be_taken_back_past_the_ones_after_it() {
        let d = tempfile::tempdir().unwrap();
        let o = Offsets::load(d.path(), "hub").unwrap();
        let p: Partition = ("calls".into(), 0);
        o.start_at(&p, 0);
        let a = o.register(&p, at(10));
        let b = o.register(&p, at(20));
        assert!(!o.withdraw(&a), "only the newest batch can be taken back");
        assert_eq!(o.ack(&b), None, "the older batch still holds the position");
        assert_eq!(o.position(&p), Some(0));
        assert_eq!(o.ack(&a), Some(20));
    }

    /// Partition `stream` of topic `calls`, positions as the model's;
    /// a restart is a reset of the log.
    impl crate::ack_order::model::Subject for Offsets {
        type Ticket = Ticket;
        fn register(&mut self, stream: usize, end: u64) -> Ticket {
            Offsets::register(self, &("calls".into(), stream as i32), Resume { next: end as i64, witness: None })
        }
        fn ack(&mut self, ticket: &Ticket) {
            Offsets::ack(self, ticket);
        }
        fn withdraw(&mut self, ticket: &Ticket) -> bool {
            Offsets::withdraw(self, ticket)
        }
        fn restart(&mut self, stream: usize, at: u64) -> Option<()> {
            self.reset(&("calls".into(), stream as i32), at as i64);
            Some(())
        }
        fn position(&self, stream: usize) -> u64 {
            Offsets::position(self, &("calls".into(), stream as i32)).unwrap_or(0) as u64
        }
        fn resume(&self, stream: usize) -> u64 {
            Offsets::resume(self, &("calls".into(), stream as i32)).unwrap_or(0) as u64
        }
    }

    #[test]
    fn random_sequences_never_advance_a_position_past_an_unacknowledged_batch() {
        let d = tempfile::tempdir().unwrap();
        crate::ack_order::model::run(500, 60, || Offsets::load(d.path(), "model").unwrap());
    }
}
