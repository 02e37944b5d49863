//! The ingest stage's tests: table-driven cases, and properties over
//! random inputs (the outcome does not depend on how the bytes are cut,
//! and resuming at [`Ingest::offset`] neither repeats nor loses a record).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::parse::RejectReason::{self, BadJson, TooLong};
use crate::record::Shape;

/// A reject as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rej {
    offset: u64,
    line: u64,
    reason: RejectReason,
    detail: String,
    raw: Vec<u8>,
}

/// Everything an input gave.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// Each record as NDJSON.
    records: Vec<String>,
    rejects: Vec<Rej>,
    counts: Counts,
    /// `partial` of the last call.
    partial: bool,
}

const OBSERVED_MS: i64 = 1_704_067_200_000;

/// Feeds `input` cut at `cuts` (increasing), the last piece with `last`;
/// checks the carry bound and the offsets after every call. Returns the
/// outcome, the ingest and what it did not consume.
fn run_cuts(format: Format, max: usize, start: u64, input: &[u8], cuts: &[usize], last: bool) -> (Outcome, Ingest, Vec<u8>) {
    let tables = Lookups::default();
    let cx = Context { tables: &tables, enricher: None, observed_ms: Some(OBSERVED_MS), host: "" };
    let mut ing = Ingest::new(format, max, start);
    let mut o = Outcome::default();
    let mut carry: Vec<u8> = Vec::new();
    let mut prev = 0;
    let ends: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).chain([input.len()]).collect();
    for (i, &cut) in ends.iter().enumerate() {
        let is_last = last && i + 1 == ends.len();
        let mut data = std::mem::take(&mut carry);
        data.extend_from_slice(&input[prev..cut]);
        prev = cut;
        let mut recs = Vec::new();
        let mut rej: Vec<Rejected<'_>> = Vec::new();
        let fed = ing.feed(&data, is_last, &cx, &mut recs, &mut rej);
        for r in &recs {
            let mut b = Vec::new();
            r.write_json(Shape::Ndjson, &mut b);
            o.records.push(String::from_utf8(b).unwrap());
        }
        o.rejects.extend(rej.iter().map(|r| Rej {
            offset: r.offset,
            line: r.line,
            reason: r.reject.reason,
            detail: r.reject.detail.clone(),
            raw: r.raw.to_vec(),
        }));
        o.partial = fed.partial;
        carry = data[fed.consumed..].to_vec();
        assert!(carry.len() <= 2 * (max + 1), "carried {} bytes with max_line_bytes {max}", carry.len());
        assert_eq!(ing.position(), start + cut as u64 - carry.len() as u64);
        assert!(ing.offset() <= ing.position());
        if is_last {
            assert!(carry.is_empty(), "the last call consumes everything");
        }
    }
    o.counts = ing.counts();
    (o, ing, carry)
}

/// The whole input in one call.
fn whole(format: Format, max: usize, input: &[u8]) -> Outcome {
    run_cuts(format, max, 0, input, &[], true).0
}

fn uuids(o: &Outcome) -> Vec<String> {
    o.records.iter().map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["request_uuid"].as_str().unwrap().to_string()).collect()
}

/// The outcome in short, for failure messages.
fn describe(o: &Outcome) -> String {
    let rejects: Vec<String> =
        o.rejects.iter().map(|r| format!("{}@{} {} {:?} ({} bytes)", r.line, r.offset, r.reason, r.detail, r.raw.len())).collect();
    format!("{} records {:?}, rejects {rejects:?}, {:?}, partial {}", o.records.len(), uuids(o), o.counts, o.partial)
}

/// The input in short, for failure messages.
fn show(input: &[u8]) -> String {
    let s = String::from_utf8_lossy(input);
    if s.len() < 3000 {
        format!("{s:?}")
    } else {
        format!("{} bytes", s.len())
    }
}

fn summary(o: &Outcome) -> Vec<(u64, u64, RejectReason)> {
    o.rejects.iter().map(|r| (r.line, r.offset, r.reason)).collect()
}

fn json_line(uuid: &str) -> String {
    format!("{{\"request_uuid\":\"{uuid}\",\"request_time\":\"2024-01-01T00:00:00Z\",\"status\":\"200\"}}")
}

fn pretty(uuid: &str) -> String {
    format!("{{\n  \"request_uuid\": \"{uuid}\",\n  \"request_time\": \"2024-01-01T00:00:00Z\",\n  \"status\": \"200\"\n}}")
}

fn sample() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/samples/ecls-message.json")).unwrap()
}

