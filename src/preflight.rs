//! What `run` needs from this host, checked before anything starts.
//!
//! [`Config::load`] checks the file itself (syntax, values, secret and TLS
//! files). This module checks what the config points at, the way `run`
//! will use it:
//!
//! - what each source finds ([`crate::source::Source::check`]): every file
//!   `[[source]]` glob matches at least one readable file (a glob whose
//!   directory exists but holds no file yet is a warning: the files may
//!   come later; a missing directory, or files none of which match, is an
//!   error);
//! - the lookup files load;
//! - `state_dir` and the directories the sinks write in
//!   ([`crate::sink::Sink::needs`]: the archive's, the dead-letter file's)
//!   exist (or only their last component is missing, where the sink allows
//!   it and `run` creates it: a typo such as `/nonexistent/dir` is never
//!   created) and are writable by this user (probed by creating and
//!   removing a file, so read-only mounts and ACLs count);
//! - the listen addresses (the sinks' such as `channel.listen`, and
//!   `status.listen`) can be bound;
//! - no source reads what the bridge writes ([`outputs_not_read`]):
//!   `state_dir` (checkpoints, rejects, spools, the replay log), the
//!   directories sinks own (`export.dir`) and the files they append to
//!   (the archive, dead-letter files, with their rotated names) must not
//!   be matched by a source's glob, or the bridge reads its own output
//!   for ever.
//!
//! [`report`] puts the config file's problems ([`Config::read`]: syntax,
//! then values) before what [`check`] finds for the parts read: the one
//! list `check-config` prints, and `run` prints when it refuses. A
//! directory on the way that this user may not enter is named as such
//! ([`crate::settings::why_unreachable`]).
//!
//! Invariant: `check-config` and `run` call the same [`check`], so they
//! never disagree. `run` keeps what the check built (the bound listeners,
//! the loaded lookup tables) instead of doing the work twice; any error
//! is an exit 64 (a config problem, which systemd does not restart), and
//! each names its key and says its cause once.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::enrich::Enricher;
use crate::listener::Bound;
pub use crate::source::{GlobFound, SourceFound};
use crate::state_lock::{LockError, StateLock};

/// The config key of the status listener's address.
pub const STATUS_LISTEN: &str = "status.listen";

/// Whether [`check`] binds the listen addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// Bind them and keep them (`run`).
    Keep,
    /// Bind them and let them go (`check-config`: are they free?).
    Probe,
    /// Do not bind (`check-config` while a bridge runs on this state_dir
    /// and holds them).
    Skip,
}

/// One listen address and what binding it said.
#[derive(Debug, Clone)]
pub struct ListenerFound {
    /// `channel.listen`, `status.listen`.
    pub key: &'static str,
    /// The configured address.
    pub addr: SocketAddr,
    /// Bound (and, for `check-config`, released again).
    pub bound: bool,
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Problems that stop `run` (exit 64), each naming its key.
    pub errors: Vec<ConfigError>,
    /// Things an operator should know that do not stop `run`, each naming
    /// its key.
    pub warnings: Vec<String>,
    /// Sources and the files each glob matches.
    pub sources: Vec<SourceFound>,
    /// The listen addresses.
    pub listeners: Vec<ListenerFound>,
    /// The listeners, bound (with [`Bind::Keep`]), by key.
    pub bound: Bound,
    /// The lookup tables, loaded.
    pub enricher: Option<Enricher>,
    /// The peers the sources and sinks name (probed by `check-config`).
    pub peers: Vec<crate::probe::Peer>,
}

