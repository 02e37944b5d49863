//! One bridge per `state_dir`.
//!
//! Two bridges on one state directory would both read every file from the
//! same checkpoints and deliver everything twice (and overwrite each
//! other's `channel.addr`, `status.addr` and checkpoints). `run` therefore
//! takes an exclusive `flock` on `<state_dir>/lock` before it binds a
//! listener or reads a file, and writes its PID into the file, so that a
//! second `run` is refused at once (exit 64) with a message naming the
//! directory and the PID holding it. The kernel drops the lock when the
//! process ends, however it ends (`kill -9` included), so a stale lock file
//! never blocks a restart.
//!
//! Commands that only read (`check-config`, `lag`) never take the lock:
//! [`holder`] only looks (a shared lock held for an instant), and `run`
//! waits up to [`ACQUIRE_WAIT`] for such a look to finish.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the lock file inside `state_dir`.
pub const LOCK_FILE: &str = crate::state_dir::StateDir::LOCK;

/// How long `run` retries a lock held by someone else before giving up:
/// long enough to outwait a `check-config` looking at the lock, short
/// enough that a second bridge is refused at once.
pub const ACQUIRE_WAIT: Duration = Duration::from_millis(1500);

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("state_dir {dir} is in use by another calllog-bridge ({holder}); stop it first, or give this one its own state_dir")]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// "PID 1234", or what is known about the holder.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on a state directory, held while the value lives.
#[derive(Debug)]
pub struct StateLock {
    /// The locked file (closing it releases the lock).
    _file: File,
    /// Its path, for logs.
    pub path: PathBuf,
}

/// Path of the lock file of `state_dir`.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    crate::state_dir::StateDir::new(state_dir).lock()
}

impl StateLock {
    /// Takes the lock of `state_dir` (which must exist) and writes this
    /// process's PID into it; retries for [`ACQUIRE_WAIT`] while another
    /// process holds it. Blocking: call it from a blocking context.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = lock_path(state_dir);
        let io = |source| LockError::Io { path: path.clone(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let deadline = Instant::now() + ACQUIRE_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LockError::Held { dir: state_dir.to_path_buf(), holder: describe(read_pid(&mut file)) })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        let pid = std::process::id();
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(format!("{pid}\n").as_bytes())
        };
        // The PID is for the message a second bridge prints; the lock is
        // held either way. A full disk must not stop the start (the
        // components that write there retry and report it themselves).
        if let Err(e) = write(&mut file) {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the PID into the lock file; the lock is held");
        }
        Ok(StateLock { _file: file, path })
    }
}

/// Who holds the lock of `state_dir`, if anyone: `Some("PID 1234")` while a
/// bridge runs on it. Takes a shared lock for an instant and never creates
/// the file (a state directory no bridge ever ran on has none).
pub fn holder(state_dir: &Path) -> Option<String> {
    let mut file = File::open(lock_path(state_dir)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => Some(describe(read_pid(&mut file))),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The PID written in the lock file, if it holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn describe(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("PID {p}"),
        None => "PID unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(dir.path()), None, "no lock file: nobody");
        let first = StateLock::acquire(dir.path()).unwrap();
        let me = format!("PID {}", std::process::id());
        assert_eq!(holder(dir.path()).as_deref(), Some(me.as_str()));
        let e = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&me) && e.contains(&dir.path().display().to_string()), "{e}");
        drop(first);
        assert_eq!(holder(dir.path()), None);
        let _again = StateLock::acquire(dir.path()).unwrap();
    }
}