#[test]
fn lines_become_records_stamped_with_the_observed_time() {
    let input = format!("{}\n\n{}\n", json_line("a"), json_line("b"));
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a", "b"]);
    assert!(o.rejects.is_empty());
    assert_eq!(o.counts, Counts { lines: 3, headers: 0, blank: 1 });
    let v: serde_json::Value = serde_json::from_str(&o.records[0]).unwrap();
    assert_eq!(v["sync_delay_ms"].as_i64(), Some(0), "request_time is the observed time");
    assert!(!o.partial);
}

#[test]
fn a_partial_line_is_carried_until_its_newline_or_the_end() {
    let input = format!("{}\n{}", json_line("a"), json_line("b"));
    let (o, ing, carry) = run_cuts(Format::LeJson, 1000, 0, input.as_bytes(), &[], false);
    assert_eq!(uuids(&o), ["a"]);
    assert_eq!(carry, json_line("b").as_bytes());
    assert_eq!(ing.offset(), json_line("a").len() as u64 + 1);
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a", "b"]);
    assert!(o.partial, "the last line had no newline");
    assert_eq!(o.counts.lines, 2);
}

#[test]
fn a_pretty_printed_ecls_message_is_one_document() {
    let msg = sample();
    let lines = msg.iter().filter(|&&b| b == b'\n').count() as u64;
    let input = [&msg[..], b"\n", &msg[..]].concat();
    let o = whole(Format::Ecls, 1 << 20, &input);
    assert_eq!(uuids(&o), ["132da36d-37b7-41e4-9d03-5e9f900f13c4"; 2]);
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
    assert_eq!(o.counts.lines, 2 * lines + 1);
    assert_eq!(o.counts.blank, 1);
    // And through `auto`, which decides on the document.
    let o = whole(Format::Auto, 1 << 20, &input);
    assert_eq!(o.records.len(), 2, "{:?}", o.rejects);
    // The same message on one line gives the same record.
    let compact = serde_json::from_slice::<serde_json::Value>(&msg).unwrap().to_string();
    let one = whole(Format::Ecls, 1 << 20, format!("{compact}\n").as_bytes());
    assert_eq!(one.records[0], o.records[0]);
}

#[test]
fn the_offset_stays_at_an_open_document() {
    let doc = pretty("d");
    let first = json_line("a");
    let input = format!("{first}\n{doc}\n");
    // Cut in the middle of the document.
    let cut = first.len() + 1 + doc.len() / 2;
    let (o, ing, carry) = run_cuts(Format::LeJson, 1000, 0, &input.as_bytes()[..cut], &[], false);
    assert_eq!(uuids(&o), ["a"]);
    assert_eq!(ing.offset(), first.len() as u64 + 1);
    assert_eq!(carry, &input.as_bytes()[first.len() + 1..cut]);
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a", "d"]);
}

#[test]
fn a_lone_brace_that_opens_nothing_is_one_reject_and_the_next_line_is_read() {
    let input = format!("{{\n{}\n{}\n", json_line("a"), json_line("b"));
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a", "b"]);
    assert_eq!(summary(&o), [(1, 0, BadJson)]);
    assert_eq!(o.rejects[0].raw, b"{");
}

#[test]
fn a_document_cut_off_by_the_end_is_one_reject_at_its_first_line() {
    let doc = pretty("d");
    let head: String = doc.lines().take(3).map(|l| format!("{l}\n")).collect();
    let input = format!("{}\n{head}", json_line("a"));
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a"]);
    assert_eq!(summary(&o), [(2, json_line("a").len() as u64 + 1, BadJson)]);
    assert_eq!(o.rejects[0].raw, head.trim_end_matches('\n').as_bytes(), "the document without its last newline");
    assert!(o.partial);
}

#[test]
fn an_over_long_line_is_rejected_at_once_and_skipped() {
    let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000));
    let input = format!("{}\n{long}\n{}\n", json_line("a"), json_line("b"));
    let start = json_line("a").len() as u64 + 1;
    // Fed in small pieces: the reject comes as soon as the line is too
    // long, and the offset stays at its start until it ends.
    let a_end = json_line("a").len() + 1;
    let (o, ing, carry) = run_cuts(Format::LeJson, 1000, 0, &input.as_bytes()[..a_end + 2000], &[a_end + 500], false);
    assert_eq!(summary(&o), [(2, start, TooLong)]);
    assert_eq!(o.rejects[0].detail, "line longer than max_line_bytes 1000");
    assert_eq!(o.rejects[0].raw.len(), 1001);
    assert!(carry.is_empty() && ing.skipping());
    assert_eq!(ing.offset(), start);
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a", "b"]);
    assert_eq!(summary(&o), [(2, start, TooLong)]);
    assert_eq!(o.counts.lines, 3);
}