impl Checked {
    /// True when `run` may start.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Runs every check of this module on `cfg`.
pub fn check(cfg: &Config, bind: Bind) -> Checked {
    let mut out = Checked::default();
    let needs: Vec<crate::sink::Needs> = cfg.sinks.iter().map(|s| s.needs()).collect();
    let dirs = std::iter::once(("state_dir", cfg.state_dir.clone(), true)).chain(needs.iter().flat_map(|n| n.dirs.iter().cloned()));
    for (key, dir, create) in dirs {
        if let Err(e) = usable_dir(key, &dir, create) {
            out.errors.push(e);
        }
    }
    // What an earlier run left in state_dir must be writable too: a manual
    // run as root leaves files the service user cannot append to.
    let rejects = crate::state_dir::StateDir::new(&cfg.state_dir).rejects();
    if rejects.exists() {
        if let Err(e) = OpenOptions::new().append(true).open(&rejects) {
            out.errors.push(ConfigError::unusable(
                "state_dir",
                format!("cannot write {} (left by a run as another user?): {e}", rejects.display()),
            ));
        }
    }
    for spool in std::fs::read_dir(crate::state_dir::StateDir::new(&cfg.state_dir).upstream_spool_root()).into_iter().flatten().flatten() {
        let dir = spool.path();
        if dir.is_dir() {
            if let Err(e) = writable(&dir) {
                out.errors.push(ConfigError::unusable(
                    "state_dir",
                    format!("cannot write in {} (left by a run as another user?): {e}", dir.display()),
                ));
            }
        }
    }
    for (key, path) in needs.iter().flat_map(|n| n.files.iter()) {
        if path.exists() {
            if let Err(e) = OpenOptions::new().append(true).open(path) {
                out.errors.push(ConfigError::unusable(*key, format!("cannot write {}: {e}", path.display())));
            }
        }
    }
    out.errors.extend(outputs_not_read(cfg));
    for (i, s) in cfg.sources.iter().enumerate() {
        let found = s.check(&format!("source[{i}]"));
        out.errors.extend(found.errors);
        out.warnings.extend(found.warnings);
        out.peers.extend(found.peers);
        out.sources.push(SourceFound { name: s.name.clone(), globs: found.globs });
    }
    match Enricher::from_config(&cfg.enrich) {
        Ok(e) => {
            out.warnings.extend(lookup_fields_unprovided(&e, needs.iter().flat_map(|n| n.lookup_fields.iter())));
            out.enricher = Some(e);
        }
        Err(e) => out.errors.push(ConfigError::unusable("enrich.lookups", e)),
    }
    out.peers.extend(needs.iter().flat_map(|n| n.peers.iter().cloned()));
    let mut want: Vec<(&'static str, SocketAddr)> = needs.iter().flat_map(|n| n.listeners.iter().cloned()).collect();
    if cfg.status.enabled {
        want.push((STATUS_LISTEN, cfg.status.listen));
    }
    for (key, addr) in want {
        let bound = match bind {
            Bind::Skip => None,
            Bind::Keep | Bind::Probe => match crate::listener::bind(key, addr) {
                Ok(l) => Some(l),
                Err(e) => {
                    out.errors.push(e);
                    out.listeners.push(ListenerFound { key, addr, bound: false });
                    continue;
                }
            },
        };
        out.listeners.push(ListenerFound { key, addr, bound: bound.is_some() });
        if let (Bind::Keep, Some(l)) = (bind, bound) {
            out.bound.insert(key, l);
        }
    }
    out
}

/// Warnings for settings that select on a field no loaded lookup table
/// fills (a channel filter on `org_name` without a keys table with that
/// column): such a filter matches only records whose lines carry the
/// field themselves.
fn lookup_fields_unprovided<'a>(e: &Enricher, wanted: impl Iterator<Item = &'a (String, crate::record::Field)>) -> Vec<String> {
    let stats = e.stats();
    let loaded: Vec<crate::enrich::TableKind> = stats.tables.iter().filter(|t| t.loaded).map(|t| t.table).collect();
    let mut out = Vec::new();
    for (key, field) in wanted {
        let fills: Vec<crate::enrich::TableKind> =
            crate::enrich::TableKind::ALL.iter().copied().filter(|t| t.targets().contains(field)).collect();
        if fills.is_empty() || fills.iter().any(|t| loaded.contains(t)) {
            continue;
        }
        let tables: Vec<&str> = fills.iter().map(|t| t.name()).collect();
        out.push(format!(
            "config key `{key}`: no lookup table provides {} (the {} table fills it; [enrich] lookups loads none): only records whose log lines carry it match",
            field.name(),
            tables.join(" or ")
        ));
    }
    out
}

/// Samples of what a sink writes in a directory it owns (`export.dir`):
/// any name, CSV slices, their partial files.
const OWNED_DIR_SAMPLES: &[&str] = &["calllog", "calllog.csv", "calllog.csv.gz", "calllog.csv.partial", "calllog.csv.gz.partial"];

/// Files already under an output directory that are looked at too (a
/// bounded listing).
const OUTPUT_FILES_LISTED: usize = 256;

/// Refuses a source glob that matches what the bridge writes: the bridge
/// would read its own output (the archive's records again, rejects of its
/// rejects, ...) and grow it for ever. Each error names the source's
/// `paths` key and the output's key. What the bridge writes: `state_dir`
/// as a whole; per sink ([`crate::sink::Sink::needs`]) the files it
/// appends to with their rotated names (`<file>.1`), and as a whole each
/// directory it declares without a file (a directory it owns). Checked
/// on the names the bridge writes there and on the files already there,
/// as written and as their directories resolve (symbolic links), against
/// each glob with its excludes.
pub fn outputs_not_read(cfg: &Config) -> Vec<ConfigError> {
    use crate::watch::Watcher;
    use std::path::PathBuf;
    let needs: Vec<crate::sink::Needs> = cfg.sinks.iter().map(|s| s.needs()).collect();
    // (key, paths written or sampled)
    let mut outputs: Vec<(&str, Vec<PathBuf>)> = Vec::new();
    let tree = |dir: &Path, samples: &[&str]| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = samples.iter().map(|n| dir.join(n)).collect();
        v.extend(
            walkdir::WalkDir::new(dir)
                .min_depth(1)
                .into_iter()
                .take(OUTPUT_FILES_LISTED)
                .flatten()
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path()),
        );
        v
    };
    // Samples of everything the bridge keeps in state_dir (its state files,
    // rotated names, one file of each directory: replay segments, spools).
    let state_samples: Vec<&str> = crate::state_dir::StateDir::LAYOUT.iter().flat_map(|e| e.samples.iter().copied()).collect();
    outputs.push(("state_dir", tree(&cfg.state_dir, &state_samples)));
    for n in &needs {
        for (key, file) in &n.files {
            outputs.push((key, vec![file.clone(), crate::rotating::rotated_path(file, 1)]));
        }
        for (key, dir, _) in &n.dirs {
            if !n.files.iter().any(|(k, _)| k == key) {
                outputs.push((key, tree(dir, OWNED_DIR_SAMPLES)));
            }
        }
    }
    let mut errors = Vec::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        let Some(src) = s.get::<crate::source::file::FileSource>() else { continue };
        for glob in &src.paths {
            let one = crate::settings::SourceConfig { paths: vec![glob.clone()], ..src.clone() };
            let Ok(w) = Watcher::new(&one) else { continue };
            // The glob's directory as written and as it resolves: an
            // output named through another path to the same place counts.
            let root = one.watch_dirs().into_iter().next().unwrap_or_default();
            let real_root = std::fs::canonicalize(&root).ok();
            let seen_as = |p: &Path| -> Vec<PathBuf> {
                let mut v = vec![p.to_path_buf()];
                let real = p.parent().and_then(|d| std::fs::canonicalize(d).ok()).map(|d| d.join(p.file_name().unwrap_or_default()));
                if let (Some(real), Some(real_root)) = (real, &real_root) {
                    if let Ok(rest) = real.strip_prefix(real_root) {
                        v.push(root.join(rest));
                    }
                }
                v
            };
            for (key, paths) in &outputs {
                if let Some(hit) = paths.iter().flat_map(|p| seen_as(p)).find(|p| w.matches(p)) {
                    errors.push(ConfigError::unusable(
                        format!("source[{i}].paths"),
                        format!(
                            "`{glob}` matches {}, which the bridge writes (`{key}`): it would read its own output for ever; \
                             move `{key}` out of the source's directories, or exclude it",
                            hit.display()
                        ),
                    ));
                }
            }
        }
    }
    errors
}

