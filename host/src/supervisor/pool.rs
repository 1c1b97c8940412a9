//! Forking a worker (the one place the supervisor forks), and killing
//! what a dead worker left outside its process group.

use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use super::runtime::{Runtime, WorkerLink};
use crate::channel::ToWorkerEnd;
use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::priority;
use crate::signals;
use crate::worker;

impl Runtime {
    /// Forks a worker for `slot` (`head_start`: see `Effect::ForkWorker`). The outer error
    /// is fatal to the supervisor (its signal mask is lost); the inner one is
    /// a fork that did not happen.
    pub(super) fn fork_worker(
        &mut self,
        slot: usize,
        head_start: bool,
    ) -> Result<Result<Pid, String>, Error> {
        let (ours, theirs) = match ToWorkerEnd::pair() {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(format!("cannot create a worker channel: {e}"))),
        };
        tracing::debug!("forking a worker for slot {slot}");
        let heartbeat = match self.config.watchdog.map(|_| Heartbeat::new()).transpose() {
            Ok(heartbeat) => heartbeat,
            Err(e) => return Ok(Err(format!("cannot map a heartbeat page: {e}"))),
        };
        let spec = worker::Spec {
            generation: self.machine.generation,
            supervisor: getpid(),
            snapshot: &self.snapshot,
            listener_fds: self.listeners.raw_fds(),
            plugin_args: &self.config.plugin_args,
            head_start,
            base_nice: self.base_nice,
            heartbeat: None,
            slot,
            shutdown_timeout: self.config.shutdown_timeout,
        };
        if let Err(e) = single_threaded() {
            return Ok(Err(e));
        }
        let mask = signals::block_all().map_err(Error::os("cannot block signals"))?;
        // A worker with a head start is born with it: one that had to take
        // it itself first waited for the CPU at the usual level, which on a
        // busy machine took 2-3 ms before it ran at all. This thread is
        // raised only for the fork (the only one: see `single_threaded`).
        let born_raised = match (head_start, self.base_nice, priority::current()) {
            (true, Some(base), Ok(ours)) => {
                let _ = priority::set(0, base - priority::BOOST);
                Some(ours)
            }
            _ => None,
        };
        // SAFETY: the process has one thread (checked just above, and the
        // supervisor starts none), so the child is a faithful copy with no
        // lock held by a vanished thread; it only runs worker code, which
        // begins by resetting signals and descriptors.
        let forked = match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(ours);
                // The worker never returns: its copy of the page stays mapped.
                let heartbeat = heartbeat.map(|h| &*Box::leak(Box::new(h)));
                worker::run(theirs, worker::Spec { heartbeat, ..spec })
            }
            Ok(ForkResult::Parent { child }) => Ok(child),
            Err(e) => Err(e),
        };
        // The parent, whether the fork happened or not: back to its own
        // level and signal mask.
        if let Some(level) = born_raised {
            priority::return_to(level);
        }
        signals::restore(&mask).map_err(Error::os("cannot restore the signal mask"))?;
        let child = match forked {
            Ok(child) => child,
            Err(e) => return Ok(Err(format!("cannot fork a worker: {e}"))),
        };
        self.workers.push(WorkerLink {
            pid: child,
            channel: Some(ours),
            heartbeat: heartbeat.map(|h| (h, 0, Instant::now())),
        });
        Ok(Ok(child))
    }
}

/// Fails unless this process has exactly one thread: forking a
/// multi-threaded process leaves the child with locks nobody will release.
fn single_threaded() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    match threads {
        Some(1) => Ok(()),
        Some(n) => Err(format!(
            "refusing to fork a worker: the supervisor has {n} threads, not 1"
        )),
        None => Err("refusing to fork a worker: /proc/self/status names no thread count".into()),
    }
}

/// Kills our children that run in another session than ours: nothing
/// this supervisor starts does (its workers and the next generation stay in
/// the host's session), so they are descendants of a worker that called
/// `setsid` and were re-parented to us when their parent died. (The workers
/// of a next generation that died are re-parented to us too, but they are
/// in our session, and drain undisturbed.)
pub(super) fn kill_escaped_orphans() {
    let me = std::process::id();
    let Ok(children) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
        return;
    };
    let ours = nix::unistd::getsid(None).ok();
    for child in children.split_whitespace().filter_map(|p| p.parse().ok()) {
        let child = Pid::from_raw(child);
        if let (Some(ours), Ok(theirs)) = (ours, nix::unistd::getsid(Some(child))) {
            if theirs != ours {
                tracing::info!("killing pid {child}: a worker's descendant that left its session");
                let _ = kill(child, Signal::SIGKILL);
            }
        }
    }
}
