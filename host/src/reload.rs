//! Starting the next generation, and being started as one.
//!
//! The old supervisor starts the host binary resolved at start-up, with the
//! original arguments, through `std::process::Command`; between fork and
//! exec the child clears close-on-exec on exactly the descriptors the new
//! generation must inherit (listening sockets, its end of the handover
//! channel, the pid-file lock), which `HOST_INHERIT_*` variables name. The
//! new host takes those variables out of its environment first thing, so no
//! process it starts ever sees them.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::unistd::Pid;

use crate::channel::{NewEnd, NewToOld, OldEnd};
use crate::error::Error;
use crate::priority;

const GENERATION: &str = "HOST_INHERIT_GENERATION";
const LISTEN_FDS: &str = "HOST_INHERIT_LISTEN_FDS";
const HANDOVER_FD: &str = "HOST_INHERIT_HANDOVER_FD";
const PIDFILE_FD: &str = "HOST_INHERIT_PIDFILE_FD";
const PREDECESSOR: &str = "HOST_INHERIT_PREDECESSOR";
const BASE_NICE: &str = "HOST_INHERIT_BASE_NICE";
const ALL: [&str; 6] = [
    GENERATION,
    LISTEN_FDS,
    HANDOVER_FD,
    PIDFILE_FD,
    PREDECESSOR,
    BASE_NICE,
];

/// The `HOST_INHERIT_*` variables as found at start, before validation.
#[derive(Debug, Default)]
pub struct InheritedEnv(Vec<(&'static str, OsString)>);

/// Removes the `HOST_INHERIT_*` variables from this process's environment
/// and returns them; `None` for a host the user started.
///
/// Call first thing in `main`, while the process has one thread.
pub fn take_inherited_env() -> Option<InheritedEnv> {
    let mut found = InheritedEnv::default();
    for name in ALL {
        if let Some(value) = std::env::var_os(name) {
            // Only `main`'s thread exists yet, so nothing can read the
            // environment concurrently.
            std::env::remove_var(name);
            found.0.push((name, value));
        }
    }
    (!found.0.is_empty()).then_some(found)
}

impl InheritedEnv {
    /// Tells the previous generation why this one gives up before it could
    /// even adopt what it inherited (its command line did not parse, say).
    pub fn report_failure(&self, reason: &str) {
        let fd = self.0.iter().find(|(name, _)| *name == HANDOVER_FD);
        let Some(fd) = fd.and_then(|(_, v)| v.to_str()?.parse::<RawFd>().ok()) else {
            return;
        };
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return;
        }
        // SAFETY: the descriptor is open (checked above) and was passed to
        // this process for exactly this channel; it is used once, just
        // before the process exits, and not closed here.
        let channel =
            std::mem::ManuallyDrop::new(NewEnd::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }));
        let _ = channel.send(&NewToOld::Failed(reason.to_owned()));
    }
}

/// What a new generation inherits from the one it replaces.
pub struct Inherited {
    pub generation: u64,
    /// The nice value to return to on taking over (see `priority`).
    pub base_nice: i32,
    pub listeners: Vec<OwnedFd>,
    pub pid_file: Option<OwnedFd>,
    pub predecessor: Predecessor,
}

/// The generation being replaced, as seen by its successor.
pub struct Predecessor {
    pub pid: Pid,
    pub channel: NewEnd,
}

impl Inherited {
    /// Validates the variables and takes ownership of the descriptors they
    /// name, marking each close-on-exec again.
    pub fn adopt(env: InheritedEnv) -> Result<Inherited, Error> {
        let get = |name: &str| -> Result<String, Error> {
            let value = env
                .0
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone());
            let value = value.ok_or_else(|| Error::Inherit(format!("{name} is missing")))?;
            value
                .into_string()
                .map_err(|_| Error::Inherit(format!("{name} is not text")))
        };
        let number = |name: &str, text: &str| -> Result<i64, Error> {
            text.parse()
                .map_err(|_| Error::Inherit(format!("{name}={text} is not a number")))
        };
        // The handover channel first: if anything below fails, the old
        // generation should hear why.
        let handover = NewEnd::from_fd(adopt_fd(
            HANDOVER_FD,
            number(HANDOVER_FD, &get(HANDOVER_FD)?)?,
        )?);
        let result = (|| -> Result<_, Error> {
            let generation = number(GENERATION, &get(GENERATION)?)?;
            let predecessor = number(PREDECESSOR, &get(PREDECESSOR)?)?;
            let base_nice = number(BASE_NICE, &get(BASE_NICE)?)?;
            let listen = get(LISTEN_FDS)?;
            let listeners = listen
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|fd| adopt_fd(LISTEN_FDS, number(LISTEN_FDS, fd)?))
                .collect::<Result<Vec<_>, _>>()?;
            let pid_file = match get(PIDFILE_FD) {
                Ok(fd) => Some(adopt_fd(PIDFILE_FD, number(PIDFILE_FD, &fd)?)?),
                Err(_) => None,
            };
            Ok((generation, predecessor, base_nice, listeners, pid_file))
        })();
        match result {
            Ok((generation, predecessor, base_nice, listeners, pid_file)) => Ok(Inherited {
                generation: generation as u64,
                base_nice: base_nice as i32,
                listeners,
                pid_file,
                predecessor: Predecessor {
                    pid: Pid::from_raw(predecessor as i32),
                    channel: handover,
                },
            }),
            Err(e) => {
                let _ = handover.send(&NewToOld::Failed(e.to_string()));
                Err(e)
            }
        }
    }
}

