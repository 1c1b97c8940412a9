//! Being started as a generation: the `HOST_INHERIT_*` variables, the
//! descriptors they name, and, for a standby, the wait for `Start`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use super::*;
use crate::channel::{NewEnd, NewToOld, OldToNew, Received, ToAnchor, ToAnchorEnd};
use crate::error::Error;
use crate::priority;

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
