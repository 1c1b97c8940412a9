//! Starting the next generation (here; ahead of time, `standby`), and
//! being started as one (`inherit`).
//!
//! The old supervisor starts the host binary resolved at start-up, with the
//! original arguments, through `std::process::Command`; between fork and
//! exec the child clears close-on-exec on exactly the descriptors the new
//! generation must inherit (listening sockets, its end of the handover
//! channel, the pid-file lock), which `HOST_INHERIT_*` variables name. The
//! new host takes those variables out of its environment first thing, so no
//! process it starts ever sees them.
//!
//! One of them, `HOST_INHERIT_INSTANCE`, names no descriptor: it is the id
//! the anchor made at start ([`instance`]), passed to every generation. The
//! status file records it, and `/proc/PID/environ` of a supervisor still
//! shows it after it is taken out (that file is the environment the program
//! was exec'd with), which is how `host stop` and the other control
//! commands tell a supervisor of this host from any other process.

mod inherit;
mod standby;

pub use inherit::*;
pub use standby::*;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::Pid;

use crate::channel::OldEnd;
use crate::error::Error;
use crate::priority;

const GENERATION: &str = "HOST_INHERIT_GENERATION";
const LISTEN_FDS: &str = "HOST_INHERIT_LISTEN_FDS";
const HANDOVER_FD: &str = "HOST_INHERIT_HANDOVER_FD";
const PIDFILE_FD: &str = "HOST_INHERIT_PIDFILE_FD";
const PREDECESSOR: &str = "HOST_INHERIT_PREDECESSOR";
const BASE_NICE: &str = "HOST_INHERIT_BASE_NICE";
const ANCHOR_FD: &str = "HOST_INHERIT_ANCHOR_FD";
const ANCHOR_PID: &str = "HOST_INHERIT_ANCHOR_PID";
const ANCHOR_SINCE: &str = "HOST_INHERIT_ANCHOR_SINCE";
/// Set for a standby (see [`spawn_standby`]).
const STANDBY: &str = "HOST_INHERIT_STANDBY";
/// The variable that carries the instance id (see [`instance`]).
pub const INSTANCE_VAR: &str = "HOST_INHERIT_INSTANCE";
const ALL: [&str; 11] = [
    STANDBY,
    GENERATION,
    LISTEN_FDS,
    HANDOVER_FD,
    PIDFILE_FD,
    PREDECESSOR,
    BASE_NICE,
    ANCHOR_FD,
    ANCHOR_PID,
    ANCHOR_SINCE,
    INSTANCE_VAR,
];

/// This host's instance id: inherited from the generation or anchor that
/// started this one, or made here (by the anchor, or by a generation whose
/// predecessor predates instance ids).
static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The host's instance id, the same in the anchor and every generation
/// (see the module docs): 32 hex digits.
pub fn instance() -> &'static str {
    INSTANCE.get_or_init(crate::status::random_id)
}

/// A new generation started by this one, not yet in charge.
pub struct Successor {
    pub pid: Pid,
    pub channel: OldEnd,
}

/// What a generation inherits, gathered by the anchor or by the supervisor
/// that starts the next generation.
pub struct Handoff<'a> {
    pub exe: &'a Path,
    pub args: &'a [OsString],
    pub generation: u64,
    pub listener_fds: Vec<RawFd>,
    pub pid_file_fd: Option<RawFd>,
    /// The anchor channel's generation end (every generation holds a copy),
    /// the anchor's pid and start time (seconds since the Unix epoch).
    pub anchor_fd: RawFd,
    pub anchor_pid: u32,
    pub anchor_since: u64,
    /// The starting supervisor's nice value, which the next returns to on
    /// taking over (see `priority`); None from the anchor (no head start).
    pub base_nice: Option<i32>,
}

/// Starts the next generation, by the supervisor in charge: with a
/// hand-over channel, and a CPU head start when allowed. It runs in its own
/// process group, so the whole generation can be killed at once if it fails
/// to take over. A failed exec comes back as an error (`cannot exec <path>:
/// <reason>`); this generation keeps serving regardless.
pub fn spawn(handoff: &Handoff<'_>) -> Result<Successor, Error> {
    spawn_with(handoff, Mode::Now)
}

fn spawn_with(handoff: &Handoff<'_>, mode: Mode) -> Result<Successor, Error> {
    let (ours, theirs) = OldEnd::pair().map_err(Error::os("cannot create the handover channel"))?;
    let mut vars = vec![
        (HANDOVER_FD, theirs.as_raw_fd().to_string()),
        (PREDECESSOR, std::process::id().to_string()),
    ];
    if let Mode::Standby { batch } = mode {
        // What to return to on `Start`: the usual policy, if it starts as
        // a batch job (see `spawn_standby`), or else the one it has.
        vars.push((STANDBY, if batch { "batch" } else { "1" }.to_owned()));
    }
    let pid = exec(handoff, &vars, Some(theirs.as_raw_fd()), mode)?;
    // Our copy of the new generation's channel end closes here.
    drop(theirs);
    Ok(Successor { pid, channel: ours })
}

