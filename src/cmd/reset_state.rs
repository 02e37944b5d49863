//! `calllog-bridge reset-state --config FILE --read-from end|beginning`:
//! the recovery from a damaged `checkpoints.json` or `channel.seq` (the
//! bridge refuses to start on one, with
//! [`crate::checkpoint::EXIT_DAMAGED_STATE`]).
//!
//! The damaged file is kept aside (renamed `<name>.damaged-<UTC time>`),
//! never deleted. New checkpoints are written for every file the sources
//! match now, at its start or at its end as the operator chose; a new
//! `channel.seq` starts above any number a bridge can have used, so a
//! client never sees a sequence number twice. A Kafka source's damaged
//! positions (`kafka-offsets-<group_id>.json`) are kept aside and not
//! replaced: each partition then starts at the source's own `read_from`
//! (`--read-from` chooses for files only; it cannot name broker offsets
//! without the brokers). Files that are not damaged
//! are left alone unless `--force`. The bridge must be stopped: the command
//! takes the state directory's lock, as `run` does.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::checkpoint::fingerprint::{self, Probe};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::cli::{ResetStateArgs, ResumeFrom};
use crate::config::{Config, EXIT_CONFIG};
use crate::sink::channel;
use crate::watch::{self, Watcher};

/// Runs the command; returns the exit code.
pub fn run(args: ResetStateArgs) -> anyhow::Result<i32> {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("calllog-bridge: {e}");
            return Ok(EXIT_CONFIG);
        }
    };
    let state_dir = cfg.state_dir.clone();
    let stamp = file_stamp(crate::time::now_ms());
    // A running bridge would write its own state over ours: one at a time.
    let _lock = if state_dir.is_dir() {
        match crate::state_lock::StateLock::acquire(&state_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("calllog-bridge: {e}");
                return Ok(1);
            }
        }
    } else {
        None
    };

    let layout = crate::state_dir::StateDir::new(&state_dir);
    let ckpt_path = layout.checkpoints();
    let ckpt_damaged = match Checkpointer::load(&state_dir) {
        Ok(_) => None,
        Err(CheckpointError::Invalid { message, .. }) => Some(message),
        Err(e) => return Err(e).context("cannot read the checkpoints"),
    };
    let seq_path = layout.channel_seq();
    let seq_damaged = match std::fs::read(&seq_path) {
        Ok(bytes) => channel::parse_seq(&bytes).err(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", seq_path.display())),
    };
    // Kafka sources keep their positions per group, in
    // kafka-offsets-<group_id>.json.
    let mut kafka = Vec::new();
    for source in &cfg.sources {
        let Some(k) = source.get::<crate::source::kafka::KafkaSource>() else { continue };
        let path = layout.kafka_offsets(&k.group_id);
        let damaged = crate::kafka::hub::load_offsets(&state_dir, k).err().map(|d| d.problem);
        kafka.push((path, damaged, k));
    }
    let kafka_damaged = kafka.iter().any(|(_, d, _)| d.is_some());
    if ckpt_damaged.is_none() && seq_damaged.is_none() && !kafka_damaged && !args.force {
        println!(
            "nothing is damaged in {}: {}, {}{} are readable; nothing changed (--force replaces them anyway)",
            state_dir.display(),
            crate::checkpoint::FILE_NAME,
            channel::SEQ_FILE,
            if kafka.is_empty() { "" } else { " and the Kafka sources' positions" }
        );
        return Ok(0);
    }

    if ckpt_damaged.is_some() || args.force {
        if let Some(problem) = &ckpt_damaged {
            println!("{} is damaged: {problem}", ckpt_path.display());
        }
        if let Some(aside) = keep_aside(&ckpt_path, &stamp)? {
            println!("kept it aside as {}", aside.display());
        }
        let ck = Checkpointer::empty(&state_dir);
        let mut files = 0;
        for (i, source) in cfg.sources.iter().enumerate() {
            // Checkpoints here are file offsets: file sources only.
            let Some(source) = source.get::<crate::source::file::FileSource>() else { continue };
            let w = Watcher::new(source).with_context(|| format!("source[{i}].paths"))?;
            for seen in w.scan() {
                match checkpoint_file(&ck, &seen, source.max_line_bytes, args.read_from) {
                    Ok(Some(offset)) => {
                        files += 1;
                        println!("  {} resumes at {offset}", seen.path.display());
                    }
                    Ok(None) => println!("  {} has no complete first line yet: read from its start", seen.path.display()),
                    Err(e) => println!("  {}: cannot read it ({e}): it follows read_from when the bridge starts", seen.path.display()),
                }
            }
        }
        ck.write(true).with_context(|| format!("cannot write {}", ckpt_path.display()))?;
        let from = match args.read_from {
            ResumeFrom::Beginning => "their start",
            ResumeFrom::End => "their current end",
        };
        println!("wrote {} with {files} file(s) resuming at {from}", ckpt_path.display());
    }

    if seq_damaged.is_some() || args.force {
        if let Some(problem) = &seq_damaged {
            println!("{} is damaged: {problem}", seq_path.display());
        }
        if let Some(aside) = keep_aside(&seq_path, &stamp)? {
            println!("kept it aside as {}", aside.display());
        }
        // Microseconds since 1970: a bridge would have had to send more
        // than a million records a second since then to have used it.
        let next = args.channel_seq.unwrap_or_else(|| (crate::time::now_ms().max(1) as u64).saturating_mul(1000)).max(1);
        write_durable(&seq_path, format!("{next}\n").as_bytes()).with_context(|| format!("cannot write {}", seq_path.display()))?;
        println!(
            "wrote {}: the channel numbers records from {next} (clients that resume with ?since= get a `lost` notice \
             for the numbers skipped)",
            seq_path.display()
        );
    }
    for (path, damaged, k) in &kafka {
        if damaged.is_none() && !args.force {
            continue;
        }
        if let Some(problem) = damaged {
            println!("{} is damaged: {problem}", path.display());
        }
        if let Some(aside) = keep_aside(path, &stamp)? {
            println!("kept it aside as {}", aside.display());
        }
        // Positions are the brokers' offsets, which this command does not
        // ask for: with no saved position each partition starts where the
        // source's own setting says.
        let from = match k.read_from {
            crate::settings::ReadFrom::Beginning => "beginning: the earliest message the brokers keep (records may be sent again)",
            crate::settings::ReadFrom::End => "end: the next message produced (messages produced meanwhile are skipped)",
        };
        println!("the Kafka source of group `{}` has no saved positions now: each partition starts at its read_from = {from}", k.group_id);
    }
    println!("done: start the bridge again");
    Ok(0)
}

