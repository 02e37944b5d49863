//! Channel slots: which bit of a replay log record ([`super::route`])
//! stands for which channel, kept in `<state_dir>/channel-slots.json` so
//! that a record keeps its channels across restarts.
//!
//! Slot 0 is the default channel (`[channel]`, every record) and is not
//! in the file. Slots 1 to 62 go to streams: a stream is known by its
//! *identity*, its id and its filter together ([`super::route::RouteFilter::canonical`]),
//! so a stream whose filter changed is a new channel that does not see
//! the records its old filter chose. Each slot has the sequence number
//! from which it stands for its identity (`from_seq`): a channel sees a
//! record only when the record has its bit *and* a sequence number at or
//! after its `from_seq`. So a slot may be given to another identity at a
//! start (the records the old one marked are all numbered before), and the
//! file lost or damaged is safe: every stream starts anew at the next
//! number (the records before it go to the default channel only).
//!
//! Within a run a slot is never given to a second identity (records of the
//! first may still be appended under it while the change is being put in
//! force); a run can thus add at most 62 identities in all, which
//! [`super::config::MAX_STREAMS`] leaves room for.
//!
//! Invariant: the file is written (atomically, [`crate::state_dir`])
//! before any record carries a new slot, so after a crash the file never
//! holds less than the records do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const FILE: &str = crate::state_dir::StateDir::CHANNEL_SLOTS;

/// The highest slot (bit 63 marks unknown channels in the replay log).
pub const MAX_SLOT: u8 = 62;

/// One slot as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotEntry {
    /// The slot (1 to [`MAX_SLOT`]).
    pub slot: u8,
    /// The stream's id (for people reading the file).
    pub id: String,
    /// The identity: a digest of the id and the filter.
    pub identity: String,
    /// The slot stands for this identity from this sequence number on.
    pub from_seq: u64,
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SlotFile {
    /// Format version (1).
    version: u32,
    /// The slots in use.
    slots: Vec<SlotEntry>,
}

/// Where a stream's records are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The slot (0: the default channel).
    pub slot: u8,
    /// Its records are numbered from this on.
    pub from_seq: u64,
}

impl Slot {
    /// The default channel's slot: every record, from the first.
    pub const DEFAULT: Slot = Slot { slot: 0, from_seq: 0 };

    /// The slot's bit in a record's channels.
    pub fn bit(&self) -> u64 {
        1 << self.slot
    }
}

/// The digest of a stream's identity (its id and its filter's canonical
/// text).
pub fn identity(id: &str, filter_canonical: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{id}\n{filter_canonical}").as_bytes());
    d.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why no slot could be given.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Every slot is taken, or was used by another identity in this run.
    #[error("no channel slot left for stream {id:?}: a run of the bridge can add at most {MAX_SLOT} streams (or filter changes) in all; restart the bridge to reuse the slots of removed streams")]
    Exhausted {
        /// The stream.
        id: String,
    },
}

/// The slots of this run.
#[derive(Debug)]
pub struct Slots {
    /// `<state_dir>/channel-slots.json`.
    path: PathBuf,
    /// The slots in use, by identity.
    entries: Vec<SlotEntry>,
    /// Slots given to an identity in this run (never given to another
    /// until a restart).
    used: u64,
    /// What the file holds (to write only on a change).
    written: Vec<SlotEntry>,
}

