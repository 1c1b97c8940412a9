//! Starting the next generation, and being started as one.
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

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use crate::channel::{NewEnd, NewToOld, OldEnd, OldToNew, Received, ToAnchor, ToAnchorEnd};
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
    /// Tells the previous generation, or the anchor, why this one gives up
    /// before it could even adopt what it inherited (its command line did
    /// not parse, say).
    pub fn report_failure(&self, reason: &str) {
        if let Some(fd) = self.open_fd(HANDOVER_FD) {
            // SAFETY: the descriptor is open (checked by open_fd) and was
            // passed to this process for exactly this channel; it is used
            // once, just before the process exits, and not closed here.
            let channel =
                std::mem::ManuallyDrop::new(NewEnd::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }));
            let _ = channel.send(&NewToOld::Failed(reason.to_owned()));
        } else if let Some(fd) = self.open_fd(ANCHOR_FD) {
            // SAFETY: as above, for the anchor channel.
            let channel = std::mem::ManuallyDrop::new(ToAnchorEnd::from_fd(unsafe {
                OwnedFd::from_raw_fd(fd)
            }));
            let _ = channel.send(&ToAnchor::Failed(reason.to_owned()));
        }
    }

    /// The descriptor variable `name` names, if it is set and open.
    fn open_fd(&self, name: &str) -> Option<RawFd> {
        let value = self.0.iter().find(|(n, _)| *n == name)?;
        let fd = value.1.to_str()?.parse::<RawFd>().ok()?;
        // SAFETY: F_GETFD only reads the descriptor's flags.
        (fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then_some(fd)
    }
}

/// What a generation inherits from the anchor, and from the generation it
/// replaces, if any.
pub struct Inherited {
    pub generation: u64,
    /// Started ahead of a reload: wait for [`OldToNew::Start`] first (see
    /// [`Inherited::await_start`]).
    pub standby: Option<StandbyAs>,
    /// The nice value to return to on taking over (see `priority`).
    pub base_nice: Option<i32>,
    pub listeners: Vec<OwnedFd>,
    pub pid_file: Option<OwnedFd>,
    pub anchor: Anchor,
    /// None for a generation the anchor started.
    pub predecessor: Option<Predecessor>,
}

/// How a standby was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyAs {
    /// As a batch job, to be scheduled as usual once started.
    Batch,
    /// With the scheduling policy of the supervisor that started it.
    Inherited,
}

/// The generation being replaced, as seen by its successor.
pub struct Predecessor {
    pub pid: Pid,
    pub channel: NewEnd,
}

