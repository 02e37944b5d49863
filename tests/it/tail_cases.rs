//! The file cases that break other tailers, one test each, against the
//! real binary: every written record must come out of the `[file_output]`
//! archive exactly once (checked by `request_uuid`).

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::tail_harness::{gzip, lines, uuids, Env, DEADLINE};

#[test]
fn rename_rotation_finishes_the_old_file_then_the_new_one() {
    let mut env = Env::new("access*.log*", "");
    env.start();
    let a = uuids("a", 200);
    env.append("access.log", &lines(&a));
    env.wait_any();
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    // The writer still holds the old file for a moment.
    let late = uuids("late", 20);
    env.append("access.log.1", &lines(&late));
    let b = uuids("b", 100);
    env.append("access.log", &lines(&b));
    env.expect_exactly(&[a, late, b].concat());
    env.stop();
}

#[test]
fn rename_rotation_out_of_the_globs_reads_the_old_file_to_its_end() {
    let mut env = Env::new("access.log", "");
    env.start();
    let a = uuids("a", 100);
    env.append("access.log", &lines(&a));
    env.wait_any();
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    let late = uuids("late", 30);
    env.append("access.log.1", &lines(&late));
    let b = uuids("b", 50);
    env.append("access.log", &lines(&b));
    env.expect_exactly(&[a, late, b].concat());
    env.stop();
}

#[test]
fn copytruncate_restarts_at_the_new_content() {
    let mut env = Env::new("access*.log*", "");
    env.start();
    let a = uuids("a", 200);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    // Lines written just before the copy may not have been read yet.
    let b = uuids("b", 50);
    env.append("access.log", &lines(&b));
    fs::copy(env.path("access.log"), env.path("access.log.1")).unwrap();
    fs::OpenOptions::new().write(true).open(env.path("access.log")).unwrap().set_len(0).unwrap();
    let c = uuids("c", 30);
    env.append("access.log", &lines(&c));
    env.expect_exactly(&[a, b, c].concat());
    env.stop();
}

#[test]
fn copytruncate_without_a_matching_copy_reads_the_new_content_once() {
    let mut env = Env::new("access.log", "");
    env.start();
    let a = uuids("a", 100);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    fs::OpenOptions::new().write(true).open(env.path("access.log")).unwrap().set_len(0).unwrap();
    // Fewer bytes than before: the file shrinks below the offset.
    let c = uuids("c", 10);
    env.append("access.log", &lines(&c));
    env.expect_exactly(&[a, c].concat());
    env.stop();
}

#[test]
fn rsync_style_replace_continues_from_the_offset() {
    let mut env = Env::new("access.log", "");
    env.start();
    let a = uuids("a", 150);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    // A sync tool writes the whole file to a temp name and renames it over.
    let b = uuids("b", 80);
    let tmp = env.path(".access.log.tmp");
    fs::write(&tmp, lines(&a) + &lines(&b)).unwrap();
    fs::rename(&tmp, env.path("access.log")).unwrap();
    env.expect_exactly(&[a.clone(), b.clone()].concat());
    // And again, with a half line synced the first time.
    let c = uuids("c", 40);
    let full = lines(&a) + &lines(&b) + &lines(&c);
    let half = &full[..full.len() - 20];
    fs::write(&tmp, half).unwrap();
    fs::rename(&tmp, env.path("access.log")).unwrap();
    fs::write(&tmp, &full).unwrap();
    fs::rename(&tmp, env.path("access.log")).unwrap();
    env.expect_exactly(&[a, b, c].concat());
    env.stop();
}