/// Every problem `run` would refuse to start for, in the order
/// `check-config` and `run` show them: the config file's own (syntax first,
/// then values: [`Config::read`]), then what [`check`] finds on the host
/// for every part of it that could be read. One run names them all.
#[derive(Debug)]
pub struct Report {
    /// The config as far as it could be read.
    pub config: Option<Config>,
    /// The config file's problems.
    pub file_errors: Vec<ConfigError>,
    /// What the host check found, when there was a config to check.
    pub checked: Option<Checked>,
    /// The bridge running on `state_dir`, if any (its listeners are not
    /// probed).
    pub running: Option<String>,
}

impl Report {
    /// Every problem: the file's, then the host's.
    pub fn problems(&self) -> impl Iterator<Item = &ConfigError> {
        self.file_errors.iter().chain(self.checked.iter().flat_map(|c| c.errors.iter()))
    }

    /// True when `run` may start.
    pub fn ok(&self) -> bool {
        self.config.is_some() && self.problems().next().is_none()
    }
}

/// [`Report`] of the config file at `path`. Blocking.
pub fn report(path: &Path) -> Report {
    report_of(Config::read(path))
}

/// [`Report`] of a config already read. Blocking.
pub fn report_of(reading: crate::config::Reading) -> Report {
    let running = reading.config.as_ref().and_then(|c| crate::state_lock::holder(&c.state_dir));
    let bind = if running.is_some() { Bind::Skip } else { Bind::Probe };
    let checked = reading.config.as_ref().map(|c| check(c, bind));
    Report { config: reading.config, file_errors: reading.errors, checked, running }
}

