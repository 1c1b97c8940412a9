//! The next generation, exec'd ahead of a reload.

use std::path::Path;

use nix::unistd::Pid;

use super::*;
use crate::channel::{NewToOld, OldToNew, Received};
use crate::error::Error;
use crate::priority;

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

    /// Starts it as generation `generation`, if `exe` on disk is still the
    /// binary it runs; otherwise gives it back, with why not.
    pub fn start(self, exe: &Path, generation: u64) -> Result<Successor, (Standby, String)> {
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
