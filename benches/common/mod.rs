//! Helpers shared by the benchmarks (each bench includes this with
//! `mod common;`).

use std::path::PathBuf;

use calllog_bridge::enrich::Enricher;

/// An enricher over the shipped example lookups (`examples/lookups`: keys,
/// services, endpoints, plans) and how many lookup files it loaded; exits
/// with a message if they do not load.
pub fn example_enricher() -> (Enricher, usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lookups: Vec<PathBuf> = ["keys.csv", "services.csv", "endpoints.csv", "plans.json"]
        .iter()
        .map(|f| root.join("examples/lookups").join(f))
        .filter(|p| p.exists())
        .collect();
    match Enricher::new(&lookups, None, None) {
        Ok(e) => (e, lookups.len()),
        Err(e) => {
            eprintln!("cannot load the example lookups: {e}");
            std::process::exit(1);
        }
    }
}
