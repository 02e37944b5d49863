//! `calllog-bridge token new`: a strong channel token in a file only its
//! owner can read, and how to put it in force without a gap.
//!
//! The token is 32 bytes from the operating system's random source, in
//! hex (64 characters: it passes the one token rule,
//! [`crate::settings::check_token`]). The file is created, never
//! replaced (`O_EXCL`), with mode 0600; run as root, it is given to the
//! service user (`--owner`, found in `/etc/passwd`), so the bridge reads
//! it and nobody else does. The token is never printed: what is printed
//! is where it is, how `/status` names it (its digest prefix) and the
//! three steps of a rotation.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{TokenArgs, TokenCommand, TokenNewArgs};
use crate::settings::{check_token, Secret, EXIT_CONFIG};

/// Where tokens go by default (the packaged config's directory).
const DEFAULT_DIR: &str = "/etc/calllog-bridge";

/// Runs a `token` subcommand.
pub fn run(args: TokenArgs) -> anyhow::Result<i32> {
    match args.command {
        TokenCommand::New(a) => new(a),
    }
}

fn new(args: TokenNewArgs) -> anyhow::Result<i32> {
    if let Some(id) = &args.channel {
        if id.is_empty() || id.contains(['/', '"', '\\']) || id.chars().any(char::is_control) {
            eprintln!("calllog-bridge: --channel: {:?} is not a stream id (letters, digits, `.`, `_`, `-`)", id.escape_debug().to_string());
            return Ok(EXIT_CONFIG);
        }
    }
    let path = args.file.clone().unwrap_or_else(|| default_path(args.channel.as_deref()));
    let token = strong_token()?;
    let owner = match write_new(&path, &token, &args.owner) {
        Ok(owner) => owner,
        Err(e) => {
            eprintln!("calllog-bridge: {}", crate::service::describe(&e));
            return Ok(EXIT_CONFIG);
        }
    };
    print!("{}", instructions(&path, &token, args.channel.as_deref(), &owner));
    Ok(0)
}

/// `/etc/calllog-bridge/<id or channel>-<YYYYMMDD-HHMMSS>.token` (UTC).
fn default_path(channel: Option<&str>) -> PathBuf {
    let stamp = crate::time::format_iso_seconds(crate::time::now_ms()).replace(['-', ':'], "").replace('T', "-").replace('Z', "");
    Path::new(DEFAULT_DIR).join(format!("{}-{stamp}.token", channel.unwrap_or("channel")))
}

/// 32 random bytes in hex, from the operating system's source.
fn strong_token() -> anyhow::Result<Secret> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    loop {
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes).map_err(|_| anyhow::anyhow!("the operating system gave no random bytes"))?;
        let token = Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
        // Fewer than 6 different hex digits in 64 is all but impossible;
        // the rule is checked anyway.
        if check_token("token", &token).is_ok() {
            return Ok(token);
        }
    }
}

/// Creates `path` (never over an existing file) with mode 0600 holding
/// the token and a newline, synced; when it was created by root, gives it
/// to `owner`. Returns who owns it now.
fn write_new(path: &Path, token: &Secret, owner: &str) -> anyhow::Result<String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (an existing file is never replaced)", path.display()))?;
    f.write_all(format!("{}\n", token.expose()).as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    let uid = f.metadata().with_context(|| format!("cannot stat {}", path.display()))?.uid();
    if uid != 0 {
        return Ok(user_name(uid).unwrap_or_else(|| format!("uid {uid}")));
    }
    match user_ids(owner) {
        Some((u, g)) => {
            std::os::unix::fs::chown(path, Some(u), Some(g)).with_context(|| format!("cannot give {} to {owner}", path.display()))?;
            Ok(owner.to_string())
        }
        None => {
            eprintln!(
                "calllog-bridge: no user {owner:?} here: {} stays root's (mode 0600); give it to the service user with chown",
                path.display()
            );
            Ok("root".into())
        }
    }
}

/// The uid and gid of `user` from `/etc/passwd`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
    })
}

/// The name of `uid` from `/etc/passwd`.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    })
}

/// What to do with the new token: the three steps of a rotation.
fn instructions(path: &Path, token: &Secret, channel: Option<&str>, owner: &str) -> String {
    let name = crate::sink::channel::digest_name(token.expose());
    let file = format!("{:?}", path.display().to_string());
    let section = match channel {
        Some(id) => format!("     [[channel.stream]]\n     id = \"{id}\"\n     token_files = [\"<the current token file>\", {file}]\n"),
        None => format!("     [channel]\n     token_file = \"<the current token file>\"\n     token_files = [{file}]\n"),
    };
    format!(
        "wrote a new token to {} (mode 0600, owner {owner}); /status and the dashboard show it as {name}\n\
         a rotation without a gap:\n\
         \x20 1. add it next to the current token, then reload (clients of the current token stay):\n\
         {section}\
         \x20    systemctl reload calllog-bridge\n\
         \x20 2. move the clients to the new token (a dashboard: #token=<the new token>)\n\
         \x20 3. remove the old token from the config and reload: its clients still connected are closed (1008 token revoked)\n\
         \x20    (or give the old token a not_after, and it stops by itself)\n",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_strong_and_different() {
        let a = strong_token().unwrap();
        let b = strong_token().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_default_file_names_the_channel_and_the_time() {
        let p = default_path(Some("partner-a")).display().to_string();
        assert!(p.starts_with("/etc/calllog-bridge/partner-a-") && p.ends_with(".token"), "{p}");
        assert_eq!(p.len(), "/etc/calllog-bridge/partner-a-20260101-120000.token".len(), "{p}");
        assert!(default_path(None).display().to_string().starts_with("/etc/calllog-bridge/channel-"));
    }
}