#[test]
fn rotated_file_compressed_later_is_not_read_twice() {
    let mut env = Env::new("access*.log*", "");
    env.start();
    let a = uuids("a", 300);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    let b = uuids("b", 50);
    env.append("access.log", &lines(&b));
    env.wait_for(&b);
    gzip(&env.path("access.log.1"), &env.path("access.log.1.gz"));
    // A .gz never seen before is read once.
    let old = uuids("old", 70);
    let tmp = env.dir.path().join("old.log");
    fs::write(&tmp, lines(&old)).unwrap();
    gzip(&tmp, &env.path("access-old.log.gz"));
    env.expect_exactly(&[a, b, old].concat());
    // After a restart the .gz files are still known, and not even
    // decompressed again: both were read to their end.
    env.stop();
    let skipped = |env: &Env| env.log_text().matches("not decompressed again").count();
    let before = skipped(&env);
    env.start();
    let c = uuids("c", 10);
    env.append("access.log", &lines(&c));
    env.expect_exactly(&[uuids("a", 300), uuids("b", 50), uuids("old", 70), c].concat());
    assert_eq!(skipped(&env) - before, 2, "{}", env.log_text());
    env.stop();
}

#[test]
fn deleted_file_is_read_to_its_end_through_the_open_descriptor() {
    let mut env = Env::new("access*.log", "");
    env.start();
    let a = uuids("a", 60_000);
    let text = lines(&a);
    // Written in pieces so the bridge opens the file early.
    let mut f = fs::File::create(env.path("access.log")).unwrap();
    f.write_all(&text.as_bytes()[..4096 * 8]).unwrap();
    env.wait_any();
    f.write_all(&text.as_bytes()[4096 * 8..]).unwrap();
    drop(f);
    fs::remove_file(env.path("access.log")).unwrap();
    env.expect_exactly(&a);
    env.stop();
}

#[test]
fn inode_reuse_and_rewrite_in_place_are_new_files() {
    let mut env = Env::new("access*.log", "");
    env.start();
    let a = uuids("a", 100);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    // Delete and create: the file system may hand out the same inode.
    fs::remove_file(env.path("access.log")).unwrap();
    let b = uuids("b", 120);
    env.append("access.log", &lines(&b));
    env.wait_for(&b);
    // Rewritten in place with longer content (same inode, new first line,
    // larger than the old offset).
    let c = uuids("c", 300);
    fs::write(env.path("access.log"), lines(&c)).unwrap();
    env.expect_exactly(&[a, b, c].concat());
    env.stop();
}

#[test]
fn burst_files_small_files_and_files_without_a_newline() {
    let mut env = Env::new("*.log", "");
    env.start();
    // A whole file appearing at once (synced in by rename).
    let burst = uuids("burst", 5000);
    let tmp = env.dir.path().join("burst.tmp");
    fs::write(&tmp, lines(&burst)).unwrap();
    fs::rename(&tmp, env.path("burst.log")).unwrap();
    // Many very small files.
    let mut small = Vec::new();
    for i in 0..30 {
        let id = uuids(&format!("small{i}"), 1);
        env.append(&format!("small{i}.log"), &lines(&id));
        small.extend(id);
    }
    // A file whose only line has no newline yet.
    let nl = uuids("nonl", 1);
    let text = lines(&nl);
    env.append("nonl.log", text.trim_end());
    env.wait_for(&[burst.clone(), small.clone()].concat());
    env.settle();
    assert!(!env.delivered().contains_key(&nl[0]), "a line without its newline came out");
    env.append("nonl.log", "\n");
    env.expect_exactly(&[burst, small, nl].concat());
    env.stop();
}

