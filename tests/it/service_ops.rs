//! What an operator sees around the service's life: a stop logs nothing
//! but the bridge's own lines (no notify chatter when a watched directory
//! goes away, as the demo's does at every stop), and `apt-get purge`
//! removes the system user it created (its home is gone with the state),
//! keeping one it did not create.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;

/// notify's INFO line when a watch was already dropped by the kernel.
const NOTIFY_CHATTER: &str = "unable to remove watch descriptor";

#[test]
fn the_demo_stops_without_notify_chatter() {
    let tmp = tempfile::tempdir().unwrap();
    let err = tmp.path().join("demo.log");
    let mut child = support::cmd()
        .args(["run", "--demo"])
        .env("TMPDIR", tmp.path())
        .env("CALLLOG_BRIDGE_DEMO_LISTEN", "any")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let dir = support::poll_until(Duration::from_secs(20), "the demo directory", || {
        std::fs::read_dir(tmp.path()).ok()?.flatten().map(|e| e.path()).find(|p| p.join("config.toml").exists())
    });
    support::poll_until(Duration::from_secs(30), "archived records", || {
        std::fs::metadata(dir.join("archive.ndjson")).ok().filter(|m| m.len() > 0)
    });
    support::terminate(&mut child, Duration::from_secs(30));
    // The demo removes its directory as it ends.
    support::poll_until(Duration::from_secs(10), "the demo directory removed", || (!dir.exists()).then_some(()));
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains("stopped; checkpoints written"), "{log}");
    assert!(!log.contains(NOTIFY_CHATTER), "{log}");
}

#[test]
fn a_followed_directory_that_goes_away_logs_no_notify_chatter() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let out = support::run(&["simulate", "--dir", &logs.display().to_string(), "--rate", "5", "--duration", "1", "--burst"]);
    assert!(out.status.success());
    let config = d.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nlog_level = \"info\"\n[[source]]\npaths = [{:?}]\nformat = \"le6\"\n[file_output]\npath = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\n",
            d.path().join("state").display().to_string(),
            logs.join("access.log*").display().to_string(),
            d.path().join("archive.ndjson").display().to_string(),
        ),
    )
    .unwrap();
    let log = d.path().join("bridge.log");
    let mut child = support::spawn_bridge(&config, &log);
    support::poll_until(Duration::from_secs(20), "records archived", || {
        std::fs::metadata(d.path().join("archive.ndjson")).ok().filter(|m| m.len() > 0)
    });
    std::fs::remove_dir_all(&logs).unwrap();
    // The bridge sees the directory go (its source matches no file any
    // more), then stops.
    support::poll_until(Duration::from_secs(30), "the files gone from /status", || {
        let status = std::fs::read_to_string(d.path().join("state/status.addr")).ok()?;
        let body: serde_json::Value = serde_json::from_str(&crate::lag::get(&format!("http://{}/status", status.trim())).1).ok()?;
        (body["sources"][0]["files_matched"] == 0).then_some(())
    });
    support::terminate(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(NOTIFY_CHATTER), "{text}");
}

// ------------------------------------------------------------ postrm purge

/// The Debian maintainer script under test.
fn postrm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian/postrm")
}

/// A root for `DPKG_ROOT` with the account files, the state and config
/// directories, and a `bin` of the commands the script may run: the real
/// `userdel` / `groupdel` (which take `--root`), shell tools, and
/// recording stand-ins for `deb-systemd-helper` and `systemctl` (nothing
/// on this host is touched).
struct FakeRoot {
    dir: tempfile::TempDir,
}

