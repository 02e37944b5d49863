//! The set of `request_uuid`s already in a slice's files, consulted only
//! where a record may be there already (records read again after an
//! unclean stop; the offline export, whose input may repeat records).
//!
//! A canonical UUID is kept as its 128 bits (exact); any other value as a
//! 128-bit hash of its text, so one entry costs 16 bytes whatever the
//! value's length. A value read back from a file in which it was
//! neutralised as a spreadsheet formula (`'=...`, see
//! [`crate::record::csv_cell_is_formula`]) counts as the value itself, so
//! a record read again matches its row whatever `escape_formulas` was.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::record::{csv_cell_is_formula, Field};

/// `request_uuid`s as 128-bit keys.
#[derive(Debug, Default)]
pub struct UuidSet(HashSet<u128, BuildHasherDefault<FoldHasher>>);

impl UuidSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `uuid`; false when it was there already.
    pub fn insert(&mut self, uuid: &str) -> bool {
        self.0.insert(key(uuid))
    }

    /// True when `uuid` is in the set.
    pub fn contains(&self, uuid: &str) -> bool {
        self.0.contains(&key(uuid))
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The 128-bit key of a `request_uuid`.
fn key(v: &str) -> u128 {
    let v = match v.strip_prefix('\'') {
        Some(raw) if csv_cell_is_formula(Field::RequestUuid, raw) => raw,
        _ => v,
    };
    parse_uuid(v).unwrap_or_else(|| {
        // Two independent 64-bit SipHashes (different keys through a
        // different first byte): collisions are out of reach.
        let half = |salt: u8| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            salt.hash(&mut h);
            v.hash(&mut h);
            h.finish()
        };
        // That such a hash equals a UUID's bits is as unlikely as any
        // other 128-bit collision.
        u128::from(half(1)) << 64 | u128::from(half(2))
    })
}

/// `8-4-4-4-12` hex digits (either case) as 128 bits.
fn parse_uuid(v: &str) -> Option<u128> {
    let b = v.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut n: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let d = (c as char).to_digit(16)?;
        n = n << 4 | u128::from(d);
    }
    Some(n)
}

/// Folds a `u128` key (random bits already) into a well-mixed `u64`.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u128(&mut self, v: u128) {
        let folded = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
        self.0 = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (folded >> 29);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_other_values() {
        let mut s = UuidSet::new();
        assert!(s.insert("0d2bdcc5-5fe8-44a0-b751-1b5a5327297a"));
        assert!(!s.insert("0D2BDCC5-5FE8-44A0-B751-1B5A5327297A"), "hex case does not matter");
        assert!(s.insert("0d2bdcc5-5fe8-44a0-b751-1b5a5327297b"));
        assert!(s.insert("req-1"));
        assert!(!s.insert("req-1"));
        assert!(s.insert("req-2"));
        assert!(s.contains("req-2") && !s.contains("req-3"));
        assert_eq!(s.len(), 4);
        assert!(s.insert("f0000000-0000-0000-0000-000000000000"));
        assert!(s.insert("70000000-0000-0000-0000-000000000000"));
        assert_eq!(s.len(), 6);
        // As read back from a file with formulas neutralised.
        assert!(s.insert("=cmd|x"));
        assert!(!s.insert("'=cmd|x"));
        assert!(s.insert("'plain") && !s.insert("'plain"));
        assert!(s.insert("plain"), "only a neutralised formula loses its `'`");
    }
}
