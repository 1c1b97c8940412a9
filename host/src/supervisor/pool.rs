//! Forking a worker (the one place the supervisor forks), and killing
//! what a dead worker left outside its process group.

use std::os::fd::RawFd;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use super::runtime::{Runtime, WorkerLink};
use super::Config;
use crate::channel::{ToWorker, ToWorkerEnd, WorkerEnd};
use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::priority;
use crate::signals;
use crate::snapshot::{Room, Snapshot};
use crate::worker;

impl Runtime {
    /// Forks a worker for `slot` (`head_start`: see `Effect::ForkWorker`),
    /// or, for slot 0 of a generation started from a standby, lets the
    /// worker it prepared go (see [`PreparedWorker`]). The outer error is
    /// fatal to the supervisor (its signal mask is lost); the inner one is
    /// a fork that did not happen.
    pub(super) fn fork_worker(
        &mut self,
        slot: usize,
        head_start: bool,
    ) -> Result<Result<Pid, String>, Error> {
        if let Some(prepared) = self.prepared.take() {
            match slot {
                0 => match prepared.go(self.machine.generation, self.base_nice) {
                    Ok(link) => {
                        let pid = link.pid;
                        tracing::debug!("the prepared worker pid {pid} goes, in slot 0");
                        self.workers.push(link);
                        return Ok(Ok(pid));
                    }
                    Err(e) => tracing::debug!("the prepared worker cannot go ({e}): forking one"),
                },
                // Never so (slot 0 starts first); dropped, it exits.
                _ => drop(prepared),
            }
        }
        tracing::debug!("forking a worker for slot {slot}");
        let (ours, theirs, heartbeat) = match worker_ends(&self.config) {
            Ok(ends) => ends,
            Err(e) => return Ok(Err(e)),
        };
        let spec = worker::Spec {
            generation: self.machine.generation,
            supervisor: getpid(),
            snapshot: &self.snapshot,
            listener_fds: self.listeners.raw_fds(),
            plugin_args: &self.config.plugin_args,
            head_start: if head_start { priority::BOOST } else { 0 },
            base_nice: self.base_nice,
            heartbeat: None,
            slot,
            shutdown_timeout: self.config.shutdown_timeout,
        };
        // A worker with a head start is born with it: one that had to take
        // it itself first waited for the CPU at the usual level, which on a
        // busy machine took 2-3 ms before it ran at all.
        let born_at = match (spec.head_start, self.base_nice) {
            (levels @ 1.., Some(base)) => Some(base - levels),
            _ => None,
        };
        let child = match fork_blocked(born_at)? {
            Ok(Side::Child) => {
                drop(ours);
                // The worker never returns: its copy of the page stays mapped.
                let heartbeat = heartbeat.map(|h| &*Box::leak(Box::new(h)));
                worker::run(theirs, worker::Spec { heartbeat, ..spec })
            }
            Ok(Side::Parent(child)) => child,
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

/// A standby's first worker, forked before the reload it is for: it resets
/// its signals and descriptors while the old generation serves, then
/// sleeps until the standby has copied the plugin into the in-memory file
/// it already holds and says `Go` (see `worker::run_prepared`).
///
/// What that saves is more than the 0.5 ms of CPU the fork and the
/// preparation take: a task that has just run for a while waits, on a busy
/// machine, for every other runnable task to get as much, while one that
/// wakes after a long sleep runs first. With 16 workers serving 8 clients
/// on 2 CPUs, a worker forked at the start loaded the plugin in 4.1 ms
/// (p50, 0.5 ms of it on a CPU); one that had slept first, in 0.5 ms.
pub struct PreparedWorker {
    pid: Pid,
    channel: ToWorkerEnd,
    heartbeat: Option<Heartbeat>,
    /// Its head start (see `worker::Spec::head_start`).
    head_start: i32,
}

impl PreparedWorker {
    /// Forks it, with the plugin to come in `room`; gives the room back,
    /// and `None` if it could not be forked (the worker is then forked at
    /// the start, as usual).
    pub fn fork(
        config: &Config,
        room: Room,
        listener_fds: Vec<RawFd>,
        base_nice: Option<i32>,
    ) -> Result<(Room, Option<PreparedWorker>), Error> {
        let (ours, theirs, heartbeat) = match worker_ends(config) {
            Ok(ends) => ends,
            Err(e) => {
                tracing::debug!("cannot prepare a worker: {e}");
                return Ok((room, None));
            }
        };
        let supervisor = getpid();
        // Waking from a long sleep, it gets a CPU without a head start. One
        // taken besides was measured to take the CPU from a single serving
        // worker for the whole load: the no-accept gap its clients felt
        // went from +0.6 to +1.0 ms, for no earlier reply. Under several
        // serving workers it still waits behind them (16: first reply after
        // 8.5-9.7 ms without, 5.1-5.5 ms with one), so it gets what the
        // supervisor gets: as much as they weigh together.
        let head_start = priority::supervisor_head_start(config.workers);
        Ok(match fork_blocked(None)? {
            Ok(Side::Child) => {
                drop(ours);
                let snapshot = Snapshot::pending(&config.plugin, room);
                let heartbeat = heartbeat.map(|h| &*Box::leak(Box::new(h)));
                worker::run_prepared(
                    theirs,
                    worker::Spec {
                        // Replaced by the one `Go` names.
                        generation: 0,
                        supervisor,
                        snapshot: &snapshot,
                        listener_fds,
                        plugin_args: &config.plugin_args,
                        head_start,
                        base_nice,
                        heartbeat,
                        slot: 0,
                        shutdown_timeout: config.shutdown_timeout,
                    },
                )
            }
            Ok(Side::Parent(pid)) => (
                room,
                Some(PreparedWorker {
                    pid,
                    channel: ours,
                    heartbeat,
                    head_start,
                }),
            ),
            Err(e) => {
                tracing::debug!("cannot prepare a worker: {e}");
                (room, None)
            }
        })
    }

    /// Lets it load the snapshot (taken by now) as generation
    /// `generation`'s worker in slot 0 (with its head start, if priorities
    /// may change: `base_nice`).
    fn go(self, generation: u64, base_nice: Option<i32>) -> Result<WorkerLink, String> {
        // Scheduled as it will run before it wakes up: it was forked by a
        // standby waiting as a batch job (see `priority`). (It does the same
        // itself, should either call fail here.)
        let pid = self.pid.as_raw();
        let _ = priority::set_batch(pid, false);
        if let (levels @ 1.., Some(base)) = (self.head_start, base_nice) {
            let _ = priority::set(pid, base - levels);
        }
        self.channel
            .send(&ToWorker::Go { generation })
            .map_err(|e| e.to_string())?;
        Ok(WorkerLink {
            pid: self.pid,
            channel: Some(self.channel),
            heartbeat: self.heartbeat.map(|h| (h, 0, Instant::now())),
        })
    }
}

/// What a worker is forked with: the supervisor's end of its channel, the
/// worker's end, and with `--watchdog` the page it beats in.
fn worker_ends(config: &Config) -> Result<(ToWorkerEnd, WorkerEnd, Option<Heartbeat>), String> {
    let (ours, theirs) =
        ToWorkerEnd::pair().map_err(|e| format!("cannot create a worker channel: {e}"))?;
    let heartbeat = config
        .watchdog
        .map(|_| Heartbeat::new())
        .transpose()
        .map_err(|e| format!("cannot map a heartbeat page: {e}"))?;
    Ok((ours, theirs, heartbeat))
}

/// Which side of a fork this is.
enum Side {
    /// The new process: it must run only worker code, which begins by
    /// resetting signals and descriptors, and never return.
    Child,
    Parent(Pid),
}

/// Forks with every signal blocked (the child must not run one of our
/// handlers before it resets them), and, if `born_at`, at that nice value:
/// the calling thread is raised only for the fork. The parent gets its own
/// level and signal mask back; the child keeps every signal blocked. The
/// outer error: the signal mask could not be restored; the inner one: the
/// fork did not happen.
fn fork_blocked(born_at: Option<i32>) -> Result<Result<Side, String>, Error> {
    if let Err(e) = single_threaded() {
        return Ok(Err(e));
    }
    let mask = signals::block_all().map_err(Error::os("cannot block signals"))?;
    let level = match (born_at, priority::current()) {
        (Some(nice), Ok(ours)) => {
            let _ = priority::set(0, nice);
            Some(ours)
        }
        _ => None,
    };
    // SAFETY: the process has one thread (checked just above, and the
    // supervisor starts none), so the child is a faithful copy with no
    // lock held by a vanished thread; the caller's child arm only runs
    // worker code (see `Side::Child`).
    let forked = match unsafe { fork() } {
        Ok(ForkResult::Child) => return Ok(Ok(Side::Child)),
        Ok(ForkResult::Parent { child }) => Ok(Side::Parent(child)),
        Err(e) => Err(e.to_string()),
    };
    if let Some(level) = level {
        priority::return_to(level);
    }
    signals::restore(&mask).map_err(Error::os("cannot restore the signal mask"))?;
    Ok(forked)
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
