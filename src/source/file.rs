//! The file source (`kind = "file"`, the default): one [`Tailer`] per
//! `[[source]]` follows the files its globs match (see [`crate::tail`]).
//! Its settings are [`SourceConfig`]; this module adds what `check-config`
//! and `run` check on the host (the files each glob matches now), its
//! summary lines, and the start-up report of files left unread.

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::path::Path;

use super::{Check, GlobFound, SourceContext, SourceFound, Started};
use crate::checkpoint::Checkpointer;
use crate::logsafe::Escaped;
use crate::settings::{ConfigError, ReadFrom, SourceConfig, SourceSection};
use crate::tail::reader::ReaderShared;
use crate::tail::{open_file, Tailer};
use crate::telemetry::Telemetry;
use crate::watch::Watcher;

/// At most this many file names per glob in the `check-config` summary.
const FILES_SHOWN: usize = 5;

/// Files named by globs, as a [`super::Source`].
pub struct FileSource;

impl super::Source for FileSource {
    const KIND: &'static str = "file";
    type Section = SourceSection;
    type Config = SourceConfig;

    fn config(section: SourceSection, key: &str, base: &Path) -> Result<SourceConfig, ConfigError> {
        SourceConfig::from_section(section, key, base)
    }

    fn check(cfg: &SourceConfig, key: &str) -> Check {
        check(&format!("{key}.paths"), cfg)
    }

    fn summary(s: &SourceConfig, found: &SourceFound) -> String {
        let mut o = String::new();
        let from = match s.read_from {
            ReadFrom::Beginning => "the beginning",
            ReadFrom::End => "the end",
        };
        let _ = writeln!(o, "format {}, files without a checkpoint read from {from}", s.format);
        for g in &found.globs {
            let names: Vec<String> = g.files.iter().take(FILES_SHOWN).map(|p| file_name(p)).collect();
            let more = g.files.len().saturating_sub(FILES_SHOWN);
            let _ = writeln!(
                o,
                "    {}  -> {} file(s){}{}{}",
                g.glob,
                g.files.len(),
                if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) },
                if more > 0 { format!(" and {more} more") } else { String::new() },
                if g.unreadable.is_empty() { String::new() } else { format!(", {} unreadable", g.unreadable.len()) },
            );
        }
        if !s.exclude.is_empty() {
            let _ = writeln!(o, "    excluding {}", s.exclude.join(", "));
        }
        o
    }

    fn start(sources: Vec<(String, SourceConfig)>, ctx: &SourceContext) -> anyhow::Result<Started> {
        let scans_from_ms = crate::time::now_ms();
        let mut started = Started::default();
        let mut first_scans = Vec::new();
        for (name, s) in &sources {
            let shared = ReaderShared {
                format: s.format,
                max_line_bytes: s.max_line_bytes,
                inline_reads: s.poll_interval.is_none(),
                partial_grace: s.partial_grace,
                fanout: ctx.fanout.clone(),
                checkpoints: ctx.checkpoints.clone(),
                enricher: ctx.enricher.clone(),
                shutdown: ctx.stop.clone(),
                rejects: ctx.rejects.clone(),
                reject_log: Default::default(),
                host: ctx.host.clone(),
            };
            let mut tailer = Tailer::new(s.clone(), name.clone(), shared, ctx.telemetry.clone())?;
            if ctx.startup {
                let (tx, rx) = tokio::sync::oneshot::channel();
                tailer.on_first_scan(tx);
                first_scans.push(rx);
            }
            started.readers.push((name.clone(), tokio::spawn(tailer.run())));
        }
        if ctx.startup {
            started.background.push(tokio::spawn(report_left_unread(
                ctx.checkpoints.clone(),
                sources,
                ctx.telemetry.clone(),
                first_scans,
                scans_from_ms,
            )));
        }
        Ok(started)
    }
}

/// Once every file source has scanned its files once at start-up, looks
/// for the files with a checkpoint that no scan saw and that still had
/// unread bytes (gone, or rotated where no glob matches: see
/// [`crate::tail::left_unread`]); each is logged loudly and counted on its
/// source.
async fn report_left_unread(
    checkpoints: Checkpointer,
    sources: Vec<(String, SourceConfig)>,
    telemetry: Telemetry,
    first_scans: Vec<tokio::sync::oneshot::Receiver<()>>,
    scans_from_ms: i64,
) {
    for rx in first_scans {
        if rx.await.is_err() {
            // A source stopped before its first scan (shutdown): no verdict.
            return;
        }
    }
    let entries = checkpoints.entries();
    let srcs: Vec<SourceConfig> = sources.iter().map(|(_, s)| s.clone()).collect();
    let now = crate::time::now_ms();
    let found =
        tokio::task::spawn_blocking(move || crate::tail::left_unread::find(&entries, &srcs, scans_from_ms, now)).await.unwrap_or_default();
    for (i, l) in found {
        let name = sources.get(i).map(|(n, _)| n.clone()).unwrap_or_default();
        tracing::warn!(source = %name, file = %crate::logsafe::Escaped(&l.path), "{}", crate::logsafe::Escaped(&crate::tail::left_unread::message(&name, &l)));
        telemetry.source(&name).left_unread(l);
    }
}

