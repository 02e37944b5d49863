//! Enrichment through the real binary: `parse --lookups` with the shipped
//! example tables fills the names of simulated raw lines and of the
//! reference sample, never overwrites a name a line has, masks on request,
//! and refuses a broken lookup file naming it.

use std::path::{Path, PathBuf};

use crate::support;

/// The shipped example lookup tables.
fn example_lookups() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lookups");
    ["keys.csv", "services.csv", "endpoints.csv", "plans.json"].iter().map(|f| dir.join(f)).collect()
}

/// Runs `parse` with the lookup files and extra args; asserts success and
/// returns the ndjson records.
fn parse(lookups: &[PathBuf], args: &[&str], file: &Path) -> Vec<serde_json::Value> {
    let mut cmd = support::cmd();
    cmd.arg("parse").args(["--output", "ndjson", "--no-progress"]);
    for l in lookups {
        cmd.arg("--lookups").arg(l);
    }
    let out = cmd.args(args).arg(file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "parse failed: {stderr}");
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn example_lookups_fill_simulated_raw_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = support::run(&[
        "simulate",
        "--format",
        "le-json",
        "--dir",
        dir.path().to_str().unwrap(),
        "--rate",
        "500",
        "--duration",
        "1",
        "--burst",
        "--seed",
        "12",
    ]);
    assert!(out.status.success());
    let records = parse(&example_lookups(), &["--format", "le-json"], &dir.path().join("access_worker0.log"));
    assert_eq!(records.len(), 500);
    let mut with_key = 0;
    for r in &records {
        assert_ne!(r["service_name"], "", "{r}");
        assert_ne!(r["endpoint_name"], "", "{r}");
        if r["api_key"] != "unknown" {
            with_key += 1;
            for f in ["plan_uuid", "plan_name", "package_name", "package_uuid"] {
                assert_ne!(r[f], "", "{f} of {r}");
            }
        } else {
            assert_eq!(r["plan_name"], "", "a call without key has no plan: {r}");
        }
    }
    assert!(with_key > 450, "{with_key}");
}

#[test]
fn example_lookups_fill_the_reference_sample() {
    let records = parse(&example_lookups(), &["--format", "le-json"], &support::sample("le-access.ndjson"));
    assert_eq!(records.len(), 2);
    let r = &records[0];
    assert_eq!(r["service_name"], "Orders");
    assert_eq!(r["endpoint_name"], "Orders V2");
    assert_eq!(r["plan_name"], "Gold");
    assert_eq!(r["package_name"], "Retail Package");
    assert_eq!(r["org_name"], "Acme Retail");
    // api_key `unknown`: service and endpoint known, no plan.
    assert_eq!(records[1]["service_name"], "Orders");
    assert_eq!(records[1]["plan_name"], "");
}

#[test]
fn names_a_line_has_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services.json");
    std::fs::write(&services, r#"[{"service_id":"b2qxuqhyh652hma8jw99gx5y","service_name":"Renamed"}]"#).unwrap();
    let records = parse(&[services], &["--format", "le6"], &support::sample("le6-enriched-access.log"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["service_name"], "Test_API3");
}

#[test]
fn mask_keep_masks_key_and_token() {
    let records = parse(&example_lookups(), &["--format", "le-json", "--mask-keep", "4"], &support::sample("le-access.ndjson"));
    assert_eq!(records[0]["api_key"], "k7q2****************5ta6");
    assert!(!records[0]["request_id"].as_str().unwrap().contains("k7q2mzp4rb9d3hxw8cyn5ta6"));
    // Lookups use the real key before it is masked.
    assert_eq!(records[0]["plan_name"], "Gold");
    assert_eq!(records[1]["api_key"], "unknown");
}

#[test]
fn broken_lookup_file_is_refused_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("keys.csv");
    std::fs::write(&bad, "api_key,plan_uuid\nk1,p1\nk2,p2,extra\n").unwrap();
    let out = support::cmd()
        .args(["parse", "--format", "le-json", "--lookups"])
        .arg(&bad)
        .arg(support::sample("le-access.ndjson"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("keys.csv") && stderr.contains("line 3"), "{stderr}");
    assert!(out.stdout.is_empty());
}