/// Checkpoints one file at its start or end; `None` when it has no
/// complete first line (no fingerprint yet).
fn checkpoint_file(ck: &Checkpointer, seen: &watch::Seen, max_line_bytes: usize, from: ResumeFrom) -> io::Result<Option<u64>> {
    let file = File::open(&seen.path)?;
    let m = file.metadata()?;
    let gz = watch::is_gz(&seen.path);
    let probe = if gz {
        fingerprint::probe(flate2::read::MultiGzDecoder::new(&file), max_line_bytes)?
    } else {
        fingerprint::probe(&file, max_line_bytes)?
    };
    let Probe::Ready { fp, .. } = probe else { return Ok(None) };
    ck.seen(fp, &seen.path.to_string_lossy(), m.dev(), m.ino(), m.len(), crate::time::now_ms());
    let offset = match (from, gz) {
        (ResumeFrom::Beginning, _) => 0,
        (ResumeFrom::End, false) => crate::tail::end_of_last_line(&file, m.len()),
        (ResumeFrom::End, true) => {
            // A `.gz` never grows: its end is the end of its content, and it
            // is marked complete so the bridge does not decompress it again.
            let mut dec = flate2::read::MultiGzDecoder::new(File::open(&seen.path)?);
            let end = io::copy(&mut (&mut dec as &mut dyn Read), &mut io::sink())?;
            ck.mark_gz_complete(fp, m.len(), end);
            end
        }
    };
    ck.start_at(fp, offset);
    Ok(Some(offset))
}

/// Renames `path` to `<path>.damaged-<stamp>`; `None` when it does not
/// exist.
fn keep_aside(path: &Path, stamp: &str) -> anyhow::Result<Option<PathBuf>> {
    let aside = crate::state_dir::StateDir::damaged(path, stamp);
    match std::fs::rename(path, &aside) {
        Ok(()) => Ok(Some(aside)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot rename {} to {}", path.display(), aside.display())),
    }
}

/// `20260101T000000Z` for a file name.
fn file_stamp(now_ms: i64) -> String {
    let iso = crate::time::format_iso_millis(now_ms);
    let secs = iso.split('.').next().unwrap_or(&iso);
    secs.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>() + "Z"
}

/// Writes a small file durably (see [`crate::state_dir::write_atomic`]).
fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::state_dir::write_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_file_name_friendly() {
        assert_eq!(file_stamp(1_767_225_600_123), "20260101T000000Z");
    }
}