/// The files of one source, glob by glob, with errors and warnings; `key`
/// is its `paths` key. The scan is the tailer's, with its bounds (an error
/// when it stops early) and its rules for symbolic links (a warning for
/// each link it does not follow); files are opened as the tailer opens
/// them.
fn check(key: &str, s: &SourceConfig) -> Check {
    let mut out = Check::default();
    for (glob, dir) in s.paths.iter().zip(s.watch_dirs()) {
        if let Some(w) = single_file_warning(key, glob) {
            out.warnings.push(w);
        }
        let one = SourceConfig { paths: vec![glob.clone()], ..s.clone() };
        let (scan, roots) = match Watcher::new(&one) {
            Ok(w) => (w.scan_until(None), w.roots_now()),
            Err(e) => {
                out.errors.push(ConfigError::invalid(key, format!("bad glob `{glob}`: {e}")));
                continue;
            }
        };
        if let Some(why) = scan.incomplete {
            out.errors.push(ConfigError::unusable(key, why));
            continue;
        }
        for (link, why) in &scan.links {
            out.warnings.push(format!("config key `{key}`: {} is {why}", Escaped::path(link)));
        }
        for d in &scan.linked_dirs {
            out.warnings.push(format!(
                "config key `{key}`: {} is a symbolic link to a directory: not descended (follow_symlinks = true descends it)",
                Escaped::path(d)
            ));
        }
        let mut found = GlobFound { glob: glob.clone(), files: Vec::new(), unreadable: Vec::new() };
        for m in scan.files {
            match open_file(&m.path, roots.as_deref()) {
                Ok(_) => found.files.push(m.path),
                Err(e) => found.unreadable.push((m.path, e.to_string())),
            }
        }
        let natural = |a: &Path, b: &Path| crate::telemetry::natural_cmp(&a.to_string_lossy(), &b.to_string_lossy());
        found.files.sort_by(|a, b| natural(a, b));
        found.unreadable.sort_by(|a, b| natural(&a.0, &b.0));
        if found.files.is_empty() && found.unreadable.is_empty() {
            match std::fs::read_dir(&dir) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    out.errors
                        .push(ConfigError::unusable(key, format!("`{glob}` matches nothing: directory {} does not exist", dir.display())));
                }
                Err(e) => out
                    .errors
                    .push(ConfigError::unusable(key, format!("`{glob}`: cannot list {}", crate::settings::why_unreachable(&dir, &e)))),
                Ok(entries) => {
                    let mut others: Vec<String> =
                        entries.flatten().filter(|e| e.path().is_file()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                    others.sort();
                    if others.is_empty() {
                        out.warnings.push(format!(
                            "config key `{key}`: `{glob}` matches no file yet: {} holds none (files written there later are followed)",
                            dir.display()
                        ));
                    } else {
                        let shown = others.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                        let more = if others.len() > 5 { format!(" and {} more", others.len() - 5) } else { String::new() };
                        out.errors.push(ConfigError::unusable(
                            key,
                            format!("`{glob}` matches none of the files in {} ({shown}{more})", dir.display()),
                        ));
                    }
                }
            }
        } else if found.files.is_empty() {
            let (p, e) = &found.unreadable[0];
            out.errors.push(ConfigError::unusable(
                key,
                format!("`{glob}` matches {} file(s), none readable by this user: {}: {e}", found.unreadable.len(), p.display()),
            ));
        } else {
            for (p, e) in &found.unreadable {
                out.warnings
                    .push(format!("config key `{key}`: cannot read {}: {e} (it is skipped until its permissions change)", p.display()));
            }
        }
        out.globs.push(found);
    }
    out
}

/// A glob whose file name has no wildcard follows one file: when Local
/// Edition rotates it, the lines not read yet are in a rotated file the
/// glob does not match (and after a stop, whatever was rotated meanwhile).
fn single_file_warning(key: &str, glob: &str) -> Option<String> {
    let name = glob.rsplit('/').next().unwrap_or(glob);
    if name.is_empty() || name.contains(['*', '?', '[', '{']) {
        return None;
    }
    Some(format!(
        "config key `{key}`: `{glob}` names one file: the lines still unread when Local Edition rotates it go to `{name}.1` \
         (or `{name}.1.gz`), which this glob does not follow, and are missed; end it with `*` (`{glob}*`) to follow the rotated files too"
    ))
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