#[test]
fn partial_last_line_is_held_until_its_newline_or_the_file_goes() {
    let mut env = Env::new("access*.log", "");
    env.start();
    let a = uuids("a", 20);
    let p1 = uuids("p1", 1);
    let p1_text = lines(&p1);
    env.append("access.log", &(lines(&a) + &p1_text[..40]));
    env.wait_for(&a);
    env.settle();
    assert!(!env.delivered().contains_key(&p1[0]), "partial line emitted early");
    env.append("access.log", &p1_text[40..]);
    env.wait_for(&p1);
    // Another partial line, then the file is deleted: it is emitted.
    let p2 = uuids("p2", 1);
    env.append("access.log", lines(&p2).trim_end());
    env.settle();
    assert!(!env.delivered().contains_key(&p2[0]), "partial line emitted early");
    // A file whose only content never got its newline.
    let p3 = uuids("p3", 1);
    env.append("access-lonely.log", lines(&p3).trim_end());
    env.settle();
    assert!(!env.delivered().contains_key(&p3[0]), "partial line emitted early");
    fs::remove_file(env.path("access.log")).unwrap();
    fs::remove_file(env.path("access-lonely.log")).unwrap();
    env.expect_exactly(&[a, p1, p2, p3].concat());
    assert!(env.log_text().contains("partial last line"), "partial line not reported");
    env.stop();
}

#[test]
fn a_line_completed_just_after_its_file_was_rotated_comes_out_whole() {
    // A long grace, so that a loaded machine cannot make the test late.
    let mut env = Env::new("access*.log", "partial_grace_ms = 5000");
    env.start();
    let a = uuids("a", 20);
    let p = uuids("p", 1);
    let p_text = lines(&p);
    env.append("access.log", &(lines(&a) + &p_text[..40]));
    env.wait_for(&a);
    // The logger rotates, then finishes its last write through the file
    // it still holds open: within the grace period, so the line is whole.
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    crate::support::poll_until(DEADLINE, "the rotation noticed", || {
        env.log_text().contains("file gone from the watched paths").then_some(())
    });
    env.append("access.log.1", &p_text[40..]);
    env.expect_exactly(&[a, p].concat());
    assert!(!env.log_text().contains("rejected line"), "{}", env.log_text());
    env.stop();
}

#[test]
fn restart_resumes_exactly() {
    let mut env = Env::new("*.log", "");
    env.start();
    let a = uuids("a", 500);
    env.append("access.log", &lines(&a));
    env.wait_for(&a);
    env.stop();
    let b = uuids("b", 300);
    env.append("access.log", &lines(&b));
    env.append("other.log", &lines(&uuids("o", 10)));
    env.start();
    env.expect_exactly(&[a, b, uuids("o", 10)].concat());
    env.stop();
    let ck = fs::read_to_string(env.state.join("checkpoints.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ck).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["files"].as_array().unwrap().len(), 2, "{ck}");
}

#[test]
fn polling_mode_handles_rotation_without_inotify() {
    let mut env = Env::new("access*.log*", "poll_interval_ms = 50");
    env.start();
    let a = uuids("a", 100);
    env.append("access.log", &lines(&a));
    env.wait_any();
    fs::rename(env.path("access.log"), env.path("access.log.1")).unwrap();
    let b = uuids("b", 100);
    env.append("access.log", &lines(&b));
    env.wait_for(&b);
    gzip(&env.path("access.log.1"), &env.path("access.log.1.gz"));
    let c = uuids("c", 10);
    env.append("access.log", &lines(&c));
    env.expect_exactly(&[a, b, c].concat());
    env.stop();
}

#[test]
fn rejected_lines_are_counted_and_written_to_the_rejects_file() {
    let mut env = Env::new("access.log", "");
    env.start();
    let a = uuids("a", 3);
    env.append("access.log", &format!("{}not json at all\n{}", crate::tail_harness::line(&a[0]), lines(&a[1..])));
    env.expect_exactly(&a);
    env.stop();
    let rejects = fs::read_to_string(env.state.join("rejects.ndjson")).unwrap();
    let v: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert!(v["file"].as_str().unwrap().ends_with("access.log"), "{v}");
    assert_eq!(v["line"], 2);
    assert_eq!(v["raw"], "not json at all");
    assert!(env.log_text().contains("rejected line"));
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let env = Env::new("access.log", "poll_interval_ms = 0");
    let out = crate::support::cmd().args(["run", "--config"]).arg(&env.config).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("poll_interval_ms"), "{err}");
}

#[test]
fn example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let example = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bridge.toml")).unwrap();
    let cfg = root.join("bridge.toml");
    // On a host laid out as it expects (here under a scratch root).
    fs::write(&cfg, crate::support::relocate_config(&example, root)).unwrap();
    for d in ["mnt/data/trafficmanager/access", "var/lib/calllog-bridge", "etc/calllog-bridge", "lookups"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("mnt/data/trafficmanager/access/access_worker1.log"), "").unwrap();
    for t in ["channel.token", "upstream.token"] {
        fs::write(root.join("etc/calllog-bridge").join(t), "example-t0ken-0123456789\n").unwrap();
    }
    let lookups = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lookups"));
    for e in fs::read_dir(lookups).unwrap().flatten() {
        fs::copy(e.path(), root.join("lookups").join(e.file_name())).unwrap();
    }
    // Without Local Edition's directory, check-config says so, naming the
    // key, as `run` would.
    let out = crate::support::cmd().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`source[0].paths`"), "{}", String::from_utf8_lossy(&out.stderr));
    fs::create_dir_all(root.join("mnt/data/trafficmanager/enriched/access")).unwrap();
    fs::write(root.join("mnt/data/trafficmanager/enriched/access/access.log"), "").unwrap();
    let out = crate::support::cmd().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("access.log") && summary.contains("access_worker1.log"), "the files found are listed:\n{summary}");
}