#[test]
fn an_over_long_document_is_one_reject_and_skipped_to_its_end() {
    let body: String = (0..100).map(|i| format!("  \"k{i}\": \"{}\",\n", "v".repeat(20))).collect();
    let doc = format!("{{\n{body}  \"end\": 1\n}}");
    let input = format!("{}\n{doc}\n{}\n", json_line("a"), json_line("b"));
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a", "b"]);
    assert_eq!(summary(&o), [(2, json_line("a").len() as u64 + 1, TooLong)]);
    assert_eq!(o.rejects[0].detail, "document longer than max_line_bytes 1000");
    assert_eq!(o.counts.lines, 2 + doc.lines().count() as u64);
    // A new object where the over-long document cannot continue ends it.
    let cut: String = doc.lines().take(60).map(|l| format!("{l}\n")).collect();
    let input = format!("{cut}{}\n", json_line("b"));
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["b"]);
    assert_eq!(summary(&o), [(1, 0, TooLong)]);
}

#[test]
fn line_numbers_are_unknown_when_reading_starts_inside_the_file() {
    let input = format!("junk\n{}\n", json_line("a"));
    let (o, ing, _) = run_cuts(Format::LeJson, 1000, 500, input.as_bytes(), &[], true);
    assert_eq!(summary(&o), [(0, 500, BadJson)]);
    assert_eq!(ing.offset(), 500 + input.len() as u64);
}

#[test]
fn crlf_lines_and_documents() {
    let doc = pretty("d").replace('\n', "\r\n");
    let input = format!("{}\r\n{doc}\r\n", json_line("a"));
    let o = whole(Format::LeJson, 1000, input.as_bytes());
    assert_eq!(uuids(&o), ["a", "d"]);
    assert!(o.rejects.is_empty(), "{:?}", o.rejects);
}

#[test]
fn documents_are_only_joined_in_json_formats() {
    // In an le6 file, a lone `{` is a line like any other.
    let input = "{\n}\n";
    let o = whole(Format::Le6, 1000, input.as_bytes());
    assert_eq!(o.rejects.len(), 2);
}

#[test]
fn rejects_are_written_in_batches_and_tallied() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::rejects::RejectsFile::new(
        dir.path().join("rejects.ndjson"),
        crate::rotating::Rotation { rotate_bytes: 1 << 30, keep_files: 1 },
    );
    let input = "x\n".repeat(100_000);
    let tables = Lookups::default();
    let cx = Context { tables: &tables, enricher: None, observed_ms: Some(1), host: "" };
    let mut ing = Ingest::new(Format::LeJson, 1000, 0);
    let mut tally = RejectTally::default();
    let mut batch = RejectBatch::new(Some(&file), "f.log", 1, &mut tally);
    let mut out = Vec::new();
    ing.feed(input.as_bytes(), false, &cx, &mut out, &mut batch);
    assert!(batch.held_capacity() <= 2 * rejects::REJECT_BATCH, "{} rejects were held at once", batch.held_capacity());
    drop(batch);
    assert_eq!(tally.total(), 100_000);
    assert_eq!(tally.samples.len(), rejects::REJECT_SAMPLES);
    let written = std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap();
    assert_eq!(written.lines().count(), 100_000);
}

#[test]
fn the_bridge_host_is_stamped_on_every_record_and_only_when_given() {
    let tables = Lookups::default();
    let input = b"{\"request_uuid\":\"u1\",\"request_time\":\"2024-01-01T00:00:00Z\"}\n{\"request_uuid\":\"u2\",\"request_time\":\"2024-01-01T00:00:01Z\"}\n";
    for (host, want) in [("tm-dc1-07", Some("tm-dc1-07")), ("", None)] {
        let cx = Context { tables: &tables, enricher: None, observed_ms: Some(OBSERVED_MS), host };
        let mut ing = Ingest::new(Format::LeJson, 1000, 0);
        let (mut out, mut rej) = (Vec::new(), Vec::<Rejected<'_>>::new());
        ing.feed(input, true, &cx, &mut out, &mut rej);
        assert_eq!(out.len(), 2);
        for r in &out {
            let mut b = Vec::new();
            r.write_json(Shape::Ndjson, &mut b);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v.get("host").and_then(|h| h.as_str()), want, "{v}");
        }
    }
}