/// The anchor, as a generation sees it.
pub struct Anchor {
    pub pid: u32,
    /// When it started, in seconds since the Unix epoch.
    pub since: u64,
    pub channel: ToAnchorEnd,
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
        let number = |name: &str| -> Result<i64, Error> {
            let text = get(name)?;
            text.parse()
                .map_err(|_| Error::Inherit(format!("{name}={text} is not a number")))
        };
        if let Ok(id) = get(INSTANCE_VAR) {
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                let _ = INSTANCE.set(id);
            }
        }
        // The channels first: if anything below fails, the previous
        // generation (or the anchor) should hear why.
        let anchor = ToAnchorEnd::from_fd(adopt_fd(ANCHOR_FD, number(ANCHOR_FD)?)?);
        let handover = match get(HANDOVER_FD) {
            Ok(_) => Some(NewEnd::from_fd(adopt_fd(
                HANDOVER_FD,
                number(HANDOVER_FD)?,
            )?)),
            Err(_) => None,
        };
        let result = (|| -> Result<_, Error> {
            // A standby learns its number from `Start`; it is started
            // without one, so that a host binary older than standbys (one
            // rolled back to) refuses to run as one and exits.
            let generation = match get(STANDBY) {
                Ok(_) => 0,
                Err(_) => number(GENERATION)? as u64,
            };
            let predecessor = match handover.is_some() {
                true => Some(Pid::from_raw(number(PREDECESSOR)? as i32)),
                false => None,
            };
            let base_nice = number(BASE_NICE).ok().map(|n| n as i32);
            let anchor_pid = number(ANCHOR_PID)? as u32;
            let anchor_since = number(ANCHOR_SINCE)? as u64;
            let listeners = get(LISTEN_FDS)?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|fd| {
                    let fd = fd.parse().map_err(|_| {
                        Error::Inherit(format!("{LISTEN_FDS}: {fd} is not a number"))
                    })?;
                    adopt_fd(LISTEN_FDS, fd)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let pid_file = match get(PIDFILE_FD) {
                Ok(_) => Some(adopt_fd(PIDFILE_FD, number(PIDFILE_FD)?)?),
                Err(_) => None,
            };
            Ok((
                generation,
                predecessor,
                base_nice,
                anchor_pid,
                anchor_since,
                listeners,
                pid_file,
            ))
        })();
        match result {
            Ok((generation, predecessor, base_nice, pid, since, listeners, pid_file)) => {
                Ok(Inherited {
                    generation,
                    standby: get(STANDBY).ok().map(|v| match v.as_str() {
                        "batch" => StandbyAs::Batch,
                        _ => StandbyAs::Inherited,
                    }),
                    base_nice,
                    listeners,
                    pid_file,
                    anchor: Anchor {
                        pid,
                        since,
                        channel: anchor,
                    },
                    predecessor: predecessor
                        .zip(handover)
                        .map(|(pid, channel)| Predecessor { pid, channel }),
                })
            }
            Err(e) => {
                match &handover {
                    Some(h) => drop(h.send(&NewToOld::Failed(e.to_string()))),
                    None => drop(anchor.send(&ToAnchor::Failed(e.to_string()))),
                }
                Err(e)
            }
        }
    }
}

