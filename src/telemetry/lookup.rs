//! Lookup-table figures: the enricher counts its hits and misses per table
//! here, and says what each (re)load brought, so that `/status` (`enrich`)
//! and `/metrics` (`enrich_*`) show them without telemetry knowing the
//! enricher.
//!
//! The enricher holds a [`LookupStats`] and updates it (one relaxed atomic
//! add per lookup); the bridge registers the current one with
//! [`super::Telemetry::set_lookups`]. A reload that builds a new enricher
//! registers the new block, and the old block's counters are carried over,
//! so the figures never go backwards. The tables are named by the enricher
//! (`keys`, `services`, ...) and indexed in its order.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The lookup figures of one enricher. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LookupStats(Arc<LookupInner>);

/// The shared state behind [`LookupStats`].
#[derive(Debug)]
struct LookupInner {
    /// The lookup files, in load order.
    files: Vec<String>,
    /// One entry per table, in the enricher's order.
    tables: Box<[TableCounters]>,
    /// Successful reloads after the initial load.
    reloads: AtomicU64,
    /// Why the last reload failed; cleared by a successful one.
    last_error: Mutex<Option<String>>,
}

/// Figures of one table.
#[derive(Debug)]
struct TableCounters {
    /// The table's name.
    name: &'static str,
    /// Whether a lookup file provides it.
    loaded: AtomicBool,
    /// Ids it holds now.
    entries: AtomicU64,
    /// Lookups that found their id.
    hits: AtomicU64,
    /// Lookups of an id the table lacks.
    misses: AtomicU64,
}

impl LookupStats {
    /// The figures of an enricher loading `files` into the tables named
    /// `tables` (index = the enricher's table index); nothing loaded yet.
    pub fn new(files: &[PathBuf], tables: &[&'static str]) -> LookupStats {
        LookupStats(Arc::new(LookupInner {
            files: files.iter().map(|p| p.display().to_string()).collect(),
            tables: tables
                .iter()
                .map(|&name| TableCounters {
                    name,
                    loaded: AtomicBool::new(false),
                    entries: AtomicU64::new(0),
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                })
                .collect(),
            reloads: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }))
    }

    /// A lookup in table `table` found its id.
    #[inline]
    pub fn hit(&self, table: usize) {
        if let Some(t) = self.0.tables.get(table) {
            t.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A lookup in table `table` did not find its id.
    #[inline]
    pub fn miss(&self, table: usize) {
        if let Some(t) = self.0.tables.get(table) {
            t.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a (re)load left in table `table`.
    pub fn set_table(&self, table: usize, loaded: bool, entries: usize) {
        if let Some(t) = self.0.tables.get(table) {
            t.loaded.store(loaded, Ordering::Relaxed);
            t.entries.store(entries as u64, Ordering::Relaxed);
        }
    }

    /// A reload succeeded (the last error is cleared).
    pub fn reloaded(&self) {
        self.0.reloads.fetch_add(1, Ordering::Relaxed);
        *self.0.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A reload failed (the previous tables stay in use).
    pub fn reload_failed(&self, error: String) {
        *self.0.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// True when both handles count into the same figures.
    pub fn same(&self, other: &LookupStats) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The figures now.
    pub fn snapshot(&self) -> LookupSnapshot {
        LookupSnapshot {
            files: self.0.files.clone(),
            tables: self
                .0
                .tables
                .iter()
                .map(|t| TableSnapshot {
                    name: t.name,
                    loaded: t.loaded.load(Ordering::Relaxed),
                    entries: t.entries.load(Ordering::Relaxed),
                    hits: t.hits.load(Ordering::Relaxed),
                    misses: t.misses.load(Ordering::Relaxed),
                })
                .collect(),
            reloads: self.0.reloads.load(Ordering::Relaxed),
            last_reload_error: self.0.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// Lookup figures at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookupSnapshot {
    /// The lookup files, in load order.
    pub files: Vec<String>,
    /// One entry per table, in the enricher's order.
    pub tables: Vec<TableSnapshot>,
    /// Successful reloads.
    pub reloads: u64,
    /// Why the last reload failed, if it did.
    pub last_reload_error: Option<String>,
}

/// One table's figures at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSnapshot {
    /// The table's name.
    pub name: &'static str,
    /// Whether a lookup file provides it.
    pub loaded: bool,
    /// Ids it holds.
    pub entries: u64,
    /// Lookups that found their id.
    pub hits: u64,
    /// Lookups of an id the table lacks.
    pub misses: u64,
}

impl LookupSnapshot {
    /// Adds the counters (hits, misses, reloads) of `old`, by table name;
    /// a table this one lacks is added, unloaded, with its counters.
    pub fn add_counters(&mut self, old: &LookupSnapshot) {
        for o in &old.tables {
            match self.tables.iter_mut().find(|t| t.name == o.name) {
                Some(t) => {
                    t.hits += o.hits;
                    t.misses += o.misses;
                }
                None => self.tables.push(TableSnapshot { loaded: false, entries: 0, ..o.clone() }),
            }
        }
        self.reloads += old.reloads;
    }
}
