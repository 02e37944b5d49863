//! The simulator's tests: determinism, realism, and that what it writes
//! parses to what it expects.

use std::path::{Path, PathBuf};

use crate::parse::Format;
use crate::record::Field;

use super::*;
use crate::enrich::{Enricher, TableKind};

#[test]
fn same_seed_same_calls() {
    let mut a = Generator::new(7);
    let mut b = Generator::new(7);
    let mut c = Generator::new(8);
    let xs: Vec<_> = (0..50).map(|_| a.next_call(1_700_000_000_000, 0).render(Format::Le6)).collect();
    let ys: Vec<_> = (0..50).map(|_| b.next_call(1_700_000_000_000, 0).render(Format::Le6)).collect();
    let zs: Vec<_> = (0..50).map(|_| c.next_call(1_700_000_000_000, 0).render(Format::Le6)).collect();
    assert_eq!(xs, ys);
    assert_ne!(xs, zs);
}

#[test]
fn uuids_are_v4_and_unique() {
    let mut g = Generator::new(1);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5000 {
        let c = g.next_call(0, 0);
        let u = c.request_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert!(seen.insert(u.to_string()));
    }
}

#[test]
fn status_mix_is_realistic() {
    let mut g = Generator::new(3);
    let calls: Vec<_> = (0..10_000).map(|_| g.next_call(0, 0)).collect();
    let share = |p: &dyn Fn(&SimCall) -> bool| calls.iter().filter(|c| p(c)).count() as f64 / calls.len() as f64;
    assert!(share(&|c| c.status < 300) > 0.8);
    assert!(share(&|c| c.error_code == "ERR_403_DEVELOPER_INACTIVE") > 0.005);
    assert!(share(&|c| c.error_code.starts_with("ERR_429_")) > 0.01);
    assert!(share(&|c| c.status >= 500 && c.source == Source::Api) > 0.01);
    assert!(share(&|c| c.key.is_none()) > 0.003);
    // Traffic-manager errors say so, origin errors do not.
    for c in &calls {
        assert_eq!(c.error_code != "-", c.source == Source::Mashery, "{c:?}");
    }
}