impl Inherited {
    /// For a standby: waits until the supervisor that started it says
    /// `Start` (true, with the generation number it is to have) or goes away
    /// (false: this process is not needed). Then, as any new generation
    /// started by a reload, it runs normally scheduled with the head start
    /// the old generation has (see `priority`).
    pub fn await_start(&mut self) -> Result<bool, Error> {
        let Some(predecessor) = &self.predecessor else {
            return Err(Error::Inherit(format!(
                "{STANDBY} without a handover channel"
            )));
        };
        // What `ps` and `top` show while it waits.
        let name = nix::sys::prctl::get_name().ok();
        let _ = nix::sys::prctl::set_name(c"host-standby");
        // Told to stop while it waits (by `kill`, or by a service manager
        // that signals every process of the service), it just exits: the
        // stop signals keep their default action and are unblocked until
        // `Start` (they were blocked across the exec). A reload finds it
        // gone and execs afresh.
        let mut stops = SigSet::empty();
        for signal in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGHUP,
        ] {
            stops.add(signal);
        }
        let _ = stops.thread_unblock();
        let started = loop {
            match predecessor.channel.recv() {
                Ok(Received::Message(OldToNew::Start { generation })) => {
                    self.generation = generation;
                    break Ok(true);
                }
                Ok(Received::Message(other)) => {
                    break Err(Error::Inherit(format!(
                        "a standby was sent {other:?} before Start"
                    )))
                }
                Ok(Received::Empty) => continue,
                Ok(Received::Closed) | Err(_) => break Ok(false),
            }
        };
        // Blocked again until the supervisor's handlers are in place.
        let _ = stops.thread_block();
        if !matches!(started, Ok(true)) {
            return started;
        }
        if let Some(name) = name {
            let _ = nix::sys::prctl::set_name(&name);
        }
        if self.standby == Some(StandbyAs::Batch) {
            let _ = priority::set_batch(0, false);
        }
        if let Some(nice) = self.base_nice {
            let _ = priority::set(0, nice - priority::BOOST);
        }
        Ok(true)
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

/// A next generation exec'd ahead of a reload, which waits for `Start`
/// before it does anything else (in particular, before it copies the
/// plugin, which may still change). It takes the exec and the host's own
/// start-up (a couple of milliseconds of CPU) off the path between the
/// reload signal and the new workers' first accept. It is used only if the
/// host binary on disk is still the file it was exec'd from; a rebuilt host
/// is exec'd afresh.
pub struct Standby {
    successor: Successor,
    /// Whether it waits as a batch job.
    batch: bool,
    /// The host binary's identity when the standby was exec'd.
    exe: Option<ExeId>,
}

/// What tells one file at a path from another, or from itself rewritten.
#[derive(Debug, PartialEq, Eq)]
struct ExeId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl ExeId {
    fn of(path: &Path) -> Option<ExeId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(ExeId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Starts a standby for the next reload (see [`Standby`]). It is scheduled
/// as a batch job until it is started, from before its exec: it never
/// preempts a worker that serves.
pub fn spawn_standby(handoff: &Handoff<'_>) -> Result<Standby, Error> {
    let exe = ExeId::of(handoff.exe);
    // A host run with another policy than the usual one keeps it throughout.
    let batch = priority::is_usual();
    Ok(Standby {
        successor: spawn_with(handoff, Mode::Standby { batch })?,
        batch,
        exe,
    })
}

impl Standby {
    pub fn pid(&self) -> Pid {
        self.successor.pid
    }

    /// Starts it as generation `generation` (at nice `boosted`, if
    /// given and allowed), if `exe` on disk is still the binary it runs;
    /// otherwise gives it back, with why not.
    pub fn start(
        self,
        exe: &Path,
        generation: u64,
        boosted: Option<i32>,
    ) -> Result<Successor, (Standby, String)> {
        match ExeId::of(exe) {
            None => return Err((self, format!("cannot stat {}", exe.display()))),
            now if now != self.exe => {
                return Err((self, format!("{} changed since it started", exe.display())))
            }
            _ => {}
        }
        // Scheduled as it will run before it wakes up: a batch job would
        // wait for a CPU behind whatever runs there. (It does the same
        // itself, should either call fail here.)
        let pid = self.successor.pid.as_raw();
        if self.batch {
            let _ = priority::set_batch(pid, false);
        }
        if let Some(nice) = boosted {
            let _ = priority::set(pid, nice);
        }
        match self.successor.channel.send(&OldToNew::Start { generation }) {
            Ok(()) => Ok(self.successor),
            Err(e) => Err((self, format!("cannot start it: {e}"))),
        }
    }

    /// Why it gave up, if it said so before it exited (its command line
    /// did not parse, say).
    pub fn last_words(&self) -> Option<String> {
        match self.successor.channel.try_recv() {
            Ok(Received::Message(NewToOld::Failed(why))) => Some(why),
            _ => None,
        }
    }

    /// Kills it (its process group: nothing else is in it yet); the
    /// supervisor reaps it.
    pub fn kill(self) {
        let _ = nix::sys::signal::killpg(self.successor.pid, nix::sys::signal::Signal::SIGKILL);
    }
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
    // `pre_exec` closure below only reads `inherit`, `boosted` and `batch`.
    let mut inherit = handoff.listener_fds.clone();
    inherit.push(handoff.anchor_fd);
    inherit.extend(extra_fd);
    inherit.extend(handoff.pid_file_fd);
    let boosted = handoff
        .base_nice
        .filter(|_| matches!(mode, Mode::Now))
        .map(|nice| nice - priority::BOOST);
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
    // lock, no logging; it only reads `inherit`, `boosted` and `batch`.
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
        if let Some(nice) = boosted {
            let _ = priority::set(0, nice);
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
    // async-signal-safe calls (sigfillset, pthread_sigmask, fcntl,
    // setpriority) and sched_setscheduler, a plain system call wrapper that
    // takes no lock; it allocates nothing, takes no lock, logs nothing, and
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
