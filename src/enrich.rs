//! Enrichment: lookup tables fill the names raw Local Edition lines lack;
//! optional masking of keys. Filled in by the foundation work.
