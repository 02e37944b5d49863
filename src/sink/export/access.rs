//! Who may read the export's files: `[export] file_mode` and `group`.
//!
//! Every file of the export (`.partial` while written, then published by
//! a rename that keeps its mode) is given `file_mode` right after it is
//! created, whatever the process's umask (the service's unit sets
//! `UMask=0077`, which alone would make every file `0600`), and, with
//! `group`, that group. The directory gets, for each class that may read
//! the files, read and search permission, so an account of that class can
//! list it and open them; the bridge only adds those bits to the
//! directory, it never takes any away.
//!
//! A file gets the group the way the kernel gives it: a file created in a
//! set-group-ID directory (`chmod g+s`) has the directory's group, with no
//! privilege needed (the way under the shipped unit, whose system call
//! filter refuses `chown` and whose `RestrictSUIDSGID=` refuses setting
//! the bit); otherwise the bridge changes it (`fchown`), which works
//! where the user is a member of the group and the system call is
//! allowed. [`FileAccess::check`] tries exactly that on a probe file
//! before anything starts, so a group the files cannot get is refused
//! with exit 64 and the commands that fix it, not found at the first
//! write.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::settings::ConfigError;

/// The default `file_mode`: the service reads and writes, the group reads.
pub const DEFAULT_FILE_MODE: &str = "0640";

/// The group the export's files get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// As configured (a name, or a number).
    pub name: String,
    /// Its id.
    pub gid: u32,
}

/// The mode and group of the export's files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAccess {
    /// Permission bits of every file; `None`: what the umask gives (the
    /// offline command without `--file-mode`).
    pub file_mode: Option<u32>,
    /// The group of every file and of the directory; `None`: the one the
    /// kernel gives (the process's, or a set-group-ID directory's).
    pub group: Option<Group>,
}

impl FileAccess {
    /// Reads `file_mode` (octal, `0640`) and `group` (a name in
    /// `/etc/group`, or a numeric id) as written; errors name `key_mode`
    /// or `key_group`.
    pub fn parse(file_mode: Option<&str>, group: Option<&str>, key_mode: &str, key_group: &str) -> Result<FileAccess, ConfigError> {
        let file_mode = file_mode.map(|m| parse_mode(m).map_err(|why| ConfigError::invalid(key_mode, why))).transpose()?;
        let group = group
            .map(|g| resolve_group(g, Path::new("/etc/group")).map(|gid| Group { name: g.to_string(), gid }))
            .transpose()
            .map_err(|why| ConfigError::invalid(key_group, why))?;
        Ok(FileAccess { file_mode, group })
    }

    /// The bits the directory must have: the owner's `rwx`, and read and
    /// search for each class that may read the files (`0640` → `0750`).
    pub fn dir_bits(&self) -> u32 {
        let Some(m) = self.file_mode else { return 0o700 };
        let mut bits = 0o700;
        for (read, grant) in [(0o040, 0o050), (0o004, 0o005)] {
            if m & read != 0 {
                bits |= grant;
            }
        }
        bits
    }

    /// Gives a file just created its mode and group.
    pub fn apply(&self, file: &File) -> io::Result<()> {
        if let Some(m) = self.file_mode {
            file.set_permissions(fs::Permissions::from_mode(m))?;
        }
        if let Some(g) = &self.group {
            if file.metadata()?.gid() != g.gid {
                std::os::unix::fs::fchown(file, None, Some(g.gid)).map_err(|e| group_error(e, g))?;
            }
        }
        Ok(())
    }

