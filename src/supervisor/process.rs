//! Creating plug-in processes and signalling their process groups.
//!
//! Architecture Invariant: this file (through the supervisor) is the only place that creates
//! processes or sends signals. Every child runs in its own process group with a cleared
//! environment plus an allowlist, with stdout and stderr piped (stdin too for svp/1 plug-ins; a
//! plain process gets /dev/null), and carries [`INSTANCE_ENV`] so that descendants that left the
//! group (daemonized) can still be found.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bkg_plugin_sdk::protocol;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

use crate::config::{Launch, PluginSpec, Protocol};

/// Variables passed through from the daemon's environment when set (design.md §6).
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "LANG", "TZ", "RUST_LOG"];

/// Set in every child to [`instance_marker`]; inherited by its descendants.
pub const INSTANCE_ENV: &str = "BKG_INSTANCE";
/// Set in every child to the daemon's canonical data directory; inherited by its descendants.
pub const OWNER_ENV: &str = "BKG_OWNER";

/// What marks a child (and its descendants) as belonging to one instance of one daemon.
pub struct Marks {
    /// [`instance_marker`], as [`INSTANCE_ENV`].
    pub instance: String,
    /// The canonical data directory, as [`OWNER_ENV`].
    pub owner: String,
}

/// `<name>#<generation>@<daemon pid>.<random>`: unique to one process of one daemon, so that
/// daemons running side by side (as the same user) never mistake each other's children.
pub fn instance_marker(name: &str, generation: u64) -> String {
    static DAEMON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let daemon = DAEMON.get_or_init(|| format!("{}.{:016x}", std::process::id(), rand::random::<u64>()));
    format!("{name}#{generation}@{daemon}")
}

/// Why a plug-in could not be spawned. All of these are fatal: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("executable not found: {0}")]
    NotFound(PathBuf),
    #[error("not executable (permission denied): {0}")]
    NotExecutable(PathBuf),
    #[error("sha256 mismatch for {path}: expected {expected}, found {found}")]
    ChecksumMismatch { path: PathBuf, expected: String, found: String },
    #[error("cannot prepare the plug-in's directory {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
    #[error("cannot start {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0:?} is not in PATH")]
    NotInPath(PathBuf),
    #[error("running as user/group {0:?} needs the daemon to run as root")]
    NotRoot(String),
    #[error("unknown {kind} {name:?}")]
    UnknownAccount { kind: &'static str, name: String },
}

/// The program and arguments a spec launches.
pub fn program_and_args(spec: &PluginSpec) -> Result<(PathBuf, Vec<String>), SpawnError> {
    match &spec.launch {
        Launch::Builtin { builtin } => {
            let exe = std::env::current_exe()
                .map_err(|source| SpawnError::Io { path: PathBuf::from("/proc/self/exe"), source })?;
            Ok((exe, vec!["plugin".into(), builtin.clone()]))
        }
        Launch::Command { command, args } if command.is_absolute() => Ok((command.clone(), args.clone())),
        Launch::Command { command, args } => Ok((find_in_path(command)?, args.clone())),
    }
}

/// Resolves a bare program name against the daemon's `PATH` (children get the same `PATH`).
fn find_in_path(name: &Path) -> Result<PathBuf, SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| SpawnError::NotInPath(name.to_owned()))
}

/// The uid and gid a spec asks to run as, if any.
fn account(spec: &PluginSpec) -> Result<Option<(u32, u32)>, SpawnError> {
    use nix::unistd::{Group, User};
    if spec.user.is_none() && spec.group.is_none() {
        return Ok(None);
    }
    if !nix::unistd::geteuid().is_root() {
        let who = spec.user.clone().or_else(|| spec.group.clone()).unwrap_or_default();
        return Err(SpawnError::NotRoot(who));
    }
    let unknown = |kind, name: &str| SpawnError::UnknownAccount { kind, name: name.to_owned() };
    let user = match &spec.user {
        Some(name) => Some(User::from_name(name).ok().flatten().ok_or_else(|| unknown("user", name))?),
        None => None,
    };
    let gid = match &spec.group {
        Some(name) => Group::from_name(name).ok().flatten().ok_or_else(|| unknown("group", name))?.gid.as_raw(),
        None => user.as_ref().map_or(0, |u| u.gid.as_raw()),
    };
    Ok(Some((user.map_or(0, |u| u.uid.as_raw()), gid)))
}