impl Slots {
    /// Reads the file in `state_dir` (a missing or unreadable one is
    /// empty: every stream starts anew; a problem is returned to be
    /// logged).
    pub fn load(state_dir: &Path) -> (Slots, Option<String>) {
        let path = crate::state_dir::StateDir::new(state_dir).channel_slots();
        let (entries, problem) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SlotFile>(&bytes) {
                Ok(f) if f.version == 1 => {
                    let mut seen = 0u64;
                    let ok: Vec<SlotEntry> = f
                        .slots
                        .into_iter()
                        .filter(|e| {
                            let fresh = (1..=MAX_SLOT).contains(&e.slot) && seen & (1 << e.slot) == 0;
                            seen |= 1 << e.slot.min(63);
                            fresh
                        })
                        .collect();
                    (ok, None)
                }
                Ok(f) => (Vec::new(), Some(format!("{}: unknown version {}; every stream starts anew", path.display(), f.version))),
                Err(e) => (Vec::new(), Some(format!("{}: {e}; every stream starts anew", path.display()))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), None),
            Err(e) => (Vec::new(), Some(format!("{}: {e}; every stream starts anew", path.display()))),
        };
        (Slots { path, written: entries.clone(), entries, used: 0 }, problem)
    }

    /// The slots of `wanted` streams (`(id, identity)`), in their order:
    /// an identity keeps its slot; a new one gets a free slot from
    /// `next_seq` on. Slots of identities no longer wanted are free for
    /// the next start.
    pub fn assign(&mut self, wanted: &[(String, String)], next_seq: u64) -> Result<Vec<Slot>, SlotError> {
        let keep: HashMap<&str, &SlotEntry> = self.entries.iter().map(|e| (e.identity.as_str(), e)).collect();
        let mut taken: u64 = wanted.iter().filter_map(|(_, ident)| keep.get(ident.as_str()).map(|e| 1u64 << e.slot)).fold(0, |a, b| a | b);
        let mut out = Vec::with_capacity(wanted.len());
        let mut entries = Vec::with_capacity(wanted.len());
        for (id, ident) in wanted {
            let e = match keep.get(ident.as_str()) {
                Some(e) => (*e).clone(),
                None => {
                    let free =
                        (1..=MAX_SLOT).find(|s| (taken | self.used) & (1 << s) == 0).ok_or(SlotError::Exhausted { id: id.clone() })?;
                    taken |= 1 << free;
                    SlotEntry { slot: free, id: id.clone(), identity: ident.clone(), from_seq: next_seq }
                }
            };
            out.push(Slot { slot: e.slot, from_seq: e.from_seq });
            entries.push(e);
        }
        for e in &entries {
            self.used |= 1 << e.slot;
        }
        self.entries = entries;
        Ok(out)
    }

    /// Writes the file when what it should hold changed (before any
    /// record carries a new slot).
    pub async fn save(&mut self) -> anyhow::Result<()> {
        if self.entries == self.written {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(&SlotFile { version: 1, slots: self.entries.clone() })?;
        let display = self.path.display().to_string();
        crate::state_dir::write_atomic_async(self.path.clone(), text).await.map_err(|e| anyhow::anyhow!("cannot write {display}: {e}"))?;
        self.written = self.entries.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[tokio::test]
    async fn identities_keep_their_slots_across_starts_and_new_ones_start_at_the_next_number() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, problem) = Slots::load(dir.path());
        assert!(problem.is_none());
        let got = s.assign(&w(&[("a", "ia"), ("b", "ib")]), 10).unwrap();
        assert_eq!(got, vec![Slot { slot: 1, from_seq: 10 }, Slot { slot: 2, from_seq: 10 }]);
        s.save().await.unwrap();
        // A restart: b is gone, c is new (b's slot may be given: its records
        // are all numbered before 500), a keeps its slot and start.
        let (mut s, _) = Slots::load(dir.path());
        let got = s.assign(&w(&[("a", "ia"), ("c", "ic")]), 500).unwrap();
        assert_eq!(got, vec![Slot { slot: 1, from_seq: 10 }, Slot { slot: 2, from_seq: 500 }]);
        s.save().await.unwrap();
        // Within a run, a freed slot is not given again.
        let got = s.assign(&w(&[("a", "ia"), ("d", "id")]), 600).unwrap();
        assert_eq!(got, vec![Slot { slot: 1, from_seq: 10 }, Slot { slot: 3, from_seq: 600 }]);
        // A damaged file: every stream starts anew, said once.
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        let (mut s, problem) = Slots::load(dir.path());
        assert!(problem.unwrap().contains("starts anew"));
        assert_eq!(s.assign(&w(&[("a", "ia")]), 700).unwrap(), vec![Slot { slot: 1, from_seq: 700 }]);
    }

    #[test]
    fn slots_run_out_only_after_many_changes_in_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Slots::load(dir.path());
        for i in 0..MAX_SLOT as usize {
            s.assign(&w(&[("x", &format!("i{i}"))]), 1).unwrap();
        }
        let e = s.assign(&w(&[("x", "one-more")]), 1).unwrap_err();
        assert!(e.to_string().contains("restart the bridge"), "{e}");
    }
}