    /// Creates `dir` if needed and gives it the group and the bits
    /// [`FileAccess::dir_bits`] asks for (adding, never removing).
    pub fn prepare_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let m = fs::metadata(dir)?;
        if let Some(g) = &self.group {
            if m.gid() != g.gid {
                std::os::unix::fs::chown(dir, None, Some(g.gid)).map_err(|e| group_error(e, g))?;
            }
        }
        let (have, want) = (m.mode() & 0o7777, self.dir_bits());
        if have & want != want {
            if have & 0o6000 != 0 {
                // Setting the mode of a set-group-ID directory must set the
                // bit again, which the unit refuses, and which the kernel
                // drops for a user not in the group: the operator's to do.
                return Err(io::Error::other(set_gid_dir_lacks(dir, have, want)));
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(have | want))?;
        }
        Ok(())
    }

    /// Before anything starts: can the export's files in `dir` (or, while
    /// it does not exist, in its parent, where it will be created) be
    /// given the group? Tried on a probe file, created and removed. The
    /// error names `key_group` and says how to fix it.
    pub fn check(&self, dir: &Path, key_group: &str) -> Result<(), ConfigError> {
        let Some(g) = &self.group else { return Ok(()) };
        let at = if dir.is_dir() {
            dir
        } else {
            match dir.parent().filter(|p| p.is_dir()) {
                Some(p) => p,
                // Whether the directory can be created is checked with
                // the other directories (`export.dir`).
                None => return Ok(()),
            }
        };
        let probe = at.join(format!(".calllog-bridge-group-check-{}", std::process::id()));
        // Not writable: reported with the directory's own key (`export.dir`).
        let Ok(f) = OpenOptions::new().write(true).create(true).truncate(true).open(&probe) else { return Ok(()) };
        let tried = self.apply(&f).and_then(|()| f.metadata().map(|m| m.uid()));
        drop(f);
        let _ = fs::remove_file(&probe);
        let owner = tried.map_err(|e| {
            let (mode, d) = (0o2000 | self.dir_bits(), dir.display());
            let how = if dir.is_dir() {
                format!("`chgrp {} {d} && chmod {mode:04o} {d}`", g.name)
            } else {
                format!("`install -d -o <the service's user> -g {} -m {mode:04o} {d}`", g.name)
            };
            ConfigError::unusable(
                key_group,
                format!(
                    "files in {} cannot get group {}: {e}; make the directory set-group-ID with that group, as root: {how} (files created in it then get the group with no privilege: the way under the shipped unit), or add the service's user to the group",
                    at.display(),
                    g.name,
                ),
            )
        })?;
        // The directory itself must get the group and its bits too: only
        // its owner (or root) may change them, and a set-group-ID one is
        // left as it is.
        if let Ok(m) = fs::metadata(dir) {
            let (have, want) = (m.mode() & 0o7777, self.dir_bits());
            if have & 0o6000 != 0 && have & want != want && owner != 0 {
                return Err(ConfigError::unusable("export.file_mode", set_gid_dir_lacks(dir, have, want)));
            }
            if m.gid() != g.gid && m.uid() != owner && owner != 0 {
                return Err(ConfigError::unusable(
                    key_group,
                    format!(
                        "{} belongs to another user and is not of group {}: as root, `chgrp {} {}`",
                        dir.display(),
                        g.name,
                        g.name,
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Why a set-group-ID directory is left as it is, and the command.
fn set_gid_dir_lacks(dir: &Path, have: u32, want: u32) -> String {
    format!(
        "{} is mode {have:04o}, without the permissions {want:04o} that file_mode asks for; it is set-group-ID, so the bridge does not change it: as root, `chmod {:04o} {}`",
        dir.display(),
        have | want,
        dir.display()
    )
}

/// A failed change of group, saying which.
fn group_error(e: io::Error, g: &Group) -> io::Error {
    io::Error::new(e.kind(), format!("cannot give group {} ({}): {e}", g.name, g.gid))
}

/// `0640`, `640`: octal permission bits. The owner must read and write
/// (the bridge takes files up again after a restart); nobody else may
/// write (the files are the record of what was written); no execute or
/// special bits.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let m = u32::from_str_radix(digits, 8).ok().filter(|_| (3..=4).contains(&digits.len()));
    let Some(m) = m else { return Err(format!("{text:?} is not an octal mode such as \"0640\"")) };
    if m & !0o666 != 0 {
        return Err(format!("{text:?}: no execute or special bits (the files are data): use 0600, 0640 or 0644"));
    }
    if m & 0o600 != 0o600 {
        return Err(format!("{text:?}: the owner (the service) must read and write the files: use 0600, 0640 or 0644"));
    }
    if m & 0o022 != 0 {
        return Err(format!("{text:?}: only the owner may write the files: use 0600, 0640 or 0644"));
    }
    Ok(m)
}

/// A group's id: `text` itself when it is a number, else its line in
/// `groups` (`/etc/group`; a group known only to a directory service is
/// given by number).
fn resolve_group(text: &str, groups: &Path) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    if text.is_empty() || text.contains([':', '\n']) {
        return Err(format!("{text:?} is not a group name"));
    }
    let content = fs::read_to_string(groups).map_err(|e| format!("cannot read {}: {e}", groups.display()))?;
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split(':');
            let (name, _, gid) = (it.next()?, it.next()?, it.next()?);
            (name == text).then(|| gid.parse::<u32>().ok()).flatten()
        })
        .next()
        .ok_or_else(|| format!("no group {text:?} in {} (a group from a directory service: give its number)", groups.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        for (ok, m) in [("0640", 0o640), ("640", 0o640), ("0600", 0o600), ("0644", 0o644), ("0o604", 0o604)] {
            assert_eq!(parse_mode(ok), Ok(m), "{ok}");
        }
        for bad in ["", "64", "0x640", "0660", "0666", "0700", "0740", "2640", "0440", "abc", "00640"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
        let a = |m: u32| FileAccess { file_mode: Some(m), group: None }.dir_bits();
        assert_eq!((a(0o640), a(0o644), a(0o600), a(0o604)), (0o750, 0o755, 0o700, 0o705));
        assert_eq!(FileAccess::default().dir_bits(), 0o700);
    }

    #[test]
    fn groups_by_name_or_number() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("group");
        fs::write(&groups, "root:x:0:\nanalysts:x:1234:alice,bob\nbroken\nodd:x:notanumber:\n").unwrap();
        assert_eq!(resolve_group("analysts", &groups), Ok(1234));
        assert_eq!(resolve_group("root", &groups), Ok(0));
        assert_eq!(resolve_group("4321", &groups), Ok(4321));
        assert!(resolve_group("nobody-here", &groups).unwrap_err().contains("give its number"));
        assert!(resolve_group("odd", &groups).is_err());
        assert!(resolve_group("a:b", &groups).is_err());
        let e = FileAccess::parse(Some("0777"), None, "export.file_mode", "export.group").unwrap_err();
        assert_eq!(e.key(), Some("export.file_mode"));
    }

    #[test]
    fn files_get_the_mode_whatever_the_umask_and_the_directory_its_bits() {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        fs::create_dir(&export).unwrap();
        fs::set_permissions(&export, fs::Permissions::from_mode(0o700)).unwrap();
        let own_gid = fs::metadata(&export).unwrap().gid();
        let access = FileAccess { file_mode: Some(0o640), group: Some(Group { name: own_gid.to_string(), gid: own_gid }) };
        access.prepare_dir(&export).unwrap();
        assert_eq!(fs::metadata(&export).unwrap().mode() & 0o7777, 0o750);
        let p = export.join("f");
        let f = File::create(&p).unwrap();
        f.set_permissions(fs::Permissions::from_mode(0o600)).unwrap();
        access.apply(&f).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        access.check(&export, "export.group").unwrap();
        assert_eq!(fs::read_dir(&export).unwrap().count(), 1, "the probe is removed");
        // Bits are added, never taken away.
        fs::set_permissions(&export, fs::Permissions::from_mode(0o775)).unwrap();
        access.prepare_dir(&export).unwrap();
        assert_eq!(fs::metadata(&export).unwrap().mode() & 0o7777, 0o775);
    }
}