/// Random inputs made of the pieces that matter: records, pretty-printed
/// documents, lone braces, over-long lines and documents, junk, blank and
/// CRLF lines.
fn random_input(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..rng.random_range(1..25) {
        let id = format!("u{i}");
        let piece = match rng.random_range(0..14) {
            0..=3 => json_line(&id),
            4 | 5 => pretty(&id),
            6 => "{".to_string(),
            7 => "}".to_string(),
            8 => "junk, not json".to_string(),
            9 => String::new(),
            10 => format!("{}\r", json_line(&id)),
            11 => format!("{{\"pad\":\"{}\"}}", "x".repeat(rng.random_range(max - 30..max * 3))),
            12 => {
                let body: String = (0..rng.random_range(1..40)).map(|k| format!("  \"k{k}\": \"{{}}[\",\n")).collect();
                format!("{{\n{body}  \"request_uuid\": \"{id}\"\n}}")
            }
            _ => format!("{}{{", " ".repeat(rng.random_range(0..max * 2))),
        };
        s.push_str(&piece);
        if rng.random_range(0..20) > 0 {
            s.push('\n');
        }
    }
    s.into_bytes()
}

fn random_cuts(rng: &mut StdRng, len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..rng.random_range(0..12)).map(|_| rng.random_range(0..=len)).collect();
    cuts.sort_unstable();
    cuts
}

#[test]
fn the_outcome_does_not_depend_on_how_the_bytes_are_cut() {
    let mut rng = StdRng::seed_from_u64(15);
    for round in 0..400 {
        let max = 300;
        let input = random_input(&mut rng, max);
        let format = if round % 3 == 0 { Format::Auto } else { Format::LeJson };
        let reference = whole(format, max, &input);
        for _ in 0..4 {
            let cuts = random_cuts(&mut rng, input.len());
            let (o, _, _) = run_cuts(format, max, 0, &input, &cuts, true);
            assert!(
                o == reference,
                "round {round}: cut at {cuts:?}:\n{}\nwhole:\n{}\ninput {}",
                describe(&o),
                describe(&reference),
                show(&input)
            );
        }
        if input.len() < 3000 {
            let every: Vec<usize> = (1..input.len()).collect();
            let (o, _, _) = run_cuts(format, max, 0, &input, &every, true);
            assert!(
                o == reference,
                "round {round}: byte by byte:\n{}\nwhole:\n{}\ninput {}",
                describe(&o),
                describe(&reference),
                show(&input)
            );
        }
    }
}

#[test]
fn resuming_at_the_offset_neither_repeats_nor_loses_a_record() {
    let mut rng = StdRng::seed_from_u64(16);
    for round in 0..400 {
        let max = 300;
        let input = random_input(&mut rng, max);
        let reference = whole(Format::LeJson, max, &input);
        // Stop after some calls (a shutdown between chunks), then read
        // again from the offset, as the next reader does.
        let cuts = random_cuts(&mut rng, input.len());
        let stop = cuts.last().copied().unwrap_or(0);
        let (before, ing, _) = run_cuts(Format::LeJson, max, 0, &input[..stop], &cuts, false);
        let resume = ing.offset();
        let (after, _, _) = run_cuts(Format::LeJson, max, resume, &input[resume as usize..], &[], true);
        let mut records = before.records.clone();
        records.extend(after.records.iter().cloned());
        assert!(
            records == reference.records,
            "round {round}: stopped at {stop}, resumed at {resume}: {:?} then {:?}, whole {:?}; input {}",
            uuids(&before),
            uuids(&after),
            uuids(&reference),
            show(&input)
        );
    }
}

/// The `parse` command's former `read_line` test (`bounded_lines`), kept
/// on the stage that replaced it: a line is kept up to `max_line_bytes + 1`
/// bytes, offsets count every byte consumed (terminators included), and
/// the last line needs no newline.
#[test]
fn bounded_lines() {
    let o = whole(Format::LeJson, 8, b"short\nthis line is long\r\nlast");
    let got: Vec<(u64, u64, RejectReason, &[u8])> = o.rejects.iter().map(|r| (r.line, r.offset, r.reason, r.raw.as_slice())).collect();
    assert_eq!(got, [(1, 0, BadJson, &b"short"[..]), (2, 6, TooLong, &b"this line"[..]), (3, 25, BadJson, &b"last"[..])]);
    assert_eq!(o.counts.lines, 3);
    assert!(o.partial, "the last line had no newline");
}