/// Computes the lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Compares two equal-length strings without an early exit.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the pin and spawns the plug-in. Blocking file I/O (hashing) runs on the caller's
/// thread, so call this from `spawn_blocking` or accept the cost of a small read.
/// `marks` go into the child's environment.
pub fn spawn(spec: &PluginSpec, work_dir: &Path, log_level: &str, marks: &Marks) -> Result<Child, SpawnError> {
    let (program, args) = program_and_args(spec)?;
    match std::fs::metadata(&program) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SpawnError::NotFound(program)),
        Err(source) => return Err(SpawnError::Io { path: program, source }),
        Ok(meta) => {
            use std::os::unix::fs::PermissionsExt;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(SpawnError::NotExecutable(program));
            }
        }
    }
    if let Some(expected) = &spec.sha256 {
        let found = sha256_file(&program).map_err(|source| SpawnError::Io { path: program.clone(), source })?;
        if !constant_time_eq(&found, expected) {
            return Err(SpawnError::ChecksumMismatch { path: program, expected: expected.clone(), found });
        }
    }
    create_private_dir(work_dir).map_err(|source| SpawnError::WorkDir { path: work_dir.to_owned(), source })?;
    let account = account(spec)?;

    let passed = ENV_ALLOWLIST.iter().copied().chain(spec.pass_env.iter().map(String::as_str));
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(passed.filter_map(|k| std::env::var_os(k).map(|v| (k, v))))
        .envs(&spec.env)
        .env(INSTANCE_ENV, &marks.instance)
        .env(OWNER_ENV, &marks.owner)
        .current_dir(spec.cwd.as_deref().unwrap_or(work_dir))
        // Own process group: a terminal's Ctrl-C reaches only the daemon, and stop/kill can
        // reach every grandchild with one killpg.
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Backstop only: the instance task always kills the group and reaps explicitly.
        .kill_on_drop(true);
    match spec.protocol {
        Protocol::Svp1 => {
            cmd.env(protocol::COOKIE_ENV, protocol::COOKIE_VALUE)
                .env(protocol::TRANSPORT_ENV, "stdio")
                .env(protocol::LOG_ENV, log_level)
                .stdin(Stdio::piped());
        }
        Protocol::None => {
            cmd.stdin(Stdio::null());
        }
    }
    if let Some((uid, gid)) = account {
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => SpawnError::NotFound(program.clone()),
        std::io::ErrorKind::PermissionDenied => SpawnError::NotExecutable(program.clone()),
        _ => SpawnError::Io { path: program.clone(), source },
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Sends `signal` to the whole process group led by `pid`. A group that no longer exists is not
/// an error (everything in it is already gone).
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, ?signal, error = %e, "killpg failed"),
    }
}

/// SIGKILLs one process (one that left the process group of its instance).
pub fn kill_process(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    match nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, error = %e, "kill failed"),
    }
}

/// Pids of the live (non-zombie) processes in the group led by `pgid`, from /proc.
pub fn group_members(pgid: u32) -> Vec<u32> {
    live_pids()
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|s| s.parse::<u32>().ok());
            pgrp == Some(pgid) && state != Some("Z")
        })
        .collect()
}

/// Pids of processes whose environment holds `INSTANCE_ENV=instance`: the descendants of one
/// instance, including those that left its process group (`setsid`). Only processes of the
/// daemon's own user are readable, which are the only ones it could have started.
pub fn instance_members(instance: &str) -> Vec<u32> {
    processes_with_env(INSTANCE_ENV, instance)
}

/// SIGKILLs every process a daemon on this data directory (`owner`) started and left running:
/// those still carrying `OWNER_ENV=owner`. Only safe while holding the data directory's lock
/// (no other daemon is using it). Returns their pids.
pub fn kill_leftovers(owner: &str) -> Vec<u32> {
    let pids = processes_with_env(OWNER_ENV, owner);
    for pid in &pids {
        kill_process(*pid);
    }
    pids
}

/// Pids of the processes whose environment holds `key=value`.
fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    live_pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

fn live_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }

    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