/// How a generation is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// To start at once, with a head start when allowed.
    Now,
    /// As a standby, to start later; a batch job until then, if `batch`.
    Standby { batch: bool },
}

/// Starts a generation with no predecessor, by the anchor: the first, or
/// one that replaces a supervisor that died.
pub fn start(handoff: &Handoff<'_>) -> Result<Pid, Error> {
    exec(handoff, &[], None, Mode::Now)
}

fn exec(
    handoff: &Handoff<'_>,
    extra_vars: &[(&str, String)],
    extra_fd: Option<RawFd>,
    mode: Mode,
) -> Result<Pid, Error> {
    let listen = handoff
        .listener_fds
        .iter()
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut vars = vec![
        (LISTEN_FDS, listen),
        (ANCHOR_FD, handoff.anchor_fd.to_string()),
        (ANCHOR_PID, handoff.anchor_pid.to_string()),
        (ANCHOR_SINCE, handoff.anchor_since.to_string()),
        (INSTANCE_VAR, instance().to_owned()),
    ];
    if matches!(mode, Mode::Now) {
        vars.push((GENERATION, handoff.generation.to_string()));
    }
    vars.extend(extra_vars.iter().map(|(k, v)| (*k, v.clone())));
    if let Some(nice) = handoff.base_nice {
        vars.push((BASE_NICE, nice.to_string()));
    }
    if let Some(fd) = handoff.pid_file_fd {
        vars.push((PIDFILE_FD, fd.to_string()));
    }
    // Everything the child needs is computed here, before the fork: the
    // `pre_exec` closure below only reads `inherit` and `batch`.
    let mut inherit = handoff.listener_fds.clone();
    inherit.push(handoff.anchor_fd);
    inherit.extend(extra_fd);
    inherit.extend(handoff.pid_file_fd);
    let batch = matches!(mode, Mode::Standby { batch: true });

    let mut command = Command::new(handoff.exe);
    if let Some((arg0, rest)) = handoff.args.split_first() {
        command.arg0(arg0).args(rest);
    }
    // The current environment (inherited by default) plus ours; only the
    // anchor talks to systemd. Its own process group: a terminal's Ctrl-C
    // reaches the anchor, which forwards it once.
    command
        .envs(vars)
        .env_remove("NOTIFY_SOCKET")
        .process_group(0);
    // Runs in the child between fork and exec (see the SAFETY note on
    // `pre_exec` below): async-signal-safe calls only, no allocation, no
    // lock, no logging; it only reads `inherit` and `batch`.
    let in_child = move || -> io::Result<()> {
        // std empties the signal mask in the child before running this
        // closure, so block everything again, first thing. Signals stay
        // blocked across exec: one sent to the new host before it has
        // handlers waits, rather than killing it outright (the new host
        // unblocks them once its handlers are in place).
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: both calls are async-signal-safe. sigfillset writes the
        // whole set through a valid pointer to this stack local, so the set
        // is initialised before pthread_sigmask reads it; no old mask is
        // asked for (null pointer).
        unsafe {
            libc::sigfillset(all.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), std::ptr::null_mut());
        }
        for &fd in &inherit {
            // SAFETY: fcntl is async-signal-safe and takes no memory; these
            // descriptors are open (the parent holds them), and clearing
            // FD_CLOEXEC changes nothing else about them.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        // A standby waits as a batch job (sched_setscheduler: a plain
        // system call wrapper, no lock, no allocation).
        if batch {
            let _ = priority::set_batch(0, true);
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child of the supervisor, which
    // is single-threaded, so the child is a faithful copy with no lock held
    // by a vanished thread. Even so, the closure makes only
    // async-signal-safe calls (sigfillset, pthread_sigmask, fcntl) and
    // sched_setscheduler, a plain system call wrapper that takes no lock; it allocates nothing, takes no lock, logs nothing, and
    // touches only data computed above, before the fork.
    unsafe { command.pre_exec(in_child) };
    // std reports a failed exec here, having reaped that child itself. On
    // success, spawn returns only once the child has exec'd, so it is in its
    // own process group before anyone can signal that group.
    let child = command
        .spawn()
        .map_err(|e| Error::Control(format!("cannot exec {}: {e}", handoff.exe.display())))?;
    let pid = Pid::from_raw(child.id() as i32);
    // Dropping a `Child` neither kills nor waits for it: the supervisor (or
    // the anchor) reaps every child itself with waitpid(-1).
    drop(child);
    Ok(pid)
}