#[test]
fn read_from_end_skips_what_was_there_at_start_only() {
    let mut env = Env::new("*.log", "read_from = \"end\"");
    env.append("access.log", &lines(&uuids("before", 50)));
    env.start();
    // Lines appended before the bridge first looks at the file are "what
    // was there at start": wait until it has opened the file at its end.
    crate::support::poll_until(DEADLINE, "access.log opened at its end", || {
        env.log_text().lines().any(|l| l.contains("reading") && l.contains("access.log") && !l.contains("offset=0")).then_some(())
    });
    let a = uuids("a", 20);
    env.append("access.log", &lines(&a));
    // A file appearing later is read from its beginning.
    let b = uuids("b", 10);
    env.append("new.log", &lines(&b));
    env.expect_exactly(&[a, b].concat());
    env.stop();
}

/// A file written one line per `write()` is read in rounds of
/// `read_delay_ms`, not once per line: every line comes out exactly once,
/// and the lines of 1.5 s at 100 lines/s arrive in a handful of reads (each
/// read stamps its records with one `ingestion_time`). Without the pacing
/// (inotify events read one by one, one read per event) they would arrive
/// in about as many reads as lines.
#[test]
fn a_trickle_of_lines_is_read_in_rounds_of_read_delay() {
    let mut env = Env::new("access.log", "read_delay_ms = 200");
    env.append("access.log", "");
    env.start();
    let ids = uuids("trickle", 150);
    let mut f = fs::OpenOptions::new().append(true).open(env.path("access.log")).unwrap();
    let start = std::time::Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let due = start + std::time::Duration::from_millis(10 * i as u64);
        if let Some(d) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(d);
        }
        f.write_all(crate::tail_harness::line(id).as_bytes()).unwrap();
    }
    env.expect_exactly(&ids);
    let text = fs::read_to_string(&env.out).unwrap();
    let mut reads = std::collections::BTreeSet::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        reads.insert(v["ingestion_time"].as_str().expect("ingestion_time stamped").to_string());
    }
    // 1.5 s / 200 ms = 8 rounds (a loaded machine only makes them fewer).
    assert!(reads.len() <= 20, "150 lines written one per write() came out in {} reads", reads.len());
    env.stop();
}

#[test]
fn read_delay_is_bounded() {
    let env = Env::new("access.log", "read_delay_ms = 5000");
    let out = crate::support::cmd().args(["run", "--config"]).arg(&env.config).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read_delay_ms") && err.contains("at most 1000"), "{err}");
}