#[test]
fn le6_line_has_71_fields_like_the_sample() {
    let mut g = Generator::new(11);
    let c = g.next_call(1_707_986_837_343, 0);
    let line = c.render(Format::Le6);
    // Tokenise as the format does: quoted and bracketed fields are one.
    let mut fields = Vec::new();
    let mut rest = line.as_str();
    while !rest.is_empty() {
        let (tok, tail) = match rest.as_bytes()[0] {
            b'"' => {
                let end = rest[1..].find('"').unwrap() + 2;
                (&rest[..end], &rest[end..])
            }
            b'[' => {
                let end = rest.find(']').unwrap() + 1;
                (&rest[..end], &rest[end..])
            }
            _ => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        fields.push(tok);
        rest = tail.trim_start_matches(' ');
    }
    assert_eq!(fields.len(), 71, "{line}");
    let sample = "15-02-2024 08:47:17.389 INFO PROXY_ACCESS - tml.api.mashspud.com 10.128.0.81 dd1a5b27-e3ea-4139-95a4-a72c1609673e";
    assert_eq!(fields[..4].join(" ").len(), sample.split(' ').take(4).collect::<Vec<_>>().join(" ").len());
    assert_eq!(fields[2], "INFO");
    assert_eq!(fields[3], "PROXY_ACCESS");
    assert_eq!(fields[7], c.request_uuid());
    assert_eq!(fields[9], "[15/Feb/2024:08:47:17 +0000]");
    assert_eq!(fields[15], c.request_id());
    assert!(fields[15].starts_with("1707986837.343_"));
    assert_eq!(fields[47], "v3");
    assert_eq!(fields[48], "local");
    assert_eq!(fields[53], format!("{}", c.endpoint.uuid));
    assert_eq!(fields[67], format!("\"{}\"", c.response_le()));
}

#[test]
fn expected_records_follow_normalisation() {
    let mut g = Generator::new(5);
    for _ in 0..500 {
        let c = g.next_call(1_542_643_301_250, 0);
        for f in [Format::Le6, Format::Le5Csv, Format::LeJson, Format::EcleCsv, Format::Ecls] {
            let r = c.expected(f);
            assert_eq!(r.get(Field::LogType), "ML");
            let rs = r.get(Field::ResponseString);
            assert!(rs.starts_with(&c.status.to_string()) && (rs.ends_with("_API") || rs.ends_with("_Mashery")), "{rs}");
            assert!(!rs.contains(' '));
            assert!(r.get(Field::RequestId).ends_with(c.service.id));
            assert!(!r.get(Field::TrafficManager).is_empty());
            assert_eq!(r.get(Field::ServiceId), c.service.id);
            assert!(r.request_time_ms.is_some());
        }
        assert_eq!(c.expected(Format::Le6).get(Field::RequestTime), "2018-11-19T16:01:41Z");
        assert_eq!(c.expected(Format::LeJson).get(Field::ServiceName), "");
    }
}

#[test]
fn le5_csv_rows_match_the_header() {
    let mut g = Generator::new(9);
    let cols = le5_csv_header().split(',').count();
    assert_eq!(cols, 35);
    for _ in 0..200 {
        let row = g.next_call(0, 0).render(Format::Le5Csv);
        // Quoted cells hold commas: count outside quotes.
        let mut n = 1;
        let mut q = false;
        for ch in row.chars() {
            match ch {
                '"' => q = !q,
                ',' if !q => n += 1,
                _ => {}
            }
        }
        assert_eq!(n, cols, "{row}");
    }
}

#[test]
fn le_json_lines_are_json_with_le_names() {
    let mut g = Generator::new(2);
    for _ in 0..200 {
        let c = g.next_call(1_542_643_301_250, 0);
        let v: serde_json::Value = serde_json::from_str(&c.render(Format::LeJson)).unwrap();
        assert_eq!(v["request_uuid"], c.request_uuid());
        assert_eq!(v["spkey"], c.service.id);
        assert_eq!(v["service_name"], "");
        assert_eq!(v["request_time"], "2018-11-19T16:01:41.250Z");
        assert!(v["status"].is_u64() && v["exec_time"].is_number());
        assert_eq!(v["exec_time"].to_string(), c.expected(Format::LeJson).get(Field::TotalRequestExecTime));
    }
}

/// The shipped lookup tables know every id the simulator emits, with the
/// same names the enriched formats carry.
#[test]
fn example_lookups_match_the_estate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lookups");
    let files: Vec<PathBuf> = ["keys.csv", "services.csv", "endpoints.csv", "plans.json"].iter().map(|f| dir.join(f)).collect();
    let e = Enricher::new(&files, None, None).unwrap();
    let mut g = Generator::new(4);
    let tables = e.tables();
    for _ in 0..2000 {
        let c = g.next_call(0, 0);
        let mut r = c.expected(Format::LeJson);
        e.enrich(&tables, &mut r);
        let want = c.expected(Format::EcleCsv);
        for f in [Field::ServiceName, Field::EndpointName, Field::PlanName, Field::PlanUuid, Field::PackageName, Field::PackageUuid] {
            let w = want.get(f);
            let is_name = matches!(f, Field::ServiceName | Field::EndpointName);
            // Calls without a key have no plan; names the enriched
            // formats left out (`-`) are filled by the lookups.
            if (c.key.is_some() || is_name) && !(c.names_missing && is_name) {
                assert_eq!(r.get(f), w, "{} of {c:?}", f.name());
            }
        }
    }
    let s = e.stats();
    for k in TableKind::ALL {
        assert_eq!(s.table(k).misses, 0, "{k}");
    }
}

/// Every rendered line parses (with the crate's parsers) to exactly the
/// record `expected` promises, in every format.
#[test]
fn rendered_lines_parse_to_the_expected_record() {
    use crate::parse::{LineKind, LineParser};
    for f in [Format::Le6, Format::Le5Csv, Format::LeJson, Format::EcleCsv, Format::Ecls] {
        let mut g = Generator::new(21);
        let mut p = LineParser::new(f, 1 << 20);
        if f == Format::Le5Csv {
            assert_eq!(p.parse_line(le5_csv_header().as_bytes(), &mut Vec::new()).unwrap(), LineKind::Header);
        }
        for _ in 0..2000 {
            let c = g.next_call(1_700_000_000_123, 250);
            let line = c.render(f);
            let mut out = Vec::new();
            let kind = p.parse_line(line.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{f}: {e}: {line}"));
            assert_eq!(kind, LineKind::Records(1), "{f}: {line}");
            assert_eq!(out[0], c.expected(f), "{f}: {line}");
        }
    }
}
