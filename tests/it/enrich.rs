//! Enrichment through the real binary: `parse --lookups` with the shipped
//! example tables fills the names of simulated raw lines and of the
//! reference sample, never overwrites a name a line has, masks on request,
//! and refuses a broken lookup file naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

// ---------------------------------------------------------------------
// One masking rule, in every field and every output that masks.

/// A key that URIs carry as it is.
pub(crate) const KEY: &str = "k7q2mzp4rb9d3hxw8cyn5ta6";
/// A key with characters a URI percent-encodes.
pub(crate) const KEY_ENCODED: &str = "Zq+/8w==Tk3mP9x!vB2$cD7e";
/// A key too short to keep anything of.
pub(crate) const KEY_SHORT: &str = "k1x2";
/// An OAuth access token.
pub(crate) const TOKEN_OAUTH: &str = "tok-ABCDEFGH12345678";

/// Every byte percent-encoded (`upper`: `%2B`, else `%2b`), or only the
/// bytes a URI must encode (`all` false).
pub(crate) fn pct(v: &str, all: bool, upper: bool) -> String {
    v.bytes()
        .map(|b| {
            if !all && (b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
                (b as char).to_string()
            } else if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// `%XX` sequences decoded (others kept), lossily.
fn pct_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Local Edition JSON lines (`le-json`) carrying the secrets in every
/// field they appear in on real traffic (`uri`, `request_id`, `referrer`),
/// plainly and percent-encoded: `n` of each of the five variants, their
/// `request_uuid`s `mask-<i>`.
pub(crate) fn secret_lines(n: usize) -> Vec<String> {
    let base: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(support::sample("le-access.ndjson")).unwrap().lines().next().unwrap()).unwrap();
    let variants: [(&str, &str, String, String, String); 5] = [
        (
            KEY,
            "-",
            format!("/v2/orders?api_key={KEY}&page=2"),
            format!("https://shop.example.com/?key={KEY}"),
            format!("1542643301.250_{KEY}_svc"),
        ),
        (
            KEY_ENCODED,
            "-",
            format!("/v2/orders?api_key={}", pct(KEY_ENCODED, false, true)),
            format!("https://shop.example.com/cart?k={}", pct(KEY_ENCODED, false, false)),
            format!("1542643301.250_{KEY_ENCODED}_svc"),
        ),
        (KEY, "-", format!("/v2/orders?api_key={}", pct(KEY, true, true)), "-".into(), "1542643301.250__svc".into()),
        (KEY_SHORT, "-", format!("/v2/x?api_key={KEY_SHORT}"), "-".into(), format!("1542643301.250_{KEY_SHORT}_svc")),
        (
            KEY,
            TOKEN_OAUTH,
            format!("/v2/orders?access_token={TOKEN_OAUTH}&api_key={KEY}"),
            format!("https://a.example/#t={TOKEN_OAUTH}"),
            "-".into(),
        ),
    ];
    let mut lines = Vec::new();
    for i in 0..n {
        for (j, (key, token, uri, referrer, request_id)) in variants.iter().enumerate() {
            let mut v = base.clone();
            v["api_key"] = (*key).into();
            v["oauth_access_token"] = (*token).into();
            v["uri"] = uri.clone().into();
            v["referrer"] = referrer.clone().into();
            v["request_id"] = request_id.clone().into();
            v["request_uuid"] = format!("mask-{:05}", i * variants.len() + j).into();
            lines.push(v.to_string());
        }
    }
    lines
}

/// Asserts that no field of `record` carries a secret of [`secret_lines`],
/// as it is or percent-encoded, and that the secret fields are masked
/// keeping `keep` characters at each end (or entirely, when short).
pub(crate) fn assert_masked(record: &serde_json::Value, keep: usize) {
    let obj = record.as_object().unwrap_or_else(|| panic!("not an object: {record}"));
    for (name, v) in obj {
        let Some(v) = v.as_str() else { continue };
        for secret in [KEY, KEY_ENCODED, KEY_SHORT, TOKEN_OAUTH] {
            assert!(!v.contains(secret) && !pct_decode(v).contains(secret), "`{name}` carries {secret:?}: {v:?} in {record}");
        }
    }
    let masked = |secret: &str| {
        let n = secret.chars().count();
        if n >= 4 * keep {
            format!("{}{}{}", &secret[..keep], "*".repeat(n - 2 * keep), &secret[n - keep..])
        } else {
            "*".repeat(n)
        }
    };
    let key = match record["api_key"].as_str().unwrap() {
        k if k.starts_with(&KEY[..1]) && k.len() == KEY.len() => KEY,
        k if k.len() == KEY_SHORT.len() => KEY_SHORT,
        _ => KEY_ENCODED,
    };
    assert_eq!(record["api_key"], masked(key), "{record}");
    if record["oauth_access_token"] != "-" {
        assert_eq!(record["oauth_access_token"], masked(TOKEN_OAUTH), "{record}");
    }
}

/// A bridge process, killed if the test ends before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `[enrich]` masking applies to every output: the archive and upstream
/// get no record with a secret in any field (the key in `uri`,
/// `request_id` and `referrer`, percent-encoded too; a short key whole).
#[test]
fn enrich_masking_leaves_the_key_in_no_field_of_the_archive_or_upstream() {
    use crate::support_upstream::{Collector, Format};
    let collector = Collector::start(Format::Ndjson);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let archive = dir.path().join("out.ndjson");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {state:?}\n[[source]]\npaths = [{glob:?}]\nformat = \"le-json\"\npoll_interval_ms = 50\n\
             [enrich]\nmask_api_key_keep = 4\nmask_oauth_token_keep = 4\n\
             [file_output]\npath = {archive:?}\nfsync_interval_ms = 20\n\
             [upstream]\nurl = {url:?}\n\
             [status]\nlisten = \"127.0.0.1:0\"\n",
            state = dir.path().join("state").display().to_string(),
            glob = logs.join("access*.log").display().to_string(),
            archive = archive.display().to_string(),
            url = collector.url("/ingest"),
        ),
    )
    .unwrap();
    let lines = secret_lines(60);
    std::fs::write(logs.join("access_worker1.log"), lines.join("\n") + "\n").unwrap();
    let mut bridge = Running(support::spawn_bridge(&cfg, &dir.path().join("bridge.log")));
    let archived: Vec<serde_json::Value> = support::poll_until(Duration::from_secs(60), "every record archived", || {
        let text = std::fs::read_to_string(&archive).ok()?;
        let v: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (v.len() >= lines.len()).then_some(v)
    });
    support::poll_until(Duration::from_secs(60), "every record upstream", || {
        (collector.delivered_set().len() >= lines.len()).then_some(())
    });
    let sent: Vec<serde_json::Value> = collector
        .received()
        .iter()
        .filter(|r| r.status / 100 == 2)
        .flat_map(|r| crate::support_upstream::documents(Format::Ndjson, &r.body))
        .collect();
    assert!(sent.len() >= lines.len());
    for r in archived.iter().chain(&sent) {
        assert_masked(r, 4);
    }
    let st = support::terminate(&mut bridge.0, Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
}
