//! Proving that a pid file's process is its host.
//!
//! A control command acts only on a process that is provably the host of
//! the pid file, and otherwise refuses, signalling nothing:
//!
//! - the pid file is a regular file (not a link), locked, and owned by root,
//!   by the caller, or by the user the process it names runs as (anyone
//!   else could make it name any process); so is the status file beside it;
//! - the status file was written in the caller's pid namespace (pids from
//!   another one name other processes here);
//! - the pid is the supervisor the status file describes: it started when
//!   the status file says (so the pid was not reused), and the environment
//!   it was started with holds the instance id the status file records,
//!   which only the anchor and the generations it started carry (see
//!   `reload::instance`). During start-up the pid file names the anchor:
//!   then it must be the parent of that supervisor.
//!
//! The process is held by a pidfd from before the checks, so a signal
//! reaches the process that was checked, never one that took its pid since.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::POLL;
use crate::error::{self, shown, Error};
use crate::pidfile::{self, Holder};
use crate::process;
use crate::reload;
use crate::status::{self, Status};

/// How long the pid file and the status file may disagree (a new
/// generation writes one, then the other) before a command gives up.
const SETTLE: Duration = Duration::from_secs(2);

/// The host of a pid file, checked (see the module docs).
pub(super) struct Host {
    /// The pid the pid file names: the supervisor in charge, or the anchor
    /// while the first generation starts.
    pub(super) pid: u32,
    /// What the status file says; `status.pid` is the supervisor.
    pub(super) status: Status,
    pub(super) process: Process,
}

/// Finds the host of `pid_file` and proves it is one (see the module docs).
/// During a hand-over the files and processes change under the checks (the
/// old supervisor exits, the new one claims the files), so a refusal is
/// retried until `SETTLE` has passed: a real impostor is still refused.
pub(super) fn checked_host(pid_file: &Path) -> Result<Host, Error> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match try_checked_host(pid_file) {
            // Only a host that runs (the file is locked) is worth waiting
            // for: no lock, no file, a symlink are answers at once.
            Err(e)
                if Instant::now() < deadline
                    && matches!(pidfile::holder(pid_file), Ok(Holder::Running(_))) =>
            {
                tracing::debug!("{e}; looking again");
                std::thread::sleep(POLL);
            }
            done => return done,
        }
    }
}