/// What `run` holds once [`prepare`] succeeded: nothing has read a file or
/// accepted a connection yet.
#[derive(Debug)]
pub struct Prepared {
    /// The exclusive lock on `state_dir`, held until the bridge ends.
    pub lock: StateLock,
    /// The listeners, bound, by key.
    pub listeners: Bound,
    /// The lookup tables, loaded.
    pub enricher: Enricher,
    /// What the checks warned about (logged by the caller).
    pub warnings: Vec<String>,
}

/// Why `run` must not start (exit 64: a config or host problem that a
/// restart cannot fix).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Checks failed; each error names its key.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// Another bridge runs on this `state_dir`, or its lock file is unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// Everything `run` does before it starts, in this order: `state_dir` is
/// checked (and its last component created), its lock taken (so a second
/// bridge is refused before it binds or reads anything), then [`check`]
/// with the listeners bound and kept. Blocking.
pub fn prepare(cfg: &Config) -> Result<Prepared, PrepareError> {
    create_state_dir(cfg).map_err(|e| PrepareError::Config(vec![e]))?;
    let lock = StateLock::acquire(&cfg.state_dir)?;
    let checked = check(cfg, Bind::Keep);
    if !checked.ok() {
        return Err(PrepareError::Config(checked.errors));
    }
    let enricher = checked.enricher.ok_or_else(|| PrepareError::Config(vec![ConfigError::unusable("enrich.lookups", "not loaded")]))?;
    Ok(Prepared { lock, listeners: checked.bound, enricher, warnings: checked.warnings })
}

/// Creates `state_dir` when only its last component is missing (checked by
/// [`check`]), so that the lock can be taken in it.
pub fn create_state_dir(cfg: &Config) -> Result<(), ConfigError> {
    usable_dir("state_dir", &cfg.state_dir, true)?;
    match std::fs::create_dir(&cfg.state_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ConfigError::unusable("state_dir", format!("cannot create {}: {e}", cfg.state_dir.display()))),
    }
}