fn adopt_fd(name: &str, fd: i64) -> Result<OwnedFd, Error> {
    let bad = |why: String| Error::Inherit(format!("{name}: descriptor {fd} {why}"));
    let raw = RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd > 2)
        .ok_or_else(|| bad("is out of range".into()))?;
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe
    // to ask about.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(bad(format!("is not open: {}", io::Error::last_os_error())));
    }
    // SAFETY: the previous generation opened this descriptor for us and
    // named it in a variable we have removed, so nothing else in this
    // process knows it or will close it.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| bad(format!("cannot be marked close-on-exec: {e}")))?;
    Ok(owned)
}

/// A new generation started by this one, not yet in charge.
pub struct Successor {
    pub pid: Pid,
    pub channel: OldEnd,
}

/// What the next generation inherits, gathered by the supervisor.
pub struct Handoff<'a> {
    pub exe: &'a Path,
    pub args: &'a [OsString],
    pub generation: u64,
    pub listener_fds: Vec<RawFd>,
    pub pid_file_fd: Option<RawFd>,
    /// This generation's nice value, which the next returns to on taking over.
    pub base_nice: i32,
}

/// Starts the next generation. It runs in its own process group, so the
/// whole generation can be killed at once if it fails to take over. A failed
/// exec comes back as an error (`cannot exec <path>: <reason>`); this
/// generation keeps serving regardless.
pub fn spawn(handoff: &Handoff<'_>) -> Result<Successor, Error> {
    let (ours, theirs) = OldEnd::pair().map_err(Error::os("cannot create the handover channel"))?;
    let generation = handoff.generation;
    let listen = handoff
        .listener_fds
        .iter()
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut vars = vec![
        (GENERATION, generation.to_string()),
        (LISTEN_FDS, listen),
        (HANDOVER_FD, theirs.as_raw_fd().to_string()),
        (PREDECESSOR, std::process::id().to_string()),
        (BASE_NICE, handoff.base_nice.to_string()),
    ];
    if let Some(fd) = handoff.pid_file_fd {
        vars.push((PIDFILE_FD, fd.to_string()));
    }
    // Everything the child needs is computed here, before the fork: the
    // `pre_exec` closure below only reads these two values.
    let mut inherit = handoff.listener_fds.clone();
    inherit.push(theirs.as_raw_fd());
    inherit.extend(handoff.pid_file_fd);
    let boosted = handoff.base_nice - priority::BOOST;

    let mut command = Command::new(handoff.exe);
    if let Some((arg0, rest)) = handoff.args.split_first() {
        command.arg0(arg0).args(rest);
    }
    // The current environment (inherited by default) plus ours.
    command.envs(vars).process_group(0);
    // Runs in the child between fork and exec (see the SAFETY note on
    // `pre_exec` below): async-signal-safe calls only, no allocation, no
    // lock, no logging; it only reads `inherit` and `boosted`.
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
        // Start with a head start when allowed; nothing changes otherwise.
        // (setpriority, plus reading errno on failure: no allocation.)
        let _ = priority::set(0, boosted);
        Ok(())
    };
    // SAFETY: the closure runs in the forked child of the supervisor, which
    // is single-threaded, so the child is a faithful copy with no lock held
    // by a vanished thread. Even so, the closure makes only
    // async-signal-safe calls (sigfillset, pthread_sigmask, fcntl,
    // setpriority), allocates nothing, takes no lock, logs nothing, and
    // touches only data computed above, before the fork.
    unsafe { command.pre_exec(in_child) };
    // std reports a failed exec here, having reaped that child itself. On
    // success, spawn returns only once the child has exec'd, so it is in its
    // own process group before anyone can signal that group.
    let child = command
        .spawn()
        .map_err(|e| Error::Control(format!("cannot exec {}: {e}", handoff.exe.display())))?;
    // Our copy of the new generation's channel end closes here.
    drop(theirs);
    let pid = Pid::from_raw(child.id() as i32);
    // Dropping a `Child` neither kills nor waits for it: the supervisor reaps
    // every child itself with waitpid(-1).
    drop(child);
    Ok(Successor { pid, channel: ours })
}