fn try_checked_host(pid_file: &Path) -> Result<Host, Error> {
    let status_path = status::path_for(pid_file);
    let own_ns = status::own_pid_namespace()
        .map_err(|e| Error::Control(format!("cannot read /proc/self/ns/pid: {e}")))?;
    // The pid file and status file must agree (`checked_host` looks again
    // while they change hands).
    let (pid, pid_file_owner) = running_pid(pid_file)?;
    let not_yet = |why: String| Error::Control(format!("pid file {}: {why}", shown(pid_file)));
    let (status, status_owner) = match status::read_with_owner(&status_path) {
        Ok((Some(status), owner)) => (status, owner),
        Ok((None, _)) => {
            return Err(not_yet(format!(
                "{} is not a status file this host writes (no instance id?): restart the host with this version",
                shown(&status_path)
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(not_yet(format!(
                "{} is missing (the host is starting; try again)",
                shown(&status_path)
            )))
        }
        Err(e) => {
            return Err(not_yet(format!(
                "{}: {}",
                shown(&status_path),
                describe(&e)
            )))
        }
    };
    if status.pid_ns != own_ns {
        return Err(Error::Control(format!(
            "pid file {}: the host runs in another pid namespace ({}; this command runs in {own_ns}), where its pids name other processes than here: run the command inside it (e.g. `nsenter --target PID --pid --mount host ...`, PID being its anchor as seen from here)",
            shown(pid_file),
            status.pid_ns
        )));
    }
    if status.pid != pid && status.anchor != pid {
        return Err(not_yet(format!(
            "the pid file names pid {pid} but {} pid {} (the host is starting or changing hands; try again)",
            shown(&status_path),
            status.pid
        )));
    }

    // Hold the process first: whatever the checks see is what is signalled.
    let process = Process::open(pid)?;
    let refuse = |why: String| {
        Error::Control(format!(
            "pid file {} names pid {pid}, which is not its host: {why}; refusing to signal it",
            shown(pid_file)
        ))
    };
    // Files of anyone but root, the caller, or the user the process runs
    // as (who can signal it anyway) prove nothing.
    let runs_as = real_uid(pid)
        .ok_or_else(|| refuse(format!("cannot read /proc/{pid}/status (it is gone?)")))?;
    let me = nix::unistd::geteuid().as_raw();
    for (what, path, owner) in [
        ("pid file", pid_file, pid_file_owner),
        ("status file", status_path.as_path(), status_owner),
    ] {
        if ![0, me, runs_as].contains(&owner) {
            return Err(Error::Control(format!(
                "{what} {} is owned by {}: not root, not you, not the user pid {pid} runs as ({}); its owner could make it name any process, so it proves nothing: refusing to act on it (remove it, or use the host's own --pid-file)",
                shown(path),
                error::user(owner),
                error::user(runs_as)
            )));
        }
    }
    // The supervisor the status file describes: the pid file names it, or
    // its parent, the anchor, during start-up.
    let supervisor = status.pid;
    check_supervisor(supervisor, &status).map_err(|why| match supervisor == pid {
        true => refuse(why),
        false => refuse(format!("its supervisor pid {supervisor}: {why}")),
    })?;
    // During start-up the pid file names the anchor: the supervisor's parent.
    if supervisor != pid && parent(supervisor) != Some(pid) {
        return Err(refuse(format!(
            "{} names it as the anchor, but it is not the parent of supervisor pid {supervisor}",
            shown(&status_path)
        )));
    }
    process.check_alive().map_err(|e| refuse(e.to_string()))?;
    Ok(Host {
        pid,
        status,
        process,
    })
}

/// Checks that `pid` is the supervisor `status` describes: it started then,
/// and was started with the host's instance id in its environment.
fn check_supervisor(pid: u32, status: &Status) -> Result<(), String> {
    let started =
        status::start_time(&pid.to_string()).map_err(|e| format!("cannot read its start: {e}"))?;
    if started != status.start_time {
        return Err(format!(
            "it started at {started}, not at {} as the status file says (the host is gone and its pid reused?)",
            status.start_time
        ));
    }
    let id = &status.instance;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the status file holds no valid instance id".into());
    }
    // The environment the process was exec'd with (what it removed since,
    // this host's variables among them, still shows here).
    let environ = fs::read(format!("/proc/{pid}/environ")).map_err(|e| {
        format!("cannot read /proc/{pid}/environ to check ({e}): run the command as the host's user or root")
    })?;
    let wanted = format!("{}={id}", reload::INSTANCE_VAR);
    match environ
        .split(|&b| b == 0)
        .any(|var| var == wanted.as_bytes())
    {
        true => Ok(()),
        false => Err("its environment lacks the instance id the status file records".into()),
    }
}

/// The real uid of `pid`, from `/proc/PID/status` (which says it even when
/// the process is not dumpable, unlike the owner of `/proc/PID`).
fn real_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    // Real, effective, saved, filesystem.
    uids.split_whitespace().next()?.parse().ok()
}

/// The parent of `pid`, from `/proc/PID/stat`.
fn parent(pid: u32) -> Option<u32> {
    process::stat_field(&pid.to_string(), 4).ok()?.parse().ok()
}

/// The pid a locked pid file names, and the file's owner; or an error
/// saying why no host runs there.
fn running_pid(pid_file: &Path) -> Result<(u32, u32), Error> {
    let shown = shown(pid_file);
    match pidfile::inspect(pid_file) {
        Ok((Holder::Running(Some(pid)), owner)) => Ok((pid, owner)),
        Ok((Holder::Running(None), _)) => Err(Error::Control(format!(
            "pid file {shown}: locked, but holds no pid yet (the host is starting; try again)"
        ))),
        Ok((Holder::NotRunning, _)) => Err(Error::Control(format!(
            "pid file {shown}: no host is running (the file is stale); start one with `host --plugin ... --pid-file {shown}`"
        ))),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(Error::Control(format!(
            "pid file {shown}: is a symbolic link, which no host makes; refusing to follow it (pass the real file)"
        ))),
        Err(e) => Err(Error::Control(format!(
            "pid file {shown}: {} (is the path right?)",
            describe(&e)
        ))),
    }
}

/// An I/O error for a message, without Rust's `(os error N)`.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.split_once(" (os error") {
        Some((head, _)) => head.to_owned(),
        None => text,
    }
}

/// One process, held by a pidfd where the kernel has them (Linux 5.3).
pub(super) struct Process {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Process {
    fn open(pid: u32) -> Result<Process, Error> {
        let raw = libc::pid_t::try_from(pid)
            .map_err(|_| Error::Control(format!("pid {pid} is out of range")))?;
        let pidfd = match process::pidfd_open(Pid::from_raw(raw)) {
            Ok(pidfd) => pidfd,
            // An old kernel: fall back to kill(2) by pid.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                return Ok(Process { pid, pidfd: None })
            }
            Err(e) => {
                return Err(Error::Control(format!(
                    "pid {pid}: {} (the host is gone? try again)",
                    describe(&e)
                )))
            }
        };
        Ok(Process {
            pid,
            pidfd: Some(pidfd),
        })
    }

    /// Checks that the held process still runs (signal 0).
    fn check_alive(&self) -> io::Result<()> {
        self.send(None)
    }

    pub(super) fn signal(&self, sig: Signal) -> Result<(), Error> {
        self.send(Some(sig)).map_err(|e| {
            Error::Control(format!(
                "cannot send {sig} to pid {}: {}",
                self.pid,
                describe(&e)
            ))
        })
    }

    fn send(&self, sig: Option<Signal>) -> io::Result<()> {
        let number = sig.map_or(0, |s| s as libc::c_int);
        match &self.pidfd {
            Some(pidfd) => {
                // SAFETY: pidfd_send_signal reads its integer arguments
                // only: an open pidfd we own, a signal number, a null
                // siginfo pointer (the kernel fills in the default, as for
                // kill) and no flags.
                let result = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        number,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                match result {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            }
            None => {
                let pid = Pid::from_raw(self.pid as libc::pid_t);
                kill(pid, sig).map_err(io::Error::from)
            }
        }
    }
}