impl FakeRoot {
    fn new(gecos: &str) -> Option<FakeRoot> {
        let tools: Vec<(&str, PathBuf)> =
            ["grep", "cut", "rm", "userdel", "groupdel"].iter().map(|t| (*t, which(t))).filter_map(|(t, p)| p.map(|p| (t, p))).collect();
        if !support::is_root() || tools.len() < 5 {
            eprintln!("SKIPPED: postrm purge: needs root and userdel/groupdel (they change the fake root's account files)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s);
        for d in ["etc/calllog-bridge", "var/lib/calllog-bridge/replay", "bin"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        std::fs::write(p("etc/calllog-bridge/config.toml"), "state_dir = \"/var/lib/calllog-bridge\"\n").unwrap();
        std::fs::write(p("var/lib/calllog-bridge/checkpoints.json"), "{}\n").unwrap();
        std::fs::write(
            p("etc/passwd"),
            format!("root:x:0:0:root:/root:/bin/bash\ncalllog-bridge:x:998:998:{gecos}:/var/lib/calllog-bridge:/usr/sbin/nologin\n"),
        )
        .unwrap();
        std::fs::write(p("etc/shadow"), "root:*:19000:0:99999:7:::\ncalllog-bridge:!:19000::::::\n").unwrap();
        std::fs::write(p("etc/group"), "root:x:0:\ncalllog-bridge:x:998:\n").unwrap();
        std::fs::write(p("etc/gshadow"), "root:*::\ncalllog-bridge:!::\n").unwrap();
        for (t, real) in tools {
            std::os::unix::fs::symlink(real, p("bin").join(t)).unwrap();
        }
        for t in ["deb-systemd-helper", "systemctl"] {
            let f = p("bin").join(t);
            std::fs::write(&f, format!("#!/bin/sh\necho \"{t} $*\" >> \"$DPKG_ROOT/calls\"\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Some(FakeRoot { dir })
    }

    fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    /// Runs `postrm ACTION` with `DPKG_ROOT` set to this root; (exit code, stderr).
    fn postrm(&self, action: &str) -> (Option<i32>, String) {
        // Every path the script deletes must be under DPKG_ROOT, or this
        // test would delete the host's: refuse to run it otherwise.
        let script = std::fs::read_to_string(postrm()).unwrap();
        for line in script.lines().filter(|l| l.contains("rm -rf")) {
            assert!(line.contains("$ROOT/") || line.contains("$DPKG_ROOT/"), "postrm deletes outside DPKG_ROOT: {line}");
        }
        let out = Command::new("/bin/sh")
            .arg(postrm())
            .arg(action)
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("DPKG_ROOT", self.dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn has(&self, file: &str, name: &str) -> bool {
        std::fs::read_to_string(self.path(file)).unwrap().lines().any(|l| l.starts_with(&format!("{name}:")))
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.exists())
}

#[test]
fn purge_removes_the_user_the_package_created_and_keeps_one_it_did_not() {
    let Some(root) = FakeRoot::new("calllog-bridge service") else { return };
    // `remove` keeps everything.
    let (code, err) = root.postrm("remove");
    assert_eq!(code, Some(0), "{err}");
    assert!(root.has("etc/passwd", "calllog-bridge") && root.path("var/lib/calllog-bridge").exists());
    // `purge`: the state (the user's home), the config, the user and group.
    let (code, err) = root.postrm("purge");
    assert_eq!(code, Some(0), "{err}");
    assert!(!root.path("var/lib/calllog-bridge").exists() && !root.path("etc/calllog-bridge").exists());
    assert!(!root.has("etc/passwd", "calllog-bridge"), "the user is left with a home that no longer exists");
    assert!(!root.has("etc/group", "calllog-bridge"));
    assert!(err.contains("removed the system user and group calllog-bridge (uid 998)") && err.contains("find / -xdev -uid 998"), "{err}");
    let calls = std::fs::read_to_string(root.path("calls")).unwrap_or_default();
    assert!(calls.contains("deb-systemd-helper purge calllog-bridge.service"), "{calls}");
    // A purge run again (dpkg may) finds nothing to do.
    assert_eq!(root.postrm("purge").0, Some(0));

    // A `calllog-bridge` account the package did not create is kept, and
    // the command to remove it is said.
    let Some(root) = FakeRoot::new("Local Edition log reader") else { return };
    let (code, err) = root.postrm("purge");
    assert_eq!(code, Some(0), "{err}");
    assert!(root.has("etc/passwd", "calllog-bridge"));
    assert!(err.contains("not created by this package") && err.contains("userdel calllog-bridge"), "{err}");
}