/// Checks that `dir` exists (or, with `create`, that only its last
/// component is missing) and that this user can create files in it.
fn usable_dir(key: &str, dir: &Path, create: bool) -> Result<(), ConfigError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            writable(dir).map_err(|e| ConfigError::unusable(key, format!("{} is not writable by this user: {e}", dir.display())))
        }
        Ok(_) => Err(ConfigError::unusable(key, format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !create {
                return Err(ConfigError::unusable(key, format!("directory {} does not exist", dir.display())));
            }
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => writable(parent).map_err(|e| {
                    ConfigError::unusable(
                        key,
                        format!(
                            "{} does not exist and cannot be created: {} is not writable by this user: {e}",
                            dir.display(),
                            parent.display()
                        ),
                    )
                }),
                _ => Err(ConfigError::unusable(
                    key,
                    format!(
                        "{} does not exist, nor does its parent {} (only a missing last directory is created)",
                        dir.display(),
                        parent.display()
                    ),
                )),
            }
        }
        Err(e) => Err(ConfigError::unusable(key, format!("cannot use {}", crate::settings::why_unreachable(dir, &e)))),
    }
}

/// Creates and removes a file in `dir`: the only test that counts
/// permissions, ACLs and read-only mounts alike.
fn writable(dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    for n in 0..100u32 {
        let probe = dir.join(format!(".calllog-bridge-write-check-{pid}-{n}"));
        match OpenOptions::new().write(true).create_new(true).open(&probe) {
            Ok(f) => {
                drop(f);
                return std::fs::remove_file(&probe);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot find a free probe file name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "state_dir = {:?}\n[[source]]\npaths = [{:?}]\n[file_output]\npath = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\n{extra}",
            dir.join("state"),
            dir.join("logs/access*.log*"),
            dir.join("out/archive.ndjson"),
        );
        Config::from_toml(&text, &dir.join("config.toml")).unwrap()
    }

    fn messages(c: &Checked) -> String {
        c.errors.iter().map(|e| e.to_string()).chain(c.warnings.iter().cloned()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn globs_missing_directory_is_an_error_an_empty_one_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "");
        let c = check(&cfg, Bind::Probe);
        assert_eq!(c.errors.len(), 1, "{}", messages(&c));
        assert!(
            c.errors[0].to_string().contains("source[0].paths") && c.errors[0].to_string().contains("does not exist"),
            "{}",
            messages(&c)
        );

        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let c = check(&cfg, Bind::Probe);
        assert!(c.ok(), "{}", messages(&c));
        assert!(c.warnings.iter().any(|w| w.contains("source[0].paths") && w.contains("no file yet")), "{:?}", c.warnings);

        std::fs::write(dir.path().join("logs/error.log"), "x\n").unwrap();
        let c = check(&cfg, Bind::Probe);
        assert!(messages(&c).contains("matches none of the files") && messages(&c).contains("error.log"), "{}", messages(&c));

        std::fs::write(dir.path().join("logs/access.log"), "x\n").unwrap();
        let c = check(&cfg, Bind::Probe);
        assert!(c.ok() && c.warnings.is_empty(), "{}", messages(&c));
        assert_eq!(c.sources[0].globs[0].files, vec![dir.path().join("logs/access.log")]);
    }

    #[test]
    fn a_glob_that_matches_what_the_bridge_writes_is_refused_naming_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("logs")).unwrap();
        let base = config(d, "");
        assert!(outputs_not_read(&base).is_empty(), "the usual layout is fine");
        let with = |glob: &str, extra: &str| {
            let text = format!(
                "state_dir = {:?}\n[[source]]\npaths = [{:?}]\n[file_output]\npath = {:?}\n{extra}",
                d.join("state"),
                d.join(glob),
                d.join("out/archive.ndjson"),
            );
            let cfg = Config::from_toml(&text, &d.join("config.toml")).unwrap();
            outputs_not_read(&cfg).iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        // The archive (or its rotated file) among the logs.
        let text = format!(
            "state_dir = {:?}\n[[source]]\npaths = [{:?}]\n[file_output]\npath = {:?}\n",
            d.join("state"),
            d.join("logs/access*.log*"),
            d.join("logs/access.log.archive"),
        );
        let e: Vec<String> =
            outputs_not_read(&Config::from_toml(&text, &d.join("config.toml")).unwrap()).iter().map(ToString::to_string).collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("`source[0].paths`") && e[0].contains("`file_output.path`"), "{e:?}");
        // state_dir (and the archive) under a `**` glob.
        let e = with("**/*", "");
        assert!(e.iter().any(|e| e.contains("`state_dir`")) && e.iter().any(|e| e.contains("`file_output.path`")), "{e:?}");
        // Every name StateDir lists, the OpenTelemetry sink's files and a
        // damaged file kept aside too.
        for glob in ["state/otlp-dead-letter.ndjson*", "state/otlp-spool/*/*.spool", "state/*.damaged-*"] {
            assert!(with(glob, "").iter().any(|e| e.contains("`state_dir`")), "{glob}: {:?}", with(glob, ""));
        }
        // A glob that cannot see into state_dir: `*` does not cross `/`.
        assert!(with("*", "").iter().all(|e| !e.contains("`state_dir`")), "{:?}", with("*", ""));
        // A directory a sink owns, by the names it writes there.
        let export = format!("[export]\ndir = {:?}\n", d.join("logs/export"));
        let e = with("logs/**/*.csv*", &export);
        assert!(e.iter().any(|e| e.contains("`export.dir`")), "{e:?}");
        assert!(with("logs/**/access*.log*", &export).is_empty(), "{:?}", with("logs/**/access*.log*", &export));
        // An exclude takes it out.
        let e = with("logs/**/*", &export);
        assert!(!e.is_empty());
        let text = format!(
            "state_dir = {:?}\n[[source]]\npaths = [{:?}]\nexclude = [{:?}]\n[file_output]\npath = {:?}\n{export}",
            d.join("state"),
            d.join("logs/**/*"),
            d.join("logs/export/**"),
            d.join("out/archive.ndjson"),
        );
        assert!(outputs_not_read(&Config::from_toml(&text, &d.join("config.toml")).unwrap()).is_empty());
    }

    #[test]
    fn only_a_missing_last_directory_is_accepted_and_created() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let mut cfg = config(dir.path(), "");
        assert!(check(&cfg, Bind::Probe).ok());
        create_state_dir(&cfg).unwrap();
        assert!(dir.path().join("state").is_dir());
        cfg.state_dir = dir.path().join("no/such/dir");
        let e = create_state_dir(&cfg).unwrap_err().to_string();
        assert!(e.contains("`state_dir`") && e.contains("nor does its parent"), "{e}");
        assert!(!dir.path().join("no").exists(), "nothing created");
    }

    #[test]
    fn a_lookup_file_that_does_not_load_names_the_key_and_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let cfg = config(dir.path(), "[enrich]\nlookups = [\"missing.csv\"]\n");
        let c = check(&cfg, Bind::Probe);
        let e = messages(&c);
        assert!(e.contains("`enrich.lookups`") && e.contains("missing.csv"), "{e}");
        assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    }

    #[test]
    fn a_busy_listen_address_names_the_key_and_the_address() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap();
        let cfg = config(dir.path(), "").clone();
        let cfg = Config { status: crate::config::StatusConfig { listen: addr, ..cfg.status.clone() }, ..cfg };
        let c = check(&cfg, Bind::Probe);
        let e = messages(&c);
        assert!(e.contains("`status.listen`") && e.contains(&addr.to_string()), "{e}");
        assert!(check(&cfg, Bind::Skip).ok(), "not bound while a bridge holds them");
        drop(busy);
        let mut c = check(&cfg, Bind::Keep);
        assert!(c.ok() && c.bound.take(STATUS_LISTEN).is_some());
    }
}
